#!/usr/bin/env bash
# Creates (or reuses) the Python virtual environment with Jina 3.34 that the gateway's
# "Jina client can talk to the flowmesh gateway" test uses, and that `flowmesh-bench compare`
# runs Jina's Flow in (with ONNX Runtime and Hugging Face's tokenizers for the real model, and
# py-spy to profile it).
#
#   scripts/jina-venv.sh            -> last stdout line: path of the venv's python
#
# Location: ${FLOWMESH_CACHE:-$HOME/.cache/flowmesh}/jina-venv
# Interpreter: $FLOWMESH_PYTHON if set, else python3.11, else python3 (3.8-3.12).
# Idempotent and serialised: see scripts/lib/venv.sh.
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"

VENV_NAME=jina
VENV_TAG=v2
VENV_PYTHONS="python3.11 python3"
VENV_RANGE="3 8 3 12"
VENV_PRINTS=python
VENV_NOTE="pinned; this takes a minute or two"
# What the test asks for. jina 3.34 breaks with pydantic >= 2.11.4 and with
# prometheus_client >= 0.21.
VENV_REQUIREMENTS=(
  'jina==3.34.*'
  'pydantic<2.11.4'
  'prometheus_client<0.21'
  # flowmesh-bench compare: the Jina side's encoder runs the same model.onnx as flowmesh, on
  # the same ONNX Runtime release, with the same tokenizer.json.
  'onnxruntime==1.31.1'
  'tokenizers==0.23.3'
  'py-spy==0.4.3'
)

# Every package of the resolved set, pinned exactly, so that an upstream release
# cannot break the test (resolved and checked with jina 3.34.0 on Python 3.11).
VENV_CONSTRAINTS='
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
asgiref==3.13.0
attrs==26.1.0
certifi==2026.10.18
charset-normalizer==3.5.2
click==8.5.1
docarray==0.41.0
docker==7.2.0
ecdsa==0.19.2
fastapi==0.165.0
filelock==4.2.11
flatbuffers==25.12.19
frozenlist==1.8.0
fsspec==2026.9.0
googleapis-common-protos==1.75.0
grpcio==1.68.0
grpcio-health-checking==1.68.0
grpcio-reflection==1.68.0
h11==0.16.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
huggingface_hub==2.4.0
idna==3.20
importlib_metadata==10.2.0
jcloud==0.3
jina==3.34.0
jina-hubble-sdk==0.39.0
lazy-importer==0.1.0
markdown-it-py==4.3.0
mdurl==0.1.2
multidict==7.2.1
mypy_extensions==1.2.0
numpy==2.4.6
onnxruntime==1.31.1
opentelemetry-api==1.45.1
opentelemetry-exporter-http-transport==0.66b1
opentelemetry-exporter-otlp==1.45.1
opentelemetry-exporter-otlp-common==0.66b1
opentelemetry-exporter-otlp-proto-common==1.45.1
opentelemetry-exporter-otlp-proto-grpc==1.45.1
opentelemetry-exporter-otlp-proto-http==1.45.1
opentelemetry-exporter-prometheus==0.66b1
opentelemetry-instrumentation==0.66b1
opentelemetry-instrumentation-aiohttp-client==0.66b1
opentelemetry-instrumentation-asgi==0.66b1
opentelemetry-instrumentation-fastapi==0.66b1
opentelemetry-instrumentation-grpc==0.66b1
opentelemetry-proto==1.45.1
opentelemetry-sdk==1.45.1
opentelemetry-semantic-conventions==0.66b1
opentelemetry-util-http==0.66b1
orjson==3.13.0
packaging==26.3
pathspec==1.1.1
prometheus_client==0.20.0
propcache==0.5.4
protobuf==5.29.6
pyasn1==0.6.5
pydantic==2.11.3
pydantic_core==2.33.1
Pygments==2.21.0
python-dateutil==4.0.0
python-dotenv==1.2.4
python-jose==3.5.0
python-multipart==0.0.34
py-spy==0.4.3
PyYAML==6.0.3
requests==2.34.2
rich==15.0.0
rsa==4.9.1
six==1.17.0
starlette==1.10.0
tokenizers==0.23.3
tqdm==4.70.1
truststore==0.10.5
types-requests==2.31.0.6
types-urllib3==1.26.25.14
typing-inspect==0.9.0
typing-inspection==0.4.5
typing_extensions==4.16.0
tzdata==2026.6
urllib3==1.26.20
uvicorn==0.23.1
uvloop==0.23.0
websockets==17.4
wrapt==2.5.2
yarl==1.25.1
zipp==4.1.2
'

venv_check() {
  JINA_OPTOUT_TELEMETRY=1 JINA_DISABLE_UVLOOP=1 "$1" - <<'PYCHECK'
import importlib.metadata as md
import jina, docarray, pydantic, onnxruntime, tokenizers
from jina import Client
from docarray import BaseDoc, DocList
v = {p: md.version(p) for p in ("jina", "docarray", "pydantic", "prometheus_client", "protobuf", "aiohttp", "onnxruntime", "tokenizers")}
assert v["jina"].startswith("3.34."), v
assert tuple(int(x) for x in v["pydantic"].split(".")[:3]) < (2, 11, 4), v
assert tuple(int(x) for x in v["prometheus_client"].split(".")[:2]) < (0, 21), v
print("jina-venv: ok " + " ".join(f"{k}={x}" for k, x in v.items()))
PYCHECK
}

venv_main
