// The admin API client: same origin, JSON, optional bearer key kept in sessionStorage.

const KEY_STORAGE = 'blockops.apiKey';

export class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error ? body.error : {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type || null;
    this.code = err.code || null;
    this.param = err.param || null;
  }
}

let askForKey = null; // () => Promise<string|null>, installed by the app
let pendingAsk = null;

export function onKeyNeeded(fn) {
  askForKey = fn;
}

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || null;
  } catch {
    return null;
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    /* storage unavailable: the key lives only as long as the request */
  }
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Asks once for the key, however many requests got a 401 at the same time. */
export function requestKey(message) {
  if (!askForKey) return Promise.resolve(null);
  if (!pendingAsk) {
    pendingAsk = askForKey(message).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

/**
 * Calls an admin endpoint. Resolves with the parsed JSON; rejects with ApiError.
 * On a 401 the page asks for the key (once) and retries.
 */
export async function api(path, { method = 'GET', body, signal, retryAuth = true } = {}) {
  const headers = { Accept: 'application/json', ...authHeaders() };
  const init = { method, headers, signal, cache: 'no-store', credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(`/admin/api/${path}`, init);
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: { message: text.slice(0, 300) } };
    }
  }
  if (res.status === 401 && retryAuth) {
    const hadKey = !!apiKey();
    const key = await requestKey(hadKey ? 'That key was not accepted.' : null);
    if (key) return api(path, { method, body, signal, retryAuth: true });
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const getStatus = (opts) => api('status', opts);
export const getConfig = () => api('config');
export const getSchema = () => api('config/schema');
export const patchConfig = (patch) => api('config', { method: 'PATCH', body: patch });
export const getRequest = (id, opts) => api(`requests/${encodeURIComponent(id)}`, opts);
export const testBackend = (url) => api('backend/test', { method: 'POST', body: { url } });
/** Loads (`start`) or unloads (`stop`) a backend blockops runs itself. */
export const backendProcess = (name, action) => api(`backends/${encodeURIComponent(name)}/${action}`, { method: 'POST' });
export const purgeCache = (backend) => api('cache/purge', { method: 'POST', body: backend ? { backend } : {} });
export const getBackends = () => api('backends');
/** Adds the backend or replaces it whole (`body` is its table without the name). */
export const putBackend = (name, body) => api(`backends/${encodeURIComponent(name)}`, { method: 'PUT', body });
export const deleteBackend = (name) => api(`backends/${encodeURIComponent(name)}`, { method: 'DELETE' });
