"""Photos on disk → one table; decoding; scene splits; bad-file errors.

Two layouts are read into the same :class:`pandas.DataFrame` with columns
``path, image, dataset, scene, rotation_matrix, translation_vector``:

* the Image Matching Challenge 2025 layout: ``ROOT/train_labels.csv`` with
  columns ``dataset, scene, image, rotation_matrix, translation_vector`` and the
  photos in ``ROOT/train/<dataset>/<image>``;
* a plain folder layout ``ROOT/<scene>/<image>`` (dataset = the root's name).

Scene ``outliers`` is the IMC label of photos that belong to no scene: it is
never trained on and serves as distractors in evaluation.

Every problem with the input raises an :class:`~imgsim.errors.ImgsimError`
naming the file and the problem, or, with ``on_error="skip"``, drops the row and
records it in a :class:`BadFiles` list that the caller logs.
"""

import hashlib
import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from imgsim.config import DictConfig
from imgsim.errors import ConfigError, DataLayoutError, ImageDecodeError
from imgsim.fileio import atomic_write_text

LABEL_COLUMNS = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")
REQUIRED_COLUMNS = ("dataset", "scene", "image")
TABLE_COLUMNS = ("path", "image", "dataset", "scene", "rotation_matrix", "translation_vector")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
OUTLIERS = "outliers"
ON_ERROR = ("raise", "skip")
MIN_SIDE = 32
# The embedded sample (12 scenes of real photos) in a clone or editable install.
SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")

# Pillow refuses images over ~179 Mpx by default only with a warning; make it an error.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


@dataclass
class BadFiles:
    """Rows dropped with ``on_error="skip"``: ``(file, problem)`` pairs."""

    items: list = field(default_factory=list)

    def add(self, error):
        self.items.append(str(error))

    def __len__(self):
        return len(self.items)

    def summary(self):
        """One line per dropped file, ready for a run's log."""
        return "\n".join(self.items)


def _check_on_error(on_error):
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _fail(error, on_error, bad):
    if on_error == "raise":
        raise error
    bad.add(error)


# --------------------------------------------------------------------------- tables


