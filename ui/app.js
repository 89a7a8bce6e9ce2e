// blockops dashboard: wires the live stream to the views.

import { onKeyNeeded, setApiKey, apiKey } from './api.js';
import { LiveStream } from './stream.js';
import { $, $$, h, setText } from './util.js';
import { renderHeader, tickHeader, renderSlots, tickSlots, renderTokens, renderThroughput, renderMemory } from './views/live.js';
import { TrafficTable } from './views/traffic.js';
import { DetailView } from './views/detail.js';
import { SettingsView } from './views/settings.js';
import { ActivityLog } from './views/activity.js';
import { BackendsView } from './views/backends.js';
import { purgeCache, backendProcess, ApiError } from './api.js';

const state = {
  snapshot: null,
  receivedAt: 0, // performance.now() when the snapshot arrived
};

const ageSecs = () => (state.snapshot ? (performance.now() - state.receivedAt) / 1000 : 0);

// ---------------------------------------------------------------- toasts

function toast(message, tone = 'info') {
  const region = $('#toasts');
  const el = h('div', { class: 'toast', dataset: { tone } }, message);
  region.append(el);
  setTimeout(() => el.classList.add('out'), 3200);
  setTimeout(() => el.remove(), 3600);
}

// ---------------------------------------------------------------- tabs (narrow screens)

const narrow = window.matchMedia('(max-width: 760px)');

function selectTab(name, { focus = false } = {}) {
  document.body.dataset.tab = name;
  try {
    sessionStorage.setItem('blockops.tab', name);
  } catch {
    /* no storage: the tab resets on reload */
  }
  for (const tab of $$('[role="tab"]')) {
    const on = tab.dataset.tabTarget === name;
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on && focus) tab.focus();
  }
  syncPanels();
}

/** On narrow screens only the chosen panel is shown; on wide ones all of them are. */
function syncPanels() {
  for (const panel of $$('[data-panel]')) {
    const hide = narrow.matches && panel.dataset.panel !== document.body.dataset.tab;
    panel.hidden = hide;
  }
  $('#tablist').closest('nav').hidden = !narrow.matches;
}

function wireTabs() {
  const tabs = $$('[role="tab"]');
  for (const tab of tabs) {
    tab.addEventListener('click', () => selectTab(tab.dataset.tabTarget));
    tab.addEventListener('keydown', (e) => {
      const i = tabs.indexOf(tab);
      let j = null;
      if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
      else if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
      else if (e.key === 'Home') j = 0;
      else if (e.key === 'End') j = tabs.length - 1;
      if (j !== null) {
        e.preventDefault();
        selectTab(tabs[j].dataset.tabTarget, { focus: true });
      }
    });
  }
  narrow.addEventListener('change', syncPanels);
  let saved = null;
  try {
    saved = sessionStorage.getItem('blockops.tab');
  } catch {
    /* ignore */
  }
  selectTab(tabs.some((t) => t.dataset.tabTarget === saved) ? saved : 'live');
}

// ---------------------------------------------------------------- connection state

function setConn(connState, detail) {
  document.body.dataset.conn = connState;
  const conn = $('#conn');
  conn.dataset.state = connState;
  const labels = {
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Reconnecting…',
  };
  setText($('#conn-label'), labels[connState] || connState);
  conn.title = detail || '';
  const banner = $('#disconnected-banner');
  banner.hidden = connState !== 'reconnecting';
  setText($('#disconnected-detail'), `reconnecting…${detail ? ` (${detail})` : ''} The numbers below are from the last update.`);
}

// ---------------------------------------------------------------- the API key form

