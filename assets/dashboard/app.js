// modelpress dashboard: a single-page app in plain JS, no build step, no network beyond the
// modelpress API it is served from. Sections:
//   1. DOM helpers (every server string goes in as a text node: no innerHTML anywhere)
//   2. Formatting
//   3. API client: fetch + problem+json errors, Bearer key on 401, XHR uploads with progress,
//      fetch-based SSE (EventSource cannot send an Authorization header)
//   4. Server capabilities (feature detection from /openapi.json)
//   5. Charts (plain SVG)
//   6. Shared widgets (progress bars, badges, problem boxes, reports, spec summary)
//   7. Forms: uploads and job submission (one declarative table of job kinds)
//   8. Views: models, model detail, datasets, jobs, job detail, playground
//   9. Router and start-up
// All URLs are relative so the dashboard also works behind a path-prefixing proxy.

/* =============================== 1. DOM helpers =============================== */

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'testid') el.setAttribute('data-testid', v);
    else if (['value', 'checked', 'disabled', 'selected', 'multiple', 'required'].includes(k) && !(el instanceof SVGElement)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

/** Build an HTML element: h('a', {href, class}, 'text', child, [more]). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replace an element's children (skipping null/false, unlike the native replaceChildren). */
function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Append children (skipping null/false, unlike the native append). */
function add(el, ...children) {
  append(el, children);
  return el;
}

/** Build an SVG element. */
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const enc = encodeURIComponent;
const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});
const isAbort = (e) => e?.name === 'AbortError';

function toast(msg, bad = false) {
  const el = h('div', { class: ['toast', bad && 'bad'], role: 'status' }, msg);
  document.getElementById('toasts').append(el);
  setTimeout(() => el.remove(), bad ? 7000 : 3500);
}

/* =============================== 2. Formatting ================================ */

const fmt = {
  bytes(n) {
    if (n === null || n === undefined || !isFinite(n)) return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let v = Number(n);
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${v} B` : `${v.toFixed(Math.abs(v) < 10 ? 2 : Math.abs(v) < 100 ? 1 : 0)} ${units[i]}`;
  },
  int(n) { return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'); },
  pct(x, digits = 1) { return x === null || x === undefined || !isFinite(x) ? '—' : `${(x * 100).toFixed(digits)} %`; },
  num(x) {
    if (x === null || x === undefined) return '—';
    if (typeof x !== 'number') return String(x);
    if (!isFinite(x)) return String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  },
  date(s) {
    if (!s) return '—';
    const d = new Date(s);
    return isNaN(d) ? String(s) : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  },
  time(d = new Date()) { return d.toLocaleTimeString(undefined, { hour12: false }); },
  dur(sec) {
    if (sec === null || sec === undefined || !isFinite(sec)) return '—';
    if (sec < 1) return `${Math.round(sec * 1000)} ms`;
    if (sec < 60) return `${sec.toFixed(1)} s`;
    const m = Math.floor(sec / 60);
    if (m < 60) return `${m} min ${Math.round(sec % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  },
  shortId(id) { return id ? `…${String(id).slice(-8)}` : '—'; },
};

function jobDuration(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

/* =============================== 3. API client ================================ */

const KEY_STORAGE = 'modelpress.apiKey';
const getKey = () => sessionStorage.getItem(KEY_STORAGE);

class ApiError extends Error {
  constructor(status, problem, fallback) {
    const p = problem && typeof problem === 'object' ? problem : {};
    super(p.detail || p.title || fallback || `HTTP ${status}`);
    this.status = status;
    this.code = p.code || null;
    this.field = p.field || null;
    this.errors = Array.isArray(p.errors) ? p.errors : [];
    this.title = p.title || null;
  }
}

async function problemFrom(res) {
  let body = null;
  try {
    const text = await res.text();
    try { body = JSON.parse(text); } catch { body = { detail: text.slice(0, 300) || res.statusText }; }
  } catch { /* body unreadable */ }
  return new ApiError(res.status, body, res.statusText);
}

// One prompt at a time: every request that meets a 401 waits on the same dialog.
let keyPrompt = null;
function requestKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = document.getElementById('auth-dialog');
  const input = document.getElementById('auth-key');
  document.getElementById('auth-reason').textContent = reason;
  input.value = '';
  keyPrompt = new Promise((resolve, reject) => {
    const done = () => {
      dialog.removeEventListener('close', done);
      keyPrompt = null;
      const key = input.value.trim();
      if (dialog.returnValue === 'ok' && key) {
        sessionStorage.setItem(KEY_STORAGE, key);
        renderAuthStatus();
        resolve(key);
      } else {
        reject(new ApiError(401, { detail: 'An API key is needed to use this server.', code: 'unauthorized' }));
      }
    };
    dialog.addEventListener('close', done);
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

async function handle401(attempt, problem) {
  const hadKey = Boolean(getKey());
  if (hadKey) sessionStorage.removeItem(KEY_STORAGE);
  renderAuthStatus();
  const reason = hadKey
    ? 'The server rejected the API key. Enter a valid key.'
    : (problem?.message && problem.message !== 'HTTP 401' ? problem.message : 'This server asks for an API key.');
  if (attempt >= 3) throw problem;
  await requestKey(reason);
}

/**
 * Call the API. `json` sends a JSON body; `raw` returns the Response (for streams and blobs).
 * Errors come back as ApiError carrying the problem's detail, code and field.
 */
async function api(path, { method = 'GET', json, body, headers = {}, signal, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const init = { method, headers: { ...headers }, signal };
    const key = getKey();
    if (key) init.headers.Authorization = `Bearer ${key}`;
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers['Content-Type'] = 'application/json';
    } else if (body !== undefined) {
      init.body = body;
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      await handle401(attempt, await problemFrom(res));
      continue;
    }
    if (!res.ok) throw await problemFrom(res);
    if (raw) return res;
    if (res.status === 204) return null;
    const ct = res.headers.get('content-type') || '';
    return ct.includes('json') ? res.json() : res.text();
  }
}

/** Fetch every page of a cursor-paginated list (bounded). */
async function listAll(path, { signal, pages = 20 } = {}) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < pages; i++) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=200${cursor ? `&cursor=${enc(cursor)}` : ''}`, { signal });
    items.push(...(page.items || []));
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

function uploadOnce(url, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    const key = getKey();
    if (key) xhr.setRequestHeader('Authorization', `Bearer ${key}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = { detail: xhr.responseText.slice(0, 300) }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body, xhr.statusText));
    };
    xhr.onerror = () => reject(new ApiError(0, { detail: 'The upload failed: network error or connection closed by the server.' }));
    xhr.send(form);
  });
}

/** Multipart upload through XMLHttpRequest, for its upload progress events. */
async function upload(url, form, onProgress) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await uploadOnce(url, form, onProgress);
    } catch (e) {
      if (e.status !== 401) throw e;
      await handle401(attempt, e);
    }
  }
}

