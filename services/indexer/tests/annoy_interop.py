"""Python side of the indexer's Annoy interoperability test (annoy_interop.rs).

Reads one JSON request on stdin and writes one JSON answer on stdout, using Spotify's
`annoy` package (scripts/annoy-venv.sh installs it):

  {"action": "search", "path": P, "dim": D, "metric": M,
   "queries": [[...], ...], "n": N, "search_k": K, "items": [ids]}
      loads the file at P and answers
      {"n_items": .., "n_trees": .., "results": [{"ids": [..], "distances": [..]}, ..],
       "vectors": [get_item_vector(i) for i in items]}

  {"action": "build", "path": P, "dim": D, "metric": M, "vectors": [[...], ...],
   "trees": T, "seed": S}
      builds an index of the vectors (item i = vectors[i]) on one thread, so that the
      seed fixes it, saves it to P and answers {"n_items": .., "n_trees": ..}
"""

import json
import sys

from annoy import AnnoyIndex


def search(req):
    index = AnnoyIndex(req["dim"], req["metric"])
    index.load(req["path"])
    results = []
    for query in req["queries"]:
        ids, distances = index.get_nns_by_vector(
            query, req["n"], search_k=req["search_k"], include_distances=True
        )
        results.append({"ids": ids, "distances": distances})
    answer = {
        "n_items": index.get_n_items(),
        "n_trees": index.get_n_trees(),
        "results": results,
        "vectors": [index.get_item_vector(i) for i in req["items"]],
    }
    index.unload()
    return answer


def build(req):
    index = AnnoyIndex(req["dim"], req["metric"])
    index.set_seed(req["seed"])
    for i, vector in enumerate(req["vectors"]):
        index.add_item(i, vector)
    index.build(req["trees"], n_jobs=1)
    index.save(req["path"])
    return {"n_items": index.get_n_items(), "n_trees": index.get_n_trees()}


def main():
    req = json.load(sys.stdin)
    actions = {"search": search, "build": build}
    if req.get("action") not in actions:
        sys.exit(f"annoy_interop.py: unknown action {req.get('action')!r}")
    json.dump(actions[req["action"]](req), sys.stdout)


if __name__ == "__main__":
    main()
