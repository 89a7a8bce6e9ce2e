#!/usr/bin/env python3
"""Python clients against a running blockops-proxy: what each SDK made of every scenario.

  check.py --proxy http://127.0.0.1:PORT --backend http://127.0.0.1:PORT [--only NAME,...]

Clients: the OpenAI SDK's `ChatCompletion` (create) and its `chat.completions.stream()` helper
(accumulated tool calls, `get_final_completion()`), LangChain's `ChatOpenAI.bind_tools` with
`invoke` and with `stream` (chunks summed into one AIMessage), and a raw SSE reader that checks
what no SDK shows (heartbeat comments while the backend is silent). Prints one `PASS`/`FAIL` line
per client and scenario; run.sh counts them. Exit status 1 when any failed.
"""

import argparse
import json
import os
import sys
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "..", "scenarios.json"), encoding="utf-8") as f:
    SUITE = json.load(f)
TOOLS = SUITE["tools"]
SCENARIOS = [s for s in SUITE["scenarios"] if not s.get("helper")]
BY_NAME = {s["name"]: s for s in SUITE["scenarios"]}
SYSTEM = "You are a weather assistant. Use the tools."


def messages_for(s):
    """system, then `history_turns` long user/assistant turns, then the question."""
    msgs = [{"role": "system", "content": SYSTEM}]
    for i in range(s.get("history_turns", 0)):
        filler = ("turn %d: " % i) + ("lorem ipsum dolor sit amet " * (s["history_turn_bytes"] // 27 + 1))
        msgs.append({"role": "user", "content": filler[: s["history_turn_bytes"]]})
        msgs.append({"role": "assistant", "content": "Noted (%d)." % i})
    msgs.append({"role": "user", "content": s["user"]})
    return msgs


class Outcome:
    """What a client ended with: content, reasoning (None when the client has no place for it),
    calls as (name, parsed arguments), the final answer of a tool loop, the error it raised."""

    def __init__(self):
        self.content = ""
        self.reasoning = None
        self.calls = []
        self.final_content = None
        self.error = None  # (kind, message); kind "api" for the SDK's own API error class
        self.partial = ""


def parse_args(text):
    try:
        return json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return {"<unparsable>": text}


# ---------------------------------------------------------------------------------------------
# HTTP helpers for the harness itself (not a client under test)

def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def backend_state(backend):
    return get_json(backend + "/_state")


def start_hold(proxy, backend):
    """Takes the proxy's only slot with the `hold` scenario; returns the thread. Waits (bounded)
    until the backend is serving it, so the next request must queue."""
    hold = BY_NAME["hold"]
    body = json.dumps({"model": "hold", "stream": True, "messages": messages_for(hold)}).encode()

    def run():
        req = urllib.request.Request(proxy + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
        except Exception:  # the queued check reports what matters
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if backend_state(backend)["in_flight"].get("hold", 0) > 0:
            return t
        time.sleep(0.02)
    raise RuntimeError("the hold request never reached the backend")


# ---------------------------------------------------------------------------------------------
# Clients

def openai_client(proxy):
    from openai import OpenAI
    return OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=30)


def openai_error(e):
    import openai
    if isinstance(e, openai.APIError):
        return ("api", str(e))
    return ("other", "%s: %s" % (type(e).__name__, e))


def run_openai_create(proxy, s):
    client = openai_client(proxy)
    out = Outcome()
    msgs = messages_for(s)
    try:
        reply = client.chat.completions.create(model=s["name"], messages=msgs, tools=TOOLS)
        msg = reply.choices[0].message
        out.content = msg.content or ""
        if not isinstance(msg.content, (str, type(None))):
            out.content = repr(msg.content)
        out.reasoning = (msg.model_extra or {}).get("reasoning_content")
        out.calls = [(c.function.name, parse_args(c.function.arguments)) for c in msg.tool_calls or []]
        if "tool_result" in s and msg.tool_calls:
            msgs.append(msg.model_dump(exclude_none=True))
            for c in msg.tool_calls:
                msgs.append({"role": "tool", "tool_call_id": c.id, "content": s["tool_result"]})
            again = client.chat.completions.create(model=s["name"], messages=msgs, tools=TOOLS)
            out.final_content = again.choices[0].message.content
    except Exception as e:
        out.error = openai_error(e)
    return out


def run_openai_stream(proxy, s):
    client = openai_client(proxy)
    out = Outcome()
    msgs = messages_for(s)
    try:
        with client.chat.completions.stream(model=s["name"], messages=msgs, tools=TOOLS) as stream:
            for event in stream:
                if event.type == "content.delta":
                    out.partial += event.delta
            final = stream.get_final_completion()
        msg = final.choices[0].message
        out.content = msg.content or ""
        out.reasoning = (msg.model_extra or {}).get("reasoning_content")
        out.calls = [(c.function.name, parse_args(c.function.arguments)) for c in msg.tool_calls or []]
        if "tool_result" in s and msg.tool_calls:
            msgs.append({"role": "assistant", "content": msg.content, "tool_calls": [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in msg.tool_calls]})
            for c in msg.tool_calls:
                msgs.append({"role": "tool", "tool_call_id": c.id, "content": s["tool_result"]})
            with client.chat.completions.stream(model=s["name"], messages=msgs, tools=TOOLS) as stream:
                for _ in stream:
                    pass
                out.final_content = stream.get_final_completion().choices[0].message.content
    except Exception as e:
        out.error = openai_error(e)
    return out


def lc_messages(msgs):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m["role"]](content=m["content"]) for m in msgs]


