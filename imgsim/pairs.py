"""Same-scene and different-scene image pairs for the verification protocols.

:func:`make_pairs` draws balanced, seeded positive and negative pairs over a
set of scenes, under the ``hard`` protocol (negatives from the same dataset,
which look alike) or the ``easy`` one; :func:`stand_in_outliers` supplies
distractor photos when a table has no ``outliers`` rows.
"""

import numpy as np
import pandas as pd

from imgsim.data import OUTLIERS, scene_keys, select
from imgsim.errors import ConfigError


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
