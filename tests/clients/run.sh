#!/usr/bin/env bash
# Client conformance suite, as .ci/run calls it: real SDKs (OpenAI Python and Node, LangChain,
# the Vercel AI SDK, Anthropic Python and Node on the Messages front door) against blockops-proxy
# in front of a scripted fake backend, then the coding agents Qwen Code and opencode
# (agents/check.py) and Claude Code (claude_code.sh): headless, in a network namespace with only
# loopback, with a proxy and backend of their own. Installs the pinned clients itself (a venv in
# ~/.cache/blockops, npm ci in node/ and claude-code/, npm install of the pinned agents in
# agents/), builds the proxy unless BLOCKOPS_BIN names one, runs every client on every scenario
# of scenarios.json and every agent on every agent scenario, and ends with "clients: N passed, M
# failed" (exit 1 when any failed). The agents need root (for `unshare -n`); BLOCKOPS_AGENTS=0
# leaves them out.
# The Responses front door: responses/check.py (the OpenAI SDK's responses API, the OpenAI Agents
# SDK) and responses/codex.sh (Codex CLI headless, in its own loopback-only namespace).
#   bash tests/clients/run.sh [--only scenario,scenario]
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blockops/target}"
ONLY=""
if [ "${1:-}" = "--only" ]; then ONLY="${2:-}"; fi

need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}
die() { echo "clients: $*"; echo "clients: 0 passed, 1 failed"; exit 1; }

command -v python3 >/dev/null 2>&1 || need_apt python3
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt python3-venv
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then need_apt nodejs npm; fi
AGENTS="${BLOCKOPS_AGENTS:-1}"
if [ "$AGENTS" != 0 ]; then
  command -v ip >/dev/null 2>&1 || need_apt iproute2
  command -v unshare >/dev/null 2>&1 || need_apt util-linux
fi

