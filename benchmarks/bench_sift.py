"""SIFT scoring of an all-pairs set: the seed's per-pair way vs imgsim, and the embedding shortlist.

(a) The seed's way, written here: for every pair, read both images from their
    files (``cv2.imread``), shrink them to ``max_side``, run
    ``cv2.SIFT_create(n_features).detectAndCompute`` on both, brute-force match
    with Lowe's ratio test, then ``cv2.findFundamentalMat`` (MAGSAC++, the same
    threshold, confidence and iteration cap as imgsim). One process, OpenCV's
    default threads. Timed on a random sample of pairs and extrapolated per
    pair: every pair costs the same work, so the mean per pair is unbiased.
(b) imgsim: every image extracted once into a fresh cache folder
    (:func:`imgsim.sift.extract_many`), then :func:`imgsim.sift.score_pairs`
    over all pairs with all cores.
(c) The shortlist: each image's ``k`` nearest neighbours by embedding
    (:func:`imgsim.sift.shortlist_pairs`), scored like (b). Reports the
    speed-up over all pairs and the recall of the true positive pairs (same
    dataset and scene) it keeps. Embeddings are passed in, or computed here
    as ImageNet MobileNetV2 GAP features (that time is counted in the shortlist).

Usage::

    python benchmarks/bench_sift.py --data ../shared/data            # first 100 images
    python benchmarks/bench_sift.py --data ../shared/data -n 20 --seed-pairs 20 --json out.json
"""

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgsim.sift import FeatureCache, SiftConfig, extract_many, score_pairs, shortlist_pairs  # noqa: E402


# --------------------------------------------------------------------------- (a) the seed's way


def seed_features(path, config):
    """Plain SIFT of one file, the seed's way: keypoints (n, 2) in resized pixels, descriptors."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cv2.imread could not read it")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    height, width = gray.shape
    scale = min(1.0, config.max_side / max(height, width))
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=config.n_features).detectAndCompute(gray, None)
    return np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2), descriptors


def seed_pair(path_a, path_b, config):
    """Inliers of one pair, the seed's way (extraction of both images included)."""
    (kp_a, desc_a), (kp_b, desc_b) = seed_features(path_a, config), seed_features(path_b, config)
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return 0
    good = [m for m, n in cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
            if m.distance < config.ratio * n.distance]
    if len(good) < config.min_matches:
        return 0
    pts_a = kp_a[[m.queryIdx for m in good]].astype(np.float64)
    pts_b = kp_b[[m.trainIdx for m in good]].astype(np.float64)
    try:
        model, mask = cv2.findFundamentalMat(pts_a, pts_b, cv2.USAC_MAGSAC, config.ransac_threshold,
                                             config.confidence, config.max_iters)
    except cv2.error:
        return 0
    return 0 if model is None or mask is None else int(mask.sum())


# --------------------------------------------------------------------------- the benchmark


def embed_imagenet(paths):
    """L2-normalised ImageNet MobileNetV2 GAP features of the images (n, 1280)."""
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed

    return embed(build_imagenet_baseline(EmbeddingConfig()), list(paths))


