// Node clients against a running blockops-proxy: what each SDK made of every scenario.
//
//   node check.mjs --proxy http://127.0.0.1:PORT --backend http://127.0.0.1:PORT [--only a,b]
//
// Clients: the official OpenAI SDK (create; the `chat.completions.stream()` accumulator; the
// `runTools()` tool loop, plain and streaming) and the Vercel AI SDK with
// @ai-sdk/openai-compatible (`generateText`, `streamText`, and their multi-step tool loop).
// Prints one PASS/FAIL line per client and scenario, like python/check.py; run.sh counts them.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { generateText, streamText, jsonSchema, tool, stepCountIs, APICallError } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";

const here = dirname(fileURLToPath(import.meta.url));
const SUITE = JSON.parse(readFileSync(join(here, "..", "scenarios.json"), "utf8"));
const TOOLS = SUITE.tools;
const SCENARIOS = SUITE.scenarios.filter((s) => !s.helper);
const BY_NAME = Object.fromEntries(SUITE.scenarios.map((s) => [s.name, s]));
const SYSTEM = "You are a weather assistant. Use the tools.";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const PROXY = args.proxy;
const BACKEND = args.backend;
const ONLY = new Set((args.only || "").split(",").filter(Boolean));
if (!PROXY || !BACKEND) {
  console.error("usage: node check.mjs --proxy URL --backend URL [--only a,b]");
  process.exit(2);
}

// The same messages python/check.py sends: system, long history turns, the question.
function messagesFor(s) {
  const msgs = [{ role: "system", content: SYSTEM }];
  for (let i = 0; i < (s.history_turns || 0); i++) {
    const n = s.history_turn_bytes;
    const filler = (`turn ${i}: ` + "lorem ipsum dolor sit amet ".repeat(Math.floor(n / 27) + 1)).slice(0, n);
    msgs.push({ role: "user", content: filler });
    msgs.push({ role: "assistant", content: `Noted (${i}).` });
  }
  msgs.push({ role: "user", content: s.user });
  return msgs;
}

function parseArgs(text) {
  try {
    return typeof text === "string" ? JSON.parse(text) : text;
  } catch {
    return { "<unparsable>": text };
  }
}

function outcome() {
  return { content: "", reasoning: null, calls: [], finalContent: null, error: null, partial: "" };
}

async function backendState() {
  const r = await fetch(`${BACKEND}/_state`);
  return r.json();
}

// Takes the proxy's only slot with the `hold` scenario and waits (bounded) until the backend is
// serving it, so the request under test must queue.
async function startHold() {
  const body = JSON.stringify({ model: "hold", stream: true, messages: messagesFor(BY_NAME.hold) });
  const done = fetch(`${PROXY}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  })
    .then((r) => r.text())
    .catch(() => "");
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (((await backendState()).in_flight.hold || 0) > 0) return done;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error("the hold request never reached the backend");
}

// ---------------------------------------------------------------------------------------------
// The official OpenAI SDK

const openai = () => new OpenAI({ baseURL: `${PROXY}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });

function openaiError(e) {
  return e instanceof OpenAI.APIError ? ["api", String(e.message)] : ["other", `${e?.name}: ${e?.message}`];
}

function fillFromMessage(out, msg) {
  out.content = msg.content ?? "";
  if (typeof out.content !== "string") out.content = JSON.stringify(out.content);
  out.reasoning = msg.reasoning_content ?? null;
  out.calls = (msg.tool_calls || []).map((c) => [c.function.name, parseArgs(c.function.arguments)]);
}

// runTools: the SDK runs the tool and sends the result back itself, as an agent would.
function runnableTools(s, out) {
  const fn = TOOLS[0].function;
  return [
    {
      type: "function",
      function: {
        name: fn.name,
        description: fn.description,
        parameters: fn.parameters,
        parse: JSON.parse,
        function: (a) => {
          out.calls.push([fn.name, a]);
          return s.tool_result;
        },
      },
    },
  ];
}

async function openaiCreate(s) {
  const client = openai();
  const out = outcome();
  try {
    if (s.tool_result) {
      const runner = client.chat.completions.runTools({ model: s.name, messages: messagesFor(s), tools: runnableTools(s, out) });
      out.finalContent = await runner.finalContent();
      const first = (await runner.allChatCompletions())[0].choices[0].message;
      out.content = first.content ?? "";
      return out;
    }
    const reply = await client.chat.completions.create({ model: s.name, messages: messagesFor(s), tools: TOOLS });
    fillFromMessage(out, reply.choices[0].message);
  } catch (e) {
    out.error = openaiError(e);
  }
  return out;
}

