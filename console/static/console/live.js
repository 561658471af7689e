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
  window.__live = { applied: 0, work: [], unnamed: function () { return unnamed.size; }, version: function () { return version; }, socket: function () { return socket; } };

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

  // Swap what arrived, a frame's worth at a time: at most BUDGET_MS of work per animation frame, the
  // rest in the next one (a burst never stalls a frame). Tiles whose shape is unchanged are morphed
  // (classes and data copied onto the existing nodes: only changed cells are touched); anything else
  // is replaced by the server's fragment as it is.
  var BUDGET_MS = 8;
  var CHUNK = 40;
  function apply() {
    frame = 0;
    var start = performance.now();
    var active = activeKey();
    var touched = [];
    while (pending.size && performance.now() - start < BUDGET_MS) {
      var ids = [];
      var html = [];
      var it = pending.keys();
      for (var n = 0; n < CHUNK; n++) {
        var next = it.next();
        if (next.done) break;
        ids.push(next.value);
        html.push(pending.get(next.value).trim());
      }
      for (var d = 0; d < ids.length; d++) pending.delete(ids[d]);
      var t = document.createElement("template");
      t.innerHTML = html.join("");
      var fresh = Array.prototype.slice.call(t.content.children);
      for (var i = 0; i < fresh.length; i++) {
        var el = document.getElementById(fresh[i].id || ids[i]);
        if (!el) continue;
        if (el.classList.contains("t") && morph(el, fresh[i])) {
          touched.push(el);
        } else {
          el.replaceWith(fresh[i]);
          untab(fresh[i]);
          touched.push(fresh[i]);
          if (window.htmx && fresh[i].querySelector("[hx-get],[hx-post]")) htmx.process(fresh[i]);
        }
        window.__live.applied += 1;
      }
    }
    for (var k = 0; k < touched.length; k++) refresh(touched[k]);
    if (active) restoreActive(active);
    if (pending.size) frame = requestAnimationFrame(apply);
    var work = window.__live.work;  // the ms each frame's apply took (bench/ui.py reads it)
    work.push(performance.now() - start);
    if (work.length > 1000) work.splice(0, 500);
  }
  // After a swap: selection and clock marks are put back at once; the cells' names are computed
  // again in idle time (a frame only swaps; the active cell is named at once by restoreActive).
  var unnamed = new Set();
  var naming = 0;
  function refresh(el) {
    var tiles = el.classList && el.classList.contains("t") ? [el] : el.querySelectorAll ? el.querySelectorAll(".t") : [];
    for (var i = 0; i < tiles.length; i++) {
      if (selected.has(tiles[i].id)) tiles[i].classList.add("sel");
      if (tiles[i].querySelector("[data-s]")) tickIn(tiles[i]);
      unnamed.add(tiles[i]);
    }
    if (unnamed.size && !naming) naming = idle(nameSome);
  }
  var idle = window.requestIdleCallback || function (fn) {
    return setTimeout(function () { fn({ timeRemaining: function () { return 8; } }); }, 1);
  };
  function nameSome(deadline) {
    naming = 0;
    var it = unnamed.values();
    var stop = performance.now() + 6;  // an idle slice can offer 50 ms: never take a frame's worth
    while (deadline.timeRemaining() > 1 && performance.now() < stop) {
      var next = it.next();
      if (next.done) break;
      unnamed.delete(next.value);
      if (next.value.isConnected) labelTile(next.value);
    }
    if (unnamed.size) naming = idle(nameSome);
  }

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
  // The server's attributes onto the live node (a fixed list: cheaper than walking attributes); a
  // cell's name and role, which this script computes, stay until it names the cell again.
  var MORPHED = ["class", "aria-label", "data-t", "data-l", "data-x", "data-c", "data-s", "data-o"];
  function copy(a, b) {
    for (var k = 0; k < MORPHED.length; k++) {
      var v = b.getAttribute(MORPHED[k]);
      if (v === null) { if (MORPHED[k] !== "aria-label" && a.hasAttribute(MORPHED[k])) a.removeAttribute(MORPHED[k]); }
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
  var selected = new Set();
  function mapEl() { return document.getElementById("fleet-map"); }
  function cells() { return mapEl().querySelectorAll(".t i"); }
  function indexOf(cell) { return Array.prototype.indexOf.call(cell.parentNode.querySelectorAll("i"), cell); }

  // The server's clock (the page says what time it rendered): times in state are the server's.
  var skew = 0;
  (function () { var m = mapEl(); if (m && m.dataset.now) skew = parseInt(m.dataset.now, 10) * 1000 - Date.now(); })();
  function nowS() { return (Date.now() + skew) / 1000; }
  function dur(seconds) {  // console/ui/tiles.py duration()
    var m = Math.floor(seconds / 60);
    if (m < 1) return "<1 min";
    if (m < 60) return m + " min";
    var h = Math.floor(m / 60); m = m % 60;
    if (h < 24) return m ? h + " h " + m + " min" : h + " h";
    var d = Math.floor(h / 24); h = h % 24;
    return h ? d + " d " + h + " h" : d + " d";
  }
  function timed(el) {  // [seconds in state, overdue] of an element with data-s / data-o
    var since = parseInt(el.dataset.s, 10);
    var limit = parseInt(el.dataset.o || "0", 10);
    var elapsed = Math.max(0, nowS() - since);
    return [elapsed, limit > 0 && elapsed > limit];
  }

  // Every cell's accessible name, from the compact data on it and its tile (tiles.py says what is where).
  function labelTile(tile) {
    var host = tile.firstChild.textContent.trim();
    var temps = (tile.dataset.c || "").split(" ");
    var st = tile.querySelector(".ss");
    var cs = tile.querySelectorAll("i");
    var tenant = "", lease = "";
    for (var i = 0; i < cs.length; i++) {
      var c = cs[i];
      if (c.dataset.t) { tenant = c.dataset.t; lease = c.dataset.l || ""; }
      else if (!c.textContent) { tenant = ""; lease = ""; }
      var code = c.classList[0];
      var state = STATES[code] || code;
      if (c.classList.contains("bt")) state += ", booting";
      if (c.dataset.s) { var tm = timed(c); state += " " + dur(tm[0]) + (tm[1] ? ", overdue" : ""); }
      else if (c.classList.contains("od")) state += ", overdue";
      var parts = [host + " GPU " + (i + 1) + ": " + state];
      if (tenant) parts.push(tenant);
      if (lease) parts.push(/^\d+$/.test(lease) ? "lease " + lease : lease);
      if (temps[i] && temps[i] !== "-") parts.push(temps[i] + " °C");
      if (c.dataset.x) parts.push("last Xid " + c.dataset.x);
      if (st) parts.push("server " + st.textContent);
      var name = parts.join(", ");
      if (c.getAttribute("aria-label") !== name) c.setAttribute("aria-label", name);  // unchanged cells: no a11y churn
      if (!c.hasAttribute("role")) c.setAttribute("role", "img");
    }
  }
  function describe(cell) { labelTile(cell.closest(".t")); return cell.getAttribute("aria-label"); }
  // All of them once the page has painted, in idle slices (the first paint does not wait).
  function labelAll() {
    var m = mapEl();
    if (!m) return;
    var tiles = m.querySelectorAll(".t");
    for (var i = 0; i < tiles.length; i++) unnamed.add(tiles[i]);
    if (!naming) naming = idle(nameSome);
  }

  // One clock for every time in state: badges' text ticks, and what passes its limit is marked overdue.
  function tickIn(root) {
    var els = root.querySelectorAll("[data-s]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var tm = timed(el);
      if (el.tagName === "B") {
        var word = el.textContent.replace(/ (<1|\d).*$/, "");
        var text = word + " " + dur(tm[0]);
        if (el.textContent !== text) el.textContent = text;
      }
      if (tm[1] && !el.classList.contains("od")) {
        el.classList.add("od");
        var tile = el.closest(".t");
        if (tile) { if (el.classList.contains("ss")) tile.classList.add("od"); labelTile(tile); }
      }
    }
  }
  function tick() { var m = mapEl(); if (m) tickIn(m); }
  window.__live.tick = tick;

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
    }
    activeCell = cell;
    cell.classList.add("act");
    cell.id = "map-active-cell";
    var name = describe(cell);
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
    else if ((ev.key === "s" || ev.key === "S") && selForm) {
      ev.preventDefault();
      if (!activeCell || !activeCell.isConnected) move(0);
      if (activeCell) toggleSelect(activeCell.closest(".t"), true);
    }
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
  // Several servers at once: Shift+click a tile, or S on the map, toggles its server in the selection;
  // the selection bar's buttons preview the action on all of them (fleet.previews, one token).
  var selForm = document.getElementById("map-selection");
  function toggleSelect(tile, announce) {
    if (!selForm || !tile) return;
    if (selected.has(tile.id)) { selected.delete(tile.id); tile.classList.remove("sel"); }
    else { selected.add(tile.id); tile.classList.add("sel"); }
    renderSelection();
    if (announce) {
      var live = document.getElementById("map-active");
      if (live) live.textContent = tile.firstChild.textContent.trim() + (selected.has(tile.id) ? " selected" : " unselected") +
        "; " + selected.size + " selected";
    }
  }
  function clearSelection() {
    selected.forEach(function (id) { var t = document.getElementById(id); if (t) t.classList.remove("sel"); });
    selected.clear();
    renderSelection();
  }
  function renderSelection() {
    if (!selForm) return;
    var box = selForm.querySelector(".ids");
    box.textContent = "";
    var names = [];
    selected.forEach(function (id) {
      var t = document.getElementById(id);
      if (!t) { selected.delete(id); return; }
      var input = document.createElement("input");
      input.type = "hidden"; input.name = "target_ids"; input.value = id.slice(7);
      box.appendChild(input);
      names.push(t.firstChild.textContent.trim());
    });
    selForm.hidden = selected.size === 0;
    selForm.querySelector(".what").textContent = names.length + " server" + (names.length === 1 ? "" : "s") +
      " selected: " + names.join(", ");
  }
  document.addEventListener("click", function (ev) {
    if (ev.target.closest && ev.target.closest("[data-clear-selection]")) clearSelection();
  });
  // A confirmed action on the selection is done with it.
  document.addEventListener("htmx:afterSettle", function (ev) {
    if (ev.detail.target && ev.detail.target.id === "dialog-body" && document.getElementById("action-done") &&
        selected.size) clearSelection();
  });

  var map0 = mapEl();
  if (map0) {
    untab(map0);
    setTimeout(labelAll, 0);
    tick();
    setInterval(tick, 15000);
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
      var tile = ev.target.closest && ev.target.closest("#fleet-map .t");
      if (tile && ev.shiftKey && selForm) { ev.preventDefault(); toggleSelect(tile, true); return; }
      var cell = ev.target.closest && ev.target.closest("#fleet-map .t i");
      if (cell) { ev.preventDefault(); activate(cell); openCard(cell, true); }
      else if (card && !card.hidden && !ev.target.closest("#gpu-card")) closeCard();
    });
  }
})();
