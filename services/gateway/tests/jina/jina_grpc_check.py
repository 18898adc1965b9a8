#!/usr/bin/env python3
"""Check that Jina 3.x's gRPC client (its default protocol) works against a flowmesh gateway
serving gRPC (`--grpc-listen`).

Usage:
    python jina_grpc_check.py grpc://127.0.0.1:PORT

Run it with the interpreter printed by scripts/jina-venv.sh. With JINA_CHECK_API_KEY set (a
read-write key of the gateway) every call sends it as gRPC metadata and a call without it must
fail with UNAUTHENTICATED; with JINA_CHECK_READONLY_KEY too, that key must search and be refused
(PERMISSION_DENIED) on /index. Keys are read from the environment, never from argv.

Checks, in order: `Client.is_flow_ready()` and `dry_run()`; `jina ping flow grpc://...`;
/index of 20 documents with `request_size=5` and `return_responses=True` (4 responses, each
SUCCESS with its 5 documents); /search over the streaming call with a `Doc(TextDoc)` whose
`matches` is a `DocList` of documents with `score` and `tags` (best match, scores, tags, top_k);
the same over the unary call (`stream=False`); a search read back through a schema whose matches
are a plain `List[...]`; an unknown endpoint, whose documents pass through unchanged; and a request
over the --max-body-bytes of the test (1 MiB), refused with OUT_OF_RANGE.

Exit status: 0 all checks passed, 1 a check failed, 2 usage or setup error.

Only loopback is reached: the gateway's address must be a loopback one, no proxy variable is
left for grpcio, and Python-level connects and DNS lookups to anything else raise (grpcio's C
core connects on its own, to the loopback address it is given).
"""

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

# Loopback only, and Jina's environment: installed before jina / grpc are imported.
import loopback_guard  # noqa: E402  (next to this file)

loopback_guard.install()
REFUSED = loopback_guard.REFUSED

DEADLINE_S = int(os.environ.get("JINA_CHECK_DEADLINE_S", "240"))
TIMEOUT_S = 60
TOP_K = 3


def usage(msg):
    sys.stderr.write(f"jina_grpc_check: {msg}\nusage: {sys.argv[0]} grpc://127.0.0.1:PORT\n")
    sys.exit(2)


if len(sys.argv) != 2:
    usage("expected exactly one argument, the gateway's gRPC address")
URL = urlsplit(sys.argv[1])
if URL.scheme not in ("grpc", "grpcs") or not URL.hostname or URL.port is None:
    usage(f"not a grpc://HOST:PORT address: {sys.argv[1]!r}")
if not loopback_guard.is_loopback(URL.hostname):
    usage(f"refusing non-loopback host {URL.hostname!r}")
ADDRESS = f"{URL.scheme}://{URL.hostname}:{URL.port}"


def on_deadline(signum, frame):
    sys.stderr.write(f"FAIL: the gRPC check did not finish within {DEADLINE_S}s\n")
    sys.stderr.flush()
    os._exit(1)


signal.signal(signal.SIGALRM, on_deadline)
signal.alarm(DEADLINE_S)

import warnings  # noqa: E402

warnings.filterwarnings("ignore")
try:
    from typing import Any, Dict, List, Optional  # noqa: E402

    from docarray import BaseDoc, DocList  # noqa: E402
    from docarray.documents import TextDoc  # noqa: E402

    import jina  # noqa: E402
    from jina import Client  # noqa: E402
except Exception as e:  # pragma: no cover - environment problem
    sys.stderr.write(f"jina_grpc_check: cannot import jina/docarray: {e!r}\n")
    sys.exit(2)

API_KEY = os.environ.get("JINA_CHECK_API_KEY") or None
READONLY_KEY = os.environ.get("JINA_CHECK_READONLY_KEY") or None
METADATA = (("api-key", API_KEY),) if API_KEY else ()


class Match(TextDoc):
    tags: Dict[str, Any] = {}
    score: Optional[float] = None


class Query(TextDoc):
    tags: Dict[str, Any] = {}
    matches: DocList[Match] = DocList[Match]()


