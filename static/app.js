// viberwatch page behaviour (no inline scripts: the Content-Security-Policy forbids them).
(function () {
  "use strict";

  var timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
  });
  var clockFormat = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
  });
  var dayTimeFormat = new Intl.DateTimeFormat(undefined, {
    month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23"
  });
  var dayFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

  // Table cells: as much as tells the time apart from its neighbours, in little width.
  function shortText(when, now) {
    if (when.toDateString() === now.toDateString()) return clockFormat.format(when);
    if (when.getFullYear() === now.getFullYear()) return dayTimeFormat.format(when);
    return dayFormat.format(when);
  }

  // Times arrive as UTC text; show them in the viewer's zone, keeping UTC in the title.
  function localiseTimes(root) {
    var nodes = (root || document).querySelectorAll("time[data-local]");
    var now = new Date();
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      if (node.dataset.localised) continue;
      var when = new Date(node.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      if (node.dataset.local === "short") {
        node.textContent = shortText(when, now);
        node.title = timeFormat.format(when) + " · " + node.title;
      } else {
        node.textContent = timeFormat.format(when);
      }
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
