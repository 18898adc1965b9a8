#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with Spotify's `annoy` that
# the indexer's Annoy interoperability test (services/indexer/tests/annoy_interop.rs)
# uses to check that Python reads the files flowmesh writes, and the other way round.
#
#   scripts/annoy-venv.sh           -> last stdout line: path of the venv's python
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/annoy-venv
# Interpreter: $FLOWMESH_PYTHON if set, else python3.11, else python3 (3.8-3.12).
#
# annoy has no wheels on PyPI: pip compiles its C++ extension (needs g++), with
# the flags of annoy's own setup.py, as a user's `pip install annoy` would.
#
# Idempotent: a marker file (holding a hash of the pins and the interpreter) is
# written only after the install and an import check succeed; when it matches,
# a second run does nothing and returns at once. A venv without a matching
# marker (missing, interrupted install, changed pins) is deleted and rebuilt.
# Concurrent runs are serialised with flock. Everything except the final path
# goes to stderr. Needs only PyPI.
set -euo pipefail

CACHE_DIR="${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}"
VENV="$CACHE_DIR/annoy-venv"
MARKER="$VENV/.flowmesh-annoy-venv-complete"
LOCK_FILE="$CACHE_DIR/annoy-venv.lock"

log() { printf 'annoy-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The test speaks JSON with the script, so annoy is the only package.
REQUIREMENTS=(
  'annoy==1.17.3'
)

pick_python() {
  local cand
  for cand in ${FLOWMESH_PYTHON:+"$FLOWMESH_PYTHON"} python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c 'import sys; sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}

PYTHON="$(pick_python)" || die "no python 3.8-3.12 found (tried ${FLOWMESH_PYTHON:+$FLOWMESH_PYTHON, }python3.11, python3)"
PY_ID="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
  die "no C++ compiler: annoy compiles on install (on Debian: apt-get install g++)"

# Marker content: changes whenever the pins or the base interpreter change.
STAMP="$(printf '%s\n' "v1" "$PY_ID" "${REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"

venv_ready() {
  [[ -f "$MARKER" && -x "$VENV/bin/python" ]] &&
    [[ "$(cat "$MARKER" 2>/dev/null)" == "$STAMP" ]] &&
    "$VENV/bin/python" -c 'import annoy' >/dev/null 2>&1
}

if venv_ready; then
  echo "$VENV/bin/python"
  exit 0
fi

mkdir -p "$CACHE_DIR"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK_FILE"
  flock -w 900 9 || die "timed out waiting for another annoy-venv.sh (lock $LOCK_FILE)"
  if venv_ready; then # another run finished it while we waited
    echo "$VENV/bin/python"
    exit 0
  fi
fi

if [[ -e "$VENV" ]]; then
  log "removing incomplete or outdated venv at $VENV"
  case "$VENV" in
    */annoy-venv) rm -rf -- "$VENV" ;;
    *) die "refusing to remove unexpected path $VENV" ;;
  esac
fi

log "creating venv at $VENV with $PY_ID"
"$PYTHON" -m venv "$VENV" >&2 ||
  die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"

log "installing ${REQUIREMENTS[*]} (compiles C++; about a minute)"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install \
  --no-input --progress-bar off --quiet \
  "${REQUIREMENTS[@]}" >&2 || die "pip install failed"

log "checking the install"
"$VENV/bin/python" - >&2 <<'PYCHECK' || die "import check failed"
import importlib.metadata as md
from annoy import AnnoyIndex
v = md.version("annoy")
assert v == "1.17.3", v
index = AnnoyIndex(3, "angular")
index.add_item(0, [1.0, 0.0, 0.0])
index.add_item(1, [0.0, 1.0, 0.0])
index.build(2)
assert index.get_nns_by_vector([1.0, 0.1, 0.0], 1) == [0]
print(f"annoy-venv: ok annoy={v}")
PYCHECK

printf '%s\n' "$STAMP" >"$MARKER.tmp"
mv -f "$MARKER.tmp" "$MARKER"
log "ready"
echo "$VENV/bin/python"
