// The activity log: the proxy events worth a glance (not every request: the table has those).

import { $, h } from '../util.js';

const MAX = 60;

export class ActivityLog {
  constructor({ onOpenRequest }) {
    this.list = $('#activity-list');
    this.onOpenRequest = onOpenRequest;
    this.lastPressure = null;
    this.list.addEventListener('click', (e) => {
      const b = e.target.closest('button[data-request-id]');
      if (b) this.onOpenRequest(b.dataset.requestId);
    });
  }

  add(type, text, { tone = 'info', requestId = null } = {}) {
    const time = new Date().toLocaleTimeString([], { hour12: false });
    const li = h('li', { class: 'act', dataset: { eventType: type, tone } },
      h('span', { class: 'act-time num' }, time),
      h('span', { class: 'act-dot', 'aria-hidden': 'true' }),
      h('span', { class: 'act-text' }, text),
      requestId ? h('button', { type: 'button', class: 'act-req mono', dataset: { requestId }, title: 'Open this request' }, requestId) : null);
    this.list.prepend(li);
    while (this.list.children.length > MAX) this.list.lastElementChild.remove();
    $('#activity-empty').hidden = true;
  }

  /** Turns a proxy event into a line, or ignores it. */
  onProxyEvent(e) {
    switch (e.type) {
      case 'tool_call_translated':
        this.add(e.type, `Tool call ${e.name}${e.format ? ` (${e.format})` : ''} translated`, { tone: 'tool', requestId: e.request_id });
        break;
      case 'noticed':
        this.add(e.type, e.text || e.kind, { tone: 'warn', requestId: e.request_id || null });
        break;
      case 'shaped': {
        const d = e.detail || {};
        if (d.truncated !== true) break;
        const extra = Object.entries(d)
          .filter(([k, v]) => k !== 'truncated' && v !== null && typeof v !== 'object')
          .map(([k, v]) => `${k.replace(/_/g, ' ')} ${v}`)
          .join(', ');
        this.add(e.type, `Context truncated${extra ? `: ${extra}` : ''}`, { tone: 'warn', requestId: e.request_id });
        break;
      }
      case 'cache_purged': {
        const o = e.outcome || {};
        this.add(e.type, `KV cache ${o.status || 'purge'}${o.adapter ? ` (${o.adapter})` : ''}${o.message ? `: ${o.message}` : ''}`,
          { tone: o.status === 'purged' ? 'good' : o.status === 'failed' ? 'bad' : 'warn' });
        break;
      }
      case 'settings_changed':
        this.add(e.type, `Settings changed: ${(e.keys || []).join(', ')}`, { tone: 'info' });
        break;
      case 'finished': {
        const r = e.request || {};
        if (r.state === 'failed' || (r.status && r.status >= 400)) {
          this.add(e.type, `Request failed with ${r.status ?? 'an error'}`, { tone: 'bad', requestId: r.id });
        }
        break;
      }
      case 'memory_sampled':
        if (e.pressure && this.lastPressure && e.pressure !== this.lastPressure) {
          this.add(e.type, `Memory pressure ${e.pressure}: ${Number(e.used_percent).toFixed(1)}% used`,
            { tone: e.pressure === 'normal' ? 'good' : e.pressure === 'critical' ? 'bad' : 'warn' });
        }
        if (e.pressure) this.lastPressure = e.pressure;
        break;
      default:
        break;
    }
  }
}
