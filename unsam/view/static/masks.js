/* unsam.view: masks in the page. Pure functions over the label JSON (no DOM): COCO compressed RLE decoded
 * to column-major run lengths, a level's partition painted into an owner map by the rule of
 * unsam.evaluate.level_partitions, and the 4-connected areas no mask covers. Used by app.js.
 */
'use strict';

/** COCO compressed RLE counts string -> Int32Array of run lengths (pycocotools' rleFrString). */
let scratch = new Int32Array(1 << 16);
export function decodeCounts(s) {
  const n = s.length;
  if (scratch.length < n) scratch = new Int32Array(n);
  const out = scratch;
  let m = 0, p = 0;
  while (p < n) {
    let x = 0, k = 0, c;
    do { c = s.charCodeAt(p++) - 48; x |= (c & 0x1f) << (5 * k); k++; } while ((c & 0x20) && p < n);
    if (c & 0x10) x |= -1 << (5 * k);
    if (m > 2) x += out[m - 2];
    out[m++] = x;
  }
  return out.slice(0, m);
}

/** Area and box [x0, y0, x1, y1] (inclusive; x0 = -1 when empty) of column-major runs of an H-row image. */
export function runStats(runs, H) {
  let pos = 0, area = 0, x0 = -1, x1 = -1, y0 = H, y1 = -1;
  for (let j = 0; j < runs.length; j++) {
    const c = runs[j];
    if ((j & 1) && c > 0) {
      area += c;
      const a = pos, b = pos + c - 1, xa = (a / H) | 0, xb = (b / H) | 0;
      if (x0 < 0) x0 = xa;
      x1 = xb;
      if (xa !== xb) { y0 = 0; y1 = H - 1; } else { y0 = Math.min(y0, a - xa * H); y1 = Math.max(y1, b - xb * H); }
    }
    pos += c;
  }
  return { area, box: [x0, y0, x1, y1] };
}

export function prepare(obj) {
  const t0 = performance.now();
  const H = obj.image.height, W = obj.image.width, anns = obj.annotations, n = anns.length, N = H * W;
  const runs = new Array(n), area = new Float64Array(n), lvl = new Int32Array(n), score = new Float64Array(n);
  const box = new Int32Array(4 * n), src = new Array(n), byId = new Map(), kids = new Map();
  let maxLevel = 0;
  for (let i = 0; i < n; i++) {
    const a = anns[i];
    runs[i] = decodeCounts(a.segmentation.counts);
    const st = runStats(runs[i], H);
    area[i] = st.area;
    box.set(st.box, 4 * i);
    lvl[i] = a.level;
    score[i] = a.score;
    src[i] = a.source;
    maxLevel = Math.max(maxLevel, a.level);
    byId.set(a.id, i);
  }
  for (let i = 0; i < n; i++) {
    const p = anns[i].parent_id;
    if (p !== null && p !== undefined) { if (!kids.has(p)) kids.set(p, []); kids.get(p).push(i); }
  }
  // The painting order of level_partitions: coarse to fine; inside a level larger first; then file order.
  const order = Int32Array.from({ length: n }, (_, i) => i).sort((i, j) => lvl[i] - lvl[j] || area[j] - area[i] || i - j);
  return {
    H, W, N, anns, n, runs, area, lvl, score, src, box, byId, kids, order, maxLevel, pass: new Uint8Array(n),
    // Uint16 halves the memory traffic of painting (about 2x faster on a 1000-mask SA-1B image) when ids fit.
    owner: n < 65535 ? new Uint16Array(N) : new Int32Array(N), comp: new Int32Array(N), stack: new Int32Array(N),
    seen: new Uint8Array(n + 1), grid: null, nSeg: 0, nMasks: 0, nComp: 0, painted: -1, decodeMs: performance.now() - t0,
  };
}

/** Owner map of level l under the current filters, then the uncovered components and the counts. */
export function paint(d, level, sourcesOff, minScore) {
  const { owner, order, runs, lvl, pass, score, src } = d;
  for (let i = 0; i < d.n; i++) pass[i] = !sourcesOff.has(src[i]) && score[i] >= minScore ? 1 : 0;
  owner.fill(0);
  for (let k = 0; k < order.length; k++) {
    const i = order[k];
    if (lvl[i] > level) break;
    if (!pass[i]) continue;
    const r = runs[i], v = i + 1;
    let pos = 0;
    for (let j = 0; j < r.length; j++) {
      const c = r[j];
      if (j & 1) {
        if (c > 24) owner.fill(v, pos, pos + c);
        else for (let p = pos, e = pos + c; p < e; p++) owner[p] = v;
      }
      pos += c;
    }
  }
  d.painted = level;
  components(d);
}

export function components(d) {
  const { owner, comp, stack, seen, H, W, N } = d;
  comp.fill(0);
  seen.fill(0);
  let masks = 0, nc = 0;
  for (let i = 0; i < N; i++) {
    const o = owner[i];
    if (o !== 0) { if (!seen[o]) { seen[o] = 1; masks++; } continue; }
    if (comp[i] !== 0) continue;
    nc++;
    let top = 0;
    stack[top++] = i;
    comp[i] = nc;
    while (top > 0) {
      const p = stack[--top], x = (p / H) | 0, y = p - x * H;
      if (y > 0 && owner[p - 1] === 0 && comp[p - 1] === 0) { comp[p - 1] = nc; stack[top++] = p - 1; }
      if (y < H - 1 && owner[p + 1] === 0 && comp[p + 1] === 0) { comp[p + 1] = nc; stack[top++] = p + 1; }
      if (x > 0 && owner[p - H] === 0 && comp[p - H] === 0) { comp[p - H] = nc; stack[top++] = p - H; }
      if (x < W - 1 && owner[p + H] === 0 && comp[p + H] === 0) { comp[p + H] = nc; stack[top++] = p + H; }
    }
  }
  d.nMasks = masks;
  d.nComp = nc;
  d.nSeg = masks + nc;
}

/** A full-resolution bitmap of a mask's box [x0, y0, x1, y1]: inside(x, y) for the pixels of its runs. */
export function runsInside(runs, H, box) {
  const [x0, y0, , y1] = box, bw = y1 - y0 + 1, m = new Uint8Array(bw * (box[2] - x0 + 1));
  let pos = 0;
  for (let j = 0; j < runs.length; j++) {
    const c = runs[j];
    if (j & 1) {
      for (let p = pos, end = pos + c; p < end;) {
        const x = (p / H) | 0, y = p - x * H, len = Math.min(end - p, H - y), off = (x - x0) * bw + (y - y0);
        m.fill(1, off, off + len);
        p += len;
      }
    }
    pos += c;
  }
  return (x, y) => m[(x - x0) * bw + (y - y0)] === 1;
}
