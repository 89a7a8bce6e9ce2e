#!/usr/bin/env bash
# Installs LiteLLM's proxy (the peer in the benchmark) into its own venv, pinned. Idempotent: a
# venv that already has this version is left alone. Prints the path of the `litellm` command on
# its last line; exits non-zero (with the reason on stderr) when it cannot install.
#   --check   only report whether it is installed (exit 1 if not); install nothing.
# 1.89.7: the newest release whose `proxy` extra resolves from PyPI here (later ones require a
# `litellm-proxy` package of the same version that the registry does not serve).
set -euo pipefail
VERSION="1.89.7"
VENV="${BLOCKOPS_LITELLM_VENV:-$HOME/.cache/blockops/venv-litellm}"
PY="${PYTHON:-python3}"

if [ -x "$VENV/bin/litellm" ] && [ "$(cat "$VENV/.blockops-version" 2>/dev/null)" = "$VERSION" ]; then
  echo "$VENV/bin/litellm"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "litellm $VERSION is not installed in $VENV (run crates/bench/litellm/setup.sh)" >&2
  exit 1
fi
command -v "$PY" >/dev/null || { echo "no $PY on PATH" >&2; exit 1; }
rm -rf "$VENV"
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$VERSION" >&2
echo "$VERSION" > "$VENV/.blockops-version"
echo "$VENV/bin/litellm"