/** Read a text/event-stream with fetch, calling onEvent({event, data, id}) per message. */
async function streamEvents(path, onEvent, signal) {
  const res = await api(path, { raw: true, signal, headers: { Accept: 'text/event-stream' } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let msg = { event: '', data: [], id: null };
  const dispatch = () => {
    if (msg.data.length) onEvent({ event: msg.event || 'message', data: msg.data.join('\n'), id: msg.id });
    msg = { event: '', data: [], id: null };
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      const lines = buf.split(/\r\n|\r|\n/);
      buf = lines.pop();
      for (const line of lines) {
        if (line === '') { dispatch(); continue; }
        if (line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const field = i < 0 ? line : line.slice(0, i);
        let val = i < 0 ? '' : line.slice(i + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') msg.event = val;
        else if (field === 'data') msg.data.push(val);
        else if (field === 'id') msg.id = val;
      }
    }
    dispatch();
  } finally {
    reader.releaseLock?.();
  }
}

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

/**
 * Follow a job's event stream until it reaches a terminal state, reconnecting (with backoff) if
 * the stream closes early. Handlers: onState(job), onProgress(p), onEpoch(e), onEvent(name, data).
 */
async function followJob(jobId, signal, handlers) {
  let delay = 1000;
  for (let tries = 0; tries < 60 && !signal.aborted; tries++) {
    let terminal = false;
    try {
      await streamEvents(`v1/jobs/${enc(jobId)}/events`, ({ event, data }) => {
        let payload = data;
        try { payload = JSON.parse(data); } catch { /* keep text */ }
        handlers.onEvent?.(event, payload);
        if (event === 'state') {
          handlers.onState?.(payload);
          if (TERMINAL.has(payload?.status)) terminal = true;
        } else if (event === 'progress') handlers.onProgress?.(payload);
        else if (event === 'epoch') handlers.onEpoch?.(payload);
      }, signal);
    } catch (e) {
      if (isAbort(e) || signal.aborted) return;
    }
    if (terminal || signal.aborted) return;
    try {
      const job = await api(`v1/jobs/${enc(jobId)}`, { signal });
      handlers.onState?.(job);
      if (TERMINAL.has(job.status)) return;
    } catch (e) {
      if (isAbort(e)) return;
    }
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
}

/** Download a model file. Without a key the browser streams it; with one we must fetch a blob. */
async function downloadModel(model, format) {
  const url = `v1/models/${enc(model.id)}/download?format=${enc(format)}`;
  const res = await api(url, { raw: true });
  const cd = res.headers.get('content-disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  const name = m ? decodeURIComponent(m[1]) : `${model.name}.${['gguf', 'onnx'].includes(format) ? format : 'safetensors'}`;
  const blob = await res.blob();
  const href = URL.createObjectURL(blob);
  const a = h('a', { href, download: name, class: 'hidden' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60000);
}

/* ========================= 4. Server capabilities ============================= */

// Filled once at start-up from /openapi.json (plus one probe for job kinds).
const caps = {
  loaded: false,
  paths: new Set(),
  kinds: null, // Set of job kinds the server accepts, or null when it cannot tell
  formats: ['native'],
  predict: false,
  predictInfo: false,
  putSpec: false,
};

function backticked(text) {
  return [...String(text || '').matchAll(/`([^`]+)`/g)].map((m) => m[1]);
}

async function loadCaps() {
  const spec = await api('openapi.json');
  const paths = spec.paths || {};
  caps.paths = new Set(Object.keys(paths));
  caps.predict = Boolean(paths['/v1/models/{id}/predict']?.post);
  caps.predictInfo = Boolean(paths['/v1/models/{id}/predict/info']?.get);
  caps.putSpec = Boolean(paths['/v1/models/{id}/spec']?.put);

  const fmtParam = (paths['/v1/models/{id}/download']?.get?.parameters || []).find((p) => p.name === 'format');
  const formats = fmtParam?.schema?.enum || backticked(fmtParam?.description);
  if (formats.length) caps.formats = ['native', ...formats.filter((f) => f !== 'native')];

  const kindEnum = spec.components?.schemas?.CreateJob?.properties?.kind?.enum;
  if (Array.isArray(kindEnum) && kindEnum.length) {
    caps.kinds = new Set(kindEnum);
    caps.loaded = true;
    return;
  }
  // No enum in the spec: an unknown kind is rejected with "supported: a, b" in the detail.
  try {
    await api('v1/jobs', { method: 'POST', json: { kind: '__dashboard_probe__' } });
  } catch (e) {
    const m = /supported:\s*([a-z0-9_,\s-]+)/i.exec(e.message || '');
    if (m) caps.kinds = new Set(m[1].split(',').map((k) => k.trim()).filter(Boolean));
  }
  caps.loaded = true;
}

const kindSupported = (kind) => !caps.kinds || caps.kinds.has(kind);

/* ================================ 5. Charts =================================== */

const PALETTE = ['#2563eb', '#ea580c', '#16a34a', '#9333ea', '#0891b2', '#db2777', '#ca8a04', '#475569'];

function niceTicks(min, max, count = 5) {
  if (!isFinite(min) || !isFinite(max)) return [0, 1];
  if (min === max) { min -= Math.abs(min) * 0.1 || 1; max += Math.abs(max) * 0.1 || 1; }
  const span = max - min;
  const step0 = Math.pow(10, Math.floor(Math.log10(span / count)));
  const err = (count * step0) / span;
  const step = err <= 0.15 ? step0 * 10 : err <= 0.35 ? step0 * 5 : err <= 0.75 ? step0 * 2 : step0;
  const ticks = [];
  for (let v = Math.floor(min / step) * step; v <= max + step * 0.5; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

function truncate(text, n) {
  const t = String(text);
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}

/**
 * Horizontal bars. items: [{label, value, cls?, title?}]. Each bar is a <rect class="bar …">.
 */
function barChart({ items, format = fmt.num, label = 'bar chart', width = 620, rowH = 24, max, testid }) {
  const longest = Math.max(4, ...items.map((i) => String(i.label).length));
  const labelW = Math.min(210, Math.max(50, longest * 7 + 6));
  const maxChars = Math.floor((labelW - 6) / 7);
  const plotX = labelW + 10;
  const plotW = width - plotX - 76;
  const vmax = max ?? (Math.max(0, ...items.map((i) => (isFinite(i.value) ? Math.abs(i.value) : 0))) || 1);
  const height = items.length * rowH + 6;
  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'chart bar-chart', role: 'img', 'aria-label': label,
    style: { maxWidth: `${width}px` }, testid,
  });
  items.forEach((it, i) => {
    const y = i * rowH + 3;
    const valid = it.value !== null && it.value !== undefined && isFinite(it.value);
    const w = valid ? Math.max(1.5, (Math.abs(it.value) / vmax) * plotW) : 0;
    add(svg, s('g', { class: 'bar-row' },
      s('title', {}, it.title || `${it.label}: ${valid ? format(it.value) : 'n/a'}`),
      s('text', { x: labelW, y: y + rowH / 2, class: 'bar-label', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, truncate(it.label, maxChars)),
      valid ? s('rect', { x: plotX, y: y + 4, width: w, height: rowH - 8, rx: 2, class: `bar ${it.cls || ''}` }) : null,
      s('text', { x: plotX + w + 6, y: y + rowH / 2, class: 'bar-value', 'dominant-baseline': 'middle' }, valid ? format(it.value) : 'n/a'),
    ));
  });
  return svg;
}

/** Shared frame for x/y charts: scales, grid, ticks and axis labels. */
function xyFrame({ width, height, xDomain, yDomain, xLabel, yLabel, xFormat, yFormat, label, testid, xInteger, top = 12 }) {
  const m = { l: 72, r: 18, t: top, b: 42 };
  let xt = niceTicks(xDomain[0], xDomain[1], 6);
  if (xInteger) xt = xt.filter((v) => Number.isInteger(v));
  const yt = niceTicks(yDomain[0], yDomain[1], 5);
  const x0 = Math.min(xt[0], xDomain[0]); const x1 = Math.max(xt[xt.length - 1], xDomain[1]);
  const y0 = yt[0]; const y1 = yt[yt.length - 1];
  const pw = width - m.l - m.r; const ph = height - m.t - m.b;
  const X = (v) => m.l + ((v - x0) / (x1 - x0 || 1)) * pw;
  const Y = (v) => m.t + ph - ((v - y0) / (y1 - y0 || 1)) * ph;
  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'chart xy-chart', role: 'img', 'aria-label': label,
    style: { maxWidth: `${width}px` }, testid,
  });
  const yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
  for (const v of yt) {
    add(svg, s('line', { x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v), class: 'grid' }));
    add(svg, s('text', { x: m.l - 6, y: Y(v), class: 'tick', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, yFormat(v, yStep)));
  }
  for (const v of xt) {
    add(svg, s('text', { x: X(v), y: m.t + ph + 16, class: 'tick', 'text-anchor': 'middle' }, xFormat(v)));
  }
  add(svg, s('line', { x1: m.l, x2: width - m.r, y1: m.t + ph, y2: m.t + ph, class: 'axis' }));
  add(svg, s('line', { x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: 'axis' }));
  add(svg, s('text', { x: m.l + pw / 2, y: height - 6, class: 'axis-label', 'text-anchor': 'middle' }, xLabel));
  add(svg, s('text', { x: 12, y: m.t + ph / 2, class: 'axis-label', 'text-anchor': 'middle', transform: `rotate(-90 12 ${m.t + ph / 2})` }, yLabel));
  return { svg, X, Y, m, pw, ph };
}

/** Line chart: series [{name, points: [{x, y}]}]; each series path has class "series". */
function lineChart({ series, xLabel, yLabel, yFormat = fmt.num, xFormat = fmt.num, yDomain, width = 520, height = 250, label, testid }) {
  const pts = series.flatMap((sr) => sr.points).filter((p) => isFinite(p.x) && isFinite(p.y));
  const xs = pts.map((p) => p.x); const ys = pts.map((p) => p.y);
  const xd = xs.length ? [Math.min(...xs), Math.max(...xs)] : [0, 1];
  if (xd[0] === xd[1]) xd[1] = xd[0] + 1;
  const yd = yDomain || (ys.length ? [Math.min(0, ...ys), Math.max(...ys)] : [0, 1]);
  const { svg, X, Y, m } = xyFrame({ width, height, xDomain: xd, yDomain: yd, xLabel, yLabel, xFormat, yFormat, label, testid, xInteger: true, top: 30 });
  let legendX = m.l;
  series.forEach((sr, i) => {
    const color = sr.color || PALETTE[i % PALETTE.length];
    const p = sr.points.filter((q) => isFinite(q.x) && isFinite(q.y));
    if (!p.length) return;
    const d = p.map((q, j) => `${j ? 'L' : 'M'}${X(q.x).toFixed(1)},${Y(q.y).toFixed(1)}`).join(' ');
    add(svg, s('path', { d, class: 'series', stroke: color, 'data-series': sr.name }));
    if (p.length <= 60) for (const q of p) add(svg, s('circle', { cx: X(q.x), cy: Y(q.y), r: 2.8, fill: color }, s('title', {}, `${sr.name} @ ${xFormat(q.x)}: ${yFormat(q.y)}`)));
    // Legend in one row above the plot.
    const ly = 10;
    add(svg, s('line', { x1: legendX, x2: legendX + 16, y1: ly, y2: ly, stroke: color, 'stroke-width': 2.5 }));
    add(svg, s('text', { x: legendX + 22, y: ly, 'dominant-baseline': 'middle', class: 'axis-label' }, sr.name));
    legendX += 22 + String(sr.name).length * 6.5 + 18;
  });
  return svg;
}

/** Scatter: points [{x, y, label, href?, cls?}]. */
function scatterChart({ points, xLabel, yLabel, xFormat, yFormat, width = 560, height = 280, label, testid }) {
  const xs = points.map((p) => p.x); const ys = points.map((p) => p.y);
  const pad = (lo, hi) => (lo === hi ? [lo * 0.9, hi * 1.1 || 1] : [lo - (hi - lo) * 0.08, hi + (hi - lo) * 0.08]);
  const xd = pad(Math.min(...xs), Math.max(...xs));
  const yd = pad(Math.min(...ys), Math.max(...ys));
  yd[1] = Math.min(yd[1], 1); xd[0] = Math.max(0, xd[0]);
  const { svg, X, Y } = xyFrame({ width, height, xDomain: xd, yDomain: yd, xLabel, yLabel, xFormat, yFormat, label, testid });
  points.forEach((p, i) => {
    const color = p.root ? '#475569' : PALETTE[i % PALETTE.length];
    const dot = s('g', { class: 'point' },
      s('title', {}, `${p.label}: ${xFormat(p.x)}, ${yFormat(p.y)}`),
      s('circle', { cx: X(p.x), cy: Y(p.y), r: 6, fill: color, 'fill-opacity': 0.85 }),
      s('text', { x: X(p.x) + 9, y: Y(p.y) - 8, class: 'point-label' }, truncate(p.label, 26)));
    add(svg, p.href ? s('a', { href: p.href }, dot) : dot);
  });
  return svg;
}

/** Confusion matrix heat map (rows = true class, columns = predicted). */
function confusionChart(matrix, labels) {
  const n = matrix.length;
  const cell = Math.max(16, Math.min(34, Math.floor(380 / Math.max(n, 1))));
  const off = 44;
  const size = off + n * cell + 4;
  const svg = s('svg', { viewBox: `0 0 ${size} ${size + 16}`, class: 'chart confusion', role: 'img', 'aria-label': 'confusion matrix', style: { maxWidth: `${size}px` } });
  add(svg, s('text', { x: off + (n * cell) / 2, y: 10, class: 'axis-label', 'text-anchor': 'middle' }, 'predicted →'));
  add(svg, s('text', { x: 10, y: off + (n * cell) / 2, class: 'axis-label', 'text-anchor': 'middle', transform: `rotate(-90 10 ${off + (n * cell) / 2})` }, 'true →'));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    add(svg, s('text', { x: off - 4, y: off + i * cell + cell / 2, class: 'tick', 'text-anchor': 'end', 'dominant-baseline': 'middle' }, truncate(labels?.[i] ?? i, 5)));
    if (i === 0) row.forEach((_, j) => add(svg, s('text', { x: off + j * cell + cell / 2, y: off - 6, class: 'tick', 'text-anchor': 'middle' }, truncate(labels?.[j] ?? j, 5))));
    row.forEach((v, j) => {
      const a = v / total;
      const fill = i === j ? `rgba(22,163,74,${0.12 + a * 0.8})` : v ? `rgba(220,38,38,${0.12 + a * 0.8})` : '#f8fafc';
      add(svg, s('rect', { x: off + j * cell, y: off + i * cell, width: cell - 1, height: cell - 1, fill, class: 'cm-cell' }, s('title', {}, `true ${labels?.[i] ?? i}, predicted ${labels?.[j] ?? j}: ${v}`)));
      if (v && cell >= 20) add(svg, s('text', { x: off + j * cell + cell / 2, y: off + i * cell + cell / 2, 'text-anchor': 'middle', 'dominant-baseline': 'middle', class: 'cm-text', fill: a > 0.55 ? '#fff' : '#1f2937' }, v));
    });
  });
  return svg;
}

function chartBox(title, chart, note) {
  return h('div', { class: 'chart-box' }, h('h3', {}, title), chart, note ? h('div', { class: 'muted small' }, note) : null);
}

/* ============================ 6. Shared widgets =============================== */

function badge(text, cls) { return h('span', { class: ['badge', cls] }, text); }
/** Percent with as many decimals as the tick step needs (ticks 0.0005 apart → 2 decimals). */
const pctTick = (v, step) => fmt.pct(v, step ? Math.max(0, Math.min(3, Math.ceil(-Math.log10(step * 100) - 1e-9))) : 1);

const statusBadge = (status) => badge(status, status);

function progressBar(value, status, { big = false, testid } = {}) {
  const fill = h('div', { class: 'progress-fill' });
  const label = h('span', { class: 'progress-label', testid: testid ? `${testid}-label` : null });
  const el = h('div', { class: ['progress', big && 'big'], role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, testid },
    h('div', { class: 'progress-track' }, fill), label);
  el.update = (v, st) => {
    const pct = Math.round(Math.max(0, Math.min(1, Number(v) || 0)) * 100);
    fill.style.width = `${pct}%`;
    label.textContent = `${pct} %`;
    el.setAttribute('aria-valuenow', pct);
    el.className = ['progress', big && 'big', st].filter(Boolean).join(' ');
  };
  el.update(value, status);
  return el;
}

function problemBox(err, testid = 'problem') {
  const e = err instanceof ApiError ? err : new ApiError(0, { detail: err?.message || String(err) });
  return h('div', { class: 'error-box', role: 'alert', testid },
    h('strong', {}, e.title ? `${e.title}: ` : 'Error: '), e.message,
    e.code ? h('span', { class: 'code' }, ` (${e.code}${e.field ? `, ${e.field}` : ''})`) : null,
    e.errors.length ? h('ul', {}, e.errors.slice(0, 50).map((x) => h('li', {}, x))) : null);
}

function errorView(err) {
  const box = h('div', { class: 'stack' }, problemBox(err));
  if (err?.status === 401) {
    add(box, h('button', { class: 'btn primary', onclick: async () => { try { await requestKey('Enter the API key for this server.'); route(); } catch { /* cancelled */ } } }, 'Enter API key'));
  }
  return box;
}

function pageHead(title, { crumbs, sub, actions } = {}) {
  return h('div', {},
    crumbs ? h('div', { class: 'crumbs' }, crumbs.map((c, i) => [i ? ' / ' : '', c.href ? h('a', { href: c.href }, c.text) : c.text])) : null,
    h('div', { class: 'page-head' },
      h('div', {}, h('h1', {}, title), sub ? h('div', { class: 'sub muted' }, sub) : null),
      actions ? h('div', { class: 'row' }, actions) : null));
}

function card(title, body, { actions, testid, cls } = {}) {
  return h('section', { class: ['card', cls], testid },
    title ? h('div', { class: 'card-head' }, h('h2', {}, title), actions ? h('div', { class: 'row' }, actions) : null) : null,
    body);
}

function tile(k, v, testid) { return h('div', { class: 'tile', testid }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v)); }

const DTYPE_COLORS = { F32: '#2563eb', F64: '#1e3a8a', F16: '#16a34a', BF16: '#0d9488', I8: '#ea580c', U8: '#f59e0b', I4: '#db2777', U4: '#db2777', I32: '#7c3aed', I64: '#6d28d9', BOOL: '#64748b' };

function dtypeMix(bytesByDtype) {
  const entries = Object.entries(bytesByDtype || {}).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((a, [, v]) => a + v, 0) || 1;
  return h('div', { class: 'dtype-mix', title: entries.map(([k, v]) => `${k}: ${fmt.bytes(v)}`).join('\n') },
    h('div', { class: 'dtype-bar' }, entries.map(([k, v], i) => h('span', { style: { width: `${(v / total) * 100}%`, background: DTYPE_COLORS[k] || PALETTE[i % PALETTE.length] } }))),
    h('div', { class: 'dtype-legend' }, entries.map(([k, v]) => `${k} ${Math.round((v / total) * 100)}%`).join(' · ') || '—'));
}

function factList(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function jsonDetails(summary, value) {
  return h('details', {}, h('summary', {}, summary), h('pre', { class: 'json' }, JSON.stringify(value, null, 2)));
}

function modelLink(id, name) {
  return id ? h('a', { href: `#/models/${enc(id)}`, title: id }, name || fmt.shortId(id)) : '—';
}
function jobLink(id, text) {
  return id ? h('a', { href: `#/jobs/${enc(id)}`, title: id }, text || fmt.shortId(id)) : '—';
}

// ---- Reports -------------------------------------------------------------------

/** First finite number found at any of the dotted paths. */
function pick(obj, ...paths) {
  for (const p of paths) {
    const v = p.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
    if (typeof v === 'number' && isFinite(v)) return v;
  }
  return null;
}

/** Accuracy of a model as its making job measured it (null when none). */
const reportAccuracy = (r) => pick(r || {}, 'accuracy_after', 'accuracy_after_finetune', 'accuracy_after_pruning', 'eval.after.accuracy', 'after.accuracy', 'test.accuracy', 'student.accuracy', 'accuracy');
const reportAccuracyBefore = (r) => pick(r || {}, 'accuracy_before', 'eval.before.accuracy', 'before.accuracy', 'baseline_accuracy', 'teacher.accuracy');

// File sizes before/after under the names each job kind reports them (quantize: bytes_*,
// prune: bytes_input/bytes_output, distill: teacher/student file_bytes).
const reportBytesBefore = (r) => pick(r || {}, 'bytes_before', 'size_before', 'bytes_input', 'teacher.file_bytes');
const reportBytesAfter = (r) => pick(r || {}, 'bytes_after', 'size_after', 'bytes_output', 'student.file_bytes');

function sizeCharts(r) {
  const before = reportBytesBefore(r);
  const after = reportBytesAfter(r);
  const out = [];
  if (before !== null && after !== null) {
    out.push(chartBox('Size before → after', barChart({
      label: 'size before and after', format: fmt.bytes, testid: 'chart-size',
      items: [{ label: 'before', value: before, cls: 'before' }, { label: 'after', value: after, cls: 'after' }],
    }), `${fmt.pct(after / before)} of the original`));
  }
  const accB = reportAccuracyBefore(r); const accA = reportAccuracy(r);
  if (accB !== null && accA !== null) {
    out.push(chartBox('Accuracy before → after', barChart({
      label: 'accuracy before and after', format: (v) => fmt.pct(v, 2), max: 1, testid: 'chart-accuracy',
      items: [{ label: 'before', value: accB, cls: 'before' }, { label: 'after', value: accA, cls: 'after' }],
    }), `change ${((accA - accB) * 100).toFixed(2)} points`));
  }
  return out;
}

/** Per-tensor bars with a metric switch (rel_error, SQNR, max_abs_error, sparsity). */
function tensorCharts(tensors) {
  const metrics = [
    ['sparsity', 'Sparsity', (v) => fmt.pct(v)],
    ['sqnr_db', 'SQNR (dB, higher is better)', (v) => `${v.toFixed(1)} dB`],
    ['rel_error', 'Relative error', fmt.num],
    ['max_abs_error', 'Max abs error', fmt.num],
  ].filter(([k]) => tensors.some((t) => typeof t[k] === 'number'));
  if (!metrics.length) return null;
  const holder = h('div', {});
  const tabs = h('div', { class: 'tabs' });
  const show = (key) => {
    const [, title, f] = metrics.find((m) => m[0] === key);
    tabs.querySelectorAll('.tab').forEach((b) => b.classList.toggle('active', b.dataset.key === key));
    put(holder, barChart({
      label: `per-tensor ${title}`, format: f, testid: 'chart-tensors', max: key === 'sparsity' ? 1 : undefined,
      items: tensors.map((t) => ({ label: t.name, value: t[key], title: `${t.name}: ${t[key] === undefined ? 'n/a' : f(t[key])}${t.dtype_after ? ` (${t.dtype_before} → ${t.dtype_after})` : ''}` })),
    }));
  };
  metrics.forEach(([k, title]) => add(tabs, h('button', { type: 'button', class: 'tab', dataset: { key: k }, onclick: () => show(k) }, title)));
  show(metrics[0][0]);
  return h('div', { class: 'chart-box' }, h('h3', {}, 'Per tensor'), metrics.length > 1 ? tabs : null, holder);
}

function tensorTable(tensors) {
  const cols = ['name', 'dtype_before', 'dtype_after', 'action', 'sparsity', 'sqnr_db', 'rel_error', 'max_abs_error'].filter((c) => tensors.some((t) => t[c] !== undefined));
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c === 'name' || c === 'action' || c.startsWith('dtype') ? '' : 'num' }, c.replace(/_/g, ' '))))),
    h('tbody', {}, tensors.map((t) => h('tr', {}, cols.map((c) => {
      const v = t[c];
      if (c === 'name') return h('td', { class: 'mono' }, v);
      if (typeof v === 'number') return h('td', { class: 'num' }, c === 'sparsity' ? fmt.pct(v) : fmt.num(v));
      return h('td', {}, v ?? '—');
    }))))));
}

