#!/usr/bin/env bash
# Create .venv at the repo root and install this package with its dev tools, when missing or
# when pyproject.toml or requirements.lock changed since the last install. Sourced by
# scripts/smoke and scripts/test.
#
# On the platform requirements.lock was made on (its "# platform:" line), every dependency is
# installed at the locked version with its hash checked (--require-hashes): the set-up the tests
# passed with. Elsewhere (another OS, CPU architecture or Python) the lock cannot apply, and
# pyproject.toml's floor pins are resolved instead, with a line saying so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements.lock"
STAMP="$VENV/.installed.sha1"
want="$(cat "$ROOT/pyproject.toml" "$LOCK" 2>/dev/null | sha1sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing the package and its dependencies into $VENV (first time: a few minutes, ~6 GB for torch)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  here="$("$VENV/bin/python" -c 'import platform, sys; print(f"{sys.platform} {platform.machine()} cp{sys.version_info[0]}{sys.version_info[1]}")')"
  locked="$(sed -n 's/^# platform: //p' "$LOCK" 2>/dev/null || true)"
  if [ -n "$locked" ] && [ "$here" = "$locked" ]; then
    "$VENV/bin/python" -m pip install -q --require-hashes -r "$LOCK" >&2
    "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
  else
    echo "[setup] requirements.lock is for '$locked', this is '$here': installing from pyproject.toml's version floors instead (untested versions may differ)" >&2
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" >&2
  fi
  echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
