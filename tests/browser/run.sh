#!/usr/bin/env bash
# Browser tests for the dashboard, as .ci/run calls them: installs chromium and node if missing,
# builds the proxy unless BLOCKOPS_BIN names one, then runs node's test runner (TAP output, whose
# closing "# pass N" / "# fail N" lines the CI script counts).
set -uo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blockops/target}"
export BLOCKOPS_ARTIFACTS="${BLOCKOPS_ARTIFACTS:-$ROOT/artifacts}"

need_apt() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

if [ ! -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ]; then need_apt chromium; fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then need_apt nodejs npm; fi

if [ -z "${BLOCKOPS_BIN:-}" ]; then
  cargo build -q -p blockops-proxy || { echo "browser: cargo build failed"; exit 1; }
  export BLOCKOPS_BIN="$CARGO_TARGET_DIR/debug/blockops-proxy"
fi

if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund --loglevel=error || { echo "browser: npm ci failed"; exit 1; }
fi

mkdir -p "$BLOCKOPS_ARTIFACTS"
exec node --test --test-reporter=tap --test-concurrency=1 --test-timeout=180000 dashboard.test.mjs
