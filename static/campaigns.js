// Draws a campaign's funnel over time from the JSON block in #campaign, and again whenever
// htmx swaps in a fresh one (range changed, poll, or live activity).
(function () {
  "use strict";

  function cssVar(name, fallback) {
    var value = window.getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  var STAGES = [
    ["messages", "Messages", "--muted", "#6b7280"],
    ["accepted", "Accepted", "--st-success", "#2563eb"],
    ["delivered", "Delivered", "--st-delivered", "#16a34a"],
    ["seen", "Seen", "--st-seen", "#0d9488"],
    ["replied", "Replied", "--accent", "#7c3aed"]
  ];

  function render() {
    var block = document.getElementById("campaign-data");
    var canvas = document.getElementById("chart-campaign");
    if (!block || !canvas || !window.Chart) return;
    var data = JSON.parse(block.textContent);
    window.Chart.defaults.color = cssVar("--muted", "#5d6678");
    window.Chart.defaults.borderColor = cssVar("--border", "#dde1e8");
    var old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    new window.Chart(canvas, {
      type: "line",
      data: {
        labels: data.labels,
        datasets: STAGES.map(function (s) {
          var color = cssVar(s[2], s[3]);
          return { label: s[1], data: data.series[s[0]], borderColor: color, backgroundColor: color, pointRadius: 0, tension: 0.2 };
        })
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } }, x: { ticks: { maxRotation: 0, autoSkipPadding: 16 } } }
      }
    });
  }

  document.addEventListener("DOMContentLoaded", render);
  document.addEventListener("htmx:afterSettle", render);
}());
