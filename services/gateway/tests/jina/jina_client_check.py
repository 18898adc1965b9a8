#!/usr/bin/env python3
"""Check that the Jina 3.x HTTP client can talk to a running flowmesh gateway.

Usage:
    python jina_client_check.py http://127.0.0.1:PORT

Run it with the interpreter printed by scripts/jina-venv.sh (jina 3.34.x,
docarray v2, pydantic < 2.11.4). It

  1. indexes ~20 short text documents (with ids and tags) through
     ``jina.Client(protocol='http').post('/index', ...)``;
  2. searches with a few of them (``parameters={'top_k': 3}``) and checks that
     every query gets 1..top_k matches, that the best match is the indexed
     document with the identical text, and that all match ids were indexed;
  3. searches once more with ``return_embeddings: true`` and checks that the
     embeddings come back as float vectors (identical text -> identical vector;
     JINA_CHECK_SKIP_EMBEDDINGS=1 skips this step);
  4. asks whether the Flow is ready, with ``Client.is_flow_ready()`` and the
     older ``Client.dry_run()`` (both ``GET /dry_run``; no API key needed), and
     with JINA_CHECK_EXPECT_NOT_READY=1 checks that both say False instead and
     stops there;
  5. posts to ``/foo``, an endpoint no executor serves: as in Jina, the
     documents come back unchanged (the client posts it to ``/post``);
  6. checks which HTTP requests the client made (it must have read
     /openapi.json and posted to /index and /search, not to a fallback path).

Exit status: 0 all checks passed, 1 a check failed, 2 usage or setup error.

No connection or DNS lookup to anything but loopback is allowed in this
process: socket.socket.connect/connect_ex/sendto and socket.getaddrinfo & co.
are patched *before* jina is imported (loopback_guard.py) and raise for any other host; any such
attempt also fails the check.
"""

import os
import signal
import sys
import time
from urllib.parse import urlsplit

# --------------------------------------------------------------------------
# Loopback only, and Jina's environment: installed before jina / aiohttp are imported.
# --------------------------------------------------------------------------
import loopback_guard  # noqa: E402  (next to this file)

loopback_guard.install()
REFUSED = loopback_guard.REFUSED

# --------------------------------------------------------------------------
# Usage and a hard deadline for the whole check.
# --------------------------------------------------------------------------
# The gateway's API key, when it has keys: every call sends it as `api-key` (Jina's client passes
# `headers=` on to aiohttp), and a call without it must be refused. Read from the environment, not
# from argv, so that it is on no command line.
API_KEY = os.environ.get("JINA_CHECK_API_KEY") or None
# Set when the gateway's Flow is not ready: the check is then only that the client says so.
EXPECT_NOT_READY = os.environ.get("JINA_CHECK_EXPECT_NOT_READY") == "1"
HEADERS = {"api-key": API_KEY} if API_KEY else {}

TOTAL_DEADLINE_S = int(os.environ.get("JINA_CHECK_DEADLINE_S", "240"))
REQUEST_TIMEOUT_S = int(os.environ.get("JINA_CHECK_REQUEST_TIMEOUT_S", "60"))
TOP_K = 3


def _usage_exit(msg):
    sys.stderr.write(f"jina_client_check: {msg}\nusage: {sys.argv[0]} http://127.0.0.1:PORT\n")
    sys.exit(2)


def _on_deadline(signum, frame):
    sys.stderr.write(f"FAIL: jina client check did not finish within {TOTAL_DEADLINE_S}s\n")
    sys.stderr.flush()
    os._exit(1)


if len(sys.argv) != 2:
    _usage_exit("expected exactly one argument, the gateway URL")
_url = urlsplit(sys.argv[1])
if _url.scheme != "http" or not _url.hostname or _url.port is None:
    _usage_exit(f"not an http://HOST:PORT URL: {sys.argv[1]!r}")
if not loopback_guard.is_loopback(_url.hostname):
    _usage_exit(f"refusing non-loopback gateway host {_url.hostname!r}")
HOST, PORT = _url.hostname, _url.port

signal.signal(signal.SIGALRM, _on_deadline)
signal.alarm(TOTAL_DEADLINE_S)