def read_imc_labels(root, labels_csv="train_labels.csv", image_dir="train"):
    """Read the IMC 2025 layout into a table (no files are opened).

    Parameters
    ----------
    root : str or path
        Folder holding ``labels_csv`` and ``image_dir/<dataset>/<image>``.
    labels_csv, image_dir : str
        Names inside ``root``.

    Returns
    -------
    pandas.DataFrame with columns ``TABLE_COLUMNS``; ``path`` is
    ``root/image_dir/dataset/image`` and ``image`` is that path relative to root.
    """
    csv_path = os.path.join(root, labels_csv)
    try:
        labels = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataLayoutError(f"{csv_path}: empty file, expected a header with columns "
                              f"{', '.join(REQUIRED_COLUMNS)}") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataLayoutError(f"{csv_path}: not a CSV file ({type(exc).__name__})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in labels.columns]
    if missing:
        raise DataLayoutError(f"{csv_path}: missing columns: {', '.join(missing)}")
    if labels.empty:
        raise DataLayoutError(f"{csv_path}: no rows")
    for column in REQUIRED_COLUMNS:
        empty = labels.index[labels[column].str.strip() == ""]
        if len(empty):
            raise DataLayoutError(
                f"{csv_path}: row {empty[0] + 2}: empty value in column '{column}'")
    duplicated = labels.duplicated(["dataset", "image"])
    if duplicated.any():
        row = labels[duplicated].iloc[0]
        raise DataLayoutError(
            f"{csv_path}: image '{row['dataset']}/{row['image']}' is listed more than once")
    for column in ("rotation_matrix", "translation_vector"):
        if column not in labels.columns:
            labels[column] = "nan"
    rel = [os.path.join(image_dir, d, i) for d, i in zip(labels["dataset"], labels["image"])]
    table = pd.DataFrame({
        "path": [os.path.join(root, r) for r in rel],
        "image": rel,
        "dataset": labels["dataset"].values,
        "scene": labels["scene"].values,
        "rotation_matrix": labels["rotation_matrix"].values,
        "translation_vector": labels["translation_vector"].values,
    })
    table.attrs["source"] = csv_path
    return table


def read_folders(root):
    """Read a plain ``root/<scene>/<image>`` layout into a table.

    Files whose extension is not in ``IMAGE_EXTENSIONS`` are ignored; hidden
    files and folders too. ``dataset`` is the name of ``root``.
    """
    root_name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    rows = []
    for scene in sorted(os.listdir(root)):
        folder = os.path.join(root, scene)
        if scene.startswith(".") or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rows.append((os.path.join(folder, name), os.path.join(scene, name), root_name, scene))
    if not rows:
        raise DataLayoutError(
            f"{root}: no train_labels.csv and no <scene>/<image> folders with images")
    table = pd.DataFrame(rows, columns=["path", "image", "dataset", "scene"])
    table["rotation_matrix"] = "nan"
    table["translation_vector"] = "nan"
    table.attrs["source"] = str(root)
    return table


def load_table(root, on_error="raise", min_images_per_scene=2, bad=None):
    """Read a data folder in either layout and check that its files exist.

    Parameters
    ----------
    root : str or path
        An IMC 2025 folder (``train_labels.csv`` present) or a
        ``root/<scene>/<image>`` folder.
    on_error : {"raise", "skip"}
        What to do with a listed file that is missing or empty (0 bytes), or a
        scene with fewer than ``min_images_per_scene`` images (``outliers`` is
        exempt): raise :class:`~imgsim.errors.DataLayoutError` /
        :class:`~imgsim.errors.ImageDecodeError`, or drop the rows and record
        them in ``bad``.
    min_images_per_scene : int
        A scene needs two images to give a positive pair.
    bad : BadFiles, optional
        Collects what was skipped.

    Returns
    -------
    pandas.DataFrame with columns ``TABLE_COLUMNS``, sorted by dataset, scene, image.
    """
    _check_on_error(on_error)
    bad = BadFiles() if bad is None else bad
    if not os.path.isdir(root):
        raise DataLayoutError(f"{root}: no such directory")
    if os.path.isfile(os.path.join(root, "train_labels.csv")):
        table = read_imc_labels(root)
    else:
        table = read_folders(root)
    source = table.attrs["source"]
    keep = []
    for path in table["path"]:
        problem = None
        if not os.path.exists(path):
            problem = f"{path}: listed in {os.path.basename(source)} but does not exist"
        elif not os.path.isfile(path):
            problem = f"{path}: not a file"
        elif os.path.getsize(path) == 0:
            problem = f"{path}: empty file (0 bytes)"
        if problem:
            _fail(ImageDecodeError(problem), on_error, bad)
        keep.append(problem is None)
    table = table[np.array(keep, dtype=bool)]
    counts = table[table["scene"] != OUTLIERS].groupby(["dataset", "scene"]).size()
    small = counts[counts < min_images_per_scene]
    for (dataset, scene), n in small.items():
        _fail(DataLayoutError(
            f"{source}: scene '{scene}' of dataset '{dataset}' has {n} image"
            f"{'s' if n != 1 else ''}, at least {min_images_per_scene} needed"), on_error, bad)
        table = table[~((table["dataset"] == dataset) & (table["scene"] == scene))]
    if table.empty:
        raise DataLayoutError(f"{source}: no usable images")
    table = table.sort_values(["dataset", "scene", "image"]).reset_index(drop=True)
    table.attrs["source"] = source
    return table


# --------------------------------------------------------------------------- splits


@dataclass
class Split(DictConfig):
    """Scene names of each part of a split (``dataset/scene`` keys)."""

    train: list
    val: list
    test: list


def scene_keys(table):
    """``dataset/scene`` key of every row: scene names are unique only within a dataset."""
    return (table["dataset"] + "/" + table["scene"]).to_numpy()


def split_scenes(table, val_fraction=0.15, test_fraction=0.25, seed=0):
    """Split by scene, never by image: held-out scenes are never trained on.

    ``outliers`` rows are left out of every part (use :func:`select` with
    ``outliers=True`` to add them as distractors). Scenes are shuffled with
    ``seed`` and cut by the two fractions, each held-out part getting at least
    one scene.

    Returns
    -------
    Split
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
            "and sum to less than 1")
    keys = sorted(set(scene_keys(table[table["scene"] != OUTLIERS])))
    if len(keys) < 3:
        raise ConfigError(
            f"{table.attrs.get('source', 'data')}: {len(keys)} scene(s), at least 3 needed "
            "for a train/val/test split by scene")
    order = np.random.default_rng(seed).permutation(len(keys))
    keys = [keys[i] for i in order]
    n_val = max(1, int(round(val_fraction * len(keys))))
    n_test = max(1, int(round(test_fraction * len(keys))))
    n_val, n_test = min(n_val, len(keys) - 2), min(n_test, len(keys) - 1 - min(n_val, len(keys) - 2))
    return Split(train=sorted(keys[n_val + n_test:]), val=sorted(keys[:n_val]),
                 test=sorted(keys[n_val:n_val + n_test]))


def select(table, scenes, outliers=False):
    """Rows of the given ``dataset/scene`` keys, plus ``outliers`` rows if asked."""
    keys = scene_keys(table)
    mask = np.isin(keys, list(scenes))
    if outliers:
        mask |= (table["scene"] == OUTLIERS).to_numpy()
    return table[mask].reset_index(drop=True)


def label_ids(table):
    """Integer label per row for metrics and losses.

    Rows of one ``dataset/scene`` share an id; every ``outliers`` row gets an
    id of its own, so outliers are never positives of each other.
    """
    keys = scene_keys(table).astype(object)
    outlier = (table["scene"] == OUTLIERS).to_numpy()
    keys[outlier] = [f"{OUTLIERS}#{i}" for i in np.flatnonzero(outlier)]
    _, ids = np.unique(keys, return_inverse=True)
    return ids.astype(np.int64)


# --------------------------------------------------------------------------- decoding


def _to_rgb8(img):
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) → 8-bit RGB array."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if mode == "F" and values.max(initial=0) <= 1.0 else 65535.0
        gray = np.clip(np.round(values / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_image(path, size=None, min_side=MIN_SIDE):
    """Decode one photo to an 8-bit RGB array, EXIF orientation applied.

    Parameters
    ----------
    path : str or path
    size : int or (int, int), optional
        Resize to ``size`` × ``size`` (or (height, width)) pixels, whole image,
        no crop (Pillow's bilinear filter with antialiasing). A JPEG is then
        decoded at a reduced DCT scale of at least twice ``size`` (Pillow's
        draft mode); measured on 30 photos at 224 px, embeddings move by 0.016
        on average (L2 between unit vectors) against a full decode.
    min_side : int
        Smaller images are rejected.

    Returns
    -------
    numpy.ndarray of shape (height, width, 3), dtype uint8

    Raises
    ------
    ImageDecodeError
        ``<path>: <problem>`` for a missing, empty, truncated, corrupt, tiny or
        non-image file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageDecodeError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise ImageDecodeError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise ImageDecodeError(f"{path}: empty file (0 bytes)")
    return _decode(path, path, size, min_side)


def decode_image_bytes(data, name, size=None, min_side=MIN_SIDE):
    """:func:`load_image` for bytes in memory (an upload); ``name`` only labels errors."""
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, size, min_side)


def _decode(source, label, size, min_side):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if size is not None and img.format == "JPEG":
                    # Decode a JPEG at a reduced DCT scale when the target is small, never
                    # below twice the target on either side (the resize then still
                    # antialiases): 1.6x faster at 224 px from 1536x1024 photos.
                    side = 2 * max(max(size) if not np.isscalar(size) else size, min_side)
                    img.draft("RGB", (side, side))
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb8(img)
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(f"{label}: image too large (over {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        problem = "truncated image data" if "truncat" in str(exc).lower() else "corrupt image data"
        raise ImageDecodeError(f"{label}: {problem}") from None
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        raise ImageDecodeError(f"{label}: image is {w}x{h} pixels, smaller than {min_side} px")
    if size is not None:
        rgb = resize(rgb, size)
    return rgb


def resize(rgb, size):
    """Resize an (h, w, 3) uint8 array to ``size`` (int or (height, width))."""
    height, width = (size, size) if np.isscalar(size) else size
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR, reducing_gap=None))


