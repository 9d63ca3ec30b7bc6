"""The Image Matching Challenge task: split each dataset into scenes and pose every image.

One step per stage, in the shape of hloc's modules; each stage writes its
output atomically under ``work_dir/<dataset>/`` and a killed run resumes from
the last finished stage:

1. **embed** — global descriptors (:func:`imgsim.model.embed`; the ImageNet
   GAP baseline unless a trained model is given) → ``embeddings.npy``.
2. **pairs** — every image with its ``shortlist_k`` nearest neighbours
   (:func:`imgsim.sift.shortlist_pairs`, FAISS: exact search, or an
   approximate index for large datasets, ``shortlist_index``), or all pairs
   when the dataset has at most ``all_pairs_up_to`` images or ``shortlist_k``
   is 0 → ``pairs.json``.
3. **match** — SIFT features (cached by content under ``work_dir/features``),
   ratio-test matches and MAGSAC verification in a process pool
   (:func:`imgsim.sift.score_pairs`) → ``matches.npz`` (verified matches only).
4. **cluster** — the graph whose edges are pairs with at least ``min_inliers``
   verified matches; its connected components of at least
   ``min_cluster_size`` images are the candidate scenes → ``clusters.json``.
5. **sfm** — per component, a COLMAP database holding imgsim's keypoints and
   verified matches (no COLMAP feature extraction or matching), then
   incremental mapping with :mod:`pycolmap` → ``sfm/<component>/poses.json``.

The match stage keeps its pair chunks under ``work_dir/features/pairs``, so a
run killed inside it resumes inside it. With ``workers`` or ``scheduler`` the
embed and match stages run on Dask (:mod:`imgsim.distributed`; embeddings in
content-keyed shards under ``work_dir/embeddings``); the other stages run here.

Each reconstructed model with at least ``min_cluster_size`` images becomes one
predicted scene; images registered in none are ``outliers`` with ``nan``
poses (an image placed in no cluster costs no clusterness, and an unposed image
scores the same in mAA wherever it is put). Poses follow COLMAP's and IMC's
convention: a world point X maps to camera coordinates as ``R X + t``.
"""

import contextlib
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from imgsim import distributed
from imgsim.config import DictConfig
from imgsim.images import IMAGE_EXTENSIONS
from imgsim.errors import ConfigError, DataLayoutError, WeightsNotFoundError
from imgsim.graph import connected_components
from imgsim.model import check_image_size
from imgsim.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from imgsim.sift import FeatureCache, SiftConfig

