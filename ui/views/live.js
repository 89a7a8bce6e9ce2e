// The live overview: header facts, slots and queue, rejections, tokens, memory.

import {
  $, h, setText, setAttr, clamp, fmtBytes, fmtCompact, fmtInt, fmtPercent, fmtSecs,
} from '../util.js';

/** Elapsed fields (uptime, busy, wait) advance between snapshots from the time one arrived. */
export function renderHeader(s, ageSecs) {
  setText($('#version'), s.version ? `v${s.version}` : '');
  const b = s.backend || {};
  const url = $('#backend-url');
  setText(url, b.url || '–');
  setAttr(url, 'title', b.url || '');
  const up = b.up === true ? 'up' : b.up === false ? 'down' : 'unknown';
  const dot = $('#backend-health');
  setAttr(dot, 'data-up', up);
  setAttr(dot, 'aria-label', `backend ${up === 'unknown' ? 'health unknown' : up}`);
  setAttr(dot, 'title', up === 'unknown' ? 'not checked yet' : `backend ${up}`);
  const kind = $('#backend-kind');
  const showKind = b.kind && b.kind !== 'unknown';
  kind.hidden = !showKind;
  setText(kind, showKind ? b.kind : '');
  // Raw: the backend sends the model's text and blockops translates its calls; parsed: the
  // backend's own parser made them (and may have dropped some). Learned from what it sent.
  const tt = b.tool_text || {};
  const mode = $('#backend-tool-text');
  const showMode = tt.mode === 'raw' || tt.mode === 'parsed';
  mode.hidden = !showMode;
  setText(mode, showMode ? (tt.mode === 'raw' ? 'raw text' : 'parsed by backend') : '');
  setAttr(mode, 'data-tone', tt.mode === 'parsed' && tt.dropped_calls ? 'warn' : '');
  setAttr(mode, 'title', showMode
    ? (tt.mode === 'raw'
      ? `The backend sends the model's own text; blockops translates its tool calls (${tt.text_calls} found in text).`
      : `The backend parses tool calls itself; blockops passes them through (${tt.structured_calls} structured, ${tt.dropped_calls} dropped by the backend). For mlx_lm.server, run scripts/mlx-raw-server.`)
    : '');
  setText($('#model-name'), s.model_name || 'any');
  setAttr($('#model-name'), 'title', s.model_name ? s.model_name : 'clients choose the model');
  tickHeader(s, ageSecs);
}

export function tickHeader(s, ageSecs) {
  if (typeof s.uptime_secs === 'number') setText($('#uptime'), fmtSecs(s.uptime_secs + ageSecs));
}

// ---------------------------------------------------------------- slots and queue

export function renderSlots(s, ageSecs) {
  const slots = s.slots || { total: 0, busy: 0, active: [] };
  const active = slots.active || [];
  const total = Math.max(slots.total || 0, 0);
  const cells = Math.max(total, active.length);
  const root = $('#slots');
  while (root.children.length < cells) {
    const i = root.children.length;
    root.append(
      h('div', { class: 'slot', role: 'listitem', dataset: { slot: String(i), busy: 'false' } },
        h('div', { class: 'slot-top' },
          h('span', { class: 'slot-idx num' }, String(i + 1)),
          h('span', { class: 'slot-state' }, 'idle')),
        h('div', { class: 'slot-time num' }, ''),
        h('div', { class: 'slot-req mono ellipsis' }, '')),
    );
  }
  while (root.children.length > cells) root.lastElementChild.remove();
  // Busy slots fill from the left, in the order the requests were admitted.
  Array.from(root.children).forEach((cell, i) => {
    const a = active[i];
    setAttr(cell, 'data-busy', a ? 'true' : 'false');
    setAttr(cell, 'data-over', i >= total ? 'true' : 'false');
    setAttr(cell, 'data-first-token', a ? String(!!a.first_token) : 'false');
    if (a) {
      cell.dataset.requestId = a.id;
      cell.dataset.since = String((a.busy_secs || 0) - ageSecs);
    } else {
      delete cell.dataset.requestId;
      delete cell.dataset.since;
    }
    const state = !a ? 'idle' : a.first_token ? 'generating' : 'waiting for first token';
    setText(cell.querySelector('.slot-state'), state);
    setText(cell.querySelector('.slot-req'), a ? `${a.model || ''} · ${a.id}` : '');
    setAttr(cell, 'title', a ? `${a.id} (${a.model})` : `slot ${i + 1}: free`);
    setAttr(cell, 'aria-label', a ? `Slot ${i + 1}: busy, ${state}, ${a.model}` : `Slot ${i + 1}: free`);
  });
  setText($('#slots-summary'), `${slots.busy ?? active.length} / ${total} busy`);

  const q = s.queue || { depth: 0, max: 0, waiting: [] };
  const waiting = q.waiting || [];
  setText($('#queue-summary'), `${q.depth ?? waiting.length} / ${q.max ?? '–'}`);
  const list = $('#queue');
  const ids = waiting.map((w) => w.id).join(',');
  if (list.dataset.ids !== ids) {
    list.dataset.ids = ids;
    list.replaceChildren(
      ...waiting.map((w, i) =>
        h('li', { class: 'queue-item', dataset: { requestId: w.id } },
          h('span', { class: 'q-pos num' }, String(i + 1)),
          h('span', { class: 'q-id mono ellipsis' }, w.id),
          h('span', { class: 'q-model ellipsis' }, w.model || ''),
          h('span', { class: 'q-wait num', dataset: { since: '0' } }, ''))),
    );
  }
  Array.from(list.children).forEach((li, i) => {
    li.querySelector('.q-wait').dataset.since = String((waiting[i].wait_secs || 0) - ageSecs);
  });
  $('#queue-empty').hidden = waiting.length > 0;

  const r = s.rejections || {};
  for (const row of document.querySelectorAll('#rejections [data-rejection]')) {
    const n = r[row.dataset.rejection] || 0;
    setText(row.querySelector('dd'), fmtInt(n));
    setAttr(row, 'data-nonzero', n > 0 ? 'true' : 'false');
  }
  tickSlots(ageSecs);
}

