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
# Idempotent and serialised: see scripts/lib/venv.sh.
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

VENV_NAME=annoy
VENV_TAG=v1
VENV_PYTHONS="python3.11 python3"
VENV_RANGE="3 8 3 12"
VENV_PRINTS=python
VENV_IMPORT=annoy
VENV_NOTE="compiles C++; about a minute"
# The test speaks JSON with the script, so annoy is the only package.
VENV_REQUIREMENTS=(
  'annoy==1.17.3'
)

command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
  die "no C++ compiler: annoy compiles on install (on Debian: apt-get install g++)"

venv_check() {
  "$1" - <<'PYCHECK'
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
}

venv_main