SUBMISSION_COLUMNS = ("image_id", "dataset", "scene", "image", "rotation_matrix", "translation_vector")
OUTLIERS = "outliers"
STAGES = ("embed", "pairs", "match", "cluster", "sfm")
SHORTLIST_INDEXES = ("auto", "exact", "ivf", "hnsw", "ivfpq")


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
        Verified matches for a pair to join two images in the match graph.
    min_cluster_size : int
        Smaller components and models are outliers (COLMAP needs 3 images to
        register anything beyond the initial pair reliably).
    model : str or None
        A trained ``.keras`` embedding model; None uses the ImageNet GAP baseline.
    image_size : int
        Input side of the ImageNet baseline.
    sift : dict
        :class:`~imgsim.sift.SiftConfig` fields (defaults otherwise).
    processes : int or None
        Matching processes and COLMAP threads; None: every core.
    camera_mode : {"auto", "single", "per_image"}
        How COLMAP groups images into cameras (``auto``: by size and EXIF).
    max_sfm_seconds : float
        Time limit of each component's incremental mapping (0: none).
    scheduler : str or None
        Embed and match on an existing Dask cluster (``tcp://HOST:PORT``); the
        work dir (feature cache, embedding shards), the images and ``model``
        must be on storage every worker sees at the same path.
    workers : int or None
        Embed and match on a local Dask cluster of this many processes.
    """

    shortlist_k: int = 10
    shortlist_index: str = "auto"
    all_pairs_up_to: int = 20
    min_inliers: int = 30
    min_cluster_size: int = 3
    model: str = None
    image_size: int = 224
    sift: dict = field(default_factory=lambda: {"max_side": 1024, "n_features": 4000})
    processes: int = None
    camera_mode: str = "auto"
    max_sfm_seconds: float = 0
    scheduler: str = None
    workers: int = None

    def __post_init__(self):
        for name, least in (("shortlist_k", 0), ("all_pairs_up_to", 0), ("min_inliers", 1),
                            ("min_cluster_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.shortlist_index not in SHORTLIST_INDEXES:
            raise ConfigError(f"shortlist_index must be one of {SHORTLIST_INDEXES}, "
                              f"got {self.shortlist_index!r}")
        if self.camera_mode not in ("auto", "single", "per_image"):
            raise ConfigError(f"camera_mode must be 'auto', 'single' or 'per_image', "
                              f"got {self.camera_mode!r}")
        self.sift_config()  # validates the SIFT settings now, not after embedding
        check_image_size(self.image_size)  # and the embedding's, before any work
        if self.model is not None and not os.path.isfile(self.model):
            raise WeightsNotFoundError(f"{self.model}: model file does not exist")
        if self.on_dask():
            distributed.check(self.scheduler, self.workers)

    def sift_config(self):
        return SiftConfig.from_dict(dict(self.sift))

    def on_dask(self):
        """Whether the embed and match stages run on Dask."""
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


def match_stage(paths, pairs, config, cache):
    """Verified matches of each pair: a list of uint32 arrays of shape (n_inliers, 2)."""
    from imgsim.sift import score_pairs

    results = score_pairs([(paths[i], paths[j]) for i, j in pairs], config.sift_config(), cache,
                          config.processes, progress=True, keep_matches=True,
                          workers=config.workers, scheduler=config.scheduler)
    return [inliers for _, inliers in results]


def cluster_stage(n, pairs, matches, config):
    """Components of the verified-match graph with at least ``min_cluster_size`` images."""
    edges = [pair for pair, m in zip(pairs, matches) if len(m) >= config.min_inliers]
    return [c for c in connected_components(n, edges) if len(c) >= config.min_cluster_size]


def _pycolmap():
    """Import pycolmap, keeping SIGTERM's handler as it was.

    pycolmap's glog installs a failure handler that prints a stack trace for
    SIGTERM, so a Jupyter kernel stopped the normal way (papermill, nbval)
    would look as if it had crashed.
    """
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    import pycolmap

    try:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    except ValueError:  # not the main thread: leave it
        pass
    return pycolmap


def _write_database(database, image_dir, names, features, pairs, matches, camera_mode):
    pycolmap = _pycolmap()

    from imgsim.images import displayed_to_stored

    modes = {"auto": pycolmap.CameraMode.AUTO, "single": pycolmap.CameraMode.SINGLE,
             "per_image": pycolmap.CameraMode.PER_IMAGE}
    pycolmap.Database.open(database).close()  # creates the empty database
    pycolmap.import_images(database, image_dir, modes[camera_mode], image_names=list(names))
    with pycolmap.Database.open(database) as db:
        ids = {image.name: image.image_id for image in db.read_all_images()}
        for name, feats in zip(names, features):
            # imgsim's keypoints are in the EXIF-oriented photo with pixel centres at integers;
            # COLMAP reads the stored pixel grid and puts pixel centres at +0.5
            stored = displayed_to_stored(feats.keypoints, os.path.join(image_dir, name))
            db.write_keypoints(ids[name], (stored + 0.5).astype(np.float32))
        for (a, b), inliers in zip(pairs, matches):
            inliers = np.ascontiguousarray(inliers, np.uint32).reshape(-1, 2)
            db.write_matches(ids[names[a]], ids[names[b]], inliers)
            geometry = pycolmap.TwoViewGeometry()
            geometry.config = pycolmap.TwoViewGeometryConfiguration.UNCALIBRATED
            geometry.inlier_matches = inliers
            db.write_two_view_geometry(ids[names[a]], ids[names[b]], geometry)


def sfm_stage(folder, image_dir, names, features, pairs, matches, config):
    """Incremental SfM of one component with pycolmap.

    Parameters
    ----------
    folder : str
        Scratch folder of this component (database and models).
    image_dir : str
        Folder the image ``names`` are relative to.
    names : list of str
    features : list of imgsim.sift.Features
    pairs : list of (int, int)
        Indices into ``names``.
    matches : list of uint32 arrays of shape (m, 2)
    config : ReconstructConfig

    Returns
    -------
    list of dict
        One per model, largest first: ``{name: {"R": 3×3 list, "t": 3 list}}``.
    """
    pycolmap = _pycolmap()

    os.makedirs(folder, exist_ok=True)
    database = os.path.join(folder, "database.db")
    if os.path.exists(database):  # a half-written one from a killed run
        os.remove(database)
    _write_database(database, image_dir, names, features, pairs, matches, config.camera_mode)
    options = pycolmap.IncrementalPipelineOptions()
    options.min_model_size = config.min_cluster_size
    options.extract_colors = False
    options.num_threads = config.processes or os.cpu_count() or 1
    options.random_seed = 0
    if config.max_sfm_seconds:
        options.max_runtime_seconds = float(config.max_sfm_seconds)
    models_dir = os.path.join(folder, "models")
    os.makedirs(models_dir, exist_ok=True)
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 1  # COLMAP's per-image INFO lines would drown the progress bars
    try:
        reconstructions = pycolmap.incremental_mapping(database, image_dir, models_dir, options)
    finally:
        pycolmap.logging.minloglevel = level
    models = []
    for rec in reconstructions.values():
        poses = {}
        for image in rec.images.values():
            if image.has_pose:
                pose = image.cam_from_world()
                poses[image.name] = {"R": pose.rotation.matrix().tolist(),
                                     "t": np.asarray(pose.translation).tolist()}
        models.append(poses)
    return sorted(models, key=len, reverse=True)


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


def _stage(file, timings, name, compute, read, write):
    """Read a finished stage's output, or compute and write it, timing the work."""
    if os.path.exists(file):
        return read(file)
    start = time.perf_counter()
    value = compute()
    write(file, value)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return value


def _save_npy(file, array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(file, buffer.getvalue())


def _save_matches(file, matches):
    import io

    buffer = io.BytesIO()
    counts = np.array([len(m) for m in matches], np.int64)
    flat = np.concatenate([np.asarray(m, np.uint32).reshape(-1, 2) for m in matches] or
                          [np.zeros((0, 2), np.uint32)])
    np.savez(buffer, counts=counts, matches=flat)
    atomic_write_bytes(file, buffer.getvalue())


def _load_matches(file):
    with np.load(file) as z:
        counts, flat = z["counts"], z["matches"]
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def reconstruct_dataset(name, paths, work_dir, config, cache, model=None):
    """All stages for one dataset; returns ({image name: (scene, R, t)}, timings, info).

    ``model`` is a callable returning the embedding model, called only when
    the embed stage is not on disk yet (default: :func:`embedding_model`).
    """
    model = model or (lambda: embedding_model(config))
    names = [os.path.basename(p) for p in paths]
    image_dir = os.path.dirname(paths[0])
    if any(os.path.dirname(p) != image_dir for p in paths):
        raise DataLayoutError(f"dataset {name}: images must share one folder")
    folder = os.path.join(work_dir, name)
    os.makedirs(folder, exist_ok=True)
    timings_file = os.path.join(folder, "timings.json")
    timings = read_json(timings_file) if os.path.exists(timings_file) else {}
    files_key = [(n, os.path.getsize(p)) for n, p in zip(names, paths)]
    k_embed = _key(files_key, config.model, config.image_size)
    k_pairs = _key(k_embed, config.shortlist_k, config.all_pairs_up_to, config.shortlist_index)
    k_match = _key(k_pairs, config.sift)
    k_cluster = _key(k_match, config.min_inliers, config.min_cluster_size)
    k_sfm = _key(k_cluster, config.camera_mode, config.max_sfm_seconds)

    def run(stage, key, ext, compute, read, write):
        result = _stage(os.path.join(folder, f"{stage}-{key}.{ext}"), timings, stage, compute,
                        read, write)
        atomic_write_json(timings_file, timings)
        return result

    embeddings = run("embed", k_embed, "npy",
                     lambda: embed_stage(paths, None if config.on_dask() else model(), config,
                                         os.path.join(work_dir, "embeddings")), np.load, _save_npy)
    pairs = run("pairs", k_pairs, "json", lambda: pairs_stage(embeddings, config),
                lambda f: [tuple(p) for p in read_json(f)], atomic_write_json)
    matches = run("match", k_match, "npz", lambda: match_stage(paths, pairs, config, cache),
                  _load_matches, _save_matches)
    components = run("cluster", k_cluster, "json",
                     lambda: cluster_stage(len(paths), pairs, matches, config),
                     read_json, atomic_write_json)

    def sfm_all():
        from tqdm.auto import tqdm

        from imgsim.sift import extract_many

        sift_config = config.sift_config()
        models = []
        for c, members in enumerate(tqdm(components, desc=f"SfM {name}", unit="cluster")):
            index = {m: k for k, m in enumerate(members)}
            sub = [(index[a], index[b]) for a, b in pairs if a in index and b in index]
            sub_matches = [m for (a, b), m in zip(pairs, matches) if a in index and b in index]
            feats = extract_many([paths[m] for m in members], sift_config, cache)
            models += sfm_stage(os.path.join(folder, f"sfm-{k_sfm}", f"component{c}"), image_dir,
                                [names[m] for m in members], feats, sub, sub_matches, config)
        return models

    models = run("sfm", k_sfm, "json", sfm_all, read_json, atomic_write_json)
    placed = assign_scenes(names, models, config.min_cluster_size)
    info = {"images": len(paths), "pairs": len(pairs),
            "edges": int(sum(len(m) >= config.min_inliers for m in matches)),
            "components": [len(c) for c in components], "models": [len(m) for m in models],
            "registered": sum(scene != OUTLIERS for scene, _, _ in placed.values())}
    return placed, timings, info


def reconstruct(data_root, out, work_dir=None, config=None, datasets=None):
    """Cluster and pose every dataset under ``data_root``; write a Kaggle submission.

    Parameters
    ----------
    data_root : str or path
        See :func:`list_datasets`.
    out : str or path
        The submission CSV, columns ``SUBMISSION_COLUMNS``: R row-major, 9
        values joined by ``;``, t 3 values, ``nan`` for unregistered images.
        Written atomically once every dataset is done.
    work_dir : str or path, optional
        Stage outputs and the feature cache; default ``<out>.work`` beside
        ``out``. Reusing it resumes a killed run.
    config : ReconstructConfig, optional
    datasets : list of str, optional
        Only these datasets.

    Returns
    -------
    dict with ``submission`` (the DataFrame), ``timings`` ({dataset: {stage: seconds}}),
    ``info`` ({dataset: counts}) and ``wall_s``; also written to ``<work_dir>/run.json``.
    """
    start = time.perf_counter()
    config = config or ReconstructConfig()
    table = list_datasets(data_root)
    if datasets is not None:
        unknown = sorted(set(datasets) - set(table["dataset"]))
        if unknown:
            raise DataLayoutError(f"{data_root}: no dataset named {', '.join(unknown)}")
        table = table[table["dataset"].isin(datasets)]
    out = os.fspath(out)
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
