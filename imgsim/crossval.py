"""Cross-validation by scene: a recipe against the ImageNet baseline, with paired bootstrap intervals.

``crossval(CrossValConfig(train=TrainConfig(...)))``:

1. splits the scenes into ``folds`` folds (:func:`fold_splits`, seeded;
   with ``group_by_dataset`` whole datasets stay together, so a fold tests on
   datasets never trained on);
2. for each fold trains the recipe with :func:`imgsim.train.fit` on the other
   folds' scenes, early stopping on validation scenes drawn from those
   training scenes (never the test fold);
3. embeds the fold's test images with the trained model and with the
   ImageNet GAP baseline (MobileNetV2, alpha ``baseline_alpha``) and scores
   both on the same images and pairs (:func:`fold_figures`): retrieval among
   *all* the fold's test images (the other datasets' images are the
   distractors), within-dataset retrieval, hard-protocol pairs and the
   embedding shortlist;
4. pools the folds and gives each figure's paired difference (recipe minus
   ImageNet) with a 95 % bootstrap interval over scenes
   (:func:`paired_summary`): scenes are resampled with replacement within
   each fold, and both methods are scored on the same resample.

Figures (per fold and pooled):

``precision_at_1``, ``recall_at_5``, ``map_at_r``
    leave-one-out retrieval (:mod:`imgsim.metrics`) over the fold's test
    images plus any ``outliers`` photos, which are never queries;
``within_dataset_precision_at_1``
    P@1 when each query searches only the test images of its own dataset —
    look-alike scenes — counted for datasets with at least 2 scenes in the
    fold;
``roc_auc``, ``tpr_at_fpr_1pct``
    the hard protocol: :func:`imgsim.pairs.make_pairs` per dataset, negatives
    from other scenes of the same dataset first, then the other datasets'
    test images; score = minus the embedding distance; per fold, then the
    mean over folds;
``shortlist_recall_at_10``
    per image, the share of its same-scene pairs kept by the top-10
    embedding shortlist that :mod:`imgsim.reconstruct` matches
    (:func:`imgsim.sift.shortlist_pairs`: j among i's 10 nearest or i among j's).

``reports/<name>/``: ``metrics.json``, ``summary.md``, ``paired_differences.png``.
:func:`sweep_report` puts the pooled differences of many recipes (runs of
``notebooks/06_crossval.ipynb`` by ``imgsim sweep``) side by side.
"""

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from imgsim import data as data_mod
from imgsim import metrics
from imgsim import pairs as pairs_mod
from imgsim.config import DictConfig
from imgsim.errors import ConfigError
from imgsim.fileio import atomic_write_json, atomic_write_text, read_json
from imgsim.train import TrainConfig

RETRIEVAL = ("precision_at_1", "recall_at_5", "map_at_r")
FIGURES = RETRIEVAL + ("within_dataset_precision_at_1", "roc_auc", "tpr_at_fpr_1pct",
                       "shortlist_recall_at_10")
HEADLINE = ("map_at_r", "within_dataset_precision_at_1", "tpr_at_fpr_1pct")
METHODS = ("imagenet", "recipe")


def _default_train():
    return TrainConfig(mode="fast", embedding={"trainable_layers": 0})


