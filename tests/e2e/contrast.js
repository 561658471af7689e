() => {
  // WCAG 2 contrast of each visible text run against the background it is painted on.
  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = ({r, g, b}) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.backgroundImage && s.backgroundImage !== 'none') return null;  // a pattern or gradient: not judged
      const c = parse(s.backgroundColor); if (c && c.a > 0.5) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement; if (!el || seen.has(el) || !n.textContent.trim()) continue; seen.add(el);
    const s = getComputedStyle(el); const rect = el.getBoundingClientRect();
    if (s.visibility === 'hidden' || s.display === 'none' || rect.width === 0 || rect.height === 0 || parseFloat(s.opacity) === 0) continue;
    if (el.closest('[hidden], [aria-hidden=true], dialog:not([open]), .sr-only, .visually-hidden')) continue;
    const bg = background(el); const fg = parse(s.color); if (!bg || !fg) continue;
    const [l1, l2] = [lum(fg), lum(bg)].sort((a, b) => b - a); const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(s.fontSize); const bold = parseInt(s.fontWeight) >= 700;
    const needed = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < needed) out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')} "${n.textContent.trim().slice(0, 40)}" ${ratio.toFixed(2)} < ${needed} (${s.color} on ${JSON.stringify(bg)})`);
  }
  return out;
}
