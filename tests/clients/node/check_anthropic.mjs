// The official Anthropic TypeScript SDK against a running blockops-proxy's Messages front door.
//
//   node check_anthropic.mjs --proxy http://127.0.0.1:PORT --backend http://127.0.0.1:PORT [--only a,b]
//
// Clients: `messages.create` and `messages.stream()` (its `finalMessage()` accumulator), each
// with the two-turn tool loop where a scenario has a tool result; then count_tokens and the
// error classes. Prints one PASS/FAIL line per case, like check.mjs; run.sh counts them.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Anthropic from "@anthropic-ai/sdk";

const here = dirname(fileURLToPath(import.meta.url));
const SUITE = JSON.parse(readFileSync(join(here, "..", "scenarios.json"), "utf8"));
const SCENARIOS = SUITE.scenarios.filter((s) => !s.helper);
const BY_NAME = Object.fromEntries(SUITE.scenarios.map((s) => [s.name, s]));
const TOOLS = SUITE.tools.map(({ function: f }) => ({ name: f.name, description: f.description, input_schema: f.parameters }));
const SYSTEM = "You are a weather assistant. Use the tools.";
const MAX_TOKENS = 1024;

const opts = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const ONLY = new Set((opts.only || "").split(",").filter(Boolean));
const client = () => new Anthropic({ baseURL: opts.proxy, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
const state = async () => (await fetch(`${opts.backend}/_state`)).json();

// The chat suite's history in Messages form: long filler turns where a scenario has them.
function turns(s) {
  const msgs = [];
  for (let i = 0; i < (s.history_turns || 0); i++) {
    const n = s.history_turn_bytes;
    msgs.push({ role: "user", content: (`turn ${i}: ` + "lorem ipsum dolor sit amet ".repeat(Math.floor(n / 27) + 1)).slice(0, n) });
    msgs.push({ role: "assistant", content: `Noted (${i}).` });
  }
  msgs.push({ role: "user", content: s.user });
  return msgs;
}

// Holds the proxy's only slot (a chat request to the `hold` scenario) until the backend serves it.
async function hold() {
  const body = JSON.stringify({ model: "hold", stream: true, messages: [{ role: "user", content: "hold" }] });
  const done = fetch(`${opts.proxy}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json" }, body })
    .then((r) => r.text())
    .catch(() => "");
  for (const deadline = Date.now() + 10_000; Date.now() < deadline; ) {
    if (((await state()).in_flight.hold || 0) > 0) return done;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("the hold request never reached the backend");
}

// What a final Message says: text, thinking, calls; and what is wrong with its shape.
function read(msg, problems) {
  const texts = msg.content.filter((b) => b.type === "text").map((b) => b.text);
  const thinking = msg.content.filter((b) => b.type === "thinking");
  const calls = msg.content.filter((b) => b.type === "tool_use");
  for (const c of calls) {
    if (typeof c.input !== "object" || c.input === null || Array.isArray(c.input)) problems.push(`tool_use input ${JSON.stringify(c.input)} is not an object`);
    if (!c.id.startsWith("toolu_")) problems.push(`tool_use id ${c.id}`);
  }
  for (const t of thinking) if (!t.signature) problems.push("a thinking block without a signature");
  const want = calls.length ? "tool_use" : "end_turn";
  if (msg.stop_reason !== want) problems.push(`stop_reason ${msg.stop_reason}, expected ${want}`);
  return {
    content: texts.join(""),
    reasoning: thinking.length ? thinking.map((t) => t.thinking).join("") : null,
    calls: calls.map((c) => [c.name, c.input]),
  };
}

async function ask(streaming, s, messages) {
  const params = { model: s.name, max_tokens: MAX_TOKENS, system: SYSTEM, messages, tools: TOOLS };
  if (!streaming) return { msg: await client().messages.create(params), partial: null };
  const stream = client().messages.stream(params);
  let partial = "";
  stream.on("text", (t) => (partial += t));
  return { msg: await stream.finalMessage(), partial };
}

async function runScenario(streaming, s) {
  const e = s.expect;
  const problems = [];
  const q = JSON.stringify;
  const messages = turns(s);
  let got;
  try {
    const { msg, partial } = await ask(streaming, s, messages);
    if (msg.model !== s.name) problems.push(`model ${msg.model}, expected the requested ${s.name}`);
    got = read(msg, problems);
    if (e.error) return [`expected the SDK's API error, got ${q(got.content)} (partial ${q(partial)})`];
    if (s.tool_result && got.calls.length) {
      messages.push({ role: "assistant", content: msg.content });
      messages.push({
        role: "user",
        content: msg.content.filter((b) => b.type === "tool_use").map((b) => ({ type: "tool_result", tool_use_id: b.id, content: s.tool_result })),
      });
      const again = (await ask(streaming, s, messages)).msg;
      got.finalContent = again.content.filter((b) => b.type === "text").map((b) => b.text).join("");
    }
  } catch (err) {
    if (!e.error) return [`raised ${err?.name}: ${err?.message}`];
    if (!(err instanceof Anthropic.APIError)) return [`raised something other than the SDK's API error: ${err?.name}: ${err?.message}`];
    if (!String(err.message).includes("backend")) return [`the error does not say the backend failed: ${err.message}`];
    return [];
  }
  if ("content" in e && got.content !== e.content) problems.push(`content ${q(got.content)}, expected ${q(e.content)}`);
  for (const part of e.content_has || []) if (!got.content.includes(part)) problems.push(`content ${q(got.content)} lacks ${q(part)}`);
  if ("content_ends" in e && !got.content.endsWith(e.content_ends)) problems.push(`content ${q(got.content)} does not end with ${q(e.content_ends)}`);
  const expected = (e.calls || []).map((c) => [c.name, c.arguments]);
  if (q(got.calls) !== q(expected)) problems.push(`calls ${q(got.calls)}, expected ${q(expected)}`);
  if ("reasoning" in e && got.reasoning !== e.reasoning) problems.push(`reasoning ${q(got.reasoning)}, expected ${q(e.reasoning)}`);
  if ("final_content" in e && got.finalContent !== e.final_content) problems.push(`tool loop answer ${q(got.finalContent)}, expected ${q(e.final_content)}`);
  return problems;
}

async function countTokens() {
  const n = await client().messages.countTokens({ model: "hermes", system: SYSTEM, tools: TOOLS, messages: turns(BY_NAME.hermes) });
  return Number.isInteger(n.input_tokens) && n.input_tokens > 0 ? [] : [`input_tokens ${JSON.stringify(n)}`];
}

async function errors() {
  const problems = [];
  const expectError = async (cls, type, params) => {
    try {
      await client().messages.create(params);
      problems.push(`${type}: no error`);
    } catch (err) {
      if (!(err instanceof cls) || err.error?.error?.type !== type) problems.push(`${type}: got ${err?.name} ${JSON.stringify(err?.error)}`);
    }
  };
  await expectError(Anthropic.BadRequestError, "invalid_request_error", { model: "hermes", max_tokens: 0, messages: [] });
  await expectError(Anthropic.NotFoundError, "not_found_error", { model: "no-such-model", max_tokens: 5, messages: [{ role: "user", content: "hi" }] });
  return problems;
}

const cases = [];
for (const [name, streaming] of [["node-anthropic.create", false], ["node-anthropic.stream", true]]) {
  for (const s of SCENARIOS) if (!ONLY.size || ONLY.has(s.name)) cases.push([`${name} ${s.name}`, () => runScenario(streaming, s), s.hold_model]);
}
if (!ONLY.size || ONLY.has("count_tokens")) cases.push(["node-anthropic count_tokens", countTokens]);
if (!ONLY.size || ONLY.has("errors")) cases.push(["node-anthropic errors", errors]);

let failed = 0;
for (const [name, run, needsHold] of cases) {
  let problems;
  try {
    const held = needsHold ? await hold() : null;
    problems = await run();
    if (held) await held;
  } catch (e) {
    problems = [`harness error: ${e?.stack?.split("\n")[0] ?? e}`];
  }
  if (problems.length) {
    failed++;
    console.log(`FAIL ${name}: ${problems.join("; ")}`);
  } else {
    console.log(`PASS ${name}`);
  }
}
process.exit(failed ? 1 : 0);
