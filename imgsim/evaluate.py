"""The evaluation report: deep embedding vs SIFT vs fused, on the same held-out pairs.

``evaluate(EvalConfig(run="runs/<id>"))`` writes ``reports/<name>/``:

``metrics.json``  ``{"dl": {...}, "sift": {...}, "fused": {...}}`` for the headline
                  (hard) protocol, each with ``accuracy``, ``roc_auc``,
                  ``tpr_at_fpr_1pct``, ``threshold``, ``precision_at_1``,
                  ``recall_at_5``, ``map_at_r``, ``ari``, ``nmi``, ``imc_f1``; the
                  same per protocol under ``protocols``; pair counts; the split
``summary.md``    the same as tables
``pairs_<protocol>.csv``  the test pairs with every method's score (to redraw or re-analyse)
``*.png``         ROC curves, score histograms with thresholds, a nearest-neighbour
                  grid, keypoints, inlier/outlier matches of a positive and a
                  negative pair, a 2-D projection of the embeddings

Protocol. Pairs come from :func:`imgsim.pairs.make_pairs` over the run's
validation scenes and, separately, its test scenes (never a training scene).
Every threshold and the fusion model are fitted on validation pairs and
applied unchanged to test pairs. Retrieval and clustering use the test images
plus distractors (``outliers``, or stand-ins from scenes outside the test set).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from imgsim import data as data_mod
from imgsim import pairs as pairs_mod
from imgsim import metrics
from imgsim.config import DictConfig, check_choice, check_range
from imgsim.errors import ConfigError, DataLayoutError
from imgsim.fileio import atomic_write_json, atomic_write_text, check_output_dir, read_json
from imgsim.model import check_image_size
from imgsim.fusion import FusionConfig, FusionModel, pair_features
from imgsim.sift import FeatureCache, SiftConfig, extract_many, pair_matches

METHODS = ("dl", "sift", "fused")
FIGURES = ("roc_hard.png", "roc_easy.png", "histograms.png", "neighbours.png", "keypoints.png",
           "matches_positive.png", "matches_negative.png", "embedding_pca.png")
SUMMARY_KEYS = ("accuracy", "roc_auc", "tpr_at_fpr_1pct", "precision_at_1", "recall_at_5",
                "map_at_r", "ari", "imc_f1")


@dataclass
class EvalConfig(DictConfig):
    """What to evaluate and how.

    Attributes
    ----------
    run : str or None
        A training run folder (its ``best.keras`` and ``split.json``); None
        evaluates the ImageNet backbone (GAP features) on a fresh split.
    data : str
        Data root; default: the run's, else the embedded sample.
    report_dir : str or None
        Default ``reports/<run folder name>`` (``reports/imagenet`` without a run).
    protocols : list of str
        ``"hard"`` (negatives within a dataset; the headline) and/or ``"easy"``.
    max_pairs_per_dataset : int
    image_size : int
        Input size of the ImageNet baseline (a run's model has its own).
    val_fraction, test_fraction, split_seed
        The split when there is no run.
    seed : int
        Pair sampling.
    sift, fusion : SiftConfig, FusionConfig
    cache_dir : str or None
        SIFT feature cache (default: the user cache folder).
    sift_retrieval : bool
        Rank the test images by SIFT inliers among *all* pairs (n²/2 matchings).
    threshold_method : {"accuracy", "fpr"}
        How thresholds are calibrated on validation pairs.
    workers : int
    """

    run: str = None
    data: str = None
    report_dir: str = None
    protocols: list = field(default_factory=lambda: ["hard", "easy"])
    max_pairs_per_dataset: int = 60
    image_size: int = 224
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    split_seed: int = 0
    seed: int = 0
    sift: SiftConfig = field(default_factory=SiftConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    cache_dir: str = None
    sift_retrieval: bool = True
    threshold_method: str = "accuracy"
    workers: int = 2

    def __post_init__(self):
        if isinstance(self.sift, dict):
            self.sift = SiftConfig.from_dict(self.sift)
        if isinstance(self.fusion, dict):
            self.fusion = FusionConfig.from_dict(self.fusion)
        for name, kind in (("sift", SiftConfig), ("fusion", FusionConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__} or a dict of its fields, "
                                  f"got {getattr(self, name)!r}")
        super().__post_init__()
        if (not isinstance(self.protocols, (list, tuple)) or not self.protocols
                or any(p not in pairs_mod.PROTOCOLS for p in self.protocols)):
            raise ConfigError(f"protocols must be a non-empty subset of {pairs_mod.PROTOCOLS}, "
                              f"got {self.protocols!r}")
        check_range("max_pairs_per_dataset", self.max_pairs_per_dataset, 1, integer=True)
        check_image_size(self.image_size)
        data_mod.check_fractions(self.val_fraction, self.test_fraction)
        check_range("split_seed", self.split_seed, 0, 2**32 - 1, integer=True)
        check_range("seed", self.seed, 0, 2**32 - 1, integer=True)
        check_choice("threshold_method", self.threshold_method, ("accuracy", "fpr"))
        check_range("workers", self.workers, 1, integer=True)


# --------------------------------------------------------------------------- evidence


class Evidence:
    """Embeddings and SIFT matches of the images under evaluation, each computed once."""

    def __init__(self, model, sift_config, cache, workers=2, batch_size=32):
        self.model, self.sift_config, self.cache = model, sift_config, cache
        self.workers, self.batch_size = workers, batch_size
        self.embeddings, self.matches, self.features = {}, {}, {}

    def embed(self, paths):
        from imgsim.model import embed

        todo = [p for p in dict.fromkeys(paths) if p not in self.embeddings]
        if todo:
            for path, e in zip(todo, embed(self.model, todo, self.batch_size, progress=True)):
                self.embeddings[path] = e
        return np.stack([self.embeddings[p] for p in paths])

    def match(self, pairs, progress=True):
        """SIFT :class:`~imgsim.sift.PairMatches` of (path_a, path_b) pairs, each computed once.

        Matching is not symmetric (the ratio test runs from A to B), so (a, b)
        and (b, a) are different pairs.
        """
        keys = [tuple(p) for p in pairs]
        todo = [k for k in dict.fromkeys(keys) if k not in self.matches]
        if todo:
            paths = sorted({p for k in todo for p in k} - set(self.features))
            self.features.update(zip(paths, extract_many(paths, self.sift_config, self.cache,
                                                         self.workers, progress=progress)))
            features = self.features
            with ThreadPoolExecutor(self.workers) as pool:
                results = pool.map(lambda k: pair_matches(features[k[0]], features[k[1]],
                                                          self.sift_config), todo)
                if progress:
                    from tqdm.auto import tqdm
                    results = tqdm(results, total=len(todo), desc="matching", unit="pair")
                for key, result in zip(todo, results):
                    self.matches[key] = result
        return [self.matches[k] for k in keys]

    def pair_table(self, pairs):
        """Per pair: embedding distance, inliers, inlier ratio (arrays of len(pairs))."""
        a, b = self.embed(list(pairs["path_a"])), self.embed(list(pairs["path_b"]))
        scores = [m.score() for m in self.match(list(zip(pairs["path_a"], pairs["path_b"])))]
        return (np.linalg.norm(a - b, axis=1), np.array([s.n_inliers for s in scores], float),
                np.array([s.inlier_ratio for s in scores], float))


def method_scores(distances, inliers, ratios, fusion):
    """Score per method, higher = same scene: -distance, inliers, fused probability."""
    return {"dl": -distances, "sift": inliers,
            "fused": fusion.predict_proba(pair_features(distances, inliers, ratios))}


# --------------------------------------------------------------------------- evaluation


RUN_FILES = ("config.json", "split.json", "best.keras", "metrics.json")


def read_run(run):
    """The data root and split of a finished training run folder, checked.

    Raises
    ------
    DataLayoutError
        Naming the folder or file: no such folder, a file missing (an
        unfinished run has no ``metrics.json``: it is not evaluated as if it
        were final), a corrupt ``config.json`` / ``split.json``.

    Returns
    -------
    (data root, Split)
    """
    if not os.path.isdir(run):
        raise DataLayoutError(f"{run}: {'not a folder' if os.path.exists(run) else 'no such run folder'}")
    missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(run, name))]
    if missing == ["metrics.json"]:
        raise DataLayoutError(f"{run}: unfinished run (no metrics.json): resume it with the same "
                              "imgsim train command first")
    if missing:
        raise DataLayoutError(f"{run}: not a training run folder (missing {', '.join(missing)})")
    run_config = read_json(os.path.join(run, "config.json"))
    split_path = os.path.join(run, "split.json")
    if not isinstance(run_config, dict) or not isinstance(run_config.get("data"), str):
        raise DataLayoutError(f"{os.path.join(run, 'config.json')}: no 'data' folder in it")
    try:
        split = data_mod.Split.from_dict(read_json(split_path))
    except ConfigError as exc:
        raise DataLayoutError(f"{split_path}: not a split ({exc})") from None
    return run_config["data"], split


def _check_split(split, table, source):
    """Raise unless every scene of the split is in the table (the run's data may have changed)."""
    known = set(data_mod.scene_keys(table))
    absent = [k for part in ("val", "test") for k in getattr(split, part) if k not in known]
    if absent:
        raise DataLayoutError(f"{source}: scene {absent[0]!r} of the run's split is not in the data "
                              f"({len(absent)} missing)")


def _load(config):
    """Model, table, split and report folder of an evaluation."""
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, load_model

    if config.run:
        data, split = read_run(config.run)
        data = config.data or data
        name = os.path.basename(os.path.normpath(config.run))
    else:
        data = config.data or data_mod.SAMPLE_DATA
        split = None
        name = "imagenet"
    report_dir = config.report_dir or os.path.join("reports", name)
    check_output_dir(report_dir, "report_dir")
    if config.cache_dir:
        check_output_dir(config.cache_dir, "cache_dir")
    table = data_mod.load_table(data)
    if split is None:
        split = data_mod.split_scenes(table, config.val_fraction, config.test_fraction, config.split_seed)
    else:
        _check_split(split, table, os.path.join(config.run, "split.json"))
    if config.run:
        model = load_model(os.path.join(config.run, "best.keras"))
    else:
        model = build_imagenet_baseline(EmbeddingConfig(image_size=config.image_size))
    return model, table, split, report_dir


def _verification(evidence, table, split, protocol, config):
    """Fit fusion and thresholds on validation pairs; verification figures on test pairs."""
    parts = {}
    for part in ("val", "test"):
        pairs = pairs_mod.make_pairs(table, getattr(split, part), protocol,
                                    config.max_pairs_per_dataset, config.seed)
        parts[part] = (pairs, *evidence.pair_table(pairs))
    val_pairs, *val_evidence = parts["val"]
    fusion = FusionModel(config.fusion).fit(pair_features(*val_evidence), val_pairs["label"])
    val_scores = method_scores(*val_evidence, fusion)
    test_pairs, *test_evidence = parts["test"]
    test_scores = method_scores(*test_evidence, fusion)
    results, thresholds = {}, {}
    for method in METHODS:
        threshold = metrics.calibrate_threshold(val_pairs["label"], val_scores[method],
                                                config.threshold_method)
        thresholds[method] = threshold
        results[method] = metrics.verification_report(test_pairs["label"], test_scores[method],
                                                       threshold)
    return {"results": results, "fusion": fusion, "thresholds": thresholds,
            "test_pairs": test_pairs, "test_scores": test_scores, "test_evidence": test_evidence,
            "n_pairs": {"val": len(val_pairs), "test": len(test_pairs)}}


def _pairwise(evidence, rows, fusion, with_sift):
    """(n, n) distance, inlier and fused-probability matrices of the retrieval set."""
    paths = list(rows["path"])
    e = evidence.embed(paths)
    dist = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 0.0))
    np.fill_diagonal(dist, 0.0)
    n = len(paths)
    inliers, ratios = np.zeros((n, n)), np.zeros((n, n))
    if with_sift:
        i, j = np.triu_indices(n, k=1)
        scores = [m.score() for m in evidence.match([(paths[a], paths[b]) for a, b in zip(i, j)])]
        inliers[i, j] = inliers[j, i] = [s.n_inliers for s in scores]
        ratios[i, j] = ratios[j, i] = [s.inlier_ratio for s in scores]
    fused = fusion.predict_proba(pair_features(dist.ravel(), inliers.ravel(), ratios.ravel()))
    fused = fused.reshape(n, n)
    fused = (fused + fused.T) / 2
    return dist, inliers, fused


