#!/usr/bin/env bash
# Codex CLI itself, headless, through blockops' /v1/responses: inside a network namespace with
# only loopback (no request can leave the machine), a fresh fake backend (../backend.py, scenario
# `codex-shell`) and proxy; `codex exec` must run the shell command the fake model asks for as a
# text tool call, send its output back and finish the turn. Prints one PASS/FAIL line.
#   bash codex.sh BLOCKOPS_BIN
# Codex is installed from codex/package-lock.json (npm ci, kept between runs). Retries are off in
# the provider so a broken front door fails at once instead of being retried into a pass.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
LABEL="codex exec [codex-shell]"
fail() { echo "FAIL $LABEL: $*"; exit 1; }

if [ "${1:-}" != "--inside" ]; then
  BIN="${1:?usage: codex.sh BLOCKOPS_BIN}"
  if [ ! -x "$HERE/codex/node_modules/.bin/codex" ] || ! cmp -s "$HERE/codex/package-lock.json" "$HERE/codex/node_modules/.blockops-lock"; then
    echo "clients: installing Codex"
    (cd "$HERE/codex" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.blockops-lock) \
      || fail "npm ci of @openai/codex failed"
  fi
  command -v ip >/dev/null 2>&1 || fail "ip (iproute2) is missing"
  exec unshare -n -- bash "$0" --inside "$BIN"
fi

BIN="$2"
ip link set lo up || fail "cannot bring up loopback in the namespace"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 "$HERE/../backend.py" --port 0 > "$WORK/backend.out" 2> "$WORK/backend.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/backend.out" 2>/dev/null && break; sleep 0.05; done
BACKEND_ADDR=$(sed -n 's/^listening on //p' "$WORK/backend.out")
[ -n "$BACKEND_ADDR" ] || fail "the fake backend did not start: $(cat "$WORK/backend.err")"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOME="$WORK" RUST_LOG=warn \
  BACKEND_URL="http://$BACKEND_ADDR" BLOCKOPS_HOST=127.0.0.1 PORT="$PORT" \
  HEARTBEAT_INTERVAL_SECS=0.5 BLOCKOPS_LOG_FILE="$WORK/traffic.log" \
  "$BIN" > "$WORK/proxy.out" 2>&1 &
PIDS+=($!)
up=""
for _ in $(seq 200); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://127.0.0.1:$PORT/health" 2>/dev/null; then up=1; break; fi
  sleep 0.05
done
[ -n "$up" ] || fail "the proxy did not start: $(tail -n 5 "$WORK/proxy.out")"

mkdir -p "$WORK/codex-home" "$WORK/project"
cat > "$WORK/codex-home/config.toml" <<EOF
model = "codex-shell"
model_provider = "local"

[model_providers.local]
name = "local"
base_url = "http://127.0.0.1:$PORT/v1"
wire_api = "responses"
env_key = "LOCAL_KEY"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 60000
EOF

(cd "$WORK/project" && env -i PATH="$PATH" HOME="$WORK" CODEX_HOME="$WORK/codex-home" LOCAL_KEY=sk-local \
  timeout 180 "$HERE/codex/node_modules/.bin/codex" exec --skip-git-repo-check --json \
  --dangerously-bypass-approvals-and-sandbox "Run echo hi" < /dev/null > "$WORK/codex.jsonl" 2> "$WORK/codex.err")
rc=$?

python3 - "$WORK/codex.jsonl" "$HERE/../scenarios.json" "$rc" <<'EOF'
import json, sys
lines, scenarios, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
final = next(s for s in json.load(open(scenarios))["scenarios"] if s["name"] == "codex-shell")["final"]
events = []
for line in open(lines, encoding="utf-8"):
    try:
        events.append(json.loads(line))
    except ValueError:
        pass
done = [e["item"] for e in events if e.get("type") == "item.completed"]
commands = [i for i in done if i.get("type") == "command_execution"]
messages = [i for i in done if i.get("type") == "agent_message"]
problems = []
if rc != 0:
    problems.append("codex exited %d" % rc)
if not commands or commands[0].get("exit_code") != 0 or "hi" not in (commands[0].get("aggregated_output") or ""):
    problems.append("no successful command_execution of echo hi: %r" % commands)
if not messages or messages[-1].get("text") != final:
    problems.append("agent_message %r, expected %r" % ([m.get("text") for m in messages], final))
if not any(e.get("type") == "turn.completed" for e in events):
    problems.append("no turn.completed: %r" % [e.get("type") for e in events])
sys.exit("; ".join(problems) if problems else 0)
EOF
verdict=$?
if [ "$verdict" -eq 0 ]; then
  echo "PASS $LABEL"
else
  echo "  codex stderr: $(tail -n 5 "$WORK/codex.err" | tr '\n' ' ')"
  echo "  proxy: $(tail -n 5 "$WORK/proxy.out" | tr '\n' ' ')"
  fail "see above"
fi