function curveCharts(curve, { testidPrefix = 'chart' } = {}) {
  const pts = (key) => curve.filter((e) => typeof e[key] === 'number').map((e) => ({ x: e.epoch, y: e[key] }));
  const out = [];
  const lossSeries = [['train loss', 'train_loss'], ['val loss', 'val_loss']].map(([n, k]) => ({ name: n, points: pts(k) })).filter((x) => x.points.length);
  const accSeries = [['train accuracy', 'train_accuracy'], ['val accuracy', 'val_accuracy']].map(([n, k]) => ({ name: n, points: pts(k) })).filter((x) => x.points.length);
  if (lossSeries.length) out.push(chartBox('Loss per epoch', lineChart({ series: lossSeries, xLabel: 'epoch', yLabel: 'loss', label: 'loss per epoch', testid: `${testidPrefix}-loss` })));
  if (accSeries.length) out.push(chartBox('Accuracy per epoch', lineChart({ series: accSeries, xLabel: 'epoch', yLabel: 'accuracy', yFormat: (v, step) => (step ? pctTick(v, step) : fmt.pct(v, 2)), yDomain: [Math.min(...accSeries.flatMap((x) => x.points.map((p) => p.y))), 1], label: 'accuracy per epoch', testid: `${testidPrefix}-accuracy` })));
  return out;
}

function evalSection(r, labels) {
  const parts = [];
  const per = r.per_class_accuracy;
  if (Array.isArray(per) && per.length) {
    parts.push(chartBox('Accuracy per class', barChart({
      label: 'accuracy per class', format: (v) => fmt.pct(v), max: 1, testid: 'chart-per-class',
      items: per.map((v, i) => ({ label: labels?.[i] ?? `class ${i}`, value: v })),
    })));
  }
  if (Array.isArray(r.confusion) && r.confusion.length) parts.push(chartBox('Confusion matrix', confusionChart(r.confusion, labels)));
  return parts;
}

/** Render any job report; kind-specific parts where the fields are present. */
function renderReport(report, { kind } = {}) {
  const r = report || {};
  const k = r.kind || kind;
  const wrap = h('div', { testid: 'report' });
  const tiles = h('div', { class: 'tiles' });
  const addTile = (key, val) => { if (val !== null && val !== undefined && val !== '—') add(tiles, tile(key, val)); };

  addTile('scheme', r.scheme);
  const bytesB = reportBytesBefore(r); const bytesA = reportBytesAfter(r);
  if (bytesB !== null) addTile('size before', fmt.bytes(bytesB));
  if (bytesA !== null) addTile('size after', fmt.bytes(bytesA));
  if (bytesB && bytesA !== null) addTile('size ratio', fmt.pct(bytesA / bytesB));
  const sparsity = pick(r, 'sparsity', 'global_sparsity');
  if (sparsity !== null) addTile('sparsity', fmt.pct(sparsity));
  const accB = reportAccuracyBefore(r); const acc = reportAccuracy(r);
  if (accB !== null) addTile('accuracy before', fmt.pct(accB, 2));
  if (acc !== null) addTile(accB !== null ? 'accuracy after' : 'accuracy', fmt.pct(acc, 2));
  if (pick(r, 'top5_accuracy') !== null) addTile('top-5 accuracy', fmt.pct(r.top5_accuracy, 2));
  if (pick(r, 'correct') !== null && pick(r, 'samples') !== null) addTile('correct', `${fmt.int(r.correct)} / ${fmt.int(r.samples)}`);
  if (pick(r, 'mean_loss') !== null) addTile('mean loss', fmt.num(r.mean_loss));
  if (pick(r, 'samples_per_sec') !== null) addTile('samples / s', fmt.int(Math.round(r.samples_per_sec)));
  if (pick(r, 'epochs_run', 'epochs') !== null) addTile('epochs', fmt.int(pick(r, 'epochs_run', 'epochs')));
  if (pick(r, 'tensors_cast') !== null) addTile('tensors changed', `${r.tensors_cast} of ${r.tensors_cast + (r.tensors_kept || 0)}`);
  if (pick(r, 'duration_s') !== null) addTile('duration', fmt.dur(r.duration_s));
  if (tiles.childElementCount) add(wrap, tiles);

  const charts = h('div', { class: 'charts' });
  add(charts, ...sizeCharts(r));
  const curve = Array.isArray(r.curve) ? r.curve : Array.isArray(r.history) ? r.history : null;
  if (curve?.length) add(charts, ...curveCharts(curve));
  const tensors = Array.isArray(r.tensors) ? r.tensors : null;
  if (tensors?.length) { const tc = tensorCharts(tensors); if (tc) add(charts, tc); }
  const evalSrc = r.confusion || r.per_class_accuracy ? r : r.test && typeof r.test === 'object' ? r.test : null;
  if (evalSrc) add(charts, ...evalSection(evalSrc, r.labels || evalSrc.labels));
  if (charts.childElementCount) add(wrap, charts);

  if (tensors?.length) add(wrap, h('details', {}, h('summary', {}, `Tensor table (${tensors.length})`), tensorTable(tensors)));
  add(wrap, jsonDetails('Raw report JSON', r));
  if (!tiles.childElementCount && !charts.childElementCount) wrap.prepend(h('p', { class: 'muted' }, `No charts for this ${k || 'job'} report.`));
  return wrap;
}

// ---- Architecture spec summary ----------------------------------------------------

function layerDetail(l) {
  if (l.type === 'linear') return `${l.in_features} → ${l.out_features}${l.bias === false ? ', no bias' : ''}`;
  if (l.type === 'conv2d') {
    const k = Array.isArray(l.kernel_size) ? l.kernel_size.join('×') : `${l.kernel_size}×${l.kernel_size}`;
    const extra = ['stride', 'padding', 'dilation', 'groups'].filter((x) => l[x] !== undefined).map((x) => `${x} ${JSON.stringify(l[x])}`);
    return [`${l.in_channels} → ${l.out_channels}, kernel ${k}`, ...extra, l.bias === false ? 'no bias' : null].filter(Boolean).join(', ');
  }
  const skip = new Set(['type', 'name', 'body', 'layers', 'shortcut']);
  return Object.entries(l).filter(([key]) => !skip.has(key)).map(([key, v]) => `${key} ${JSON.stringify(v)}`).join(', ');
}

function flattenLayers(layers, depth = 0, out = []) {
  for (const l of layers || []) {
    out.push({ depth, type: l.type, name: l.name || '', detail: layerDetail(l) });
    if (Array.isArray(l.body)) flattenLayers(l.body, depth + 1, out);
    if (Array.isArray(l.shortcut)) { out.push({ depth: depth + 1, type: 'shortcut', name: '', detail: '' }); flattenLayers(l.shortcut, depth + 2, out); }
    if (Array.isArray(l.layers)) flattenLayers(l.layers, depth + 1, out);
  }
  return out;
}

function specSummary(spec) {
  const rows = flattenLayers(spec.layers);
  const inp = spec.input || {}; const outp = spec.output || {};
  return h('div', { class: 'stack', testid: 'spec-summary' },
    factList([
      ['input', `${JSON.stringify(inp.shape)} ${inp.dtype || ''}`],
      inp.preprocess ? ['preprocess', Object.entries(inp.preprocess).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join('; ')] : null,
      ['output', `${outp.kind || '?'}${outp.classes ? `, ${outp.classes} classes` : ''}`],
      ['layers', `${rows.length} (${rows.filter((r) => ['linear', 'conv2d'].includes(r.type)).length} with weights)`],
    ]),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'layer'), h('th', {}, 'name'), h('th', {}, 'shape / options'))),
      h('tbody', {}, rows.map((r, i) => h('tr', {},
        h('td', { class: 'muted' }, i + 1),
        h('td', { style: { paddingLeft: `${10 + r.depth * 18}px` } }, h('code', {}, r.type)),
        h('td', { class: 'mono' }, r.name),
        h('td', { class: 'small' }, r.detail)))))));
}

/* ================================ 7. Forms ===================================== */

/**
 * Job kinds and their parameters. Adding a kind = adding an entry here. Field keys may be dotted
 * (`finetune.epochs`) to build nested params. Types: select, number, int, text, dataset, split,
 * model, bool, json. `optional` fields are left out of the request when empty.
 */
