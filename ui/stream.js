// The live connection to /admin/api/events.
//
// Without an API key this is a plain EventSource. EventSource cannot send an Authorization
// header, so with a key the same stream is read with fetch() and parsed here. Either way the
// connection recovers by itself: on every (re)connect the server sends a fresh snapshot first,
// and the status is refetched too so the page never shows stale numbers.

import { apiKey, authHeaders, getStatus, requestKey, ApiError } from './api.js';

const EVENTS_URL = '/admin/api/events';
const MAX_BACKOFF_MS = 5000;
// The server sends a keep-alive comment every heartbeat interval (5 s by default); silence for
// this long means the connection is dead even if the socket has not noticed.
const SILENCE_MS = 45000;

export class LiveStream {
  /**
   * @param {{onSnapshot: (s: object) => void, onEvent: (e: object) => void,
   *          onLagged: (n: number) => void, onState: (state: string, detail?: string) => void}} handlers
   */
  constructor(handlers) {
    this.h = handlers;
    this.es = null;
    this.abort = null;
    this.attempt = 0;
    this.timer = null;
    this.state = 'connecting';
    this.everConnected = false;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.teardown();
  }

  setState(state, detail) {
    this.state = state;
    this.h.onState(state, detail);
  }

  teardown() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.es) {
      this.es.close();
      this.es = null;
    }
    if (this.abort) {
      this.abort.abort();
      this.abort = null;
    }
  }

  /** Schedules a reconnect with a short, capped backoff. */
  retry(reason) {
    this.teardown();
    if (this.stopped) return;
    this.attempt += 1;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(this.attempt - 1, 4));
    this.setState(this.everConnected ? 'reconnecting' : 'connecting', reason || '');
    this.timer = setTimeout(() => this.connect(), delay);
  }

  async connect() {
    this.teardown();
    if (this.stopped) return;
    // A status fetch first: it refreshes the page at once, and finds out whether a key is needed
    // (api() asks for it on a 401).
    try {
      const snapshot = await getStatus();
      if (this.stopped) return;
      this.h.onSnapshot(snapshot);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        this.retry('API key needed');
      } else {
        this.retry(e instanceof ApiError ? e.message : 'proxy unreachable');
      }
      return;
    }
    if (apiKey()) this.connectFetch();
    else this.connectEventSource();
  }

  opened() {
    this.attempt = 0;
    this.everConnected = true;
    this.setState('live');
  }

  connectEventSource() {
    const es = new EventSource(EVENTS_URL);
    this.es = es;
    es.onopen = () => this.opened();
    es.addEventListener('snapshot', (e) => this.dispatch('snapshot', e.data));
    es.addEventListener('proxy', (e) => this.dispatch('proxy', e.data));
    es.addEventListener('lagged', (e) => this.dispatch('lagged', e.data));
    es.onerror = () => {
      if (this.es !== es) return;
      // CONNECTING: the browser is already retrying; CLOSED: it gave up (e.g. a 401), so do it here.
      if (es.readyState === EventSource.CLOSED) {
        this.retry('connection closed');
      } else if (this.state === 'live') {
        this.everConnected = true;
        this.setState('reconnecting', 'connection lost');
        // The browser's own retry does not refetch the status; onopen after it will.
        es.onopen = () => {
          this.opened();
          getStatus().then((s) => this.h.onSnapshot(s)).catch(() => {});
        };
      }
    };
  }

  async connectFetch() {
    const controller = new AbortController();
    this.abort = controller;
    let res;
    try {
      res = await fetch(EVENTS_URL, {
        headers: { Accept: 'text/event-stream', ...authHeaders() },
        cache: 'no-store',
        signal: controller.signal,
      });
    } catch {
      if (this.abort === controller) this.retry('proxy unreachable');
      return;
    }
    if (res.status === 401) {
      await requestKey('That key was not accepted.');
      if (this.abort === controller) this.retry('API key needed');
      return;
    }
    if (!res.ok || !res.body) {
      if (this.abort === controller) this.retry(`HTTP ${res.status}`);
      return;
    }
    this.opened();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), SILENCE_MS);
    };
    arm();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buffer += value;
        let cut;
        while ((cut = frameEnd(buffer)) >= 0) {
          const raw = buffer.slice(0, cut);
          buffer = buffer.slice(cut).replace(/^(\r\n|\r|\n){1,2}/, '');
          const frame = parseFrame(raw);
          if (frame) this.dispatch(frame.event, frame.data);
        }
      }
    } catch {
      /* aborted or network error: reconnect below */
    } finally {
      clearTimeout(watchdog);
    }
    if (this.abort === controller) this.retry('connection lost');
  }

  dispatch(event, data) {
    let value;
    try {
      value = JSON.parse(data);
    } catch {
      return;
    }
    if (event === 'snapshot') this.h.onSnapshot(value);
    else if (event === 'proxy') this.h.onEvent(value);
    else if (event === 'lagged') this.h.onLagged(value.missed || 0);
  }
}

/** Index of the blank line that ends the first SSE frame in `buffer`, or -1. */
function frameEnd(buffer) {
  const m = /\r\n\r\n|\n\n|\r\r/.exec(buffer);
  return m ? m.index : -1;
}

/** Parses one SSE frame (lines of `field: value`); comments and empty frames give null. */
export function parseFrame(raw) {
  let event = 'message';
  const data = [];
  for (const line of raw.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  return data.length ? { event, data: data.join('\n') } : null;
}
