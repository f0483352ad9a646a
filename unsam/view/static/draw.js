/* unsam.view: drawing the overlays. Colours as unsam.label.vis.mask_color; the overlay canvases have one
 * pixel per screen pixel and are stored transposed (column-major, like the RLE), shown through a CSS transpose.
 */
'use strict';

const GOLDEN = 0.618033988749895;

export function maskColor(id) {
  const h = (((id * GOLDEN) % 1) + 1) % 1;
  const s = 0.55 + 0.35 * ((((id * 7) % 3) + 3) % 3) / 2;
  const v = 0.95 - 0.2 * ((((id * 5) % 2) + 2) % 2);
  const i = Math.floor(h * 6), f = h * 6 - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
  return [Math.round(r * 255), Math.round(g * 255), Math.round(b * 255)];
}
export const rgba = (c, a) => ((Math.round(a * 255) << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0; // little-endian ImageData
export const css = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

/* The overlay canvases have one pixel per screen pixel (at most one per image pixel): canvas pixel (u, v)
 * shows image pixel (x = xs[v], y = ys[u]), transposed. At "fit" an SA-1B image has ~7x fewer screen pixels
 * than image pixels, and outlines stay one screen pixel wide at every zoom. */
export function makeGrid(d, rs) {
  const cw = Math.max(1, Math.round(d.H * rs)), ch = Math.max(1, Math.round(d.W * rs));
  const ys = new Int32Array(cw), xs = new Int32Array(ch);
  for (let u = 0; u < cw; u++) ys[u] = Math.min(d.H - 1, Math.floor(((u + 0.5) * d.H) / cw));
  for (let v = 0; v < ch; v++) xs[v] = Math.min(d.W - 1, Math.floor(((v + 0.5) * d.W) / ch));
  const img = new ImageData(cw, ch);
  return { rs, cw, ch, ys, xs, img, buf: new Uint32Array(img.data.buffer) };
}

/** The overlay: each segment in its mask's colour, outlined where the owner changes. */
export function render(side, mode, opacity) {
  const d = side.d, g = d.grid, { owner, H, anns } = d, { cw, ch, ys, xs, buf } = g;
  if (!d.fill || d.fillAlpha !== opacity) {
    d.fill = new Uint32Array(d.n + 1);
    d.edge = new Uint32Array(d.n + 1);
    for (let i = 0; i < d.n; i++) {
      const c = maskColor(anns[i].id);
      d.fill[i + 1] = rgba(c, opacity);
      d.edge[i + 1] = rgba(c, Math.min(1, 0.35 + opacity));
    }
    d.fillAlpha = opacity;
  }
  const fill = mode === 'outlines' ? new Uint32Array(d.n + 1) : d.fill, edge = d.edge;
  for (let v = 0; v < ch; v++) {
    const b = xs[v] * H, bp = v > 0 ? xs[v - 1] * H : b, bn = v + 1 < ch ? xs[v + 1] * H : b, row = v * cw;
    for (let u = 0; u < cw; u++) {
      const y = ys[u], o = owner[b + y];
      if (o === 0) { buf[row + u] = 0; continue; }
      const e = (u > 0 && owner[b + ys[u - 1]] !== o) || (u + 1 < cw && owner[b + ys[u + 1]] !== o) || owner[bp + y] !== o || owner[bn + y] !== o;
      buf[row + u] = e ? edge[o] : fill[o];
    }
  }
  side.ctx.over.putImageData(g.img, 0, 0);
}

const blit = document.createElement('canvas'), blitCtx = blit.getContext('2d');

/** Draw the pixels of box where inside(x, y) on a layer canvas, filled and outlined (wide: 2 px); returns the dirty rect. */
export function drawLayer(d, ctx, box, inside, fillC, edgeC, fillA, wide) {
  const g = d.grid, [x0, y0, x1, y1] = box;
  if (x0 < 0) return null;
  const u0 = Math.max(0, Math.floor((y0 * g.cw) / d.H) - 1), u1 = Math.min(g.cw - 1, Math.ceil(((y1 + 1) * g.cw) / d.H));
  const v0 = Math.max(0, Math.floor((x0 * g.ch) / d.W) - 1), v1 = Math.min(g.ch - 1, Math.ceil(((x1 + 1) * g.ch) / d.W));
  const bw = u1 - u0 + 1, bh = v1 - v0 + 1, m = new Uint8Array(bw * bh);
  for (let r = 0; r < bh; r++) {
    const x = g.xs[v0 + r];
    if (x < x0 || x > x1) continue;
    for (let q = 0; q < bw; q++) {
      const y = g.ys[u0 + q];
      if (y >= y0 && y <= y1 && inside(x, y)) m[r * bw + q] = 1;
    }
  }
  const img = new ImageData(bw, bh), buf = new Uint32Array(img.data.buffer), f = rgba(fillC, fillA), e = rgba(edgeC, 1), t = wide ? 2 : 1;
  for (let r = 0; r < bh; r++) {
    for (let q = 0; q < bw; q++) {
      const i = r * bw + q;
      if (!m[i]) continue;
      let edge = false;
      for (let k = 1; k <= t && !edge; k++) edge = q < k || !m[i - k] || q + k >= bw || !m[i + k] || r < k || !m[i - k * bw] || r + k >= bh || !m[i + k * bw];
      buf[i] = edge ? e : f;
    }
  }
  // drawImage blends (putImageData would overwrite what another mask drew in this box).
  blit.width = bw;
  blit.height = bh;
  blitCtx.putImageData(img, 0, 0);
  ctx.drawImage(blit, u0, v0);
  return [u0, v0, bw, bh];
}
