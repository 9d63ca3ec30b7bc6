"""IMC-style benchmark folders: posed scenes and outlier photos mixed into test datasets.

``data/imc/benchmarks.yaml`` names each benchmark's datasets (which scenes,
how many outliers); :func:`build_benchmark` writes one as an IMC 2025 folder
(``train_labels.csv`` + ``train/<dataset>/<image>``) for
:func:`imgsim.reconstruct.reconstruct` and :func:`imgsim.imc.score`.
"""

import io
import os
import shutil

import numpy as np
import pandas as pd

from imgsim.data import LABEL_COLUMNS, OUTLIERS, SAMPLE_DATA, load_table, scene_keys
from imgsim.errors import ConfigError, DataLayoutError
from imgsim.fileio import atomic_write_bytes, atomic_write_text
from imgsim.reconstruct import _join


BENCHMARKS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "data", "imc", "benchmarks.yaml")


BENCHMARK_KEYS = ("source", "seed", "reserve", "datasets", "posed")
DATASET_KEYS = ("scenes", "outliers", "max_per_scene", "backdrop")
BACKDROP_KEYS = ("image", "dark_below", "band")
OUTLIER_KEYS = ("from", "photos", "per_scene")
SOURCES_FILE = "benchmark_sources.csv"  # dataset, image, source (<dataset>/<scene> it came from)


def build_benchmark(name, out_root, source_root=None, specs_file=BENCHMARKS_FILE):
    """Build the IMC-style benchmark ``name`` of ``specs_file`` into ``out_root``.

    Parameters
    ----------
    name : str
        A key of ``specs_file`` (``data/imc/benchmarks.yaml``: ``small`` from
        the embedded sample; ``full``, ``hard`` and ``unposed`` from the full
        photo collection).
    out_root : str or path
        Receives ``train_labels.csv`` (the ground truth, scene ``outliers``
        for outlier photos), ``benchmark_sources.csv`` (the source scene of
        every image) and ``train/<dataset>/<image>``. If it already holds a
        ``train_labels.csv`` the benchmark is taken as built.
    source_root : str or path, optional
        The posed photo collection (IMC layout); required for specs whose
        ``source`` is ``data``; ``sample`` specs use the embedded sample.

    Returns
    -------
    str: the ground-truth CSV path.
    """
    import yaml

    with open(specs_file) as f:
        specs = yaml.safe_load(f)
    if name not in specs:
        raise ConfigError(f"{specs_file}: no benchmark {name!r}; have {', '.join(specs)}")
    spec = specs[name]
    extra = sorted(set(spec) - set(BENCHMARK_KEYS))
    if extra or spec.get("source") not in ("sample", "data"):
        raise ConfigError(f"{specs_file}: benchmark {name!r} needs 'source' (sample or data) and "
                          f"'datasets' (optional: {', '.join(BENCHMARK_KEYS[2:])}); "
                          f"unknown keys: {extra}")
    labels = os.path.join(os.fspath(out_root), "train_labels.csv")
    if os.path.exists(labels):
        return labels
    if spec["source"] == "sample":
        source_root = SAMPLE_DATA
    elif source_root is None:
        raise ConfigError(f"benchmark {name!r} is built from the full photo collection: "
                          "pass source_root (for example $IMGSIM_DATA)")
    make_imc_benchmark(load_table(source_root), out_root, spec["datasets"], seed=spec.get("seed", 0),
                       reserve=spec.get("reserve", ()), posed=spec.get("posed", True))
    return labels


def _no_pose(text):
    """True for an empty cell, a bare ``nan`` or ``nan;nan;...``."""
    return all(token.strip().lower() in ("", "nan") for token in str(text).split(";"))


def _posed(table):
    return np.array([not _no_pose(r) and not _no_pose(t)
                     for r, t in zip(table["rotation_matrix"], table["translation_vector"])], bool)


def _check_dataset_spec(name, spec, images):
    extra = sorted(set(spec) - set(DATASET_KEYS)) if isinstance(spec, dict) else None
    if extra is None or extra or len(spec.get("scenes") or []) < 1:
        raise ConfigError(f"benchmark dataset {name}: needs 'scenes' (and optionally "
                          f"'outliers', 'max_per_scene'); unknown keys: {extra}")
    outliers = spec.get("outliers", 0)
    if isinstance(outliers, bool) or not isinstance(outliers, (int, list)):
        raise ConfigError(f"benchmark dataset {name}: 'outliers' must be a number of scenes "
                          f"(one photo each) or a list of {{{', '.join(OUTLIER_KEYS)}}}, "
                          f"got {outliers!r}")
    backdrop = spec.get("backdrop")
    if backdrop is not None:
        bad = sorted(set(backdrop) - set(BACKDROP_KEYS)) if isinstance(backdrop, dict) else None
        if bad is None or bad or backdrop.get("image") not in images:
            raise ConfigError(f"benchmark dataset {name}: 'backdrop' needs 'image' (a "
                              f"'<dataset>/<image file>' of the source) and optionally "
                              f"'dark_below', 'band'; got {backdrop!r}")
        if not 0 <= backdrop.get("dark_below", 0) <= 255 or not 0 <= backdrop.get("band", 0) < 0.5:
            raise ConfigError(f"benchmark dataset {name}: backdrop 'dark_below' must be in "
                              f"[0, 255] and 'band' in [0, 0.5), got {backdrop!r}")
    for entry in outliers if isinstance(outliers, list) else ():
        bad = sorted(set(entry) - set(OUTLIER_KEYS)) if isinstance(entry, dict) else None
        if bad is None or bad or "from" not in entry or "photos" not in entry:
            raise ConfigError(f"benchmark dataset {name}: each outlier source needs 'from' and "
                              f"'photos' (optional 'per_scene'); got {entry!r}")
        for key in ("photos", "per_scene"):
            value = entry.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"benchmark dataset {name}: outlier '{key}' must be an "
                                  f"integer >= 1, got {value!r}")