@dataclass
class CrossValConfig(DictConfig):
    """A cross-validated comparison of one recipe with the ImageNet baseline.

    Attributes
    ----------
    train : TrainConfig
        The recipe, and the data it runs on (``train.data``); its ``split``,
        ``val_fraction`` and ``test_fraction`` are replaced per fold.
    folds : int
        Number of folds (each scene is a test scene exactly once).
    fold_seed : int
        Seeds the assignment of scenes to folds and each fold's validation scenes.
    group_by_dataset : bool
        Keep each dataset's scenes in one fold.
    val_fraction : float
        Share of each fold's training scenes held out for early stopping (≥ 2 scenes).
    baseline_alpha : float
        Width of the ImageNet GAP baseline (1.0: the default embedding of
        ``reconstruct`` and the inspector), at ``train.embedding.image_size``.
    shortlist_k : int
    max_pairs_per_dataset : int
        Positive pairs per dataset and fold in the hard protocol.
    n_boot : int
        Bootstrap resamples.
    level : float
        Coverage of the intervals.
    name : str
        Names the report (``reports/<name>``) and the recipe in summaries.
    report_dir : str or None
        Default ``reports/crossval/<name>``.
    batch_size : int
        Images per forward pass when embedding test images.
    untrained : bool
        Evaluate the recipe's network as built, without training it (for a
        network that starts at the ImageNet features: head "none", or a
        "linear" head with ``head_init="identity"``): what the architecture
        alone gives, beside what training adds.
    """

    train: TrainConfig = field(default_factory=_default_train)
    folds: int = 5
    fold_seed: int = 0
    group_by_dataset: bool = False
    val_fraction: float = 0.2
    baseline_alpha: float = 1.0
    shortlist_k: int = 10
    max_pairs_per_dataset: int = 60
    n_boot: int = 2000
    level: float = 0.95
    name: str = "recipe"
    report_dir: str = None
    batch_size: int = 32
    untrained: bool = False

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = TrainConfig.from_dict(self.train)
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.shortlist_k < 1 or self.max_pairs_per_dataset < 1 or self.n_boot < 1:
            raise ConfigError("shortlist_k, max_pairs_per_dataset and n_boot must be positive")
        if not 0 < self.level < 1:
            raise ConfigError(f"level must be in (0, 1), got {self.level}")
        e = self.train.embedding
        if self.untrained and not (e.head == "none" or e.head_init == "identity"):
            raise ConfigError("untrained=True needs a network that starts at the ImageNet "
                              "features: head='none', or head='linear' with head_init='identity'")

    def report_path(self):
        return self.report_dir or os.path.join("reports", "crossval", self.name)


CROSSVAL_KEYS = ("folds", "fold_seed", "group_by_dataset", "val_fraction", "baseline_alpha",
                 "shortlist_k", "max_pairs_per_dataset", "n_boot", "level", "name", "report_dir",
                 "batch_size", "untrained")


def flat_config(**options):
    """A :class:`CrossValConfig` from flat options (the CLI's and the notebook's names).

    The keys of :data:`CROSSVAL_KEYS` set the protocol (``val_fraction``: of
    each fold's training scenes); every other key is a training option of
    :func:`imgsim.train.flat_config`. None values take the defaults.
    """
    from imgsim.train import flat_config as train_config

    options = {k: v for k, v in options.items() if v is not None}
    protocol = {k: options.pop(k) for k in CROSSVAL_KEYS if k in options}
    return CrossValConfig(train=train_config(**options), **protocol)


# --------------------------------------------------------------------------- folds


