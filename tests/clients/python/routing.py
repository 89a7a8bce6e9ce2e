#!/usr/bin/env python3
"""One scenario through two backends behind aliases (issue 17), with the OpenAI Python SDK.

  routing.py --bin PATH/blockops-proxy

Starts two fake backends (backend.py) and a proxy whose config file has two `[[backends]]` and
two `[[aliases]]`: `claude-*haiku*` goes to the small backend as `hermes.small`, any other
`claude-*` to the big one as `hermes`. Runs the `hermes` scenario (create and stream) under both
names and checks the tool calls, the model name the client sees, which backend served each
request, and the `/v1/models` union. One `PASS`/`FAIL` line per case; run.sh counts them.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check import BY_NAME, TOOLS, messages_for, parse_args  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def wait_until(what, f, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = f()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def start_backend(procs):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "backend.py"), "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("listening on "):
        raise RuntimeError("the fake backend did not start: %r" % line)
    return "http://" + line.split("listening on ", 1)[1].strip()


CONFIG = """
[[backends]]
name = "big"
url = "{big}"
models = ["hermes"]

[[backends]]
name = "small"
url = "{small}"
models = ["*.small"]
max_queue = 0

[[aliases]]
match = "claude-*haiku*"
model = "hermes.small"

[[aliases]]
match = "claude-*"
model = "hermes"
"""


def run(proxy, model, stream):
    from openai import OpenAI
    client = OpenAI(base_url=proxy + "/v1", api_key="unused", max_retries=0, timeout=30)
    s = BY_NAME["hermes"]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages_for(s), tools=TOOLS)
        calls = [(c.function.name, parse_args(c.function.arguments)) for c in reply.choices[0].message.tool_calls or []]
        return reply.model, calls
    with client.chat.completions.stream(model=model, messages=messages_for(s), tools=TOOLS) as st:
        final = st.get_final_completion()
    calls = [(c.function.name, parse_args(c.function.arguments)) for c in final.choices[0].message.tool_calls or []]
    return final.model, calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    procs = []
    failed = 0
    try:
        big, small = start_backend(procs), start_backend(procs)
        work = tempfile.mkdtemp()
        config = os.path.join(work, "config.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(big=big, small=small))
        port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "HOME": work, "RUST_LOG": "warn", "PORT": str(port),
               "BLOCKOPS_CONFIG": config, "BLOCKOPS_LOG_FILE": os.path.join(work, "traffic.log"),
               "MEMORY_WARN_PERCENT": "99", "MEMORY_CRITICAL_PERCENT": "100"}
        procs.append(subprocess.Popen([args.bin], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        proxy = "http://127.0.0.1:%d" % port
        wait_until("the proxy", lambda: get_json(proxy + "/health"))
        expected = [(c["name"], c["arguments"]) for c in BY_NAME["hermes"]["expect"]["calls"]]
        for model, backend in [("claude-3-5-haiku-latest", small), ("claude-sonnet-4-5", big)]:
            for stream in (False, True):
                case = "routing %s %s" % ("stream" if stream else "create", model)
                before = get_json(backend + "/_state")["chats"]
                try:
                    shown, calls = run(proxy, model, stream)
                    problems = []
                    if calls != expected:
                        problems.append("calls %r, expected %r" % (calls, expected))
                    if shown != model:
                        problems.append("the reply names %r, not the requested %r" % (shown, model))
                    if get_json(backend + "/_state")["chats"] != before + 1:
                        problems.append("the request did not reach the backend its alias names")
                except Exception as e:  # the SDK's errors, reported as the case's failure
                    problems = ["raised %s: %s" % (type(e).__name__, e)]
                failed += bool(problems)
                print(("FAIL %s: %s" % (case, "; ".join(problems))) if problems else "PASS " + case, flush=True)
        models = get_json(proxy + "/v1/models")["data"]
        owners = {m["id"]: m["owned_by"] for m in models}
        problems = []
        if owners.get("hermes") != "big":
            problems.append("hermes is not listed as big's: %r" % owners.get("hermes"))
        if any("*" in m for m in owners):
            problems.append("a glob is listed as a model")
        failed += bool(problems)
        print(("FAIL routing models: " + "; ".join(problems)) if problems else "PASS routing models", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
