// Draws the analytics charts from the JSON block in #analytics-report, and draws them again
// whenever htmx swaps in a fresh report (filters changed, poll, or live activity).
(function () {
  "use strict";

  // Status colours come from app.css (light and dark), so a chart matches the badges.
  function cssVar(name, fallback) {
    var value = window.getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }
  var COLORS = {};
  var PALETTE = ["#2563eb", "#16a34a", "#d97706", "#7c3aed", "#dc2626", "#0d9488", "#db2777", "#4b5563"];

  function loadColors() {
    COLORS = {
      messages: cssVar("--muted", "#6b7280"), accepted: cssVar("--st-success", "#2563eb"),
      delivered: cssVar("--st-delivered", "#16a34a"), seen: cssVar("--st-seen", "#0d9488"),
      failed: cssVar("--st-failed", "#dc2626"), expired: cssVar("--st-expired", "#d97706"),
      pending: cssVar("--st-pending", "#9ca3af"), replies: cssVar("--accent", "#7c3aed")
    };
    window.Chart.defaults.color = cssVar("--muted", "#5d6678");
    window.Chart.defaults.borderColor = cssVar("--border", "#dde1e8");
  }

  function draw(id, config) {
    var canvas = document.getElementById(id);
    if (!canvas) return;
    var old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    config.options = Object.assign({
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      plugins: { legend: { display: config.data.datasets.length > 1 } }
    }, config.options || {});
    new window.Chart(canvas, config);
  }

  function bar(label, values, color) {
    return { label: label, data: values, backgroundColor: color, borderColor: color, maxBarThickness: 28 };
  }

  // Bucket labels are "YYYY-MM-DD HH:MM" (UTC) or "YYYY-MM-DD": the axis shows the time, or
  // the month and day at midnight and for whole days, level; the tooltip keeps the full label.
  function timeTick(value) {
    var parts = this.getLabelForValue(value).split(" ");
    return parts.length < 2 || parts[1] === "00:00" ? parts[0].slice(5) : parts[1];
  }

  function timeAxis(extra) {
    return Object.assign({ ticks: { maxRotation: 0, autoSkipPadding: 16, callback: timeTick } }, extra || {});
  }

  // A bar per row, each its own line: the box grows with the rows instead of stretching a
  // few bars over a wide card.
  function fitRows(id, rows) {
    var canvas = document.getElementById(id);
    if (canvas) canvas.parentElement.style.height = (60 + 40 * Math.max(rows, 1)) + "px";
  }

  function line(label, values, color) {
    return { label: label, data: values, borderColor: color, backgroundColor: color,
             pointRadius: 0, borderWidth: 2, tension: 0.2 };
  }

  function render() {
    var block = document.getElementById("analytics-data");
    if (!block || !window.Chart) return;
    var data = JSON.parse(block.textContent);
    loadColors();
    var f = data.funnel;

    draw("chart-funnel", {
      type: "bar",
      data: {
        labels: ["Accepted", "Delivered", "Seen", "Failed", "Expired", "Pending"],
        datasets: [bar("Messages", [f.accepted, f.delivered, f.seen, f.failed, f.expired, f.pending],
          [COLORS.accepted, COLORS.delivered, COLORS.seen, COLORS.failed, COLORS.expired, COLORS.pending])]
      },
      options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
    });

    var r = data.rates;
    draw("chart-rates", {
      type: "line",
      data: {
        labels: r.labels,
        datasets: ["messages", "delivered", "seen", "failed", "expired"].map(function (key) {
          return line(key, r.series[key], COLORS[key]);
        })
      },
      options: { scales: { x: timeAxis(), y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });

    ["delivered", "seen"].forEach(function (key) {
      var lat = data.latency[key];
      draw("chart-latency-" + key, {
        type: "bar",
        data: {
          labels: lat.histogram.map(function (b) { return b.label; }),
          datasets: [bar("Messages", lat.histogram.map(function (b) { return b.count; }), COLORS[key])]
        },
        options: { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
    });

    fitRows("chart-failures", data.failures.length);
    draw("chart-failures", {
      type: "bar",
      data: {
        labels: data.failures.map(function (row) { return row.status + " " + row.code; }),
        datasets: [bar("Messages", data.failures.map(function (row) { return row.count; }),
          data.failures.map(function (row) { return COLORS[row.status]; }))]
      },
      options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } }
    });

    draw("chart-cost", {
      type: "bar",
      data: {
        labels: data.cost.labels,
        datasets: data.cost.groups.map(function (g, i) {
          return bar((g.currency || "?") + " " + (g.rate_type || ""), g.series, PALETTE[i % PALETTE.length]);
        })
      },
      options: { scales: { x: timeAxis({ stacked: true }), y: { stacked: true, beginAtZero: true } } }
    });

    draw("chart-replies", {
      type: "bar",
      data: { labels: data.replies.labels, datasets: [bar("Replies", data.replies.counts, COLORS.replies)] },
      options: { scales: { x: timeAxis(), y: { beginAtZero: true, ticks: { precision: 0 } } } }
    });
  }

  document.addEventListener("DOMContentLoaded", render);
  // After any swap the report may be new; drawing again is cheap and keeps this simple.
  document.addEventListener("htmx:afterSettle", render);
  // Live activity re-fetches the report through its data-live-refresh (static/live.js).
}());
