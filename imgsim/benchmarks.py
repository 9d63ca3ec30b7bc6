"""IMC-style benchmark folders: posed scenes and outlier photos mixed into test datasets.

``data/imc/benchmarks.yaml`` names each benchmark's datasets (which scenes,
how many outliers); :func:`build_benchmark` writes one as an IMC 2025 folder
(``train_labels.csv`` + ``train/<dataset>/<image>``) for
:func:`imgsim.reconstruct.reconstruct` and :func:`imgsim.imc.score`.
"""

import os
import shutil

import numpy as np
import pandas as pd

from imgsim.data import LABEL_COLUMNS, OUTLIERS, SAMPLE_DATA, load_table, scene_keys
from imgsim.errors import ConfigError, DataLayoutError
from imgsim.fileio import atomic_write_text


BENCHMARKS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "data", "imc", "benchmarks.yaml")


def build_benchmark(name, out_root, source_root=None, specs_file=BENCHMARKS_FILE):
    """Build the IMC-style benchmark ``name`` of ``specs_file`` into ``out_root``.

    Parameters
    ----------
    name : str
        A key of ``specs_file`` (``data/imc/benchmarks.yaml``: ``small`` from
        the embedded sample, ``full`` from the full photo collection).
    out_root : str or path
        Receives ``train_labels.csv`` (the ground truth, scene ``outliers``
        for outlier photos) and ``train/<dataset>/<image>``. If it already
        holds a ``train_labels.csv`` the benchmark is taken as built.
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
    labels = os.path.join(os.fspath(out_root), "train_labels.csv")
    if os.path.exists(labels):
        return labels
    if spec["source"] == "sample":
        source_root = SAMPLE_DATA
    elif source_root is None:
        raise ConfigError(f"benchmark {name!r} is built from the full photo collection: "
                          "pass source_root (for example $IMGSIM_DATA)")
    make_imc_benchmark(load_table(source_root), out_root, spec["datasets"], seed=spec.get("seed", 0),
                       reserve=spec.get("reserve", ()))
    return labels


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