# --------------------------------------------------------------------------
# Imports of jina & co (after the guard).
# --------------------------------------------------------------------------
import warnings  # noqa: E402

warnings.filterwarnings("ignore")

try:
    from typing import Any, Dict, List, Optional  # noqa: E402

    import aiohttp  # noqa: E402
    import numpy as np  # noqa: E402
    from docarray import BaseDoc, DocList  # noqa: E402
    from docarray.typing import NdArray  # noqa: E402

    import jina  # noqa: E402
    from jina import Client  # noqa: E402
except Exception as e:  # pragma: no cover - environment problem
    sys.stderr.write(f"jina_client_check: cannot import jina/docarray: {e!r} (run it with the python that scripts/jina-venv.sh prints)\n")
    sys.exit(2)

# Record every HTTP request the jina client makes (method, path, status).
HTTP_LOG = []
_real_request = aiohttp.ClientSession._request


async def _recording_request(self, method, str_or_url, *args, **kwargs):
    path = urlsplit(str(str_or_url)).path
    try:
        resp = await _real_request(self, method, str_or_url, *args, **kwargs)
    except Exception as e:
        HTTP_LOG.append((method.upper(), path, f"error {type(e).__name__}"))
        raise
    HTTP_LOG.append((method.upper(), path, resp.status))
    return resp


aiohttp.ClientSession._request = _recording_request


# --------------------------------------------------------------------------
# The document class the issue asks for.
# --------------------------------------------------------------------------
class FlowDoc(BaseDoc):
    text: Optional[str] = None
    tags: Dict[str, Any] = {}
    embedding: Optional[NdArray] = None
    matches: Optional[List["FlowDoc"]] = None


FlowDoc.model_rebuild()

from corpus import TEXTS  # noqa: E402  (next to this file: the checks' shared documents)
QUERY_INDEXES = [0, 3, 7, 12, 19]


class CheckFailed(Exception):
    pass


def hint_for(exc):
    """A likely cause on the gateway side for a client-side exception, or ''."""
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "BadRequestType":
        return (
            "the response JSON has a key jina's DataRequestProto does not know: top level may hold only "
            "header/parameters/routes/data; header only request_id/exec_endpoint/target_executor/timeout/status; "
            "each routes item only executor/start_time/end_time (RFC 3339 strings)/status"
        )
    if "null" in text and ("expected" in text or "invalid type" in text):
        return "the gateway must accept null for optional document fields (jina sends \"matches\": null, \"embedding\": null)"
    if type(exc).__name__ == "BadClient":
        return "the gateway answered 404 for the POST path the client chose"
    return ""


def check(cond, reason):
    if not cond:
        raise CheckFailed(reason)


def check_embeddings(client, want_id, text):
    """Search with return_embeddings=true: each query comes back with its embedding as a float
    vector, and two queries with identical text get identical vectors. (Matches carry id, score
    and content; the gateway does not return stored vectors of matches.)"""
    res = list(
        client.post(
            "/search",
            inputs=DocList[FlowDoc]([FlowDoc(id="q-emb-a", text=text), FlowDoc(id="q-emb-b", text=text)]),
            parameters={"top_k": TOP_K, "return_embeddings": True},
            return_type=DocList[FlowDoc],
            timeout=REQUEST_TIMEOUT_S,
            headers=HEADERS,
        )
        or []
    )
    check(len(res) == 2 and res[0].matches, "search with return_embeddings returned no matches")
    best = res[0].matches[0]
    check(best.id == want_id, f"return_embeddings search: best match {best.id}, expected {want_id}")
    check(
        res[0].embedding is not None and res[1].embedding is not None,
        "return_embeddings=true but a query came back without its embedding",
    )
    a = np.asarray(res[0].embedding, dtype=np.float64).ravel()
    b = np.asarray(res[1].embedding, dtype=np.float64).ravel()
    check(a.size > 0 and np.all(np.isfinite(a)), f"query embedding is empty or not finite: {a[:8]}")
    check(
        a.shape == b.shape and np.allclose(a, b, atol=1e-6),
        "identical text did not give an identical embedding",
    )
    print(f"  ok  q-emb: best {best.id}, query embedding dim {a.size}")


