#!/usr/bin/env bash
# Claude Code itself, headless, through blockops-proxy's Messages front door, in a network
# namespace that has only loopback (`unshare -n`, as root), so nothing can leave the machine. The
# fake backend (backend.py, scenarios `claude-code*`) asks for a Bash tool call, written as text
# (hermes and <function=…> formats) or sent as structured tool_calls; Claude Code must run it, send
# the tool_result back and end with a successful result, and the backend must never see Claude
# Code's billing header. Prints one PASS/FAIL line per scenario (run.sh counts them).
#   BLOCKOPS_BIN=/path/to/blockops-proxy bash tests/clients/claude_code.sh
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
SCENARIOS=(claude-code claude-code-xml claude-code-structured)
CASE="claude-code"
fail() { echo "FAIL $CASE: $*"; exit 1; }
[ -n "${BLOCKOPS_BIN:-}" ] || fail "BLOCKOPS_BIN is not set (run.sh sets it)"

if [ -z "${BLOCKOPS_IN_NETNS:-}" ]; then
  # Install outside the namespace (the registry is unreachable inside it).
  if [ ! -f claude-code/node_modules/.package-lock.json ] || ! cmp -s claude-code/package-lock.json claude-code/node_modules/.blockops-lock; then
    echo "clients: installing Claude Code"
    (cd claude-code && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.blockops-lock) \
      || fail "npm ci in tests/clients/claude-code failed"
  fi
  [ "$(id -u)" = 0 ] || fail "needs root for unshare -n (a loopback-only network namespace)"
  BLOCKOPS_IN_NETNS=1 exec unshare -n bash "$0" "$@"
fi

ip link set lo up || fail "cannot bring loopback up inside the namespace"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

python3 backend.py --port 0 > "$WORK/backend.out" 2> "$WORK/backend.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/backend.out" 2>/dev/null && break; sleep 0.05; done
BACKEND="http://$(sed -n 's/^listening on //p' "$WORK/backend.out")"
[ "$BACKEND" != "http://" ] || fail "the fake backend did not start: $(cat "$WORK/backend.err")"

# A key on the proxy: Claude Code must authenticate with ANTHROPIC_AUTH_TOKEN (a Bearer token).
KEY="sk-blockops-claude-code-test"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOME="$WORK" RUST_LOG=warn \
  BACKEND_URL="$BACKEND" BLOCKOPS_HOST=127.0.0.1 PORT="$PORT" BLOCKOPS_API_KEY="$KEY" \
  HEARTBEAT_INTERVAL_SECS=0.5 MEMORY_WARN_PERCENT=99 MEMORY_CRITICAL_PERCENT=100 \
  TOKEN_WARN_THRESHOLD=1000000 TOKEN_HARD_THRESHOLD=2000000 \
  BLOCKOPS_LOG_FILE="$WORK/traffic.log" \
  "$BLOCKOPS_BIN" > "$WORK/proxy.out" 2>&1 &
PIDS+=($!)
PROXY="http://127.0.0.1:$PORT"
up=""
for _ in $(seq 200); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$PROXY/health" 2>/dev/null; then up=1; break; fi
  sleep 0.05
done
[ -n "$up" ] || fail "the proxy did not start: $(tail -n 5 "$WORK/proxy.out")"

# One Claude Code run on a scenario; prints its PASS/FAIL line.
run_case() {
  local scenario=$1 out="$WORK/$1"
  mkdir -p "$out/home" "$out/project"
  # Every model name Claude Code may use (main, small/fast, Haiku-class side requests) is the
  # scenario; the retries are capped so a broken front door fails in seconds, not minutes.
  (cd "$out/project" && env -i PATH="$PATH" HOME="$out/home" TERM=dumb \
    ANTHROPIC_BASE_URL="$PROXY" ANTHROPIC_AUTH_TOKEN="$KEY" \
    ANTHROPIC_MODEL="$scenario" ANTHROPIC_SMALL_FAST_MODEL="$scenario" ANTHROPIC_DEFAULT_HAIKU_MODEL="$scenario" \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 CLAUDE_CODE_MAX_RETRIES=2 \
    timeout 180 "$HERE/claude-code/node_modules/.bin/claude" -p "Run echo hi" \
      --allowedTools Bash --output-format stream-json --verbose --max-turns 3) \
    > "$out/claude.jsonl" 2> "$out/claude.err"
  local rc=$?
  python3 - "$out/claude.jsonl" "$BACKEND" "$rc" "$PROXY" "$KEY" "$scenario" <<'PY'
import json, re, sys, urllib.request
path, backend, rc, proxy, key, scenario = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
lines = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip().startswith("{")]
problems = []
calls = [b for l in lines if l.get("type") == "assistant"
         for b in l["message"].get("content", []) if b.get("type") == "tool_use"]
results = [b for l in lines if l.get("type") == "user"
           for b in (l["message"].get("content") or []) if isinstance(b, dict) and b.get("type") == "tool_result"]
final = [l for l in lines if l.get("type") == "result"]
if not any(c.get("name") == "Bash" and c.get("input", {}).get("command") == "echo hi" for c in calls):
    problems.append("no Bash tool_use with command 'echo hi' (got %r)" % calls)
def text(c):
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c or [] if isinstance(p, dict))
if not any("hi" in text(r.get("content")) and not r.get("is_error") for r in results):
    problems.append("no successful tool_result with 'hi' (got %r)" % results)
if not final or final[-1].get("subtype") != "success" or "The command printed: hi" not in (final[-1].get("result") or ""):
    problems.append("result %r" % (final[-1] if final else None))
with urllib.request.urlopen(backend + "/_state", timeout=5) as r:
    state = json.load(r)
if state["billing_headers"]:
    problems.append("the backend saw Claude Code's billing header %d times" % state["billing_headers"])
# Claude Code did send it (else the check above proves nothing), and the proxy removed it.
req = urllib.request.Request(proxy + "/metrics", headers={"authorization": "Bearer " + key})
with urllib.request.urlopen(req, timeout=5) as r:
    m = re.search(r"^blockops_billing_headers_removed_total (\d+)", r.read().decode(), re.M)
removed = int(m.group(1)) if m else 0
if removed == 0:
    problems.append("no billing header was removed (did Claude Code stop sending it?)")
if rc != 0:
    problems.append("claude exited %d" % rc)
if problems:
    print("FAIL claude-code headless tool loop [%s]: %s" % (scenario, "; ".join(problems)))
    sys.exit(1)
print("PASS claude-code headless tool loop [%s] (%d billing headers removed so far)" % (scenario, removed))
PY
  local ok=$?
  if [ $ok -ne 0 ]; then
    echo "--- claude stderr"; tail -n 20 "$out/claude.err"
    echo "--- claude stream-json (last lines)"; tail -n 8 "$out/claude.jsonl" | cut -c1-600
    echo "--- proxy"; tail -n 20 "$WORK/proxy.out"
    if [ -n "${BLOCKOPS_ARTIFACTS:-}" ]; then
      mkdir -p "$BLOCKOPS_ARTIFACTS/claude-code-$scenario"
      cp "$out/claude.jsonl" "$out/claude.err" "$WORK/traffic.log" "$BLOCKOPS_ARTIFACTS/claude-code-$scenario/" 2>/dev/null
    fi
  fi
  return $ok
}

status=0
for scenario in "${SCENARIOS[@]}"; do
  run_case "$scenario" || status=1
done
exit $status