def lc_model(proxy, s):
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(model=s["name"], base_url=proxy + "/v1", api_key="unused",
                      max_retries=0, timeout=30).bind_tools(TOOLS)


def lc_fill(out, msg):
    out.content = msg.content if isinstance(msg.content, str) else repr(msg.content)
    out.calls = [(c["name"], c["args"]) for c in msg.tool_calls]
    if getattr(msg, "invalid_tool_calls", None):
        out.calls += [("<invalid>", c.get("args")) for c in msg.invalid_tool_calls]
    rc = (msg.additional_kwargs or {}).get("reasoning_content")
    out.reasoning = rc


def run_langchain(proxy, s, streaming):
    from langchain_core.messages import ToolMessage
    out = Outcome()
    try:
        model = lc_model(proxy, s)
        history = lc_messages(messages_for(s))

        def ask(msgs):
            if not streaming:
                return model.invoke(msgs)
            acc = None
            for chunk in model.stream(msgs):
                if isinstance(chunk.content, str):
                    out.partial += chunk.content
                acc = chunk if acc is None else acc + chunk
            return acc

        msg = ask(history)
        lc_fill(out, msg)
        if "tool_result" in s and msg.tool_calls:
            history.append(msg)
            for c in msg.tool_calls:
                history.append(ToolMessage(content=s["tool_result"], tool_call_id=c["id"]))
            out.final_content = ask(history).content
    except Exception as e:
        out.error = openai_error(e)
    return out