const JOB_KINDS = {
  quantize: {
    title: 'Quantize',
    summary: 'Store the weights in a smaller number format. Makes a new model; the original is kept.',
    fields: [
      { key: 'scheme', label: 'Scheme', type: 'select', default: 'f16', help: 'Number format of the weights.', options: [
        ['f16', 'f16: IEEE half precision, 2 bytes per weight'],
        ['bf16', 'bf16: bfloat16, 2 bytes, f32 range'],
        ['int8', 'int8: 8-bit integers with per-channel scales'],
        ['int4', 'int4: 4-bit integers, grouped scales'],
        ['q8_0', 'q8_0: GGUF blocks of 32, 8-bit'],
        ['q4_k', 'q4_k: GGUF k-quant, 4-bit'],
      ] },
      { key: 'eval_dataset_id', label: 'Evaluate on dataset', type: 'dataset', optional: true, help: 'If set (and the model has a spec), accuracy before and after goes into the report.' },
    ],
  },
  evaluate: {
    title: 'Evaluate',
    summary: 'Measure accuracy, loss and a confusion matrix on a labelled dataset split. Needs a spec.',
    fields: [
      { key: 'dataset_id', label: 'Dataset', type: 'dataset', help: 'A labelled dataset whose samples match the model input.' },
      { key: 'split', label: 'Split', type: 'split', default: 'test', help: 'Which split to evaluate on (default test).' },
    ],
  },
  train: {
    title: 'Train',
    summary: 'Train or fine-tune the model on a dataset; makes a new model. Needs a spec.',
    fields: [
      { key: 'dataset_id', label: 'Dataset', type: 'dataset', help: 'Labelled training data (its train split; test split is reported).' },
      { key: 'init', label: 'Initial weights', type: 'select', default: 'weights', options: [['weights', 'weights: fine-tune the stored weights'], ['random', 'random: train from scratch']], help: 'Start from the model\'s weights or from a random initialisation.' },
      { key: 'epochs', label: 'Epochs', type: 'int', default: 10, min: 1, help: 'Passes over the training data (default 10).' },
      { key: 'batch_size', label: 'Batch size', type: 'int', default: 32, min: 1, help: 'Samples per gradient step (default 32).' },
      { key: 'lr', label: 'Learning rate', type: 'number', default: 0.001, step: 'any', help: 'Peak step size (default 0.001).' },
      { key: 'optimizer', label: 'Optimizer', type: 'select', default: 'adamw', options: [['adamw', 'adamw'], ['sgd', 'sgd (momentum)']], help: 'Default adamw.' },
      { key: 'schedule', label: 'LR schedule', type: 'select', default: 'constant', options: [['constant', 'constant'], ['cosine', 'cosine decay'], ['step', 'step decay']], help: 'How the learning rate changes over epochs (default constant).' },
      { key: 'seed', label: 'Seed', type: 'int', default: 0, help: 'Random seed for init and shuffling (default 0).' },
      { key: 'validation_split', label: 'Validation split', type: 'number', default: 0.1, min: 0, max: 0.9, step: 'any', help: 'Fraction of the training data held out for validation (default 0.1).' },
      { key: 'patience', label: 'Early-stopping patience', type: 'int', optional: true, min: 1, help: 'Stop after this many epochs without validation improvement; empty = never.' },
    ],
  },
  prune: {
    title: 'Prune',
    summary: 'Zero out the smallest weights, optionally fine-tune with the mask kept.',
    fields: [
      { key: '$method', label: 'Method', type: 'select', default: 'magnitude', options: [['magnitude', 'magnitude: zero the smallest weights'], ['pattern', 'N:M: keep N of every M weights'], ['structured', 'structured: remove whole neurons / filters (needs a spec)']], help: 'What is removed. Structured pruning rewrites the model smaller.' },
      { key: 'sparsity', label: 'Sparsity', type: 'number', default: 0.9, min: 0, max: 0.999, step: 'any', when: ['$method', 'magnitude'], help: 'Fraction of the selected weights set to zero, in [0, 1) (default 0.9).' },
      { key: 'scope', label: 'Scope', type: 'select', default: 'global', when: ['$method', 'magnitude'], options: [['global', 'global: one threshold for all layers'], ['per_layer', 'per_layer: same sparsity in each layer']], help: 'Where the magnitude threshold is chosen (default global).' },
      { key: 'pattern', label: 'Pattern', type: 'select', default: '2:4', when: ['$method', 'pattern'], options: [['2:4', '2:4 (two of every four)'], ['1:4', '1:4'], ['4:8', '4:8']], help: 'N of every M consecutive weights along the input dimension are kept.' },
      { key: 'structured.amount', label: 'Fraction of units removed', type: 'number', default: 0.5, min: 0, max: 0.99, step: 'any', when: ['$method', 'structured'], help: 'Share of the output neurons / filters removed from each prunable layer (default 0.5).' },
      { key: 'structured.norm', label: 'Unit ranking', type: 'select', default: 'l1', when: ['$method', 'structured'], options: [['l1', 'l1 norm of the weights'], ['l2', 'l2 norm of the weights'], ['activation', 'mean |activation| on data (needs a dataset)']], help: 'How units are ranked before the smallest are removed.' },
      { key: 'finetune.dataset_id', label: 'Fine-tune on dataset', type: 'dataset', optional: true, help: 'Optional: fine-tune after pruning with the mask kept (needs a spec).' },
      { key: 'finetune.epochs', label: 'Fine-tune epochs', type: 'int', default: 5, min: 1, requires: 'finetune.dataset_id', help: 'Used only with a fine-tune dataset (default 5).' },
      { key: 'finetune.lr', label: 'Fine-tune learning rate', type: 'number', default: 0.003, step: 'any', requires: 'finetune.dataset_id', help: 'Used only with a fine-tune dataset (default 0.003).' },
      { key: 'eval_dataset_id', label: 'Evaluate on dataset', type: 'dataset', optional: true, help: 'Accuracy before and after pruning (default: the fine-tuning dataset).' },
      { key: 'format', label: 'Storage format', type: 'select', default: 'dense', when: ['$method', ['magnitude', 'pattern']], options: [['dense', 'dense: zeros stored'], ['sparse', 'sparse: bitmask + non-zeros (about 13 % of dense at 90 %)']], help: 'How the pruned weights are stored (default dense).' },
    ],
  },
  distill: {
    title: 'Distill',
    summary: 'Train a smaller student to mimic this model (the teacher) on a dataset.',
    fields: [
      { key: 'dataset_id', label: 'Dataset', type: 'dataset', help: 'Training data for the student.' },
      { key: 'student', label: 'Student', type: 'student', help: 'A smaller copy of the teacher, an existing model, or an explicit spec.' },
      { key: 'temperature', label: 'Temperature', type: 'number', default: 4, step: 'any', help: 'Softens the teacher\'s outputs (default 4).' },
      { key: 'alpha', label: 'Alpha', type: 'number', default: 0.9, min: 0, max: 1, step: 'any', help: 'Weight of the teacher loss vs. the label loss (default 0.9).' },
      { key: 'epochs', label: 'Epochs', type: 'int', default: 10, min: 1, help: 'Default 10.' },
      { key: 'lr', label: 'Learning rate', type: 'number', default: 0.001, step: 'any', help: 'Default 0.001.' },
      { key: 'batch_size', label: 'Batch size', type: 'int', default: 64, min: 1, help: 'Default 64.' },
      { key: 'baseline', label: 'Also train the student alone (baseline)', type: 'bool', default: false, help: 'Shows what distillation bought over plain training on the same budget (doubles the time).' },
    ],
  },
};

/** Whether a field applies: `when: [otherKey, value | [values]]` ties it to another field's choice. */
function fieldActive(f, controls) {
  if (!f.when) return true;
  const [key, want] = f.when;
  const v = controls.get(key)?.value;
  return Array.isArray(want) ? want.includes(v) : v === want;
}

function setNested(obj, dotted, value) {
  const keys = dotted.split('.');
  let o = obj;
  keys.slice(0, -1).forEach((k) => { o[k] = o[k] && typeof o[k] === 'object' ? o[k] : {}; o = o[k]; });
  o[keys[keys.length - 1]] = value;
}

/** A labelled form field with help text and a slot for its API error. */
function fieldWrap(f, control) {
  const err = h('div', { class: 'field-error', testid: `error-${f.key}` });
  const wrap = h(f.type === 'bool' ? 'div' : 'label', { class: ['field', f.type === 'bool' && 'checkbox-field'], dataset: { field: f.key } },
    f.type === 'bool' ? null : h('span', { class: 'field-label' }, f.label, f.optional ? h('span', { class: 'opt' }, ' (optional)') : null),
    control,
    f.help ? h('span', { class: 'field-help' }, f.help) : null,
    err);
  wrap.setError = (msg) => { err.textContent = msg || ''; wrap.classList.toggle('invalid', Boolean(msg)); };
  return wrap;
}

function datasetSelect(datasets, { optional, name, testid }) {
  return h('select', { name, testid },
    optional ? h('option', { value: '' }, '— none —') : h('option', { value: '', disabled: true, selected: true }, datasets.length ? 'Choose a dataset…' : 'No datasets: upload one first'),
    datasets.map((d) => h('option', { value: d.id }, `${d.name} (${d.splits.map((x) => `${x.name} ${x.samples}`).join(', ')})`)));
}

/**
 * Show a problem next to the field it names (`params.scheme` → field `scheme`), else at the form.
 * Returns true if a field took it.
 */
function showFieldError(fields, err) {
  const path = (err.field || '').replace(/^params\./, '');
  const target = fields.get(path) || fields.get(path.split('.')[0]) || (err.field === 'model_id' ? fields.get('$model') : null);
  if (target) { target.setError(err.message); target.querySelector('input,select,textarea')?.focus(); return true; }
  return false;
}

/**
 * The job form: kind tabs (unsupported kinds disabled), model picker, kind fields.
 * On success navigates to the new job.
 */
async function jobForm({ modelId, kind, signal }) {
  const [models, datasets] = await Promise.all([listAll('v1/models', { signal }), listAll('v1/datasets', { signal })]);
  const root = h('div', { testid: 'job-form' });
  const tabs = h('div', { class: 'tabs', role: 'tablist' });
  const body = h('div', {});
  const kinds = Object.keys(JOB_KINDS);
  let current = kind && kindSupported(kind) ? kind : kinds.find(kindSupported) || kinds[0];

  for (const k of kinds) {
    const ok = kindSupported(k);
    add(tabs, h('button', {
      type: 'button', class: 'tab', role: 'tab', dataset: { kind: k }, disabled: !ok, testid: `kind-${k}`,
      title: ok ? JOB_KINDS[k].summary : 'This server does not support this job kind yet',
      onclick: () => { current = k; render(); },
    }, JOB_KINDS[k].title, ok ? null : h('span', { class: 'soon' }, '(not available)')));
  }

  function render() {
    tabs.querySelectorAll('.tab').forEach((b) => b.classList.toggle('active', b.dataset.kind === current));
    const def = JOB_KINDS[current];
    const fields = new Map();
    const formErr = h('div', {});
    const modelSel = h('select', { name: 'model_id', testid: 'job-model', required: true },
      h('option', { value: '', disabled: true, selected: !modelId }, 'Choose a model…'),
      models.map((m) => h('option', { value: m.id, selected: m.id === modelId }, `${m.name} (${fmt.bytes(m.size_bytes)}${m.has_spec ? ', spec' : ''})`)));
    const modelField = fieldWrap({ key: '$model', label: current === 'distill' ? 'Teacher model' : 'Model', help: 'The model the job reads.' }, modelSel);
    fields.set('$model', modelField);

    const grid = h('div', { class: 'form-grid' }, modelField);
    const controls = new Map();
    for (const f of def.fields) {
      let control;
      if (f.type === 'select') {
        control = h('select', { name: f.key, testid: `param-${f.key}` }, f.options.map(([v, t]) => h('option', { value: v, selected: v === f.default }, t)));
      } else if (f.type === 'dataset') {
        control = datasetSelect(datasets, { optional: f.optional, name: f.key, testid: `param-${f.key}` });
      } else if (f.type === 'split') {
        control = h('select', { name: f.key, testid: `param-${f.key}` });
      } else if (f.type === 'bool') {
        control = h('label', { class: 'row' }, h('input', { type: 'checkbox', name: f.key, checked: Boolean(f.default), testid: `param-${f.key}` }), h('span', { class: 'field-label' }, f.label));
      } else if (f.type === 'student') {
        control = studentControl(models);
      } else {
        control = h('input', {
          type: 'number', name: f.key, testid: `param-${f.key}`, value: f.default ?? '', min: f.min, max: f.max,
          step: f.type === 'int' ? 1 : f.step || 'any', placeholder: f.optional ? 'empty = not set' : null,
        });
      }
      controls.set(f.key, control);
      const w = fieldWrap(f, control);
      fields.set(f.key, w);
      add(grid, w);
    }
    // Fields that only apply to one choice of another field (`when`) hide with it.
    const syncWhen = () => def.fields.forEach((f) => { if (f.when) fields.get(f.key).classList.toggle('hidden', !fieldActive(f, controls)); });
    new Set(def.fields.filter((f) => f.when).map((f) => f.when[0])).forEach((k) => controls.get(k)?.addEventListener('change', syncWhen));
    syncWhen();

    // Split choices follow the chosen dataset.
    const splitCtl = [...controls.entries()].find(([k]) => def.fields.find((f) => f.key === k)?.type === 'split');
    const dsCtl = controls.get('dataset_id');
    if (splitCtl && dsCtl) {
      const fill = () => {
        const ds = datasets.find((d) => d.id === dsCtl.value);
        const splitField = def.fields.find((f) => f.type === 'split');
        const names = ds ? ds.splits.map((x) => x.name) : ['test'];
        put(splitCtl[1], ...names.map((n) => h('option', { value: n, selected: n === splitField.default }, n)));
      };
      dsCtl.addEventListener('change', fill);
      fill();
    }

    const submit = h('button', { type: 'submit', class: 'btn primary', testid: 'job-submit' }, `Start ${def.title.toLowerCase()} job`);
    const form = h('form', { class: 'form', novalidate: true, testid: `job-form-${current}` },
      h('p', { class: 'muted', style: { margin: 0 } }, def.summary), grid, formErr, h('div', { class: 'actions' }, submit));

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      fields.forEach((w) => w.setError(''));
      put(formErr);
      const params = {};
      for (const f of def.fields) {
        const c = controls.get(f.key);
        let v;
        if (f.type === 'bool') v = c.querySelector('input').checked;
        else if (f.type === 'student') { v = c.getValue(); if (v instanceof Error) { fields.get(f.key).setError(v.message); return; } }
        else if (f.type === 'int' || f.type === 'number') v = c.value === '' ? null : Number(c.value);
        else v = c.value;
        if (f.requires && !controls.get(f.requires)?.value) continue;
        if (!fieldActive(f, controls)) continue;
        if (f.key.startsWith('$')) continue; // form-only choice, not a parameter
        if (v === null || v === '' || (typeof v === 'number' && Number.isNaN(v))) {
          if (f.optional) continue;
          fields.get(f.key).setError(`${f.label} is required.`);
          return;
        }
        setNested(params, f.key, v);
      }
      if (!modelSel.value) { modelField.setError('Choose a model.'); return; }
      submit.disabled = true;
      try {
        const job = await api('v1/jobs', { method: 'POST', json: { kind: current, model_id: modelSel.value, params } });
        toast(`${def.title} job queued`);
        location.hash = `#/jobs/${enc(job.id)}`;
      } catch (e) {
        if (!showFieldError(fields, e)) put(formErr, problemBox(e, 'job-form-error'));
      } finally {
        submit.disabled = false;
      }
    });
    put(body, form);
  }

  render();
  add(root, tabs, body);
  return root;
}

/** Distill student picker: {from_teacher: {width}} | {model_id} | {spec}. */
function studentControl(models) {
  const mode = h('select', { testid: 'param-student-mode' },
    h('option', { value: 'from_teacher' }, 'a narrower copy of the teacher'),
    h('option', { value: 'model_id' }, 'an existing model'),
    h('option', { value: 'spec' }, 'an architecture spec (JSON)'));
  const width = h('input', { type: 'number', value: 0.25, min: 0.01, max: 1, step: 'any', testid: 'param-student-width' });
  const separable = h('input', { type: 'checkbox', testid: 'param-student-separable' });
  const model = h('select', {}, models.map((m) => h('option', { value: m.id }, m.name)));
  const spec = h('textarea', { rows: 5, placeholder: '{"format": "modelpress.spec", …}' });
  const parts = {
    from_teacher: h('div', { class: 'stack' },
      h('label', { class: 'field' }, h('span', { class: 'field-help' }, 'Hidden widths and channels as a fraction of the teacher\'s (default 0.25)'), width),
      h('label', { class: 'row' }, separable, h('span', { class: 'field-help' }, 'depthwise-separable convolutions (MobileNet-style)'))),
    model_id: model,
    spec,
  };
  const slot = h('div', {});
  const show = () => put(slot, parts[mode.value]);
  mode.addEventListener('change', show);
  show();
  const el = h('div', { class: 'stack' }, mode, slot);
  el.getValue = () => {
    if (mode.value === 'from_teacher') return { from_teacher: { width: Number(width.value), ...(separable.checked ? { depthwise_separable: true } : {}) } };
    if (mode.value === 'model_id') return { model_id: model.value };
    try { return { spec: JSON.parse(spec.value) }; } catch (e) { return new Error(`The student spec is not valid JSON: ${e.message}`); }
  };
  return el;
}