def _retrieval_and_clustering(dist, inliers, fused, labels, scenes, thresholds, with_sift):
    """P@1, R@5, mAP@R and clustering figures of each method on one image set."""
    similarities = {"dl": -dist, "sift": inliers, "fused": fused}
    # A distance per method for clustering, and the cut that matches its pair threshold.
    as_distance = {"dl": (dist, -thresholds["dl"]),
                   "sift": (1.0 / (1.0 + inliers), 1.0 / (1.0 + max(thresholds["sift"], 0.0))),
                   "fused": (1.0 - fused, 1.0 - min(max(thresholds["fused"], 0.0), 1.0))}
    out = {}
    for method in METHODS:
        if method != "dl" and not with_sift:
            continue
        result = metrics.retrieval_report(None, labels, ks=(1, 5), scores=similarities[method])
        d, cut = as_distance[method]
        d = d.copy()
        np.fill_diagonal(d, 0.0)
        predicted = metrics.cluster(distances=d, threshold=float(max(cut, 1e-9)))
        report = metrics.clustering_report(scenes, predicted)
        result.update({k: report[k] for k in ("ari", "nmi", "imc_precision", "imc_recall", "imc_f1")})
        out[method] = result
    return out


def evaluate(config=None):
    """Run the whole evaluation and write the report; returns ``metrics.json``'s content."""
    config = (config or EvalConfig()).validate()
    model, table, split, report_dir = _load(config)
    os.makedirs(report_dir, exist_ok=True)
    evidence = Evidence(model, config.sift, FeatureCache(config.cache_dir), config.workers)

    protocols = {p: _verification(evidence, table, split, p, config) for p in config.protocols}
    headline = protocols["hard" if "hard" in protocols else config.protocols[0]]

    rows = data_mod.select(table, split.test)
    rows = pd.concat([rows, pairs_mod.stand_in_outliers(table, split.test, config.seed)],
                     ignore_index=True)
    labels = data_mod.label_ids(rows)
    scenes = np.where(rows["scene"] == data_mod.OUTLIERS, data_mod.OUTLIERS,
                      data_mod.scene_keys(rows))
    dist, inliers, fused = _pairwise(evidence, rows, headline["fusion"], config.sift_retrieval)
    ranking = _retrieval_and_clustering(dist, inliers, fused, labels, scenes, headline["thresholds"],
                                        config.sift_retrieval)

    report = {}
    for name, p in protocols.items():
        report[name] = {m: dict(p["results"][m], **ranking.get(m, {})) for m in METHODS}
    result = dict(report[next(iter(report))] if "hard" not in report else report["hard"])
    result.update({
        "headline_protocol": "hard" if "hard" in report else config.protocols[0],
        "protocols": report,
        "pairs": {name: p["n_pairs"] for name, p in protocols.items()},
        "retrieval_images": {"test": int((rows["scene"] != data_mod.OUTLIERS).sum()),
                             "distractors": int((rows["scene"] == data_mod.OUTLIERS).sum())},
        "fusion": headline["fusion"].to_dict(),
        "split": split.to_dict(),
        "config": config.to_dict(),
        "report_dir": report_dir,
    })
    atomic_write_json(os.path.join(report_dir, "metrics.json"), result)
    atomic_write_text(os.path.join(report_dir, "summary.md"), summary_markdown(result))
    write_figures(report_dir, evidence, headline, protocols, rows, dist, labels)
    return result


