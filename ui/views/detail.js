// The translation view: one request's raw model text, highlighted along the engine's trace,
// beside the structured output it became.

import { getRequest, ApiError } from '../api.js';
import {
  $, h, setText, fmtMs, fmtInt, fmtClock, prettyJson, sliceByBytes, mergeSpans,
} from '../util.js';
import { frontDoor } from './traffic.js';

const KIND_LABEL = {
  content: 'content',
  reasoning: 'reasoning',
  tool_call: 'tool call',
  rejected: 'left as content',
};

export class DetailView {
  constructor({ onClose }) {
    this.card = $('#detail');
    this.body = $('#detail-body');
    this.id = null;
    this.loading = null;
    this.record = null;
    $('#detail-close').addEventListener('click', () => onClose());
  }

  /** Shows request `id`; `summary` (from the table) is shown while the record loads. */
  async show(id, summary) {
    this.id = id;
    this.card.dataset.requestId = id;
    setText($('#detail-id'), id);
    $('#detail-close').hidden = false;
    const inFlight = summary && (summary.state === 'running' || summary.state === 'queued');
    if (inFlight) {
      this.setState('pending');
      this.body.replaceChildren(
        summaryBar(summary, null),
        h('p', { class: 'empty' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }),
          ' In progress. The translation appears when the response finishes.'),
      );
      return;
    }
    if (this.loading) this.loading.abort();
    const controller = new AbortController();
    this.loading = controller;
    this.setState('loading');
    if (!this.record || this.record.id !== id) {
      this.body.replaceChildren(h('p', { class: 'empty' }, 'Loading…'));
    }
    try {
      const rec = await getRequest(id, { signal: controller.signal });
      if (this.id !== id) return;
      this.record = rec;
      this.render(rec);
      this.setState('loaded');
      const n = (rec.output?.tool_calls || []).length;
      setText($('#detail-status'), `Translation of ${id} shown: ${n} tool call${n === 1 ? '' : 's'}, status ${rec.status ?? rec.state}.`);
    } catch (e) {
      if (e.name === 'AbortError' || this.id !== id) return;
      this.setState('error');
      const msg = e instanceof ApiError && e.status === 404
        ? 'This request is no longer kept by the proxy (only the most recent ones are).'
        : `Could not load the request: ${e.message}`;
      this.body.replaceChildren(h('p', { class: 'empty error-text' }, msg));
    } finally {
      if (this.loading === controller) this.loading = null;
    }
  }

  /** A finished event for the request on screen: reload it. */
  refreshIfShowing(id, summary) {
    if (this.id === id && this.card.dataset.state === 'pending') this.show(id, summary);
  }

  clear() {
    this.id = null;
    this.record = null;
    delete this.card.dataset.requestId;
    setText($('#detail-id'), '');
    $('#detail-close').hidden = true;
    this.setState('empty');
    this.body.replaceChildren(
      h('p', { class: 'empty' }, 'Select a request to see the model\'s raw text beside the tool calls it became.'),
    );
  }

  setState(state) {
    this.card.dataset.state = state;
  }

  render(rec) {
    const output = rec.output || {};
    const calls = output.tool_calls || [];
    // raw_text is only stored when it differs from the content the client got.
    const raw = rec.raw_text ?? output.content ?? '';
    const trace = mergeSpans(Array.isArray(rec.trace) ? rec.trace : []);
    const callSpans = trace.filter((s) => s.kind === 'tool_call');
    const rejected = trace.filter((s) => s.kind === 'rejected');

    const parts = [summaryBar(rec, rec.timings)];
    const notices = rec.notices || [];
    if (rec.dropped_calls) {
      parts.push(h('div', { class: 'callout callout-bad', role: 'note' },
        h('span', { class: 'badge', dataset: { tone: 'warn' } }, 'call dropped'), ' ',
        `The backend lost ${rec.dropped_calls === 1 ? 'a tool call' : `${rec.dropped_calls} tool calls`} in its own parser before blockops saw the model's text.`));
    }
    if (notices.length) {
      parts.push(h('ul', { class: 'notices', 'aria-label': 'Notices' },
        notices.map((n) => h('li', { class: 'notice' }, h('span', { class: 'note-icon', 'aria-hidden': 'true' }, '!'), n))));
    }
    if (rec.error) {
      const err = rec.error.error || rec.error;
      parts.push(h('div', { class: 'callout callout-bad', role: 'note' },
        h('strong', null, err.code || err.type || 'error'), ' ', err.message || JSON.stringify(err)));
    }

    // Raw text, segmented by byte offsets.
    let callIndex = 0;
    const segments = sliceByBytes(raw, trace).map(({ text, span }) => {
      if (!span) return h('span', { class: 'seg seg-plain' }, text);
      const attrs = {
        class: `seg seg-${span.kind}`,
        dataset: { spanKind: span.kind, start: String(span.start), end: String(span.end) },
      };
      if (span.format) attrs.dataset.format = span.format;
      if (span.kind === 'tool_call') {
        attrs.dataset.callIndex = String(callIndex);
        const call = calls[callIndex];
        attrs.title = `tool call #${callIndex + 1}${call ? `: ${call.name}` : ''}${span.format ? ` (${span.format})` : ''}`;
        callIndex += 1;
        return h('mark', attrs, h('span', { class: 'seg-badge', 'aria-hidden': 'true' }, String(callIndex)), text);
      }
      if (span.kind === 'rejected') {
        attrs.title = `left as content: ${span.reason || 'not a valid call'}`;
        return h('mark', attrs, text);
      }
      return h('span', attrs, text);
    });
    const rawPane = h('section', { class: 'pane pane-raw', 'aria-labelledby': 'raw-title' },
      h('div', { class: 'pane-head' },
        h('h3', { id: 'raw-title' }, 'Raw model text'),
        h('span', { class: 'legend', 'aria-hidden': 'true' },
          h('span', { class: 'lg lg-tool_call' }, 'tool call'),
          h('span', { class: 'lg lg-reasoning' }, 'reasoning'),
          h('span', { class: 'lg lg-rejected' }, 'rejected'))),
      raw
        ? h('pre', { class: 'raw', id: 'detail-raw', tabindex: '0', 'aria-label': 'Raw model text' }, segments)
        : h('p', { class: 'empty' }, 'No text from the model.'));

    // Structured output.
    const out = [];
    if (calls.length) {
      out.push(h('ol', { class: 'calls', id: 'detail-calls', 'aria-label': 'Structured tool calls' },
        calls.map((c, i) => {
          const span = callSpans[i];
          return h('li', { class: 'call', dataset: { toolCall: c.name, callIndex: String(i) } },
            h('div', { class: 'call-head' },
              h('span', { class: 'call-idx num', 'aria-hidden': 'true' }, String(i + 1)),
              h('span', { class: 'call-name mono' }, c.name),
              span && span.format ? h('span', { class: 'tag' }, span.format) : null,
              h('span', { class: 'call-id mono muted' }, c.id || '')),
            h('pre', { class: 'json call-args', 'aria-label': `Arguments of ${c.name}` }, prettyJson(c.arguments ?? '')));
        })));
    } else {
      out.push(h('p', { class: 'empty', id: 'detail-no-calls' }, 'No tool calls.'));
    }
    // With no raw_text the raw pane already is the content; show it once.
    if (output.content && rec.raw_text != null) {
      out.push(h('div', { class: 'out-block' }, h('h4', null, 'Content'), h('pre', { class: 'text', id: 'detail-content' }, output.content)));
    }
    if (output.reasoning) {
      out.push(h('details', { class: 'out-block' },
        h('summary', null, 'Reasoning ', h('span', { class: 'muted num' }, `${output.reasoning.length} chars`)),
        h('pre', { class: 'text', id: 'detail-reasoning' }, output.reasoning)));
    }
    const outPane = h('section', { class: 'pane pane-out', 'aria-labelledby': 'out-title' },
      h('div', { class: 'pane-head' },
        h('h3', { id: 'out-title' }, 'Structured output'),
        h('span', { class: 'muted num' }, `${calls.length} tool call${calls.length === 1 ? '' : 's'}`)),
      out);

    parts.push(h('div', { class: 'split' }, rawPane, outPane));

    // Trace: interesting spans (not plain content), rejected ones with their reason.
    const interesting = trace.filter((s) => s.kind !== 'content');
    if (interesting.length) {
      const bytes = new TextEncoder().encode(raw);
      const dec = new TextDecoder();
      parts.push(h('section', { class: 'trace', 'aria-labelledby': 'trace-title' },
        h('h3', { id: 'trace-title' }, 'Trace ', rejected.length ? h('span', { class: 'badge', dataset: { tone: 'warn' } }, `${rejected.length} rejected`) : null),
        h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Trace spans (scrollable)' },
          h('table', { class: 'trace-table', id: 'detail-trace' },
            h('thead', null, h('tr', null,
              h('th', { scope: 'col' }, 'Kind'), h('th', { scope: 'col' }, 'Format'),
              h('th', { scope: 'col', class: 'num' }, 'Bytes'), h('th', { scope: 'col' }, 'Text'),
              h('th', { scope: 'col' }, 'Reason'))),
            h('tbody', null, interesting.map((s) => {
              const text = dec.decode(bytes.subarray(s.start, s.end));
              return h('tr', { dataset: { traceKind: s.kind } },
                h('td', null, h('span', { class: `kind kind-${s.kind}` }, KIND_LABEL[s.kind] || s.kind)),
                h('td', { class: 'mono' }, s.format || '–'),
                h('td', { class: 'num mono' }, `${s.start}–${s.end}`),
                h('td', { class: 'mono ellipsis trace-text', title: text }, text.length > 80 ? `${text.slice(0, 80)}…` : text),
                h('td', { class: s.reason ? 'reason' : 'muted' }, s.reason || '–'));
            }))))));
    }

    parts.push(h('details', { class: 'out-block' },
      h('summary', null, 'Request sent to the backend'),
      h('pre', { class: 'json', id: 'detail-request' }, JSON.stringify(rec.request ?? null, null, 2))));

    this.body.replaceChildren(...parts);
    wireHover(this.body);
  }
}