def run(paths, config=None, k=10, embeddings=None, scenes=None, seed_pairs=200, processes=None,
        seed=0, progress=False):
    """Time (a), (b) and the shortlist on all pairs of ``paths``.

    Parameters
    ----------
    paths : list of str
        Image files; all ``n (n - 1) / 2`` pairs (i < j) are scored.
    config : SiftConfig, optional
        Default: ``SiftConfig()`` (1024 px, 4000 features).
    k : int
        Neighbours per image of the shortlist (capped at n - 1).
    embeddings : array of shape (n, dim), optional
        For the shortlist; by default ImageNet GAP features, computed (and timed) here.
    scenes : list, optional
        Scene label of each path, for the recall of true positive pairs.
    seed_pairs : int
        Pairs timed the seed's way (a random sample, seeded by ``seed``).
    processes : int, optional
        Worker processes of :func:`~imgsim.sift.score_pairs`; default all cores.

    Returns
    -------
    dict of numbers (seconds, counts, ratios); see :func:`format_table`.
    """
    config = config or SiftConfig()
    paths = [os.fspath(p) for p in paths]
    n = len(paths)
    if n < 2:
        raise ValueError(f"need at least 2 images, got {n}")
    all_pairs = list(itertools.combinations(range(n), 2))
    rng = np.random.default_rng(seed)
    sample = [all_pairs[i] for i in sorted(rng.choice(len(all_pairs), min(seed_pairs, len(all_pairs)),
                                                      replace=False))]
    out = {"n_images": n, "n_pairs": len(all_pairs), "cpus": os.cpu_count(),
           "processes": processes or os.cpu_count(), "config": config.to_dict()}

    # (a) the seed's way on a sample of pairs
    start = time.perf_counter()
    seed_inliers = [seed_pair(paths[i], paths[j], config) for i, j in sample]
    out["a_sample_pairs"] = len(sample)
    out["a_sample_s"] = time.perf_counter() - start
    out["a_per_pair_s"] = out["a_sample_s"] / len(sample)
    out["a_all_pairs_s_extrapolated"] = out["a_per_pair_s"] * len(all_pairs)

    # (b) imgsim: extract once into a fresh cache, score all pairs in processes
    with tempfile.TemporaryDirectory(prefix="bench-sift-") as folder:
        cache = FeatureCache(folder)
        start = time.perf_counter()
        extract_many(paths, config, cache, progress=progress)
        out["b_extract_s"] = time.perf_counter() - start
        start = time.perf_counter()
        scores = score_pairs([(paths[i], paths[j]) for i, j in all_pairs], config, cache, processes,
                             progress=progress)
        out["b_score_s"] = time.perf_counter() - start
        out["b_all_pairs_s"] = out["b_extract_s"] + out["b_score_s"]
        out["b_per_pair_s"] = out["b_all_pairs_s"] / len(all_pairs)
        out["a_over_b"] = out["a_per_pair_s"] / out["b_per_pair_s"]
        inliers = dict(zip(all_pairs, (s.n_inliers for s in scores)))
        out["a_sample_mean_inliers"] = float(np.mean(seed_inliers))
        out["b_sample_mean_inliers"] = float(np.mean([inliers[p] for p in sample]))

        # (c) the embedding shortlist
        out["embeddings_given"], out["embeddings_s"] = embeddings is not None, 0.0
        if embeddings is None:
            start = time.perf_counter()
            embeddings = embed_imagenet(paths)
            out["embeddings_s"] = time.perf_counter() - start
        k = min(k, n - 1)
        start = time.perf_counter()
        shortlist = shortlist_pairs(embeddings, k)
        out["shortlist_knn_s"] = time.perf_counter() - start
        start = time.perf_counter()
        short_scores = score_pairs([(paths[i], paths[j]) for i, j in shortlist], config, cache, processes)
        out["shortlist_score_s"] = time.perf_counter() - start
    assert all(s.n_inliers == inliers[p] for p, s in zip(shortlist, short_scores))
    out["k"] = k
    out["shortlist_pairs"] = len(shortlist)
    out["shortlist_fraction"] = len(shortlist) / len(all_pairs)
    out["shortlist_s"] = (out["b_extract_s"] + out["embeddings_s"] + out["shortlist_knn_s"]
                          + out["shortlist_score_s"])
    out["shortlist_speedup_scoring"] = out["b_score_s"] / out["shortlist_score_s"]
    out["shortlist_speedup_total"] = out["b_all_pairs_s"] / out["shortlist_s"]
    if scenes is not None:
        scenes = list(scenes)
        positives = {(i, j) for i, j in all_pairs if scenes[i] == scenes[j]}
        kept = positives & set(shortlist)
        out["positive_pairs"] = len(positives)
        out["positives_kept"] = len(kept)
        out["shortlist_recall"] = len(kept) / len(positives) if positives else float("nan")
    return out


