// The settings form (built from the server's schema, live PATCH, errors beside the field), the
// backend test and the cache purge.

import { getConfig, getSchema, patchConfig, testBackend, purgeCache, ApiError } from '../api.js';
import { $, $$, h, setText, fmtMs } from '../util.js';

export class SettingsView {
  constructor({ toast }) {
    this.form = $('#settings-form');
    this.toast = toast;
    this.config = null; // last config from the server
    this.schema = null; // GET /admin/api/config/schema, once it arrived
    this.schemaLoad = null; // the pending schema request, shared by concurrent loads
    this.saving = false;
    this.lastTest = null; // {url, result}
    this.fields = []; // the form's inputs, once built

    this.form.addEventListener('input', (e) => this.onInput(e));
    this.form.addEventListener('change', (e) => this.onInput(e));
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.save();
    });
    $('#settings-reset').addEventListener('click', () => this.fill(this.config, { force: true }));
    $('#purge').addEventListener('click', () => this.purge());
  }

  async load() {
    try {
      // The form's fields, bounds and choices are the server's: built once, from its schema.
      if (!this.schema) {
        this.schemaLoad ||= getSchema().finally(() => {
          this.schemaLoad = null;
        });
        const schema = await this.schemaLoad;
        if (!this.schema) this.build(schema);
      }
      const config = await getConfig();
      this.fill(config);
    } catch (e) {
      this.formError(`Could not load the settings: ${e.message}`);
    }
  }

  /** Builds the form: live settings as fields by group, the rest listed as restart-only. */
  build(schema) {
    const settings = (schema && schema.settings) || [];
    this.schema = new Map(settings.map((s) => [s.key, s]));
    const groups = new Map();
    const fixed = [];
    for (const s of settings) {
      if (s.secret) continue;
      if (!s.live) {
        fixed.push(s);
        continue;
      }
      if (!groups.has(s.group)) groups.set(s.group, h('fieldset', { class: 'group' }, h('legend', null, s.group)));
      groups.get(s.group).append(this.field(s));
    }
    const box = $('#settings-fields');
    box.replaceChildren(...groups.values());
    box.removeAttribute('aria-busy');
    this.fields = $$('[name]', box).filter((el) => el.id.startsWith('cfg-'));

    $('#settings-fixed-list').replaceChildren(...fixed.map((s) => h('div', { dataset: { fixed: s.key } },
      h('dt', { title: `${s.help} (${s.env})` }, s.label),
      h('dd', { class: 'mono ellipsis', id: `fixed-${s.key}` }, '–'))));
    $('#settings-fixed').hidden = fixed.length === 0;

    const url = $('#cfg-backend_url');
    if (url) {
      $('#backend-test').addEventListener('click', () => this.test());
      url.addEventListener('keydown', (e) => {
        // Enter in the URL field tests it; saving stays an explicit step.
        if (e.key === 'Enter') {
          e.preventDefault();
          this.test();
        }
      });
    }
  }

  /** One field from its description: a select for choices, a bounded number, or text. */
  field(s) {
    const id = `cfg-${s.key}`;
    const attrs = { id, name: s.key, 'aria-describedby': `hint-${s.key} err-${s.key}` };
    let control;
    if (s.type === 'enum') {
      control = h('select', attrs, (s.choices || []).map((c) => h('option', { value: c.value }, c.label)));
    } else if (s.type === 'integer' || s.type === 'number') {
      const whole = s.type === 'integer';
      control = h('input', {
        ...attrs, type: 'number', min: s.min, max: s.max, step: whole ? 1 : 'any', inputmode: whole ? 'numeric' : 'decimal',
      });
    } else {
      const auto = (s.choices || []).some((c) => c.value === 'auto');
      control = h('input', {
        ...attrs,
        type: s.type === 'url' ? 'url' : 'text',
        inputmode: s.type === 'url' ? 'url' : null,
        spellcheck: 'false',
        class: s.type === 'text' ? null : 'mono',
        placeholder: auto ? 'auto' : null,
      });
    }
    const label = h('label', { for: id }, s.label, s.unit ? [' ', h('span', { class: 'unit' }, s.unit)] : null);
    const hint = h('p', { class: 'hint', id: `hint-${s.key}` }, hintOf(s));
    const err = h('p', { class: 'error', id: `err-${s.key}`, hidden: true });
    if (s.key === 'backend_url') {
      // The URL can be probed before it is saved.
      return h('div', { class: 'field field-wide', dataset: { field: s.key } },
        label,
        h('div', { class: 'input-row' }, control, h('button', { type: 'button', class: 'btn', id: 'backend-test' }, 'Test')),
        hint,
        h('div', { class: 'test-result', id: 'backend-test-result', role: 'status', 'aria-live': 'polite', hidden: true }),
        err);
    }
    // A list with named choices spells them out in its hint: give it the room.
    const wide = s.type === 'list' && s.choices;
    return h('div', { class: wide ? 'field field-wide' : 'field', dataset: { field: s.key } }, label, control, hint, err);
  }

  /** Fills the form; fields the user is editing keep their value unless `force`. */
  fill(config, { force = false } = {}) {
    if (!config) return;
    const previous = this.config;
    this.config = config;
    for (const el of this.fields) {
      const key = el.name;
      const wrap = el.closest('[data-field]');
      if (!(key in config)) {
        // An older or newer proxy without this key: hide the field rather than send it.
        if (wrap) wrap.hidden = true;
        continue;
      }
      if (wrap) wrap.hidden = false;
      const dirty = previous && key in previous && valueOf(el) !== str(previous[key]);
      if (force || !dirty) {
        el.value = str(config[key]);
        this.fieldError(key, null);
      }
    }
    if (force) this.formError(null);
    for (const el of $$('[data-fixed]', this.form)) {
      const s = this.schema?.get(el.dataset.fixed);
      const v = config[el.dataset.fixed];
      const text = v === undefined ? '–' : `${str(v) || '(none)'}${s?.unit && str(v) ? ` ${s.unit}` : ''}`;
      setText(el.querySelector('dd'), text);
      el.querySelector('dd').title = text;
    }
    setText($('#info-listen'), config.host && config.port ? `${config.host}:${config.port}` : '–');
    setText($('#info-log'), config.log_file || '–');
    $('#info-log').title = config.log_file || '';
    setText($('#info-key'), config.api_key_set ? 'required (Bearer)' : 'not set (loopback only)');
    this.updateDirty();
  }

  dirtyKeys() {
    if (!this.config) return [];
    return this.fields
      .filter((el) => el.name in this.config && !el.closest('[data-field]')?.hidden)
      .filter((el) => valueOf(el) !== str(this.config[el.name]))
      .map((el) => el.name);
  }

  updateDirty() {
    const keys = this.dirtyKeys();
    for (const el of this.fields) {
      el.closest('[data-field]')?.toggleAttribute('data-dirty', keys.includes(el.name));
    }
    this.form.toggleAttribute('data-dirty', keys.length > 0);
    $('#settings-save').disabled = this.saving || keys.length === 0;
    $('#settings-reset').disabled = this.saving || keys.length === 0;
    setText($('#settings-dirty'), keys.length ? `${keys.length} unsaved change${keys.length === 1 ? '' : 's'}` : '');
  }

  onInput(e) {
    const el = e.target;
    if (el.name === 'backend_url') this.showTest(null);
    if (el.name) this.fieldError(el.name, null);
    this.updateDirty();
  }

  fieldError(key, message) {
    const err = document.getElementById(`err-${key}`);
    const input = document.getElementById(`cfg-${key}`);
    if (!err || !input) return false;
    err.hidden = !message;
    setText(err, message || '');
    if (message) input.setAttribute('aria-invalid', 'true');
    else input.removeAttribute('aria-invalid');
    return true;
  }

  formError(message) {
    const el = $('#settings-error');
    el.hidden = !message;
    setText(el, message || '');
  }

  /** The patch: changed fields only, numbers as numbers. Null if a field is invalid here. */
  buildPatch() {
    const patch = {};
    let firstBad = null;
    for (const key of this.dirtyKeys()) {
      const el = document.getElementById(`cfg-${key}`);
      let v = el.value.trim();
      if (el.type === 'number') {
        if (v === '' || !Number.isFinite(Number(v))) {
          this.fieldError(key, 'Enter a number.');
          firstBad = firstBad || el;
          continue;
        }
        v = Number(v);
      } else if (key === 'backend_url' && v === '') {
        this.fieldError(key, 'Enter the backend URL, e.g. http://127.0.0.1:8000');
        firstBad = firstBad || el;
        continue;
      }
      patch[key] = v;
    }
    if (firstBad) {
      firstBad.focus();
      return null;
    }
    return patch;
  }

  async save() {
    if (this.saving) return;
    this.formError(null);
    const patch = this.buildPatch();
    if (!patch || Object.keys(patch).length === 0) return;
    this.saving = true;
    this.form.setAttribute('aria-busy', 'true');
    setText($('#settings-state'), 'Saving…');
    this.updateDirty();
    try {
      const config = await patchConfig(patch);
      this.config = null; // every field takes the server's value
      this.fill(config, { force: true });
      setText($('#settings-state'), `Saved ${new Date().toLocaleTimeString([], { hour12: false })}`);
      this.toast(`Saved: ${Object.keys(patch).join(', ')}`, 'good');
      // The proxy checks a backend's health when /health is asked; ask now so the header's
      // health dot reflects the new backend instead of "unknown".
      if ('backend_url' in patch) fetch('/health', { cache: 'no-store' }).catch(() => {});
    } catch (e) {
      setText($('#settings-state'), 'Not saved');
      if (e instanceof ApiError && e.param && this.fieldError(e.param, e.message)) {
        document.getElementById(`cfg-${e.param}`)?.focus();
      } else {
        this.formError(e.message);
      }
    } finally {
      this.saving = false;
      this.form.removeAttribute('aria-busy');
      this.updateDirty();
    }
  }

  async test() {
    const input = $('#cfg-backend_url');
    const url = input.value.trim();
    if (!url) {
      this.fieldError('backend_url', 'Enter a URL to test.');
      input.focus();
      return;
    }
    const btn = $('#backend-test');
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
    this.showTest({ pending: true, url });
    try {
      const result = await testBackend(url);
      if (input.value.trim() !== url) return; // edited meanwhile
      this.lastTest = { url, result };
      this.showTest(result);
    } catch (e) {
      if (e instanceof ApiError && e.param === 'url') {
        this.showTest(null);
        this.fieldError('backend_url', e.message);
      } else {
        this.showTest({ reachable: false, error: e.message, url });
      }
    } finally {
      btn.disabled = false;
      btn.removeAttribute('aria-busy');
    }
  }

  showTest(r) {
    const box = $('#backend-test-result');
    if (!r) {
      box.hidden = true;
      box.replaceChildren();
      delete box.dataset.reachable;
      return;
    }
    box.hidden = false;
    if (r.pending) {
      box.dataset.reachable = 'pending';
      box.replaceChildren(h('span', { class: 'spinner', 'aria-hidden': 'true' }), ` Testing ${r.url}…`);
      return;
    }
    box.dataset.reachable = String(!!r.reachable);
    if (r.reachable) {
      const models = r.models || [];
      box.replaceChildren(
        h('div', { class: 'test-line' },
          h('span', { class: 'ok-icon', 'aria-hidden': 'true' }, '✓'),
          h('strong', null, 'Reachable'),
          r.kind && r.kind !== 'unknown' ? h('span', { class: 'tag' }, r.kind) : null,
          r.latency_ms != null ? h('span', { class: 'muted num' }, fmtMs(r.latency_ms)) : null),
        models.length
          ? h('div', { class: 'test-models' }, h('span', { class: 'muted' }, `${models.length} model${models.length === 1 ? '' : 's'}: `),
            models.slice(0, 6).map((m) => h('span', { class: 'chip mono' }, m)),
            models.length > 6 ? h('span', { class: 'muted' }, ` +${models.length - 6}`) : null)
          : h('div', { class: 'muted' }, 'No models listed.'),
        this.dirtyKeys().includes('backend_url') ? h('div', { class: 'hint' }, 'Save to send new requests here.') : null,
      );
    } else {
      box.replaceChildren(
        h('div', { class: 'test-line' },
          h('span', { class: 'bad-icon', 'aria-hidden': 'true' }, '✕'),
          h('strong', null, 'Not reachable')),
        h('div', { class: 'mono small' }, r.error || 'no answer'),
      );
    }
  }

  async purge() {
    const btn = $('#purge');
    btn.disabled = true;
    btn.setAttribute('aria-busy', 'true');
    this.showPurge({ pending: true });
    try {
      const r = await purgeCache();
      this.showPurge(r);
    } catch (e) {
      this.showPurge({ status: 'failed', message: e.message, adapter: null });
    } finally {
      btn.disabled = false;
      btn.removeAttribute('aria-busy');
    }
  }

  /** Shows a purge result: the button's own, or one the proxy did by itself (a /new message). */
  showPurge(r, { automatic = false } = {}) {
    const box = $('#purge-result');
    box.hidden = false;
    if (r.pending) {
      box.dataset.status = 'pending';
      box.replaceChildren(h('span', { class: 'spinner', 'aria-hidden': 'true' }), ' Purging…');
      return;
    }
    box.dataset.status = r.status || 'failed';
    const tone = r.status === 'purged' ? 'good' : r.status === 'unsupported' ? 'warn' : 'bad';
    box.replaceChildren(
      h('div', { class: 'test-line' },
        h('span', { class: 'badge', dataset: { tone } }, r.status || 'failed'),
        r.adapter ? h('span', { class: 'tag' }, r.adapter) : null,
        r.duration_ms != null ? h('span', { class: 'muted num' }, fmtMs(r.duration_ms)) : null,
        h('span', { class: 'muted' }, `${automatic ? 'automatic · ' : ''}${new Date().toLocaleTimeString([], { hour12: false })}`)),
      r.message ? h('div', { class: 'small' }, r.message) : null,
    );
  }
}

/** The help line under a field, with its range or choices from the schema. */
function hintOf(s) {
  if (s.type === 'integer' || s.type === 'number') {
    const unit = s.unit ? ` ${s.unit}` : '';
    const range = s.exclusive_min ? `above ${s.min}, up to ${s.max}${unit}` : `${s.min} to ${s.max}${unit}`;
    return `${s.help} · ${range}`;
  }
  if (s.type === 'list' && s.choices) return `${s.help}: ${s.choices.map((c) => c.value).join(', ')}`;
  return s.help;
}

function str(v) {
  if (v === null || v === undefined) return '';
  if (Array.isArray(v)) return v.join(',');
  return String(v);
}

function valueOf(el) {
  const v = el.value.trim();
  if (el.type === 'number' && v !== '' && Number.isFinite(Number(v))) return String(Number(v));
  return v;
}