def _draw_outliers(name, entry, spare, taken, rng):
    """Outlier photos of one ``{from, photos, per_scene}`` source: rows of ``spare``.

    Scenes of the named datasets (``<dataset>``) or scenes (``<dataset>/<scene>``)
    are visited in a seeded order, each giving at most ``per_scene`` photos
    not ``taken`` yet, until ``photos`` are drawn.
    """
    names = [entry["from"]] if isinstance(entry["from"], str) else list(entry["from"])
    keys = scene_keys(spare)
    datasets = spare["dataset"].to_numpy()
    pool = np.isin(keys, names) | np.isin(datasets, names)
    known = set(keys) | set(datasets)
    unknown = sorted(set(names) - known)
    if unknown:
        raise ConfigError(f"benchmark dataset {name}: no spare outlier source "
                          f"{', '.join(unknown)} (a '<dataset>' or '<dataset>/<scene>' not used "
                          "by any benchmark dataset or reserved)")
    scenes = sorted(set(keys[pool]))
    rng.shuffle(scenes)
    want, per_scene, drawn = entry["photos"], entry.get("per_scene", 1), []
    for key in scenes:
        free = [i for i in np.flatnonzero(keys == key) if spare["path"].iloc[i] not in taken]
        pick = rng.choice(len(free), min(per_scene, len(free), want - len(drawn)), replace=False)
        drawn += [free[k] for k in np.sort(pick)]
        if len(drawn) == want:
            break
    if len(drawn) < want:
        raise ConfigError(f"benchmark dataset {name}: {want} outlier photos asked from "
                          f"{', '.join(names)} (at most {per_scene} per scene), only "
                          f"{len(drawn)} available")
    taken.update(spare["path"].iloc[drawn])
    return spare.iloc[drawn]


def _composite(path, backdrop_path, target, dark_below, band):
    """``path`` with a still backdrop: a synthetic turntable before a fixed background.

    The backdrop photo, resized to the image, replaces every pixel whose
    channels are all below ``dark_below`` (a dark studio background) and the
    left and right ``band`` fractions of the width, on the stored pixel grid
    (EXIF kept, so the image's pose stays valid). Written as PNG data under
    the target's name when the source is a PNG, else as JPEG (quality 95).
    """
    from PIL import Image

    with Image.open(path) as img:
        exif, fmt = img.info.get("exif"), "PNG" if img.format == "PNG" else "JPEG"
        rgb = np.asarray(img.convert("RGB"))
    with Image.open(backdrop_path) as b:
        still = np.asarray(b.convert("RGB").resize((rgb.shape[1], rgb.shape[0]), Image.BILINEAR))
    replace = rgb.max(axis=2) < dark_below
    edge = int(round(band * rgb.shape[1]))
    if edge:
        replace[:, :edge] = replace[:, -edge:] = True
    out = Image.fromarray(np.where(replace[..., None], still, rgb))
    options = {"exif": exif} if exif else {}
    if fmt == "JPEG":
        options["quality"] = 95
    buffer = io.BytesIO()
    out.save(buffer, fmt, **options)
    atomic_write_bytes(target, buffer.getvalue())