def load_images(paths, size, on_error="raise", bad=None, workers=None, progress=False):
    """Decode and resize many photos in parallel threads.

    Returns
    -------
    images : numpy.ndarray of shape (n_ok, size, size, 3), dtype uint8
    ok : numpy.ndarray of shape (len(paths),), dtype bool
        Which paths decoded; with ``on_error="raise"`` all of them.
    """
    _check_on_error(on_error)
    bad = BadFiles() if bad is None else bad
    paths = list(paths)

    def one(path):
        try:
            return load_image(path, size), None
        except ImageDecodeError as exc:
            return None, exc

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(one, paths)
        if progress:
            from tqdm.auto import tqdm
            results = tqdm(results, total=len(paths), desc="decoding", unit="img")
        results = list(results)
    ok = np.array([error is None for _, error in results], dtype=bool)
    for _, error in results:
        if error is not None:
            _fail(error, on_error, bad)
    height, width = (size, size) if np.isscalar(size) else size
    arrays = [image for image, _ in results if image is not None]
    images = np.stack(arrays) if arrays else np.zeros((0, height, width, 3), np.uint8)
    return images, ok


def file_digest(path, chunk=1 << 20):
    """SHA-256 hex digest of a file's bytes (cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- pair sets

PROTOCOLS = ("easy", "hard")
PAIR_COLUMNS = ("path_a", "path_b", "dataset_a", "dataset_b", "scene_a", "scene_b", "label")


def stand_in_outliers(table, scenes, seed=0):
    """Distractor rows for an evaluation over ``scenes``.

    The table's ``outliers`` rows when it has any; otherwise one image
    (seeded) of every scene outside ``scenes``, relabelled ``outliers`` — a
    photo of a place that none of the evaluated photos shows.
    """
    outliers = table[table["scene"] == OUTLIERS]
    if len(outliers):
        return outliers.reset_index(drop=True)
    rest = table[~np.isin(scene_keys(table), list(scenes))]
    if rest.empty:
        return rest.reset_index(drop=True)
    picked = rest.groupby(["dataset", "scene"], sort=True).sample(n=1, random_state=seed)
    return picked.assign(scene=OUTLIERS).reset_index(drop=True)


def _pairs_frame(rows_a, rows_b, label):
    return pd.DataFrame({
        "path_a": rows_a["path"].to_numpy(), "path_b": rows_b["path"].to_numpy(),
        "dataset_a": rows_a["dataset"].to_numpy(), "dataset_b": rows_b["dataset"].to_numpy(),
        "scene_a": rows_a["scene"].to_numpy(), "scene_b": rows_b["scene"].to_numpy(),
        "label": np.full(len(rows_a), label, np.int64)})


def make_pairs(table, scenes, protocol="hard", max_pairs_per_dataset=60, seed=0, distractors=None):
    """Balanced, seeded positive and negative image pairs over ``scenes``.

    For every dataset among ``scenes``: ``n`` positive pairs (two images of
    one scene) and ``n`` negative pairs, ``n`` the smallest of
    ``max_pairs_per_dataset`` and the numbers of candidates of each kind, so
    every dataset is balanced. Negatives are drawn from

    * ``protocol="hard"`` (IMC-like): two images of different scenes *of the
      same dataset*, which look alike, or an image and a distractor of the
      same dataset; where the dataset has too few of those, a distractor of
      another dataset;
    * ``protocol="easy"``: an image and an image of any other scene or any
      distractor.

    Distractors (``outliers``) are never positives of anything; by default
    :func:`stand_in_outliers`.

    Returns
    -------
    pandas.DataFrame with columns ``PAIR_COLUMNS``; ``label`` 1 = same scene.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    rng = np.random.default_rng(seed)
    rows = select(table, scenes)
    if rows.empty:
        raise ConfigError("no images in the scenes to pair")
    distractors = stand_in_outliers(table, scenes, seed) if distractors is None else distractors
    keys = scene_keys(rows)
    frames = []
    for dataset in sorted(rows["dataset"].unique()):
        mine = np.flatnonzero(rows["dataset"].to_numpy() == dataset)
        a, b = np.triu_indices(len(mine), k=1)
        a, b = mine[a], mine[b]
        same = keys[a] == keys[b]
        if protocol == "hard":
            candidates = [(rows.iloc[a[~same]], rows.iloc[b[~same]])]
            own = distractors[distractors["dataset"] == dataset]
            other = distractors[distractors["dataset"] != dataset]
            pools = [own, other]
        else:
            others = np.flatnonzero(rows["dataset"].to_numpy() != dataset)
            ia, ib = np.meshgrid(mine, others, indexing="ij")
            candidates = [(rows.iloc[a[~same]], rows.iloc[b[~same]]),
                          (rows.iloc[ia.ravel()], rows.iloc[ib.ravel()])]
            pools = [distractors]
        for pool in pools:
            if len(pool):
                ia, ib = np.meshgrid(mine, np.arange(len(pool)), indexing="ij")
                candidates.append((rows.iloc[ia.ravel()], pool.iloc[ib.ravel()]))
        n = min(max_pairs_per_dataset, int(same.sum()),
                sum(len(c[0]) for c in candidates))
        pos = rng.permutation(np.flatnonzero(same))[:n]
        frames.append(_pairs_frame(rows.iloc[a[pos]], rows.iloc[b[pos]], 1))
        frames.append(_sample_negatives(candidates, n, rng, protocol))
    pairs = pd.concat(frames, ignore_index=True)
    return pairs.reset_index(drop=True)


