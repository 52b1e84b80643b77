// Tiny SVG charts: no library, no inline styles (colours come from classes in app.css).

const NS = 'http://www.w3.org/2000/svg';
function s(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// A line chart of one or more series over shared x positions. `series`: [{name, cls, values}].
export function lineChart(title, labels, series, opts = {}) {
  const W = 600, H = 160, P = 28;
  const max = Math.max(1, ...series.flatMap((x) => x.values));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': title });
  const t = s('title'); t.textContent = title; svg.appendChild(t);
  for (let i = 0; i <= 2; i++) {
    const y = P + ((H - 2 * P) * i) / 2;
    svg.appendChild(s('line', { x1: P, x2: W - 4, y1: y, y2: y, class: 'gridline' }));
    const lab = s('text', { x: 2, y: y + 4, class: 'axis' });
    lab.textContent = fmt(max * (1 - i / 2), opts.unit);
    svg.appendChild(lab);
  }
  const n = Math.max(1, labels.length - 1);
  for (const ser of series) {
    const pts = ser.values.map((v, i) => `${P + ((W - P - 4) * i) / n},${H - P - ((H - 2 * P) * v) / max}`).join(' ');
    svg.appendChild(s('polyline', { points: pts, class: `line ${ser.cls}` }));
  }
  if (labels.length) {
    for (const [i, anchor] of [[0, 'start'], [labels.length - 1, 'end']]) {
      const tx = s('text', { x: P + ((W - P - 4) * i) / n, y: H - 6, class: 'axis', 'text-anchor': anchor });
      tx.textContent = labels[i];
      svg.appendChild(tx);
    }
  }
  return svg;
}

function fmt(v, unit) {
  const r = v >= 10 ? Math.round(v) : Math.round(v * 10) / 10;
  return unit ? `${r}${unit}` : String(r);
}