function summaryBar(r, timings) {
  const t = timings || {};
  const chips = [
    ['Time', fmtClock(r.time)],
    ['Model', r.model || '–'],
    ['Front door', frontDoor(r)?.label ?? '–'],
    ['Backend', r.backend || '–'],
    ['Mode', r.stream ? 'stream' : 'JSON'],
    ['Status', r.status ?? r.state],
    ['Queue', fmtMs(t.queue_ms)],
    ['TTFT', fmtMs(t.ttft_ms ?? r.ttft_ms)],
    ['Total', fmtMs(t.total_ms ?? r.duration_ms)],
    ['Tokens', `${fmtInt(r.prompt_tokens)} → ${fmtInt(r.completion_tokens)}`],
  ];
  if (r.finish_reason) chips.push(['Finish', r.finish_reason]);
  return h('dl', { class: 'summary-bar' },
    chips.map(([k, v]) => h('div', null, h('dt', null, k), h('dd', { class: 'num' }, String(v)))));
}

/** Hovering or focusing a structured call lights up its span in the raw text, and back. */
function wireHover(root) {
  const toggle = (idx, on) => {
    for (const el of root.querySelectorAll(`[data-call-index="${idx}"]`)) el.classList.toggle('linked', on);
  };
  for (const ev of ['mouseover', 'mouseout', 'focusin', 'focusout']) {
    root.addEventListener(ev, (e) => {
      const el = e.target.closest('[data-call-index]');
      if (el) toggle(el.dataset.callIndex, ev === 'mouseover' || ev === 'focusin');
    });
  }
}
