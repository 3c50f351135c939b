// viberwatch page behaviour (no inline scripts: the Content-Security-Policy forbids them).
(function () {
  "use strict";

  var timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
  });

  // Times arrive as UTC text; show them in the viewer's zone, keeping UTC in the title.
  function localiseTimes(root) {
    var nodes = (root || document).querySelectorAll("time[data-local]");
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.dataset.localised) continue;
      var when = new Date(node.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      node.textContent = timeFormat.format(when);
      node.dataset.localised = "1";
    }
  }

  function copyText(button) {
    var text = button.getAttribute("data-copy");
    var done = function () {
      button.classList.add("copied");
      var label = button.textContent;
      button.textContent = "copied";
      setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else {
      // Plain http on another host: the clipboard API is unavailable, select-and-copy instead.
      var area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } finally { document.body.removeChild(area); }
    }
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (button) copyText(button);
  });

  function start() {
    localiseTimes(document);
    if (window.htmx) {
      // Every swapped fragment (filters, pages, live pushes) gets the same treatment.
      window.htmx.onLoad(function (element) { localiseTimes(element); });
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