def fold_splits(table, folds=5, seed=0, group_by_dataset=False, val_fraction=0.2):
    """Train/val/test scene splits of a k-fold cross-validation by scene.

    Scenes (``dataset/scene`` keys; ``outliers`` excluded) are shuffled with
    ``seed`` and dealt into ``folds`` folds of near-equal size; with
    ``group_by_dataset`` whole datasets are dealt instead, largest first,
    each to the fold with the fewest scenes so far. Fold ``i`` tests on its
    scenes; of the remaining scenes ``val_fraction`` (at least 2, seeded per
    fold) validate and the rest train.

    Returns
    -------
    list of Split
        Test sets disjoint and covering every scene once; in each split
        train, val and test disjoint.
    """
    keys = sorted(set(data_mod.scene_keys(table[table["scene"] != data_mod.OUTLIERS])))
    rng = np.random.default_rng(seed)
    if group_by_dataset:
        datasets = sorted({k.split("/", 1)[0] for k in keys})
        if len(datasets) < folds:
            raise ConfigError(f"group_by_dataset needs at least {folds} datasets for {folds} "
                              f"folds, the data has {len(datasets)}")
        members = {d: [k for k in keys if k.split("/", 1)[0] == d] for d in datasets}
        order = sorted(rng.permutation(datasets), key=lambda d: -len(members[d]))
        parts = [[] for _ in range(folds)]
        for d in order:
            min(parts, key=len).extend(members[d])
    else:
        if len(keys) < folds:
            raise ConfigError(f"{folds} folds need at least {folds} scenes, the data has {len(keys)}")
        parts = [list(p) for p in np.array_split(np.array(keys)[rng.permutation(len(keys))], folds)]
    splits = []
    for i, test in enumerate(parts):
        rest = sorted(set(keys) - set(test))
        n_val = max(2, int(round(val_fraction * len(rest))))
        if len(rest) - n_val < 2:
            raise ConfigError(f"fold {i + 1}: {len(rest)} training scenes leave too few to "
                              f"train on after {n_val} validation scenes")
        val = sorted(np.random.default_rng([seed, i]).choice(rest, n_val, replace=False).tolist())
        splits.append(data_mod.Split(train=sorted(set(rest) - set(val)), val=val,
                                     test=sorted(test)))
    return splits


# --------------------------------------------------------------------------- figures of one fold


def _retrieval_units(embeddings, labels, scenes):
    """Per-query retrieval values, with each query's scene (the bootstrap's cluster)."""
    per = metrics.retrieval_per_query(embeddings, labels, ks=(1, 5))
    return pd.DataFrame({"scene": scenes[per["query"]], "query": per["query"],
                         **{name: per[name] for name in RETRIEVAL}})


def _shortlist_recall(embeddings, labels, k):
    """Per image with a same-scene partner: share of its same-scene pairs in the top-k shortlist."""
    from imgsim.sift import shortlist_pairs

    k = min(k, len(embeddings) - 1)
    kept = set(shortlist_pairs(embeddings, k))
    labels = np.asarray(labels)
    out = {}
    for i in range(len(labels)):
        partners = np.flatnonzero(labels == labels[i])
        partners = partners[partners != i]
        if len(partners):
            out[i] = float(np.mean([(min(i, j), max(i, j)) in kept for j in partners]))
    return out


def fold_pairs(table, test, max_pairs_per_dataset=60, seed=0):
    """Hard-protocol pairs of a fold's test scenes, dataset by dataset.

    Negatives come from other test scenes of the same dataset first, then
    from the fold's test images of the *other* datasets (and ``outliers``).
    """
    rows = data_mod.select(table, test)
    outliers = table[table["scene"] == data_mod.OUTLIERS]
    frames = []
    for dataset in sorted(rows["dataset"].unique()):
        scenes = sorted({k for k in data_mod.scene_keys(rows) if k.split("/", 1)[0] == dataset})
        others = rows[rows["dataset"] != dataset].assign(scene=data_mod.OUTLIERS)
        distractors = pd.concat([others, outliers], ignore_index=True)
        frames.append(pairs_mod.make_pairs(table, scenes, "hard", max_pairs_per_dataset, seed,
                                           distractors=distractors))
    return pd.concat(frames, ignore_index=True)