function uploadProgress() {
  const bar = progressBar(0, null, { testid: 'upload-progress' });
  const text = h('span', { class: 'muted small' });
  const el = h('div', { class: 'upload-progress hidden' }, bar, text);
  el.update = (loaded, total) => {
    el.classList.remove('hidden');
    bar.update(total ? loaded / total : 0);
    text.textContent = loaded >= total ? `${fmt.bytes(total)} sent, the server is checking the file…` : `${fmt.bytes(loaded)} of ${fmt.bytes(total)}`;
  };
  el.done = () => { text.textContent = 'Stored.'; };
  return el;
}

function modelUploadForm(onDone) {
  const weights = h('input', { type: 'file', name: 'weights', accept: '.safetensors,.onnx', required: true, testid: 'upload-weights' });
  const name = h('input', { type: 'text', name: 'name', placeholder: 'defaults to the file name', testid: 'upload-name' });
  const spec = h('input', { type: 'file', name: 'spec', accept: '.json,application/json', testid: 'upload-spec' });
  const f = {
    weights: fieldWrap({ key: 'weights', label: 'Weights (.safetensors) or ONNX model (.onnx)', help: 'A safetensors file, or an ONNX model whose graph becomes the spec (its layers are shown once stored); streamed to the server.' }, weights),
    name: fieldWrap({ key: 'name', label: 'Name', optional: true, help: 'Shown in lists; the file name without extension if empty.' }, name),
    spec: fieldWrap({ key: 'spec', label: 'Architecture spec (.json)', optional: true, help: 'Needed to evaluate, train, distill or run the model (see docs/spec.md).' }, spec),
  };
  const fields = new Map(Object.entries(f));
  const prog = uploadProgress();
  const err = h('div', {});
  const submit = h('button', { type: 'submit', class: 'btn primary', testid: 'upload-submit' }, 'Upload model');
  weights.addEventListener('change', () => { if (!name.value && weights.files[0]) name.placeholder = weights.files[0].name.replace(/\.(safetensors|onnx)$/i, ''); });
  const form = h('form', { class: 'form', testid: 'model-upload-form' }, h('div', { class: 'form-grid' }, f.weights, f.name, f.spec), prog, err, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    fields.forEach((w) => w.setError(''));
    put(err);
    const file = weights.files[0];
    if (!file) { f.weights.setError('Choose a safetensors or ONNX file.'); return; }
    const isOnnx = /\.onnx$/i.test(file.name);
    if (isOnnx && spec.files[0]) { f.spec.setError('An ONNX model carries its own architecture; leave the spec empty.'); return; }
    const data = new FormData();
    data.append('name', name.value.trim() || file.name.replace(/\.(safetensors|onnx)$/i, ''));
    if (spec.files[0]) {
      const text = await spec.files[0].text();
      try { JSON.parse(text); } catch (e) { f.spec.setError(`Not valid JSON: ${e.message}`); return; }
      data.append('spec', text);
    }
    data.append(isOnnx ? 'onnx' : 'weights', file, file.name);
    submit.disabled = true;
    try {
      const model = await upload('v1/models', data, prog.update);
      prog.done();
      toast(`Uploaded ${model.name}`);
      form.reset();
      onDone(model);
    } catch (e) {
      if (!showFieldError(fields, e)) put(err, problemBox(e, 'upload-error'));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function datasetUploadForm(onDone) {
  const file = h('input', { type: 'file', name: 'data', accept: '.safetensors,.csv', required: true, testid: 'upload-data' });
  const name = h('input', { type: 'text', name: 'name', placeholder: 'defaults to the file name', testid: 'upload-dataset-name' });
  const format = h('select', { name: 'format', testid: 'upload-format' }, h('option', { value: 'safetensors' }, 'safetensors'), h('option', { value: 'csv' }, 'csv'));
  const label = h('input', { type: 'text', name: 'label', placeholder: 'label', testid: 'upload-label' });
  const f = {
    data: fieldWrap({ key: 'data', label: 'File (.safetensors or .csv)', help: 'safetensors with train_x/train_y, test_x/test_y or x/y; or CSV with a header row.' }, file),
    name: fieldWrap({ key: 'name', label: 'Name', optional: true, help: 'The file name without extension if empty.' }, name),
    format: fieldWrap({ key: 'format', label: 'Format', help: 'Picked from the file extension; CSV is converted on upload.' }, format),
    label: fieldWrap({ key: 'label', label: 'Label column (CSV)', optional: true, help: 'Default "label", else the last column.' }, label),
  };
  const fields = new Map(Object.entries(f));
  const labelWrap = f.label;
  const syncFormat = () => labelWrap.classList.toggle('hidden', format.value !== 'csv');
  file.addEventListener('change', () => {
    const fl = file.files[0];
    if (fl) { format.value = /\.csv$/i.test(fl.name) ? 'csv' : 'safetensors'; name.placeholder = fl.name.replace(/\.(safetensors|csv)$/i, ''); }
    syncFormat();
  });
  format.addEventListener('change', syncFormat);
  syncFormat();
  const prog = uploadProgress();
  const err = h('div', {});
  const submit = h('button', { type: 'submit', class: 'btn primary', testid: 'upload-dataset-submit' }, 'Upload dataset');
  const form = h('form', { class: 'form', testid: 'dataset-upload-form' }, h('div', { class: 'form-grid' }, f.data, f.name, f.format, f.label), prog, err, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    fields.forEach((w) => w.setError(''));
    put(err);
    const fl = file.files[0];
    if (!fl) { f.data.setError('Choose a file.'); return; }
    const data = new FormData();
    data.append('name', name.value.trim() || fl.name.replace(/\.(safetensors|csv)$/i, ''));
    data.append('format', format.value);
    if (format.value === 'csv' && label.value.trim()) data.append('label', label.value.trim());
    data.append('data', fl, fl.name);
    submit.disabled = true;
    try {
      const ds = await upload('v1/datasets', data, prog.update);
      prog.done();
      toast(`Uploaded ${ds.name}`);
      form.reset();
      syncFormat();
      onDone(ds);
    } catch (e) {
      if (!showFieldError(fields, e)) put(err, problemBox(e, 'upload-error'));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** A card whose body (a form) is toggled by a header button. */
function toggleCard(buttonText, title, makeBody, { open = false, testid } = {}) {
  const holder = h('div', { class: open ? '' : 'hidden' });
  let built = false;
  const toggle = () => {
    if (!built) { add(holder, card(title, makeBody(), { testid })); built = true; }
    holder.classList.toggle('hidden');
  };
  if (open) toggle();
  const button = h('button', { type: 'button', class: 'btn primary', onclick: toggle, testid: testid ? `${testid}-toggle` : null }, buttonText);
  return { button, holder };
}

/* ================================ 8. Views ===================================== */

// ---- Models -----------------------------------------------------------------------

/** Order models as a forest: parents first, each followed by its descendants. */
function modelForest(models) {
  const byId = new Map(models.map((m) => [m.id, m]));
  const kids = new Map();
  const roots = [];
  for (const m of models) {
    if (m.parent_model_id && byId.has(m.parent_model_id)) {
      if (!kids.has(m.parent_model_id)) kids.set(m.parent_model_id, []);
      kids.get(m.parent_model_id).push(m);
    } else roots.push(m);
  }
  const byNewest = (a, b) => String(b.created_at).localeCompare(String(a.created_at));
  const byOldest = (a, b) => String(a.created_at).localeCompare(String(b.created_at));
  const rows = [];
  const walk = (m, depth, last, prefix) => {
    rows.push({ model: m, depth, last, prefix });
    const cs = (kids.get(m.id) || []).sort(byOldest);
    cs.forEach((c, i) => walk(c, depth + 1, i === cs.length - 1, depth ? prefix + (last ? '   ' : '│  ') : ''));
  };
  roots.sort(byNewest).forEach((r) => walk(r, 0, true, ''));
  return { rows, kids };
}

function madeBy(model, jobsById) {
  if (!model.job_id) return h('span', { class: 'muted' }, 'upload');
  const job = jobsById.get(model.job_id);
  const scheme = job?.params?.scheme || model.metadata?.['modelpress.scheme'];
  const text = job ? `${job.kind}${scheme ? ` · ${scheme}` : job.params?.sparsity !== undefined ? ` · ${fmt.pct(job.params.sparsity, 0)}` : ''}` : 'job';
  return jobLink(model.job_id, text);
}

async function viewModels(ctx) {
  const root = h('div', {});
  const tableHolder = h('div', {});
  const { button, holder } = toggleCard('Upload model', 'Upload a model', () => modelUploadForm((m) => { refresh(m.id); }), { testid: 'model-upload' });
  add(root, pageHead('Models', { sub: 'Uploaded models and everything derived from them.', actions: [button] }), holder, tableHolder);

  async function refresh(flashId) {
    const [models, jobs] = await Promise.all([listAll('v1/models', { signal: ctx.signal }), listAll('v1/jobs', { signal: ctx.signal, pages: 1 })]);
    if (!ctx.alive) return;
    const jobsById = new Map(jobs.map((j) => [j.id, j]));
    if (!models.length) {
      put(tableHolder, card(null, h('div', { class: 'empty', testid: 'models-empty' }, 'No models yet. Upload a safetensors file to get started.')));
      return;
    }
    const { rows } = modelForest(models);
    const tbody = h('tbody', {}, rows.map(({ model: m, depth, last, prefix }) => h('tr', { dataset: { id: m.id }, class: m.id === flashId ? 'flash' : null, testid: 'model-row' },
      h('td', {}, h('div', { class: 'tree-name' },
        depth ? h('span', { class: 'tree-branch', 'aria-hidden': 'true' }, `${prefix}${last ? '└─' : '├─'}`) : null,
        h('a', { href: `#/models/${enc(m.id)}`, testid: 'model-link' }, m.name),
        m.has_spec ? badge('spec', 'spec') : null)),
      h('td', { class: 'num' }, fmt.bytes(m.size_bytes)),
      h('td', { class: 'num' }, fmt.int(m.parameter_count)),
      h('td', {}, dtypeMix(m.bytes_by_dtype)),
      h('td', { class: 'nowrap' }, madeBy(m, jobsById)),
      h('td', { class: 'small muted nowrap' }, fmt.date(m.created_at)),
      h('td', { class: 'right' }, h('button', { class: 'btn small danger', onclick: () => deleteModel(m, refresh) }, 'Delete')))));
    put(tableHolder, card(null, h('div', { class: 'table-wrap' }, h('table', { testid: 'models-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name / lineage'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'num' }, 'Parameters'), h('th', {}, 'Dtype mix'), h('th', {}, 'Made by'), h('th', {}, 'Created'), h('th', {}))),
      tbody))));
  }
  await refresh();
  return root;
}

async function deleteModel(m, after) {
  if (!confirm(`Delete model "${m.name}"? Its file is removed; models derived from it are kept.`)) return;
  try {
    await api(`v1/models/${enc(m.id)}`, { method: 'DELETE' });
    toast(`Deleted ${m.name}`);
    after();
  } catch (e) { toast(e.message, true); }
}

function downloadButtons(model) {
  // ONNX export needs the architecture spec.
  return caps.formats.filter((f) => f !== 'onnx' || model.has_spec).map((f) => h('a', {
    class: ['btn', f === 'native' && 'primary'], href: `v1/models/${enc(model.id)}/download?format=${enc(f)}`, download: '', testid: `download-${f}`,
    title: f === 'native' ? 'The stored safetensors file' : `Converted to ${f}`,
    onclick: (ev) => {
      if (!getKey()) return; // the browser streams it itself
      ev.preventDefault();
      downloadModel(model, f).catch((e) => toast(e.message, true));
    },
  }, f === 'native' ? 'Download' : `Download ${f}`));
}

async function viewModel(ctx, id) {
  const m = await api(`v1/models/${enc(id)}`, { signal: ctx.signal });
  const [models, jobs, evals] = await Promise.all([
    listAll('v1/models', { signal: ctx.signal }),
    api(`v1/jobs?model_id=${enc(id)}&limit=50`, { signal: ctx.signal }).then((p) => p.items || []),
    listAll('v1/jobs?kind=evaluate&status=succeeded', { signal: ctx.signal, pages: 1 }).catch(() => []),
  ]);
  const byId = new Map(models.map((x) => [x.id, x]));
  const parent = m.parent_model_id ? byId.get(m.parent_model_id) : null;

  const actions = [
    ...downloadButtons(m),
    m.has_spec ? h('a', { class: 'btn', href: `#/playground/${enc(m.id)}` }, 'Playground') : null,
    h('button', { class: 'btn danger', onclick: () => deleteModel(m, () => { location.hash = '#/models'; }) }, 'Delete'),
  ];
  const root = h('div', { testid: 'model-detail' }, pageHead(m.name, {
    crumbs: [{ text: 'Models', href: '#/models' }, ...(parent ? [{ text: parent.name, href: `#/models/${enc(parent.id)}` }] : []), { text: m.name }],
    sub: [m.has_spec ? badge('spec', 'spec') : null, ' ', Object.keys(m.bytes_by_dtype || {}).map((d) => [badge(d, 'dtype'), ' '])],
    actions,
  }));

  // Facts and tensors
  const facts = factList([
    ['id', h('code', {}, m.id)],
    ['size', `${fmt.bytes(m.size_bytes)} (${fmt.int(m.size_bytes)} bytes)`],
    ['parameters', fmt.int(m.parameter_count)],
    ['tensors', fmt.int(m.tensor_count)],
    ['bytes / parameter', m.parameter_count ? (Object.values(m.bytes_by_dtype || {}).reduce((a, b) => a + b, 0) / m.parameter_count).toFixed(2) : '—'],
    ['sha256', h('code', { class: 'small' }, m.sha256)],
    ['created', fmt.date(m.created_at)],
    m.parent_model_id ? ['derived from', modelLink(m.parent_model_id, parent?.name)] : null,
    m.job_id ? ['made by job', jobLink(m.job_id)] : null,
  ]);
  const dtypeRows = Object.entries(m.bytes_by_dtype || {});
  const tensorsCard = card('Tensors', h('div', { class: 'stack' }, dtypeMix(m.bytes_by_dtype),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'dtype'), h('th', { class: 'num' }, 'bytes'), h('th', { class: 'num' }, 'share'))),
      h('tbody', {}, dtypeRows.map(([k, v]) => h('tr', {}, h('td', {}, h('code', {}, k)), h('td', { class: 'num' }, fmt.bytes(v)),
        h('td', { class: 'num' }, fmt.pct(v / (dtypeRows.reduce((a, [, b]) => a + b, 0) || 1))))))),
    Object.keys(m.metadata || {}).length ? jsonDetails(`safetensors metadata (${Object.keys(m.metadata).length} keys)`, m.metadata) : null));
  add(root, h('div', { class: 'grid-2' }, card('Overview', facts), tensorsCard));
  add(root, h('div', { style: { height: '18px' } }));

  // Spec
  const specBody = m.spec ? specSummary(m.spec) : h('div', { class: 'stack' },
    h('p', { class: 'muted', style: { margin: 0 } }, 'No architecture spec. The service can quantize this model but cannot run it (evaluate, train, distill, playground) until a spec is attached.'),
    caps.putSpec ? specUpload(m) : null);
  add(root, card('Architecture', specBody, { actions: m.spec ? [jsonDetails('spec JSON', m.spec)] : null }));

  // Report of the job that made it
  if (m.report) add(root, card('Report of the job that made this model', renderReport(m.report), { actions: [jobLink(m.job_id, 'open job')] }));

  // Family: descendants, with size vs accuracy
  add(root, await familyCard(m, models, evals, ctx));

  // Jobs on this model
  add(root, card('Jobs', jobs.length ? jobsTable(jobs, { compact: true }) : h('p', { class: 'muted' }, 'No jobs on this model yet.')));

  // Start a job
  add(root, card('Run a job on this model', await jobForm({ modelId: m.id, kind: new URLSearchParams(ctx.query).get('kind'), signal: ctx.signal }), { testid: 'job-form-card' }));
  return root;
}

