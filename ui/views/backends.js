// The backends card: every backend the proxy routes to, with its state, kind, models, fallbacks,
// slots, queue, probe latency and last error, and Purge / Edit / Remove buttons each. One row per
// backend; with one backend (BACKEND_URL alone) the row is `default`, serving every model. A
// backend blockops runs itself (`cmd`) shows its process: state ("loading" while it starts), RSS,
// its last output lines, and a Load / Unload button.
//
// "Add backend" and "Edit" open a form under the table that sends the whole backend to
// `PUT /admin/api/backends/NAME`; "Remove" asks first, then `DELETE`s it. The kinds and the
// settings a backend may override (with their bounds) come from `GET /admin/api/config/schema`;
// a refused change shows the server's message beside the field it names.

import { getSchema, getConfig, getBackends, putBackend, deleteBackend, ApiError } from '../api.js';
import { $, h, setText, fmtBytes } from '../util.js';

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

function processCell(b, onProcess) {
  const p = b.process;
  if (!p) return h('span', { class: 'muted' }, '–');
  const loaded = p.state === 'running' || p.state === 'starting';
  const action = loaded ? 'stop' : 'start';
  const button = actionButton(loaded ? 'Unload' : 'Load', `${loaded ? 'Unload' : 'Load'} ${b.name}`,
    { process: b.name, action }, (btn) => onProcess(b.name, action, btn));
  const facts = [p.pid ? `pid ${p.pid}` : null, fmtBytes(p.rss_bytes) || null, p.group ? `group ${p.group}` : null]
    .filter(Boolean).join(' · ');
  const output = (p.output || []).join('\n');
  return h('div', { class: 'process' },
    h('span', { class: 'num muted' }, facts || p.state), ' ', button,
    output ? h('details', { class: 'process-output' },
      h('summary', {}, 'Output'),
      h('pre', { class: 'mono' }, output)) : null);
}

function actionButton(label, aria, data, onClick) {
  const b = h('button', { type: 'button', class: 'btn btn-ghost btn-small', dataset: data, 'aria-label': aria }, label);
  b.addEventListener('click', () => onClick(b));
  return b;
}

function row(b, on) {
  const models = (b.models || []).join(', ');
  const fallbacks = (b.fallbacks || []).join(', ');
  const slots = b.slots || { total: 0, busy: 0 };
  const queue = b.queue || { depth: 0, max: 0 };
  return h('tr', { dataset: { backend: b.name, up: String(b.up) } },
    h('th', { scope: 'row', class: 'mono', title: b.url }, b.name),
    h('td', { class: 'c-bstate' }, stateCell(b)),
    h('td', { class: 'c-kind' }, b.kind || '–'),
    h('td', { class: 'c-bmodels mono ellipsis', title: models }, models || '–'),
    h('td', { class: 'c-bfallbacks mono ellipsis', title: fallbacks }, fallbacks || h('span', { class: 'muted' }, '–')),
    h('td', { class: 'c-bslots num' }, `${slots.busy} / ${slots.total}`),
    h('td', { class: 'c-bqueue num' }, `${queue.depth} / ${queue.max}`),
    h('td', { class: 'c-bprobe num' }, b.probe_ms == null ? '–' : `${b.probe_ms} ms`),
    h('td', { class: 'c-berror ellipsis', title: b.last_error || '' }, b.last_error || h('span', { class: 'muted' }, '–')),
    h('td', { class: 'c-bprocess' }, processCell(b, on.process)),
    h('td', { class: 'c-bactions' }, h('div', { class: 'row-actions' },
      actionButton('Purge', `Purge the KV cache of ${b.name}`, { purge: b.name }, (btn) => on.purge(b.name, btn)),
      actionButton('Edit', `Edit ${b.name}`, { edit: b.name }, () => on.edit(b.name)),
      actionButton('Remove', `Remove ${b.name}`, { remove: b.name }, () => on.remove(b.name)))),
  );
}

