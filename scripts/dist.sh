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
#
# FLOWMESH_DIST_PROFILE=dev stages the debug-profile binaries instead, stripped of their debug
# information: the test command uses it, because it has built them already and a second, release
# build of the whole workspace would cost CI a quarter of an hour. Users want the default, release.
set -euo pipefail
cd "$(dirname "$0")/.."

DIST="${1:-target/dist}"
log() { printf 'dist: %s\n' "$*" >&2; }

MODELS="$(models/prepare.sh | tail -n 1)"
PROFILE="${FLOWMESH_DIST_PROFILE:-release}"
TARGET="${CARGO_TARGET_DIR:-target}"
case "$PROFILE" in
  release) OUTDIR="$TARGET/release"; cargo_profile=(--release) ;;
  dev) OUTDIR="$TARGET/debug"; cargo_profile=() ;;
  *) log "error: FLOWMESH_DIST_PROFILE must be release or dev, not '$PROFILE'"; exit 1 ;;
esac
log "building the $PROFILE binaries"
cargo build "${cargo_profile[@]}" --locked --workspace --bins >&2

mkdir -p "$DIST/bin" "$DIST/cache/models/lib" "$DIST/flows"
for bin in flowmesh flowmesh-gateway flowmesh-encoder flowmesh-indexer flowmesh-ranker flowmesh-bench; do
  if [[ "$PROFILE" == dev ]]; then
    objcopy --strip-debug "$OUTDIR/$bin" "$DIST/bin/$bin.tmp"
    mv -f "$DIST/bin/$bin.tmp" "$DIST/bin/$bin"
  else
    cp -f "$OUTDIR/$bin" "$DIST/bin/$bin"
  fi
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