function specUpload(m) {
  const input = h('input', { type: 'file', accept: '.json,application/json', testid: 'spec-file' });
  const err = h('div', {});
  const btn = h('button', { class: 'btn', type: 'button', onclick: async () => {
    put(err);
    const f = input.files[0];
    if (!f) return;
    try {
      await api(`v1/models/${enc(m.id)}/spec`, { method: 'PUT', json: JSON.parse(await f.text()) });
      toast('Spec attached');
      route();
    } catch (e) { put(err, problemBox(e)); }
  } }, 'Attach spec');
  return h('div', { class: 'row' }, input, btn, err);
}

/** The model, its descendants, and a size-vs-accuracy scatter of them. */
async function familyCard(m, models, evals, ctx) {
  const { kids } = modelForest(models);
  const family = [];
  const walk = (id, depth) => { for (const c of kids.get(id) || []) { family.push({ model: c, depth }); walk(c.id, depth + 1); } };
  walk(m.id, 1);
  if (!family.length) return card('Derived models', h('p', { class: 'muted' }, 'Nothing derived from this model yet. Run a quantize, prune, train or distill job below.'));

  // Accuracy of each: the latest successful evaluate job on it, else its own report.
  const latestEval = new Map();
  for (const j of evals) {
    const acc = pick(j.report || {}, 'accuracy');
    if (acc === null) continue;
    const prev = latestEval.get(j.model_id);
    if (!prev || String(j.created_at) > String(prev.created_at)) latestEval.set(j.model_id, { created_at: j.created_at, acc });
  }
  const details = await Promise.all(family.slice(0, 40).map(({ model }) => api(`v1/models/${enc(model.id)}`, { signal: ctx.signal }).catch(() => model)));
  const accOf = (x, detail) => latestEval.get(x.id)?.acc ?? reportAccuracy(detail?.report);
  const rootAcc = latestEval.get(m.id)?.acc ?? reportAccuracyBefore(details.find((d) => reportAccuracyBefore(d.report) !== null)?.report) ?? reportAccuracy(m.report);

  const points = [];
  if (rootAcc !== null) points.push({ x: m.size_bytes, y: rootAcc, label: `${m.name} (this)`, root: true });
  family.forEach(({ model }, i) => {
    const acc = accOf(model, details[i]);
    if (acc !== null) points.push({ x: model.size_bytes, y: acc, label: model.name, href: `#/models/${enc(model.id)}` });
  });

  const charts = h('div', { class: 'charts' });
  if (points.length >= 1) {
    add(charts, chartBox('Size vs accuracy', scatterChart({ points, xLabel: 'size', yLabel: 'accuracy', xFormat: fmt.bytes, yFormat: (v, step) => (step ? pctTick(v, step) : fmt.pct(v, 2)), label: 'size vs accuracy', testid: 'chart-family' }),
      'Accuracy from the latest evaluate job on each model, else from the report of the job that made it.'));
  }
  add(charts, chartBox('Size', barChart({
    label: 'sizes of derived models', format: fmt.bytes, testid: 'chart-family-size',
    items: [{ label: `${m.name} (this)`, value: m.size_bytes, cls: 'before' }, ...family.map(({ model }) => ({ label: model.name, value: model.size_bytes, cls: 'after' }))],
  })));
  const table = h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Model'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'num' }, 'vs this'), h('th', { class: 'num' }, 'Accuracy'), h('th', {}, 'Dtype mix'))),
    h('tbody', {}, family.map(({ model, depth }, i) => {
      const acc = accOf(model, details[i]);
      return h('tr', {},
        h('td', { style: { paddingLeft: `${10 + (depth - 1) * 18}px` } }, modelLink(model.id, model.name)),
        h('td', { class: 'num' }, fmt.bytes(model.size_bytes)),
        h('td', { class: 'num' }, fmt.pct(model.size_bytes / m.size_bytes)),
        h('td', { class: 'num' }, acc !== null ? fmt.pct(acc, 2) : h('span', { class: 'muted', title: 'Run an evaluate job on it' }, 'not measured')),
        h('td', {}, dtypeMix(model.bytes_by_dtype)));
    })));
  return card(`Derived models (${family.length})`, h('div', {}, charts, h('div', { class: 'table-wrap' }, table)), { testid: 'family' });
}

// ---- Datasets ---------------------------------------------------------------------

function splitsSummary(d) { return d.splits.map((x) => `${x.name} ${fmt.int(x.samples)}`).join(' · '); }