# Python clients: a venv per pinned set, rebuilt when requirements.txt changes.
VENV="${BLOCKOPS_CLIENTS_VENV:-$HOME/.cache/blockops/venv-clients}"
STAMP=$(sha256sum python/requirements.txt | cut -c1-16)
if [ "$(cat "$VENV/.blockops-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "clients: installing the Python clients into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "cannot create a venv"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r python/requirements.txt || die "pip install failed"
  echo "$STAMP" > "$VENV/.blockops-stamp"
fi

# Node clients, from the lock file.
if [ ! -f node/node_modules/.package-lock.json ] || ! cmp -s node/package-lock.json node/node_modules/.blockops-lock; then
  echo "clients: installing the Node clients"
  (cd node && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.blockops-lock) || die "npm ci failed"
fi

if [ -z "${BLOCKOPS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p blockops-proxy) || die "cargo build -p blockops-proxy failed"
  BLOCKOPS_BIN="$CARGO_TARGET_DIR/debug/blockops-proxy"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# The fake backend announces its port on its first line.
python3 backend.py --port 0 > "$WORK/backend.out" 2> "$WORK/backend.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$WORK/backend.out" 2>/dev/null && break; sleep 0.05; done
BACKEND_ADDR=$(sed -n 's/^listening on //p' "$WORK/backend.out")
[ -n "$BACKEND_ADDR" ] || die "the fake backend did not start: $(cat "$WORK/backend.err")"
BACKEND="http://$BACKEND_ADDR"

# The proxy: one slot (so `queued` queues), fast heartbeats, low context thresholds (so the long
# histories are trimmed or noticed), memory notices out of the way, notices in their default place.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" HOME="$WORK" RUST_LOG=warn \
  BACKEND_URL="$BACKEND" BLOCKOPS_HOST=127.0.0.1 PORT="$PORT" \
  MAX_CONCURRENT=1 MAX_QUEUE=16 HEARTBEAT_INTERVAL_SECS=0.5 \
  TOKEN_WARN_THRESHOLD=3000 TOKEN_HARD_THRESHOLD=6000 \
  MEMORY_WARN_PERCENT=99 MEMORY_CRITICAL_PERCENT=100 \
  BLOCKOPS_LOG_FILE="$WORK/traffic.log" \
  "$BLOCKOPS_BIN" > "$WORK/proxy.out" 2>&1 &
PIDS+=($!)
PROXY="http://127.0.0.1:$PORT"
up=""
for _ in $(seq 200); do
  if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$PROXY/health" 2>/dev/null; then up=1; break; fi
  sleep 0.05
done
[ -n "$up" ] || die "the proxy did not start: $(tail -n 5 "$WORK/proxy.out")"
echo "clients: proxy $PROXY, backend $BACKEND"

ARGS=(--proxy "$PROXY" --backend "$BACKEND")
[ -n "$ONLY" ] && ARGS+=(--only "$ONLY")
"$VENV/bin/python" python/check.py "${ARGS[@]}" 2>&1 | tee "$WORK/python.log"
(cd node && node check.mjs "${ARGS[@]}") 2>&1 | tee "$WORK/node.log"
(cd python && "$VENV/bin/python" check_anthropic.py "${ARGS[@]}") 2>&1 | tee "$WORK/anthropic-python.log"
(cd node && node check_anthropic.mjs "${ARGS[@]}") 2>&1 | tee "$WORK/anthropic-node.log"
if [ "$AGENTS" != 0 ] && { [ -z "$ONLY" ] || [[ ",$ONLY," == *",claude-code,"* ]]; }; then
  BLOCKOPS_BIN="$BLOCKOPS_BIN" bash claude_code.sh 2>&1 | tee "$WORK/claude-code.log"
fi
# The Responses front door: the OpenAI SDK's responses API and the Agents SDK, then Codex itself
# (in its own loopback-only network namespace, with its own proxy and backend).
"$VENV/bin/python" responses/check.py "${ARGS[@]}" 2>&1 | tee "$WORK/responses.log"
# Several backends (issue 17): one scenario through two backends behind aliases.
if [ -z "$ONLY" ] || [[ ",$ONLY," == *",routing,"* ]]; then
  "$VENV/bin/python" python/routing.py --bin "$BLOCKOPS_BIN" 2>&1 | tee "$WORK/routing.log"
fi
if [ "$AGENTS" != 0 ] && { [ -z "$ONLY" ] || [[ ",$ONLY," == *",codex-shell,"* ]]; }; then
  if [ "$(id -u)" != 0 ]; then
    echo "FAIL codex: Codex runs in a network namespace (unshare -n), which needs root"
  else
    timeout -k 10 600 bash responses/codex.sh "$BLOCKOPS_BIN"
  fi 2>&1 | tee "$WORK/codex.log"
  grep -q '^\(PASS\|FAIL\) ' "$WORK/codex.log" || echo "FAIL codex: codex.sh ended without a verdict" | tee -a "$WORK/codex.log"
fi

# Coding agents, pinned in agents/package.json (with Node 22 from npm for Qwen Code). Their
# packages are bundles with only optional platform dependencies, which npm 11 leaves out of the
# lock file for other platforms, so `npm ci` refuses it: `npm install --no-save` follows the lock.
touch "$WORK/agents.log"
install_agents() {
  if [ -f agents/node_modules/.package-lock.json ] && cmp -s agents/package-lock.json agents/node_modules/.blockops-lock; then
    return 0
  fi
  echo "clients: installing the coding agents"
  (cd agents && npm install --no-save --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.blockops-lock)
}
if [ "$AGENTS" != 0 ]; then
  agents_start=$SECONDS
  {
    if [ "$(id -u)" != 0 ]; then
      echo "FAIL agents: the agents run in a network namespace (unshare -n), which needs root"
    elif ! install_agents; then
      echo "FAIL agents: npm install in tests/clients/agents failed"
    else
      AARGS=(--bin "$BLOCKOPS_BIN" --keep "$WORK/agents")
      [ -n "$ONLY" ] && AARGS+=(--only "$ONLY")
      # Every agent run has its own timeout (check.py --timeout); this bounds the whole part.
      timeout -k 10 900 unshare -n python3 agents/check.py "${AARGS[@]}" \
        || echo "FAIL agents: agents/check.py exited with status $?"
    fi
  } 2>&1 | tee "$WORK/agents.log"
  echo "clients: the coding agents took $((SECONDS - agents_start)) s"
fi

touch "$WORK/routing.log"
LOGS=("$WORK/python.log" "$WORK/node.log" "$WORK/anthropic-python.log" "$WORK/anthropic-node.log" "$WORK/responses.log" "$WORK/routing.log" "$WORK/agents.log")
[ -f "$WORK/claude-code.log" ] && LOGS+=("$WORK/claude-code.log")
[ -f "$WORK/codex.log" ] && LOGS+=("$WORK/codex.log")
passed=$(cat "${LOGS[@]}" | grep -c '^PASS ')
failed=$(cat "${LOGS[@]}" | grep -c '^FAIL ')
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
  failed=1
  echo "clients: no case ran"
fi
if [ "$failed" -gt 0 ] && [ -n "${BLOCKOPS_ARTIFACTS:-}" ]; then
  mkdir -p "$BLOCKOPS_ARTIFACTS" && cp "$WORK/proxy.out" "$BLOCKOPS_ARTIFACTS/clients-proxy.log"
  if grep -q '^FAIL ' "$WORK/agents.log" && [ -d "$WORK/agents" ]; then
    rm -rf "$BLOCKOPS_ARTIFACTS/clients-agents"
    mkdir -p "$BLOCKOPS_ARTIFACTS/clients-agents"
    (cd "$WORK/agents" && cp -- *.stdout *.stderr *.json proxy.out backend.out "$BLOCKOPS_ARTIFACTS/clients-agents/" 2>/dev/null)
  fi
fi
echo "clients: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