async function openaiStream(s) {
  const client = openai();
  const out = outcome();
  try {
    if (s.tool_result) {
      const runner = client.chat.completions.runTools({
        model: s.name,
        messages: messagesFor(s),
        tools: runnableTools(s, out),
        stream: true,
      });
      runner.on("content", (delta) => (out.partial += delta));
      out.finalContent = await runner.finalContent();
      const first = (await runner.allChatCompletions())[0].choices[0].message;
      out.content = first.content ?? "";
      return out;
    }
    const stream = client.chat.completions.stream({ model: s.name, messages: messagesFor(s), tools: TOOLS });
    stream.on("content", (delta) => (out.partial += delta));
    const final = await stream.finalChatCompletion();
    fillFromMessage(out, final.choices[0].message);
  } catch (e) {
    out.error = openaiError(e);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The Vercel AI SDK

function aiModel(s) {
  const provider = createOpenAICompatible({ name: "blockops", baseURL: `${PROXY}/v1`, apiKey: "unused" });
  return provider.chatModel(s.name);
}

function aiTools(s) {
  const fn = TOOLS[0].function;
  const def = { description: fn.description, inputSchema: jsonSchema(fn.parameters) };
  if (s.tool_result) def.execute = async () => s.tool_result;
  return { [fn.name]: tool(def) };
}

function aiError(e) {
  if (APICallError.isInstance(e)) return ["api", String(e.message)];
  // An error event in the stream reaches the SDK as the proxy's error object.
  if (e && typeof e === "object" && typeof e.message === "string" && e.type) return ["api", e.message];
  return ["other", `${e?.name}: ${e?.message}`];
}

function fillFromSteps(out, s, steps, text, reasoning) {
  const first = steps[0];
  out.calls = first.toolCalls.map((c) => [c.toolName, c.input]);
  out.content = s.tool_result ? first.text : text;
  out.reasoning = s.tool_result ? first.reasoningText ?? null : reasoning ?? null;
  if (out.reasoning === undefined) out.reasoning = null;
  if (s.tool_result) out.finalContent = text;
}

const aiOptions = (s) => ({
  model: aiModel(s),
  system: SYSTEM,
  messages: messagesFor(s).slice(1),
  tools: aiTools(s),
  maxRetries: 0,
  stopWhen: stepCountIs(s.tool_result ? 3 : 1),
});

async function aiGenerate(s) {
  const out = outcome();
  try {
    const r = await generateText(aiOptions(s));
    fillFromSteps(out, s, r.steps, r.text, r.reasoningText);
  } catch (e) {
    out.error = aiError(e);
  }
  return out;
}

async function aiStream(s) {
  const out = outcome();
  let streamError = null;
  try {
    const r = streamText({ ...aiOptions(s), onError: ({ error }) => (streamError ??= error) });
    for await (const part of r.fullStream) {
      if (part.type === "text-delta") out.partial += part.text;
      if (part.type === "error") streamError ??= part.error;
    }
    if (streamError) {
      out.error = aiError(streamError);
      return out;
    }
    fillFromSteps(out, s, await r.steps, await r.text, await r.reasoningText);
  } catch (e) {
    out.error = aiError(streamError ?? e);
  }
  return out;
}

const CLIENTS = [
  ["node-openai.create", openaiCreate, { reasoning: true }],
  // The SDK's stream accumulator assigns unknown delta fields instead of appending them, so a
  // streamed `reasoning_content` ends as its last piece: reasoning is not the SDK's to show here.
  ["node-openai.stream", openaiStream, { streaming: true }],
  ["ai-sdk.generateText", aiGenerate, { reasoning: true }],
  ["ai-sdk.streamText", aiStream, { reasoning: true, streaming: true }],
];

// ---------------------------------------------------------------------------------------------
// Checking: the same rules as python/check.py.

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function check(s, out, caps, purgesBefore, purgesAfter) {
  const e = s.expect;
  const problems = [];
  const q = (v) => JSON.stringify(v);
  if (e.error) {
    if (!out.error) problems.push(`expected the SDK's API error, got none (content ${q(out.content)})`);
    else if (out.error[0] !== "api") problems.push(`raised something other than the SDK's API error: ${out.error[1]}`);
    else if (!out.error[1].includes("backend")) problems.push(`the error does not say the backend failed: ${out.error[1]}`);
    if (caps.streaming && out.partial !== e.partial_content)
      problems.push(`text before the error ${q(out.partial)}, expected ${q(e.partial_content)}`);
    return problems;
  }
  if (out.error) return [`raised ${out.error[1]}`];
  if (typeof out.content !== "string") problems.push(`content is not a string: ${q(out.content)}`);
  if ("content" in e && out.content !== e.content) problems.push(`content ${q(out.content)}, expected ${q(e.content)}`);
  for (const part of e.content_has || []) if (!out.content.includes(part)) problems.push(`content ${q(out.content)} lacks ${q(part)}`);
  if ("content_ends" in e && !out.content.endsWith(e.content_ends))
    problems.push(`content ${q(out.content)} does not end with ${q(e.content_ends)}`);
  if ("content_ends" in e && e.content_ends === "" && out.content.trim().startsWith("BACKEND")) problems.push(`content ${q(out.content)}`);
  const expected = (e.calls || []).map((c) => [c.name, c.arguments]);
  if (!same(out.calls, expected)) problems.push(`calls ${q(out.calls)}, expected ${q(expected)}`);
  if ("reasoning" in e && caps.reasoning && out.reasoning !== e.reasoning)
    problems.push(`reasoning ${q(out.reasoning)}, expected ${q(e.reasoning)}`);
  if ("final_content" in e && out.finalContent !== e.final_content)
    problems.push(`tool loop answer ${q(out.finalContent)}, expected ${q(e.final_content)}`);
  if (e.purged && purgesAfter <= purgesBefore) problems.push("the backend's KV cache was not purged (DELETE /v1/cache not called)");
  return problems;
}

let failed = 0;
for (const [name, run, caps] of CLIENTS) {
  for (const s of SCENARIOS) {
    if (ONLY.size && !ONLY.has(s.name)) continue;
    let problems;
    try {
      const before = (await backendState()).purges;
      const hold = s.hold_model ? await startHold() : null;
      const out = await run(s);
      if (hold) await hold;
      const after = (await backendState()).purges;
      problems = check(s, out, caps, before, after);
    } catch (e) {
      problems = [`harness error: ${e?.stack?.split("\n")[0] ?? e}`];
    }
    if (problems.length) {
      failed++;
      console.log(`FAIL ${name} ${s.name}: ${problems.join("; ")}`);
    } else {
      console.log(`PASS ${name} ${s.name}`);
    }
  }
}
process.exit(failed ? 1 : 0);
