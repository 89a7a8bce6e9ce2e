// Test harness: starts the real proxy (with its built-in demo backend), a second demo backend,
// and Debian's chromium through playwright-core. Every wait is bounded.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');

export const BIN = process.env.BLOCKOPS_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(os.homedir(), '.cache/blockops/target'), 'debug/blockops-proxy');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const ARTIFACTS = path.resolve(repoRoot, process.env.BLOCKOPS_ARTIFACTS || 'artifacts');

/** A port that was free a moment ago (listen on 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value; throws with `what` after `timeout` ms. */
export async function until(fn, { timeout = 10000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** A child process with its output kept in a log file (printed when a test fails). */
class Child {
  constructor(name, args, env, logPath) {
    this.name = name;
    this.logPath = logPath;
    this.log = fs.createWriteStream(logPath);
    const fullEnv = { ...process.env, ...env };
    for (const [k, v] of Object.entries(fullEnv)) if (v === undefined) delete fullEnv[k];
    this.proc = spawn(BIN, args, { env: fullEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc.stdout.pipe(this.log, { end: false });
    this.proc.stderr.pipe(this.log, { end: false });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    this.proc.on('error', (e) => this.log.write(`spawn error: ${e.message}\n`));
  }

  async stop() {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }

  tail(n = 40) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '';
    }
  }
}

async function waitHealthy(url, child, timeout = 30000) {
  await until(async () => {
    if (child.proc.exitCode !== null) {
      throw new Error(`${child.name} exited with ${child.proc.exitCode}:\n${child.tail()}`);
    }
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return res.ok;
  }, { timeout, interval: 150, what: `${url} to answer` });
}

/** The proxy with its built-in demo backend, on a free port, with its own config and log. */
export async function startProxy({ port, dir, tokensPerSec = 20, apiKey } = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`no proxy binary at ${BIN}: build it (cargo build -p blockops-proxy) or set BLOCKOPS_BIN`);
  }
  const p = port || (await freePort());
  const d = dir || fs.mkdtempSync(path.join(os.tmpdir(), 'blockops-browser-'));
  const child = new Child('proxy', ['--demo', '--port', String(p), '--demo-tokens-per-sec', String(tokensPerSec)], {
    BLOCKOPS_LOG_FILE: path.join(d, 'traffic.jsonl'),
    BLOCKOPS_CONFIG: path.join(d, 'config.toml'),
    // The dashboard's open mode; an inherited key would put the page behind the key form.
    BLOCKOPS_API_KEY: apiKey,
    RUST_LOG: process.env.RUST_LOG || 'info',
  }, path.join(d, `proxy-${Date.now()}.log`));
  const base = `http://127.0.0.1:${p}`;
  await waitHealthy(`${base}/health`, child);
  return { base, port: p, dir: d, child, apiKey };
}

/** `blockops-proxy demo-backend --port Q`: a second, separate backend. */
export async function startDemoBackend({ dir, tokensPerSec = 0 } = {}) {
  const p = await freePort();
  const child = new Child('demo-backend', ['demo-backend', '--port', String(p), '--tokens-per-sec', String(tokensPerSec)], {},
    path.join(dir, `demo-backend-${p}.log`));
  const base = `http://127.0.0.1:${p}`;
  await waitHealthy(`${base}/health`, child);
  return { base, port: p, child };
}

export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockops-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1440, height: 900 },
  });
  return { context, userDataDir };
}

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

/** A chat completion through the proxy; resolves when the whole response has been read. */
export async function chat(base, { stream = true, tools = false, content = 'Tell me something about proxies.', timeout = 60000, apiKey, model = 'demo' } = {}) {
  const body = { model, stream, messages: [{ role: 'user', content }] };
  if (tools) body.tools = [WEATHER_TOOL];
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}) },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeout),
  });
  const text = await res.text();
  return { status: res.status, text, json: stream ? null : safeJson(text) };
}

function safeJson(t) {
  try {
    return JSON.parse(t);
  } catch {
    return null;
  }
}

export async function getJson(base, p) {
  const res = await fetch(`${base}${p}`, { signal: AbortSignal.timeout(5000) });
  if (!res.ok) throw new Error(`GET ${p}: ${res.status} ${await res.text()}`);
  return res.json();
}
