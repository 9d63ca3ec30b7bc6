"""Benchmark of :class:`imgsim.index.Index` (FAISS flat, IVF, HNSW) against numpy brute force.

For each database size N: N synthetic unit vectors (float32, seeded) and
``n_queries`` separate unit-vector queries; each method finds the ``k`` nearest
database vectors of every query. Reported per method:

* build time (adding the vectors; for IVF, k-means training too), once;
* search time for all queries, best of 3 (``time.perf_counter``);
* speed-up = numpy search time / method search time;
* recall@k against numpy's exact top-k;
* for flat, the fraction of query rows whose ids equal numpy's exactly
  (rows can differ only by float32 rounding between near-ties).

Random unit vectors in high dimension are nearly equidistant, a worst case for
approximate methods: recall on real, clustered embeddings is usually higher.

The largest database is generated once and the smaller sizes are prefixes of
it; each index is freed before the next is built. Peak memory for N = 10^6,
dim 128 is roughly the 512 MB database, plus one index copy of it (HNSW adds
its graph, ~300 MB), plus numpy's per-block scratch (about 400 MB).

Usage, from the repository root::

    python -m benchmarks.bench_index                  # N = 100,000 and 1,000,000
    python -m benchmarks.bench_index --sizes 10000    # quick trial
"""

import argparse
import gc
import time

import numpy as np

from imgsim.index import Index

METHODS = {
    "faiss flat": {"kind": "flat"},
    "faiss ivf": {"kind": "ivf", "nprobe": 16},
    "faiss hnsw": {"kind": "hnsw", "ef_search": 64},
}

# numpy brute force works on query blocks of at most this many distances (float32 block
# plus argpartition's int64 output: 12 bytes each, so about 400 MB).
BLOCK_ELEMENTS = 1 << 25


def unit_vectors(n, dim, rng):
    """``n`` float32 vectors uniformly distributed on the unit sphere."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def numpy_knn(queries, database, k):
    """Exact top-``k`` Euclidean neighbours by chunked matmul + argpartition.

    Returns (distances, ids), each (n_queries, k), ascending by distance.
    """
    n = len(database)
    k = min(k, n)
    db_sq = np.einsum("ij,ij->i", database, database)
    block = max(1, BLOCK_ELEMENTS // n)
    distances = np.empty((len(queries), k), np.float32)
    ids = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        squared = q @ database.T  # (block, n)
        squared *= -2
        squared += db_sq
        squared += np.einsum("ij,ij->i", q, q)[:, None]
        top = np.argpartition(squared, k - 1, axis=1)[:, :k]
        top_sq = np.take_along_axis(squared, top, axis=1)
        order = np.argsort(top_sq, axis=1)
        ids[start:start + block] = np.take_along_axis(top, order, axis=1)
        distances[start:start + block] = np.sqrt(np.maximum(np.take_along_axis(top_sq, order, axis=1), 0))
    return distances, ids


def best_of(repeats, fn):
    """(best wall time in seconds over ``repeats`` calls, result of the last call)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def recall(found, truth):
    """Mean over rows of |found ∩ truth| / k (-1 padding never matches)."""
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(f, t).size / k for f, t in zip(found, truth)]))


def run(sizes=(100_000, 1_000_000), dim=128, n_queries=1000, k=10, seed=0, repeats=3, verbose=False):
    """Benchmark every method at every database size.

    Returns a list of dicts, one per (size, method), with keys ``n``, ``method``,
    ``build_s`` (None for numpy), ``search_s``, ``speedup``, ``recall``,
    ``identical_rows`` (flat only, else None) and ``settings``.
    """
    rng = np.random.default_rng(seed)
    database = unit_vectors(max(sizes), dim, rng)
    queries = unit_vectors(n_queries, dim, rng)
    rows = []
    for n in sizes:
        data = database[:n]  # a view: no copy
        numpy_s, (_, truth) = best_of(repeats, lambda: numpy_knn(queries, data, k))
        rows.append({"n": n, "method": "numpy", "build_s": None, "search_s": numpy_s, "speedup": 1.0,
                     "recall": 1.0, "identical_rows": None, "settings": ""})
        if verbose:
            _print_rows(rows[-1:], header=len(rows) == 1)
        for method, settings in METHODS.items():
            start = time.perf_counter()
            index = Index(dim, **settings)
            index.add(data)
            build_s = time.perf_counter() - start
            search_s, (_, ids) = best_of(repeats, lambda: index.search(queries, k))
            extra = {"flat": "", "ivf": f"nlist={index.nlist} nprobe={index.nprobe}",
                     "hnsw": f"M={index.hnsw_m} efSearch={index.ef_search}"}[index.kind]
            rows.append({
                "n": n, "method": method, "build_s": build_s, "search_s": search_s,
                "speedup": numpy_s / search_s, "recall": recall(ids, truth),
                "identical_rows": float(np.mean((ids == truth).all(axis=1))) if index.kind == "flat" else None,
                "settings": extra,
            })
            if verbose:
                _print_rows(rows[-1:], header=False)
            del index, ids
            gc.collect()
    return rows


COLUMNS = ("n", "method", "build_s", "search_s", "speedup", "recall", "identical_rows", "settings")
HEADINGS = ("N", "method", "build s", "search s", "speed-up", "recall@k", "same ids", "settings")
WIDTHS = (10, 11, 9, 9, 9, 9, 9, 0)


def _cell(column, value):
    if value is None:
        return "-"
    if column == "n":
        return f"{value:,}"
    if column in ("build_s", "search_s"):
        return f"{value:.3f}"
    if column == "speedup":
        return f"{value:.1f}x"
    if column in ("recall", "identical_rows"):
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="search timings: best of this many")
    args = parser.parse_args(argv)
    try:
        import faiss

        threads = f"FAISS threads: {faiss.omp_get_max_threads()}"
    except (ImportError, AttributeError):
        threads = ""
    print(f"dim={args.dim}, {args.queries} queries, k={args.k}, seed={args.seed}, "
          f"search best of {args.repeats}. {threads}", flush=True)
    run(args.sizes, args.dim, args.queries, args.k, args.seed, args.repeats, verbose=True)


if __name__ == "__main__":
    main()