def _sample_negatives(candidates, n, rng, protocol):
    """``n`` negative pairs: for "hard", earlier candidate pools first; for "easy", uniformly."""
    frames = [_pairs_frame(a, b, 0) for a, b in candidates if len(a)]
    if not frames or n == 0:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    if protocol == "easy":
        pool = pd.concat(frames, ignore_index=True)
        return pool.iloc[rng.permutation(len(pool))[:n]]
    taken = []
    for frame in frames:
        need = n - sum(len(t) for t in taken)
        if need <= 0:
            break
        taken.append(frame.iloc[rng.permutation(len(frame))[:need]])
    return pd.concat(taken, ignore_index=True)


# --------------------------------------------------------------------------- summaries


def scene_counts(table):
    """Images per scene: a table with columns dataset, scene, images (largest first)."""
    counts = table.groupby(["dataset", "scene"]).size().rename("images").reset_index()
    return counts.sort_values(["images", "dataset", "scene"], ascending=[False, True, True],
                              ignore_index=True)


def check_images(table, workers=None, progress=False):
    """Decode every image of ``table`` once; returns the :class:`BadFiles` found."""
    bad = BadFiles()
    load_images(table["path"], 32, on_error="skip", bad=bad, workers=workers, progress=progress)
    return bad


def sample_images(table, per_scene=4, size=128, seed=0):
    """Up to ``per_scene`` decoded thumbnails of each scene: ``[(scene key, [arrays]), ...]``."""
    groups = []
    for (dataset, scene), rows in table.groupby(["dataset", "scene"], sort=True):
        rows = rows.sample(n=min(per_scene, len(rows)), random_state=seed)
        groups.append((f"{dataset}/{scene}", [load_image(p, size) for p in rows["path"]]))
    return groups


