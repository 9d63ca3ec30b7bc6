"""The Image Matching Challenge task: split each dataset into scenes and pose every image.

One step per stage, in the shape of hloc's modules; each stage writes its
output atomically under ``work_dir/<dataset>/``, keyed by the content of the
images (SHA-256) and every setting it depends on, and a killed run resumes
from the last finished stage:

1. **embed** — global descriptors (:func:`imgsim.model.embed`; the ImageNet
   GAP baseline unless a trained model is given) → ``embeddings.npy``.
2. **pairs** — every image with its ``shortlist_k`` nearest neighbours
   (:func:`imgsim.sift.shortlist_pairs`, FAISS: exact search, or an
   approximate index for large datasets, ``shortlist_index``), or all pairs
   when the dataset has at most ``all_pairs_up_to`` images or ``shortlist_k``
   is 0 → ``pairs.json``.
3. **match** — SIFT features (cached by content under ``work_dir/features``),
   ratio-test matches, static matches dropped, MAGSAC verification in a process
   pool (:func:`imgsim.sift.score_pairs`), and each pair's evidence
   (:func:`imgsim.sift.pair_evidence`: inliers one homography explains, spread
   over the image) → ``matches.npz``.
4. **cluster** — the match graph weighed by evidence and split into scenes,
   weak images left out (:func:`imgsim.graph.cluster_graph`) → ``clusters.json``.
5. **sfm** — per cluster, optionally new features and matches at the SfM
   budget (``sfm_sift``), then a COLMAP database written by imgsim (a camera
   per image or per EXIF camera, EXIF focal priors) and incremental mapping
   (:func:`imgsim.sfm.map_cluster`), each cluster's result written as it
   finishes → ``sfm.json``.

The match stage keeps its pair chunks under ``work_dir/features/pairs`` and
SfM each cluster's models, so a run killed inside either resumes inside it.
With ``workers`` or ``scheduler`` the embed, match and SfM stages run on Dask
(:mod:`imgsim.distributed`; embeddings in content-keyed shards under
``work_dir/embeddings``, one SfM task per cluster, largest first); pairs and
cluster run here.

Each reconstructed model with at least ``min_cluster_size`` images becomes one
predicted scene; images registered in none are ``outliers`` with no pose
(``nan;nan;nan;nan;nan;nan;nan;nan;nan`` and ``nan;nan;nan``, as Kaggle's
``sample_submission.csv`` and the official reader need; an image placed in
no cluster costs no clusterness, and an unposed image scores the same in mAA
wherever it is put). Poses follow COLMAP's and IMC's convention: a world point X
maps to camera coordinates as ``R X + t``.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from imgsim import distributed
from imgsim.config import DictConfig, check_choice, check_range
from imgsim.images import IMAGE_EXTENSIONS, file_digest
from imgsim.errors import ConfigError, DataLayoutError, WeightsNotFoundError
from imgsim.graph import METHODS, cluster_graph, edge_evidence
from imgsim.model import check_image_size
from imgsim.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from imgsim.sfm import SfmConfig
from imgsim.sift import FeatureCache, SiftConfig

SUBMISSION_COLUMNS = ("image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector")
OUTLIERS = "outliers"
STAGES = ("embed", "pairs", "match", "cluster", "sfm")
SHORTLIST_INDEXES = ("auto", "exact", "ivf", "hnsw", "ivfpq")
# SIFT settings of the match stage unless ``ReconstructConfig.sift`` says otherwise.
SIFT_DEFAULTS = {"max_side": 1024, "n_features": 4000, "static_px": 1.0}
EVIDENCE = ("n_matches", "n_static", "n_backdrop", "n_planar", "spread")  # per pair, beside the inliers


@dataclass
class ReconstructConfig(DictConfig):
    """Settings of :func:`reconstruct`.

    Attributes
    ----------
    shortlist_k : int
        Neighbours per image by embedding distance; 0 matches all pairs.
    shortlist_index : str
        How the neighbours are found (:func:`imgsim.sift.shortlist_pairs`):
        ``"auto"`` (exact up to ``imgsim.index.EXACT_UP_TO`` images, the
        approximate :meth:`imgsim.index.Index.for_size` above), ``"exact"``,
        or an index kind (``"ivf"``, ``"hnsw"``, ``"ivfpq"``).
    all_pairs_up_to : int
        Datasets with at most this many images match all pairs anyway.
    min_inliers : int
        Effective inliers (:func:`imgsim.graph.edge_evidence`) for a pair to
        join two images in the match graph.
    min_cluster_size : int
        Smaller clusters and models are outliers (COLMAP needs 3 images to
        register anything beyond the initial pair reliably).
    model : str or None
        A trained ``.keras`` embedding model; None uses the ImageNet GAP baseline.
    image_size : int
        Input side of the ImageNet baseline.
    sift : dict
        :class:`~imgsim.sift.SiftConfig` fields of the match stage, over
        ``SIFT_DEFAULTS`` (static matches dropped at 1 px).
    processes : int or None
        Matching processes and COLMAP threads; None: every core (on Dask:
        COLMAP threads per cluster task, None: the worker's share of cores).
    cluster_method : {"louvain", "components"}
        Split components into communities merged back by conductance, or
        keep connected components (:func:`imgsim.graph.cluster_graph`).
    planar_weight : float
        In [0, 1]: what an inlier that one homography explains counts.
    min_spread : float
        Pairs whose inliers cover less of either image (fraction of an 8 × 8
        grid's cells) count nothing.
    min_best_inliers : float
        An image whose strongest edge has fewer effective inliers is an outlier.
    max_conductance : float
        Communities joined at least this strongly are merged.
    min_bridge_images : int
        Communities whose cut touches at least this many images on each side
        are merged (a weak bridge rests on fewer).
    louvain_resolution : float
        Louvain's resolution.
    fusion_model : str or None
        A JSON file of a fitted :class:`~imgsim.fusion.FusionModel`
        (``FusionModel.to_dict()``, or an evaluate ``metrics.json`` holding it
        under ``fusion``); its same-scene probability scales each edge's
        evidence and drops pairs below 0.5. It must come from the same
        embedding model as ``model``.
    sfm_sift : dict or None
        SIFT settings of the features SfM uses, e.g. ``{"max_side": 1600,
        "n_features": 8000}``: each cluster's pairs with a verified edge are
        matched again at that budget (None: SfM uses the match stage's).
    sfm : dict
        :class:`~imgsim.sfm.SfmConfig` fields (cameras, EXIF focal priors,
        mapper thresholds, retries, leftover registration).
    scheduler : str or None
        Embed, match and SfM on an existing Dask cluster (``tcp://HOST:PORT``);
        the work dir (feature cache, embedding shards, SfM folders), the
        images and ``model`` must be on storage every worker sees at the same path.
    workers : int or None
        Embed, match and SfM on a local Dask cluster of this many processes.
    """

    shortlist_k: int = 10
    shortlist_index: str = "auto"
    all_pairs_up_to: int = 20
    min_inliers: int = 30
    min_cluster_size: int = 3
    model: str = None
    image_size: int = 224
    sift: dict = field(default_factory=dict)
    processes: int = None
    cluster_method: str = "louvain"
    planar_weight: float = 0.5
    min_spread: float = 0.0
    min_best_inliers: float = 0.0
    max_conductance: float = 0.05
    min_bridge_images: int = 2
    louvain_resolution: float = 1.0
    fusion_model: str = None
    sfm_sift: dict = None
    sfm: dict = field(default_factory=dict)
    scheduler: str = None
    workers: int = None

    def __post_init__(self):
        super().__post_init__()  # the field types
        for name, least in (("shortlist_k", 0), ("all_pairs_up_to", 0), ("min_inliers", 1),
                            ("min_cluster_size", 2), ("min_bridge_images", 1)):
            check_range(name, getattr(self, name), least, integer=True)
        if self.processes is not None:
            check_range("processes", self.processes, 1, integer=True)
        check_choice("cluster_method", self.cluster_method, METHODS)
        for name, low, high in (("planar_weight", 0, 1), ("min_spread", 0, 1),
                                ("min_best_inliers", 0, None), ("max_conductance", 0, 1)):
            check_range(name, getattr(self, name), low, high)
        check_range("louvain_resolution", self.louvain_resolution, 0, low_open=True)
        check_image_size(self.image_size)  # the embedding's, before any work
        if self.model is not None and not os.path.isfile(self.model):
            raise WeightsNotFoundError(f"{self.model}: model file does not exist")
        if self.fusion_model is not None and not os.path.isfile(self.fusion_model):
            raise ConfigError(f"fusion_model: {self.fusion_model}: no such file")
        # validate the nested settings now, not after embedding
        self.sift_config(), self.sfm_config(), self.sfm_sift_config(), self.fusion()
        check_choice("shortlist_index", self.shortlist_index, SHORTLIST_INDEXES)
        if self.on_dask():
            distributed.check(self.scheduler, self.workers)

    def sift_config(self):
        """The match stage's :class:`~imgsim.sift.SiftConfig` (``SIFT_DEFAULTS`` under ``sift``)."""
        return SiftConfig.from_dict({**SIFT_DEFAULTS, **dict(self.sift or {})})

    def sfm_sift_config(self):
        """SfM's SiftConfig: ``sfm_sift`` over the match stage's settings, or None."""
        if self.sfm_sift is None:
            return None
        return SiftConfig.from_dict({**self.sift_config().to_dict(), **dict(self.sfm_sift)})

    def sfm_config(self):
        return SfmConfig.from_dict(dict(self.sfm or {}))

    def fusion(self):
        """The fitted :class:`~imgsim.fusion.FusionModel` of ``fusion_model``, or None."""
        if self.fusion_model is None:
            return None
        from imgsim.fusion import FusionModel

        try:
            stored = read_json(self.fusion_model)
            return FusionModel.from_dict(stored.get("fusion", stored))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"fusion_model: {self.fusion_model}: not a fitted fusion model "
                              f"({type(exc).__name__}: {exc})") from None

    def on_dask(self):
        """Whether the embed, match and SfM stages run on Dask."""
        return distributed.enabled(self.scheduler, self.workers)


# --------------------------------------------------------------------------- input


def list_datasets(root):
    """The images of each dataset under ``root``.

    ``root`` is an IMC folder (``train_labels.csv`` or ``sample_submission.csv``
    listing ``dataset,image`` under ``train/`` or ``test/``) or a folder of
    ``<dataset>/<image>`` sub-folders. Scene labels, if present, are not read.

    Returns
    -------
    pandas.DataFrame with columns ``dataset``, ``image`` (file name) and
    ``path`` (and ``image_id`` when the CSV has one, as Kaggle's
    ``sample_submission.csv`` does), sorted by dataset and image. In the
    folder layout only image files (``IMAGE_EXTENSIONS``, not hidden) count.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataLayoutError(f"{root}: no such directory")
    for csv_name, image_dir in (("train_labels.csv", "train"), ("sample_submission.csv", "test")):
        csv_path = os.path.join(root, csv_name)
        if os.path.isfile(csv_path):
            try:
                listing = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise DataLayoutError(f"{csv_path}: not a readable CSV ({type(exc).__name__})") from None
            missing = [c for c in ("dataset", "image") if c not in listing.columns]
            if missing:
                raise DataLayoutError(f"{csv_path}: missing columns: {', '.join(missing)}")
            keep = ["dataset", "image"] + (["image_id"] if "image_id" in listing.columns else [])
            table = listing[keep].drop_duplicates(["dataset", "image"]).copy()
            table["path"] = [os.path.join(root, image_dir, d, i)
                             for d, i in zip(table["dataset"], table["image"])]
            break
    else:
        rows = [(d, i, os.path.join(root, d, i)) for d in sorted(os.listdir(root))
                if os.path.isdir(os.path.join(root, d))
                for i in sorted(os.listdir(os.path.join(root, d)))
                if os.path.isfile(os.path.join(root, d, i)) and not i.startswith(".")
                and i.lower().endswith(IMAGE_EXTENSIONS)]
        table = pd.DataFrame(rows, columns=["dataset", "image", "path"])
        csv_path = root
    if table.empty:
        raise DataLayoutError(f"{csv_path}: no images found")
    for path in table["path"]:
        if not os.path.isfile(path):
            raise DataLayoutError(f"{path}: listed in {csv_path} but does not exist")
        if os.path.getsize(path) == 0:
            raise DataLayoutError(f"{path}: empty file (0 bytes)")
    return table.sort_values(["dataset", "image"]).reset_index(drop=True)


# --------------------------------------------------------------------------- stages


def _key(*parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def embedding_model(config):
    """The global-descriptor model: ``config.model``, else the ImageNet GAP baseline."""
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, load_model

    if config.model:
        return load_model(config.model)
    return build_imagenet_baseline(EmbeddingConfig(image_size=config.image_size))


def embed_stage(paths, model, config=None, cache_dir=None):
    """Global descriptors of ``paths``: (n, dim) float32, L2-normalised.

    On Dask (``config.on_dask()``) in content-keyed shards under ``cache_dir``
    (:func:`imgsim.model.embed_sharded`, model ``config.model`` or the
    ImageNet baseline; ``model`` is unused), else with ``model`` here.
    """
    if config is not None and config.on_dask():
        from imgsim.model import embed_sharded

        return embed_sharded(paths, config.model, config.image_size, cache_dir, progress=True,
                             scheduler=config.scheduler, workers=config.workers)
    from imgsim.model import embed

    return embed(model, list(paths), progress=True)


def pairs_stage(embeddings, config):
    """Candidate pairs ``(i, j)``, i < j: the embedding shortlist, or all pairs."""
    from imgsim.sift import shortlist_pairs

    n = len(embeddings)
    if config.shortlist_k == 0 or n <= config.all_pairs_up_to or config.shortlist_k >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    return shortlist_pairs(embeddings, config.shortlist_k, config.shortlist_index)


def match_stage(paths, pairs, config, cache, sift_config=None):
    """Verified matches and evidence of each pair.

    Parameters
    ----------
    paths : list of str
    pairs : list of (int, int)
    config : ReconstructConfig
    cache : imgsim.sift.FeatureCache
    sift_config : SiftConfig, optional
        Default ``config.sift_config()``.

    Returns
    -------
    matches : list of uint32 arrays of shape (n_inliers, 2)
        Verified inliers, those on a still backdrop removed.
    evidence : dict of arrays of shape (len(pairs),)
        ``n_matches`` (ratio-test matches), ``n_static`` (of them, dropped as
        static before verification), ``n_backdrop`` (verified inliers on a
        backdrop keypoint, :func:`imgsim.sift.backdrop_keypoints`, removed),
        ``n_planar`` and ``spread`` of the rest (:func:`imgsim.sift.pair_evidence`).
    """
    from imgsim.sift import score_pairs

    sift_config = sift_config or config.sift_config()
    results = score_pairs([(paths[i], paths[j]) for i, j in pairs], sift_config, cache,
                          config.processes, progress=True, keep_matches=True,
                          workers=config.workers, scheduler=config.scheduler)
    matches, evidence = match_evidence(paths, pairs, [inliers for _, inliers in results], sift_config,
                                       cache, config.min_inliers, config.processes)
    evidence["n_matches"] = np.array([score.n_matches for score, _ in results], np.int64)
    evidence["n_static"] = np.array([score.n_static for score, _ in results], np.int64)
    return matches, evidence


def match_evidence(paths, pairs, matches, sift_config, cache, min_moving, threads=None):
    """Backdrop inliers removed, then :func:`imgsim.sift.pair_evidence` of each pair, in threads.

    Returns
    -------
    matches : list of uint32 arrays (the inliers not on a backdrop keypoint)
    evidence : dict with ``n_backdrop``, ``n_planar`` (int64) and ``spread``
    (float64) arrays of shape (len(pairs),).
    """
    from concurrent.futures import ThreadPoolExecutor

    from imgsim.sift import backdrop_keypoints, pair_evidence

    loaded, light = {}, {}

    def features(i):  # the last few images' full features (pairs come sorted by image)
        if i not in loaded:
            if len(loaded) >= 64:
                loaded.pop(next(iter(loaded)))
            f = loaded[i] = cache.get(paths[i], sift_config)
            # keypoints only (little memory), kept for pair_evidence: no second read from disk
            light[i] = dataclasses.replace(f, descriptors=f.descriptors[:0], scales=f.scales[:0],
                                           angles=f.angles[:0])
        return loaded[i]

    marks = backdrop_keypoints(features, pairs, [len(m) for m in matches], sift_config.static_px,
                               min_moving)
    cleaned, n_backdrop = [], np.zeros(len(pairs), np.int64)
    for k, ((a, b), inliers) in enumerate(zip(pairs, matches)):
        on = np.zeros(len(inliers), bool)
        for image, column in ((a, 0), (b, 1)):
            if image in marks:
                on |= marks[image][inliers[:, column].astype(np.int64)]
        cleaned.append(inliers[~on])
        n_backdrop[k] = int(on.sum())
    for i in sorted({i for pair in pairs for i in pair} - set(light)):  # those not read above
        features(i)
    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        found = list(pool.map(lambda k: pair_evidence(light[pairs[k][0]], light[pairs[k][1]],
                                                      cleaned[k], sift_config), range(len(pairs))))
    return cleaned, {"n_backdrop": n_backdrop,
                     "n_planar": np.array([p for p, _ in found], np.int64).reshape(-1),
                     "spread": np.array([c for _, c in found], np.float64).reshape(-1)}


def edge_weights(pairs, matches, evidence, config, embeddings=None):
    """Effective inliers of each pair (:func:`imgsim.graph.edge_evidence` with ``config``'s settings).

    ``embeddings`` (n, dim) give the fusion model its distances; needed only
    with ``config.fusion_model``.
    """
    n_inliers = np.array([len(m) for m in matches], np.int64)
    probability = None
    fusion = config.fusion()
    if fusion is not None and len(pairs):
        from imgsim.fusion import pair_features

        a, b = np.asarray(pairs).T
        distances = np.linalg.norm(np.asarray(embeddings)[a] - np.asarray(embeddings)[b], axis=1)
        ratios = np.where(evidence["n_matches"] > 0, n_inliers / np.maximum(evidence["n_matches"], 1), 0)
        probability = fusion.predict_proba(pair_features(distances, n_inliers, ratios))
    return edge_evidence(n_inliers, evidence["n_planar"], evidence["spread"], config.planar_weight,
                         config.min_spread, probability)


def cluster_stage(n, pairs, matches, evidence, config, embeddings=None):
    """Clusters of the match graph with at least ``min_cluster_size`` images (lists of indices)."""
    return cluster_graph(n, pairs, edge_weights(pairs, matches, evidence, config, embeddings),
                         config.min_inliers, config.min_best_inliers, config.min_cluster_size,
                         config.cluster_method, config.max_conductance, config.min_bridge_images,
                         config.louvain_resolution)


def sfm_stage(folder, paths, pairs, matches, config, cache, sift_config, threads=None):
    """Incremental SfM of one cluster (:func:`imgsim.sfm.map_cluster`), resumable per cluster.

    The result is written atomically to ``folder/models.json`` with the
    seconds it took; called again with that file present, it reads it back, so
    a run killed during SfM redoes only the clusters it had not finished.

    Parameters
    ----------
    folder : str
        Scratch folder of this cluster (database, models, ``models.json``).
    paths : list of str
        The cluster's image files.
    pairs : list of (int, int)
        Indices into ``paths``.
    matches : list of uint32 arrays of shape (m, 2)
    config : ReconstructConfig
    cache : imgsim.sift.FeatureCache
        Holds (or gets) the features of ``paths`` at ``sift_config``.
    sift_config : SiftConfig
        The features the matches index.
    threads : int, optional
        COLMAP threads; default ``config.processes``, else every core.

    Returns
    -------
    list of dict
        One per model, largest first: ``{name: {"R": 3×3 list, "t": 3 list}}``.
    """
    import shutil

    from imgsim.images import displayed_to_stored
    from imgsim.sfm import image_camera, map_cluster
    from imgsim.sift import extract_many

    done = os.path.join(folder, "models.json")
    if os.path.exists(done):
        return read_json(done)["models"]
    shutil.rmtree(folder, ignore_errors=True)  # a killed attempt's database and models
    start = time.perf_counter()
    threads = threads or config.processes or os.cpu_count() or 1
    sfm = config.sfm_config()
    features = extract_many(paths, sift_config, cache)
    cameras = [image_camera(p, sfm.exif_focal) for p in paths]
    # imgsim's keypoints are in the EXIF-oriented photo with pixel centres at integers;
    # COLMAP reads the stored pixel grid and puts pixel centres at +0.5
    keypoints = [displayed_to_stored(f.keypoints, p) + 0.5 for f, p in zip(features, paths)]
    models = map_cluster(folder, [os.path.basename(p) for p in paths], cameras, keypoints, pairs,
                         matches, sfm, config.min_cluster_size, threads)
    atomic_write_json(done, {"models": models, "seconds": time.perf_counter() - start,
                             "images": len(paths), "pairs": len(pairs), "threads": threads})
    return models


def _sfm_task(folder, paths, pairs, matches, config, cache_folder, sift_config):
    """:func:`sfm_stage` on a Dask worker: its cache opened there, COLMAP on the task's threads."""
    return sfm_stage(folder, paths, pairs, matches, config, FeatureCache(cache_folder), sift_config,
                     config.processes or distributed.task_threads() or 1)


def sfm_clusters(folder, paths, clusters, pairs, matches, config, cache, desc="SfM"):
    """:func:`sfm_stage` of every cluster; on Dask (``config.on_dask()``) one task per cluster.

    Each cluster gets the pairs inside it. With ``config.sfm_config()``'s
    separate SfM features (``sfm_sift``), its pairs with a verified edge are
    matched again at that budget first (on Dask too). Cluster ``c`` maps in
    ``folder/cluster<c>``; on Dask the largest clusters are submitted first
    (the last to finish decides the wall time), and ``folder`` must be on
    storage every worker sees.

    Returns
    -------
    list of dict
        Every cluster's models, in cluster order.
    """
    from tqdm.auto import tqdm

    sift_config = config.sfm_sift_config() or config.sift_config()
    cluster_of = {m: c for c, members in enumerate(clusters) for m in members}
    inside = [[] for _ in clusters]  # each cluster's pairs, in one pass over all pairs
    for k, (a, b) in enumerate(pairs):
        if a in cluster_of and cluster_of.get(b) == cluster_of[a]:
            inside[cluster_of[a]].append(k)
    tasks = []
    for c, members in enumerate(clusters):
        index = {m: k for k, m in enumerate(members)}
        sub = [(index[pairs[k][0]], index[pairs[k][1]]) for k in inside[c]]
        sub_matches = [matches[k] for k in inside[c]]
        member_paths = [paths[m] for m in members]
        if config.sfm_sift is not None:  # the SfM budget: match the pairs with a verified edge again
            keep = [k for k, m in enumerate(sub_matches) if len(m) >= config.min_inliers]
            sub = [sub[k] for k in keep]
            sub_matches, _ = match_stage(member_paths, sub, config, cache, sift_config)
        tasks.append((os.path.join(folder, f"cluster{c}"), member_paths, sub, sub_matches))
    if not config.on_dask():
        found = [sfm_stage(*task, config, cache, sift_config) for task in tqdm(tasks, desc=desc, unit="cluster")]
    else:
        order = sorted(range(len(tasks)), key=lambda c: -len(tasks[c][1]))
        with distributed.client(config.scheduler, config.workers) as dask_client:
            distributed.check_shared(dask_client, folder)
            done = distributed.run_tasks(dask_client, _sfm_task, [
                (*tasks[c], config, os.path.abspath(cache.folder), sift_config) for c in order],
                progress=True, desc=desc, unit="cluster")
        found = [None] * len(tasks)
        for c, models in zip(order, done):
            found[c] = models
    return [model for models in found for model in models]


# --------------------------------------------------------------------------- assembly


def assign_scenes(names, models, min_size):
    """Scene and pose of every image from the SfM models.

    Models are taken largest first; an image already placed by a larger model
    is not moved. Models left with fewer than ``min_size`` images, and images
    in no model, become ``outliers`` with no pose.

    Returns
    -------
    dict name -> (scene, R or None, t or None)
    """
    placed = {name: (OUTLIERS, None, None) for name in names}
    taken = set()
    scene = 0
    for poses in sorted(models, key=len, reverse=True):
        fresh = {n: p for n, p in poses.items() if n not in taken}
        if len(fresh) < min_size:
            continue
        for name, pose in fresh.items():
            placed[name] = (f"cluster{scene}", pose["R"], pose["t"])
        taken.update(fresh)
        scene += 1
    return placed


def _join(values, size):
    """``size`` values joined by ``;``; None (no pose) gives ``size`` ``nan``s, as Kaggle's sample_submission.csv."""
    if values is None:
        return ";".join(["nan"] * size)
    return ";".join(f"{v:.9g}" for v in np.asarray(values, float).ravel())


def _stage(file, timings, compute, read, write):
    """Read a finished stage's output, or compute and write it; ``timings[file name]`` = seconds."""
    if os.path.exists(file):
        return read(file)
    start = time.perf_counter()
    value = compute()
    write(file, value)
    timings[os.path.basename(file)] = time.perf_counter() - start
    return value


def _save_npy(file, array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(file, buffer.getvalue())


def _save_matches(file, value):
    matches, evidence = value
    buffer = io.BytesIO()
    counts = np.array([len(m) for m in matches], np.int64)
    flat = np.concatenate([np.asarray(m, np.uint32).reshape(-1, 2) for m in matches] or
                          [np.zeros((0, 2), np.uint32)])
    np.savez(buffer, counts=counts, matches=flat, **{k: np.asarray(evidence[k]) for k in EVIDENCE})
    atomic_write_bytes(file, buffer.getvalue())


def _load_matches(file):
    with np.load(file) as z:
        counts, flat = z["counts"], z["matches"]
        evidence = {k: z[k] for k in EVIDENCE}
    return (np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []), evidence


def _digest_or_none(path):
    return file_digest(path) if path else None


def reconstruct_dataset(name, paths, work_dir, config, cache, model=None):
    """All stages for one dataset; returns ({image name: (scene, R, t)}, timings, info).

    ``timings`` gives each stage's compute time in seconds for these settings,
    also when its output was read from an earlier run's work dir.

    ``model`` is a callable returning the embedding model, called only when
    the embed stage is not on disk yet (default: :func:`embedding_model`).
    """
    model = model or (lambda: embedding_model(config))
    names = [os.path.basename(p) for p in paths]
    if len(set(names)) != len(names):
        raise DataLayoutError(f"dataset {name}: two images share a file name")
    folder = os.path.join(work_dir, name)
    os.makedirs(folder, exist_ok=True)
    timings_file = os.path.join(folder, "timings.json")  # seconds each stage file took to compute
    timings = read_json(timings_file) if os.path.exists(timings_file) else {}
    used = {}  # stage -> the file this run's settings use
    # content, not name and size: a replaced photo of the same size is never served stale
    files_key = [(n, cache.digest(p)) for n, p in zip(names, paths)]  # hashed once, shared with SIFT
    sift, sfm_sift = config.sift_config(), config.sfm_sift_config()
    k_embed = _key(files_key, _digest_or_none(config.model), config.image_size)
    k_pairs = _key(k_embed, config.shortlist_k, config.all_pairs_up_to, config.shortlist_index)
    k_match = _key(k_pairs, sift.to_dict(), EVIDENCE, config.min_inliers)
    k_cluster = _key(k_match, config.min_inliers, config.min_cluster_size, config.cluster_method,
                     config.planar_weight, config.min_spread, config.min_best_inliers,
                     config.max_conductance, config.min_bridge_images, config.louvain_resolution,
                     _digest_or_none(config.fusion_model))

    def run(stage, key, ext, compute, read, write):
        used[stage] = f"{stage}-{key}.{ext}"
        result = _stage(os.path.join(folder, used[stage]), timings, compute, read, write)
        atomic_write_json(timings_file, timings)
        return result

    embeddings = run("embed", k_embed, "npy",
                     lambda: embed_stage(paths, None if config.on_dask() else model(), config,
                                         os.path.join(work_dir, "embeddings")), np.load, _save_npy)
    pairs = run("pairs", k_pairs, "json", lambda: pairs_stage(embeddings, config),
                lambda f: [tuple(p) for p in read_json(f)], atomic_write_json)
    matches, evidence = run("match", k_match, "npz", lambda: match_stage(paths, pairs, config, cache),
                            _load_matches, _save_matches)
    clusters = run("cluster", k_cluster, "json",
                   lambda: cluster_stage(len(paths), pairs, matches, evidence, config, embeddings),
                   read_json, atomic_write_json)
    # keyed by the clusters themselves: a clustering setting that finds the same clusters reuses SfM
    k_sfm = _key(k_match, clusters, config.min_cluster_size, config.min_inliers,
                 config.sfm_config().to_dict(), sfm_sift and sfm_sift.to_dict())

    models = run("sfm", k_sfm, "json",
                 lambda: sfm_clusters(os.path.join(folder, f"sfm-{k_sfm}"), paths, clusters, pairs,
                                      matches, config, cache, desc=f"SfM {name}"),
                 read_json, atomic_write_json)
    placed = assign_scenes(names, models, config.min_cluster_size)
    weights = edge_weights(pairs, matches, evidence, config, embeddings)
    verified = [k for k, m in enumerate(matches) if len(m) >= config.min_inliers]
    info = {"images": len(paths), "pairs": len(pairs), "verified": len(verified),
            "edges": int((weights >= config.min_inliers).sum()),
            "static_matches": int(evidence["n_static"].sum()),
            "clusters": [len(c) for c in clusters], "models": [len(m) for m in models],
            "registered": sum(scene != OUTLIERS for scene, _, _ in placed.values()),
            # verified pairs (image a, image b, inliers, effective inliers): the report's diagnostics
            "edge_list": [[names[pairs[k][0]], names[pairs[k][1]], len(matches[k]),
                           round(float(weights[k]), 1)] for k in verified]}
    # what each stage of these settings cost when it was computed (now or by an earlier run)
    return placed, {stage: timings.get(file, 0.0) for stage, file in used.items()}, info


def check_out(out):
    """Refuse an ``out`` that cannot become the submission file, before any work."""
    if os.path.isdir(out):
        raise ConfigError(f"out: {out} is a directory; give the submission CSV's file name")
    parent = os.path.dirname(os.path.abspath(out))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"out: {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"out: {out}: {parent} is not writable")


def reconstruct(data_root, out, work_dir=None, config=None, datasets=None):
    """Cluster and pose every dataset under ``data_root``; write a Kaggle submission.

    Parameters
    ----------
    data_root : str or path
        See :func:`list_datasets`.
    out : str or path
        The submission CSV, columns ``SUBMISSION_COLUMNS``: R row-major, 9
        values joined by ``;``, t 3 values; an unregistered image gets 9 and 3
        ``nan`` joined by ``;`` (what the official reader accepts).
        Written atomically once every dataset is done; a directory (or a
        path under a file) is refused before any work.
    work_dir : str or path, optional
        Stage outputs and the feature cache; default ``<out>.work`` beside
        ``out``. Reusing it resumes a killed run.
    config : ReconstructConfig, optional
    datasets : list of str, optional
        Only these datasets.

    Returns
    -------
    dict with ``submission`` (the DataFrame), ``timings`` ({dataset: {stage: seconds}}),
    ``info`` ({dataset: counts, cluster sizes, model sizes, verified pairs}) and
    ``wall_s``; also written to ``<work_dir>/run.json``.
    """
    start = time.perf_counter()
    config = config or ReconstructConfig()
    out = os.fspath(out)
    check_out(out)
    table = list_datasets(data_root)
    if datasets is not None:
        unknown = sorted(set(datasets) - set(table["dataset"]))
        if unknown:
            raise DataLayoutError(f"{data_root}: no dataset named {', '.join(unknown)}")
        table = table[table["dataset"].isin(datasets)]
    work_dir = os.fspath(work_dir) if work_dir is not None else out + ".work"
    cache = FeatureCache(os.path.join(work_dir, "features"))
    model = functools.lru_cache(maxsize=1)(lambda: embedding_model(config))  # built once, if needed
    rows, timings, info = [], {}, {}
    with distributed.client(config.scheduler, config.workers) if config.on_dask() else \
            contextlib.nullcontext():  # one cluster for every dataset's stages
        for name, group in table.groupby("dataset", sort=True):
            placed, timings[name], info[name] = reconstruct_dataset(
                name, list(group["path"]), work_dir, config, cache, model)
            ids = group["image_id"] if "image_id" in group else [f"{name}_{i}" for i in group["image"]]
            for image_id, image in zip(ids, group["image"]):
                scene, R, t = placed[image]
                rows.append({"image_id": image_id, "dataset": name, "scene": scene, "image": image,
                             "rotation_matrix": _join(R, 9), "translation_vector": _join(t, 3)})
    submission = pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS))
    atomic_write_text(out, submission.to_csv(index=False))
    result = {"timings": timings, "info": info, "wall_s": time.perf_counter() - start,
              "config": config.to_dict()}
    atomic_write_json(os.path.join(work_dir, "run.json"), result)
    return {"submission": submission, **result}
