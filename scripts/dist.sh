#!/usr/bin/env bash
# Stages what a flowmesh host or image needs, from this checkout:
#
#   scripts/dist.sh [DIR]      -> last stdout line: DIR (default target/dist)
#
# Builds the release binaries, prepares the models (models/prepare.sh, cached) and lays out:
#   DIR/bin/        flowmesh, flowmesh-gateway, flowmesh-encoder, flowmesh-indexer,
#                   flowmesh-ranker, flowmesh-bench
#   DIR/cache/models/{minilm,mobilenetv2}/   the prepared models (config, ONNX, tokenizer)
#   DIR/cache/models/lib/                    the ONNX Runtime library
#   DIR/flows/      the Flow files
# With FLOWMESH_CACHE=DIR/cache the encoder finds the models and the library by its defaults.
# docker/Dockerfile copies this folder; the Ansible roles copy it to the hosts.
# The binaries link glibc dynamically: build on Debian bookworm (or older) for bookworm hosts.
set -euo pipefail
cd "$(dirname "$0")/.."

DIST="${1:-target/dist}"
log() { printf 'dist: %s\n' "$*" >&2; }

MODELS="$(models/prepare.sh | tail -n 1)"
log "building release binaries"
cargo build --release --locked --workspace --bins >&2
TARGET="${CARGO_TARGET_DIR:-target}"

mkdir -p "$DIST/bin" "$DIST/cache/models/lib" "$DIST/flows"
for bin in flowmesh flowmesh-gateway flowmesh-encoder flowmesh-indexer flowmesh-ranker flowmesh-bench; do
  cp -f "$TARGET/release/$bin" "$DIST/bin/$bin"
done
for model in minilm mobilenetv2; do
  mkdir -p "$DIST/cache/models/$model"
  for f in "$MODELS/$model"/*; do
    case "$f" in *.orig.json) continue ;; esac
    # -u: the models are large and rarely change; copy only what is newer.
    cp -u "$f" "$DIST/cache/models/$model/"
  done
done
cp -u -P "$MODELS"/lib/libonnxruntime.so* "$DIST/cache/models/lib/"
cp -f flows/*.yml "$DIST/flows/"
log "staged $(du -sh "$DIST" | cut -f1) in $DIST"
echo "$DIST"
