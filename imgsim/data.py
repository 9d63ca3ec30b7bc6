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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from imgsim.config import DictConfig
from imgsim.errors import ConfigError, DataLayoutError, ImageDecodeError
from imgsim.images import (
    IMAGE_EXTENSIONS,
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
    check_on_error(on_error)
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
            raise_or_record(ImageDecodeError(problem), on_error, bad)
        keep.append(problem is None)
    table = table[np.array(keep, dtype=bool)]
    counts = table[table["scene"] != OUTLIERS].groupby(["dataset", "scene"]).size()
    small = counts[counts < min_images_per_scene]
    for (dataset, scene), n in small.items():
        raise_or_record(DataLayoutError(
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
