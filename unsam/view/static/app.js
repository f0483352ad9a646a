/* unsam.view: the page. Served by python -m unsam.view (unsam/view/); no build step, no dependencies; an
 * ES module beside masks.js (decoding and partitions) and draw.js (the overlays).
 *
 * Masks arrive as the label JSON on disk (COCO compressed RLE, column-major). Each is decoded once to run
 * lengths; a level's partition is painted into an owner map (annotation index + 1 per pixel, 0 = no mask)
 * by the rule of unsam.evaluate.level_partitions: masks of level <= l, ordered by (level, larger area first,
 * file order), later ones over earlier ones, so each pixel keeps its deepest mask, and inside a level the
 * smaller one; every 4-connected area no mask covers is a segment of its own. The owner map and the overlay
 * canvases are column-major (x * H + y) like the RLE, so every run is one contiguous fill; the canvases are
 * shown through a CSS transpose. tests/test_view.py checks this partition against level_partitions.
 */
import { drawLayer, makeGrid, render as renderOverlay, css, maskColor } from './draw.js';
import { decodeCounts, paint as paintLevel, prepare, runStats, runsInside } from './masks.js';

{
  const $ = (sel, root = document) => root.querySelector(sel);
  const enc = (key) => key.split('/').map(encodeURIComponent).join('/');
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
      if (repaint) paintLevel(s.d, S.level, S.sourcesOff, S.minScore);
      renderOverlay(s, S.mode, S.opacity);
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
    for (const s of S.sides) if (s.d) paintLevel(s.d, S.level, S.sourcesOff, S.minScore);
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
}
