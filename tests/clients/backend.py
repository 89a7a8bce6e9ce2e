#!/usr/bin/env python3
"""Scripted fake backend for the client conformance suite (Python stdlib only).

An OpenAI-compatible model server that streams each scenario's `script` (scenarios.json) as the
model's text, a few characters per SSE event, chosen by the request's `model`. It also checks what
the proxy forwarded and answers with a loud wrong text when something is off (a `/new` that leaked
through, a history that was or was not truncated, a tool-loop history whose ids do not match), so
the clients' content checks catch it.

  python3 backend.py --port 0      prints "listening on 127.0.0.1:PORT" first, then serves

GET /_state answers {"purges": N, "chats": N, "in_flight": {model: N}, "agents": {model: run},
"billing_headers": N} for the checkers (`billing_headers`: requests whose body held Claude Code's
x-anthropic-billing-header, which the proxy must remove).

Agent scenarios (`agent_scenarios` in scenarios.json, used by agents/check.py) are chosen by a
model name `NAME.TAG` and play a model that runs the agent's shell tool once: see agent_reply.

A scenario may also give `tool_calls` (sent as structured `tool_calls` deltas after the script),
`after_tool_script` (the reply once the last message is a tool result; `{result}` is replaced by
its text) and `no_tools_script` (the reply to a request without tools, e.g. an agent's title
request).
"""

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "scenarios.json"), encoding="utf-8") as f:
    SUITE = json.load(f)
SCENARIOS = {s["name"]: s for s in SUITE["scenarios"]}
AGENT_SCENARIOS = {s["name"]: s for s in SUITE.get("agent_scenarios", [])}

LOCK = threading.Lock()
STATE = {"purges": 0, "chats": 0, "in_flight": {}, "agents": {}, "billing_headers": 0}