/** Advances busy and wait times by the seconds since the snapshot arrived. */
export function tickSlots(ageSecs) {
  for (const cell of document.querySelectorAll('#slots .slot[data-busy="true"]')) {
    setText(cell.querySelector('.slot-time'), fmtSecs(Number(cell.dataset.since) + ageSecs));
  }
  for (const cell of document.querySelectorAll('#slots .slot[data-busy="false"] .slot-time')) {
    setText(cell, '');
  }
  for (const el of document.querySelectorAll('#queue .q-wait')) {
    setText(el, fmtSecs(Number(el.dataset.since) + ageSecs));
  }
}

// ---------------------------------------------------------------- tokens

export function renderTokens(s) {
  const t = s.tokens || {};
  setText($('#tokens-prompt'), fmtCompact(t.prompt || 0));
  setAttr($('#tokens-prompt'), 'title', fmtInt(t.prompt || 0));
  setText($('#tokens-completion'), fmtCompact(t.completion || 0));
  setAttr($('#tokens-completion'), 'title', fmtInt(t.completion || 0));
  const rate = t.completion_per_sec ? `${t.completion_per_sec.toFixed(1)}` : '–';
  setText($('#tokens-persec'), rate === '–' ? '–' : `${rate}/s`);
  setText($('#tokens-rate'), rate === '–' ? '– tok/s' : `${rate} tok/s`);

  const hard = t.hard_threshold || 0;
  const warn = t.warn_threshold || 0;
  const last = t.last_prompt || 0;
  // The bar's scale runs a little past the hard threshold so that both marks are visible.
  const scale = Math.max(hard * 1.1, warn * 1.1, last, 1);
  setText($('#tokens-last'), hard ? `${fmtInt(last)} / ${fmtInt(hard)}` : fmtInt(last));
  setText($('#tokens-warn'), fmtCompact(warn));
  setText($('#tokens-hard'), fmtCompact(hard));
  const level = hard && last >= hard ? 'critical' : warn && last >= warn ? 'warning' : 'normal';
  const meter = $('#tokens-meter');
  setAttr(meter, 'data-level', level);
  setAttr(meter, 'aria-valuemax', String(Math.round(scale)));
  setAttr(meter, 'aria-valuenow', String(last));
  setAttr(meter, 'aria-valuetext', `${fmtInt(last)} tokens; warn at ${fmtInt(warn)}, hard limit ${fmtInt(hard)}`);
  $('#tokens-fill').style.width = `${clamp((last / scale) * 100, 0, 100)}%`;
  placeMark($('#tokens-mark-warn'), warn, scale);
  placeMark($('#tokens-mark-hard'), hard, scale);
}

/** Completion tokens per second of the recent finished requests, oldest on the left. */
export function renderThroughput(requests) {
  const rates = (requests || [])
    .filter((r) => r.state === 'done' && r.completion_tokens > 0 && r.duration_ms > (r.ttft_ms || 0))
    .slice(0, 40)
    .map((r) => ({ id: r.id, rate: (r.completion_tokens * 1000) / (r.duration_ms - (r.ttft_ms || 0)) }))
    .reverse();
  const key = rates.map((x) => x.id).join(',');
  const root = $('#tokens-chart');
  if (root.dataset.key === key) return;
  root.dataset.key = key;
  const W = 300;
  const H = 60;
  const slots = 40;
  const bw = W / slots;
  const max = Math.max(...rates.map((x) => x.rate), 1);
  const nodes = [svg('line', { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: 'gridline' })];
  rates.forEach((x, i) => {
    const hgt = Math.max(1.5, (x.rate / max) * (H - 4));
    const bar = svg('rect', { x: (slots - rates.length + i) * bw + 1, y: H - hgt, width: Math.max(bw - 2, 1), height: hgt, class: 'bar', rx: 1 });
    const title = document.createElementNS(SVGNS, 'title');
    title.textContent = `${x.id}: ${x.rate.toFixed(1)} tok/s`;
    bar.append(title);
    nodes.push(bar);
  });
  root.replaceChildren(...nodes);
  const avg = rates.length ? rates.reduce((a, x) => a + x.rate, 0) / rates.length : 0;
  setText($('#tokens-chart-caption'), rates.length
    ? `tok/s per request · last ${rates.length} · peak ${max.toFixed(1)} · mean ${avg.toFixed(1)}`
    : 'tok/s per request: none finished yet');
  setAttr(root, 'aria-label', rates.length
    ? `Completion tokens per second of the last ${rates.length} requests: mean ${avg.toFixed(1)}, peak ${max.toFixed(1)}`
    : 'Completion tokens per second of recent requests: none yet');
}

