#!/usr/bin/env bash
# Runs schemathesis, with every check, against the OpenAPI document of each of the four services
# of a mesh it starts itself (`flowmesh up`, on free ports, in a scratch workspace), and fails if
# any check fails on any service.
#
# The mesh runs as deployments do, with credentials: a read-write API key at the gateway and the
# mesh token on every executor, both generated here and handed over in the environment. Each
# service is tested with its own credential (schemathesis.toml sends it from
# FLOWMESH_ST_SECRET), and schemathesis' ignored_auth check proves that a call without it
# is refused.
#
#   scripts/schemathesis.sh [FLOW]     # default flows/overhead.yml (hash encoder: starts fast)
#
# Needs the debug binaries (`cargo build --workspace --bins`). Environment:
#   FLOWMESH_BIN_DIR                 where the binaries are (default target/debug)
#   SCHEMATHESIS_MAX_EXAMPLES        examples per operation (default 40)
#   SCHEMATHESIS_MAX_TIME            time budget per service, in seconds (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

FLOW="${1:-flows/overhead.yml}"
BIN_DIR="${FLOWMESH_BIN_DIR:-target/debug}"
ST_BIN="$(scripts/schemathesis-venv.sh | tail -n 1)"
# Each service's full report is kept here after the run.
REPORTS="${SCHEMATHESIS_REPORTS:-target/schemathesis}"
mkdir -p "$REPORTS"
source scripts/lib/mesh.sh

FLOWMESH_API_KEY="$(random_secret)"
FLOWMESH_MESH_TOKEN="$(random_secret)"
export FLOWMESH_API_KEY FLOWMESH_MESH_TOKEN
unset FLOWMESH_READ_ONLY_API_KEY FLOWMESH_API_KEY_FILE FLOWMESH_READ_ONLY_API_KEY_FILE FLOWMESH_MESH_TOKEN_FILE

mesh_start "$FLOW" "$BIN_DIR"
gateway="$GATEWAY"

# One replica of each executor, from the gateway's /status.
mapfile -t targets < <("$ST_BIN/python" - "$gateway" <<'PY'
import json, os, sys, urllib.request
request = urllib.request.Request(sys.argv[1] + "/status", headers={"api-key": os.environ["FLOWMESH_API_KEY"]})
status = json.load(urllib.request.urlopen(request, timeout=10))
print("gateway " + sys.argv[1])
seen = set()
for e in status["executors"]:
    if e["shards"] and e["uses"] not in seen:
        seen.add(e["uses"])
        print(e["uses"] + " " + e["shards"][0][0]["address"])
PY
)

failed=()
for t in "${targets[@]}"; do
  name="${t%% *}"
  base="${t#* }"
  printf '\n==> schemathesis: %s (%s)\n' "$name" "$base" >&2
  if [[ "$name" == gateway ]]; then secret="$FLOWMESH_API_KEY"; else secret="$FLOWMESH_MESH_TOKEN"; fi
  if ! FLOWMESH_ST_SECRET="$secret" "$ST_BIN/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" --url "$base" \
    --checks all --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-40}" \
    --max-time "${SCHEMATHESIS_MAX_TIME:-60}" \
    --request-timeout 30 --suppress-health-check all --no-color >"$REPORTS/$name.txt" 2>&1; then
    failed+=("$name")
    sed -n '/FAILURES/,$p' "$REPORTS/$name.txt" | head -n 400 >&2
  else
    tail -n 6 "$REPORTS/$name.txt" >&2
  fi
done

if ! kill -0 "$MESH_PID" 2>/dev/null; then
  cat "$MESH_LOG" >&2
  echo "schemathesis: the mesh died during the run" >&2
  exit 1
fi
if ((${#failed[@]})); then
  echo "schemathesis: failures on: ${failed[*]}" >&2
  exit 1
fi
echo "schemathesis: all checks passed on ${#targets[@]} services"