def check_readiness(client, expected):
    """Client.is_flow_ready() and the deprecated Client.dry_run() (both GET /dry_run, which
    needs no API key) say `expected`."""
    ready = client.is_flow_ready(timeout=REQUEST_TIMEOUT_S)
    check(ready is expected, f"is_flow_ready() returned {ready!r}, expected {expected!r}")
    dry = client.dry_run(timeout=REQUEST_TIMEOUT_S)
    check(dry is expected, f"dry_run() returned {dry!r}, expected {expected!r}")
    print(f"ready : is_flow_ready() and dry_run() say {expected}")


def check_pass_through(client):
    """An endpoint no executor serves: the documents pass through unchanged, as in Jina."""
    sent = DocList[FlowDoc]([FlowDoc(id="pass-1", text="nobody handles /foo", tags={"k": "v"})])
    res = list(
        client.post("/foo", inputs=sent, return_type=DocList[FlowDoc], timeout=REQUEST_TIMEOUT_S, headers=HEADERS)
        or []
    )
    check(len(res) == 1, f"post('/foo') returned {len(res)} documents, expected 1")
    got = res[0]
    check(
        got.id == "pass-1" and got.text == "nobody handles /foo" and got.tags.get("k") == "v",
        f"post('/foo') changed the document: {got!r}",
    )
    print("foo   : the document passed through /foo unchanged")