def make_imc_benchmark(table, out_root, datasets, seed=0, reserve=(), posed=True):
    """Mix scenes and outlier photos into IMC 2025-style test datasets.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`load_table` on a source with ground-truth poses.
    out_root : str or path
        Receives ``train_labels.csv``, ``benchmark_sources.csv`` (``dataset,
        image, source``: the ``<dataset>/<scene>`` each image came from, also
        for outliers) and ``train/<dataset>/<image>`` (files hard-linked when
        possible, else copied); must not hold a ``train_labels.csv`` already.
    datasets : dict
        ``{name: {"scenes": ["<dataset>/<scene>", ...], "outliers": ...,
        "max_per_scene": int}}``. Every scene contributes its posed images
        (at most ``max_per_scene``, 0 for all, seeded sample). ``outliers``
        photos are labelled ``outliers`` with ``nan`` poses and come from
        scenes that no benchmark dataset uses and ``reserve`` does not name:
        an integer ``n`` draws one photo from each of ``n`` such scenes; a list
        of ``{"from": <dataset>[/<scene>] or a list of them, "photos": int,
        "per_scene": int (default 1)}`` draws ``photos`` photos from the named
        sources, at most ``per_scene`` from one scene (look-alike outliers,
        several photos of one place). No photo is drawn twice. ``backdrop``
        (optional) ``{"image": "<dataset>/<image file>", "dark_below": int,
        "band": float}``: every photo of the dataset gets that photo as a still
        backdrop (:func:`_composite`: a synthetic turntable before a fixed
        background, shared with the outliers).
    seed : int
    reserve : list of str
        Scenes never drawn as outliers.
    posed : bool
        False: scenes contribute all their images whatever their poses (a
        benchmark of unposed scenes, for registration and cluster purity).

    Returns
    -------
    pandas.DataFrame: the written labels (``dataset, scene, image,
    rotation_matrix, translation_vector``).
    """
    out_root = os.fspath(out_root)
    labels_file = os.path.join(out_root, "train_labels.csv")
    if os.path.exists(labels_file):
        raise DataLayoutError(f"{labels_file}: already exists; choose an empty folder")
    images = set(table["dataset"] + "/" + [os.path.basename(p) for p in table["path"]])
    for name, spec in sorted(datasets.items()):
        _check_dataset_spec(name, spec, images)
    keys = scene_keys(table)
    used = {s for spec in datasets.values() for s in spec.get("scenes", [])}
    unknown = sorted((used | set(reserve)) - set(keys))
    if unknown:
        raise ConfigError(f"unknown scenes (expected '<dataset>/<scene>'): {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    usable = _posed(table) if posed else np.ones(len(table), bool)
    spare = table[~np.isin(keys, sorted(used | set(reserve))) & (table["scene"] != OUTLIERS)]
    spare_scenes = sorted(set(scene_keys(spare)))
    rng.shuffle(spare_scenes)
    rows, taken = [], set()
    for name, spec in sorted(datasets.items()):
        for key in spec["scenes"]:
            members = table[(keys == key) & usable]
            cap = int(spec.get("max_per_scene", 0))
            if cap and len(members) > cap:
                members = members.iloc[np.sort(rng.choice(len(members), cap, replace=False))]
            if len(members) < 2:
                raise ConfigError(f"scene {key} has {len(members)} "
                                  f"{'posed ' if posed else ''}images; need 2")
            rows += [(name, row.scene, row.path, row.rotation_matrix, row.translation_vector, key)
                     for row in members.itertuples()]
        outliers = spec.get("outliers", 0)
        if isinstance(outliers, list):
            for entry in outliers:
                drawn = _draw_outliers(name, entry, spare, taken, rng)
                rows += [(name, OUTLIERS, path, None, None, key)
                         for path, key in zip(drawn["path"], scene_keys(drawn))]
            continue
        if outliers > len(spare_scenes):
            raise ConfigError(f"benchmark dataset {name}: {outliers} outliers asked, only "
                              f"{len(spare_scenes)} unused scenes left")
        for key in [spare_scenes.pop() for _ in range(outliers)]:
            members = spare[(scene_keys(spare) == key) & ~spare["path"].isin(taken)]
            if members.empty:
                raise ConfigError(f"benchmark dataset {name}: every photo of outlier scene {key} "
                                  "is drawn already (by a list of outlier sources)")
            row = members.iloc[int(rng.integers(len(members)))]
            taken.add(row["path"])
            rows.append((name, OUTLIERS, row["path"], None, None, key))
    by_key = dict(zip(table["dataset"] + "/" + [os.path.basename(p) for p in table["path"]],
                      table["path"]))
    labels, sources = [], []
    for name, scene, path, rot, trans, key in rows:
        image = os.path.basename(path)
        target = os.path.join(out_root, "train", name, image)
        if os.path.exists(target):
            raise DataLayoutError(f"{target}: two source images share this name")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        backdrop = datasets[name].get("backdrop")
        if backdrop:
            _composite(path, by_key[backdrop["image"]], target, backdrop.get("dark_below", 0),
                       backdrop.get("band", 0.0))
        else:
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
        if rot is None or _no_pose(rot) or _no_pose(trans):  # no pose: 9 and 3 nans,
            rot, trans = _join(None, 9), _join(None, 3)  # as the official reader needs
        labels.append((name, scene, image, rot, trans))
        sources.append((name, image, key))
    frame = pd.DataFrame(labels, columns=list(LABEL_COLUMNS))
    atomic_write_text(os.path.join(out_root, SOURCES_FILE),
                      pd.DataFrame(sources, columns=["dataset", "image", "source"]).to_csv(index=False))
    atomic_write_text(labels_file, frame.to_csv(index=False))
    return frame