def summary_frame(result):
    """The summary tables as one DataFrame: rows (protocol, method), columns the figures."""
    rows = {(protocol, method): {k: values.get(k) for k in SUMMARY_KEYS}
            for protocol, methods in result["protocols"].items()
            for method, values in methods.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.names = ["protocol", "method"]
    return frame


def summary_markdown(result):
    """Markdown tables, one per protocol: methods × figures."""
    lines = []
    for protocol, methods in result["protocols"].items():
        pairs = result["pairs"][protocol]
        lines += [f"### {protocol} protocol ({pairs['test']} test pairs, thresholds from "
                  f"{pairs['val']} validation pairs)", "",
                  "| method | " + " | ".join(SUMMARY_KEYS) + " |",
                  "|---" * (len(SUMMARY_KEYS) + 1) + "|"]
        for method, values in methods.items():
            cells = [f"{values[k]:.3f}" if k in values else "–" for k in SUMMARY_KEYS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    r = result["retrieval_images"]
    lines.append(f"Retrieval and clustering: {r['test']} test images + {r['distractors']} distractors.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def write_figures(report_dir, evidence, headline, protocols, rows, dist, labels, n_queries=6):
    """Draw the report's PNG figures from what the evaluation computed."""
    from imgsim import viz
    from imgsim.images import load_image

    def save(fig, name):
        viz.save_figure(fig, os.path.join(report_dir, name))

    for name, p in protocols.items():
        y = p["test_pairs"]["label"].to_numpy()
        scored = p["test_pairs"].assign(**{f"score_{m}": p["test_scores"][m] for m in METHODS})
        atomic_write_text(os.path.join(report_dir, f"pairs_{name}.csv"), scored.to_csv(index=False))
        save(viz.roc_curves({m: (y, p["test_scores"][m]) for m in METHODS},
                            title=f"ROC, {name} protocol, test pairs"), f"roc_{name}.png")
    y = headline["test_pairs"]["label"].to_numpy()
    distances, inliers, _ = headline["test_evidence"]
    t = headline["thresholds"]
    save(viz.score_histograms({
        "deep embedding": (y, distances, -t["dl"], "embedding distance"),
        "SIFT": (y, inliers, t["sift"], "inliers"),
        "fused": (y, headline["test_scores"]["fused"], t["fused"], "same-scene probability"),
    }), "histograms.png")

    # Nearest neighbours by embedding distance: one query per scene, up to n_queries.
    d = dist.copy()
    np.fill_diagonal(d, np.inf)
    is_scene = (rows["scene"] != data_mod.OUTLIERS).to_numpy()
    queries = [int(np.flatnonzero(is_scene & (labels == lab))[0])
               for lab in dict.fromkeys(labels[is_scene])][:n_queries]
    thumb = lambda i: load_image(rows["path"].iloc[i], 128)  # noqa: E731
    grid = [(thumb(q), [(thumb(j), labels[j] == labels[q], f"d={d[q, j]:.2f}")
                        for j in np.argsort(d[q])[:5]]) for q in queries]
    save(viz.neighbour_grid(grid), "neighbours.png")

    pairs = headline["test_pairs"]
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    show = {"matches_positive.png": positives[np.argsort(inliers[positives])[len(positives) // 2]],
            "matches_negative.png": negatives[np.argmax(inliers[negatives])]}
    for name, i in show.items():
        a, b = pairs["path_a"].iloc[i], pairs["path_b"].iloc[i]
        m = evidence.match([(a, b)], progress=False)[0]
        fa, fb = m.features_a, m.features_b
        title = f"{pairs['scene_a'].iloc[i]} vs {pairs['scene_b'].iloc[i]}"
        save(viz.matches_figure(load_image(a), load_image(b), fa.keypoints, fb.keypoints, m.matches,
                                m.inliers, title), name)
        if name == "matches_positive.png":
            save(viz.keypoints_figure(load_image(a), fa.keypoints, fa.scales,
                                      title=f"SIFT keypoints, {os.path.basename(a)}"), "keypoints.png")

    from sklearn.decomposition import PCA

    e = evidence.embed(list(rows["path"]))
    names = np.where(is_scene, rows["scene"], data_mod.OUTLIERS)
    save(viz.embedding_projection(PCA(2).fit_transform(e), names,
                                  title="Test embeddings (PCA, 2-D), distractors as outliers"),
         "embedding_pca.png")
