#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with schemathesis, which
# scripts/schemathesis.sh runs against every service's OpenAPI document.
#
#   scripts/schemathesis-venv.sh    -> last stdout line: the venv's bin directory
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/schemathesis-venv. A marker holding a hash
# of the pin and the interpreter is written only after the install and a version check pass;
# when it matches, a second run returns at once. Concurrent runs are serialised with flock.
set -euo pipefail

CACHE_DIR="${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}"
VENV="$CACHE_DIR/schemathesis-venv"
MARKER="$VENV/.flowmesh-complete"
PIN='schemathesis==4.32.5'

log() { printf 'schemathesis-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PYTHON="$(command -v "${FLOWMESH_PYTHON:-python3}")" || die "no python3"
STAMP="$(printf '%s\n' v1 "$("$PYTHON" -c 'import sys; print(sys.executable, sys.version)')" "$PIN" |
  sha256sum | cut -d' ' -f1)"
ready() { [[ -x "$VENV/bin/schemathesis" && "$(cat "$MARKER" 2>/dev/null)" == "$STAMP" ]]; }

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/schemathesis-venv.lock"
flock -w 900 9 || die "timed out waiting for another schemathesis-venv.sh"
if ! ready; then
  case "$VENV" in */schemathesis-venv) rm -rf -- "$VENV" ;; *) die "unexpected path $VENV" ;; esac
  log "creating $VENV with $PIN"
  "$PYTHON" -m venv "$VENV" >&2 || die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --no-input --progress-bar off \
    --quiet "$PIN" >&2 || die "pip install failed"
  "$VENV/bin/schemathesis" --version >&2 || die "schemathesis does not run"
  printf '%s\n' "$STAMP" >"$MARKER"
fi
echo "$VENV/bin"
