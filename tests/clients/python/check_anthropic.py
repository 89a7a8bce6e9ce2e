#!/usr/bin/env python3
"""The `anthropic` Python SDK against a running blockops-proxy's Messages front door.

  check_anthropic.py --proxy http://127.0.0.1:PORT --backend http://127.0.0.1:PORT [--only NAME,...]

Clients: `messages.create` (a whole `Message`), `messages.stream` (events, then
`get_final_message()`), and a raw SSE reader that checks what the SDK hides (pings while the
backend is silent, block indexes, a thinking block's signature). Every scenario of
scenarios.json runs through each, compared with the same expectations as the chat clients
(check.py's `check`). Then single cases: the stop sequence, count_tokens, the error shapes, the
billing header never reaching the backend. Prints one PASS/FAIL line each.
"""

import argparse
import json
import sys
import traceback
import urllib.error
import urllib.request

import check as chat  # the chat suite's scenarios, outcome and expectations

SCENARIOS = chat.SCENARIOS
TOOLS = [
    {"name": t["function"]["name"], "description": t["function"].get("description", ""),
     "input_schema": t["function"]["parameters"]}
    for t in chat.TOOLS
]
MAX_TOKENS = 1024


def anthropic_messages(s):
    """check.py's chat history as Messages: the system prompt apart, the turns as they are."""
    msgs = chat.messages_for(s)
    return msgs[0]["content"], [{"role": m["role"], "content": m["content"]} for m in msgs[1:]]


def client(proxy):
    import anthropic
    return anthropic.Anthropic(base_url=proxy, api_key="unused", max_retries=0, timeout=30)


def api_error(e):
    import anthropic
    if isinstance(e, anthropic.APIError):
        return ("api", str(e))
    return ("other", "%s: %s" % (type(e).__name__, e))


def fill(out, message):
    """A final Message into an Outcome: text, thinking, tool_use as (name, input object)."""
    texts, thinking = [], []
    for b in message.content:
        if b.type == "text":
            texts.append(b.text)
        elif b.type == "thinking":
            thinking.append(b.thinking)
            if not b.signature:
                raise AssertionError("a thinking block without a signature")
        elif b.type == "tool_use":
            if not isinstance(b.input, dict):
                raise AssertionError("tool_use input is %r, not an object" % type(b.input))
            if not b.id.startswith("toolu_"):
                raise AssertionError("tool_use id %r does not start with toolu_" % b.id)
            out.calls.append((b.name, b.input))
    out.content = "".join(texts)
    out.reasoning = "".join(thinking) if thinking else None
    want = "tool_use" if out.calls else "end_turn"
    if message.stop_reason != want:
        raise AssertionError("stop_reason %r, expected %r" % (message.stop_reason, want))


def tool_loop_turns(message, result):
    """The assistant turn as the SDK returned it, then the tool results for its calls."""
    assistant = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}
    results = [{"type": "tool_result", "tool_use_id": b.id, "content": result}
               for b in message.content if b.type == "tool_use"]
    return [assistant, {"role": "user", "content": results}]


def final_message(c, s, system, msgs, streaming, out):
    """One request through `messages.create` or `messages.stream`; the final Message."""
    params = dict(model=s["name"], max_tokens=MAX_TOKENS, system=system, messages=msgs, tools=TOOLS)
    if not streaming:
        return c.messages.create(**params)
    with c.messages.stream(**params) as stream:
        for event in stream:
            if event.type == "text":
                out.partial += event.text
        return stream.get_final_message()


def run_sdk(proxy, s, streaming):
    out = chat.Outcome()
    system, msgs = anthropic_messages(s)
    c = client(proxy)
    try:
        m = final_message(c, s, system, msgs, streaming, out)
        if m.model != s["name"]:
            raise AssertionError("model %r, expected the requested %r" % (m.model, s["name"]))
        fill(out, m)
        if "tool_result" in s and out.calls:
            msgs += tool_loop_turns(m, s["tool_result"])
            again = final_message(c, s, system, msgs, streaming, chat.Outcome())
            out.final_content = "".join(b.text for b in again.content if b.type == "text")
    except AssertionError:
        raise
    except Exception as e:
        out.error = api_error(e)
    return out


