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
# Idempotent and serialised: see scripts/lib/venv.sh.
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

VENV_NAME=ansible
VENV_TAG=v1
VENV_PYTHONS="python3.12 python3.11 python3"
VENV_RANGE="3 11 3 13"
VENV_PRINTS=bin
VENV_NEEDS="ansible-playbook ansible-lint"
VENV_NOTE="about a minute"
# ansible-core alone (no collections bundle): the roles use ansible.builtin only.
VENV_REQUIREMENTS=(
  'ansible-core==2.19.14'
  'ansible-lint==26.10.1'
)

venv_check() {
  "$VENV/bin/ansible-playbook" --version || return 1
  "$VENV/bin/ansible-lint" --version || return 1
  "$1" - <<'PYCHECK'
import importlib.metadata as md
assert md.version("ansible-core") == "2.19.14", md.version("ansible-core")
assert md.version("ansible-lint") == "26.10.1", md.version("ansible-lint")
print("ansible-venv: ok")
PYCHECK
}

venv_main
