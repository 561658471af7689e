/* The lease page's boot timeline: the phase still running grows by this browser's clock. The server
   rendered it with the wall seconds it had run (data-elapsed) and the boot seconds per wall second
   seen so far (data-rate); it sends a new timeline only at phase boundaries (live.js swaps it in),
   so between them this is the only thing that moves. Without JavaScript the bar shows its length at
   render. */
(function () {
  "use strict";
  var seen = new WeakMap();  // element -> performance.now() when first seen (no server clock needed)

  function since(el) {
    var t0 = seen.get(el);
    if (t0 === undefined) { t0 = performance.now(); seen.set(el, t0); }
    var wall = parseFloat(el.dataset.elapsed || el.dataset.runElapsed || "0") + (performance.now() - t0) / 1000;
    return wall * (parseFloat(el.dataset.rate) || 1);
  }

  function label(s) {
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.round(s) + " s";
    var r = Math.round(s), m = Math.floor(r / 60), rest = r % 60;
    if (r < 3600) return rest ? m + " min " + rest + " s" : m + " min";
    return Math.floor(r / 3600) + " h " + Math.floor((r % 3600) / 60) + " min";
  }

  function tick() {
    var bars = document.querySelectorAll(".tl-bar.run[data-scale]");
    for (var i = 0; i < bars.length; i++) {
      var bar = bars[i];
      var scale = parseFloat(bar.dataset.scale), offset = parseFloat(bar.dataset.offset);
      var width = Math.min(since(bar) / scale * 100, 100 - offset / scale * 100);
      bar.style.width = Math.max(width, 0).toFixed(3) + "%";
    }
    var texts = document.querySelectorAll("[data-run-elapsed]");
    for (var j = 0; j < texts.length; j++) texts[j].textContent = label(since(texts[j]));
    window.__timelineTicks = (window.__timelineTicks || 0) + 1;
  }

  function loop() {
    tick();
    setTimeout(function () { requestAnimationFrame(loop); }, 100);  // ten updates a second is smooth enough
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", loop);
  else loop();
})();