function placeMark(el, value, scale) {
  el.hidden = !(value > 0);
  el.style.left = `${clamp((value / scale) * 100, 0, 100)}%`;
}

// ---------------------------------------------------------------- memory

export function renderMemory(s) {
  const m = s.memory || {};
  const used = Number(m.used_percent) || 0;
  const swap = Number(m.swap_used_percent) || 0;
  const sampled = (m.history && m.history.length > 0) || used > 0;
  const pressure = m.pressure || 'normal';
  const pill = $('#memory-pressure');
  setAttr(pill, 'data-pressure', pressure);
  setText(pill, sampled ? pressure : 'no sample');
  setText($('#memory-used'), sampled ? fmtPercent(used) : '–');
  setText($('#memory-swap'), sampled ? fmtPercent(swap) : '–');
  setText($('#memory-warn'), fmtPercent(m.warn_percent, 0));
  setText($('#memory-crit'), fmtPercent(m.critical_percent, 0));
  const meter = $('#memory-meter');
  setAttr(meter, 'data-level', pressure);
  setAttr(meter, 'aria-valuenow', used.toFixed(1));
  setAttr(meter, 'aria-valuetext', `${used.toFixed(1)}% used, ${pressure}; warn at ${m.warn_percent}%, critical at ${m.critical_percent}%`);
  $('#memory-fill').style.width = `${clamp(used, 0, 100)}%`;
  setAttr($('#swap-meter'), 'aria-valuenow', swap.toFixed(1));
  $('#swap-fill').style.width = `${clamp(swap, 0, 100)}%`;
  placeMark($('#memory-mark-warn'), m.warn_percent, 100);
  placeMark($('#memory-mark-crit'), m.critical_percent, 100);
  renderChart(m);
  // The model servers blockops runs (managed backends): their RSS beside the gauge.
  const procs = (s.backends || []).map((b) => b.process).filter((p) => p && p.rss_bytes != null);
  const models = $('#memory-models');
  if (models) {
    models.hidden = procs.length === 0;
    const total = procs.reduce((sum, p) => sum + p.rss_bytes, 0);
    setText($('#memory-models-rss'), `${fmtBytes(total)} (${procs.length})`);
  }
}

const SVGNS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

let lastChartKey = '';

function renderChart(m) {
  const hist = (m.history || []).filter((p) => Array.isArray(p) && p.length >= 2);
  const key = `${hist.length}:${hist.length ? hist[hist.length - 1].join(',') : ''}:${m.warn_percent}:${m.critical_percent}`;
  if (key === lastChartKey) return;
  lastChartKey = key;
  const root = $('#memory-chart');
  const W = 300;
  const H = 80;
  const y = (p) => H - (clamp(p, 0, 100) / 100) * H;
  const nodes = [];
  for (const [pct, cls] of [[m.warn_percent, 'warn'], [m.critical_percent, 'crit']]) {
    if (pct > 0) nodes.push(svg('line', { x1: 0, x2: W, y1: y(pct), y2: y(pct), class: `thr thr-${cls}` }));
  }
  for (const g of [25, 50, 75]) nodes.push(svg('line', { x1: 0, x2: W, y1: y(g), y2: y(g), class: 'gridline' }));
  if (hist.length >= 2) {
    const t0 = hist[0][0];
    const t1 = hist[hist.length - 1][0];
    const span = Math.max(t1 - t0, 1);
    const x = (t) => ((t - t0) / span) * W;
    const pts = hist.map(([t, p]) => `${x(t).toFixed(1)},${y(p).toFixed(1)}`);
    nodes.push(svg('path', { d: `M0,${H} L${pts.join(' L')} L${W},${H} Z`, class: 'area' }));
    nodes.push(svg('polyline', { points: pts.join(' '), class: 'line' }));
    setText($('#memory-chart-span'), `last ${fmtSecs(span)} · ${hist.length} samples`);
  } else {
    setText($('#memory-chart-span'), hist.length ? '1 sample' : 'no samples yet');
  }
  root.replaceChildren(...nodes);
  const lastP = hist.length ? hist[hist.length - 1][1] : null;
  setAttr(root, 'aria-label', lastP === null
    ? 'Memory used, recent history: no samples yet'
    : `Memory used, recent history: ${hist.length} samples, latest ${lastP.toFixed(1)}%`);
}