def run_benchmark(data, n_images=100, k=10, seed_pairs=200, config=None, embeddings=None,
                  processes=None, progress=False):
    """:func:`run` on the first ``n_images`` images of the table of ``data`` (a data root).

    Adds ``speedup`` (= ``a_over_b``, per pair) and ``shortlist_speedup`` (=
    ``shortlist_speedup_total``: extraction, embeddings if computed here, k-NN
    and scoring, against extraction and scoring of all pairs).
    """
    from imgsim.data import load_table

    table = load_table(data).iloc[:n_images]
    if embeddings is not None:
        embeddings = np.asarray(embeddings)[:len(table)]
    result = run(list(table["path"]), config, k=k, embeddings=embeddings,
                 scenes=list(table["dataset"] + "/" + table["scene"]), seed_pairs=seed_pairs,
                 processes=processes, progress=progress)
    result["speedup"] = result["a_over_b"]
    result["shortlist_speedup"] = result["shortlist_speedup_total"]
    return result


def format_table(r):
    """The results of :func:`run` as a text table."""
    rows = [
        ("images / all pairs", f"{r['n_images']} / {r['n_pairs']}"),
        ("cores / scoring processes", f"{r['cpus']} / {r['processes']}"),
        ("(a) seed: pairs timed", f"{r['a_sample_pairs']} (random sample, extrapolated)"),
        ("(a) seed: per pair", f"{1000 * r['a_per_pair_s']:.1f} ms"),
        ("(a) seed: all pairs (extrapolated)", f"{r['a_all_pairs_s_extrapolated']:.1f} s"),
        ("(b) imgsim: extraction", f"{r['b_extract_s']:.1f} s"),
        ("(b) imgsim: score_pairs", f"{r['b_score_s']:.1f} s"),
        ("(b) imgsim: per pair (all in)", f"{1000 * r['b_per_pair_s']:.1f} ms"),
        ("(a) / (b)", f"{r['a_over_b']:.1f}x"),
        ("mean inliers on the sample (a) / (b)",
         f"{r['a_sample_mean_inliers']:.0f} / {r['b_sample_mean_inliers']:.0f}"),
        (f"shortlist top-{r['k']}: pairs", f"{r['shortlist_pairs']} ({100 * r['shortlist_fraction']:.1f} %)"),
        ("shortlist: embeddings",
         "given" if r["embeddings_given"] else f"{r['embeddings_s']:.1f} s (ImageNet GAP)"),
        ("shortlist: total", f"{r['shortlist_s']:.1f} s"),
        ("shortlist speed-up: scoring / total",
         f"{r['shortlist_speedup_scoring']:.1f}x / {r['shortlist_speedup_total']:.1f}x"),
    ]
    if "shortlist_recall" in r:
        rows.append(("shortlist recall of positive pairs",
                     f"{r['shortlist_recall']:.3f} ({r['positives_kept']} of {r['positive_pairs']})"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="data root (IMC layout or scene folders)")
    parser.add_argument("-n", "--images", type=int, default=100, help="the first N images of the table")
    parser.add_argument("-k", type=int, default=10, help="shortlist neighbours per image")
    parser.add_argument("--seed-pairs", type=int, default=200, help="pairs timed the seed's way")
    parser.add_argument("--processes", type=int, default=None, help="default: all cores")
    parser.add_argument("--max-side", type=int, default=SiftConfig.max_side)
    parser.add_argument("--n-features", type=int, default=SiftConfig.n_features)
    parser.add_argument("--matcher", choices=("bf", "flann"), default="bf")
    parser.add_argument("--embeddings", help=".npy of shape (n, dim), rows in table order")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    config = SiftConfig(max_side=args.max_side, n_features=args.n_features, matcher=args.matcher)
    result = run_benchmark(args.data, args.images, args.k, args.seed_pairs, config,
                           np.load(args.embeddings) if args.embeddings else None, args.processes,
                           args.progress)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
