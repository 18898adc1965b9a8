#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with schemathesis, which
# scripts/schemathesis.sh runs against every service's OpenAPI document.
#
#   scripts/schemathesis-venv.sh    -> last stdout line: the venv's bin directory
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/schemathesis-venv
# Interpreter: $FLOWMESH_PYTHON if set, else python3.11, else python3 (3.9-3.13).
# Idempotent and serialised: see scripts/lib/venv.sh.
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

VENV_NAME=schemathesis
VENV_TAG=v1
VENV_PYTHONS="python3.11 python3"
VENV_RANGE="3 9 3 13"
VENV_PRINTS=bin
VENV_NEEDS=schemathesis
VENV_REQUIREMENTS=(
  'schemathesis==4.32.5'
)

venv_check() { "$VENV/bin/schemathesis" --version; }

venv_main