async function viewDatasets(ctx) {
  const root = h('div', {});
  const tableHolder = h('div', {});
  const { button, holder } = toggleCard('Upload dataset', 'Upload a dataset', () => datasetUploadForm((d) => refresh(d.id)), { testid: 'dataset-upload' });
  add(root, pageHead('Datasets', { sub: 'Labelled data for evaluation, training, fine-tuning and distillation.', actions: [button] }), holder, tableHolder);
  async function refresh(flashId) {
    const items = await listAll('v1/datasets', { signal: ctx.signal });
    if (!ctx.alive) return;
    if (!items.length) { put(tableHolder, card(null, h('div', { class: 'empty', testid: 'datasets-empty' }, 'No datasets yet. Upload a safetensors or CSV file.'))); return; }
    put(tableHolder, card(null, h('div', { class: 'table-wrap' }, h('table', { testid: 'datasets-table' },
      h('thead', {}, h('tr', {}, ['Name', 'Splits', 'Sample shape', 'x dtype', 'Classes', 'Size', 'Format', 'Created', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, items.map((d) => h('tr', { class: d.id === flashId ? 'flash' : null, testid: 'dataset-row' },
        h('td', {}, h('a', { href: `#/datasets/${enc(d.id)}` }, d.name)),
        h('td', {}, splitsSummary(d)),
        h('td', {}, h('code', {}, JSON.stringify(d.splits[0]?.sample_shape ?? []))),
        h('td', {}, h('code', {}, d.splits[0]?.x_dtype ?? '—')),
        h('td', { class: 'num' }, d.splits.find((x) => x.classes)?.classes ?? '—'),
        h('td', { class: 'num' }, fmt.bytes(d.size_bytes)),
        h('td', {}, d.format),
        h('td', { class: 'small muted nowrap' }, fmt.date(d.created_at)),
        h('td', { class: 'right' }, h('button', { class: 'btn small danger', onclick: () => deleteDataset(d, refresh) }, 'Delete')))))))));
  }
  await refresh();
  return root;
}

async function deleteDataset(d, after) {
  if (!confirm(`Delete dataset "${d.name}"?`)) return;
  try { await api(`v1/datasets/${enc(d.id)}`, { method: 'DELETE' }); toast(`Deleted ${d.name}`); after(); } catch (e) { toast(e.message, true); }
}

async function viewDataset(ctx, id) {
  const d = await api(`v1/datasets/${enc(id)}`, { signal: ctx.signal });
  const root = h('div', {}, pageHead(d.name, {
    crumbs: [{ text: 'Datasets', href: '#/datasets' }, { text: d.name }],
    actions: [h('button', { class: 'btn danger', onclick: () => deleteDataset(d, () => { location.hash = '#/datasets'; }) }, 'Delete')],
  }));
  add(root, card('Overview', factList([
    ['id', h('code', {}, d.id)], ['format', d.format], ['size', fmt.bytes(d.size_bytes)], ['sha256', h('code', { class: 'small' }, d.sha256)], ['created', fmt.date(d.created_at)],
  ])));
  for (const sp of d.splits) {
    const body = h('div', {}, factList([
      ['samples', fmt.int(sp.samples)], ['sample shape', h('code', {}, JSON.stringify(sp.sample_shape))], ['x dtype', h('code', {}, sp.x_dtype)],
      ['labelled', sp.labelled ? 'yes' : 'no'], sp.classes ? ['classes', sp.classes] : null,
    ]));
    if (Array.isArray(sp.class_counts) && sp.class_counts.length) {
      add(body, chartBox('Samples per class', barChart({ label: `samples per class in ${sp.name}`, format: fmt.int, items: sp.class_counts.map((c, i) => ({ label: `class ${i}`, value: c })) })));
    }
    add(root, card(`Split: ${sp.name}`, body));
  }
  return root;
}

// ---- Jobs -------------------------------------------------------------------------

/** Jobs table. Rows expose .update(job) / .progress(p) for live updates. */
function jobsTable(jobs, { compact = false, onCancel, names = new Map() } = {}) {
  const rows = new Map();
  const tbody = h('tbody', {});
  for (const j of jobs) {
    const bar = progressBar(j.progress, j.status, { testid: 'job-row-progress' });
    const statusCell = h('td', {}, statusBadge(j.status));
    const stageCell = h('td', { class: 'small muted' }, j.stage || '');
    const durCell = h('td', { class: 'num small' }, fmt.dur(jobDuration(j)));
    const cancel = h('button', { class: ['btn small danger', TERMINAL.has(j.status) && 'hidden'], testid: 'job-cancel', onclick: () => cancelJob(j.id, onCancel) }, 'Cancel');
    const tr = h('tr', { dataset: { id: j.id }, testid: 'job-row' },
      h('td', {}, jobLink(j.id)),
      h('td', {}, h('strong', {}, j.kind), j.params?.scheme ? h('span', { class: 'muted' }, ` · ${j.params.scheme}`) : null),
      compact ? null : h('td', {}, modelLink(j.model_id, names.get(j.model_id))),
      statusCell,
      h('td', { style: { minWidth: '150px' } }, bar),
      stageCell,
      compact ? null : h('td', {}, j.output_model_id ? modelLink(j.output_model_id, names.get(j.output_model_id)) : ''),
      h('td', { class: 'small muted nowrap' }, fmt.date(j.created_at)),
      durCell,
      h('td', { class: 'right' }, cancel));
    tr.update = (nj) => {
      put(statusCell, statusBadge(nj.status));
      bar.update(nj.progress, nj.status);
      stageCell.textContent = nj.stage || '';
      durCell.textContent = fmt.dur(jobDuration(nj));
      cancel.classList.toggle('hidden', TERMINAL.has(nj.status));
    };
    tr.progress = (p) => { bar.update(p.progress, p.status); if (p.stage !== undefined) stageCell.textContent = p.stage || ''; };
    rows.set(j.id, tr);
    add(tbody, tr);
  }
  const heads = ['Job', 'Kind', compact ? null : 'Model', 'Status', 'Progress', 'Stage', compact ? null : 'Output', 'Created', 'Duration', ''].filter((x) => x !== null);
  const table = h('div', { class: 'table-wrap' }, h('table', { testid: 'jobs-table' }, h('thead', {}, h('tr', {}, heads.map((t) => h('th', { class: t === 'Duration' ? 'num' : '' }, t)))), tbody));
  table.rows = rows;
  return table;
}

async function cancelJob(id, after) {
  try {
    await api(`v1/jobs/${enc(id)}/cancel`, { method: 'POST' });
    toast('Cancellation requested');
    after?.();
  } catch (e) { toast(e.message, true); }
}

const MAX_STREAMS = 3; // browsers allow ~6 HTTP/1.1 connections per host; keep room for requests

async function viewJobs(ctx) {
  const q = new URLSearchParams(ctx.query);
  const status = h('select', { testid: 'filter-status' }, ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled'].map((v) => h('option', { value: v, selected: q.get('status') === v }, v || 'any status')));
  const kind = h('select', { testid: 'filter-kind' }, ['', ...Object.keys(JOB_KINDS)].map((v) => h('option', { value: v, selected: q.get('kind') === v }, v || 'any kind')));
  const applyFilter = () => {
    const p = new URLSearchParams();
    if (status.value) p.set('status', status.value);
    if (kind.value) p.set('kind', kind.value);
    location.hash = `#/jobs${p.toString() ? `?${p}` : ''}`;
  };
  status.addEventListener('change', applyFilter);
  kind.addEventListener('change', applyFilter);

  const { button, holder } = toggleCard('New job', 'Start a job', () => {
    const slot = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    jobForm({ signal: ctx.signal }).then((f) => put(slot, f), (e) => put(slot, problemBox(e)));
    return slot;
  }, { testid: 'new-job' });
  const listHolder = h('div', {});
  const root = h('div', {}, pageHead('Jobs', { sub: 'Live: progress updates stream from the server.', actions: [h('label', { class: 'row' }, status, kind), button] }), holder, listHolder);

  const streams = new Map(); // job id → AbortController
  ctx.onCleanup(() => streams.forEach((ac) => ac.abort()));
  let table = null;
  let signature = '';
  let names = new Map();

  async function poll() {
    const p = new URLSearchParams({ limit: '100' });
    if (q.get('status')) p.set('status', q.get('status'));
    if (q.get('kind')) p.set('kind', q.get('kind'));
    const page = await api(`v1/jobs?${p}`, { signal: ctx.signal });
    if (!ctx.alive) return;
    const jobs = page.items || [];
    const sig = jobs.map((j) => j.id).join(',');
    if (sig !== signature || jobs.some((j) => j.output_model_id && !names.has(j.output_model_id))) {
      const models = await listAll('v1/models', { signal: ctx.signal }).catch(() => []);
      names = new Map(models.map((x) => [x.id, x.name]));
    }
    if (!jobs.length) {
      put(listHolder, card(null, h('div', { class: 'empty', testid: 'jobs-empty' }, 'No jobs yet. Start one from a model page or with "New job".')));
      table = null;
    } else if (sig !== signature || !table) {
      table = jobsTable(jobs, { names, onCancel: () => poll().catch(() => {}) });
      put(listHolder, card(null, table));
    } else {
      for (const j of jobs) table.rows.get(j.id)?.update(j);
    }
    signature = sig;
    // Stream the running jobs (bounded), poll covers the rest.
    for (const j of jobs) {
      if (streams.size >= MAX_STREAMS) break;
      if (j.status !== 'running' || streams.has(j.id)) continue;
      const ac = new AbortController();
      ctx.signal.addEventListener('abort', () => ac.abort(), { once: true });
      streams.set(j.id, ac);
      followJob(j.id, ac.signal, {
        onState: (nj) => table?.rows.get(nj.id)?.update(nj),
        onProgress: (pr) => table?.rows.get(pr.id || j.id)?.progress(pr),
      }).finally(() => streams.delete(j.id));
    }
    return jobs.some((j) => !TERMINAL.has(j.status));
  }

  const active = await poll();
  (async () => {
    let busy = active;
    while (ctx.alive) {
      await sleep(busy ? 2000 : 8000, ctx.signal);
      if (!ctx.alive) break;
      try { busy = await poll(); } catch (e) { if (isAbort(e)) break; }
    }
  })();
  return root;
}

async function viewJob(ctx, id) {
  let job = await api(`v1/jobs/${enc(id)}`, { signal: ctx.signal });
  const names = new Map((await listAll('v1/models', { signal: ctx.signal }).catch(() => [])).map((x) => [x.id, x.name]));
  const root = h('div', { testid: 'job-detail' });
  const head = h('div', {});
  const bar = progressBar(job.progress, job.status, { big: true, testid: 'job-progress' });
  const stage = h('span', { class: 'muted', testid: 'job-stage' });
  const statusSlot = h('span', { testid: 'job-status' });
  const cancelBtn = h('button', { class: 'btn danger', testid: 'job-cancel', onclick: () => cancelJob(job.id) }, 'Cancel job');
  const factsSlot = h('div', {});
  const errorSlot = h('div', {});
  const reportSlot = h('div', {});
  const liveCurve = h('div', {});
  const log = h('div', { class: 'event-log', testid: 'event-log' });
  const epochs = [];

  const logLine = (name, text) => {
    add(log, h('div', {}, h('span', { class: 't' }, fmt.time()), ' ', h('span', { class: 'e' }, name), ' ', text));
    while (log.childElementCount > 300) log.firstChild.remove();
    log.scrollTop = log.scrollHeight;
  };

  function renderState(j) {
    job = j;
    if (j.output_model_id && !names.has(j.output_model_id)) {
      names.set(j.output_model_id, null); // fetch once
      api(`v1/models/${enc(j.output_model_id)}`, { signal: ctx.signal })
        .then((x) => { names.set(x.id, x.name); if (ctx.alive) renderState(job); }, () => {});
    }
    put(head, pageHead(`${j.kind} job`, {
      crumbs: [{ text: 'Jobs', href: '#/jobs' }, { text: fmt.shortId(j.id) }],
      sub: h('code', {}, j.id),
      actions: [j.output_model_id ? h('a', { class: 'btn primary', href: `#/models/${enc(j.output_model_id)}`, testid: 'job-output-link' }, 'Open output model') : null, TERMINAL.has(j.status) ? null : cancelBtn],
    }));
    put(statusSlot, statusBadge(j.status), j.cancel_requested && !TERMINAL.has(j.status) ? h('span', { class: 'muted small' }, ' cancel requested') : null);
    bar.update(j.progress, j.status);
    stage.textContent = j.stage || '';
    put(factsSlot, factList([
      ['model', modelLink(j.model_id, names.get(j.model_id))],
      ['output model', j.output_model_id ? modelLink(j.output_model_id, names.get(j.output_model_id) || j.output_model_id) : '—'],
      ['created', fmt.date(j.created_at)],
      ['started', fmt.date(j.started_at)],
      ['finished', fmt.date(j.finished_at)],
      ['duration', fmt.dur(jobDuration(j))],
      ['attempts', String(j.attempts)],
    ]));
    put(errorSlot, j.error ? card('Error', problemBox(new ApiError(j.error.status, j.error), 'job-error')) : '');
    if (j.report) {
      put(reportSlot, card('Report', renderReport(j.report, { kind: j.kind }), { testid: 'report-card' }));
      put(liveCurve);
    } else put(reportSlot);
  }

  function renderLiveCurve() {
    if (job.report || !epochs.length) return;
    const last = epochs[epochs.length - 1];
    put(liveCurve, card(`Training (live): epoch ${last.epoch} of ${last.epochs ?? '?'}`, h('div', {},
      h('div', { class: 'tiles' },
        tile('train loss', fmt.num(last.train_loss)), tile('val accuracy', fmt.pct(last.val_accuracy, 2)),
        tile('lr', fmt.num(last.lr)), tile('elapsed', fmt.dur(last.elapsed_s)), tile('eta', fmt.dur(last.eta_s))),
      h('div', { class: 'charts' }, curveCharts(epochs, { testidPrefix: 'live' }))), { testid: 'live-curve' }));
  }

  renderState(job);
  const params = Object.keys(job.params || {}).length
    ? h('table', {}, h('tbody', {}, Object.entries(job.params).map(([k, v]) => h('tr', {}, h('td', { class: 'mono' }, k), h('td', { class: 'mono' }, typeof v === 'object' ? JSON.stringify(v) : String(v))))))
    : h('p', { class: 'muted' }, 'No parameters.');
  add(root, head,
    card('Progress', h('div', { class: 'stack' }, h('div', { class: 'row' }, statusSlot, stage), bar)),
    errorSlot,
    h('div', { class: 'grid-2' }, card('Details', factsSlot), card('Parameters', params, { testid: 'job-params' })),
    h('div', { style: { height: '18px' } }),
    liveCurve, reportSlot,
    card('Event log', log));

  if (TERMINAL.has(job.status)) {
    logLine('state', `${job.status} (finished before this page opened)`);
  } else {
    logLine('connect', 'following the job\'s event stream…');
    followJob(job.id, ctx.signal, {
      onEvent: (name, data) => {
        if (name === 'progress') logLine(name, `${Math.round((data.progress || 0) * 100)} %${data.stage ? ` · ${data.stage}` : ''}`);
        else if (name === 'state') logLine(name, `${data.status}${data.stage ? ` · ${data.stage}` : ''}`);
        else if (name === 'epoch') logLine(name, `${data.epoch}/${data.epochs ?? '?'} loss ${fmt.num(data.train_loss)} val acc ${fmt.pct(data.val_accuracy, 2)}${data.phase ? ` (${data.phase})` : ''}`);
        else logLine(name, typeof data === 'string' ? data : JSON.stringify(data));
      },
      onState: (j) => { if (ctx.alive) renderState(j); },
      onProgress: (p) => { bar.update(p.progress, p.status || job.status); if (p.stage !== undefined) stage.textContent = p.stage || ''; },
      onEpoch: (e) => {
        const i = epochs.findIndex((x) => x.epoch === e.epoch && x.phase === e.phase);
        if (i >= 0) epochs[i] = e; else epochs.push(e);
        renderLiveCurve();
      },
    }).then(() => { if (ctx.alive) logLine('end', 'stream closed'); });
  }
  return root;
}

// ---- Playground ---------------------------------------------------------------------

// One real sample per class from the digits test split (pixel values 0..16; the model takes /16).
const DIGIT_EXAMPLES = {
  0: [0, 0, 9, 15, 5, 0, 0, 0, 0, 3, 15, 15, 16, 4, 0, 0, 0, 10, 14, 0, 9, 14, 0, 0, 0, 8, 12, 0, 0, 12, 5, 0, 0, 8, 8, 0, 0, 10, 8, 0, 0, 5, 14, 0, 0, 12, 8, 0, 0, 0, 16, 7, 12, 16, 4, 0, 0, 0, 9, 16, 15, 7, 0, 0],
  1: [0, 0, 7, 10, 0, 0, 0, 0, 0, 0, 9, 16, 0, 0, 0, 0, 0, 0, 6, 16, 5, 0, 0, 0, 0, 0, 9, 16, 9, 0, 0, 0, 0, 0, 0, 6, 14, 1, 0, 0, 0, 0, 0, 2, 16, 4, 0, 0, 0, 0, 1, 4, 14, 12, 4, 1, 0, 0, 7, 16, 16, 16, 16, 5],
  2: [0, 1, 15, 15, 2, 0, 0, 0, 0, 7, 14, 13, 9, 0, 0, 0, 0, 9, 9, 6, 13, 0, 0, 0, 0, 1, 0, 8, 12, 0, 0, 0, 0, 0, 0, 8, 12, 0, 0, 0, 0, 0, 0, 11, 6, 0, 0, 0, 0, 0, 7, 16, 16, 16, 7, 0, 0, 0, 16, 15, 12, 12, 3, 0],
  3: [0, 0, 6, 14, 16, 16, 2, 0, 0, 5, 16, 13, 11, 16, 0, 0, 0, 0, 7, 2, 15, 12, 0, 0, 0, 0, 0, 7, 16, 13, 1, 0, 0, 0, 0, 0, 6, 15, 10, 0, 0, 0, 0, 0, 0, 15, 9, 0, 0, 0, 3, 11, 8, 16, 6, 0, 0, 0, 7, 16, 16, 8, 0, 0],
  4: [0, 0, 0, 1, 14, 5, 0, 0, 0, 0, 0, 11, 11, 0, 0, 0, 0, 0, 9, 12, 1, 0, 0, 0, 0, 5, 15, 1, 0, 2, 4, 0, 0, 14, 7, 0, 0, 13, 10, 0, 0, 15, 16, 16, 16, 16, 5, 0, 0, 3, 8, 8, 15, 10, 0, 0, 0, 0, 0, 3, 15, 2, 0, 0],
  5: [0, 2, 16, 16, 16, 16, 3, 0, 0, 1, 16, 13, 6, 4, 0, 0, 0, 9, 16, 3, 0, 0, 0, 0, 0, 9, 16, 13, 7, 0, 0, 0, 0, 3, 11, 13, 16, 9, 0, 0, 0, 0, 0, 0, 7, 16, 1, 0, 0, 2, 11, 5, 12, 14, 0, 0, 0, 3, 16, 16, 16, 5, 0, 0],
  6: [0, 0, 4, 14, 6, 0, 0, 0, 0, 0, 10, 15, 2, 0, 0, 0, 0, 0, 16, 11, 0, 0, 0, 0, 0, 0, 13, 11, 0, 0, 0, 0, 0, 3, 16, 12, 8, 3, 0, 0, 0, 2, 16, 14, 8, 12, 9, 0, 0, 0, 16, 13, 4, 12, 12, 0, 0, 0, 6, 15, 16, 12, 1, 0],
  7: [0, 0, 2, 13, 16, 9, 0, 0, 0, 0, 12, 12, 7, 16, 3, 0, 0, 1, 14, 3, 0, 16, 4, 0, 0, 0, 0, 4, 10, 16, 6, 0, 0, 0, 0, 13, 16, 16, 9, 0, 0, 0, 0, 5, 13, 1, 0, 0, 0, 0, 0, 11, 9, 0, 0, 0, 0, 0, 1, 16, 4, 0, 0, 0],
  8: [0, 0, 3, 10, 14, 3, 0, 0, 0, 8, 16, 11, 10, 13, 0, 0, 0, 7, 14, 0, 1, 15, 2, 0, 0, 2, 16, 9, 16, 16, 1, 0, 0, 0, 12, 16, 15, 15, 2, 0, 0, 0, 12, 10, 0, 8, 8, 0, 0, 0, 9, 12, 4, 7, 12, 0, 0, 0, 2, 11, 16, 16, 9, 0],
  9: [0, 0, 3, 12, 5, 0, 0, 0, 0, 1, 15, 14, 16, 6, 0, 0, 0, 6, 16, 0, 6, 16, 6, 0, 0, 5, 16, 11, 14, 16, 4, 0, 0, 0, 8, 10, 12, 16, 0, 0, 0, 0, 1, 1, 7, 15, 1, 0, 0, 0, 8, 10, 10, 16, 2, 0, 0, 0, 2, 13, 14, 7, 0, 0],
};

const numel = (shape) => shape.reduce((a, b) => a * b, 1);
const isIntDtype = (dt) => /^(u|i)\d+$/i.test(String(dt || ''));

/** If the input is a square grey image we can draw, its side and value range. */
function drawGeometry(shape, dtype, preprocess) {
  const n = numel(shape);
  const side = n === 64 ? 8 : n === 784 ? 28 : 0;
  if (!side || shape.some((d) => ![1, side, n].includes(d))) return null;
  let max = 1;
  if (isIntDtype(dtype)) max = side === 8 ? 16 : 255;
  else if (preprocess?.scale && preprocess.scale < 0.05) max = Math.round(1 / preprocess.scale);
  return { side, max, integer: isIntDtype(dtype) };
}

function reshape(flat, shape) {
  if (shape.length <= 1) return flat;
  const [d, ...rest] = shape;
  const size = numel(rest);
  return Array.from({ length: d }, (_, i) => reshape(flat.slice(i * size, (i + 1) * size), rest));
}

function softmaxIfNeeded(v) {
  const sum = v.reduce((a, b) => a + b, 0);
  if (v.every((x) => x >= 0 && x <= 1) && Math.abs(sum - 1) < 1e-3) return v;
  const mx = Math.max(...v);
  const e = v.map((x) => Math.exp(x - mx));
  const t = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / t);
}

/** Drawing canvas that downsamples to side×side values in 0..max. */
function drawPad(geom, onChange) {
  const SIZE = 252;
  const canvas = h('canvas', { class: 'draw', width: SIZE, height: SIZE, testid: 'draw-canvas', 'aria-label': 'drawing area' });
  const preview = h('canvas', { class: 'preview', width: geom.side, height: geom.side, testid: 'draw-preview', title: 'What the model sees' });
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const clear = () => { g.fillStyle = '#000'; g.fillRect(0, 0, SIZE, SIZE); };
  clear();
  g.lineCap = 'round'; g.lineJoin = 'round'; g.strokeStyle = '#fff';
  g.lineWidth = geom.side === 8 ? 30 : 20;
  let drawing = false; let last = null;
  const pos = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * (SIZE / r.width), (e.clientY - r.top) * (SIZE / r.height)]; };
  canvas.addEventListener('pointerdown', (e) => { drawing = true; last = pos(e); canvas.setPointerCapture(e.pointerId); g.beginPath(); g.arc(last[0], last[1], g.lineWidth / 2, 0, Math.PI * 2); g.fillStyle = '#fff'; g.fill(); });
  canvas.addEventListener('pointermove', (e) => { if (!drawing) return; const p = pos(e); g.beginPath(); g.moveTo(...last); g.lineTo(...p); g.stroke(); last = p; });
  const end = () => { if (!drawing) return; drawing = false; onChange(read(), true); };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);

  function read() {
    const img = g.getImageData(0, 0, SIZE, SIZE).data;
    const cell = SIZE / geom.side;
    const out = [];
    for (let r = 0; r < geom.side; r++) {
      for (let c = 0; c < geom.side; c++) {
        let sum = 0; let cnt = 0;
        for (let y = Math.floor(r * cell); y < Math.floor((r + 1) * cell); y++) {
          for (let x = Math.floor(c * cell); x < Math.floor((c + 1) * cell); x++) { sum += img[(y * SIZE + x) * 4]; cnt++; }
        }
        const v = (sum / cnt / 255) * geom.max;
        out.push(geom.integer ? Math.round(v) : Number(v.toFixed(4)));
      }
    }
    return out;
  }
  function show(values) {
    const pg = preview.getContext('2d');
    const id = pg.createImageData(geom.side, geom.side);
    values.forEach((v, i) => { const b = Math.max(0, Math.min(255, Math.round((v / geom.max) * 255))); id.data.set([b, b, b, 255], i * 4); });
    pg.putImageData(id, 0, 0);
  }
  /** Paint given values onto the big canvas (for examples). */
  function paint(values) {
    const cell = SIZE / geom.side;
    values.forEach((v, i) => { const b = Math.round((v / geom.max) * 255); g.fillStyle = `rgb(${b},${b},${b})`; g.fillRect((i % geom.side) * cell, Math.floor(i / geom.side) * cell, cell + 0.5, cell + 0.5); });
  }
  return { canvas, preview, read, show, paint, clear: () => { clear(); } };
}

