/* unsam.view: the page. Served by python -m unsam.view (unsam/view.py); no build step, no dependencies.
 *
 * Masks arrive as the label JSON on disk (COCO compressed RLE, column-major). Each is decoded once to run
 * lengths; a level's partition is painted into an owner map (annotation index + 1 per pixel, 0 = no mask)
 * by the rule of unsam.evaluate.level_partitions: masks of level <= l, ordered by (level, larger area first,
 * file order), later ones over earlier ones, so each pixel keeps its deepest mask, and inside a level the
 * smaller one; every 4-connected area no mask covers is a segment of its own. The owner map and the overlay
 * canvases are column-major (x * H + y) like the RLE, so every run is one contiguous fill; the canvases are
 * shown through a CSS transpose. tests/test_view.py checks this partition against level_partitions.
 */
'use strict';
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = (key) => key.split('/').map(encodeURIComponent).join('/');
  const GOLDEN = 0.618033988749895;
  const CAND_COLORS = [[0, 188, 212], [255, 152, 0], [139, 195, 74], [233, 30, 99], [63, 81, 181], [255, 235, 59]];
  const SEL_COLOR = [255, 230, 0];

  const S = {
    info: null, page: null, q: '', key: null, level: 0, levelSet: false, maxLevel: 0,
    mode: 'filled', opacity: 0.45, minScore: 0, sourcesOff: new Set(), sources: new Set(), zoom: 'fit', scale: 1,
    sides: [], sel: null, cand: null, loadSeq: 0, pageSeq: 0, hoverPx: null, hoverQueued: false,
  };
  // What the browser tests (and a curious user in the console) read.
  const view = window.unsamView = {
    ready: false, listReady: false, key: null, tti: null, timings: {}, errors: {}, level: 0, selected: null, candidates: null, lastPixel: null,
  };

  // ------------------------------------------------------------------ RLE

  /** COCO compressed RLE counts string -> Int32Array of run lengths (pycocotools' rleFrString). */
  let scratch = new Int32Array(1 << 16);
  function decodeCounts(s) {
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
  function runStats(runs, H) {
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

  // ------------------------------------------------------------------ colours (unsam.vis.mask_color)

  function maskColor(id) {
    const h = (((id * GOLDEN) % 1) + 1) % 1;
    const s = 0.55 + 0.35 * ((((id * 7) % 3) + 3) % 3) / 2;
    const v = 0.95 - 0.2 * ((((id * 5) % 2) + 2) % 2);
    const i = Math.floor(h * 6), f = h * 6 - i, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6];
    return [Math.round(r * 255), Math.round(g * 255), Math.round(b * 255)];
  }
  const rgba = (c, a) => ((Math.round(a * 255) << 24) | (c[2] << 16) | (c[1] << 8) | c[0]) >>> 0; // little-endian ImageData
  const css = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

  // ------------------------------------------------------------------ data of one side

  function prepare(obj) {
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
  function paint(d, level) {
    const { owner, order, runs, lvl, pass, score, src } = d;
    for (let i = 0; i < d.n; i++) pass[i] = !S.sourcesOff.has(src[i]) && score[i] >= S.minScore ? 1 : 0;
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

  function components(d) {
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

  /* The overlay canvases have one pixel per screen pixel (at most one per image pixel): canvas pixel (u, v)
   * shows image pixel (x = xs[v], y = ys[u]), transposed. At "fit" an SA-1B image has ~7x fewer screen pixels
   * than image pixels, and outlines stay one screen pixel wide at every zoom. */
  function makeGrid(d, rs) {
    const cw = Math.max(1, Math.round(d.H * rs)), ch = Math.max(1, Math.round(d.W * rs));
    const ys = new Int32Array(cw), xs = new Int32Array(ch);
    for (let u = 0; u < cw; u++) ys[u] = Math.min(d.H - 1, Math.floor(((u + 0.5) * d.H) / cw));
    for (let v = 0; v < ch; v++) xs[v] = Math.min(d.W - 1, Math.floor(((v + 0.5) * d.W) / ch));
    const img = new ImageData(cw, ch);
    return { rs, cw, ch, ys, xs, img, buf: new Uint32Array(img.data.buffer) };
  }

  /** The overlay: each segment in its mask's colour, outlined where the owner changes. */
  function render(side) {
    const d = side.d, g = d.grid, { owner, H, anns } = d, { cw, ch, ys, xs, buf } = g;
    if (!d.fill || d.fillAlpha !== S.opacity) {
      d.fill = new Uint32Array(d.n + 1);
      d.edge = new Uint32Array(d.n + 1);
      for (let i = 0; i < d.n; i++) {
        const c = maskColor(anns[i].id);
        d.fill[i + 1] = rgba(c, S.opacity);
        d.edge[i + 1] = rgba(c, Math.min(1, 0.35 + S.opacity));
      }
      d.fillAlpha = S.opacity;
    }
    const fill = S.mode === 'outlines' ? new Uint32Array(d.n + 1) : d.fill, edge = d.edge;
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

  /** A full-resolution bitmap of a mask's box [x0, y0, x1, y1]: inside(x, y) for the pixels of its runs. */
  function runsInside(runs, H, box) {
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

  const blit = document.createElement('canvas'), blitCtx = blit.getContext('2d');

  /** Draw the pixels of box where inside(x, y) on a layer canvas, filled and outlined (wide: 2 px); returns the dirty rect. */
  function drawLayer(d, ctx, box, inside, fillC, edgeC, fillA, wide) {
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

  // ------------------------------------------------------------------ panels

  function makeSide(name, title) {
    const panel = document.createElement('div');
    panel.className = 'panel';
    panel.dataset.side = name;
    panel.innerHTML = '<h2><span class="title"></span><span class="seg num"></span></h2><div class="message"></div>' +
      '<div class="scroller"><div class="stage"><img alt=""><canvas class="over"></canvas><canvas class="hover"></canvas><canvas class="sel"></canvas></div></div>';
    $('.title', panel).textContent = title;
    $('.title', panel).title = title;
    const side = {
      name, panel, msg: $('.message', panel), seg: $('.seg', panel), scroller: $('.scroller', panel), stage: $('.stage', panel),
      img: $('img', panel), cv: {}, ctx: {}, d: null, hover: null,
    };
    for (const c of ['over', 'hover', 'sel']) { side.cv[c] = $(`canvas.${c}`, panel); side.ctx[c] = side.cv[c].getContext('2d'); }
    side.stage.addEventListener('mousemove', (ev) => onMove(side, ev));
    side.stage.addEventListener('mouseleave', () => { S.hoverPx = null; queueHover(); });
    side.stage.addEventListener('click', (ev) => onClick(side, ev));
    side.scroller.addEventListener('scroll', () => {
      for (const o of S.sides) if (o !== side && (o.scroller.scrollLeft !== side.scroller.scrollLeft || o.scroller.scrollTop !== side.scroller.scrollTop)) {
        o.scroller.scrollLeft = side.scroller.scrollLeft;
        o.scroller.scrollTop = side.scroller.scrollTop;
      }
    });
    $('#panels').appendChild(panel);
    return side;
  }

  /** Fit or zoom the stages; rebuild the canvases when the screen resolution of the image changed. */
  function layout() {
    const first = S.sides.find((s) => s.d);
    if (!first) return;
    const { H, W } = first.d;
    let scale = Number(S.zoom);
    if (S.zoom === 'fit') {
      scale = 4; // small images (BSDS, the samples) are shown larger, up to 4x
      for (const s of S.sides) scale = Math.min(scale, (s.scroller.clientWidth - 2) / W, (s.scroller.clientHeight - 2) / H);
      scale = Math.max(scale, 0.02);
    }
    S.scale = scale;
    // One canvas pixel per screen pixel, also above 1 image pixel (crisp outlines on small images), but at most
    // 4 M canvas pixels (a 200 % zoom of an SA-1B image would need 54 M): rendering time follows this count.
    const want = scale * (window.devicePixelRatio || 1), cap = Math.sqrt(4e6 / (H * W));
    const rs = Math.ceil(Math.min(want, Math.max(1, cap)) * 64) / 64;
    let changed = false;
    for (const s of S.sides) {
      s.stage.style.width = `${W * scale}px`;
      s.stage.style.height = `${H * scale}px`;
      s.stage.classList.toggle('pixelated', scale >= 1);
      for (const c of Object.values(s.cv)) { c.style.width = `${H * scale}px`; c.style.height = `${W * scale}px`; }
      if (s.d && (!s.d.grid || s.d.grid.rs !== rs)) {
        s.d.grid = makeGrid(s.d, rs);
        for (const c of Object.values(s.cv)) { c.width = s.d.grid.cw; c.height = s.d.grid.ch; }
        changed = true;
      }
    }
    if (changed) redrawAll(false);
  }

  function redrawAll(repaint) {
    for (const s of S.sides) {
      if (!s.d || !s.d.grid) continue;
      if (repaint) paint(s.d, S.level);
      render(s);
      s.hover = null;
      s.ctx.hover.clearRect(0, 0, s.d.grid.cw, s.d.grid.ch);
    }
    drawSelection();
    headers();
    queueHover();
  }

  function headers() {
    $('#level-label').textContent = `${S.level} / ${S.maxLevel}`;
    view.level = S.level;
    for (const s of S.sides) {
      if (!s.d) { s.seg.textContent = ''; delete s.panel.dataset.segments; continue; }
      const d = s.d;
      s.seg.textContent = `${d.nSeg} segments`;
      s.seg.title = `${d.nMasks} masks + ${d.nComp} uncovered areas at level ${d.painted} (of ${d.n} masks in the file)`;
      s.panel.dataset.segments = String(d.nSeg);
      s.panel.dataset.level = String(d.painted);
    }
  }

  function setLevel(l) {
    l = Math.max(0, Math.min(S.maxLevel, l | 0));
    $('#level').value = String(l);
    if (l === S.level && S.sides.every((s) => !s.d || s.d.painted === l)) return;
    S.level = l;
    redrawAll(true);
  }

  // ------------------------------------------------------------------ pointer

  function pixelAt(side, ev) {
    const d = side.d;
    if (!d) return null;
    const r = side.stage.getBoundingClientRect();
    const x = Math.floor((ev.clientX - r.left) / S.scale), y = Math.floor((ev.clientY - r.top) / S.scale);
    if (x < 0 || y < 0 || x >= d.W || y >= d.H) return null;
    return { x, y };
  }

  function onMove(side, ev) {
    S.hoverPx = pixelAt(side, ev);
    queueHover();
  }

  function queueHover() {
    if (S.hoverQueued) return;
    S.hoverQueued = true;
    requestAnimationFrame(() => { S.hoverQueued = false; drawHover(); });
  }

  function describe(side, px) {
    const d = side.d;
    if (!d) return `${side.name}: —`;
    const o = d.owner[px.x * d.H + px.y];
    if (o === 0) return `${side.name}: uncovered area #${d.comp[px.x * d.H + px.y]} (no mask)`;
    const a = d.anns[o - 1];
    return `${side.name}: mask #${a.id} (${a.source}, level ${a.level}, score ${fmt(a.score)})`;
  }

  function drawHover() {
    const px = S.hoverPx;
    for (const s of S.sides) {
      const d = s.d;
      if (!d || !d.grid) continue;
      const o = px ? d.owner[px.x * d.H + px.y] : 0;
      if (s.hover && s.hover.o === o) continue;
      if (s.hover && s.hover.rect) s.ctx.hover.clearRect(...s.hover.rect);
      // The mask's visible part at this level: the pixels it owns.
      const inside = (x, y) => d.owner[x * d.H + y] === o;
      s.hover = { o, rect: o ? drawLayer(d, s.ctx.hover, d.box.subarray(4 * (o - 1), 4 * o), inside, [255, 255, 255], [255, 255, 255], 0.35, false) : null };
    }
    $('#status').textContent = px ? `x ${px.x}, y ${px.y} · ` + S.sides.map((s) => describe(s, px)).join(' · ') : '';
  }

  function onClick(side, ev) {
    const px = pixelAt(side, ev);
    if (!px) return;
    view.lastPixel = { side: side.name, x: px.x, y: px.y };
    if (ev.shiftKey || ev.altKey) { predictAt(px); return; }
    const d = side.d, o = d.owner[px.x * d.H + px.y];
    select(o ? { side: side.name, i: o - 1 } : null);
    if (!o) $('#status').textContent = `x ${px.x}, y ${px.y}: no mask here at level ${S.level} (an uncovered area)`;
  }

  // ------------------------------------------------------------------ selection and the tree

  const fmt = (v) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(4)) : String(v));

  function select(sel) {
    S.sel = sel;
    const s = sel && S.sides.find((x) => x.name === sel.side);
    view.selected = s ? { side: sel.side, id: s.d.anns[sel.i].id } : null;
    showSelection();
    drawSelection();
  }

  function chainOf(d, i) {
    const out = [], seen = new Set([d.anns[i].id]);
    let p = d.anns[i].parent_id;
    while (p !== null && p !== undefined && d.byId.has(p) && !seen.has(p)) {
      seen.add(p);
      out.push(d.byId.get(p));
      p = d.anns[d.byId.get(p)].parent_id;
    }
    return out;
  }

  function treeItem(side, d, i) {
    const a = d.anns[i], li = document.createElement('li');
    li.dataset.id = String(a.id);
    li.dataset.side = side.name;
    li.innerHTML = '<span class="sw"></span><span></span>';
    li.firstChild.style.background = css(maskColor(a.id));
    li.lastChild.textContent = `#${a.id} · level ${a.level} · ${a.source} · ${d.area[i]} px`;
    li.addEventListener('click', () => select({ side: side.name, i }));
    return li;
  }

  function showSelection() {
    const sel = S.sel, s = sel && S.sides.find((x) => x.name === sel.side);
    $('#sel').hidden = !s;
    $('#sel-none').hidden = !!s;
    if (!s) return;
    const d = s.d, a = d.anns[sel.i];
    const fields = [['id', a.id], ['source', a.source], ['score', fmt(a.score)], ['area', `${d.area[sel.i]} px (${(100 * d.area[sel.i] / d.N).toFixed(2)} %)`],
      ['level', a.level], ['parent', a.parent_id ?? 'none (a root)'], ['bbox', (a.bbox || []).map((v) => Math.round(v)).join(', ')]];
    if (S.sides.length > 1) fields.unshift(['side', s.name]);
    for (const k of ['point', 'granularity', 'predicted_iou', 'method', 'origin']) if (a[k] !== undefined) fields.push([k, JSON.stringify(a[k])]);
    const dl = $('#sel-fields');
    dl.replaceChildren();
    for (const [k, v] of fields) {
      const dt = document.createElement('dt'), dd = document.createElement('dd');
      dt.textContent = k;
      dd.textContent = String(v);
      dd.id = `sel-${k}`;
      dl.append(dt, dd);
    }
    $('#chain').replaceChildren(...chainOf(d, sel.i).map((i) => treeItem(s, d, i)));
    const kids = d.kids.get(a.id) || [];
    $('#children-count').textContent = `(${kids.length})`;
    $('#children').replaceChildren(...kids.map((i) => treeItem(s, d, i)));
  }

  function drawSelection() {
    for (const s of S.sides) {
      const d = s.d;
      if (!d || !d.grid) continue;
      s.ctx.sel.clearRect(0, 0, d.grid.cw, d.grid.ch);
      if (S.sel && S.sel.side === s.name) { // the whole mask, also where finer masks cover it at this level
        const i = S.sel.i, box = d.box.subarray(4 * i, 4 * i + 4);
        drawLayer(d, s.ctx.sel, box, runsInside(d.runs[i], d.H, box), SEL_COLOR, SEL_COLOR, 0.25, true);
      }
      if (S.cand && s.name === 'main' && S.cand.key === S.key) {
        const c = S.cand.list[S.cand.on];
        if (c) drawLayer(d, s.ctx.sel, c.box, runsInside(c.runs, d.H, c.box), CAND_COLORS[S.cand.on % CAND_COLORS.length], [255, 255, 255], 0.6, true);
        const u = ((S.cand.point.y + 0.5) * d.grid.cw) / d.H, v = ((S.cand.point.x + 0.5) * d.grid.ch) / d.W; // transposed
        s.ctx.sel.fillStyle = '#ff0040';
        s.ctx.sel.fillRect(u - 6, v - 1, 13, 3);
        s.ctx.sel.fillRect(u - 1, v - 6, 3, 13);
      }
    }
  }

  // ------------------------------------------------------------------ the model

  async function predictAt(px) {
    if (!S.info.model) { $('#status').textContent = 'no model: start the viewer with --checkpoint FILE to click a promptable model'; return; }
    const key = S.key, t0 = performance.now();
    $('#cand-status').textContent = `running the model at x ${px.x}, y ${px.y} …`;
    view.candidates = null;
    let j;
    try {
      const r = await fetch('/api/predict', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ key, x: px.x, y: px.y }) });
      j = await r.json();
      if (!r.ok) throw new Error(j.error || r.statusText);
    } catch (e) {
      $('#cand-status').textContent = `the model failed: ${e.message}`;
      view.candidates = { error: e.message };
      return;
    }
    if (key !== S.key) return;
    const H = S.sides[0].d.H;
    const list = j.candidates.map((c) => {
      const runs = decodeCounts(c.segmentation.counts), st = runStats(runs, H);
      return { granularity: c.granularity, iou: c.iou, area: st.area, runs, box: st.box };
    });
    let best = 0;
    list.forEach((c, i) => { if (c.iou > list[best].iou) best = i; });
    S.cand = { key, point: px, list, on: best };
    $('#cand-status').textContent = `${list.length} masks at x ${px.x}, y ${px.y} (model ${j.ms} ms, page ${Math.round(performance.now() - t0)} ms); click one to show it`;
    showCandidates();
    drawSelection();
    view.candidates = { point: [px.x, px.y], list: list.map((c) => ({ granularity: c.granularity, iou: c.iou, area: c.area })) };
  }

  function showCandidates() {
    const ul = $('#candidates');
    if (!S.cand || S.cand.key !== S.key) { ul.replaceChildren(); return; }
    ul.replaceChildren(...S.cand.list.map((c, i) => {
      const li = document.createElement('li');
      li.innerHTML = '<span class="sw"></span><span></span>';
      li.firstChild.style.background = css(CAND_COLORS[i % CAND_COLORS.length]);
      li.lastChild.textContent = `granularity ${c.granularity} · IoU ${c.iou.toFixed(3)} · ${c.area} px`;
      li.dataset.granularity = String(c.granularity);
      li.classList.toggle('on', i === S.cand.on);
      li.addEventListener('click', () => { S.cand.on = i; showCandidates(); drawSelection(); });
      return li;
    }));
  }

  // ------------------------------------------------------------------ loading an image

  async function fetchLabel(side, key) {
    const r = await fetch(`/api/label/${enc(key)}?side=${side}`);
    if (r.ok) return r.json();
    let msg = `${r.status} ${r.statusText}`;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }

  function loadImg(img, url) {
    return new Promise((resolve, reject) => {
      img.onload = () => (img.decode ? img.decode().catch(() => {}) : Promise.resolve()).then(resolve);
      img.onerror = () => reject(new Error('the image could not be loaded'));
      img.src = url;
    });
  }

  async function openImage(key) {
    const seq = ++S.loadSeq, t0 = performance.now();
    view.ready = false;
    S.key = key;
    history.replaceState(null, '', `#key=${encodeURIComponent(key)}`);
    markCurrent();
    S.sel = null;
    view.selected = null;
    showSelection();
    showCandidates();
    $('#cand-status').textContent = '';
    const url = `/api/image/${enc(key)}`;
    const imgP = Promise.all(S.sides.map((s) => loadImg(s.img, url)));
    // Each label file is decoded as soon as it arrives, while the browser still decodes the image.
    const labP = S.sides.map((s) => fetchLabel(s.name, key).then((obj) => (seq === S.loadSeq ? prepare(obj) : null)));
    const res = await Promise.allSettled([imgP, ...labP]);
    if (seq !== S.loadSeq) return; // another image was asked for meanwhile
    const tLoaded = performance.now();
    view.errors = {};
    let decodeMs = 0;
    S.sides.forEach((s, k) => {
      const r = res[k + 1];
      s.d = null;
      s.hover = null;
      if (r.status === 'rejected') {
        s.msg.textContent = r.reason.message;
        view.errors[s.name] = r.reason.message;
      } else if (res[0].status === 'rejected') {
        s.msg.textContent = `${key}: ${res[0].reason.message}`;
        view.errors[s.name] = s.msg.textContent;
      } else {
        s.msg.textContent = '';
        s.d = r.value;
        decodeMs += s.d.decodeMs;
      }
      s.stage.hidden = !s.d;
    });
    S.maxLevel = Math.max(0, ...S.sides.filter((s) => s.d).map((s) => s.d.maxLevel));
    const lv = $('#level');
    lv.max = String(S.maxLevel);
    if (!S.levelSet) S.level = Math.ceil(S.maxLevel / 2);
    S.level = Math.min(S.level, S.maxLevel);
    lv.value = String(S.level);
    updateSources();
    const tPaint0 = performance.now();
    for (const s of S.sides) if (s.d) paint(s.d, S.level);
    const tPaint = performance.now();
    layout(); // new data has no grid yet: this sizes the canvases and draws every layer
    headers();
    const t1 = performance.now();
    view.timings = {
      load_ms: tLoaded - t0, decode_ms: decodeMs, paint_ms: tPaint - tPaint0, draw_ms: t1 - tPaint, total_ms: t1 - t0,
      masks: S.sides.map((s) => (s.d ? s.d.n : 0)), screen_px: S.sides.map((s) => (s.d ? s.d.grid.cw * s.d.grid.ch : 0)),
    };
    view.key = key;
    view.ready = true;
    if (view.tti === null) view.tti = t1; // since navigation start: page, list, labels, image, decoding, first paint
    $('#status').textContent = `${key}: shown in ${Math.round(t1 - t0)} ms (labels and image ${Math.round(tLoaded - t0)}, of which decoding the masks ${Math.round(decodeMs)}; partition ${Math.round(tPaint - tPaint0)}; drawing ${Math.round(t1 - tPaint)})`;
  }

  function updateSources() {
    const all = new Set();
    for (const s of S.sides) if (s.d) for (const x of s.d.src) all.add(x);
    const keyOf = (set) => [...set].sort().join(',');
    if (keyOf(all) === keyOf(S.sources)) return;
    S.sources = all;
    const box = $('#sources');
    box.replaceChildren(...[...all].sort().map((name) => {
      const lab = document.createElement('label'), cb = document.createElement('input');
      cb.type = 'checkbox';
      cb.checked = !S.sourcesOff.has(name);
      cb.dataset.source = name;
      cb.addEventListener('change', () => { if (cb.checked) S.sourcesOff.delete(name); else S.sourcesOff.add(name); redrawAll(true); });
      lab.append(cb, ` ${name}`);
      return lab;
    }));
  }

  // ------------------------------------------------------------------ the list

  /** One page of the list: names at once, then masks, levels and problems (the server reads every file for those). */
  async function loadPage({ offset = 0, at = null, stats = true } = {}) {
    const seq = ++S.pageSeq;
    view.listReady = false;
    const qs = new URLSearchParams({ offset: String(offset), limit: '100', q: S.q, stats: '0' });
    if (at) qs.set('at', at);
    const p = await (await fetch(`/api/images?${qs}`)).json();
    if (seq !== S.pageSeq) return S.page;
    S.page = p;
    const tb = $('#list tbody');
    tb.replaceChildren(...p.items.map((it) => {
      const tr = document.createElement('tr');
      tr.dataset.key = it.key;
      for (let c = 0; c < 3; c++) tr.appendChild(document.createElement('td'));
      tr.addEventListener('click', () => openImage(it.key));
      return tr;
    }));
    fillRows(p.items);
    const end = p.offset + p.items.length;
    $('#page-info').textContent = p.total ? `${p.offset + 1}–${end} of ${p.total}${p.q ? ` (of ${p.all})` : ''}` : (p.q ? 'no match' : 'no label files');
    $('#prev-page').disabled = p.offset === 0;
    $('#next-page').disabled = end >= p.total;
    markCurrent();
    if (stats) fillStats();
    return p;
  }

  function fillRows(items) {
    const rows = new Map([...document.querySelectorAll('#list tbody tr')].map((tr) => [tr.dataset.key, tr]));
    for (const it of items) {
      const tr = rows.get(it.key);
      if (!tr) continue;
      const pending = it.masks === null && !it.error;
      [it.name, pending ? '…' : it.masks ?? '—', pending ? '…' : it.levels ?? '—'].forEach((v, c) => { tr.cells[c].textContent = String(v); });
      tr.title = it.error || it.key;
      tr.classList.toggle('bad', !!it.error);
    }
  }

  async function fillStats() {
    const p = S.page, seq = S.pageSeq;
    if (!p || !p.items.length || p.items.every((it) => it.masks !== null || it.error)) { view.listReady = true; return; }
    const qs = new URLSearchParams({ offset: String(p.offset), limit: String(p.limit), q: p.q, stats: '1' });
    const full = await (await fetch(`/api/images?${qs}`)).json();
    if (seq !== S.pageSeq) return;
    S.page = full;
    fillRows(full.items);
    view.listReady = true;
  }

  function markCurrent() {
    for (const tr of document.querySelectorAll('#list tbody tr')) {
      const on = tr.dataset.key === S.key;
      tr.classList.toggle('current', on);
      if (on) tr.scrollIntoView({ block: 'nearest' });
    }
  }

  async function step(delta) {
    const p = S.page;
    if (!p || !p.total) return;
    const i = p.items.findIndex((it) => it.key === S.key);
    const g = i < 0 ? p.offset : p.offset + i + delta;
    if (g < 0 || g >= p.total) return;
    if (g < p.offset || g >= p.offset + p.items.length) await loadPage({ offset: Math.floor(g / p.limit) * p.limit });
    const it = S.page.items[g - S.page.offset];
    if (it) openImage(it.key);
  }

  // ------------------------------------------------------------------ test hooks

  /** The level's partition as canonical labels (first appearance in row-major order), base64 Int32: the tests compare it with level_partitions. */
  view.partition = (sideName = 'main') => {
    const d = S.sides.find((s) => s.name === sideName)?.d;
    if (!d) return null;
    const { H, W, owner, comp } = d, out = new Int32Array(H * W), mo = new Int32Array(d.n + 1), mc = new Int32Array(d.nComp + 1);
    let next = 0;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const i = x * H + y, o = owner[i];
        let v;
        if (o) v = mo[o] || (mo[o] = ++next);
        else { const c = comp[i]; v = mc[c] || (mc[c] = ++next); }
        out[y * W + x] = v;
      }
    }
    const bytes = new Uint8Array(out.buffer);
    let s = '';
    for (let k = 0; k < bytes.length; k += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(k, k + 0x8000));
    return btoa(s);
  };
  /** The viewport point (CSS px) of the centre of image pixel (x, y) on a side, for clicking it. */
  view.clientPoint = (sideName, x, y) => {
    const s = S.sides.find((v) => v.name === sideName), r = s.stage.getBoundingClientRect();
    return { x: r.left + (x + 0.5) * S.scale, y: r.top + (y + 0.5) * S.scale };
  };
  /** Alpha of a layer ('over', 'hover', 'sel') where it shows image pixel (x, y): what is drawn there. */
  view.layerAlpha = (sideName, layer, x, y) => {
    const s = S.sides.find((v) => v.name === sideName), g = s?.d?.grid;
    if (!g) return null;
    const u = Math.floor(((y + 0.5) * g.cw) / s.d.H), v = Math.floor(((x + 0.5) * g.ch) / s.d.W);
    return s.ctx[layer].getImageData(u, v, 1, 1).data[3];
  };
  /** Share of a layer's canvas pixels that are drawn (alpha > 0). */
  view.layerCoverage = (sideName, layer) => {
    const s = S.sides.find((v) => v.name === sideName), g = s?.d?.grid;
    if (!g) return null;
    const a = s.ctx[layer].getImageData(0, 0, g.cw, g.ch).data;
    let n = 0;
    for (let i = 3; i < a.length; i += 4) if (a[i]) n++;
    return n / (g.cw * g.ch);
  };
  view.select = (sideName, id) => {
    const d = S.sides.find((v) => v.name === sideName)?.d, i = d?.byId.get(id);
    select(i === undefined ? null : { side: sideName, i });
  };
  view.setLevel = (l) => { S.levelSet = true; setLevel(l); };
  view.segments = (sideName = 'main') => S.sides.find((s) => s.name === sideName)?.d?.nSeg ?? null;
  view.maskAt = (sideName, x, y) => {
    const d = S.sides.find((s) => s.name === sideName)?.d;
    const o = d ? d.owner[x * d.H + y] : 0;
    return o ? d.anns[o - 1].id : null;
  };

  // ------------------------------------------------------------------ start

  function bind() {
    $('#level').addEventListener('input', (e) => { S.levelSet = true; setLevel(Number(e.target.value)); });
    $('#mode').addEventListener('change', (e) => { S.mode = e.target.value; redrawAll(false); });
    $('#opacity').addEventListener('input', (e) => { S.opacity = Number(e.target.value) / 100; redrawAll(false); });
    $('#min-score').addEventListener('change', (e) => { S.minScore = Number(e.target.value) || 0; redrawAll(true); });
    $('#zoom').addEventListener('change', (e) => { S.zoom = e.target.value; layout(); });
    $('#prev-page').addEventListener('click', () => loadPage({ offset: Math.max(0, S.page.offset - S.page.limit) }));
    $('#next-page').addEventListener('click', () => loadPage({ offset: S.page.offset + S.page.limit }));
    let timer = null;
    $('#filter').addEventListener('input', (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => { S.q = e.target.value; loadPage({ offset: 0 }); }, 200);
    });
    window.addEventListener('resize', () => layout());
    document.addEventListener('keydown', (e) => {
      if (e.target.closest('input, select, textarea') || e.ctrlKey || e.metaKey || e.altKey) return;
      const act = { ArrowRight: () => step(1), ArrowLeft: () => step(-1), ArrowUp: () => view.setLevel(S.level + 1), ArrowDown: () => view.setLevel(S.level - 1), Escape: () => select(null) }[e.key];
      if (act) { e.preventDefault(); act(); }
    });
  }

  async function start() {
    bind();
    S.info = await (await fetch('/api/info')).json();
    $('#folder').textContent = S.info.main.name;
    $('#folder').title = S.info.main.folder;
    document.title = `${S.info.main.name} · unsam.view`;
    S.sides = [makeSide('main', S.info.main.name)];
    if (S.info.compare) S.sides.push(makeSide('compare', S.info.compare.name));
    $('#model-section').hidden = !S.info.model;
    const m = /#key=([^&]*)/.exec(location.hash);
    const key = m ? decodeURIComponent(m[1]) : null;
    // The first image does not wait for the list, nor for the server to read the page's files for it.
    if (key) {
      await Promise.all([openImage(key), loadPage({ at: key, stats: false })]);
    } else {
      const p = await loadPage({ offset: 0, stats: false });
      if (p.items.length) await openImage(p.items[0].key);
      else { view.ready = true; S.sides[0].msg.textContent = `no label files in ${S.info.main.folder}`; }
    }
    fillStats();
  }

  start().catch((e) => { document.body.insertAdjacentText('afterbegin', `unsam.view failed to start: ${e}`); view.startError = String(e); });
})();
