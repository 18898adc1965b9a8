"""Runs, on loopback, the Jina 3.34 Flow that `flowmesh-bench compare` measures beside flowmesh.

    python flowmesh_jina_flow.py flow --topology overhead [--dim 64]
    python flowmesh_jina_flow.py flow --topology text --model-config .../minilm/config.json
    python flowmesh_jina_flow.py embed --model-config .../minilm/config.json < texts.json

`flow` starts the Flow (HTTP gateway; Python executors from flowmesh_jina_executors.py), prints
`jina gateway: http://127.0.0.1:PORT` on stdout once every executor is ready, and runs until its
standard input closes or it gets SIGTERM/SIGINT, then closes the Flow (which stops every
executor process). Topologies, as flows/overhead.yml and flows/text.yml:

    overhead: gateway -> encoder (hash, 2 replicas) -> indexer (2 shards, `all` polling for
              /search + top-k merge) -> ranker
    text:     gateway -> segmenter (sentencizer) -> encoder (MiniLM on ONNX Runtime, 2 replicas,
              1 thread each) -> indexer (2 shards, as above) -> ranker

`embed` prints the embeddings of a JSON list of texts (the text encoder alone), for checking
that both sides compute the same vectors.

Before Jina is imported: telemetry off, the default host 127.0.0.1, one BLAS/OpenMP thread, and
the loopback-only network guard (flowmesh_netguard, also installed in every child process by
sitecustomize.py when this folder is on PYTHONPATH, as the harness sets it).
"""

import argparse
import json
import os
import signal
import sys
import threading

os.environ["JINA_OPTOUT_TELEMETRY"] = "1"
os.environ["JINA_DEFAULT_HOST"] = "127.0.0.1"
os.environ.setdefault("JINA_LOG_LEVEL", "WARNING")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flowmesh_netguard  # noqa: E402

flowmesh_netguard.install()

HOST = "127.0.0.1"


def build_flow(args):
    from jina import Flow

    import flowmesh_jina_executors as ex

    flowmesh_netguard.patch_loaded_jina()
    if args.grpc:
        # One gateway serving both protocols; Jina picks the ports when none are given.
        ports = [args.port, args.grpc_port] if args.port and args.grpc_port else None
        flow = Flow(protocol=["http", "grpc"], host=HOST, port=ports, title="flowmesh-bench compare")
    else:
        flow = Flow(protocol="http", host=HOST, port=args.port or None, title="flowmesh-bench compare")
    local = {"host": HOST}
    if args.topology == "text":
        flow = flow.add(
            name="segmenter", uses=ex.Sentencizer, uses_with={"min_sent_len": 2, "max_sent_len": 512}, **local
        )
        encoder = {
            "uses": ex.OnnxTextEncoder,
            "uses_with": {"model_config": args.model_config, "threads": args.threads, "max_batch": 64},
        }
    else:
        encoder = {"uses": ex.HashEncoder, "uses_with": {"dim": args.dim}}
    flow = flow.add(name="encoder", replicas=args.replicas, **encoder, **local)
    flow = flow.add(
        name="indexer",
        uses=ex.NumpyIndexer,
        shards=args.shards,
        polling={"/index": "ANY", "/search": "ALL", "*": "ANY"},
        uses_after=ex.TopKMerger,
        **local,
    )
    return flow.add(name="ranker", uses=ex.Ranker, **local)


def run_flow(args):
    flow = build_flow(args)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stop.set()

    with flow:
        # This process only waits from here on; the harness tells it from the gateway and the
        # shards' head (both unnamed Python processes) by this name.
        try:
            with open("/proc/self/comm", "w", encoding="utf-8") as f:
                f.write("j:flow")
        except OSError:
            pass
        ports = flow.port if isinstance(flow.port, list) else [flow.port]
        protocols = [str(p).lower().split(".")[-1] for p in (flow.protocol if isinstance(flow.protocol, list) else [flow.protocol])]
        by_protocol = dict(zip(protocols, ports))
        # The gRPC line first: the harness reads on until the HTTP one.
        if "grpc" in by_protocol:
            print(f"jina grpc: grpc://{HOST}:{by_protocol['grpc']}", flush=True)
        print(f"jina gateway: http://{HOST}:{by_protocol['http']}", flush=True)
        threading.Thread(target=watch_stdin, daemon=True).start()
        stop.wait()
    print("jina flow closed", flush=True)


def embed(args):
    import flowmesh_jina_executors as ex

    texts = json.load(sys.stdin)
    encoder = ex.OnnxTextEncoder(model_config=args.model_config, threads=args.threads)
    print(json.dumps([[float(x) for x in v] for v in encoder.embed(texts)]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flow")
    f.add_argument("--topology", choices=["overhead", "text"], required=True)
    f.add_argument("--port", type=int, default=0, help="gateway port (0: Jina picks a free one)")
    f.add_argument("--grpc", action="store_true", help="serve gRPC too, on a port of its own")
    f.add_argument("--grpc-port", type=int, default=0, help="gRPC port with --grpc (0: Jina picks one)")
    f.add_argument("--replicas", type=int, default=2)
    f.add_argument("--shards", type=int, default=2)
    f.add_argument("--dim", type=int, default=64, help="hash encoder dimension (overhead)")
    f.add_argument("--model-config", help="flowmesh's prepared minilm/config.json (text)")
    f.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per replica")
    e = sub.add_parser("embed")
    e.add_argument("--model-config", required=True)
    e.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.command == "flow":
        if args.topology == "text" and not args.model_config:
            p.error("--topology text needs --model-config")
        run_flow(args)
    else:
        embed(args)


if __name__ == "__main__":
    main()
