// Small DOM and formatting helpers shared by the views.

/** Creates an element: h('td', {class: 'num', dataset: {x: 1}}, 'text', child, …). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** Sets textContent only when it changed (keeps screen readers and selection calm). */
export function setText(el, text) {
  if (!el) return;
  const t = String(text);
  if (el.textContent !== t) el.textContent = t;
}

export function setAttr(el, name, value) {
  if (!el) return;
  const v = String(value);
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}

const intFmt = new Intl.NumberFormat('en-US');

export function fmtInt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return intFmt.format(Math.round(n));
}

/** 1234 → "1.2k", 1234567 → "1.23M". */
export function fmtCompact(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const a = Math.abs(n);
  if (a < 10000) return intFmt.format(Math.round(n));
  if (a < 1e6) return `${(n / 1e3).toFixed(a < 1e5 ? 1 : 0)}k`;
  if (a < 1e9) return `${(n / 1e6).toFixed(a < 1e7 ? 2 : 1)}M`;
  return `${(n / 1e9).toFixed(2)}B`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  return fmtSecs(ms / 1000);
}

/** Seconds as "4.2s", "3m 12s", "2h 05m", "3d 4h". */
export function fmtSecs(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  if (s < 10) return `${s.toFixed(1)}s`;
  if (s < 60) return `${Math.floor(s)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const hr = Math.floor(m / 60);
  if (hr < 24) return `${hr}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hr / 24)}d ${hr % 24}h`;
}

export function fmtPercent(p, digits = 1) {
  if (p === null || p === undefined || Number.isNaN(p)) return '–';
  return `${Number(p).toFixed(digits)}%`;
}

/** A size in bytes as GiB (from 1 GiB) or MiB; '' for none. */
export function fmtBytes(n) {
  if (n == null) return '';
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${Math.round(n / (1 << 20))} MiB`;
}

/** An RFC 3339 time as local HH:MM:SS. */
export function fmtClock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || '–';
  return d.toLocaleTimeString([], { hour12: false, hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

/** Pretty-prints a JSON string if it parses; otherwise returns it as it is. */
export function prettyJson(text) {
  if (typeof text !== 'string') return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/**
 * Splits `text` into segments along byte offsets (UTF-8), as the engine's trace reports them.
 * `spans` are `{start, end, …}` with byte offsets; returns `[{text, span|null}]` covering the
 * whole text in order, gaps as plain segments. Offsets that fall inside a character are decoded
 * leniently (the replacement character), never thrown on.
 */
export function sliceByBytes(text, spans) {
  const bytes = new TextEncoder().encode(text);
  const decode = (a, b) => new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(a, b));
  const sorted = spans
    .filter((s) => Number.isFinite(s.start) && Number.isFinite(s.end) && s.end > s.start)
    .map((s) => ({ ...s, start: clamp(s.start, 0, bytes.length), end: clamp(s.end, 0, bytes.length) }))
    .sort((a, b) => a.start - b.start);
  const out = [];
  let pos = 0;
  for (const s of sorted) {
    if (s.start < pos) continue; // overlapping spans: keep the first
    if (s.start > pos) out.push({ text: decode(pos, s.start), span: null });
    if (s.end > s.start) out.push({ text: decode(s.start, s.end), span: s });
    pos = s.end;
  }
  if (pos < bytes.length) out.push({ text: decode(pos, bytes.length), span: null });
  return out;
}

/** Merges neighbouring trace spans of the same kind and format (the engine may report per delta). */
export function mergeSpans(trace) {
  const out = [];
  for (const s of trace || []) {
    const last = out[out.length - 1];
    if (
      last &&
      last.kind === s.kind &&
      (s.kind === 'content' || s.kind === 'reasoning') &&
      last.format === s.format &&
      !last.reason &&
      !s.reason &&
      last.end === s.start
    ) {
      last.end = s.end;
    } else {
      out.push({ ...s });
    }
  }
  return out;
}