async function viewPlayground(ctx, id) {
  const models = (await listAll('v1/models', { signal: ctx.signal })).filter((m) => m.has_spec);
  const picker = h('select', { testid: 'playground-model', onchange: (e) => { location.hash = `#/playground/${enc(e.target.value)}`; } },
    h('option', { value: '', disabled: true, selected: !id }, models.length ? 'Choose a model with a spec…' : 'No models with a spec'),
    models.map((m) => h('option', { value: m.id, selected: m.id === id }, `${m.name} (${fmt.bytes(m.size_bytes)})`)));
  const root = h('div', {}, pageHead('Playground', { sub: 'Run a model on one input: draw a digit or paste values.', actions: [picker] }));
  const notAvailable = h('div', { class: 'notice warn', testid: 'predict-unavailable' },
    h('strong', {}, 'predict endpoint not available in this build.'), ' This server cannot run models yet, so the playground shows the input but no prediction.');

  if (!id) {
    if (!caps.predict) add(root, notAvailable);
    add(root, card(null, h('div', { class: 'empty' }, models.length ? 'Pick a model above to try it.' : 'Upload a model with an architecture spec to use the playground.')));
    return root;
  }
  const m = await api(`v1/models/${enc(id)}`, { signal: ctx.signal });
  if (!m.spec) { add(root, card(null, h('p', { class: 'muted' }, 'This model has no architecture spec, so it cannot be run.'))); return root; }

  let info = { input_shape: m.spec.input?.shape || [], dtype: m.spec.input?.dtype || 'f32', preprocess: m.spec.input?.preprocess, labels: m.spec.output?.labels };
  if (caps.predictInfo) {
    try {
      const i = await api(`v1/models/${enc(id)}/predict/info`, { signal: ctx.signal });
      info = { ...info, ...i, input_shape: i.input_shape || i.shape || i.input?.shape || info.input_shape, dtype: i.dtype || i.input?.dtype || info.dtype, preprocess: i.preprocess ?? info.preprocess, labels: i.labels ?? info.labels };
    } catch (e) { if (isAbort(e)) throw e; }
  }
  const shape = info.input_shape;
  const n = numel(shape);
  const geom = drawGeometry(shape, info.dtype, info.preprocess);
  const classes = m.spec.output?.classes;

  const text = h('textarea', { rows: 6, testid: 'playground-input', placeholder: `${n} numbers as JSON, e.g. [0, 0.5, …] (nested arrays are fine)`, spellcheck: 'false' });
  const inputErr = h('div', { class: 'field-error', testid: 'playground-input-error' });
  const result = h('div', { testid: 'playground-result' }, h('p', { class: 'muted' }, 'The prediction appears here.'));
  const predictBtn = h('button', { class: 'btn primary', type: 'button', testid: 'predict', disabled: !caps.predict }, 'Predict');
  const setValues = (vals) => { text.value = JSON.stringify(vals); inputErr.textContent = ''; };

  let pad = null;
  const left = h('div', { class: 'draw-wrap' });
  if (geom) {
    pad = drawPad(geom, (vals, fromStroke) => { setValues(vals); pad.show(vals); if (fromStroke && caps.predict) predict(); });
    const examples = geom.side === 8 ? h('div', { class: 'stack' }, h('div', { class: 'muted small' }, 'Or load a digit from the digits test split:'), h('div', { class: 'examples' }, Object.keys(DIGIT_EXAMPLES).map((d) => h('button', {
      class: 'btn small', type: 'button', testid: `example-${d}`, title: `A ${d} from the digits test split`,
      onclick: () => { const vals = DIGIT_EXAMPLES[d].map((v) => (geom.max === 16 ? v : Number((v / 16).toFixed(4)))); pad.clear(); pad.paint(vals); pad.show(vals); setValues(vals); if (caps.predict) predict(); },
    }, d)))) : null;
    add(left, 
      h('div', { class: 'muted small' }, `Draw a digit (white on black). The model sees ${geom.side}×${geom.side} values in 0..${geom.max}.`),
      pad.canvas,
      h('div', { class: 'row' }, h('button', { class: 'btn small', type: 'button', onclick: () => { pad.clear(); const v = pad.read(); pad.show(v); setValues(v); put(result, h('p', { class: 'muted' }, 'Cleared.')); } }, 'Clear'), h('span', { class: 'muted small' }, 'model input:'), pad.preview),
      examples);
    const v0 = pad.read(); pad.show(v0); setValues(v0);
  } else {
    add(left, h('p', { class: 'muted' }, `Input shape ${JSON.stringify(shape)} (${info.dtype}): paste ${n} values on the right.`),
      h('div', { class: 'row' },
        h('button', { class: 'btn small', type: 'button', onclick: () => setValues(new Array(n).fill(0)) }, 'Zeros'),
        h('button', { class: 'btn small', type: 'button', onclick: () => setValues(Array.from({ length: n }, () => (isIntDtype(info.dtype) ? Math.floor(Math.random() * 256) : Number(Math.random().toFixed(3))))) }, 'Random')));
  }

  async function predict() {
    inputErr.textContent = '';
    let values;
    try { values = [JSON.parse(text.value || '[]')].flat(Infinity).map(Number); } catch (e) { inputErr.textContent = `Not valid JSON: ${e.message}`; return; }
    if (values.length !== n) { inputErr.textContent = `Expected ${n} values for shape ${JSON.stringify(shape)}, got ${values.length}.`; return; }
    if (values.some((v) => !isFinite(v))) { inputErr.textContent = 'All values must be numbers.'; return; }
    predictBtn.disabled = true;
    const t0 = performance.now();
    try {
      const res = await api(`v1/models/${enc(id)}/predict`, { method: 'POST', json: { inputs: [reshape(values, shape)], output: 'probabilities' } });
      const ms = performance.now() - t0;
      const out = [res.outputs?.[0] ?? res.outputs].flat(Infinity).map(Number);
      const probs = softmaxIfNeeded(out);
      const best = probs.indexOf(Math.max(...probs));
      const labels = info.labels || res.labels;
      const lab = (i) => String(labels?.[i] ?? i);
      const serverMs = pick(res, 'latency_ms', 'timing.total_ms', 'elapsed_ms');
      put(result, 
        h('div', { class: 'prediction' },
          h('div', {}, h('div', { class: 'muted small' }, 'prediction'), h('div', { class: 'cls', testid: 'prediction' }, lab(best))),
          h('div', {}, h('div', { class: 'muted small' }, 'probability'), h('div', { style: { fontSize: '20px', fontWeight: 600 } }, fmt.pct(probs[best], 1))),
          h('div', {}, h('div', { class: 'muted small' }, 'latency'), h('div', { style: { fontSize: '20px', fontWeight: 600 }, testid: 'latency' }, `${ms.toFixed(1)} ms`),
            h('div', { class: 'muted small' }, serverMs !== null ? `server ${fmt.num(serverMs)} ms` : 'round trip'))),
        chartBox('Probabilities', barChart({ label: 'class probabilities', format: (v) => fmt.pct(v, 1), max: 1, testid: 'chart-probabilities',
          items: probs.map((p, i) => ({ label: lab(i), value: p, cls: i === best ? 'top' : '' })) })));
    } catch (e) {
      put(result, problemBox(e, 'predict-error'));
    } finally {
      predictBtn.disabled = !caps.predict;
    }
  }
  predictBtn.addEventListener('click', predict);

  const right = h('div', { class: 'stack' },
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, `Input values (${n}, shape ${JSON.stringify(shape)}, ${info.dtype})`), text, inputErr),
    h('div', { class: 'actions', style: { marginTop: 0 } }, predictBtn, h('a', { href: `#/models/${enc(m.id)}`, class: 'btn' }, 'Model details')),
    result);
  if (!caps.predict) add(root, notAvailable);
  add(root, card(`${m.name}${classes ? ` · ${classes} classes` : ''}`, h('div', { class: 'playground' }, left, right), { testid: 'playground' }));
  return root;
}

/* =========================== 9. Router and start-up ============================ */

const ROUTES = [
  [/^\/?$/, (ctx) => { location.replace('#/models'); return null; }],
  [/^\/models$/, viewModels],
  [/^\/models\/([^/]+)$/, viewModel],
  [/^\/datasets$/, viewDatasets],
  [/^\/datasets\/([^/]+)$/, viewDataset],
  [/^\/jobs$/, viewJobs],
  [/^\/jobs\/([^/]+)$/, viewJob],
  [/^\/playground$/, viewPlayground],
  [/^\/playground\/([^/]+)$/, viewPlayground],
];

let currentView = null;

function renderAuthStatus() {
  const el = document.getElementById('auth-status');
  if (!el) return;
  const key = getKey();
  put(el, key
    ? h('span', {}, 'API key set · ', h('button', { class: 'btn small', type: 'button', testid: 'forget-key', onclick: () => { sessionStorage.removeItem(KEY_STORAGE); renderAuthStatus(); toast('API key forgotten'); } }, 'Forget'))
    : h('span', { class: 'muted' }, 'No API key'));
}

async function route() {
  if (currentView) {
    currentView.ac.abort();
    currentView.cleanups.forEach((f) => { try { f(); } catch { /* ignore */ } });
  }
  const ctx = {
    ac: new AbortController(),
    cleanups: [],
    query: '',
    get signal() { return this.ac.signal; },
    get alive() { return currentView === this; },
    onCleanup(f) { this.cleanups.push(f); },
  };
  currentView = ctx;
  const hash = decodeURI(location.hash.replace(/^#/, '')) || '/';
  const [path, query = ''] = hash.split('?');
  ctx.query = query;
  const section = path.split('/')[1] || 'models';
  document.querySelectorAll('[data-nav]').forEach((a) => a.classList.toggle('active', a.dataset.nav === section));
  const main = document.getElementById('main');
  for (const [re, view] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    put(main, h('p', { class: 'muted' }, 'Loading…'));
    try {
      if (!caps.loaded) await loadCaps();
      const el = await view(ctx, ...m.slice(1).map(decodeURIComponent));
      if (ctx.alive && el) {
        put(main, el);
        document.title = `${el.querySelector('h1')?.textContent || 'modelpress'} · modelpress`;
      }
    } catch (e) {
      if (ctx.alive && !isAbort(e)) put(main, errorView(e));
    }
    return;
  }
  put(main, pageHead('Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/models' }, 'Go to models')));
}

async function start() {
  renderAuthStatus();
  window.addEventListener('hashchange', route);
  document.body.dataset.ready = 'true'; // the module runs (tests wait for this, then for content)
  await route();
}

start();
