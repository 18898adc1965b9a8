#!/usr/bin/env bash
# Proves that the gateway's Swagger UI (/docs) works with API keys, in headless Chromium: the page
# loads offline, a search without a key shows 401, the read-only key (Authorize, `api_key`) makes
# it 200 and an index 403, and the read-write key (`bearer`) makes the index 200; then "Try it
# out" on /index and /search with the bodies the page offers, unedited, answers 200 with matches,
# and an indexer's own /docs loads without the mesh token and, with it authorized, its example
# answers 200. See tests/browser/swagger_authorize.py for the steps.
#
#   scripts/swagger-check.sh [FLOW]     # default flows/overhead.yml (hash encoder: starts fast)
#
# Starts its own mesh (`flowmesh up`, on free ports, in a scratch workspace) with a read-write and
# a read-only key and a mesh token generated here, handed to flowmesh and to the browser program
# through the environment and a 0600 file, never on a command line, and never printed.
#
# Installs what it lacks: Debian's `chromium` and `chromium-driver` (apt-get, only when missing;
# needs root or sudo) and the selenium venv (scripts/browser-venv.sh). Needs the debug binaries
# (`cargo build -p flowmesh-gateway --bins -p flowmesh-encoder -p flowmesh-indexer
# -p flowmesh-ranker`). Environment:
#   FLOWMESH_BIN_DIR              where the binaries are (default target/debug)
#   FLOWMESH_BROWSER_ARTIFACTS    where a failure's screenshot goes (default target/browser)
#   FLOWMESH_BROWSER_TIMEOUT      seconds for each wait in the browser (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

FLOW="${1:-flows/overhead.yml}"
BIN_DIR="${FLOWMESH_BIN_DIR:-target/debug}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export FLOWMESH_BROWSER_ARTIFACTS="${FLOWMESH_BROWSER_ARTIFACTS:-target/browser}"

log() { printf 'swagger-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -x "$BIN_DIR/flowmesh" ]] || die "no $BIN_DIR/flowmesh: build the debug binaries first"

# Debian's browser and its matching driver; nothing downloaded outside the package manager.
if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "chromium and chromium-driver are missing and there is no sudo"
    sudo=(sudo)
  fi
  log "installing chromium and chromium-driver (apt-get)"
  "${sudo[@]}" apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >&2
  [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]] || die "apt-get did not install $CHROMIUM and $CHROMEDRIVER"
fi
PYTHON="$(scripts/browser-venv.sh | tail -n 1)"

source scripts/lib/mesh.sh

read_write="$(random_secret)"
read_only="$(random_secret)"
mesh_token="$(random_secret)"
[[ ${#read_write} -eq 64 && ${#read_only} -eq 64 && ${#mesh_token} -eq 64 ]] ||
  die "could not read random bytes for the keys"
(
  umask 077
  printf 'read-write %s\nread-only %s\nmesh-token %s\n' "$read_write" "$read_only" "$mesh_token" \
    >"$MESH_WORK/keys"
)

unset FLOWMESH_MESH_TOKEN_FILE
FLOWMESH_API_KEY="$read_write" FLOWMESH_READ_ONLY_API_KEY="$read_only" FLOWMESH_MESH_TOKEN="$mesh_token" \
  mesh_start "$FLOW" "$BIN_DIR"
unset read_write read_only mesh_token
gateway="$GATEWAY"
log "mesh up, gateway $gateway"

# Until every shard has a healthy replica a search may answer 503, not what the page tests.
ready=
for _ in $(seq 1 300); do
  if "$PYTHON" - "$gateway/readyz" <<'PY' 2>/dev/null; then
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
PY
    ready=1
    break
  fi
  kill -0 "$MESH_PID" 2>/dev/null || { cat "$MESH_LOG" >&2; die "flowmesh up exited"; }
  sleep 0.2
done
[[ -n "$ready" ]] || { cat "$MESH_LOG" >&2; die "the gateway was not ready in 60 s"; }

status=0
FLOWMESH_BROWSER_KEYS_FILE="$MESH_WORK/keys" "$PYTHON" tests/browser/swagger_authorize.py "$gateway" || status=$?

if ! kill -0 "$MESH_PID" 2>/dev/null; then
  cat "$MESH_LOG" >&2
  die "the mesh died during the check"
fi
if ((status != 0)); then
  log "the mesh's log:"
  cat "$MESH_LOG" >&2
  exit "$status"
fi