def fold_figures(rows, embeddings, pairs, shortlist_k=10):
    """Every figure of one method on one fold, as bootstrap-ready units.

    Parameters
    ----------
    rows : DataFrame
        The fold's test images and the ``outliers`` photos (table rows).
    embeddings : array of shape (len(rows), dim)
    pairs : DataFrame
        :func:`fold_pairs`; its paths must be in ``rows``.
    shortlist_k : int

    Returns
    -------
    dict
        ``"queries"``: DataFrame, one row per query image (``scene``, the
        retrieval figures, ``within_dataset_precision_at_1`` and
        ``shortlist_recall_at_10``, NaN where they do not apply);
        ``"pairs"``: DataFrame of the pairs (``scene``, ``label``, ``score``).
    """
    labels = data_mod.label_ids(rows)
    scenes = np.asarray(data_mod.scene_keys(rows), object)
    units = _retrieval_units(embeddings, labels, scenes).set_index("query")
    within = pd.Series(np.nan, index=units.index)
    datasets = rows["dataset"].to_numpy()
    is_scene = (rows["scene"] != data_mod.OUTLIERS).to_numpy()
    for dataset in np.unique(datasets[is_scene]):
        mine = np.flatnonzero(datasets == dataset)
        if len(set(scenes[mine[is_scene[mine]]])) < 2:
            continue
        per = metrics.retrieval_per_query(embeddings[mine], labels[mine], ks=(1,))
        within.loc[mine[per["query"]]] = per["precision_at_1"]
    units["within_dataset_precision_at_1"] = within
    shortlist = _shortlist_recall(embeddings, labels, shortlist_k)
    units["shortlist_recall_at_10"] = pd.Series(shortlist).reindex(units.index)
    index = {p: i for i, p in enumerate(rows["path"])}
    a = embeddings[[index[p] for p in pairs["path_a"]]]
    b = embeddings[[index[p] for p in pairs["path_b"]]]
    scene_a = (pairs["dataset_a"] + "/" + pairs["scene_a"]).to_numpy()
    pair_units = pd.DataFrame({"scene": scene_a, "label": pairs["label"].to_numpy(),
                               "score": -np.linalg.norm(a - b, axis=1)})
    return {"queries": units.reset_index(), "pairs": pair_units}


QUERY_FIGURES = RETRIEVAL + ("within_dataset_precision_at_1", "shortlist_recall_at_10")
PAIR_FIGURES = ("roc_auc", "tpr_at_fpr_1pct")


def query_figures(queries, weights=None):
    """Means of the per-query figures, each query counted ``weights`` times (NaNs skipped)."""
    out = {}
    for name in QUERY_FIGURES:
        values = queries[name].to_numpy(float)
        w = np.ones(len(values)) if weights is None else np.asarray(weights, float)
        ok = ~np.isnan(values) & (w > 0)
        out[name] = float(np.average(values[ok], weights=w[ok])) if ok.any() else np.nan
    return out


def pair_figures(pairs, weights=None):
    """ROC AUC and TPR at 1 % FPR of the pairs, each pair counted ``weights`` times."""
    repeat = np.arange(len(pairs)) if weights is None else np.repeat(np.arange(len(pairs)), weights)
    y, score = pairs["label"].to_numpy()[repeat], pairs["score"].to_numpy()[repeat]
    if len(np.unique(y)) < 2:
        return {name: np.nan for name in PAIR_FIGURES}
    return {"roc_auc": metrics.roc_auc(y, score), "tpr_at_fpr_1pct": metrics.tpr_at_fpr(y, score, 0.01)}


def figures(units):
    """Every figure of one method on one fold, from :func:`fold_figures`' units."""
    return {**query_figures(units["queries"]), **pair_figures(units["pairs"])}


# --------------------------------------------------------------------------- bootstrap


def resample_weights(clusters, strata, n_boot=2000, seed=0):
    """Integer unit weights of a cluster bootstrap stratified by ``strata``.

    Within each stratum (fold) its clusters (scenes) are drawn with
    replacement, as many as it has; a unit (query image, pair) counts as
    often as its cluster was drawn.

    Parameters
    ----------
    clusters, strata : arrays of shape (n_units,)
    n_boot : int
    seed : int

    Returns
    -------
    numpy.ndarray of shape (n_boot, n_units), int
    """
    clusters, strata = np.asarray(clusters, object), np.asarray(strata)
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, len(clusters)), np.int64)
    for stratum in sorted(set(strata.tolist())):
        inside = strata == stratum
        names = sorted(set(clusters[inside].tolist()))
        counts = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=n_boot)
        column = {c: j for j, c in enumerate(names)}
        where = np.flatnonzero(inside)
        weights[:, where] = counts[:, [column[c] for c in clusters[where]]]
    return weights


