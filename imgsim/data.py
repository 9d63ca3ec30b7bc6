"""Photos on disk → one table; label hygiene; scene splits; bad-file errors.

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
records it in a :class:`~imgsim.images.BadFiles` list that the caller logs.
Decoding lives in :mod:`imgsim.images`, pair sets in :mod:`imgsim.pairs`.
"""

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgsim.config import DictConfig
from imgsim.errors import ConfigError, DataLayoutError, DataWarning, ImageDecodeError
from imgsim.images import (
    IMAGE_EXTENSIONS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    BadFiles,
    check_on_error,
    load_image,
    load_images,
    raise_or_record,
)

LABEL_COLUMNS = ("dataset", "scene", "image", "rotation_matrix", "translation_vector")
REQUIRED_COLUMNS = ("dataset", "scene", "image")
TABLE_COLUMNS = ("path", "image", "dataset", "scene", "rotation_matrix", "translation_vector")
OUTLIERS = "outliers"
# The embedded sample (12 scenes of real photos) in a clone or editable install.
SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")


# --------------------------------------------------------------------------- label hygiene


def _rows(index, limit=5):
    """'row 3' or 'rows 3, 7, 9 (and 4 more)' for 0-based CSV data row positions (header = row 1)."""
    shown = ", ".join(str(i + 2) for i in index[:limit])
    more = f" (and {len(index) - limit} more)" if len(index) > limit else ""
    return f"row{'s' if len(index) > 1 else ''} {shown}{more}"


def strip_labels(values, where, column):
    """Labels with surrounding whitespace stripped, and a :class:`DataWarning` saying which.

    ``castle_p30`` and ``castle_p30 `` are one scene: a stray space (a
    spreadsheet's, a shell's) must not split a scene in two, which would turn
    positives into negatives.

    Parameters
    ----------
    values : sequence of str
    where : str
        The file or folder the labels come from (for the message).
    column : str
        The column, for the message.

    Returns
    -------
    list of str
    """
    values = [str(v) for v in values]
    stripped = [v.strip() for v in values]
    changed = [i for i, (a, b) in enumerate(zip(values, stripped)) if a != b]
    if changed:
        examples = ", ".join(repr(values[i]) for i in changed[:3])
        warnings.warn(f"{where}: stripped surrounding whitespace from {len(changed)} {column} "
                      f"label(s) ({examples}{', ...' if len(changed) > 3 else ''})",
                      DataWarning, stacklevel=3)
    return stripped


def _check_names(labels, csv_path):
    """Refuse, by row, dataset and image names that are not plain relative names.

    They name a folder and a file: surrounding whitespace, an absolute path or
    a ``..`` part would read a file other than the one meant (or one outside
    the data root), so imgsim does not guess.
    """
    for column in ("dataset", "image"):
        values = labels[column]
        spaced = list(labels.index[values != values.str.strip()])
        if spaced:
            raise DataLayoutError(f"{csv_path}: {_rows(spaced)}: {column} name "
                                  f"{values[spaced[0]]!r} has surrounding whitespace")
        escaping = [i for i, v in zip(labels.index, values)
                    if os.path.isabs(v) or ".." in v.replace("\\", "/").split("/")]
        if escaping:
            raise DataLayoutError(f"{csv_path}: {_rows(escaping)}: {column} {values[escaping[0]]!r} "
                                  "must be a relative name without '..'")


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
    if not os.path.isfile(csv_path):
        raise DataLayoutError(f"{csv_path}: {'not a file' if os.path.exists(csv_path) else 'no such file'}")
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        labels = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
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
                f"{csv_path}: {_rows(list(empty))}: empty value in column '{column}'")
    _check_names(labels, csv_path)
    labels["scene"] = strip_labels(labels["scene"], csv_path, "scene")
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
    files and folders too. Photos in formats imgsim cannot decode (HEIC, GIF,
    RAW, ... : ``UNSUPPORTED_IMAGE_EXTENSIONS``) are listed in
    ``table.attrs["unsupported"]`` for :func:`load_table` to count. ``dataset``
    is the name of ``root``; scene names are folder names with surrounding
    whitespace stripped (:func:`strip_labels`).
    """
    root_name = os.path.basename(os.path.normpath(os.path.abspath(root)))
    rows, unsupported = [], []
    for scene in sorted(os.listdir(root)):
        folder = os.path.join(root, scene)
        if scene.startswith(".") or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            if name.lower().endswith(UNSUPPORTED_IMAGE_EXTENSIONS):
                unsupported.append(os.path.join(folder, name))
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                rows.append((os.path.join(folder, name), os.path.join(scene, name), root_name, scene))
    if not rows:
        found = (f" (only {len(unsupported)} in formats imgsim does not read, e.g. "
                 f"{unsupported[0]})") if unsupported else ""
        raise DataLayoutError(
            f"{root}: no train_labels.csv and no <scene>/<image> folders with images{found}")
    table = pd.DataFrame(rows, columns=["path", "image", "dataset", "scene"])
    table["scene"] = strip_labels(table["scene"], root, "scene")
    table["rotation_matrix"] = "nan"
    table["translation_vector"] = "nan"
    table.attrs["source"] = str(root)
    table.attrs["unsupported"] = unsupported
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
    check_on_error(on_error)
    bad = BadFiles() if bad is None else bad
    if not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"data root must be a folder path, got {root!r}")
    if not os.path.isdir(root):
        raise DataLayoutError(f"{root}: {'not a directory' if os.path.exists(root) else 'no such directory'}")
    if os.path.exists(os.path.join(root, "train_labels.csv")):
        table = read_imc_labels(root)
    else:
        table = read_folders(root)
    source = table.attrs["source"]
    for path in table.attrs.get("unsupported", []):
        extension = os.path.splitext(path)[1].lower()
        raise_or_record(ImageDecodeError(f"{path}: {extension} is not an image format imgsim reads "
                                         "(convert it to JPEG or PNG)"), on_error, bad)
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
            raise_or_record(ImageDecodeError(problem), on_error, bad)
        keep.append(problem is None)
    table = table[np.array(keep, dtype=bool)]
    counts = table[table["scene"] != OUTLIERS].groupby(["dataset", "scene"]).size()
    small = counts[counts < min_images_per_scene]
    for (dataset, scene), n in small.items():
        raise_or_record(DataLayoutError(
            f"{source}: scene {scene!r} of dataset {dataset!r} has {n} usable image"
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

    def __post_init__(self):
        for part in ("train", "val", "test"):
            keys = getattr(self, part)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ConfigError(f"split {part}: expected a list of 'dataset/scene' names, got {keys!r}")


def check_fractions(val_fraction, test_fraction):
    """Raise :class:`ConfigError` unless both held-out fractions are in (0, 1) with a sum below 1."""
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1
               for f in (val_fraction, test_fraction)) or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction={val_fraction!r} and test_fraction={test_fraction!r} must be in (0, 1) "
            "and sum to less than 1")


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
    check_fractions(val_fraction, test_fraction)
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
