#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with selenium, which
# tests/browser/swagger_authorize.py uses to drive headless Chromium (scripts/swagger-check.sh).
#
#   scripts/browser-venv.sh    -> last stdout line: the venv's python
#
# Only the Python bindings come from PyPI: the browser and its driver are Debian's `chromium` and
# `chromium-driver` (scripts/swagger-check.sh installs them), found by path, so selenium's own
# driver download (Selenium Manager) is never needed.
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/browser-venv
# Interpreter: $FLOWMESH_PYTHON if set, else python3.11, else python3 (3.9-3.13).
# Idempotent and serialised: see scripts/lib/venv.sh.
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

VENV_NAME=browser
VENV_TAG=v1
VENV_PYTHONS="python3.11 python3"
VENV_RANGE="3 9 3 13"
VENV_PRINTS=python
VENV_IMPORT=selenium.webdriver
VENV_REQUIREMENTS=(
  'selenium==4.51.0'
)
# Every package pinned: selenium 4.52 needs a certifi newer than the registry may offer.
VENV_CONSTRAINTS='
attrs==26.1.0
certifi==2026.10.19.post1
h11==0.16.0
idna==3.20
outcome==1.3.0.post0
PySocks==1.7.1
sniffio==1.3.1
sortedcontainers==2.4.0
trio==0.35.0
trio-websocket==0.12.2
typing_extensions==4.16.0
urllib3==2.8.0
websocket-client==1.9.2
wsproto==1.3.2
'

venv_check() { "$1" -c 'import selenium, selenium.webdriver; print("selenium", selenium.__version__)'; }

venv_main
