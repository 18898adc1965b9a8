#!/usr/bin/env bash
# Installs the Debian packages flowmesh needs to build and run, when they are missing:
#   scripts/system-packages.sh          # building and running (compilers, cmake, OpenBLAS, venv,
#                                       # nats-server: the log of mirrored copies)
#   scripts/system-packages.sh --test   # and what the tests need besides (redis-server,
#                                       # debootstrap, docker-compose; the Docker engine itself
#                                       # must be installed and running)
# Uses apt-get (as root, or through sudo when it is there).
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
# faiss (feature `static`) builds its C++ with cmake and links OpenBLAS (and libgomp/gfortran).
command -v cmake >/dev/null 2>&1 || need+=(cmake)
dpkg -s libopenblas-dev >/dev/null 2>&1 || need+=(libopenblas-dev)
# flowmesh-bench run draws its plots' text with this TrueType font (no fontconfig needed).
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || need+=(fonts-dejavu-core)
# Mirrored copies of stateful executors (replicas >= 2 of the indexer or the embedded-store
# ranker) order and keep their writes in a NATS JetStream log: `flowmesh up` starts nats-server
# (Debian's 2.9) when a Flow has one, and the tests start their own.
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if [[ "${1:-}" == "--test" ]]; then
  # The ranker's Redis store is tested against a real redis-server (started by the tests).
  command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
  # The deployment tests: the local base image (debootstrap), the compose stack (Compose v1 from
  # Debian when no `docker compose` v2 plugin is there), objcopy (dist.sh strips dev binaries).
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    need+=(docker-compose)
  fi
  command -v objcopy >/dev/null 2>&1 || need+=(binutils)
fi
if ((${#need[@]})); then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  echo "installing: ${need[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}"
fi
