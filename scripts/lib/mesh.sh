# Sourced by the scripts that test a running mesh (schemathesis.sh, swagger-check.sh): a secret
# made of random bytes, and a `flowmesh up` on free ports in a scratch folder, stopped (and the
# folder removed) when the script exits.
#
#   source scripts/lib/mesh.sh
#   key="$(random_secret)"
#   FLOWMESH_API_KEY="$key" mesh_start FLOW BIN_DIR   # sets MESH_WORK, MESH_LOG, MESH_PID, GATEWAY
#
# Variables given before `mesh_start` reach `flowmesh up` only (its environment, never its
# command line).

# 32 random bytes from the operating system, as hex: shell built-ins and od only, so the value is
# no program's argument.
random_secret() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }

MESH_WORK="$(mktemp -d)"
MESH_LOG="$MESH_WORK/up.log"
MESH_PID=
GATEWAY=

mesh_cleanup() {
  if [[ -n "$MESH_PID" ]] && kill -0 "$MESH_PID" 2>/dev/null; then
    kill -TERM "$MESH_PID" 2>/dev/null || true
    wait "$MESH_PID" 2>/dev/null || true
  fi
  rm -rf -- "$MESH_WORK"
}
trap mesh_cleanup EXIT

# mesh_start FLOW BIN_DIR: starts `BIN_DIR/flowmesh up FLOW` in the background, logging to
# MESH_LOG, and waits (at most 120 s) for its `gateway: http://...` line; sets GATEWAY. On a
# failure prints the log and exits 1.
mesh_start() {
  "$2/flowmesh" up "$1" --listen 127.0.0.1:0 --bin-dir "$2" \
    --workspace "$MESH_WORK/ws" >"$MESH_LOG" 2>&1 &
  MESH_PID=$!
  for _ in $(seq 1 600); do
    GATEWAY="$(sed -n 's/^gateway: \(http:\/\/[0-9.:]*\)$/\1/p' "$MESH_LOG" | head -n 1)"
    [[ -n "$GATEWAY" ]] && return 0
    kill -0 "$MESH_PID" 2>/dev/null || { cat "$MESH_LOG" >&2; echo "flowmesh up exited" >&2; exit 1; }
    sleep 0.2
  done
  cat "$MESH_LOG" >&2
  echo "the mesh did not start in 120 s" >&2
  exit 1
}