def main():
    t0 = time.monotonic()
    failures = []
    print(f"jina {jina.__version__} HTTP client -> http://{HOST}:{PORT}  (top_k={TOP_K})")

    client = Client(host=HOST, port=PORT, protocol="http")
    if EXPECT_NOT_READY:
        check_readiness(client, False)
        print("PASSED jina client check: the client sees that the Flow is not ready")
        return 0

    # ---- index ------------------------------------------------------------
    index_docs = DocList[FlowDoc](
        [FlowDoc(id=f"doc-{i:02d}", text=t, tags={"n": str(i), "lang": "en"}) for i, t in enumerate(TEXTS)]
    )
    by_id = {d.id: d for d in index_docs}
    id_by_text = {d.text: d.id for d in index_docs}
    if API_KEY:
        # Without the key the gateway refuses the call, and Jina's client says so.
        try:
            client.post("/index", inputs=index_docs, return_type=DocList[FlowDoc], timeout=REQUEST_TIMEOUT_S)
            failures.append("an /index without the API key was accepted")
        except Exception as e:  # the client raises on a 401; which class depends on its version
            if "401" not in str(e) and "nauthorized" not in str(e):
                failures.append(f"an /index without the API key failed, but not with a 401: {e!r}")
            else:
                print("index : without the API key: refused (401)")
    indexed = client.post(
        "/index", inputs=index_docs, return_type=DocList[FlowDoc], timeout=REQUEST_TIMEOUT_S,
        headers=HEADERS,
    )
    indexed = list(indexed or [])
    print(f"index : sent {len(index_docs)} docs, got {len(indexed)} back")
    for d in indexed:
        check(d.id in by_id, f"/index returned a document with an id that was not sent: {d.id!r}")

    # ---- search -----------------------------------------------------------
    queries = DocList[FlowDoc]([FlowDoc(id=f"q-{i:02d}", text=TEXTS[i]) for i in QUERY_INDEXES])
    results = client.post(
        "/search",
        inputs=queries,
        parameters={"top_k": TOP_K},
        return_type=DocList[FlowDoc],
        timeout=REQUEST_TIMEOUT_S,
        headers=HEADERS,
    )
    results = list(results or [])
    print(f"search: sent {len(queries)} queries, got {len(results)} results")
    check(
        len(results) == len(queries),
        f"/search returned {len(results)} documents for {len(queries)} queries",
    )
    res_by_id = {r.id: r for r in results}
    for q in queries:
        r = res_by_id.get(q.id)
        try:
            check(r is not None, f"no result document with the query's id {q.id!r} (got ids {sorted(res_by_id)})")
            m = r.matches or []
            check(len(m) >= 1, f"query {q.id} ({q.text!r}) got no matches")
            check(
                len(m) <= TOP_K,
                f"query {q.id} got {len(m)} matches, more than top_k={TOP_K} (note: jina sends "
                f"parameters.top_k as the float {float(TOP_K)!r}; the gateway must read it as an integer)",
            )
            bad = [x.id for x in m if x.id not in by_id]
            check(not bad, f"query {q.id}: match ids that were never indexed: {bad}")
            best = m[0]
            want = id_by_text[q.text]
            check(
                best.id == want and best.text == q.text,
                f"query {q.id} ({q.text!r}): best match is {best.id} ({best.text!r}), expected {want}",
            )
            check(
                best.tags.get("lang") == "en" and best.tags.get("n") == by_id[want].tags["n"],
                f"query {q.id}: best match tags {best.tags!r} differ from indexed tags {by_id[want].tags!r}",
            )
            emb_note = " (embeddings present)" if any(x.embedding is not None for x in m) else ""
            print(f"  ok  {q.id} {q.text!r}: {len(m)} matches, best {best.id}, all {[x.id for x in m]}{emb_note}")
        except CheckFailed as e:
            print(f"  FAIL {e}")
            failures.append(str(e))

    # ---- search with embeddings ------------------------------------------
    skip_emb = os.environ.get("JINA_CHECK_SKIP_EMBEDDINGS") == "1"
    if skip_emb:
        print("  skip q-emb (JINA_CHECK_SKIP_EMBEDDINGS=1)")
    else:
        try:
            check_embeddings(client, id_by_text[TEXTS[5]], TEXTS[5])
        except CheckFailed as ex:
            print(f"  FAIL {ex}")
            failures.append(str(ex))

    # ---- readiness, and an endpoint that no executor serves -------------------
    for step in (lambda: check_readiness(client, True), lambda: check_pass_through(client)):
        try:
            step()
        except CheckFailed as ex:
            print(f"  FAIL {ex}")
            failures.append(str(ex))

    # ---- which HTTP requests did the client make? -------------------------
    print("HTTP requests made by the jina client:")
    for method, path, status in HTTP_LOG:
        print(f"  {method:4s} {path} -> {status}")
    posts = [(p, s) for m, p, s in HTTP_LOG if m == "POST"]
    if not any(m == "GET" and p == "/openapi.json" and s == 200 for m, p, s in HTTP_LOG):
        failures.append("the client never got a 200 for GET /openapi.json")
    if not any(m == "GET" and p == "/dry_run" and s == 200 for m, p, s in HTTP_LOG):
        failures.append("the client never got a 200 for GET /dry_run")
    if not any(p == "/post" and s == 200 for p, s in posts):
        failures.append("post('/foo') did not go to POST /post with a 200")
    for want in ("/index", "/search"):
        if not any(p == want for p, _ in posts):
            failures.append(
                f"no POST to {want}: the client did not find it under 'paths' in /openapi.json "
                f"(posted to {sorted(set(p for p, _ in posts))})"
            )
    # With a key, the one refused call above is the only non-200 answer allowed.
    allowed = [("/index", 401)] if API_KEY else []
    bad_status = [(p, s) for p, s in posts if s != 200 and (p, s) not in allowed]
    if bad_status:
        failures.append(f"non-200 POST responses: {bad_status}")

    if REFUSED:
        failures.append(f"{len(REFUSED)} non-loopback network attempt(s) refused: {REFUSED[:3]}")

    took = time.monotonic() - t0
    if failures:
        print(f"FAILED jina client check ({len(failures)} failure(s), {took:.1f}s):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(
        f"PASSED jina client check: indexed {len(index_docs)}, {len(queries) + (0 if skip_emb else 1)} queries answered "
        f"with correct top matches, no non-loopback traffic ({took:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    except CheckFailed as e:
        print(f"FAILED jina client check: {e}")
        rc = 1
    except Exception as e:  # any client-side exception is a failed check, with its reason
        import traceback

        traceback.print_exc()
        print(f"FAILED jina client check: {type(e).__name__}: {e}")
        hint = hint_for(e)
        if hint:
            print(f"  hint: {hint}")
        if REFUSED:
            print(f"  (non-loopback attempts refused: {REFUSED[:3]})")
        if HTTP_LOG:
            print("  HTTP requests so far: " + ", ".join(f"{m} {p} -> {s}" for m, p, s in HTTP_LOG))
        rc = 1
    sys.stdout.flush()
    sys.exit(rc)
