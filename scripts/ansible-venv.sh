#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with Ansible that the rollout test
# (tests/deploy/tests/ansible.rs) and `ansible/` users run as the controller:
#
#   scripts/ansible-venv.sh         -> last stdout line: the venv's bin directory
#                                      (ansible-playbook, ansible, ansible-lint are in it)
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/ansible-venv
# Interpreter: $FLOWMESH_PYTHON if set, else python3.12, python3.11, python3 (3.11-3.13:
# ansible-core 2.19's controller needs 3.11 or newer).
#
# Idempotent: a marker file (holding a hash of the pins and the interpreter) is written only
# after the install and a version check succeed; when it matches, a second run does nothing and
# returns at once. A venv without a matching marker (missing, interrupted install, changed pins)
# is deleted and rebuilt. Concurrent runs are serialised with flock. Everything except the final
# path goes to stderr. Needs only PyPI.
set -euo pipefail

CACHE_DIR="${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}"
VENV="$CACHE_DIR/ansible-venv"
MARKER="$VENV/.flowmesh-ansible-venv-complete"
LOCK_FILE="$CACHE_DIR/ansible-venv.lock"

log() { printf 'ansible-venv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ansible-core alone (no collections bundle): the roles use ansible.builtin only.
REQUIREMENTS=(
  'ansible-core==2.19.14'
  'ansible-lint==26.10.1'
)

pick_python() {
  local cand
  for cand in ${FLOWMESH_PYTHON:+"$FLOWMESH_PYTHON"} python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
      "$cand" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 13) else 1)' 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}

PYTHON="$(pick_python)" || die "no python 3.11-3.13 found (tried ${FLOWMESH_PYTHON:+$FLOWMESH_PYTHON, }python3.12, python3.11, python3)"
PY_ID="$("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# Marker content: changes whenever the pins or the base interpreter change.
STAMP="$(printf '%s\n' "v1" "$PY_ID" "${REQUIREMENTS[@]}" | sha256sum | cut -d' ' -f1)"

venv_ready() {
  [[ -f "$MARKER" && -x "$VENV/bin/ansible-playbook" && -x "$VENV/bin/ansible-lint" ]] &&
    [[ "$(cat "$MARKER" 2>/dev/null)" == "$STAMP" ]]
}

if venv_ready; then
  echo "$VENV/bin"
  exit 0
fi

mkdir -p "$CACHE_DIR"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$LOCK_FILE"
  flock -w 900 9 || die "timed out waiting for another ansible-venv.sh (lock $LOCK_FILE)"
  if venv_ready; then # another run finished it while we waited
    echo "$VENV/bin"
    exit 0
  fi
fi

if [[ -e "$VENV" ]]; then
  log "removing incomplete or outdated venv at $VENV"
  case "$VENV" in
    */ansible-venv) rm -rf -- "$VENV" ;;
    *) die "refusing to remove unexpected path $VENV" ;;
  esac
fi

log "creating venv at $VENV with $PY_ID"
"$PYTHON" -m venv "$VENV" >&2 ||
  die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"

log "installing ${REQUIREMENTS[*]} (about a minute)"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install \
  --no-input --progress-bar off --quiet \
  "${REQUIREMENTS[@]}" >&2 || die "pip install failed"

log "checking the install"
"$VENV/bin/ansible-playbook" --version >&2 || die "ansible-playbook does not run"
"$VENV/bin/ansible-lint" --version >&2 || die "ansible-lint does not run"
"$VENV/bin/python" - >&2 <<'PYCHECK' || die "version check failed"
import importlib.metadata as md
assert md.version("ansible-core") == "2.19.14", md.version("ansible-core")
assert md.version("ansible-lint") == "26.10.1", md.version("ansible-lint")
print("ansible-venv: ok")
PYCHECK

printf '%s\n' "$STAMP" >"$MARKER.tmp"
mv -f "$MARKER.tmp" "$MARKER"
log "ready"
echo "$VENV/bin"
