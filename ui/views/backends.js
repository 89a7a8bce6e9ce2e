// The backends card: every backend the proxy routes to, with its state, kind, models, slots,
// queue, probe latency and last error, and a purge button each. One row per backend; with one
// backend (BACKEND_URL alone) the row is `default`, serving every model. A backend blockops runs
// itself (`cmd`) shows its process: state ("loading" while it starts), RSS, its last output
// lines, and a Load / Unload button.

import { $, h, setText } from '../util.js';

function stateCell(b) {
  const p = b.process;
  if (p && p.state !== 'running') {
    let shown = { starting: 'loading', stopping: 'unloading', stopped: 'not loaded', failed: 'failed' }[p.state] || p.state;
    if (p.waiting) shown += ` (${p.waiting} waiting)`;
    const up = p.state === 'failed' ? 'false' : 'unknown';
    return h('span', { class: 'backend-state', dataset: { up, process: p.state } },
      h('span', { class: 'health', dataset: { up }, 'aria-hidden': 'true' }),
      shown);
  }
  const up = b.up === true ? 'up' : b.up === false ? 'down' : 'unknown';
  return h('span', { class: 'backend-state', dataset: { up } },
    h('span', { class: 'health', dataset: { up }, 'aria-hidden': 'true' }),
    up === 'unknown' ? 'not checked' : up);
}

function bytes(n) {
  if (n == null) return '';
  return n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${Math.round(n / (1 << 20))} MiB`;
}

function processCell(b, onProcess) {
  const p = b.process;
  if (!p) return h('span', { class: 'muted' }, '–');
  const loaded = p.state === 'running' || p.state === 'starting';
  const action = loaded ? 'stop' : 'start';
  const button = h('button', {
    type: 'button', class: 'btn btn-ghost btn-small', dataset: { process: b.name, action },
    'aria-label': `${loaded ? 'Unload' : 'Load'} ${b.name}`,
  }, loaded ? 'Unload' : 'Load');
  button.addEventListener('click', () => onProcess(b.name, action, button));
  const facts = [p.pid ? `pid ${p.pid}` : null, bytes(p.rss_bytes) || null, p.group ? `group ${p.group}` : null]
    .filter(Boolean).join(' · ');
  const output = (p.output || []).join('\n');
  return h('div', { class: 'process' },
    h('span', { class: 'num muted' }, facts || p.state), ' ', button,
    output ? h('details', { class: 'process-output' },
      h('summary', {}, 'Output'),
      h('pre', { class: 'mono' }, output)) : null);
}

function row(b, onPurge, onProcess) {
  const models = (b.models || []).join(', ');
  const slots = b.slots || { total: 0, busy: 0 };
  const queue = b.queue || { depth: 0, max: 0 };
  const purge = h('button', {
    type: 'button', class: 'btn btn-ghost btn-small', dataset: { purge: b.name },
    'aria-label': `Purge the KV cache of ${b.name}`,
  }, 'Purge');
  purge.addEventListener('click', () => onPurge(b.name, purge));
  return h('tr', { dataset: { backend: b.name, up: String(b.up) } },
    h('th', { scope: 'row', class: 'mono', title: b.url }, b.name),
    h('td', { class: 'c-bstate' }, stateCell(b)),
    h('td', { class: 'c-kind' }, b.kind || '–'),
    h('td', { class: 'c-bmodels mono ellipsis', title: models }, models || '–'),
    h('td', { class: 'c-bslots num' }, `${slots.busy} / ${slots.total}`),
    h('td', { class: 'c-bqueue num' }, `${queue.depth} / ${queue.max}`),
    h('td', { class: 'c-bprobe num' }, b.probe_ms == null ? '–' : `${b.probe_ms} ms`),
    h('td', { class: 'c-berror ellipsis', title: b.last_error || '' }, b.last_error || h('span', { class: 'muted' }, '–')),
    h('td', { class: 'c-bprocess' }, processCell(b, onProcess)),
    h('td', { class: 'c-bpurge' }, purge),
  );
}

export class BackendsView {
  constructor(onPurge, onProcess) {
    this.onPurge = onPurge;
    this.onProcess = onProcess;
    this.key = '';
  }

  render(backends) {
    const list = backends || [];
    // Snapshots arrive often; rebuild only when something shown changed (keeps focus on buttons).
    const key = JSON.stringify(list.map((b) => [b.name, b.url, b.up, b.kind, b.models, b.slots, b.queue?.depth, b.queue?.max, b.probe_ms, b.last_error,
      b.process && [b.process.state, b.process.waiting, b.process.pid, b.process.rss_bytes, (b.process.output || []).slice(-1)[0]]]));
    if (key === this.key) return;
    this.key = key;
    const up = list.filter((b) => b.up === true).length;
    setText($('#backends-summary'), list.length ? `${up} of ${list.length} up` : '–');
    $('#backends-body').replaceChildren(...list.map((b) => row(b, this.onPurge, this.onProcess)));
  }
}
