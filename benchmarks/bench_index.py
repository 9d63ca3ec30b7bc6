"""Nearest-neighbour benchmark of :class:`imgsim.index.Index`: FAISS flat vs IVF vs HNSW vs IVF-PQ.

Vectors: with ``--vectors DIR``, the real distribution of
:mod:`benchmarks.ann_data` — ImageNet MobileNetV2 GAP embeddings (1280-d,
what ``reconstruct`` shortlists with) of the 424 shared photos' augmented
views, with their scene labels; without it, random unit vectors (a worst
case: nearly equidistant points; only a smoke test).

For each database size N, every method finds the ``k`` = 10 nearest database
vectors of each of 1,000 queries (fresh augmented views, not in the
database). Reported per method and setting:

* build time (adding the vectors, for IVF kinds k-means and PQ training on a
  sample too), once;
* search time for all queries, median of ``repeats``, and the speed-up =
  exact search time / this search time (query throughput ratio), the exact
  search being timed at the start and again at the end of each size (the
  mean of the two; both are in the JSON): other jobs' load moves during a run;
* memory: what the index holds, counted from its arrays (float vectors or
  PQ codes, ids, inverted lists, HNSW graph, IVF-PQ's precomputed tables, the
  re-ranking copy of IVF-PQ + refine), and the run's peak RSS at the end;
* recall@10 against the exact top-10 (FAISS flat); distance recall@10, the
  fraction of returned vectors no farther than the exact 10th (a tie or a
  near-duplicate counts as a hit); and same-scene recall@10:
  the fraction of the 10 returned vectors from the query's scene (the exact
  search's own figure is in its row).

Memory: the database is held once as float16 (N × 1280 × 2 bytes, 2.6 GB at
10^6) and added to each index in float32 blocks of ``BLOCK`` rows, into
float storage reserved up front (growing it would copy it); one index lives
at a time. Peak for N = 10^6 is then about 2.6 GB + one index (5.1 GB of
float32 vectors for flat, IVF, HNSW and IVF-PQ's re-ranking copy, plus
HNSW's graph).

Usage, from the repository root::

    python -m benchmarks.bench_index --vectors /tmp/scale/ann --sizes 100000 1000000
    python -m benchmarks.bench_index --sizes 10000          # random unit vectors, quick trial
"""

import argparse
import gc
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgsim.cli import set_thread_waits  # noqa: E402

set_thread_waits()  # a script owns its process, as the imgsim command does (before FAISS loads)
from imgsim.index import Index  # noqa: E402

BLOCK = 50_000


def methods(n):
    """{method: (Index settings, list of settings swept on the built index)} for ``n`` vectors."""
    nlist = max(1, int(math.sqrt(n)))
    return {
        "ivf": ({"kind": "ivf", "nlist": nlist}, [{"nprobe": p} for p in (1, 2, 3, 4, 8, 16)]),
        "hnsw": ({"kind": "hnsw", "hnsw_m": 32}, [{"ef_search": e} for e in (16, 32, 64, 128, 256)]),
        "hnsw-efc200": ({"kind": "hnsw", "hnsw_m": 32, "ef_construction": 200},
                        [{"ef_search": e} for e in (16, 64, 256)]),
        # refine=1 re-ranks only the k PQ results: PQ's own ranking, exact distances
        "ivfpq": ({"kind": "ivfpq", "nlist": nlist, "pq_m": 64, "refine": 1},
                  [{"nprobe": p, "refine": r} for p in (1, 2, 3, 4, 8) for r in (1, 10)]),
    }


