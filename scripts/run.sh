#!/usr/bin/env bash
# Runs a Flow on this machine, from a fresh checkout:
#   ./scripts/run.sh                    # the text search Flow (flows/text.yml)
#   ./scripts/run.sh flows/image.yml    # another Flow; extra arguments go to `flowmesh up`
# Installs missing system packages, prepares the default models (once, cached), builds the
# release binaries (incrementally) and starts `flowmesh up`. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

flow="${1:-flows/text.yml}"
shift || true

scripts/system-packages.sh
models/prepare.sh >/dev/null
cargo build --release --workspace --bins
exec target/release/flowmesh up "$flow" "$@"
