#!/usr/bin/env bash
# blockops against the real mlx_lm.server (mlx[cpu] and a pinned mlx-lm from PyPI, Linux CPU), as
# .ci/run calls it: a tiny model built here, replies scripted by site/sitecustomize.py, the stock
# server and scripts/mlx-raw-server. Installs the pinned packages into a venv in ~/.cache/blockops
# (rebuilt when requirements.txt changes), builds the proxy unless BLOCKOPS_BIN names one, and
# ends with "mlx: N passed, M failed" (exit 1 when any failed).
set -uo pipefail
cd "$(dirname "$0")"
HERE=$(pwd)
ROOT=$(cd ../.. && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blockops/target}"
die() { echo "mlx: $*"; echo "mlx: 0 passed, 1 failed"; exit 1; }

command -v python3 >/dev/null 2>&1 || die "python3 is missing: install Python 3.10 or newer"
VENV="${BLOCKOPS_MLX_VENV:-$HOME/.cache/blockops/venv-mlx}"
STAMP=$(sha256sum requirements.txt | cut -c1-16)
if [ "$(cat "$VENV/.blockops-stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "mlx: installing mlx[cpu] and mlx-lm into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "cannot create a venv (python3 -m venv; on Debian: apt-get install python3-venv)"
  # Bounded: a stalled index must not hold the whole CI.
  timeout 900 "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt \
    || die "pip install -r tests/mlx/requirements.txt failed (mlx[cpu] needs Linux x86_64 or arm64 with Python 3.10+)"
  echo "$STAMP" > "$VENV/.blockops-stamp"
fi

if [ -z "${BLOCKOPS_BIN:-}" ]; then
  (cd "$ROOT" && cargo build -q -p blockops-proxy) || die "cargo build -p blockops-proxy failed"
  BLOCKOPS_BIN="$CARGO_TARGET_DIR/debug/blockops-proxy"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The whole run takes about 10 s warm; the bound keeps a hung server from holding the CI.
timeout 600 "$VENV/bin/python" check.py --proxy-bin "$BLOCKOPS_BIN" --launcher "$ROOT/scripts/mlx-raw-server" --work "$WORK"
status=$?
if [ "$status" -eq 124 ]; then
  echo "mlx: timed out after 600 s"
  echo "mlx: 0 passed, 1 failed"
fi
exit "$status"