class PlainDoc(BaseDoc):
    text: Optional[str] = None
    tags: Dict[str, Any] = {}
    score: Optional[float] = None
    matches: Optional[List["PlainDoc"]] = None


PlainDoc.model_rebuild()

from corpus import TEXTS  # noqa: E402  (next to this file: the checks' shared documents)
IDS = {f"doc-{i:02d}": t for i, t in enumerate(TEXTS)}
FAILURES = []


def check(cond, reason):
    if not cond:
        FAILURES.append(reason)
        print(f"  FAIL {reason}")
    return cond


def expect_error(what, want, call):
    """`call` must raise, with `want` in the error's text."""
    try:
        call()
    except Exception as e:  # the client's exception class depends on the error
        text = f"{type(e).__name__}: {e}"
        if check(want in text, f"{what}: failed, but without {want!r}: {text[:400]}"):
            print(f"{what}: refused ({want})")
        return
    check(False, f"{what}: was accepted")


def check_matches(label, results, queries):
    check(len(results) == len(queries), f"{label}: {len(results)} results for {len(queries)} queries")
    by_id = {r.id: r for r in results}
    for q in queries:
        r = by_id.get(q.id)
        if not check(r is not None, f"{label}: no result for query {q.id}"):
            continue
        m = list(r.matches or [])
        if not check(1 <= len(m) <= TOP_K, f"{label}: query {q.id} has {len(m)} matches (top_k {TOP_K})"):
            continue
        want = next(i for i, t in IDS.items() if t == q.text)
        best = m[0]
        check(best.id == want and best.text == q.text, f"{label}: best match of {q.id} is {best.id} ({best.text!r}), not {want}")
        check(all(x.id in IDS for x in m), f"{label}: match ids never indexed: {[x.id for x in m]}")
        scores = [x.score for x in m]
        check(all(s is not None for s in scores), f"{label}: matches without a score: {scores}")
        if all(s is not None for s in scores):
            check(scores == sorted(scores, reverse=True), f"{label}: scores not best first: {scores}")
        check(
            best.tags.get("lang") == "en" and best.tags.get("n") == int(want[-2:]),
            f"{label}: best match tags {best.tags!r} are not the indexed ones",
        )
    print(f"{label}: {len(results)} queries answered")