function askKey(message) {
  const dialog = $('#auth-dialog');
  const form = $('#auth-form');
  const input = $('#auth-key');
  const err = $('#auth-error');
  err.hidden = !message;
  setText(err, message || '');
  input.value = '';
  return new Promise((resolve) => {
    const done = (key) => {
      form.removeEventListener('submit', onSubmit);
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      resolve(key);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      setApiKey(key);
      done(key);
    };
    const onCancel = () => done(null);
    form.addEventListener('submit', onSubmit);
    dialog.addEventListener('cancel', onCancel);
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

// ---------------------------------------------------------------- main

function main() {
  wireTabs();
  onKeyNeeded(askKey);

  const settings = new SettingsView({ toast });
  // A backend's button while its request runs: busy, then a toast of `work`'s [text, tone].
  const busy = async (button, name, work) => {
    button.setAttribute('aria-busy', 'true');
    button.disabled = true;
    try {
      const [text, tone] = await work();
      toast(`${name}: ${text}`, tone);
    } catch (e) {
      toast(`${name}: ${e instanceof ApiError ? e.message : String(e)}`, 'bad');
    } finally {
      button.removeAttribute('aria-busy');
      button.disabled = false;
    }
  };
  const backends = new BackendsView(
    (name, button) => busy(button, name, async () => {
      const r = await purgeCache(name);
      return [r.message, r.status === 'purged' ? 'good' : 'warn'];
    }),
    // Load answers once the model server is ready (or failed); unload once it is gone.
    (name, action, button) => busy(button, name, async () => {
      await backendProcess(name, action);
      return [action === 'start' ? 'loaded' : 'unloaded', 'good'];
    }),
    { toast },
  );
  const detail = new DetailView({
    onClose: () => {
      traffic.clearSelection();
      detail.clear();
    },
  });
  const traffic = new TrafficTable({
    onSelect: (id, { fromKeyboard }) => {
      const summary = state.snapshot?.requests?.find((r) => r.id === id);
      detail.show(id, summary);
      const card = $('#detail');
      // On a narrow screen the view is below the table: bring it into sight.
      if (narrow.matches || fromKeyboard) {
        card.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
      }
    },
  });

  const activity = new ActivityLog({
    onOpenRequest: (id) => {
      if (!traffic.rows.has(id)) {
        toast('That request is no longer in the table', 'info');
        return;
      }
      if (narrow.matches) selectTab('traffic');
      traffic.select(id, { fromKeyboard: true });
      traffic.rows.get(id).tr.focus({ preventScroll: true });
    },
  });

  // Escape in the translation view closes it and returns to the selected row.
  $('#detail').addEventListener('keydown', (e) => {
    if (e.key !== 'Escape' || !detail.id) return;
    const id = detail.id;
    traffic.clearSelection();
    detail.clear();
    traffic.rows.get(id)?.tr.focus();
  });

  const onSnapshot = (s) => {
    state.snapshot = s;
    state.receivedAt = performance.now();
    const age = 0;
    renderHeader(s, age);
    renderSlots(s, age);
    backends.render(s.backends);
    renderTokens(s);
    renderThroughput(s.requests);
    renderMemory(s);
    traffic.render(s.requests);
    setText($('#traffic-api-url'), `${s.listen_url || location.origin}/v1`);
    if (detail.id) {
      const r = (s.requests || []).find((x) => x.id === detail.id);
      if (r && r.state !== 'running' && r.state !== 'queued') detail.refreshIfShowing(r.id, r);
    }
  };

  const onEvent = (e) => {
    activity.onProxyEvent(e);
    switch (e.type) {
      case 'finished':
        if (e.request) {
          traffic.upsert(e.request);
          detail.refreshIfShowing(e.request.id, e.request);
        }
        break;
      case 'settings_changed':
        settings.load();
        break;
      case 'cache_purged':
        if (e.outcome && !$('#purge').hasAttribute('aria-busy')) {
          settings.showPurge(e.outcome, { automatic: true });
        }
        break;
      default:
        break;
    }
  };

  const stream = new LiveStream({
    onSnapshot,
    onEvent,
    onLagged: (missed) => {
      // The next snapshot (sent right after) brings the numbers up to date; say what was skipped.
      activity.add('lagged', `The page fell behind and skipped ${missed} event${missed === 1 ? '' : 's'}`, { tone: 'warn' });
    },
    onState: (st, detailText) => {
      const was = document.body.dataset.conn;
      setConn(st, detailText);
      if (st === 'live' && was === 'reconnecting') {
        toast('Reconnected', 'good');
        settings.load();
      }
    },
  });

  setInterval(() => {
    if (!state.snapshot || document.body.dataset.conn !== 'live') return;
    const age = ageSecs();
    tickHeader(state.snapshot, age);
    tickSlots(age);
  }, 250);

  stream.start();
  settings.load();
  window.blockops = { stream, state, hasKey: () => !!apiKey() };
}

main();
