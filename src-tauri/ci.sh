#!/usr/bin/env bash
# The tray app's CI step (called by .ci/run): installs the Debian packages it needs (when
# CI=true or when they are missing and we are root), builds the app, runs its unit and
# mock-runtime tests, then the end-to-end test of the real binary under Xvfb and a private
# D-Bus session. Prints `tray: N passed, M failed`; screenshots and logs go to
# $BLOCKOPS_ARTIFACTS/tray.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blockops/target-tauri}"
ARTIFACTS="${BLOCKOPS_ARTIFACTS:-$ROOT/artifacts}/tray"
mkdir -p "$ARTIFACTS"

# Build: WebKitGTK 4.1 and its stack (GTK 3, libsoup 3), Ayatana AppIndicator (loaded at run
# time by the tray), librsvg, libxdo. Test: Xvfb, dunst, dbus-monitor, trayer, ImageMagick, xdotool,
# gdbus (reads the tray menu the app exports on the session bus).
PACKAGES=(
  build-essential pkg-config file libssl-dev
  libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev
  xvfb xauth x11-utils xdotool imagemagick dunst libnotify-bin dbus libglib2.0-bin trayer jq curl python3 python3-xlib
)
missing=()
for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = true ] || [ "$(id -u)" = 0 ]; then
    echo "tray: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      || { echo "tray: 0 passed, 1 failed (apt-get install failed)"; exit 1; }
  else
    echo "tray: missing Debian packages: ${missing[*]} (run as root or with CI=true to install them)"
    echo "tray: 0 passed, 1 failed"
    exit 1
  fi
fi

passed=0
failed=0
add_cargo_counts() {
  local log=$1
  passed=$((passed + $(grep -hoE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')))
  failed=$((failed + $(grep -hoE '[0-9]+ passed; [0-9]+ failed' "$log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')))
}

status=0
echo "=== tray: build"
# One build: `cargo test` builds the app binary too (the e2e test runs that one), so tauri is
# not compiled twice with different features.
cargo test -p blockops-tray --no-run 2>&1 | tail -n 30
if [ "${PIPESTATUS[0]}" != 0 ]; then
  echo "tray: 0 passed, 1 failed (build failed)"
  exit 1
fi

echo "=== tray: unit and mock-runtime tests (no display)"
log=$(mktemp)
# DISPLAY unset: these tests must not need an X server.
env -u DISPLAY -u WAYLAND_DISPLAY cargo test -p blockops-tray 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
add_cargo_counts "$log"
grep -q 'test result:' "$log" || failed=$((failed + 1))
rm -f "$log"

echo "=== tray: clippy (the root clippy step covers the default members only)"
cargo clippy -p blockops-tray --all-targets -- -D warnings 2>&1 | tail -n 40
if [ "${PIPESTATUS[0]}" != 0 ]; then
  failed=$((failed + 1))
  status=1
fi

echo "=== tray: end-to-end (Xvfb + dbus-run-session + dunst)"
log=$(mktemp)
BIN="$CARGO_TARGET_DIR/debug/blockops-tray"
timeout 600 env NO_AT_BRIDGE=1 xvfb-run -a -s '-screen 0 1280x800x24' \
  dbus-run-session -- bash "$ROOT/src-tauri/tests/e2e.sh" "$BIN" "$ARTIFACTS" 2>&1 | tee "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
if line=$(grep -oE '^# tray-e2e: [0-9]+ passed, [0-9]+ failed' "$log"); then
  passed=$((passed + $(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+')))
  failed=$((failed + $(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+')))
else
  failed=$((failed + 1))
fi
rm -f "$log"

echo "tray: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && exit "$status"
exit 1