def unit_vectors(n, dim, rng):
    """``n`` float32 vectors uniformly distributed on the unit sphere."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def random_data(n, dim=128, n_queries=1000, seed=0):
    """Random unit vectors, each its own "scene" (same-scene recall is then meaningless)."""
    rng = np.random.default_rng(seed)
    database = unit_vectors(n, dim, rng).astype(np.float16)
    queries = unit_vectors(n_queries, dim, rng)
    return database, np.arange(n), queries, np.full(n_queries, -1), None


def index_bytes(raw):
    """Bytes a FAISS index holds: vectors or codes, ids, inverted lists, graph, tables.

    Counted from the index's own arrays (resident-set growth is unreliable
    once an earlier index's memory has been freed and is reused).
    """
    import faiss

    raw = faiss.downcast_index(raw)
    if isinstance(raw, faiss.IndexRefine):
        return index_bytes(raw.base_index) + index_bytes(raw.refine_index)
    if isinstance(raw, faiss.IndexHNSW):
        graph = raw.hnsw
        return (index_bytes(raw.storage) + 4 * graph.neighbors.size() + 4 * graph.levels.size()
                + 8 * graph.offsets.size())
    if isinstance(raw, faiss.IndexIVF):
        lists = raw.invlists
        entries = sum(lists.list_size(i) for i in range(raw.nlist))
        extra = 4 * raw.precomputed_table.size() if isinstance(raw, faiss.IndexIVFPQ) else 0
        return entries * (lists.code_size + 8) + index_bytes(raw.quantizer) + extra
    return int(raw.codes.size())  # flat: n · dim · 4


def median_time(repeats, fn):
    """(median wall time in seconds over ``repeats`` calls, result of the last call)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def recall(found, truth):
    """Mean over rows of |found ∩ truth| / k (-1 padding never matches)."""
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth)]))


def distance_recall(found, queries, database, truth_distances):
    """Mean fraction of the returned ids at most as far as the exact k-th neighbour (ties count as hits)."""
    vectors = database[np.maximum(found, 0)].astype(np.float32)
    d = np.linalg.norm(vectors - queries[:, None, :], axis=-1)
    return float(np.mean(np.where(found >= 0, d <= truth_distances[:, -1:] * (1 + 1e-4) + 1e-6, False)))


def same_scene(found, query_scene, scene_of):
    """Mean fraction of the returned ids whose scene is the query's (-1 padding counts as a miss)."""
    if scene_of is None:
        return None
    hits = np.where(found >= 0, scene_of[np.maximum(found, 0)] == query_scene[:, None], False)
    return float(hits.mean())


def _reserve(raw, n):
    """Give the float vectors of a FAISS index room for ``n`` now (no 2x copy while growing)."""
    import faiss

    raw = faiss.downcast_index(raw)
    if isinstance(raw, faiss.IndexRefine):
        _reserve(raw.refine_index, n)
    elif isinstance(raw, faiss.IndexHNSW):
        _reserve(raw.storage, n)
    elif isinstance(raw, faiss.IndexFlatCodes):
        raw.codes.resize(n * raw.code_size)  # shrinking keeps the capacity
        raw.codes.resize(raw.ntotal * raw.code_size)


def build(settings, database, dim):
    """An Index of ``settings`` holding ``database`` (float16), added in float32 blocks."""
    index = Index(dim, **settings)
    start = time.perf_counter()
    first = min(len(database), max(BLOCK, 64 * (settings.get("nlist") or 1), 10_000))
    index.add(database[:first].astype(np.float32))  # IVF kinds train on (a sample of) this block
    _reserve(index._faiss, len(database))
    for i in range(first, len(database), BLOCK):
        index.add(database[i:i + BLOCK].astype(np.float32))
    return index, time.perf_counter() - start


