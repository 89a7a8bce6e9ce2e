// The live traffic table: one row per request, keyed by id, updated in place.

import { $, h, setText, fmtClock, fmtMs, fmtCompact } from '../util.js';

export class TrafficTable {
  constructor({ onSelect }) {
    this.body = $('#traffic-body');
    this.rows = new Map(); // id → {tr, sig}
    this.selected = null;
    this.primed = false; // the first fill does not flash rows as new
    this.onSelect = onSelect;
    this.body.addEventListener('click', (e) => {
      const tr = e.target.closest('tr[data-request-id]');
      if (tr) this.select(tr.dataset.requestId, { focus: false });
    });
    this.body.addEventListener('keydown', (e) => this.keydown(e));
  }

  keydown(e) {
    const tr = e.target.closest('tr[data-request-id]');
    if (!tr) return;
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      this.select(tr.dataset.requestId, { focus: false, fromKeyboard: true });
    } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      const next = e.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
      if (next) next.focus();
    } else if (e.key === 'Home' || e.key === 'End') {
      e.preventDefault();
      const t = e.key === 'Home' ? this.body.firstElementChild : this.body.lastElementChild;
      if (t) t.focus();
    }
  }

  select(id, opts = {}) {
    this.selected = id;
    for (const { tr } of this.rows.values()) {
      const on = tr.dataset.requestId === id;
      if (on) tr.setAttribute('aria-current', 'true');
      else tr.removeAttribute('aria-current');
    }
    this.onSelect(id, opts);
  }

  clearSelection() {
    this.selected = null;
    for (const { tr } of this.rows.values()) tr.removeAttribute('aria-current');
  }

  /** Adds or updates one row (from a `finished` event, ahead of the next snapshot). */
  upsert(r, { top = true } = {}) {
    const have = this.rows.get(r.id);
    const sig = JSON.stringify(r);
    if (have) {
      if (have.sig !== sig) {
        fillRow(have.tr, r);
        have.sig = sig;
      }
      return have.tr;
    }
    const tr = h('tr', { tabindex: '0', dataset: { requestId: r.id } });
    fillRow(tr, r);
    if (this.primed) tr.classList.add('row-new');
    if (r.id === this.selected) tr.setAttribute('aria-current', 'true');
    this.rows.set(r.id, { tr, sig });
    if (top) this.body.prepend(tr);
    else this.body.append(tr);
    return tr;
  }

  /** Syncs the table with the snapshot's list (most recent first). */
  render(requests) {
    const list = requests || [];
    const keep = new Set(list.map((r) => r.id));
    for (const [id, { tr }] of this.rows) {
      if (!keep.has(id)) {
        tr.remove();
        this.rows.delete(id);
      }
    }
    // Walk in order, moving rows only when they are out of place (keeps focus and selection).
    let prev = null;
    for (const r of list) {
      const tr = this.upsert(r, { top: false });
      const want = prev ? prev.nextElementSibling : this.body.firstElementChild;
      if (want !== tr) {
        if (prev) prev.after(tr);
        else this.body.prepend(tr);
      }
      prev = tr;
    }
    this.primed = true;
    $('#traffic-empty').hidden = list.length > 0;
    const running = list.filter((r) => r.state === 'running' || r.state === 'queued').length;
    const failed = list.filter((r) => r.state === 'failed').length;
    const parts = [`${list.length} recent`];
    if (running) parts.push(`${running} in flight`);
    if (failed) parts.push(`${failed} failed`);
    setText($('#traffic-summary'), list.length ? parts.join(' · ') : 'no requests yet');
    setText($('#tab-traffic-count'), list.length ? String(list.length) : '');
  }
}

/** Which front door served a request: its short label and what it means (records carry `front_door`). */
const FRONT_DOORS = {
  chat: ['Chat', 'OpenAI Chat Completions (/v1/chat/completions)'],
  messages: ['Messages', 'Anthropic Messages (/v1/messages): Claude Code, Anthropic SDKs'],
  responses: ['Responses', 'OpenAI Responses (/v1/responses): Codex, Agents SDK'],
  passthrough: ['Pass', 'forwarded untranslated (completions, embeddings, …)'],
};

export function frontDoor(r) {
  const door = r.front_door;
  if (!door) return null;
  const [label, about] = FRONT_DOORS[door] || [door, door];
  return { door, label, about };
}

function doorChip(r) {
  const d = frontDoor(r);
  if (!d) return null;
  return h('span', { class: 'chip chip-door', dataset: { door: d.door }, title: `front door: ${d.about}` }, d.label);
}

function statusCell(r) {
  if (r.state === 'queued') return h('span', { class: 'badge', dataset: { tone: 'muted' } }, 'queued');
  if (r.state === 'running' && r.status == null) {
    return h('span', { class: 'badge', dataset: { tone: 'info' } }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), 'running');
  }
  const code = r.status ?? (r.state === 'failed' ? 'failed' : '–');
  const tone = r.state === 'failed' || (typeof code === 'number' && code >= 400) ? 'bad' : 'good';
  return h('span', { class: 'badge', dataset: { tone }, title: r.state }, String(code));
}

function tokensCell(r) {
  if (r.prompt_tokens == null && r.completion_tokens == null) return '–';
  return h('span', { title: `prompt ${r.prompt_tokens ?? '–'} → completion ${r.completion_tokens ?? '–'}` },
    fmtCompact(r.prompt_tokens), h('span', { class: 'arrow', 'aria-label': 'to' }, ' → '), fmtCompact(r.completion_tokens));
}

function fillRow(tr, r) {
  tr.dataset.state = r.state || '';
  tr.dataset.status = r.status == null ? '' : String(r.status);
  const tools = r.tool_calls || [];
  const notices = r.notices || [];
  tr.replaceChildren(
    h('td', { class: 'c-time num', title: r.time }, fmtClock(r.time)),
    h('td', { class: 'c-model ellipsis', title: r.model }, r.model || '–'),
    h('td', { class: 'c-backend ellipsis mono', title: r.backend || '' }, r.backend || '–'),
    h('td', { class: 'c-stream' }, doorChip(r), r.stream
      ? h('span', { class: 'stream-yes', title: 'streaming', 'aria-label': 'streaming' }, 'SSE')
      : h('span', { class: 'stream-no', title: 'not streaming', 'aria-label': 'not streaming' }, 'JSON')),
    h('td', { class: 'c-status' }, statusCell(r), r.dropped_calls
      ? h('span', { class: 'badge badge-dropped', dataset: { tone: 'warn' }, title: `the backend dropped ${r.dropped_calls} tool call(s)` }, 'call dropped')
      : null, notices.length
      ? h('span', { class: 'note-icon status-note', title: notices.join('\n'), 'aria-hidden': 'true' }, '!')
      : null),
    h('td', { class: 'c-dur num' }, fmtMs(r.duration_ms)),
    h('td', { class: 'c-ttft num' }, fmtMs(r.ttft_ms)),
    h('td', { class: 'c-tok num' }, tokensCell(r)),
    h('td', { class: 'c-tools' }, tools.length
      ? h('span', { class: 'chips' }, tools.map((t) => h('span', { class: 'chip chip-tool mono', dataset: { tool: t } }, t)))
      : h('span', { class: 'muted' }, '–')),
    h('td', { class: 'c-notes', title: notices.join('\n') }, notices.length
      ? h('span', { class: 'note' }, h('span', { class: 'note-icon', 'aria-hidden': 'true' }, '!'), h('span', { class: 'ellipsis' }, notices.length > 1 ? `${notices[0]} (+${notices.length - 1})` : notices[0]))
      : h('span', { class: 'muted' }, '–')),
  );
}
