#!/usr/bin/env bash
# Create .venv at the repo root and install this package with its dev tools, when missing or
# when pyproject.toml changed since the last install. Sourced by scripts/smoke and scripts/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-pyproject.sha1"
want="$(sha1sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing the package and its dependencies into $VENV (first time: a few minutes, ~5 GB for torch)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" >&2
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