def main():
    t0 = time.monotonic()
    print(f"jina {jina.__version__} gRPC client -> {ADDRESS}")
    client = Client(host=ADDRESS)

    # ---- readiness: open, as /readyz is -------------------------------------------------
    check(client.is_flow_ready(timeout=TIMEOUT_S) is True, "is_flow_ready() is not True")
    check(client.dry_run(timeout=TIMEOUT_S) is True, "dry_run() is not True")
    jina_cli = os.path.join(os.path.dirname(sys.executable), "jina")
    ping = subprocess.run(
        [jina_cli, "ping", "flow", ADDRESS, "--timeout", "20000"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    check(ping.returncode == 0, f"jina ping flow exited {ping.returncode}: {ping.stdout[-500:]} {ping.stderr[-500:]}")
    print(f"ready : is_flow_ready, dry_run, jina ping flow (exit {ping.returncode})")

    docs = DocList[Query]([Query(id=i, text=t, tags={"n": int(i[-2:]), "lang": "en"}) for i, t in IDS.items()])
    if API_KEY:
        # Many small requests: the refusal must come as UNAUTHENTICATED even while they are sent.
        expect_error("index without the API key", "UNAUTHENTICATED",
                     lambda: client.post("/index", inputs=docs, request_size=1, return_type=DocList[Query],
                                         timeout=TIMEOUT_S))
        expect_error("index with a wrong API key", "UNAUTHENTICATED",
                     lambda: client.post("/index", inputs=docs, return_type=DocList[Query], timeout=TIMEOUT_S,
                                         metadata=(("authorization", "Bearer not-the-key"),)))

    # ---- index: request_size and return_responses ---------------------------------------
    responses = client.post(
        "/index", inputs=docs, request_size=5, return_responses=True, return_type=DocList[Query],
        timeout=TIMEOUT_S, metadata=METADATA,
    )
    check(len(responses) == 4, f"index with request_size=5: {len(responses)} responses, not 4")
    seen = []
    for r in responses:
        check(r.header.status.code == 0, f"index response status {r.header.status}")
        check(len(r.docs) == 5, f"an index response holds {len(r.docs)} documents, not 5")
        seen.extend(d.id for d in r.docs)
    check(sorted(seen) == sorted(IDS), f"indexed ids came back as {sorted(seen)}")
    print(f"index : {len(responses)} responses, {len(seen)} documents")

    # ---- search: streaming call, unary call, a List[...] schema -------------------------
    queries = DocList[Query]([Query(id=f"q-{i}", text=TEXTS[i]) for i in (0, 3, 7, 12, 19)])
    results = client.post(
        "/search", inputs=queries, parameters={"top_k": TOP_K}, request_size=2,
        return_type=DocList[Query], timeout=TIMEOUT_S, metadata=METADATA,
    )
    check_matches("search (stream)", list(results), queries)
    results = client.post(
        "/search", inputs=queries[:2], parameters={"top_k": TOP_K}, stream=False,
        return_type=DocList[Query], timeout=TIMEOUT_S, metadata=METADATA,
    )
    check_matches("search (unary)", list(results), queries[:2])
    plain = DocList[PlainDoc]([PlainDoc(id="p-0", text=TEXTS[5])])
    results = client.post(
        "/search", inputs=plain, parameters={"top_k": TOP_K}, return_type=DocList[PlainDoc],
        timeout=TIMEOUT_S, metadata=METADATA,
    )
    check_matches("search (List schema)", list(results), plain)

    # ---- errors ---------------------------------------------------------------------------
    # An endpoint no executor serves: the documents pass through unchanged, as in Jina.
    sent = DocList[Query]([Query(id="pass-1", text="nobody handles /nope", tags={"k": "v"})])
    results = list(client.post("/nope", inputs=sent, return_type=DocList[Query],
                               timeout=TIMEOUT_S, metadata=METADATA))
    if check(len(results) == 1, f"post('/nope') returned {len(results)} documents, not 1"):
        got = results[0]
        check(got.id == "pass-1" and got.text == "nobody handles /nope" and got.tags.get("k") == "v"
              and not got.matches,
              f"post('/nope') changed the document: {got!r}")
        print("nope  : the document passed through /nope unchanged")
    # The gateway's --max-body-bytes is 1 MiB in the test: a 2 MiB request is refused whole.
    big = DocList[Query]([Query(id="big", text="x" * (2 << 20))])
    expect_error("a request over --max-body-bytes", "OUT_OF_RANGE",
                 lambda: client.post("/search", inputs=big, return_type=DocList[Query],
                                     timeout=TIMEOUT_S, metadata=METADATA))
    if READONLY_KEY:
        ro = (("authorization", f"Bearer {READONLY_KEY}"),)
        results = client.post("/search", inputs=queries[:1], parameters={"top_k": TOP_K},
                              return_type=DocList[Query], timeout=TIMEOUT_S, metadata=ro)
        check_matches("search (read-only key)", list(results), queries[:1])
        expect_error("index with a read-only key", "PERMISSION_DENIED",
                     lambda: client.post("/index", inputs=docs, request_size=1, return_type=DocList[Query],
                                         timeout=TIMEOUT_S, metadata=ro))

    if REFUSED:
        FAILURES.append(f"non-loopback attempts: {REFUSED[:3]}")
    took = time.monotonic() - t0
    if FAILURES:
        print(f"FAILED jina grpc check ({len(FAILURES)} failure(s), {took:.1f}s):")
        for f in FAILURES:
            print(f"  - {f}")
        return 1
    print(f"PASSED jina grpc check ({took:.1f}s)")
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except Exception as e:
        import traceback

        traceback.print_exc()
        print(f"FAILED jina grpc check: {type(e).__name__}: {e}")
        rc = 1
    sys.stdout.flush()
    sys.exit(rc)
