// The page's side of the live channel (/ws). The htmx ws extension owns the socket and
// swaps what arrives; this file says hello after every (re)connect with the last event id
// the page applied, so nothing is missed or applied twice, shows the connection state,
// and runs the live feed's pause and length cap.
(function () {
  "use strict";

  var body = document.body;
  if (!body || !body.hasAttribute("ws-connect")) {
    return;
  }
  // The htmx ws extension reconnects by itself on these codes, after wsReconnectDelay.
  var RETRY_CODES = [1006, 1011, 1012, 1013];
  // A server going away cleanly: this page reconnects itself, with the same backoff.
  var RECONNECT_CODES = [1000, 1001];
  // The server refused the hello (a bad filter, say): the same hello would be refused again.
  // simple-websocket also closes with 1008 when pongs stop coming back: that one is a line
  // problem, worth trying again.
  var REFUSED = 1008;
  var PING_TIMEOUT_REASON = "Ping/Pong timeout";
  var socket = null;
  var opened = false;
  var pendingMeta = null;
  var paused = false;
  var held = [];
  var refreshing = false;
  // Connections in a row that failed or did not last; past OFFLINE_AFTER the page says
  // offline (it keeps trying). One that stayed up STABLE_AFTER ms starts the count afresh:
  // a server that accepts and then drops every socket at once must not be retried at full
  // speed because each attempt "opened".
  var failures = 0;
  var openedAt = 0;
  var OFFLINE_AFTER = 5;
  var STABLE_AFTER = 10000;
  // 0.5 s doubling to a 3 s cap: a page is back within 3 s of its server answering again.
  var RETRY_FIRST = 500;
  var RETRY_CAP = 3000;

  function failuresSoFar() {
    return opened && Date.now() - openedAt >= STABLE_AFTER ? 0 : failures;
  }

  // Exponential, capped, with jitter (half of it random) so that the pages of a restarted
  // server do not all come back in the same instant.
  function retryDelay(n) {
    var ceiling = Math.min(RETRY_CAP, RETRY_FIRST * Math.pow(2, Math.min(n, 15)));
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  if (window.htmx) {
    // Called by the extension as the socket closes, before htmx:wsClose below counts it.
    htmx.config.wsReconnectDelay = function () { return retryDelay(failuresSoFar()); };
    // The extension hands a socket's "error" event to htmx as an error, which htmx logs
    // ("[object Event]"). An attempt that never opened (the server restarting, away, or
    // refusing) is what reconnecting expects: its close follows at once and schedules the
    // next try, so its error event is taken here. An error on a socket that had opened is
    // not expected and still goes to the extension.
    htmx.createWebSocket = function (url) {
      var sock = new WebSocket(url, []);
      sock.binaryType = htmx.config.wsBinaryType;
      var handler = null;
      var wasOpen = false;
      sock.addEventListener("open", function () { wasOpen = true; });
      Object.defineProperty(sock, "onerror", {
        configurable: true,
        get: function () { return handler; },
        set: function (fn) { handler = fn; }
      });
      sock.addEventListener("error", function (evt) {
        if (wasOpen && handler) {
          handler.call(sock, evt);
        }
      });
      return sock;
    };
  }

  function cursor() {
    var n = parseInt(body.dataset.liveCursor || "", 10);
    return isNaN(n) ? null : n;
  }

  var LABELS = { refused: "not live" };

  function setState(state, why) {
    body.dataset.liveState = state;
    var box = document.getElementById("live-status");
    if (box) {
      box.dataset.state = state;
      box.title = why || "Live updates";
      var label = box.querySelector(".live-label");
      if (label) {
        label.textContent = LABELS[state] || state;
      }
    }
  }

  function idsOf(selector, prefix) {
    var out = [];
    document.querySelectorAll(selector).forEach(function (el) {
      if (el.id && el.id.indexOf(prefix) === 0) {
        out.push(el.id.slice(prefix.length));
      }
    });
    return out;
  }

  function hello() {
    var page = body.dataset.livePage || "other";
    var rows = [];
    if (page === "messages") {
      rows = idsOf("#messages-body > tr:not(.leaving)", "msg-");
    } else if (page === "conversations") {
      rows = idsOf("#contacts-body > tr", "contact-");
    } else if (page === "thread") {
      rows = idsOf("#thread > [id]", "thread-msg-");
    }
    return JSON.stringify({
      type: "hello",
      cursor: cursor(),
      page: page,
      filters: page === "messages" || page === "conversations" ? window.location.search : "",
      phone: body.dataset.livePhone || null,
      requestId: body.dataset.liveRequestId || null,
      rows: rows,
      feed: !!document.getElementById("feed-items")
    });
  }

  function sayHello() {
    if (socket && opened) {
      socket.send(hello());
    }
  }

  function feedCap() {
    var feed = document.getElementById("feed");
    var n = feed ? parseInt(feed.dataset.cap || "", 10) : NaN;
    return isNaN(n) ? 50 : n;
  }

  function trimFeed() {
    var list = document.getElementById("feed-items");
    if (!list) {
      return;
    }
    var cap = feedCap();
    while (list.children.length > cap) {
      list.removeChild(list.lastElementChild);
    }
  }

  function showHeld() {
    var note = document.getElementById("feed-held");
    if (note) {
      note.hidden = !held.length;
      note.textContent = held.length ? held.length + " new while paused" : "";
    }
  }

  body.addEventListener("htmx:wsConnecting", function () {
    if (body.dataset.liveState !== "offline") {
      setState(failures ? "reconnecting" : "connecting");
    }
  });

  body.addEventListener("htmx:wsOpen", function (evt) {
    socket = evt.detail.socketWrapper;
    opened = true;
    openedAt = Date.now();
    // The first message on every connection: where this page is and what it has applied.
    socket.send(hello());
    setState("live");
  });

  body.addEventListener("htmx:wsClose", function (evt) {
    failures = failuresSoFar() + 1;
    opened = false;
    var event = evt.detail.event || {};
    var code = event.code || 1006;
    if (RETRY_CODES.indexOf(code) >= 0) {
      setState(failures > OFFLINE_AFTER ? "offline" : "reconnecting");
    } else if (RECONNECT_CODES.indexOf(code) >= 0 || (code === REFUSED && event.reason === PING_TIMEOUT_REASON)) {
      setState(failures > OFFLINE_AFTER ? "offline" : "reconnecting");
      var wrapper = evt.detail.socketWrapper;
      window.setTimeout(function () { wrapper.reconnect(); }, retryDelay(failures - 1));
    } else {
      // Neither side tries again: say why, and that a reload is the way back.
      setState("refused", "Live updates stopped: the server closed the connection (" + code + " " +
        (event.reason || "no reason given") + "). Reload the page to try again.");
    }
  });

  window.addEventListener("offline", function () { setState("offline"); });
  window.addEventListener("online", function () {
    if (!opened && socket) {
      setState("reconnecting");
      socket.reconnect();
    }
  });

  body.addEventListener("htmx:wsBeforeMessage", function (evt) {
    var match = /^<!--live (\{.*?\})-->/.exec(evt.detail.message);
    pendingMeta = match ? JSON.parse(match[1]) : null;
    if (pendingMeta && pendingMeta.reload) {
      evt.preventDefault();
      window.location.reload();
    }
  });

  body.addEventListener("htmx:wsAfterMessage", function () {
    if (pendingMeta && typeof pendingMeta.cursor === "number") {
      var current = cursor();
      if (current === null || pendingMeta.cursor > current) {
        body.dataset.liveCursor = String(pendingMeta.cursor);
      }
      if (pendingMeta.pid) {
        body.dataset.liveWorker = String(pendingMeta.pid);
      }
    }
    pendingMeta = null;
    trimFeed();
    trimList("messages-body");
    trimList("contacts-body");
    showNewer();
    body.dispatchEvent(new CustomEvent("live:applied", { bubbles: true }));
  });

  // Inserts are idempotent: an element the page already has is replaced where it stands.
  document.addEventListener("htmx:oobBeforeSwap", function (evt) {
    var detail = evt.detail;
    var fragment = detail.fragment;
    if (!fragment || !detail.target || !detail.target.id) {
      return;
    }
    if (fragment.nodeType !== Node.ELEMENT_NODE) {
      return; // an outerHTML swap by id: already in place
    }
    dropText(fragment);
    if (detail.target.id === "messages-body") {
      detail.shouldSwap = takeRows(fragment);
      return;
    }
    if (detail.target.id === "contacts-body") {
      detail.shouldSwap = takeContacts(fragment);
      return;
    }
    if (detail.target.id === "feed-items" && paused) {
      held = Array.prototype.slice.call(fragment.children).concat(held).slice(0, feedCap());
      showHeld();
      detail.shouldSwap = false;
      return;
    }
    Array.prototype.slice.call(fragment.children).forEach(function (child) {
      var existing = child.id ? document.getElementById(child.id) : null;
      if (existing) {
        existing.replaceWith(child);
        htmx.process(child);
      }
    });
    if (!fragment.children.length) {
      detail.shouldSwap = false;
    }
  });

  // A push inserts its rows with the whitespace between them, and a list trims rows, not
  // text: without this, a page open all day gathers a text node per row it ever showed.
  function dropText(fragment) {
    var child = fragment.firstChild;
    while (child) {
      var next = child.nextSibling;
      if (child.nodeType === Node.TEXT_NODE && !child.nodeValue.trim()) {
        fragment.removeChild(child);
      }
      child = next;
    }
  }

  // The first row of an empty list: the table is not on the page yet, fetch the list.
  document.addEventListener("htmx:oobErrorNoTarget", function (evt) {
    var target = evt.detail.target;
    if (refreshing) {
      return;
    }
    var url = window.location.pathname + window.location.search;
    if (target === "#messages-body" && document.getElementById("results")) {
      refreshing = true;
      htmx.ajax("GET", url, { target: "#results" }).finally(function () { refreshing = false; });
    } else if (target === "#contacts-body" && document.getElementById("contacts")) {
      refreshing = true;
      htmx.ajax("GET", url, { target: "#contacts", select: "#contacts", swap: "outerHTML" })
        .finally(function () { refreshing = false; });
    }
  });

  // Filters and pages change in place: tell the server what the page shows now. Rows held
  // back belonged to the list that was there; the new one starts afresh.
  body.addEventListener("htmx:afterSettle", function (evt) {
    var target = evt.detail.target;
    if (target && (target.id === "results" || target.id === "panel")) {
      newer = [];
      newerDropped = 0;
      listPaused = false;
      showNewer();
      sayHello();
    }
  });

  // -- Lists that keep their page size ------------------------------------------------
  // A new message goes to the top of the messages list and the bottom row goes, so the
  // page stays the size it was loaded with. While the reader is down the list or has
  // paused it, new rows wait (newest first, at most a page of them) behind a "N newer"
  // button instead of moving the rows being read. A row that changed is replaced where it
  // stands (or among the waiting ones); one that left the page's filter is marked and
  // then removed; one the page no longer has is ignored.
  var newer = [];
  var newerDropped = 0;
  var listPaused = false;
  var LEAVE_AFTER = 1500;

  function pageSize(list) {
    var n = parseInt(list.dataset.pageSize || "", 10);
    return isNaN(n) ? 50 : n;
  }

  function listAtTop(list) {
    var table = list.closest("table") || list;
    return table.getBoundingClientRect().top >= -1;
  }

  function holding(list) {
    return listPaused || newer.length > 0 || !listAtTop(list);
  }

  function indexOfNewer(id) {
    for (var i = 0; i < newer.length; i++) {
      if (newer[i].id === id) {
        return i;
      }
    }
    return -1;
  }

  function replaceRow(existing, row) {
    existing.replaceWith(row);
    htmx.process(row);
    htmx.trigger(row, "htmx:load"); // app.js localises its times
  }

  function leave(row) {
    row.classList.add("leaving");
    row.setAttribute("data-live-leave", "1");
    window.setTimeout(function () {
      if (row.parentNode && row.classList.contains("leaving")) {
        row.parentNode.removeChild(row);
      }
    }, LEAVE_AFTER);
  }

  // Decides every row of a push to #messages-body; true when some are left for htmx to
  // insert at the top.
  function takeRows(fragment) {
    var list = document.getElementById("messages-body");
    var mode = fragment.getAttribute("data-live") || "insert";
    var hold = mode === "insert" && holding(list);
    Array.prototype.slice.call(fragment.children).forEach(function (row) {
      var existing = row.id ? document.getElementById(row.id) : null;
      var waiting = row.id ? indexOfNewer(row.id) : -1;
      if (mode === "leave") {
        fragment.removeChild(row);
        if (existing) {
          replaceRow(existing, row);
          leave(row);
        } else if (waiting >= 0) {
          newer.splice(waiting, 1);
        }
      } else if (existing) {
        replaceRow(existing, row);
      } else if (waiting >= 0) {
        fragment.removeChild(row);
        newer[waiting] = row;
      } else if (mode !== "insert") {
        fragment.removeChild(row); // dropped past the page's size: nothing to update
      } else if (hold) {
        fragment.removeChild(row);
        newer.unshift(row);
        if (newer.length > pageSize(list)) {
          newer.pop();
          newerDropped += 1;
        }
      }
    });
    return fragment.children.length > 0;
  }

  // A phone with new activity moves to the top of the conversations list.
  function takeContacts(fragment) {
    var mode = fragment.getAttribute("data-live") || "top";
    Array.prototype.slice.call(fragment.children).forEach(function (row) {
      var existing = row.id ? document.getElementById(row.id) : null;
      if (mode === "top") {
        if (existing) {
          existing.parentNode.removeChild(existing);
        }
      } else {
        fragment.removeChild(row);
        if (existing) {
          replaceRow(existing, row);
        }
      }
    });
    return fragment.children.length > 0;
  }

  function trimList(id) {
    var list = document.getElementById(id);
    if (!list) {
      return;
    }
    var size = pageSize(list);
    var rows = list.querySelectorAll(":scope > tr:not(.leaving)");
    for (var i = rows.length - 1; i >= size; i--) {
      list.removeChild(rows[i]);
    }
    if (rows.length > size) {
      pointNextBelow(list);
    }
  }

  // Rows pushed off the bottom are still there on the next page: Next now starts below the
  // list's new last row, so none is skipped.
  function pointNextBelow(list) {
    var next = document.querySelector(".pager a[rel='next'][data-base]");
    var rows = list.querySelectorAll(":scope > tr[data-cursor]:not(.leaving)");
    if (!next || !rows.length) {
      return;
    }
    var last = rows[rows.length - 1];
    var base = next.dataset.base;
    var url = base + (base.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(last.dataset.cursor);
    next.setAttribute("href", url);
    next.setAttribute("hx-get", url);
    next.hidden = false;
    if (next.parentElement) {
      next.parentElement.hidden = false;
    }
    htmx.process(next);
  }

  function showNewer() {
    var button = document.getElementById("list-newer");
    if (!button) {
      return;
    }
    var n = newer.length + newerDropped;
    var text = n ? n + " newer: show" : "";
    if (button.textContent !== text) {
      button.textContent = text;
    }
    button.hidden = !n;
  }

  function showHeldRows() {
    var list = document.getElementById("messages-body");
    if (!list) {
      return;
    }
    for (var i = newer.length - 1; i >= 0; i--) {
      list.insertBefore(newer[i], list.firstChild);
      htmx.process(newer[i]);
      htmx.trigger(newer[i], "htmx:load");
    }
    newer = [];
    newerDropped = 0;
    trimList("messages-body");
    showNewer();
    if (!listAtTop(list)) {
      list.closest("table").scrollIntoView({ block: "start" });
    }
  }

  document.addEventListener("click", function (evt) {
    if (!evt.target.closest) {
      return;
    }
    if (evt.target.closest("#list-newer")) {
      showHeldRows();
      var toggle = document.getElementById("list-toggle");
      (toggle || body).focus();
      return;
    }
    var button = evt.target.closest("#list-toggle");
    if (button) {
      listPaused = !listPaused;
      button.setAttribute("aria-pressed", listPaused ? "true" : "false");
      button.textContent = listPaused ? "Resume list" : "Pause list";
      if (!listPaused && newer.length && listAtTop(document.getElementById("messages-body"))) {
        showHeldRows();
      }
    }
  });

  // -- Unread conversations -------------------------------------------------------------
  // A phone is unread in this browser when its last reply is newer than the last time its
  // thread was open here (or than the first visit to the list, so that an old record does
  // not start all unread).
  var READ_PREFIX = "viberwatch.read.";
  function storage() {
    try {
      return window.localStorage;
    } catch (e) {
      return null;
    }
  }
  function markUnread(root) {
    var store = storage();
    if (!store || !document.getElementById("contacts-body")) {
      return;
    }
    var since = store.getItem(READ_PREFIX + "since");
    if (!since) {
      since = new Date().toISOString();
      store.setItem(READ_PREFIX + "since", since);
    }
    var rows = root.matches && root.matches("#contacts-body > tr") ? [root]
      : (root.querySelectorAll ? root.querySelectorAll("#contacts-body > tr") : []);
    Array.prototype.forEach.call(rows, function (row) {
      var mark = row.querySelector(".unread-mark");
      if (!mark) {
        return;
      }
      var last = Date.parse(mark.dataset.lastReply || "");
      var read = Date.parse(store.getItem(READ_PREFIX + row.id.slice("contact-".length)) || since);
      var unread = !isNaN(last) && last > read;
      row.classList.toggle("unread", unread);
      mark.hidden = !unread;
    });
  }
  function markThreadRead() {
    var store = storage();
    if (store && body.dataset.livePage === "thread" && body.dataset.livePhone) {
      store.setItem(READ_PREFIX + body.dataset.livePhone, new Date().toISOString());
    }
  }
  markUnread(document);
  markThreadRead();
  body.addEventListener("live:applied", markThreadRead);
  if (window.htmx) {
    htmx.onLoad(function (element) { markUnread(element); });
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest ? evt.target.closest("#feed-toggle") : null;
    if (!button) {
      return;
    }
    paused = !paused;
    button.setAttribute("aria-pressed", paused ? "true" : "false");
    button.textContent = paused ? "Resume" : "Pause";
    var feed = document.getElementById("feed");
    if (feed) {
      feed.classList.toggle("paused", paused);
    }
    if (!paused && held.length) {
      var list = document.getElementById("feed-items");
      for (var i = held.length - 1; i >= 0; i--) {
        if (!document.getElementById(held[i].id)) {
          list.insertBefore(held[i], list.firstChild);
          // Held back from htmx's swap, so announce it as new content the way a swap does:
          // app.js localises its time on htmx:load.
          htmx.process(held[i]);
          htmx.trigger(held[i], "htmx:load");
        }
      }
      held = [];
      trimFeed();
    }
    showHeld();
  });

  // A part of a page that shows figures over the record (analytics, campaigns) says so with
  // data-live-refresh="<event>": live activity triggers that event on it, and it fetches
  // itself again. A burst of activity becomes one request, at most one per
  // data-refresh-gap seconds (the server sets it: longer where a fetch costs more).
  var refreshPending = null;
  var refreshedAt = 0;
  function refreshSoon() {
    if (refreshPending || !document.querySelector("[data-live-refresh]")) {
      return;
    }
    var first = document.querySelector("[data-live-refresh]");
    var gap = parseInt(first.dataset.refreshGap || "3", 10) * 1000;
    var wait = Math.max(300, refreshedAt + gap - Date.now());
    refreshPending = window.setTimeout(function () {
      refreshPending = null;
      refreshedAt = Date.now();
      var parts = document.querySelectorAll("[data-live-refresh]");
      for (var i = 0; i < parts.length; i++) {
        htmx.trigger(parts[i], parts[i].dataset.liveRefresh);
      }
    }, wait);
  }
  body.addEventListener("live:applied", refreshSoon);

  setState("connecting");
})();
