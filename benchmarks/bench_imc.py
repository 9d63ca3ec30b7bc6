"""The IMC match stage: what the evidence pass costs beside matching and verification.

:func:`imgsim.reconstruct.match_stage` runs :func:`imgsim.sift.score_pairs`
(ratio-test matching, static matches dropped, MAGSAC, a process pool) and then
:func:`imgsim.reconstruct.match_evidence` (still keypoints of same-size pairs,
backdrop inliers removed, one homography per pair, spread). Both are timed on
the same pairs with warm feature caches (extraction is shared by both and left
out), alternately for ``--rounds`` rounds; the medians and their ratio are
printed (and written with ``--json``).

Usage::

    python benchmarks/bench_imc.py --images /path/to/hard/train/castle_church -n 30
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgsim.reconstruct import SIFT_DEFAULTS, match_evidence  # noqa: E402
from imgsim.sift import FeatureCache, SiftConfig, extract_many, score_pairs  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="a folder of one dataset's images")
    parser.add_argument("-n", type=int, default=30, help="first n images (all their pairs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    paths = sorted(os.path.join(args.images, f) for f in os.listdir(args.images))[: args.n]
    pairs = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths))]
    config = SiftConfig(**SIFT_DEFAULTS)
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(folder)
        extract_many(paths, config, cache)
        times = {"score_pairs": [], "evidence": []}
        for _ in range(args.rounds):
            start = time.perf_counter()
            results = score_pairs([(paths[i], paths[j]) for i, j in pairs], config, cache,
                                  args.processes, keep_matches=True)
            times["score_pairs"].append(time.perf_counter() - start)
            start = time.perf_counter()
            match_evidence(paths, pairs, [m for _, m in results], config, cache, 30, args.processes)
            times["evidence"].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    out = {"images": len(paths), "pairs": len(pairs), "rounds": args.rounds, "seconds": times,
           "median_s": median, "evidence_over_matching": median["evidence"] / median["score_pairs"],
           "load_average": os.getloadavg()}
    print(f"{len(pairs)} pairs: score_pairs {median['score_pairs']:.1f} s, evidence "
          f"{median['evidence']:.1f} s (x{out['evidence_over_matching']:.3f}), "
          f"load {out['load_average'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
