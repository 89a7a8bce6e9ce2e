"""blockops in front of the real mlx_lm.server, on a tiny model built here (build_model.py) whose
replies are scripted (site/sitecustomize.py). Ends with "mlx: N passed, M failed".

    python check.py --proxy-bin PATH --launcher PATH --work DIR

Servers: stock mlx_lm.server on a Qwen3-Coder-style model (its Hugging Face cache folder
missing, as on a fresh machine), and scripts/mlx-raw-server on a Qwen3-Coder-style and a
Hermes-style model. Each has its own blockops in front.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_model  # noqa: E402

MARK = "271"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
WANT_ARGS = {"city": "Paris", "days": 3}

CODER_CALL = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
)
# An integer parameter written as `all`: mlx-lm's qwen3_coder parser raises, the call is dropped.
CODER_BAD = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
    "<parameter=days>\nall\n</parameter>\n</function>\n</tool_call>"
)
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
# A call written before </think>: with the parser off it stays in the reasoning field.
THINK_CALL = "<think>\nThe user wants the weather.\n" + CODER_CALL + "\n</think>\n\n"
SCRIPTS = [CODER_CALL, CODER_BAD, HERMES_CALL, THINK_CALL, "Hello there, no call."]
S_CODER, S_BAD, S_HERMES, S_THINK, S_PLAIN = range(len(SCRIPTS))

results = []


def case(name):
    def wrap(f):
        def run(*a):
            try:
                f(*a)
                results.append((name, None))
                print(f"ok   {name}", flush=True)
            except Exception as e:  # a failed check is reported, the others still run
                results.append((name, e))
                print(f"FAIL {name}: {e}", flush=True)
                if os.environ.get("MLX_TRACE"):
                    traceback.print_exc()

        return run

    return wrap


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(url, what, proc, log, secs=90):
    deadline = time.time() + secs
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {Path(log).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {secs} s: {Path(log).read_text()[-2000:]}")


def chat(base, script, stream, tools=True):
    body = {
        "model": "default_model",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "logit_bias": {MARK: script},
        "max_tokens": 400,
        "stream": stream,
    }
    if tools:
        body["tools"] = TOOLS
    status, text = http("POST", f"{base}/v1/chat/completions", body)
    assert status == 200, f"HTTP {status}: {text[:500]}"
    if not stream:
        return json.loads(text)
    # Folds the stream the way an OpenAI SDK does.
    msg = {"content": "", "reasoning": "", "tool_calls": {}}
    finish = None
    for line in text.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        for c in chunk.get("choices", []):
            d = c.get("delta", {})
            msg["content"] += d.get("content") or ""
            msg["reasoning"] += d.get("reasoning_content") or d.get("reasoning") or ""
            for tc in d.get("tool_calls") or []:
                slot = msg["tool_calls"].setdefault(tc["index"], {"name": "", "arguments": ""})
                f = tc.get("function", {})
                slot["name"] += f.get("name") or ""
                slot["arguments"] += f.get("arguments") or ""
            finish = c.get("finish_reason") or finish
    calls = [
        {"function": v} for _, v in sorted(msg["tool_calls"].items())
    ]
    return {
        "choices": [
            {
                "finish_reason": finish,
                "message": {
                    "content": msg["content"] or None,
                    "reasoning": msg["reasoning"] or None,
                    "tool_calls": calls or None,
                },
            }
        ]
    }


def one_call(reply):
    choice = reply["choices"][0]
    calls = choice["message"].get("tool_calls") or []
    assert len(calls) == 1, f"want one call, got {json.dumps(choice)[:600]}"
    f = calls[0]["function"]
    assert f["name"] == "get_weather", f
    assert json.loads(f["arguments"]) == WANT_ARGS, f["arguments"]
    assert choice["finish_reason"] == "tool_calls", choice["finish_reason"]
    return choice


def status(proxy):
    code, text = http("GET", f"{proxy}/admin/api/status")
    assert code == 200, text
    return json.loads(text)


def last_record(proxy):
    s = status(proxy)
    done = [r for r in s["requests"] if r.get("status") is not None and r["path"].endswith("/chat/completions")]
    assert done, "no finished request in the status"
    code, text = http("GET", f"{proxy}/admin/api/requests/{done[0]['id']}")
    assert code == 200, text
    return json.loads(text)


def metric(proxy, prefix):
    _, text = http("GET", f"{proxy}/metrics")
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Stack:
    """One mlx server and one blockops in front of it."""

    def __init__(self, name, work, model_dir, argv0, hf_cache, proxy_bin, env_extra=None):
        self.name = name
        self.procs = []
        port = free_port()
        self.backend = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(HERE / "site") + os.pathsep + env.get("PYTHONPATH", ""),
                "MLX_SCRIPT_FILE": str(work / "scripts.json"),
                "HF_HUB_CACHE": str(hf_cache),
                "HF_HUB_OFFLINE": "1",
                # The launcher runs with the python3 first on PATH: this venv's.
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
            }
        )
        env.update(env_extra or {})
        log = work / f"{name}.mlx.log"
        self.mlx_log = log
        p = subprocess.Popen(
            argv0 + ["--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        wait_for(f"{self.backend}/health", f"{name}: mlx server", p, log)
        pport = free_port()
        self.proxy = f"http://127.0.0.1:{pport}"
        plog = work / f"{name}.proxy.log"
        penv = {
            "PATH": os.environ["PATH"],
            "HOME": str(work),
            "RUST_LOG": "warn",
            "BACKEND_URL": self.backend,
            "BLOCKOPS_HOST": "127.0.0.1",
            "PORT": str(pport),
            "MEMORY_WARN_PERCENT": "99",
            "MEMORY_CRITICAL_PERCENT": "100",
            "BLOCKOPS_LOG_FILE": str(work / f"{name}.traffic.log"),
        }
        q = subprocess.Popen([proxy_bin], env=penv, stdout=open(plog, "w"), stderr=subprocess.STDOUT)
        self.procs.append(q)
        wait_for(f"{self.proxy}/health", f"{name}: blockops", q, plog)

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def stock_cases(st):
    @case("stock: a well-formed Qwen3-Coder call arrives structured and passes through")
    def _():
        for stream in (False, True):
            one_call(chat(st.proxy, S_CODER, stream))
        rec = last_record(st.proxy)
        assert rec["raw_text"] in (None, ""), "the backend sent no text: there was nothing to translate"
        assert rec.get("dropped_calls") == 0, rec.get("dropped_calls")
        tt = status(st.proxy)["backend"]["tool_text"]
        assert tt["mode"] == "parsed" and tt["structured_calls"] >= 2 and tt["text_calls"] == 0, tt

    _()

    @case("stock: a call its parser rejects is reported as dropped (not streaming)")
    def _():
        before = metric(st.proxy, 'blockops_backend_tool_calls_dropped_total{backend="default"}')
        reply = chat(st.proxy, S_BAD, False)
        choice = reply["choices"][0]
        assert not choice["message"].get("tool_calls"), choice
        assert choice["finish_reason"] == "stop", choice["finish_reason"]
        content = choice["message"]["content"] or ""
        assert "Backend dropped a tool call" in content and "scripts/mlx-raw-server" in content, content
        rec = last_record(st.proxy)
        assert any("Backend dropped a tool call" in n for n in rec["notices"]), rec["notices"]
        assert rec["dropped_calls"] == 1 and rec["finish_reason"] == "stop", rec
        after = metric(st.proxy, 'blockops_backend_tool_calls_dropped_total{backend="default"}')
        assert after == before + 1, (before, after)

    _()

    @case("stock: a call its parser rejects is reported as dropped (streaming, notice last)")
    def _():
        reply = chat(st.proxy, S_BAD, True)
        choice = reply["choices"][0]
        assert not choice["message"].get("tool_calls"), choice
        assert choice["finish_reason"] == "stop", choice["finish_reason"]
        content = choice["message"]["content"] or ""
        assert "Backend dropped a tool call" in content, content
        assert metric(st.proxy, 'blockops_backend_tool_calls_dropped_total{backend="default"}') == 2

    _()

    @case("stock: plain text and a kept call are never reported as dropped")
    def _():
        reply = chat(st.proxy, S_PLAIN, True)
        assert reply["choices"][0]["message"]["content"] == "Hello there, no call.", reply
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert last_record(st.proxy)["notices"] == []
        assert metric(st.proxy, 'blockops_backend_tool_calls_dropped_total{backend="default"}') == 2

    _()

    @case("stock: an empty /v1/models (no Hugging Face cache folder) is named, never a parse error")
    def _():
        code, text = http("GET", f"{st.backend}/v1/models")
        assert code == 200 and text == "", f"precondition: mlx answers 200 and nothing ({code} {text!r})"
        code, text = http("GET", f"{st.proxy}/v1/models")
        body = json.loads(text)
        assert code == 502, (code, text)
        msg = body["error"]["message"]
        assert "empty body" in msg and "HF_HUB_CACHE" in msg, msg
        # The probe names the backend mlx from its server header, though it listed no model.
        deadline = time.time() + 12
        while status(st.proxy)["backend"]["kind"] != "mlx" and time.time() < deadline:
            time.sleep(0.5)
        assert status(st.proxy)["backend"]["kind"] == "mlx", status(st.proxy)["backend"]

    _()


def raw_cases(st, label, script, form):
    @case(f"raw {label}: the {form} call reaches blockops as text")
    def _():
        reply = chat(st.backend, script, False)
        msg = reply["choices"][0]["message"]
        assert not msg.get("tool_calls"), msg
        assert "<tool_call>" in (msg.get("content") or ""), msg

    _()

    for stream in (False, True):

        @case(f"raw {label}: the {form} call leaves blockops as tool_calls ({'streaming' if stream else 'not streaming'})")
        def _():
            choice = one_call(chat(st.proxy, script, stream))
            assert "<tool_call>" not in (choice["message"].get("content") or ""), choice
            rec = last_record(st.proxy)
            formats = [s.get("format") for s in rec["trace"] if s["kind"] == "tool_call"]
            assert formats and "structured" not in formats, rec["trace"]
            assert rec["dropped_calls"] == 0 and rec["notices"] == [], rec
            tt = status(st.proxy)["backend"]["tool_text"]
            assert tt["mode"] == "raw" and tt["text_calls"] >= 1 and tt["structured_calls"] == 0, tt

        _()


def think_cases(st):
    @case("raw coder: a call written before </think> arrives in the reasoning field")
    def _():
        reply = chat(st.backend, S_THINK, False)
        msg = reply["choices"][0]["message"]
        assert "<tool_call>" in (msg.get("reasoning") or ""), msg

    _()
    for stream in (False, True):

        @case(f"raw coder: a call inside the reasoning leaves blockops as a call ({'streaming' if stream else 'not streaming'})")
        def _():
            choice = one_call(chat(st.proxy, S_THINK, stream))
            reasoning = choice["message"].get("reasoning_content") or choice["message"].get("reasoning") or ""
            assert "The user wants the weather." in reasoning and "<tool_call>" not in reasoning, choice

        _()


def launcher_refuses(work, launcher, model_dir):
    @case("launcher: refuses to start where it cannot switch the parser off")
    def _():
        env = dict(os.environ)
        env["PYTHONPATH"] = str(HERE / "site")
        env["MLX_BREAK_SWITCH"] = "1"
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
        p = subprocess.run(
            [launcher, "--model", str(model_dir), "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2, (p.returncode, p.stderr[-800:])
        assert "has_tool_calling is not a property" in p.stderr, p.stderr[-800:]

    _()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--launcher", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    for style in ("coder", "hermes"):
        build_model.build(work / style, style)
    (work / "scripts.json").write_text(json.dumps([build_model.encode(s) for s in SCRIPTS]))
    hf = work / "hf-cache"
    hf.mkdir(exist_ok=True)
    print(f"mlx: models built in {time.time() - started:.1f} s", flush=True)

    python = [sys.executable]
    stacks = []
    try:
        stock = Stack("stock", work, work / "coder", python + ["-m", "mlx_lm.server"], work / "no-such-cache", args.proxy_bin)
        stacks.append(stock)
        stock_cases(stock)
        raw_coder = Stack("raw-coder", work, work / "coder", [args.launcher], hf, args.proxy_bin)
        stacks.append(raw_coder)
        raw_cases(raw_coder, "coder", S_CODER, "Qwen3-Coder")
        think_cases(raw_coder)
        raw_hermes = Stack("raw-hermes", work, work / "hermes", [args.launcher], hf, args.proxy_bin)
        stacks.append(raw_hermes)
        raw_cases(raw_hermes, "hermes", S_HERMES, "Hermes")

        @case("raw: the launched server still lists its model and logs that its parser is off")
        def _():
            code, text = http("GET", f"{raw_hermes.proxy}/v1/models")
            assert code == 200 and json.loads(text)["data"], (code, text)
            log = raw_coder.mlx_log.read_text()
            assert "tool-call parsing off" in log, log[-500:]

        _()
        launcher_refuses(work, args.launcher, work / "coder")
    except Exception as e:
        results.append(("setup", e))
        print(f"FAIL setup: {e}", flush=True)
        traceback.print_exc()
    finally:
        for s in stacks:
            s.stop()
    failed = [n for n, e in results if e is not None]
    print(f"mlx: {len(results) - len(failed)} passed, {len(failed)} failed ({time.time() - started:.0f} s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