def post(proxy, path, body, headers=None):
    """(status, headers, body bytes) of a POST; error statuses are answers too."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    h.update(headers or {})
    req = urllib.request.Request(proxy + path, data=data, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def sse_events(raw):
    """(name, data) pairs of an SSE body."""
    events = []
    for block in raw.decode("utf-8").split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
        if name:
            events.append((name, data))
    return events


def run_raw(proxy, s):
    """The wire: message_start first, pings before the first block while the backend is silent,
    sequential block indexes with matching deltas, signed thinking, no [DONE]."""
    out = chat.Outcome()
    system, msgs = anthropic_messages(s)
    status, _, raw = post(proxy, "/v1/messages?beta=true", {
        "model": s["name"], "max_tokens": MAX_TOKENS, "stream": True, "system": system,
        "messages": msgs, "tools": TOOLS})
    if status != 200:
        out.error = ("api", raw.decode("utf-8", "replace"))
        return out
    if b"[DONE]" in raw:
        raise AssertionError("the stream has a [DONE] line")
    events = sse_events(raw)
    if events[0][0] != "message_start" or "usage" not in events[0][1]["message"]:
        raise AssertionError("the stream does not start with message_start and its usage")
    blocks, open_block, pings, seen_block = [], None, 0, False
    calls_json = {}
    for name, d in events:
        if name == "ping" and not seen_block:
            pings += 1
        elif name == "content_block_start":
            seen_block = True
            if open_block is not None or d["index"] != len(blocks):
                raise AssertionError("block %s starts out of order" % d["index"])
            open_block = d["content_block"]
            open_block["signed"] = False
            blocks.append(open_block)
        elif name == "content_block_delta":
            if open_block is None or d["index"] != len(blocks) - 1:
                raise AssertionError("a delta for a block that is not open")
            kind, dt = open_block["type"], d["delta"]["type"]
            ok = {"text": ("text_delta",), "thinking": ("thinking_delta", "signature_delta"),
                  "tool_use": ("input_json_delta",)}[kind]
            if dt not in ok:
                raise AssertionError("%s in a %s block" % (dt, kind))
            if dt == "text_delta":
                out.content += d["delta"]["text"]
            elif dt == "thinking_delta":
                out.reasoning = (out.reasoning or "") + d["delta"]["thinking"]
            elif dt == "signature_delta":
                open_block["signed"] = True
            else:
                calls_json[d["index"]] = calls_json.get(d["index"], "") + d["delta"]["partial_json"]
        elif name == "content_block_stop":
            if open_block is None:
                raise AssertionError("a stop without a start")
            if open_block["type"] == "thinking" and not open_block["signed"]:
                raise AssertionError("a thinking block closed without a signature_delta")
            open_block = None
        elif name == "error":
            out.error = ("api", d["error"]["message"])
    for i, b in enumerate(blocks):
        if b["type"] == "tool_use":
            out.calls.append((b["name"], chat.parse_args(calls_json.get(i, "{}"))))
    out.partial = out.content
    out.beats_before_data = pings
    if out.error is None and [n for n, _ in events[-2:]] != ["message_delta", "message_stop"]:
        raise AssertionError("the stream does not end with message_delta, message_stop")
    return out


CLIENTS = [
    ("py-anthropic.create", lambda p, s: run_sdk(p, s, False), {"reasoning": True}),
    ("py-anthropic.stream", lambda p, s: run_sdk(p, s, True), {"reasoning": True, "streaming": True}),
    ("raw-messages", run_raw, {"reasoning": True, "streaming": True, "raw": True}),
]


# ---------------------------------------------------------------------------------------------
# Single cases: each returns a list of problems.

def case_stop_sequence(proxy, backend):
    problems = []
    s = chat.BY_NAME["stop-sequence"]
    c = client(proxy)
    m = c.messages.create(model=s["name"], max_tokens=MAX_TOKENS, stop_sequences=["END"],
                          messages=[{"role": "user", "content": s["user"]}])
    text = "".join(b.text for b in m.content if b.type == "text")
    if (m.stop_reason, m.stop_sequence, text) != ("stop_sequence", "END", s["expect"]["content"]):
        problems.append("create: %r %r %r" % (m.stop_reason, m.stop_sequence, text))
    with c.messages.stream(model=s["name"], max_tokens=MAX_TOKENS, stop_sequences=["END"],
                           messages=[{"role": "user", "content": s["user"]}]) as stream:
        m = stream.get_final_message()
    text = "".join(b.text for b in m.content if b.type == "text")
    if (m.stop_reason, m.stop_sequence, text) != ("stop_sequence", "END", s["expect"]["content"]):
        problems.append("stream: %r %r %r" % (m.stop_reason, m.stop_sequence, text))
    return problems


def case_count_tokens(proxy, backend):
    s = chat.BY_NAME["hermes"]
    system, msgs = anthropic_messages(s)
    r = client(proxy).messages.count_tokens(model=s["name"], system=system, messages=msgs, tools=TOOLS)
    small = client(proxy).messages.count_tokens(model=s["name"], messages=[{"role": "user", "content": "hi"}])
    if not (isinstance(r.input_tokens, int) and r.input_tokens > small.input_tokens > 0):
        return ["input_tokens %r (with system and tools) vs %r (one word)" % (r.input_tokens, small.input_tokens)]
    return []


def case_errors(proxy, backend):
    import anthropic
    problems = []
    c = client(proxy)
    try:
        c.messages.create(model="hermes", max_tokens=MAX_TOKENS, messages="not a list")
        problems.append("a bad body was accepted")
    except anthropic.BadRequestError as e:
        if e.body["error"]["type"] != "invalid_request_error" or "messages" not in e.body["error"]["message"]:
            problems.append("bad body: %r" % e.body)
    try:
        c.messages.create(model="no-such-model", max_tokens=MAX_TOKENS,
                          messages=[{"role": "user", "content": "hi"}])
        problems.append("an unknown model was answered")
    except anthropic.NotFoundError as e:
        if e.body["error"]["type"] != "not_found_error":
            problems.append("unknown model: %r" % e.body)
    for body, why in [(b"{not json", "not valid JSON"),
                      (json.dumps({"model": "hermes", "messages": []}).encode(), "max_tokens")]:
        status, _, raw = post(proxy, "/v1/messages", body)
        got = json.loads(raw)
        if status != 400 or got.get("type") != "error" or got["error"]["type"] != "invalid_request_error" \
                or why not in got["error"]["message"]:
            problems.append("%s: %s %r" % (why, status, got))
    return problems


def case_billing_header(proxy, backend):
    before = chat.backend_state(backend)["billing_headers"]
    c = client(proxy)
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.9a2; cc_entrypoint=sdk-cli;"},
              {"type": "text", "text": chat.SYSTEM}]
    m = c.messages.create(model="hermes", max_tokens=MAX_TOKENS, system=system, tools=TOOLS,
                          messages=[{"role": "user", "content": "What is the weather in Paris?"},
                                    {"role": "system", "content": "x-anthropic-billing-header: cc_version=2"}])
    after = chat.backend_state(backend)["billing_headers"]
    problems = []
    if after != before:
        problems.append("the backend saw the billing header")
    if [b.type for b in m.content] != ["tool_use"]:
        problems.append("content %r" % [b.type for b in m.content])
    return problems


CASES = [
    ("py-anthropic stop-sequence", case_stop_sequence),
    ("py-anthropic count_tokens", case_count_tokens),
    ("py-anthropic errors", case_errors),
    ("py-anthropic billing-header", case_billing_header),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    failed = 0

    def report(case, problems):
        nonlocal failed
        if problems:
            failed += 1
            print("FAIL %s: %s" % (case, "; ".join(problems)), flush=True)
        else:
            print("PASS %s" % case, flush=True)

    for client_name, run, caps in CLIENTS:
        for s in SCENARIOS:
            if only and s["name"] not in only:
                continue
            case = "%s %s" % (client_name, s["name"])
            try:
                before = chat.backend_state(args.backend)["purges"]
                hold = chat.start_hold(args.proxy, args.backend) if s.get("hold_model") else None
                out = run(args.proxy, s)
                if hold is not None:
                    hold.join(30)
                after = chat.backend_state(args.backend)["purges"]
                problems = chat.check(s, out, caps, before, after)
            except AssertionError as e:
                problems = [str(e)]
            except Exception:
                problems = ["harness error: " + traceback.format_exc().strip().splitlines()[-1]]
            report(case, problems)
    for case, run in CASES:
        if only and case.split(" ", 1)[1] not in only:
            continue
        try:
            problems = run(args.proxy, args.backend)
        except Exception:
            problems = ["harness error: " + traceback.format_exc().strip().splitlines()[-1]]
        report(case, problems)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