def _posed(table):
    return np.array([str(r).strip().lower() not in ("", "nan") and str(t).strip().lower() not in ("", "nan")
                     for r, t in zip(table["rotation_matrix"], table["translation_vector"])], bool)


def make_imc_benchmark(table, out_root, datasets, seed=0, reserve=()):
    """Mix posed scenes and outlier photos into IMC 2025-style test datasets.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`load_table` on a source with ground-truth poses.
    out_root : str or path
        Receives ``train_labels.csv`` and ``train/<dataset>/<image>`` (files
        hard-linked when possible, else copied); must not hold a
        ``train_labels.csv`` already.
    datasets : dict
        ``{name: {"scenes": ["<dataset>/<scene>", ...], "outliers": int,
        "max_per_scene": int}}``. Every scene contributes its posed images
        (at most ``max_per_scene``, 0 for all, seeded sample); ``outliers``
        photos, one per scene, come from scenes that no benchmark dataset uses
        and are labelled ``outliers`` with ``nan`` poses.
    seed : int

    Returns
    -------
    pandas.DataFrame: the written labels (``dataset, scene, image,
    rotation_matrix, translation_vector``).
    """
    import shutil

    out_root = os.fspath(out_root)
    labels_file = os.path.join(out_root, "train_labels.csv")
    if os.path.exists(labels_file):
        raise DataLayoutError(f"{labels_file}: already exists; choose an empty folder")
    keys = scene_keys(table)
    used = {s for spec in datasets.values() for s in spec.get("scenes", [])}
    unknown = sorted((used | set(reserve)) - set(keys))
    if unknown:
        raise ConfigError(f"unknown scenes (expected '<dataset>/<scene>'): {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    posed = _posed(table)
    spare = table[~np.isin(keys, sorted(used | set(reserve))) & (table["scene"] != OUTLIERS)]
    spare_scenes = sorted(set(scene_keys(spare)))
    rng.shuffle(spare_scenes)
    rows = []
    for name, spec in sorted(datasets.items()):
        extra = set(spec) - {"scenes", "outliers", "max_per_scene"}
        if extra or len(spec.get("scenes", [])) < 1:
            raise ConfigError(f"benchmark dataset {name}: needs 'scenes' (and optionally "
                              f"'outliers', 'max_per_scene'); unknown keys: {sorted(extra)}")
        for key in spec["scenes"]:
            members = table[(keys == key) & posed]
            cap = int(spec.get("max_per_scene", 0))
            if cap and len(members) > cap:
                members = members.iloc[np.sort(rng.choice(len(members), cap, replace=False))]
            if len(members) < 2:
                raise ConfigError(f"scene {key} has {len(members)} posed images; need 2")
            rows += [(name, row.scene, row.path, row.rotation_matrix, row.translation_vector)
                     for row in members.itertuples()]
        n_out = int(spec.get("outliers", 0))
        if n_out > len(spare_scenes):
            raise ConfigError(f"benchmark dataset {name}: {n_out} outliers asked, only "
                              f"{len(spare_scenes)} unused scenes left")
        for key in [spare_scenes.pop() for _ in range(n_out)]:
            members = spare[scene_keys(spare) == key]
            row = members.iloc[int(rng.integers(len(members)))]
            rows.append((name, OUTLIERS, row["path"], "nan", "nan"))
    labels = []
    for name, scene, path, rot, trans in rows:
        image = os.path.basename(path)
        target = os.path.join(out_root, "train", name, image)
        if os.path.exists(target):
            raise DataLayoutError(f"{target}: two source images share this name")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        labels.append((name, scene, image, rot, trans))
    frame = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    atomic_write_text(labels_file, frame.to_csv(index=False))
    return frame


# EXIF orientation → (raw U, raw V) from displayed continuous coordinates (u, v), raw size (W, H).
# Each is the inverse of the transpose that ImageOps.exif_transpose applies for that orientation.
_UNDO_ORIENTATION = {
    1: lambda u, v, W, H: (u, v),
    2: lambda u, v, W, H: (W - u, v),          # mirrored left-right
    3: lambda u, v, W, H: (W - u, H - v),      # rotated 180°
    4: lambda u, v, W, H: (u, H - v),          # mirrored top-bottom
    5: lambda u, v, W, H: (v, u),              # transposed
    6: lambda u, v, W, H: (v, H - u),          # displayed = raw rotated 90° clockwise
    7: lambda u, v, W, H: (W - v, H - u),      # transversed
    8: lambda u, v, W, H: (W - v, u),          # displayed = raw rotated 90° counter-clockwise
}


def displayed_to_stored(points, path):
    """Map pixel coordinates of the EXIF-oriented photo to its stored pixel grid.

    imgsim decodes photos with their EXIF orientation applied (what a viewer
    shows); COLMAP and the IMC ground truth use the pixel grid as stored in
    the file. Pixel centres are at integers on both sides.

    Parameters
    ----------
    points : array-like of shape (n, 2)
        x, y in the displayed (oriented) image.
    path : str or path
        The image file (only its header is read).

    Returns
    -------
    numpy.ndarray of shape (n, 2), float64: x, y in the stored image.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = int(img.getexif().get(0x0112, 1))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ImageDecodeError(f"{path}: cannot read the image header ({exc})") from None
    undo = _UNDO_ORIENTATION.get(orientation, _UNDO_ORIENTATION[1])
    u, v = undo(points[:, 0] + 0.5, points[:, 1] + 0.5, width, height)
    return np.stack([u, v], axis=1) - 0.5