def pieces(text, size=3):
    """The script split every few characters, so markers straddle events as they do from a model."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def last_user_text(messages):
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return "".join(p.get("text", "") for p in c if isinstance(p, dict))
            return c or ""
    return ""


def reply_text(scenario, body):
    """The model's text for this request, or a loud wrong text when the proxy forwarded badly."""
    messages = body.get("messages") or []
    if "no_tools_script" in scenario and not body.get("tools"):
        return scenario["no_tools_script"]
    if "after_tool_script" in scenario and messages and messages[-1].get("role") == "tool":
        content = messages[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return scenario["after_tool_script"].replace("{result}", str(content))
    prefix = scenario.get("reject_user_prefix")
    if prefix and last_user_text(messages).lstrip().startswith(prefix):
        return "BACKEND SAW THE RESET COMMAND"
    if "backend_checks_truncated" in scenario:
        sent = 2 * scenario["history_turns"] + 2  # system + turns (user, assistant) + the question
        truncated = len(messages) < sent
        if truncated != scenario["backend_checks_truncated"]:
            return "BACKEND GOT %d OF %d MESSAGES" % (len(messages), sent)
    if scenario["name"] == "tool-loop" and messages and messages[-1].get("role") == "tool":
        # The history must carry the call the proxy issued, with the id the tool result answers.
        calls = {}
        for m in messages:
            for c in m.get("tool_calls") or []:
                calls[c.get("id")] = c
        result = messages[-1]
        call = calls.get(result.get("tool_call_id"))
        if call is None:
            return "BACKEND GOT A TOOL RESULT FOR AN UNKNOWN CALL ID"
        try:
            args = json.loads(call["function"]["arguments"])
        except (KeyError, TypeError, ValueError):
            return "BACKEND GOT UNPARSABLE ARGUMENTS IN THE HISTORY"
        content = result.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return "In %s it is %s: take a light rain jacket." % (args.get("city"), content)
    if scenario.get("shell_call"):
        return shell_call_text(scenario, messages, body.get("tools") or [])
    if scenario["name"] == "queued":
        with LOCK:
            busy = STATE["in_flight"].get(scenario.get("hold_model", "hold"), 0)
        if busy:
            return "BACKEND SERVED THE QUEUED REQUEST WHILE THE SLOT WAS TAKEN"
    return scenario["script"]


# --- Agent scenarios ------------------------------------------------------------------------------
# A model that runs the agent's shell tool once and then answers with what the command printed.
# Each run is recorded in STATE["agents"][model] so a checker can tell that the tool really ran:
#   requests   chat requests seen for this model name      side  of them without tools (titles...)
#   issued     calls the model made: {"command", "expect", "format"}
#   verified   tool results that answered an issued call with its id and the real output
#   final      the final answer sent (None until then)          errors  what was wrong, if anything

def agent_scenario(model):
    """The agent scenario for a model name `NAME` or `NAME.TAG`, or None."""
    if not isinstance(model, str):
        return None
    return AGENT_SCENARIOS.get(model.split(".", 1)[0])


def shell_tool(tools):
    """(name, parameters schema) of the request's shell tool: the first whose parameters have a
    `command` property (Qwen Code's run_shell_command, opencode's bash, ...)."""
    for t in tools or []:
        fn = t.get("function") or {}
        params = fn.get("parameters") or {}
        if "command" in (params.get("properties") or {}):
            return fn.get("name"), params
    return None, None


def shell_arguments(params, command):
    """`command` plus a plain value for every other required parameter."""
    args = {"command": command}
    props = params.get("properties") or {}
    for key in params.get("required") or []:
        if key in args:
            continue
        kind = (props.get(key) or {}).get("type")
        args[key] = {"boolean": False, "integer": 60, "number": 60}.get(kind, "Print a product")
    return args


def text_of(content):
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def agent_tool_results(messages):
    """[(call id, issued command, tool result text)] for each tool message in the history that
    answers an assistant tool call with the same id."""
    calls = {}
    for m in messages:
        for c in m.get("tool_calls") or []:
            try:
                args = json.loads((c.get("function") or {}).get("arguments") or "{}")
            except ValueError:
                args = {}
            calls[c.get("id")] = args.get("command") if isinstance(args, dict) else None
    out = []
    for m in messages:
        if m.get("role") == "tool":
            cid = m.get("tool_call_id")
            out.append((cid, calls.get(cid), text_of(m.get("content"))))
    return out


def render_call(fmt, name, args):
    """The call as the model writes it in a text format (the structured one is sent as deltas)."""
    if fmt == "hermes":
        return "<tool_call>\n%s\n</tool_call>" % json.dumps({"name": name, "arguments": args})
    if fmt == "toolcall-line":
        return "TOOL_CALL: %s" % json.dumps({"name": name, "arguments": args})
    if fmt == "xml-function":
        params = "".join("<parameter=%s>\n%s\n</parameter>\n" % (k, json.dumps(v) if not isinstance(v, str) else v) for k, v in args.items())
        return "<tool_call>\n<function=%s>\n%s</function>\n</tool_call>" % (name, params)
    raise ValueError("unknown format %r" % fmt)


def agent_reply(scenario, body):
    """(text, structured call or None) for one request of an agent run, recording the run."""
    model = body.get("model")
    messages = body.get("messages") or []
    with LOCK:
        run = STATE["agents"].setdefault(model, {
            "requests": 0, "side": 0, "issued": [], "verified": [], "final": None, "errors": []})
        run["requests"] += 1
    name, params = shell_tool(body.get("tools"))
    if name is None:
        # A side request (a session title, a summary): a short plain answer.
        with LOCK:
            run["side"] += 1
        return "Product check", None
    results = agent_tool_results(messages)
    if results:
        cid, command, output = results[-1]
        with LOCK:
            issued = {c["command"]: c for c in run["issued"]}
        call = issued.get(command)
        if call is None:
            error = "BACKEND GOT A TOOL RESULT FOR A CALL IT DID NOT MAKE (id %r, command %r)" % (cid, command)
        elif call["expect"] not in output:
            error = "BACKEND GOT A TOOL RESULT WITHOUT THE COMMAND'S OUTPUT (id %r): %r" % (cid, output[:200])
        else:
            error = None
        with LOCK:
            if error:
                run["errors"].append(error)
            else:
                run["verified"].append({"id": cid, "expect": call["expect"]})
                run["final"] = "Done: the command printed %s." % call["expect"]
        return (error or run["final"]), None
    a, b = random.randint(10000, 99999), random.randint(10000, 99999)
    command = "expr %d \\* %d" % (a, b)
    args = shell_arguments(params, command)
    with LOCK:
        run["issued"].append({"command": command, "expect": str(a * b), "format": scenario["format"]})
    before = scenario.get("before", "")
    if scenario["format"] == "structured":
        cid = "call_%016x" % random.getrandbits(64)
        return before, {"id": cid, "name": name, "arguments": json.dumps(args)}
    return before + render_call(scenario["format"], name, args), None

def shell_call_text(scenario, messages, tools):
    """An agent's shell turn (Codex): ask for the command as a text tool call for whichever
    shell tool the agent offers; once its output comes back, answer with `final`."""
    if messages and messages[-1].get("role") == "tool":
        content = messages[-1].get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if scenario["expect_output"] not in (content or ""):
            return "BACKEND DID NOT GET THE COMMAND OUTPUT: %r" % content
        return scenario["final"]
    names = [(t.get("function") or {}).get("name") for t in tools]
    command = scenario["command"]
    if "shell_command" in names:
        name, args = "shell_command", {"command": command}
    elif "exec_command" in names:
        name, args = "exec_command", {"cmd": command}
    elif "shell" in names:
        name, args = "shell", {"command": ["bash", "-lc", command]}
    else:
        return "BACKEND GOT NO SHELL TOOL, ONLY %r" % names
    return "<tool_call>\n%s\n</tool_call>" % json.dumps({"name": name, "arguments": args})


def chunk(delta, finish=None, usage=None):
    c = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        c["usage"] = usage
    return ("data: %s\n\n" % json.dumps(c)).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the suite prints its own summary
        pass

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self.send_json(200, {"object": "list", "data": [
                {"id": n, "object": "model", "owned_by": "blockops-clients"} for n in list(SCENARIOS) + list(AGENT_SCENARIOS)
            ]})
        elif self.path == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path == "/_state":
            with LOCK:
                self.send_json(200, STATE)
        else:
            self.send_json(404, {"error": {"message": "no such path", "type": "not_found"}})

    def do_DELETE(self):
        if self.path.rstrip("/") == "/v1/cache":
            with LOCK:
                STATE["purges"] += 1
            self.send_json(200, {"status": "ok", "cleared": True})
        else:
            self.send_json(404, {"error": {"message": "no such path", "type": "not_found"}})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if b"x-anthropic-billing-header" in raw:
            with LOCK:
                STATE["billing_headers"] += 1
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self.send_json(404, {"error": {"message": "no such path", "type": "not_found"}})
            return
        scenario = SCENARIOS.get(body.get("model")) or agent_scenario(body.get("model"))
        if scenario is None and isinstance(body.get("model"), str):
            # `NAME.TAG` plays NAME: two backends behind aliases serve one scenario (routing.py).
            scenario = SCENARIOS.get(body["model"].split(".", 1)[0])
        if scenario is None:
            self.send_json(404, {"error": {"message": "unknown scenario %r" % body.get("model"), "type": "not_found"}})
            return
        name = scenario["name"]
        self.left = False
        with LOCK:
            STATE["chats"] += 1
            STATE["in_flight"][name] = STATE["in_flight"].get(name, 0) + 1
        try:
            self.stream(scenario, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the proxy went away (a client cancelled): nothing to do
        finally:
            self.leave(name)

    def leave(self, name):
        # Once per request, whichever comes first: just before [DONE], or the handler's end.
        if getattr(self, "left", False):
            return
        self.left = True
        with LOCK:
            STATE["in_flight"][name] -= 1

    def stream(self, scenario, body):
        if scenario["name"] in AGENT_SCENARIOS:
            text, call = agent_reply(scenario, body)
        else:
            text, call = reply_text(scenario, body), None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        time.sleep(scenario.get("delay_first_byte_secs", 0))
        self.write_chunk(chunk({"role": "assistant", "content": ""}))
        for p in pieces(text):
            self.write_chunk(chunk({"content": p}))
        if scenario.get("cut_after_script"):
            # Drop the connection mid-reply: no finish chunk, no [DONE], no terminating chunk.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        calls = [call] if call is not None else []
        if not calls and (body.get("messages") or [{}])[-1].get("role") != "tool":
            # A scenario's own structured calls (after a tool result the model answers in text).
            calls = [{"id": "call_struct%d" % i, "name": c["name"], "arguments": json.dumps(c["arguments"])}
                     for i, c in enumerate(scenario.get("tool_calls") or [])]
        for i, c in enumerate(calls):
            # Structured tool_calls deltas, as a server with its own tool parser streams them.
            self.write_chunk(chunk({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                                    "function": {"name": c["name"], "arguments": ""}}]}))
            for p in pieces(c["arguments"], 8):
                self.write_chunk(chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}))
        n = len(pieces(text))
        self.write_chunk(chunk({}, "tool_calls" if calls else "stop", {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": 20 + n,
                                                                   "prompt_tokens_details": {"cached_tokens": 8}}))
        # Leave the in-flight count before the last frame: once the proxy has seen [DONE] it may
        # admit the next request, and that one must not find this one still counted.
        self.leave(scenario["name"])
        self.write_chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