def percentile_interval(samples, level=0.95):
    """The ``level`` percentile interval of bootstrap ``samples`` (NaNs ignored)."""
    samples = np.asarray(samples, float)
    samples = samples[~np.isnan(samples)]
    if not len(samples):
        return np.nan, np.nan
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean_difference(a, b, clusters, strata, n_boot=2000, seed=0, level=0.95):
    """Mean of ``a - b`` over units and its cluster-bootstrap interval.

    Parameters
    ----------
    a, b : arrays of shape (n_units,)
        Paired values (two methods on the same units).
    clusters, strata : arrays of shape (n_units,)
    n_boot, seed, level

    Returns
    -------
    (difference, low, high) : floats
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    w = resample_weights(clusters, strata, n_boot, seed)
    samples = (w @ d) / np.maximum(w.sum(axis=1), 1)
    return (float(d.mean()), *percentile_interval(samples, level))


def paired_summary(folds, n_boot=2000, seed=0, level=0.95):
    """Pooled figures of both methods, their paired differences and bootstrap intervals.

    Parameters
    ----------
    folds : list of dict
        Per fold ``{"imagenet": fold_figures(...), "recipe": fold_figures(...)}``
        on the same images and pairs.

    Returns
    -------
    dict
        Per figure: ``{"imagenet", "recipe", "difference", "low", "high",
        "units"}``. Query figures pool every query of every fold; pair figures
        (AUC, TPR at 1 % FPR) are the mean over folds of each fold's value.
        The interval resamples scenes within each fold (the same resample for
        both methods).
    """
    q = {m: pd.concat([f[m]["queries"].assign(fold=i) for i, f in enumerate(folds)],
                      ignore_index=True) for m in METHODS}
    out = {}
    weights = resample_weights(q["recipe"]["scene"], q["recipe"]["fold"], n_boot, seed)
    for name in QUERY_FIGURES:
        a, b = q["recipe"][name].to_numpy(float), q["imagenet"][name].to_numpy(float)
        ok = ~np.isnan(a) & ~np.isnan(b)
        w, d = weights[:, ok], a[ok] - b[ok]
        samples = (w @ d) / np.maximum(w.sum(axis=1), 1)
        out[name] = {"imagenet": float(b[ok].mean()) if ok.any() else np.nan,
                     "recipe": float(a[ok].mean()) if ok.any() else np.nan,
                     "difference": float(d.mean()) if ok.any() else np.nan, "units": int(ok.sum())}
        out[name]["low"], out[name]["high"] = percentile_interval(samples, level)
    # Pair figures: per fold, then the mean over folds; scenes resampled within each fold.
    point = {m: [pair_figures(f[m]["pairs"]) for f in folds] for m in METHODS}
    differences = {name: [] for name in PAIR_FIGURES}
    for i, f in enumerate(folds):
        pairs = f["recipe"]["pairs"]
        w = resample_weights(pairs["scene"], np.zeros(len(pairs)), n_boot, seed + 1 + i)
        both = {m: metrics.weighted_roc_figures(f[m]["pairs"]["label"], f[m]["pairs"]["score"], w)
                for m in METHODS}
        for j, name in enumerate(PAIR_FIGURES):
            differences[name].append(both["recipe"][j] - both["imagenet"][j])
    for name in PAIR_FIGURES:
        value = {m: float(np.nanmean([x[name] for x in point[m]])) for m in METHODS}
        d = np.array(differences[name])  # (folds, n_boot)
        valid = ~np.isnan(d)
        samples = np.where(valid.any(0), np.nansum(d, 0) / np.maximum(valid.sum(0), 1), np.nan)
        out[name] = {**value, "difference": value["recipe"] - value["imagenet"],
                     "units": int(sum(len(f["recipe"]["pairs"]) for f in folds))}
        out[name]["low"], out[name]["high"] = percentile_interval(samples, level)
    return {name: out[name] for name in FIGURES}


# --------------------------------------------------------------------------- the protocol


def _baseline_embeddings(config, table):
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed

    model = build_imagenet_baseline(EmbeddingConfig(alpha=config.baseline_alpha,
                                                    image_size=config.train.embedding.image_size))
    return dict(zip(table["path"], embed(model, list(table["path"]), config.batch_size)))


def _release_keras():
    import gc

    import keras

    keras.backend.clear_session()
    gc.collect()


def _untrained_model(config):
    from imgsim.model import build_embedding_model, set_head_identity

    model = build_embedding_model(config.train.embedding)
    if config.train.embedding.head_init == "identity":
        set_head_identity(model)
    return model


def crossval(config=None):
    """Run (or resume) the cross-validation of ``config`` and write its report.

    Each fold is a :func:`imgsim.train.fit` run in ``config.train.runs_dir``
    (resumable; finished folds are not trained again).

    Returns
    -------
    dict
        ``metrics.json``'s content: ``pooled`` (see :func:`paired_summary`),
        ``folds`` (per fold: scenes, run folder, both methods' figures),
        ``config``.
    """
    from imgsim.model import embed, load_model
    from imgsim.train import fit

    config = config or CrossValConfig()
    table = data_mod.load_table(config.train.data, on_error=config.train.on_error)
    splits = fold_splits(table, config.folds, config.fold_seed, config.group_by_dataset,
                         config.val_fraction)
    baseline = _baseline_embeddings(config, table)
    untrained = _untrained_model(config) if config.untrained else None
    folds, per_fold = [], []
    for i, split in enumerate(splits):
        print(f"fold {i + 1}/{len(splits)}: {len(split.test)} test scenes, {len(split.train)} "
              f"training and {len(split.val)} validation scenes", flush=True)
        if untrained is None:
            run = fit(dataclasses.replace(config.train, split=split.to_dict(), run_name=None))
            model = load_model(os.path.join(run["run_dir"], "best.keras"))
        else:
            run, model = {"run_dir": None, "best_epoch": 0}, untrained
        rows = data_mod.select(table, split.test, outliers=True)
        pairs = fold_pairs(table, split.test, config.max_pairs_per_dataset, config.fold_seed + i)
        embeddings = {"imagenet": np.stack([baseline[p] for p in rows["path"]]),
                      "recipe": embed(model, list(rows["path"]), config.batch_size)}
        fold = {m: fold_figures(rows, embeddings[m], pairs, config.shortlist_k) for m in METHODS}
        folds.append(fold)
        if untrained is None:  # free the fold's networks and cached features before the next
            del model
            _release_keras()
        per_fold.append({"fold": i + 1, "test_scenes": split.test, "val_scenes": split.val,
                         "test_images": int((rows["scene"] != data_mod.OUTLIERS).sum()),
                         "run_dir": run["run_dir"], "best_epoch": run["best_epoch"],
                         **{m: figures(fold[m]) for m in METHODS}})
    result = {"name": config.name, "pooled": paired_summary(folds, config.n_boot, config.fold_seed,
                                                            config.level),
              "folds": per_fold, "n_scenes": int(sum(len(s.test) for s in splits)),
              "config": config.to_dict()}
    write_report(result, config.report_path())
    return result


# --------------------------------------------------------------------------- reports


def _cell(value, digits=3):
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def pooled_table(result):
    """The pooled figures as a DataFrame: ImageNet, recipe, difference, interval (one row each)."""
    return pd.DataFrame(result["pooled"]).T[["imagenet", "recipe", "difference", "low", "high",
                                             "units"]].rename_axis("figure")


def fold_table(result):
    """Per fold and figure, both methods' values (a DataFrame indexed by fold)."""
    rows = []
    for f in result["folds"]:
        row = {"fold": f["fold"], "test_images": f["test_images"], "best_epoch": f["best_epoch"]}
        for name in FIGURES:
            row[f"{name} imagenet"], row[f"{name} recipe"] = f["imagenet"][name], f["recipe"][name]
        rows.append(row)
    return pd.DataFrame(rows).set_index("fold")


def summary_markdown(result):
    """Markdown: pooled table (both methods, difference, interval), then one table per fold."""
    level = int(round(100 * result["config"]["level"]))
    lines = [f"# Cross-validation: {result['name']} vs ImageNet GAP", "",
             f"{len(result['folds'])} folds by scene, {result['n_scenes']} scenes; difference = "
             f"recipe − ImageNet on the same images and pairs, {level} % bootstrap interval over "
             "scenes.", "",
             "| figure | ImageNet | recipe | difference | interval |", "|---|---|---|---|---|"]
    for name, v in result["pooled"].items():
        lines.append(f"| {name} | {_cell(v['imagenet'])} | {_cell(v['recipe'])} | "
                     f"{_cell(v['difference'], 4)} | [{_cell(v['low'], 4)}, {_cell(v['high'], 4)}] |")
    lines += ["", "## Per fold", "", "| fold | test images | " + " | ".join(
        f"{n} (ImageNet / recipe)" for n in FIGURES) + " |", "|---" * (len(FIGURES) + 2) + "|"]
    for f in result["folds"]:
        cells = [f"{_cell(f['imagenet'][n])} / {_cell(f['recipe'][n])}" for n in FIGURES]
        lines.append(f"| {f['fold']} | {f['test_images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(result, report_dir):
    """``metrics.json``, ``summary.md`` and ``paired_differences.png`` of one cross-validation."""
    from imgsim import viz

    os.makedirs(report_dir, exist_ok=True)
    atomic_write_json(os.path.join(report_dir, "metrics.json"), result)
    atomic_write_text(os.path.join(report_dir, "summary.md"), summary_markdown(result))
    viz.save_figure(viz.paired_differences({result["name"]: result["pooled"]}, FIGURES),
                    os.path.join(report_dir, "paired_differences.png"))


def sweep_results(sweep_root):
    """The cross-validation result of every finished run of a sweep of ``06_crossval.ipynb``."""
    results = []
    for name in sorted(os.listdir(sweep_root)):
        path = os.path.join(sweep_root, name, "metrics.json")
        if os.path.isfile(path) and "pooled" in read_json(path):
            results.append(read_json(path))
    if not results:
        raise ConfigError(f"{sweep_root}: no finished cross-validation runs (metrics.json with "
                          "'pooled') in its run folders")
    return results


RECOMMENDATION_RULE = (
    "among trained recipes: the largest mAP@R difference whose interval lies above 0; if none, "
    "the largest within-dataset P@1 difference (what fine-tuning is still good for)")


def _mode_label(config):
    """"untrained", "full" or "fast", with the number of backbone layers trained if any."""
    if config.get("untrained"):
        return "untrained"
    train = config["train"]
    layers = train["embedding"]["trainable_layers"]
    return train["mode"] + (f", top {layers} layers" if layers else ", backbone frozen")


def recommend(results):
    """The recipe :data:`RECOMMENDATION_RULE` picks, and whether it beats ImageNet on mAP@R.

    Returns
    -------
    (name, beats) : (str or None, bool)
    """
    trained = [r for r in results if not r["config"].get("untrained")]
    if not trained:
        return None, False
    winners = [r for r in trained if r["pooled"]["map_at_r"]["low"] > 0]
    if winners:
        return max(winners, key=lambda r: r["pooled"]["map_at_r"]["difference"])["name"], True
    best = max(trained, key=lambda r: r["pooled"]["within_dataset_precision_at_1"]["difference"])
    return best["name"], False


def sweep_report(results, report_dir, figures=HEADLINE):
    """Recipes side by side: ``summary.md``, ``metrics.json`` and ``paired_differences.png``.

    Parameters
    ----------
    results : list of dict
        :func:`crossval` results (e.g. :func:`sweep_results`), names distinct.
    report_dir : str
    figures : sequence of str
        Figures in the table and the plot.

    Returns
    -------
    pandas.DataFrame: one row per recipe, for each figure the difference and interval.
    """
    from imgsim import viz

    rows = []
    for r in results:
        mode = _mode_label(r["config"])
        row = {"recipe": r["name"], "mode": mode, "folds": len(r["folds"])}
        for name in FIGURES:
            v = r["pooled"][name]
            row.update({f"{name}": v["recipe"], f"{name}_imagenet": v["imagenet"],
                        f"{name}_difference": v["difference"], f"{name}_low": v["low"],
                        f"{name}_high": v["high"]})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(f"{figures[0]}_difference", ascending=False)
    os.makedirs(report_dir, exist_ok=True)
    recommended, beats = recommend(results)
    atomic_write_json(os.path.join(report_dir, "metrics.json"), {
        "recipes": {r["name"]: {"pooled": r["pooled"], "config": r["config"], "folds": r["folds"]}
                    for r in results},
        "recommended": recommended, "beats_imagenet": beats, "rule": RECOMMENDATION_RULE})
    level = int(round(100 * results[0]["config"]["level"]))
    lines = ["# Training recipes vs ImageNet GAP, cross-validated by scene", "",
             f"Each cell: recipe − ImageNet (mean paired difference) and its {level} % bootstrap "
             "interval over scenes; **bold** where the interval lies above 0. ImageNet's own "
             "value in the header.", ""]
    base = {name: results[0]["pooled"][name]["imagenet"] for name in figures}
    lines.append("| recipe | mode | " + " | ".join(f"{n} (ImageNet {_cell(base[n])})"
                                                    for n in figures) + " |")
    lines.append("|---" * (len(figures) + 2) + "|")
    for _, row in table.iterrows():
        cells = []
        for name in figures:
            text = (f"{row[f'{name}_difference']:+.4f} [{_cell(row[f'{name}_low'], 4)}, "
                    f"{_cell(row[f'{name}_high'], 4)}]")
            cells.append(f"**{text}**" if row[f"{name}_low"] > 0 else text)
        lines.append(f"| {row['recipe']} | {row['mode']} | " + " | ".join(cells) + " |")
    verdict = ("beats ImageNet on mAP@R (interval above 0)" if beats else
               "does not beat ImageNet on mAP@R (no trained recipe's interval lies above 0)")
    trained = sum(not r["config"].get("untrained") for r in results)
    lines += ["", f"Recommended ({RECOMMENDATION_RULE}): **{recommended}**, which {verdict}.",
              "", f"Each interval is {level} % for its own recipe; {trained} trained recipes were "
              "compared without a correction for multiple comparisons, so an interval that only "
              "just clears 0 is weak evidence on its own.",
              "", f"Folds: {len(results[0]['folds'])} by scene, {sum(len(f['test_scenes']) for f in results[0]['folds'])} "
              "scenes; the same folds for every recipe (seed "
              f"{results[0]['config']['fold_seed']})."]
    atomic_write_text(os.path.join(report_dir, "summary.md"), "\n".join(lines) + "\n")
    ordered = {r["name"]: r["pooled"] for r in sorted(
        results, key=lambda r: -r["pooled"][figures[0]]["difference"])}
    viz.save_figure(viz.paired_differences(ordered, figures),
                    os.path.join(report_dir, "paired_differences.png"))
    return table.reset_index(drop=True)