def run_raw_sse(proxy, s):
    """The bytes on the wire: heartbeats while the backend is silent, and a well-formed stream."""
    out = Outcome()
    body = json.dumps({"model": s["name"], "stream": True, "messages": messages_for(s),
                       "tools": TOOLS}).encode()
    req = urllib.request.Request(proxy + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    beats_before_data = 0
    seen_data = False
    calls = {}
    with urllib.request.urlopen(req, timeout=30) as r:
        for raw in r:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith(":"):
                if not seen_data:
                    beats_before_data += 1
                continue
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            seen_data = True
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                out.error = ("api", obj["error"].get("message", ""))
                continue
            for ch in obj.get("choices", []):
                d = ch.get("delta") or {}
                out.content += d.get("content") or ""
                if d.get("reasoning_content"):
                    out.reasoning = (out.reasoning or "") + d["reasoning_content"]
                for tc in d.get("tool_calls") or []:
                    c = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                    f = tc.get("function") or {}
                    c["name"] += f.get("name") or ""
                    c["arguments"] += f.get("arguments") or ""
    out.partial = out.content
    out.calls = [(c["name"], parse_args(c["arguments"])) for _, c in sorted(calls.items())]
    out.beats_before_data = beats_before_data
    return out


CLIENTS = [
    ("py-openai.create", run_openai_create, {"reasoning": True}),
    ("py-openai.stream", run_openai_stream, {"reasoning": True, "streaming": True}),
    ("py-langchain.invoke", lambda p, s: run_langchain(p, s, False), {}),
    ("py-langchain.stream", lambda p, s: run_langchain(p, s, True), {"streaming": True}),
    ("raw-sse", run_raw_sse, {"reasoning": True, "streaming": True, "raw": True}),
]


# ---------------------------------------------------------------------------------------------
# Checking

def check(s, out, caps, purges_before, purges_after):
    """The differences between what the client ended with and what the scenario expects."""
    e = s["expect"]
    problems = []
    if e.get("error"):
        if out.error is None:
            problems.append("expected the SDK's API error, got none (content %r)" % out.content)
        elif out.error[0] != "api":
            problems.append("raised something other than the SDK's API error: %s" % out.error[1])
        elif "backend" not in out.error[1]:
            problems.append("the error does not say the backend failed: %s" % out.error[1])
        if caps.get("streaming") and out.partial != e["partial_content"]:
            problems.append("text before the error %r, expected %r" % (out.partial, e["partial_content"]))
        return problems
    if out.error is not None:
        return ["raised %s" % out.error[1]]
    if not isinstance(out.content, str):
        problems.append("content is not a string: %r" % (out.content,))
    if "content" in e and out.content != e["content"]:
        problems.append("content %r, expected %r" % (out.content, e["content"]))
    for part in e.get("content_has", []):
        if part not in out.content:
            problems.append("content %r lacks %r" % (out.content, part))
    if "content_ends" in e and not out.content.endswith(e["content_ends"]):
        problems.append("content %r does not end with %r" % (out.content, e["content_ends"]))
    if "content_ends" in e and e["content_ends"] == "" and out.content.strip().startswith("BACKEND"):
        problems.append("content %r" % out.content)
    expected_calls = [(c["name"], c["arguments"]) for c in e.get("calls", [])]
    if out.calls != expected_calls:
        problems.append("calls %r, expected %r" % (out.calls, expected_calls))
    if "reasoning" in e and caps.get("reasoning") and out.reasoning != e["reasoning"]:
        problems.append("reasoning %r, expected %r" % (out.reasoning, e["reasoning"]))
    if "final_content" in e and not caps.get("raw") and out.final_content != e["final_content"]:
        problems.append("tool loop answer %r, expected %r" % (out.final_content, e["final_content"]))
    if e.get("purged") and purges_after <= purges_before:
        problems.append("the backend's KV cache was not purged (DELETE /v1/cache not called)")
    if caps.get("raw") and s.get("delay_first_byte_secs", 0) >= 1.5:
        # One comment at once, then one per HEARTBEAT_INTERVAL_SECS (0.5 s in the suite).
        if getattr(out, "beats_before_data", 0) < 3:
            problems.append("%d heartbeat comments before the first event, expected at least 3"
                            % getattr(out, "beats_before_data", 0))
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    failed = 0
    for client_name, run, caps in CLIENTS:
        for s in SCENARIOS:
            if only and s["name"] not in only:
                continue
            case = "%s %s" % (client_name, s["name"])
            try:
                before = backend_state(args.backend)["purges"]
                hold = start_hold(args.proxy, args.backend) if s.get("hold_model") else None
                out = run(args.proxy, s)
                if hold is not None:
                    hold.join(30)
                after = backend_state(args.backend)["purges"]
                problems = check(s, out, caps, before, after)
            except Exception:
                problems = ["harness error: " + traceback.format_exc().strip().splitlines()[-1]]
            if problems:
                failed += 1
                print("FAIL %s: %s" % (case, "; ".join(problems)), flush=True)
            else:
                print("PASS %s" % case, flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
