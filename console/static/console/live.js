/* Live pages: one websocket per page, fragments swapped once per animation frame, a Live /
   Reconnecting / Stale badge, the fleet map's keyboard navigation and GPU card, the action dialog.
   The server renders every fragment (the same template partials as the page); this only swaps them. */
(function () {
  "use strict";

  // ---------------------------------------------------------------- action dialog (htmx targets #dialog-body)
  function dialog() { return document.getElementById("action-dialog"); }
  // After settle: htmx has wired the new content (a form submitted before that would leave the page).
  document.addEventListener("htmx:afterSettle", function (ev) {
    if (ev.detail.target && ev.detail.target.id === "dialog-body") {
      var d = dialog();
      if (!d.open) d.showModal();
      var auto = d.querySelector("[autofocus]");
      if (auto) auto.focus();
      var undo = d.querySelector("[data-undo]");
      if (undo) startUndo(undo);
    }
  });
  // A refusal (409) or a typing mistake (400) comes back as a fresh preview: show it.
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var s = ev.detail.xhr.status;
    if ((s === 409 || s === 400) && ev.detail.target && ev.detail.target.id === "dialog-body") {
      ev.detail.shouldSwap = true;
      ev.detail.isError = false;
    }
  });
  document.addEventListener("click", function (ev) {
    if (ev.target.closest && ev.target.closest("[data-close]")) {
      var d = dialog();
      if (d && d.open) d.close();
    }
  });
  function startUndo(form) {
    var left = parseInt(form.dataset.undo, 10) || 10;
    var label = form.querySelector(".countdown");
    var timer = setInterval(function () {
      left -= 1;
      if (label) label.textContent = "(" + left + " s)";
      if (left <= 0) { clearInterval(timer); form.remove(); }
    }, 1000);
  }

  // ---------------------------------------------------------------- the live socket
  var root = document.querySelector("[data-live]");
  if (!root) return;
  var version = parseInt(root.dataset.version || "0", 10);
  var path = root.dataset.live;
  var badge = document.getElementById("live-badge");
  var pending = new Map();
  var frame = 0;
  var socket = null;
  var retry = 0;
  var closedAt = null;
  var staleTimer = 0;
  window.__live = { applied: 0, version: function () { return version; }, socket: function () { return socket; } };

  function setBadge(cls, text) {
    if (!badge) return;
    badge.className = "badge " + cls;
    badge.textContent = text;
  }

  function connect() {
    var proto = location.protocol === "https:" ? "wss://" : "ws://";
    try {
      socket = new WebSocket(proto + location.host + path + (path.indexOf("?") < 0 ? "?" : "&") + "v=" + version);
    } catch (err) {
      lost();
      return;
    }
    socket.onopen = function () {
      retry = 0; closedAt = null; clearTimeout(staleTimer);
      setBadge("live", "Live");
    };
    socket.onmessage = function (ev) {
      var msg = JSON.parse(ev.data);
      if (msg.type === "fragments") {
        for (var id in msg.html) pending.set(id, msg.html[id]);
        if (!frame) frame = requestAnimationFrame(apply);
      } else if (msg.type === "telemetry") {
        for (var pk in msg.temps) {
          var cell = document.querySelector('[data-temp="' + pk + '"]');
          if (cell) cell.textContent = msg.temps[pk] === null ? "—" : msg.temps[pk] + " °C";
        }
      } else if (msg.type === "rows") {
        insertRows(msg);
      } else if (msg.type === "snapshot") {
        snapshot(msg.v);
      }
      if (msg.v && msg.v > version) version = msg.v;
    };
    socket.onclose = lost;
  }

  // The socket closed or could not open: say so at once, "Stale since" after a few seconds, retry with backoff.
  function lost() {
    if (closedAt === null) {
      closedAt = new Date();
      setBadge("reconnecting", "Reconnecting…");
      clearTimeout(staleTimer);
      staleTimer = setTimeout(function () {
        setBadge("stale", "Stale since " + closedAt.toLocaleTimeString());
      }, 5000);
    }
    retry = Math.min(retry + 1, 6);
    setTimeout(connect, Math.min(250 * Math.pow(2, retry - 1), 5000));
  }

  // Swap what arrived, once per frame. Tiles whose shape is unchanged are morphed (classes, labels
  // and text copied onto the existing nodes: only changed cells are touched, which holds thousands of
  // cell updates a second); anything else is replaced by the server's fragment as it is.
  function apply() {
    frame = 0;
    var active = activeKey();
    var t = document.createElement("template");
    var ids = [];
    var html = [];
    pending.forEach(function (h, id) { ids.push(id); html.push(h.trim()); });
    pending.clear();
    t.innerHTML = html.join("");
    var fresh = Array.prototype.slice.call(t.content.children);
    for (var i = 0; i < fresh.length; i++) {
      var el = document.getElementById(fresh[i].id || ids[i]);
      if (!el) continue;
      if (!(el.classList.contains("t") && morph(el, fresh[i]))) {
        el.replaceWith(fresh[i]);
        untab(fresh[i]);
        if (window.htmx && fresh[i].querySelector("[hx-get],[hx-post]")) htmx.process(fresh[i]);
      }
      window.__live.applied += 1;
    }
    if (active) restoreActive(active);
  }

  var MORPHED = ["class", "aria-label", "data-t"];
  function morph(el, fresh) {
    if (el.childNodes.length !== fresh.childNodes.length) return false;
    for (var i = 0; i < el.childNodes.length; i++) {
      var a = el.childNodes[i], b = fresh.childNodes[i];
      if (a.nodeName !== b.nodeName) return false;
    }
    copy(el, fresh);
    for (var j = 0; j < el.childNodes.length; j++) {
      var x = el.childNodes[j], y = fresh.childNodes[j];
      if (x.nodeType === 3) { if (x.data !== y.data) x.data = y.data; continue; }
      copy(x, y);
      if (x.textContent !== y.textContent) x.textContent = y.textContent;
    }
    return true;
  }
  function copy(a, b) {
    for (var k = 0; k < MORPHED.length; k++) {
      var v = b.getAttribute(MORPHED[k]);
      if (v === null) { if (a.hasAttribute(MORPHED[k])) a.removeAttribute(MORPHED[k]); }
      else if (a.getAttribute(MORPHED[k]) !== v) a.setAttribute(MORPHED[k], v);
    }
  }

  // The events page: new rows (newest first, each with data-id) go in id order, once each; the
  // table keeps at most `keep` rows, and the Older link then starts below the last one kept.
  function insertRows(msg) {
    var body = document.getElementById(msg.into);
    if (!body) return;
    var t = document.createElement("template");
    t.innerHTML = msg.html.trim();
    var added = 0;
    Array.prototype.slice.call(t.content.children).reverse().forEach(function (row) {
      var id = parseInt(row.dataset.id, 10);
      if (document.getElementById(row.id)) return;
      var empty = body.querySelector("tr.none");
      if (empty) empty.remove();
      var next = body.firstElementChild;
      while (next && parseInt(next.dataset.id, 10) > id) next = next.nextElementSibling;
      body.insertBefore(row, next);
      added += 1;
    });
    var rows = body.children;
    var keep = Math.max(msg.keep || 0, parseInt(body.dataset.keep || "0", 10));
    if (keep && rows.length > keep) {
      while (rows.length > keep) body.removeChild(body.lastElementChild);
      var older = document.querySelector("[data-older]");
      if (older) {
        var u = new URL(older.href);
        u.searchParams.set("before", body.lastElementChild.dataset.id);
        older.href = u.toString();
      }
    }
    var say = document.getElementById("events-announce");
    if (say && added) say.textContent = added + " new event" + (added === 1 ? "" : "s");
    window.__live.applied += added;
  }

  function snapshot(v) {
    fetch(location.href, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var map = document.getElementById("fleet-map");
        if (!map) { location.reload(); return; }
        pending.set("fleet-map", html);
        if (!frame) frame = requestAnimationFrame(apply);
        if (v > version) version = v;
      });
  }

  connect();

  // ---------------------------------------------------------------- fleet map: one tab stop, arrow keys, card
  var STATES = { f: "free", r: "reserved", u: "in use", s: "scrubbing", l: "leveling firmware", d: "draining",
    x: "drained", q: "quarantined", o: "offline" };
  var activeCell = null;
  function mapEl() { return document.getElementById("fleet-map"); }
  function cells() { return mapEl().querySelectorAll(".t i"); }
  function indexOf(cell) { return Array.prototype.indexOf.call(cell.parentNode.querySelectorAll("i"), cell); }
  function describe(cell) {
    var tile = cell.closest(".t");
    var host = tile.firstChild.textContent.trim();
    var n = indexOf(cell) + 1;
    var code = cell.classList[0];
    var parts = [host + " GPU " + n + ": " + (STATES[code] || code)];
    if (cell.dataset.t) parts.push(cell.dataset.t);
    if (cell.classList.contains("od")) parts.push("overdue");
    var st = tile.querySelector(".ss");
    if (st) parts.push("server " + st.textContent);
    return parts.join(", ");
  }
  function activeKey() {
    if (!activeCell || !mapEl()) return null;
    var tile = activeCell.closest(".t");
    if (!tile) return null;
    return { id: tile.id, n: indexOf(activeCell) };
  }
  function restoreActive(key) {
    var tile = document.getElementById(key.id);
    if (!tile) return;
    var cell = tile.querySelectorAll("i")[key.n];
    if (cell) activate(cell, false);
  }
  function activate(cell, announce) {
    if (activeCell && activeCell !== cell) {
      activeCell.classList.remove("act");
      activeCell.removeAttribute("id");
      activeCell.removeAttribute("role");
      activeCell.removeAttribute("aria-label");
    }
    activeCell = cell;
    cell.classList.add("act");
    cell.id = "map-active-cell";
    cell.setAttribute("role", "img");
    var name = describe(cell);
    cell.setAttribute("aria-label", name);
    mapEl().setAttribute("aria-activedescendant", "map-active-cell");
    if (announce !== false) {
      var live = document.getElementById("map-active");
      if (live) live.textContent = name;
      cell.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }
  function move(delta, byTile) {
    var all = cells();
    if (!all.length) return;
    if (!activeCell || !activeCell.isConnected) { activate(all[0]); return; }
    if (byTile) {
      var tiles = mapEl().querySelectorAll(".t");
      var tile = activeCell.closest(".t");
      var ti = Array.prototype.indexOf.call(tiles, tile);
      var n = indexOf(activeCell);
      var next = tiles[Math.max(0, Math.min(tiles.length - 1, ti + delta))];
      var nc = next.querySelectorAll("i");
      activate(nc[Math.min(n, nc.length - 1)]);
      return;
    }
    var i = Array.prototype.indexOf.call(all, activeCell);
    activate(all[Math.max(0, Math.min(all.length - 1, i + delta))]);
  }
  var card = document.getElementById("gpu-card");
  var cardFor = null;
  function openCard(cell, focus) {
    if (!card) return;
    var tile = cell.closest(".t");
    var n = indexOf(cell) + 1;
    var url = "/servers/" + tile.id.slice(7) + "/gpus/" + n + "/";
    cardFor = url;
    fetch(url, { headers: { "HX-Request": "true" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        if (cardFor !== url) return;
        card.innerHTML = html;
        card.hidden = false;
        var r = cell.getBoundingClientRect();
        card.style.top = (window.scrollY + r.bottom + 6) + "px";
        card.style.left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth - 340) + "px";
        if (window.htmx) htmx.process(card);
        if (focus) {
          var first = card.querySelector("button, a");
          if (first) first.focus();
        }
      });
  }
  function closeCard() { if (card) { card.hidden = true; cardFor = null; } }
  document.addEventListener("keydown", function (ev) {
    var map = mapEl();
    if (ev.key === "Escape" && card && !card.hidden) { closeCard(); if (map) map.focus(); return; }
    if (!map || document.activeElement !== map) return;
    var keys = { ArrowRight: [1, false], ArrowLeft: [-1, false], ArrowDown: [1, true], ArrowUp: [-1, true] };
    if (keys[ev.key]) { ev.preventDefault(); move(keys[ev.key][0], keys[ev.key][1]); }
    else if (ev.key === "Home") { ev.preventDefault(); activate(cells()[0]); }
    else if (ev.key === "End") { ev.preventDefault(); var a = cells(); activate(a[a.length - 1]); }
    else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      if (!activeCell || !activeCell.isConnected) move(0);
      if (activeCell) openCard(activeCell, true);
    }
  });
  // With this script the map is one tab stop (arrow keys inside); without it, every server link is one.
  function untab(el) {
    var links = el.matches && el.matches(".t") ? [el] : el.querySelectorAll(".t");
    for (var i = 0; i < links.length; i++) if (links[i]) links[i].tabIndex = -1;
  }
  var map0 = mapEl();
  if (map0) {
    untab(map0);
    document.addEventListener("focusin", function (ev) {
      if (ev.target === mapEl() && (!activeCell || !activeCell.isConnected)) move(0);
    });
    var hoverTimer = 0;
    document.addEventListener("mouseover", function (ev) {
      var cell = ev.target.closest && ev.target.closest("#fleet-map .t i");
      if (!cell) return;
      clearTimeout(hoverTimer);
      hoverTimer = setTimeout(function () { activate(cell, false); openCard(cell, false); }, 150);
    });
    document.addEventListener("click", function (ev) {
      var cell = ev.target.closest && ev.target.closest("#fleet-map .t i");
      if (cell) { ev.preventDefault(); activate(cell); openCard(cell, true); }
      else if (card && !card.hidden && !ev.target.closest("#gpu-card")) closeCard();
    });
  }
})();