def run(database, photo, queries, query_photo, scenes, sizes, names=("ivf", "hnsw", "ivfpq"),
        k=10, repeats=3, verbose=True):
    """Benchmark every method at every database size (prefixes of ``database``).

    Returns a list of dicts: ``n``, ``method``, ``setting``, ``build_s``,
    ``search_s``, ``speedup``, ``memory_mb``, ``recall``, ``same_scene``.
    """
    dim = database.shape[1]
    scene_ids = None
    if scenes is not None:
        codes = {s: i for i, s in enumerate(dict.fromkeys(scenes))}
        scene_ids = np.array([codes[s] for s in scenes])
    rows = []
    for n in sizes:
        data = database[:n]
        scene_of = None if scene_ids is None else scene_ids[photo[:n]]
        query_scene = None if scene_ids is None else scene_ids[query_photo]
        index, build_s = build({"kind": "flat"}, data, dim)
        memory = index_bytes(index._faiss) / 2**20
        exact_s, (truth_d, truth) = median_time(repeats, lambda: index.search(queries, k))
        rows.append({"n": n, "method": "flat (exact)", "setting": "", "build_s": build_s,
                     "search_s": exact_s, "speedup": 1.0, "memory_mb": memory, "recall": 1.0,
                     "distance_recall": 1.0, "same_scene": same_scene(truth, query_scene, scene_of)})
        if verbose:
            _print_rows(rows[-1:], header=len(rows) == 1)
        del index
        gc.collect()
        for name in names:
            settings, sweep = methods(n)[name]
            index, build_s = build(settings, data, dim)
            memory = index_bytes(index._faiss) / 2**20
            for values in sweep:
                for knob, value in values.items():
                    setattr(index, knob, value)
                search_s, (_, ids) = median_time(repeats, lambda: index.search(queries, k))
                label = ", ".join(f"{key}={v}" for key, v in dict(settings, **values).items()
                                  if key != "kind")
                rows.append({"n": n, "method": name, "setting": label,
                             "build_s": build_s, "search_s": search_s, "speedup": exact_s / search_s,
                             "memory_mb": memory, "recall": recall(ids, truth),
                             "distance_recall": distance_recall(ids, queries, data, truth_d),
                             "same_scene": same_scene(ids, query_scene, scene_of)})
                if verbose:
                    _print_rows(rows[-1:], header=False)
            del index, ids
            gc.collect()
        if names:  # the exact search timed again: other jobs' load may have changed meanwhile
            index, _ = build({"kind": "flat"}, data, dim)
            exact_end, _ = median_time(repeats, lambda: index.search(queries, k))
            del index
            gc.collect()
            exact_mean = (exact_s + exact_end) / 2
            for row in rows:
                if row["n"] == n:
                    row.update(exact_s_start=exact_s, exact_s_end=exact_end,
                               speedup=exact_mean / row["search_s"])
            if verbose:
                print(f"exact search re-timed at the end: {exact_end:.3f} s (start {exact_s:.3f} s); "
                      "speed-ups against their mean:", flush=True)
                _print_rows([r for r in rows if r["n"] == n], header=True)
    return rows


COLUMNS = ("n", "method", "build_s", "search_s", "speedup", "memory_mb", "recall", "distance_recall",
           "same_scene", "setting")
HEADINGS = ("N", "method", "build s", "search s", "speed-up", "memory MB", "recall@10", "dist-rec",
            "same-scene", "settings")
WIDTHS = (10, 13, 9, 9, 9, 10, 10, 9, 10, 0)


def _cell(column, value):
    if value is None:
        return "-"
    if column == "n":
        return f"{value:,}"
    if column in ("build_s", "search_s"):
        return f"{value:.3f}"
    if column == "speedup":
        return f"{value:.1f}x"
    if column == "memory_mb":
        return f"{value:.0f}"
    if column in ("recall", "same_scene", "distance_recall"):
        return f"{value:.4f}"
    return str(value)


def _print_rows(rows, header=True):
    def line(cells):
        return "  ".join(c.rjust(w) if w else c for c, w in zip(cells, WIDTHS)).rstrip()

    if header:
        print(line(HEADINGS), flush=True)
    for row in rows:
        print(line([_cell(c, row[c]) for c in COLUMNS]), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", default=None,
                        help="folder written by benchmarks.ann_data (default: random unit vectors)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--methods", nargs="+", default=["ivf", "hnsw", "ivfpq"],
                        choices=["ivf", "hnsw", "hnsw-efc200", "ivfpq"])
    parser.add_argument("--windows-per-view", type=int, default=14,
                        help="with --vectors: vectors taken from each view (1: whole-image embeddings only)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="search timings: median of this many")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    import faiss

    if args.vectors:
        from benchmarks.ann_data import load

        data = load(args.vectors, max(args.sizes), args.windows_per_view, n_queries=args.queries,
                    dtype=np.float16)
        data = data[:2] + (data[2].astype(np.float32),) + data[3:]
        what = f"real GAP embeddings from {args.vectors}, {args.windows_per_view} per view"
    else:
        data = random_data(max(args.sizes), n_queries=args.queries)
        what = "random unit vectors"
    print(f"{what}: dim {data[0].shape[1]}, {len(data[2])} queries, k=10, search median of "
          f"{args.repeats}; FAISS threads {faiss.omp_get_max_threads()}; load {os.getloadavg()[0]:.2f}",
          flush=True)
    rows = run(*data, sizes=args.sizes, names=args.methods, repeats=args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.2f}; peak RSS "
          f"{__import__('resource').getrusage(__import__('resource').RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"vectors": what, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
