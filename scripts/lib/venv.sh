# shellcheck shell=bash
# The one recipe behind scripts/{annoy,jina,ansible,schemathesis}-venv.sh: a Python virtual
# environment under ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/NAME-venv with pinned packages.
#
# Idempotent: a marker file (a hash of the recipe's tag, the interpreter, the pins and the
# constraints) is written only after the install and the script's own check succeed; when it
# matches, a second run does nothing and returns at once. A venv without a matching marker
# (missing, interrupted install, changed pins) is deleted and rebuilt. Concurrent runs are
# serialised with flock. Everything except the final path goes to stderr. Needs only PyPI.
#
# A script sets these, defines `venv_check` (run once after the install, with the venv's
# python as $1; it must fail when the install is unusable) and calls `venv_main`:
#   VENV_NAME          annoy, jina, ...: the venv is NAME-venv, the log lines say NAME-venv
#   VENV_TAG           bumped when the recipe changes, so that existing venvs are rebuilt
#   VENV_PYTHONS       interpreters to try after $FLOWMESH_PYTHON, e.g. "python3.11 python3"
#   VENV_RANGE         the Python versions that work, as "3 8 3 12" (3.8 to 3.12)
#   VENV_REQUIREMENTS  array of pip requirements
#   VENV_CONSTRAINTS   optional: a pip constraints file's text (every package pinned)
#   VENV_PRINTS        "python" (the venv's python) or "bin" (its bin directory)
#   VENV_NEEDS         optional: executables under bin/ that a finished venv has
#   VENV_IMPORT        optional: a module that a finished venv imports
#   VENV_NOTE          optional: how long the install takes, for the log line

CACHE_DIR="${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}"

log() { printf '%s-venv: %s\n' "$VENV_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

venv_pick_python() {
  local cand lo_major lo_minor hi_major hi_minor
  read -r lo_major lo_minor hi_major hi_minor <<<"$VENV_RANGE"
  for cand in ${FLOWMESH_PYTHON:+"$FLOWMESH_PYTHON"} $VENV_PYTHONS; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c "import sys; sys.exit(0 if ($lo_major, $lo_minor) <= sys.version_info[:2] <= ($hi_major, $hi_minor) else 1)" 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}

# The finished venv's answer: its python or its bin directory.
venv_answer() {
  if [[ "$VENV_PRINTS" == bin ]]; then echo "$VENV/bin"; else echo "$VENV/bin/python"; fi
}

venv_ready() {
  local exe
  [[ -f "$MARKER" && -x "$VENV/bin/python" ]] || return 1
  [[ "$(cat "$MARKER" 2>/dev/null)" == "$STAMP" ]] || return 1
  for exe in ${VENV_NEEDS:-}; do [[ -x "$VENV/bin/$exe" ]] || return 1; done
  "$VENV/bin/python" -c "import ${VENV_IMPORT:-sys}" >/dev/null 2>&1
}

venv_main() {
  local lo_major lo_minor hi_major hi_minor
  read -r lo_major lo_minor hi_major hi_minor <<<"$VENV_RANGE"
  VENV="$CACHE_DIR/$VENV_NAME-venv"
  MARKER="$VENV/.flowmesh-$VENV_NAME-venv-complete"
  PYTHON="$(venv_pick_python)" ||
    die "no python $lo_major.$lo_minor-$hi_major.$hi_minor found (tried ${FLOWMESH_PYTHON:+$FLOWMESH_PYTHON, }$VENV_PYTHONS)"
  PY_ID="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  # The marker's content changes whenever the pins or the base interpreter change.
  STAMP="$(printf '%s\n' "$VENV_TAG" "$PY_ID" "${VENV_REQUIREMENTS[@]}" ${VENV_CONSTRAINTS:+"$VENV_CONSTRAINTS"} |
    sha256sum | cut -d' ' -f1)"

  if venv_ready; then
    venv_answer
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  if command -v flock >/dev/null 2>&1; then
    local lock="$CACHE_DIR/$VENV_NAME-venv.lock"
    exec 9>"$lock"
    flock -w 900 9 || die "timed out waiting for another $VENV_NAME-venv.sh (lock $lock)"
    if venv_ready; then # another run finished it while we waited
      venv_answer
      return 0
    fi
  fi
  if [[ -e "$VENV" ]]; then
    log "removing incomplete or outdated venv at $VENV"
    case "$VENV" in
      */"$VENV_NAME"-venv) rm -rf -- "$VENV" ;;
      *) die "refusing to remove unexpected path $VENV" ;;
    esac
  fi

  log "creating venv at $VENV with $PY_ID"
  "$PYTHON" -m venv "$VENV" >&2 ||
    die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
  local constraint=()
  if [[ -n "${VENV_CONSTRAINTS:-}" ]]; then
    printf '%s' "$VENV_CONSTRAINTS" >"$VENV/flowmesh-constraints.txt"
    constraint=(--constraint "$VENV/flowmesh-constraints.txt")
  fi
  log "installing ${VENV_REQUIREMENTS[*]}${VENV_NOTE:+ ($VENV_NOTE)}"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install \
    --no-input --progress-bar off --quiet "${constraint[@]}" \
    "${VENV_REQUIREMENTS[@]}" >&2 || die "pip install failed"

  log "checking the install"
  venv_check "$VENV/bin/python" >&2 || die "the check of the install failed"

  printf '%s\n' "$STAMP" >"$MARKER.tmp"
  mv -f "$MARKER.tmp" "$MARKER"
  log "ready"
  venv_answer
}