/** "a, b c" → ["a", "b", "c"]: model ids and backend names hold neither commas nor spaces. */
function splitList(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

// The fields the form always shows; the limits come first among the overrides.
const LIMITS = ['max_concurrent', 'max_queue'];

export class BackendsView {
  constructor(onPurge, onProcess, { toast } = {}) {
    this.onPurge = onPurge;
    this.onProcess = onProcess;
    this.toast = toast || (() => {});
    this.key = '';
    this.list = []; // the backends last shown
    this.form = $('#backend-form');
    this.kinds = null; // from the schema, once the form is built
    this.overrides = []; // override keys, in the schema's order
    this.settings = new Map(); // schema rows by key
    this.editing = null; // {name, config} while editing; null while adding
    this.opener = null; // selector of the button that opened the form or dialog: focus returns there
    this.removing = null; // the backend the remove dialog asks about
    this.saving = false;

    $('#backend-add').addEventListener('click', () => this.open(null, '#backend-add'));
    $('#backend-cancel').addEventListener('click', () => this.close());
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    this.form.addEventListener('input', (e) => {
      if (e.target.name) this.fieldError(e.target.name, null);
    });
    this.form.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        this.close();
      }
    });

    const dialog = $('#backend-remove-dialog');
    $('#backend-remove-form').addEventListener('submit', (e) => {
      e.preventDefault(); // stays open until the server has answered
      this.remove();
    });
    $('#backend-remove-cancel').addEventListener('click', () => dialog.close());
    dialog.addEventListener('close', () => {
      setText($('#backend-remove-error'), '');
      $('#backend-remove-error').hidden = true;
      this.restoreFocus();
    });
  }

  render(backends) {
    const list = backends || [];
    this.list = list;
    // Snapshots arrive often; rebuild only when something shown changed.
    const key = JSON.stringify(list.map((b) => [b.name, b.url, b.up, b.kind, b.models, b.fallbacks, b.slots, b.queue?.depth, b.queue?.max, b.probe_ms, b.last_error,
      b.process && [b.process.state, b.process.waiting, b.process.pid, b.process.rss_bytes, (b.process.output || []).slice(-1)[0]]]));
    if (key === this.key) return;
    this.key = key;
    const up = list.filter((b) => b.up === true).length;
    setText($('#backends-summary'), list.length ? `${up} of ${list.length} up` : '–');
    const on = {
      purge: this.onPurge,
      process: this.onProcess,
      edit: (name) => this.open(name, `#backends-body button[data-edit="${CSS.escape(name)}"]`),
      remove: (name) => this.confirmRemove(name),
    };
    // A loading model's output and memory change every few seconds: the rows are rebuilt, but
    // an "Output" the user opened stays open and focus stays on the control it was on.
    const body = $('#backends-body');
    const opened = [...body.querySelectorAll('details[open]')].map((d) => d.closest('tr').dataset.backend);
    const active = body.contains(document.activeElement) ? document.activeElement : null;
    const focus = active && {
      backend: active.closest('tr').dataset.backend,
      at: [...active.closest('tr').querySelectorAll('button, summary')].indexOf(active),
    };
    body.replaceChildren(...list.map((b) => row(b, on)));
    const rowOf = (name) => body.querySelector(`tr[data-backend="${CSS.escape(name)}"]`);
    for (const name of opened) rowOf(name)?.querySelector('details')?.setAttribute('open', '');
    if (focus) rowOf(focus.backend)?.querySelectorAll('button, summary')[focus.at]?.focus();
  }

  /** After a change: the list now, without waiting for the next snapshot (or a lost stream). */
  async refresh() {
    try {
      this.render(await getBackends());
    } catch {
      /* the live stream brings the list anyway; the change itself was confirmed */
    }
  }

  // ------------------------------------------------------------ the form

  /** Builds the fields once, from the schema: the kinds and what a backend may override. */
  async build() {
    if (this.kinds) return;
    const schema = await getSchema();
    const rows = (schema && schema.settings) || [];
    this.settings = new Map(rows.map((s) => [s.key, s]));
    const desc = schema.backends || {};
    this.kinds = desc.kinds || ['auto'];
    // Only overrides the schema describes can be offered with their bounds.
    this.overrides = (desc.overrides || []).filter((k) => this.settings.has(k));
    const main = h('fieldset', { class: 'group' }, h('legend', null, 'Backend'),
      this.textField('name', 'Name', 'Letters, digits, ".", "_" or "-", e.g. gpu', { mono: true }),
      this.textField('url', 'URL', 'Where the model server listens, e.g. http://127.0.0.1:8082', { mono: true, wide: true, type: 'url' }),
      this.selectField('kind', 'Kind', this.kinds.map((k) => [k, k]),
        'Picks the cache-purge adapter and tokenizer endpoint; auto finds out by probing'),
      this.textField('models', 'Models', 'Model ids or globs it serves, separated by commas or spaces; * for any', { mono: true, wide: true }),
      this.textField('fallbacks', 'Fallbacks', 'Backends tried in order when this one is down or answers 5xx (comma separated); blank for none', { mono: true, half: true }),
      this.overrides.filter((k) => LIMITS.includes(k)).map((k) => this.overrideField(k)));
    const rest = this.overrides.filter((k) => !LIMITS.includes(k));
    const more = h('details', { class: 'backend-overrides', id: 'backend-overrides' },
      h('summary', null, 'More limits of its own (blank: the global setting)'),
      h('fieldset', { class: 'group' }, h('legend', { class: 'sr-only' }, 'Its own limits'),
        rest.map((k) => this.overrideField(k))));
    const managed = h('p', { class: 'hint', id: 'backend-managed-note', hidden: true });
    $('#backend-form-fields').replaceChildren(main, rest.length ? more : null, managed);
  }

  control(key, tag, attrs, ...children) {
    return h(tag, { id: `bk-${key}`, name: key, 'aria-describedby': `bk-hint-${key} bk-err-${key}`, ...attrs }, ...children);
  }

  wrap(key, label, control, hint, { wide = false, half = false } = {}) {
    const cls = wide ? 'field field-wide' : half ? 'field field-half' : 'field';
    return h('div', { class: cls, dataset: { field: key } },
      h('label', { for: `bk-${key}` }, label),
      control,
      h('p', { class: 'hint', id: `bk-hint-${key}` }, hint),
      h('p', { class: 'error', id: `bk-err-${key}`, hidden: true }));
  }

  textField(key, label, hint, { mono = false, wide = false, half = false, type = 'text' } = {}) {
    const input = this.control(key, 'input', {
      type, spellcheck: 'false', class: mono ? 'mono' : null, inputmode: type === 'url' ? 'url' : null,
    });
    return this.wrap(key, label, input, hint, { wide, half });
  }

  selectField(key, label, options, hint) {
    const select = this.control(key, 'select', null, options.map(([value, text]) => h('option', { value }, text)));
    return this.wrap(key, label, select, hint);
  }

  /** One override: blank means the global setting (shown as the placeholder once known). */
  overrideField(key) {
    const s = this.settings.get(key);
    const label = [s.label, s.unit ? [' ', h('span', { class: 'unit' }, s.unit)] : null];
    if (s.type === 'enum') {
      const options = [['', 'Global setting'], ...(s.choices || []).map((c) => [c.value, c.label])];
      const select = this.control(key, 'select', null, options.map(([value, text]) => h('option', { value }, text)));
      return this.wrap(key, label, select, s.help);
    }
    const whole = s.type === 'integer';
    const input = this.control(key, 'input', {
      type: 'number', min: s.min, max: s.max, step: whole ? 1 : 'any', inputmode: whole ? 'numeric' : 'decimal',
    });
    const unit = s.unit ? ` ${s.unit}` : '';
    const range = s.exclusive_min ? `above ${s.min}, up to ${s.max}${unit}` : `${s.min} to ${s.max}${unit}`;
    return this.wrap(key, label, input, `${s.help} · ${range}; blank: the global setting`);
  }

  /** Opens the form: empty to add (`name` null), or filled from the backend's table to edit. */
  async open(name, opener) {
    this.opener = opener || null;
    this.formError(null);
    setText($('#backend-form-state'), '');
    this.form.hidden = false;
    this.form.setAttribute('aria-busy', 'true');
    let global = null;
    try {
      await this.build();
      global = await getConfig();
    } catch (e) {
      this.form.removeAttribute('aria-busy');
      $('#backend-save').disabled = true;
      this.formError(`Could not load what a backend may set: ${e.message}. Reload the page to try again.`);
      return;
    }
    this.form.removeAttribute('aria-busy');
    $('#backend-save').disabled = false;

    let config = { kind: 'auto', models: [], fallbacks: [] };
    if (name !== null) {
      const b = this.list.find((x) => x.name === name);
      if (!b) {
        this.editing = null;
        this.formError(`Backend ${name} is gone (removed meanwhile). Add it again to bring it back.`);
        $('#backend-save').disabled = true;
        return;
      }
      config = b.config;
      this.editing = { name, config, view: b };
    } else {
      this.editing = null;
    }

    for (const el of this.form.querySelectorAll('[name]')) this.fieldError(el.name, null);
    const set = (key, v) => {
      const el = document.getElementById(`bk-${key}`);
      if (el) el.value = v === undefined || v === null ? '' : Array.isArray(v) ? v.join(', ') : String(v);
    };
    set('name', name || '');
    set('url', config.url);
    set('kind', this.kinds.includes(config.kind) ? config.kind : 'auto');
    set('models', config.models);
    set('fallbacks', config.fallbacks);
    for (const k of this.overrides) {
      set(k, config[k]);
      const el = document.getElementById(`bk-${k}`);
      const g = global ? global[k] : undefined;
      if (el.tagName === 'SELECT') el.options[0].textContent = g === undefined ? 'Global setting' : `Global setting (${g})`;
      else el.placeholder = g === undefined ? 'global' : `global: ${g}`;
    }
    // Limits set here are not hidden behind the summary.
    const more = $('#backend-overrides');
    if (more) more.open = this.overrides.some((k) => !LIMITS.includes(k) && config[k] !== undefined);

    const nameInput = $('#bk-name');
    nameInput.readOnly = name !== null;
    setText($('#bk-hint-name'), name !== null
      ? 'To rename it, remove it and add it again under the new name'
      : 'Letters, digits, ".", "_" or "-", e.g. gpu');
    const others = this.list.map((b) => b.name).filter((n) => n !== name);
    setText($('#bk-hint-fallbacks'), `Backends tried in order when this one is down or answers 5xx (comma separated)${others.length ? `: ${others.join(', ')}` : ''}; blank for none`);

    // A managed backend keeps its process settings; its url may be the port blockops picked.
    const managed = Array.isArray(config.cmd);
    const urlInput = $('#bk-url');
    urlInput.placeholder = managed && config.url === undefined ? `picked by blockops (${this.editing.view.url})` : 'http://127.0.0.1:8082';
    const note = $('#backend-managed-note');
    note.hidden = !managed;
    setText(note, managed
      ? `blockops starts this backend itself (${config.cmd.join(' ')}); its process settings stay as they are. ${config.url === undefined ? 'Leave URL blank to keep the port blockops picks.' : ''}`
      : '');

    setText($('#backend-form-title'), name === null ? 'Add a backend' : `Edit backend ${name}`);
    setText($('#backend-save'), name === null ? 'Add backend' : 'Save backend');
    (name === null ? nameInput : urlInput).focus();
    this.form.scrollIntoView({ block: 'nearest' });
  }

  close() {
    this.form.hidden = true;
    this.editing = null;
    this.formError(null);
    this.restoreFocus();
  }

  /** Back to the button that opened the form or dialog (found again: rows are rebuilt). */
  restoreFocus() {
    const target = (this.opener && $(this.opener)) || $('#backend-add');
    this.opener = null;
    target.focus();
  }

  fieldError(key, message) {
    const err = document.getElementById(`bk-err-${key}`);
    const input = document.getElementById(`bk-${key}`);
    if (!err || !input) return false;
    err.hidden = !message;
    setText(err, message || '');
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
    return true;
  }

  formError(message) {
    const el = $('#backend-form-error');
    el.hidden = !message;
    setText(el, message || '');
  }

  /** Shows an error beside the field it names (opening the limits if it is there), else above the buttons. */
  showError(key, message) {
    const input = key && document.getElementById(`bk-${key}`);
    if (input) {
      const more = input.closest('details');
      if (more) more.open = true;
      this.fieldError(key, message);
      input.focus();
    } else {
      this.formError(message);
    }
  }

  /** The PUT body: the backend's table as the form says it. Null when a field is unusable here. */
  body() {
    const value = (key) => document.getElementById(`bk-${key}`).value.trim();
    // Editing keeps what the form does not show (a managed backend's cmd, env, …).
    const body = this.editing ? { ...this.editing.config } : {};
    for (const k of ['name', 'url', 'kind', 'models', 'fallbacks', ...this.overrides]) delete body[k];
    let firstBad = null;
    const bad = (key, message) => {
      this.fieldError(key, message);
      firstBad = firstBad || key;
    };

    const name = value('name');
    if (!this.editing) {
      if (!name) bad('name', 'Enter a name for the backend, e.g. gpu.');
      else if (this.list.some((b) => b.name === name)) bad('name', `A backend named ${name} exists already: choose another name, or use its Edit button to change it.`);
    }
    // Blank: the server says what is missing (a managed backend keeps its picked port).
    if (value('url')) body.url = value('url');
    body.kind = value('kind');
    const models = splitList(value('models'));
    if (models.length) body.models = models;
    body.fallbacks = splitList(value('fallbacks'));
    for (const k of this.overrides) {
      const el = document.getElementById(`bk-${k}`);
      const v = el.value.trim();
      if (el.type === 'number' && el.validity.badInput) {
        bad(k, 'Enter a number, or leave it blank for the global setting.');
        continue;
      }
      if (v === '') continue;
      body[k] = el.type === 'number' ? Number(v) : v;
    }
    if (firstBad) {
      this.showError(firstBad, document.getElementById(`bk-err-${firstBad}`).textContent);
      return null;
    }
    return { name: this.editing ? this.editing.name : name, body };
  }

  async save() {
    if (this.saving) return;
    this.formError(null);
    const built = this.body();
    if (!built) return;
    const adding = !this.editing;
    this.saving = true;
    const btn = $('#backend-save');
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
    setText($('#backend-form-state'), 'Saving…');
    try {
      await putBackend(built.name, built.body);
      setText($('#backend-form-state'), '');
      this.toast(`${built.name}: ${adding ? 'added' : 'saved'}`, 'good');
      this.opener = null; // the row may be new: focus goes back to "Add backend"
      this.close();
      await this.refresh();
    } catch (e) {
      setText($('#backend-form-state'), 'Not saved');
      // The server names the field as `backend "NAME": FIELD` (or just `FIELD`).
      const param = e instanceof ApiError && e.param ? e.param : '';
      const field = param.includes(': ') ? param.slice(param.lastIndexOf(': ') + 2) : param;
      this.showError(field, e.message);
    } finally {
      this.saving = false;
      btn.disabled = false;
      btn.removeAttribute('aria-busy');
    }
  }

  // ------------------------------------------------------------ removal

  confirmRemove(name) {
    const dialog = $('#backend-remove-dialog');
    this.removing = name;
    this.opener = `#backends-body button[data-remove="${CSS.escape(name)}"]`;
    setText($('#backend-remove-title'), `Remove backend ${name}?`);
    const others = this.list.filter((b) => b.name !== name).map((b) => b.name);
    setText($('#backend-remove-detail'), others.length
      ? `Requests on it now finish; new requests for its models go to the other backends (${others.join(', ')}), or get a 404 if none serves them. It is removed from the config file too.`
      : 'It is the only backend: the proxy needs at least one, so add another first.');
    $('#backend-remove-error').hidden = true;
    // The proxy refuses to remove its last backend; the text above says why.
    $('#backend-remove-confirm').disabled = others.length === 0;
    if (!dialog.open) dialog.showModal();
    $('#backend-remove-cancel').focus();
  }

  async remove() {
    const name = this.removing;
    const btn = $('#backend-remove-confirm');
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
    try {
      await deleteBackend(name);
      if (this.editing && this.editing.name === name) this.close();
      this.opener = null;
      $('#backend-remove-dialog').close();
      this.toast(`${name}: removed`, 'good');
      await this.refresh();
    } catch (e) {
      const err = $('#backend-remove-error');
      err.hidden = false;
      setText(err, e.message);
    } finally {
      btn.disabled = false;
      btn.removeAttribute('aria-busy');
    }
  }
}
