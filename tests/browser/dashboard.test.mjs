// Browser tests for the dashboard at /ui/: the real proxy with its demo backend, Debian's
// chromium through playwright-core, node's test runner. Run: see README.md in this folder.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import {
  ARTIFACTS, startProxy, startDemoBackend, launchBrowser, chat, getJson, until,
} from './harness.mjs';

const WAIT = { timeout: 10000 };
const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

describe('dashboard', () => {
  let proxy;
  let second;
  let browser;
  let page;
  const consoleErrors = []; // {text, phase}
  let phase = 'load';
  const expectedErrors = []; // regexes allowed in a phase: [{phase, re}]

  before(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    proxy = await startProxy({ tokensPerSec: 20 });
    browser = await launchBrowser();
    page = browser.context.pages()[0] || (await browser.context.newPage());
    page.setDefaultTimeout(10000);
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push({ text: m.text(), phase, url: m.location()?.url });
    });
    page.on('pageerror', (e) => consoleErrors.push({ text: `uncaught: ${e.message}`, phase }));
    page.on('requestfailed', (r) => {
      // A purposely aborted fetch is not an error; anything else is.
      const failure = r.failure()?.errorText || '';
      if (!/ERR_ABORTED/.test(failure)) consoleErrors.push({ text: `request failed: ${r.url()} ${failure}`, phase });
    });
  });

  after(async () => {
    if (browser) await browser.context.close().catch(() => {});
    if (browser) fs.rmSync(browser.userDataDir, { recursive: true, force: true });
    if (second) await second.child.stop();
    if (proxy) await proxy.child.stop();
    // Keep the proxy's log with the artifacts: it explains a failure.
    if (proxy) {
      const logs = path.join(ARTIFACTS, 'logs');
      fs.mkdirSync(logs, { recursive: true });
      for (const f of fs.readdirSync(proxy.dir).filter((n) => n.endsWith('.log'))) {
        fs.copyFileSync(path.join(proxy.dir, f), path.join(logs, `browser-${f}`));
      }
    }
  });

  const unexpectedErrors = () => consoleErrors.filter(
    (e) => !expectedErrors.some((x) => x.phase === e.phase && x.re.test(e.text)),
  );

  test('the page loads at / with no console errors and shows the live header', async () => {
    const res = await page.goto(`${proxy.base}/`, { waitUntil: 'load' });
    assert.ok(res && res.ok(), `GET / → ${res && res.status()}`);
    assert.match(page.url(), /\/ui\/$/, 'the root redirects to /ui/');
    assert.equal(await page.title(), 'blockops');
    await page.waitForSelector('#conn[data-state="live"]', WAIT);
    const status = await getJson(proxy.base, '/admin/api/status');
    await until(async () => (await page.textContent('#backend-url')) === status.backend.url, { what: 'the backend URL in the header' });
    assert.equal(await page.locator('[data-slot]').count(), status.slots.total);
    assert.equal(await page.locator('[data-slot][data-busy="false"]').count(), status.slots.total);
    // Give late module errors and resource loads a moment to surface.
    await page.waitForLoadState('networkidle', { timeout: 3000 }).catch(() => {});
    assert.deepEqual(unexpectedErrors(), [], 'no console errors while loading');
  });

  test('slots fill while slow streaming requests run, and free up afterwards', async () => {
    phase = 'slots';
    const total = await page.locator('[data-slot]').count();
    // One more request than there are slots, so one of them waits in the queue.
    const runs = Array.from({ length: total + 1 }, () => chat(proxy.base, { stream: true }));
    await page.waitForFunction(
      (n) => document.querySelectorAll('[data-slot][data-busy="true"]').length >= n,
      total, { timeout: 5000 },
    );
    const busy = page.locator('[data-slot][data-busy="true"]').first();
    assert.match(await busy.locator('.slot-time').textContent(), /\d/, 'a busy slot shows how long it has been busy');
    await page.waitForSelector('#queue li', { timeout: 5000 });
    assert.match(await page.textContent('#queue li'), /\d/, 'the queued request shows its wait');
    const results = await Promise.all(runs);
    for (const r of results) assert.equal(r.status, 200);
    await page.waitForFunction(
      () => document.querySelectorAll('[data-slot][data-busy="true"]').length === 0
        && document.querySelectorAll('#queue li').length === 0,
      null, { timeout: 15000 },
    );
    assert.equal(await page.locator('#traffic-body tr[data-request-id][data-state="done"]').count() >= total + 1, true);
  });

  test('a tool-call request shows in the traffic table within 2 s, and its translation view shows the span and the call', async () => {
    phase = 'toolcall';
    const before = new Set(await page.locator('#traffic-body tr[data-request-id]').evaluateAll(
      (rows) => rows.map((r) => r.dataset.requestId),
    ));
    const started = Date.now();
    const run = chat(proxy.base, { stream: true, tools: true, content: 'What is the weather in Paris?' });
    const handle = await page.waitForFunction(
      (known) => Array.from(document.querySelectorAll('#traffic-body tr[data-request-id]'))
        .map((r) => r.dataset.requestId).find((id) => !known.includes(id)),
      [...before], { timeout: 2000 },
    );
    const id = await handle.jsonValue();
    assert.ok(Date.now() - started <= 2500, 'the row appeared within 2 s');
    const done = await run;
    assert.equal(done.status, 200);
    const row = page.locator(`#traffic-body tr[data-request-id="${id}"]`);
    await until(async () => (await row.getAttribute('data-state')) === 'done', { timeout: 10000, what: 'the row to finish' });
    // Say plainly when the proxy itself translated nothing: that is not the page's fault.
    const rec = await getJson(proxy.base, `/admin/api/requests/${id}`);
    assert.ok((rec.output?.tool_calls || []).length > 0 && (rec.trace || []).some((s) => s.kind === 'tool_call'),
      `the proxy translated no tool call for ${id} (GET /admin/api/requests/${id}: output.tool_calls=${JSON.stringify(rec.output?.tool_calls)}, `
      + `trace kinds=${JSON.stringify([...new Set((rec.trace || []).map((s) => s.kind))])}, raw text=${JSON.stringify((rec.raw_text ?? rec.output?.content ?? '').slice(-120))})`);
    await row.locator('[data-tool="get_weather"]').waitFor({ timeout: 5000 });
    // The demo backend writes its calls as text: the header says blockops translates them.
    await page.waitForFunction(() => document.querySelector('#backend-tool-text')?.textContent === 'raw text', null, WAIT);

    // Keyboard: focus the row and press Enter.
    await row.focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector(`#detail[data-request-id="${id}"][data-state="loaded"]`, WAIT);
    assert.equal(await row.getAttribute('aria-current'), 'true');

    const span = page.locator('#detail-raw [data-span-kind="tool_call"]').first();
    await span.waitFor(WAIT);
    const spanText = await span.textContent();
    assert.match(spanText, /get_weather/, 'the raw tool-call span is highlighted');
    assert.match(spanText, /Paris/);
    // The highlighted span is exactly the bytes the trace names.
    const record = await getJson(proxy.base, `/admin/api/requests/${id}`);
    const traceSpan = record.trace.find((s) => s.kind === 'tool_call');
    const raw = record.raw_text ?? record.output.content ?? '';
    const bytes = new TextEncoder().encode(raw).subarray(traceSpan.start, traceSpan.end);
    const expected = new TextDecoder().decode(bytes);
    assert.equal((await span.evaluate((el) => el.dataset.start + '-' + el.dataset.end)), `${traceSpan.start}-${traceSpan.end}`);
    assert.ok(spanText.endsWith(expected), 'the highlight covers the traced bytes');

    const call = page.locator('#detail-calls [data-tool-call="get_weather"]');
    await call.waitFor(WAIT);
    const args = await call.locator('.call-args').textContent();
    assert.deepEqual(JSON.parse(args), { city: 'Paris' }, 'the structured call shows pretty JSON arguments');
    assert.match(args, /\n {2}"city"/, 'arguments are pretty-printed');
  });

  test('each row names the front door that served it: an Anthropic Messages request shows "Messages"', async () => {
    const res = await fetch(`${proxy.base}/v1/messages?beta=true`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01' },
      body: JSON.stringify({ model: 'demo', max_tokens: 256, messages: [{ role: 'user', content: 'Hello from the Messages door' }] }),
      signal: AbortSignal.timeout(60000),
    });
    assert.equal(res.status, 200, await res.clone().text());
    const id = res.headers.get('request-id');
    assert.ok(id, 'the reply names its request');
    assert.equal((await res.json()).type, 'message');
    const row = page.locator(`#traffic-body tr[data-request-id="${id}"]`);
    await row.locator('.chip-door').waitFor(WAIT);
    assert.equal(await row.locator('.chip-door').textContent(), 'Messages');
    assert.match(await row.locator('.chip-door').getAttribute('title'), /Anthropic Messages/);
    // The earlier tests' chat completions say Chat.
    await page.locator('#traffic-body .chip-door[data-door="chat"]', { hasText: 'Chat' }).first().waitFor(WAIT);
    await row.click();
    await page.waitForSelector(`#detail[data-request-id="${id}"][data-state="loaded"]`, WAIT);
    const door = page.locator('#detail .summary-bar div', { hasText: 'Front door' }).locator('dd');
    assert.equal(await door.textContent(), 'Messages');
  });

  test('the settings form is built from the server\'s schema', async () => {
    phase = 'schema';
    const schema = await getJson(proxy.base, '/admin/api/config/schema');
    const config = await getJson(proxy.base, '/admin/api/config');
    const live = schema.settings.filter((s) => s.live && !s.secret);
    assert.ok(live.some((s) => s.key === 'max_concurrent'), 'max_concurrent is a live setting');
    await page.waitForSelector('#cfg-max_concurrent', { state: 'attached', ...WAIT });
    const form = await page.evaluate(() => Array.from(document.querySelectorAll('#settings-fields [name]'), (el) => ({
      key: el.name,
      tag: el.tagName.toLowerCase(),
      min: el.getAttribute('min'),
      max: el.getAttribute('max'),
      step: el.getAttribute('step'),
      options: el.tagName === 'SELECT' ? Array.from(el.options, (o) => o.value) : null,
      label: document.querySelector(`label[for="${el.id}"]`)?.textContent || '',
      value: el.value,
    })));
    assert.deepEqual(form.map((f) => f.key), live.map((s) => s.key), 'one field per live setting, in the server\'s order');
    for (const s of live) {
      const f = form.find((x) => x.key === s.key);
      assert.ok(f.label.startsWith(s.label), `${s.key}: label ${JSON.stringify(f.label)}`);
      if (s.type === 'integer' || s.type === 'number') {
        assert.equal(Number(f.min), s.min, `${s.key}: the form's min is the server's`);
        assert.equal(Number(f.max), s.max, `${s.key}: the form's max is the server's`);
        assert.equal(f.step, s.type === 'integer' ? '1' : 'any', `${s.key}: step`);
        assert.equal(Number(f.value), config[s.key], `${s.key}: shows the current value`);
      } else if (s.type === 'enum') {
        assert.deepEqual(f.options, s.choices.map((c) => c.value), `${s.key}: the server's choices`);
        assert.equal(f.value, config[s.key], `${s.key}: shows the current value`);
      }
    }
    // The drift this replaced: the hand-written form let these go to 0.
    const min = (key) => schema.settings.find((s) => s.key === key).min;
    assert.equal(await page.getAttribute('#cfg-max_concurrent', 'min'), String(min('max_concurrent')));
    assert.equal(await page.getAttribute('#cfg-queue_timeout_secs', 'min'), String(min('queue_timeout_secs')));
    // Settings that need a restart are listed, not editable.
    assert.equal(await page.locator('#cfg-port').count(), 0, 'port is not editable while running');
    assert.equal(await page.locator('#settings-fixed-list [data-fixed="port"] dd').textContent(), String(proxy.port));
    assert.equal(await page.locator('#cfg-api_key').count(), 0, 'secrets are not in the form');

    // A field the old hand-written form lacked round-trips through PATCH.
    const field = page.locator('#cfg-first_byte_timeout_secs');
    await field.fill('123.5');
    await page.click('#settings-save');
    await until(async () => (await getJson(proxy.base, '/admin/api/config')).first_byte_timeout_secs === 123.5,
      { timeout: 5000, what: 'the saved first_byte_timeout_secs' });
    await page.waitForSelector('#settings-save:disabled', WAIT);
    assert.equal(await field.inputValue(), '123.5');
  });

  test('a bad setting shows the server\'s message beside its field', async () => {
    phase = 'validation';
    // The browser logs the 400 response itself; that is this test's point, not an error.
    expectedErrors.push({ phase, re: /status of 400/ });
    const field = page.locator('#cfg-max_concurrent');
    const original = await field.inputValue();
    await field.fill('0');
    await page.click('#settings-save');
    const err = page.locator('#err-max_concurrent');
    await err.waitFor({ state: 'visible', timeout: 5000 });
    assert.match(await err.textContent(), /max_concurrent/);
    assert.equal(await field.getAttribute('aria-invalid'), 'true');
    await field.fill(original);
    assert.equal(await err.isHidden(), true, 'editing the field clears its error');
    assert.equal(await page.locator('#settings-save').isDisabled(), true, 'nothing left to save');
  });

  test('the purge button reaches the backend and shows the result', async () => {
    phase = 'purge';
    await page.click('#purge');
    const result = page.locator('#purge-result');
    await page.waitForSelector('#purge-result:not([hidden]):not([data-status="pending"])', WAIT);
    assert.equal(await result.getAttribute('data-status'), 'purged', await result.textContent());
    assert.match(await result.textContent(), /purged/);
  });

  test('a new backend URL, tested then saved in the form, takes the next request without a restart', async () => {
    phase = 'switch';
    second = await startDemoBackend({ dir: proxy.dir, tokensPerSec: 40 });
    // The built-in demo backend has served several requests by now; the new one has served none,
    // and the demo numbers its replies per backend (chatcmpl-demo0, -demo1, …).
    const warm = await chat(proxy.base, { stream: false });
    assert.equal(warm.status, 200);
    assert.notEqual(warm.json.id, 'chatcmpl-demo0', 'the first backend has served before');

    const url = page.locator('#cfg-backend_url');
    await url.fill(second.base);
    await page.click('#backend-test');
    await page.waitForSelector('#backend-test-result[data-reachable="true"]', WAIT);
    assert.match(await page.textContent('#backend-test-result'), /demo/, 'the probe lists the backend\'s models');
    await page.click('#settings-save');
    await until(async () => (await getJson(proxy.base, '/admin/api/config')).backend_url === second.base,
      { timeout: 5000, what: 'the saved backend_url' });
    await page.waitForSelector('#settings-save:disabled', WAIT);
    await until(async () => (await page.textContent('#backend-url')) === second.base,
      { timeout: 5000, what: 'the header to show the new backend' });

    const next = await chat(proxy.base, { stream: false });
    assert.equal(next.status, 200);
    assert.equal(next.json.id, 'chatcmpl-demo0', 'the next request went to the new backend');
    const status = await getJson(proxy.base, '/admin/api/status');
    assert.equal(status.backend.url, second.base);
  });

  test('the backends view lists each backend; one added through the admin API shows, routes and purges', async () => {
    phase = 'backends';
    await page.waitForSelector('#backends-body tr[data-backend="default"]', WAIT);
    const put = await fetch(`${proxy.base}/admin/api/backends/extra`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ url: second.base, models: ['extra-*'], max_concurrent: 2 }),
    });
    assert.equal(put.status, 200, await put.text());
    const row = page.locator('#backends-body tr[data-backend="extra"]');
    await row.waitFor(WAIT);
    assert.match(await row.locator('.c-bmodels').textContent(), /extra-\*/);
    assert.equal((await row.locator('.c-bslots').textContent()).trim(), '0 / 2');
    // The background probe finds it up within a few seconds.
    await page.waitForSelector('#backends-body tr[data-backend="extra"] .backend-state[data-up="up"]', { timeout: 15000 });

    const r = await chat(proxy.base, { stream: false, model: 'extra-small' });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.model, 'extra-small');
    await until(async () => (await page.locator('#traffic-body td.c-backend', { hasText: 'extra' }).count()) > 0,
      { timeout: 5000, what: 'the traffic table to name the backend' });

    await row.locator('button[data-purge="extra"]').click();
    await page.waitForSelector('.toast', WAIT);
    assert.match(await page.locator('.toast').last().textContent(), /^extra: /);

    const del = await fetch(`${proxy.base}/admin/api/backends/extra`, { method: 'DELETE' });
    assert.equal(del.status, 200);
    await row.waitFor({ state: 'detached', timeout: 5000 });
  });

  test('a backend is added, edited and removed through the card\'s form; refused values show the server\'s message', async () => {
    phase = 'backend-form';
    // The browser logs the 400s this test provokes itself; they are the point.
    expectedErrors.push({ phase, re: /status of 400/ });
    const form = '#backend-form:not([hidden]):not([aria-busy])';
    const schema = await getJson(proxy.base, '/admin/api/config/schema');
    const listed = async (name) => (await getJson(proxy.base, '/admin/api/backends')).find((b) => b.name === name);

    // Add.
    await page.click('#backend-add');
    await page.waitForSelector(form, WAIT);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'bk-name', 'the form opens on its first field');
    assert.deepEqual(await page.locator('#bk-kind option').evaluateAll((os) => os.map((o) => o.value)), schema.backends.kinds,
      'the kinds are the server\'s');
    const fields = await page.evaluate(() => Array.from(document.querySelectorAll('#backend-form [name]'), (el) => ({
      name: el.name, label: document.querySelector(`label[for="${el.id}"]`)?.textContent || '',
    })));
    for (const k of schema.backends.overrides) assert.ok(fields.some((f) => f.name === k), `the form offers ${k}`);
    assert.deepEqual(fields.filter((f) => !f.label.trim()).map((f) => f.name), [], 'every field has a label');
    await page.addScriptTag({ path: AXE });
    const axe = await page.evaluate(() => window.axe.run('#backends', {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
    }));
    assert.deepEqual(axe.violations.map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`), [], 'the open form passes axe');

    await page.fill('#bk-name', 'viaform');
    await page.fill('#bk-url', second.base);
    await page.selectOption('#bk-kind', 'generic');
    await page.fill('#bk-models', 'form-a, form-b*  form-c');
    await page.fill('#bk-fallbacks', 'default');
    await page.fill('#bk-max_concurrent', '2');
    await page.fill('#bk-max_queue', '5');
    await page.click('#backend-save');
    await page.waitForSelector('#backend-form', { state: 'hidden', ...WAIT });
    const row = page.locator('#backends-body tr[data-backend="viaform"]');
    await row.waitFor(WAIT);
    assert.equal((await row.locator('.c-bmodels').textContent()).trim(), 'form-a, form-b*, form-c');
    assert.equal((await row.locator('.c-bfallbacks').textContent()).trim(), 'default');
    assert.equal((await row.locator('.c-bslots').textContent()).trim(), '0 / 2');
    assert.equal((await row.locator('.c-bqueue').textContent()).trim(), '0 / 5');
    assert.deepEqual((await listed('viaform')).config, {
      name: 'viaform', url: second.base, kind: 'generic', models: ['form-a', 'form-b*', 'form-c'],
      fallbacks: ['default'], max_concurrent: 2, max_queue: 5,
    });
    assert.match(fs.readFileSync(path.join(proxy.dir, 'config.toml'), 'utf8'), /viaform/, 'saved to the config file');
    const routed = await chat(proxy.base, { stream: false, model: 'form-b-small' });
    assert.equal(routed.status, 200, JSON.stringify(routed.json));
    await until(async () => (await page.locator('#traffic-body td.c-backend', { hasText: 'viaform' }).count()) > 0,
      { timeout: 5000, what: 'the request served by the new backend' });

    // A name in use is caught before sending (a PUT would replace that backend).
    await page.click('#backend-add');
    await page.waitForSelector(form, WAIT);
    await page.fill('#bk-name', 'viaform');
    await page.fill('#bk-url', second.base);
    await page.fill('#bk-models', 'x');
    await page.click('#backend-save');
    await page.waitForSelector('#bk-err-name:not([hidden])', WAIT);
    assert.match(await page.textContent('#bk-err-name'), /viaform exists already/);
    await page.click('#backend-cancel');
    await page.waitForSelector('#backend-form', { state: 'hidden', ...WAIT });

    // Edit: the form shows what the backend has; one change is sent with the rest as it was.
    await row.locator('button[data-edit="viaform"]').click();
    await page.waitForSelector(form, WAIT);
    assert.equal(await page.inputValue('#bk-name'), 'viaform');
    assert.equal(await page.locator('#bk-name').evaluate((el) => el.readOnly), true, 'the name is fixed while editing');
    assert.equal(await page.inputValue('#bk-url'), second.base);
    assert.equal(await page.inputValue('#bk-kind'), 'generic');
    assert.equal(await page.inputValue('#bk-models'), 'form-a, form-b*, form-c');
    assert.equal(await page.inputValue('#bk-fallbacks'), 'default');
    assert.equal(await page.inputValue('#bk-max_concurrent'), '2');
    assert.equal(await page.inputValue('#bk-max_queue'), '5');
    assert.equal(await page.inputValue('#bk-queue_timeout_secs'), '', 'an override not set is blank');
    const global = await getJson(proxy.base, '/admin/api/config');
    assert.equal(await page.getAttribute('#bk-queue_timeout_secs', 'placeholder'), `global: ${global.queue_timeout_secs}`);
    await page.fill('#bk-max_concurrent', '3');
    await page.click('#backend-save');
    await page.waitForSelector('#backend-form', { state: 'hidden', ...WAIT });
    await until(async () => (await row.locator('.c-bslots').textContent()).trim() === '0 / 3',
      { timeout: 5000, what: 'the card to show the new max_concurrent' });
    let now = await listed('viaform');
    assert.equal(now.slots.total, 3);
    assert.deepEqual(now.config, {
      name: 'viaform', url: second.base, kind: 'generic', models: ['form-a', 'form-b*', 'form-c'],
      fallbacks: ['default'], max_concurrent: 3, max_queue: 5,
    });

    // Refused values: the server's message beside the field it names; nothing changes.
    await row.locator('button[data-edit="viaform"]').click();
    await page.waitForSelector(form, WAIT);
    await page.fill('#bk-url', 'localhost:8000');
    await page.click('#backend-save');
    await page.waitForSelector('#bk-err-url:not([hidden])', WAIT);
    assert.match(await page.textContent('#bk-err-url'), /backend "viaform": url: .*http:\/\//);
    assert.equal(await page.getAttribute('#bk-url', 'aria-invalid'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'bk-url', 'focus goes to the refused field');
    assert.equal(await page.textContent('#backend-form-state'), 'Not saved');
    await page.fill('#bk-url', second.base);
    assert.equal(await page.locator('#bk-err-url').isHidden(), true, 'editing the field clears its error');
    await page.fill('#bk-fallbacks', 'default, nowhere');
    await page.click('#backend-save');
    await page.waitForSelector('#bk-err-fallbacks:not([hidden])', WAIT);
    assert.match(await page.textContent('#bk-err-fallbacks'), /backend "viaform": fallbacks: no backend named "nowhere": expected one of/);
    await page.fill('#bk-fallbacks', 'default');
    await page.click('#backend-overrides > summary');
    await page.fill('#bk-token_warn_threshold', '0');
    // Folded away again: a refused value there must still be seen.
    await page.click('#backend-overrides > summary');
    await page.click('#backend-save');
    await page.waitForSelector('#bk-err-token_warn_threshold:not([hidden])', WAIT);
    assert.match(await page.textContent('#bk-err-token_warn_threshold'), /backend "viaform": token_warn_threshold/);
    assert.equal(await page.locator('#backend-overrides').evaluate((d) => d.open), true, 'the limits open to show it');
    await page.press('#bk-token_warn_threshold', 'Escape');
    await page.waitForSelector('#backend-form', { state: 'hidden', ...WAIT });
    now = await listed('viaform');
    assert.deepEqual([now.url, now.fallbacks, now.config.token_warn_threshold], [second.base, ['default'], undefined], 'nothing refused was applied');

    // Remove: asks first; Cancel keeps it, Remove removes it.
    await row.locator('button[data-remove="viaform"]').click();
    await page.waitForSelector('#backend-remove-dialog[open]', WAIT);
    assert.match(await page.textContent('#backend-remove-title'), /viaform/);
    await page.click('#backend-remove-cancel');
    await page.waitForSelector('#backend-remove-dialog:not([open])', { state: 'attached', ...WAIT });
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.remove), 'viaform', 'focus returns to the button');
    assert.ok(await listed('viaform'), 'cancel keeps it');
    await row.locator('button[data-remove="viaform"]').click();
    await page.waitForSelector('#backend-remove-dialog[open]', WAIT);
    await page.click('#backend-remove-confirm');
    await row.waitFor({ state: 'detached', timeout: 5000 });
    await page.waitForSelector('#backend-remove-dialog:not([open])', { state: 'attached', ...WAIT });
    assert.equal(await listed('viaform'), undefined);
    assert.doesNotMatch(fs.readFileSync(path.join(proxy.dir, 'config.toml'), 'utf8'), /viaform/, 'gone from the config file');

    // A backend blockops starts itself: editing keeps its cmd and the port it picked.
    const put = await fetch(`${proxy.base}/admin/api/backends/managed`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      // Never started here: a backend starts when a request for its models arrives.
      body: JSON.stringify({ models: ['managed-only'], cmd: ['blockops-never-run', '--port', '${PORT}'], ttl_secs: 60 }),
    });
    assert.equal(put.status, 200, await put.text());
    const managedRow = page.locator('#backends-body tr[data-backend="managed"]');
    await managedRow.waitFor(WAIT);
    await managedRow.locator('button[data-edit="managed"]').click();
    await page.waitForSelector(form, WAIT);
    assert.equal(await page.inputValue('#bk-url'), '', 'the picked URL is not written into the table');
    assert.match(await page.getAttribute('#bk-url', 'placeholder'), /picked by blockops/);
    assert.match(await page.textContent('#backend-managed-note'), /blockops-never-run --port \$\{PORT\}/);
    await page.fill('#bk-max_queue', '7');
    await page.click('#backend-save');
    await page.waitForSelector('#backend-form', { state: 'hidden', ...WAIT });
    await until(async () => (await managedRow.locator('.c-bqueue').textContent()).trim() === '0 / 7',
      { timeout: 5000, what: 'the card to show the managed backend\'s new max_queue' });
    assert.deepEqual((await listed('managed')).config, {
      name: 'managed', kind: 'auto', models: ['managed-only'], fallbacks: [], max_queue: 7,
      cmd: ['blockops-never-run', '--port', '${PORT}'], ttl_secs: 60,
    });
    assert.equal((await fetch(`${proxy.base}/admin/api/backends/managed`, { method: 'DELETE' })).status, 200);
    await managedRow.waitFor({ state: 'detached', timeout: 5000 });

    // The last backend cannot go: the dialog says so instead of offering it.
    await page.locator('#backends-body button[data-remove="default"]').click();
    await page.waitForSelector('#backend-remove-dialog[open]', WAIT);
    assert.match(await page.textContent('#backend-remove-detail'), /only backend/);
    assert.equal(await page.locator('#backend-remove-confirm').isDisabled(), true);
    await page.keyboard.press('Escape');
    await page.waitForSelector('#backend-remove-dialog:not([open])', { state: 'attached', ...WAIT });
  });

  test('a loading model\'s output, opened, stays open and focused while its lines arrive', async () => {
    // A managed backend whose command talks but never serves: it stays "starting".
    const script = 'i=0; while :; do i=$((i+1)); echo "loading $i"; sleep 0.2; done';
    const put = await fetch(`${proxy.base}/admin/api/backends/chatty`, {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ models: ['chatty-only'], cmd: ['sh', '-c', script, 'sh', '${PORT}'] }),
    });
    assert.equal(put.status, 200, await put.text());
    // The start answers only once the backend is ready (never, here) or removed.
    const starting = fetch(`${proxy.base}/admin/api/backends/chatty/start`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}',
    }).catch(() => {});
    const row = page.locator('#backends-body tr[data-backend="chatty"]');
    const summary = row.locator('details.process-output summary');
    await summary.waitFor(WAIT);
    await summary.click();
    const output = row.locator('details.process-output pre');
    const before = await output.textContent();
    await until(async () => (await output.textContent()) !== before,
      { timeout: 5000, what: 'more output, which rebuilds the row' });
    assert.equal(await row.locator('details.process-output').getAttribute('open'), '', 'still open');
    assert.equal(await page.evaluate(() => document.activeElement?.tagName), 'SUMMARY', 'focus kept');
    assert.equal((await fetch(`${proxy.base}/admin/api/backends/chatty`, { method: 'DELETE' })).status, 200);
    await row.waitFor({ state: 'detached', timeout: 5000 });
    await starting;
  });

  test('screenshots at 420×640 and 1440×900', async () => {
    phase = 'screenshots';
    // Something to look at: a tool call selected, requests under way.
    const toolRun = chat(proxy.base, { stream: false, tools: true, content: 'What is the weather in Lisbon?' });
    await toolRun;
    const runs = [1, 2].map(() => chat(proxy.base, { stream: true }));
    await page.waitForSelector('[data-slot][data-busy="true"]', WAIT);
    const shots = [];
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.setViewportSize({ width: 1440, height: 900 });
      // The finished tool-call request (the newest rows are the two still running).
      const first = page.locator('#traffic-body tr[data-request-id][data-state="done"]').first();
      await first.click();
      await page.waitForSelector('#detail[data-state="loaded"], #detail[data-state="pending"]', WAIT);
      await page.evaluate(() => window.scrollTo(0, 0));
      const wide = path.join(ARTIFACTS, `dashboard-1440x900${scheme === 'dark' ? '-dark' : ''}.png`);
      await page.screenshot({ path: wide, animations: 'disabled' });
      shots.push(wide);
      await page.setViewportSize({ width: 420, height: 640 });
      await page.click('#tab-live');
      await page.evaluate(() => window.scrollTo(0, 0));
      const narrow = path.join(ARTIFACTS, `dashboard-420x640${scheme === 'dark' ? '-dark' : ''}.png`);
      await page.screenshot({ path: narrow, animations: 'disabled' });
      shots.push(narrow);
      if (scheme === 'light') {
        await page.click('#tab-traffic');
        const p = path.join(ARTIFACTS, 'dashboard-420x640-traffic.png');
        await page.screenshot({ path: p, animations: 'disabled' });
        shots.push(p);
        // The narrow layout is one column: nothing wider than the window.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `no horizontal scrolling at 420 px (overflow ${overflow}px)`);
        await page.click('#tab-live');
      }
    }
    await page.emulateMedia({ colorScheme: 'light' });
    await page.setViewportSize({ width: 1440, height: 900 });
    for (const s of shots) {
      const buf = fs.readFileSync(s);
      assert.ok(buf.length > 10000, `${s} is a real image`);
      assert.equal(buf.subarray(1, 4).toString(), 'PNG');
    }
    await Promise.all(runs);
  });

  test('accessibility: axe finds no WCAG 2.1 A/AA violations, light and dark, wide and narrow', async () => {
    phase = 'a11y';
    // Reduced motion: the row flash and sweeps must not be caught mid-animation by the contrast check.
    await page.emulateMedia({ reducedMotion: 'reduce' });
    await page.addScriptTag({ path: AXE });
    const found = [];
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      for (const [width, height, tab] of [[1440, 900, null], [420, 640, 'traffic'], [420, 640, 'settings']]) {
        await page.setViewportSize({ width, height });
        if (tab) await page.click(`#tab-${tab}`);
        const result = await page.evaluate(() => window.axe.run(document, {
          runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
        }));
        for (const v of result.violations) {
          found.push(`${scheme} ${width}px${tab ? ` ${tab}` : ''}: ${v.id} (${v.impact}) ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
        }
      }
    }
    await page.emulateMedia({ colorScheme: 'light', reducedMotion: 'no-preference' });
    await page.setViewportSize({ width: 1440, height: 900 });
    assert.deepEqual(found, []);
  });

  test('no unexpected console errors during the whole session', () => {
    assert.deepEqual(unexpectedErrors(), []);
  });

  test('losing the proxy shows "disconnected — reconnecting", and the page recovers when it is back', async () => {
    phase = 'reconnect';
    // Errors while the proxy is down are the point of this test.
    expectedErrors.push({ phase, re: /.*/ });
    const { port, dir } = proxy;
    await proxy.child.stop();
    await page.waitForSelector('#conn[data-state="reconnecting"]', WAIT);
    assert.equal(await page.isVisible('#disconnected-banner'), true);
    assert.match(await page.textContent('#disconnected-banner'), /Disconnected/);
    proxy = await startProxy({ port, dir, tokensPerSec: 20 });
    await page.waitForSelector('#conn[data-state="live"]', { timeout: 20000 });
    assert.equal(await page.isVisible('#disconnected-banner'), false);
    // The page has fresh data from the new process (its uptime starts again).
    const status = await getJson(proxy.base, '/admin/api/status');
    await until(async () => (await page.textContent('#backend-url')) === status.backend.url,
      { timeout: 5000, what: 'the header to show the restarted proxy\'s backend' });
  });
});

describe('dashboard behind BLOCKOPS_API_KEY', () => {
  const KEY = 'browser-test-key';
  let proxy;
  let browser;
  let page;
  const errors = [];

  before(async () => {
    proxy = await startProxy({ tokensPerSec: 0, apiKey: KEY });
    browser = await launchBrowser();
    page = browser.context.pages()[0] || (await browser.context.newPage());
    page.setDefaultTimeout(10000);
    page.on('console', (m) => {
      // The 401s that make the page ask for the key are the browser's own log lines.
      if (m.type() === 'error' && !/status of 401/.test(m.text())) errors.push(m.text());
    });
    page.on('pageerror', (e) => errors.push(`uncaught: ${e.message}`));
  });

  after(async () => {
    if (browser) await browser.context.close().catch(() => {});
    if (browser) fs.rmSync(browser.userDataDir, { recursive: true, force: true });
    if (proxy) await proxy.child.stop();
  });

  test('the page asks for the key once, refuses a wrong one, then goes live over an authorised stream', async () => {
    await page.goto(`${proxy.base}/ui/`);
    await page.waitForSelector('#auth-dialog[open]', WAIT);
    // The status and the settings both got a 401: one form, not two.
    assert.equal(await page.locator('#auth-dialog[open]').count(), 1);
    await page.fill('#auth-key', 'not-the-key');
    await page.press('#auth-key', 'Enter');
    await page.waitForSelector('#auth-error:not([hidden])', WAIT);
    await page.fill('#auth-key', KEY);
    await page.press('#auth-key', 'Enter');
    await page.waitForSelector('#conn[data-state="live"]', WAIT);
    assert.equal(await page.locator('#auth-dialog[open]').count(), 0);
    await until(async () => (await page.inputValue('#cfg-max_concurrent')) !== '', { what: 'the settings to load with the key' });

    // Live updates arrive through the fetch()-read stream (EventSource cannot send the header).
    const r = await chat(proxy.base, { stream: false, apiKey: KEY });
    assert.equal(r.status, 200);
    await page.waitForSelector('#traffic-body tr[data-request-id]', { timeout: 5000 });

    // The key lives in sessionStorage: a reload does not ask again.
    await page.reload();
    await page.waitForSelector('#conn[data-state="live"]', WAIT);
    assert.equal(await page.locator('#auth-dialog[open]').count(), 0);
    assert.deepEqual(errors, []);
  });
});
