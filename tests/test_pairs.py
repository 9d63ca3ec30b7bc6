"""Pair sets of the verification protocols: correct, balanced, seeded."""

import numpy as np
import pytest

from conftest import shared_path
from imgsim.data import load_table, scene_keys, select, split_scenes
from imgsim.pairs import make_pairs



def test_hard_pairs_over_every_shared_scene_match_the_measured_anchor():
    """All 65 scenes, hard protocol, ≤ 60 + 60 per dataset: 364 + 364 pairs (issue 3's anchor)."""
    table = load_table(shared_path("data"))
    pairs = make_pairs(table, sorted(set(scene_keys(table))), "hard")
    assert (pairs["label"] == 1).sum() == 364 and (pairs["label"] == 0).sum() == 364


@pytest.mark.parametrize("protocol", ["hard", "easy"])
def test_pair_sets_are_correct_balanced_and_seeded(protocol):
    table = load_table(shared_path("data"))
    split = split_scenes(table, seed=0)
    pairs = make_pairs(table, split.test, protocol, max_pairs_per_dataset=20, seed=5)
    key = lambda d, s: d + "/" + s  # noqa: E731
    ka = [key(d, s) for d, s in zip(pairs["dataset_a"], pairs["scene_a"])]
    kb = [key(d, s) for d, s in zip(pairs["dataset_b"], pairs["scene_b"])]
    same = np.array([a == b for a, b in zip(ka, kb)])
    np.testing.assert_array_equal(same, pairs["label"].to_numpy() == 1)
    assert not (pairs["scene_a"] == "outliers").any()  # the first image is always evaluated
    assert set(ka) <= set(split.test)
    # Second images: evaluated scenes, or a stand-in outlier from a scene outside them.
    outside = [k for k, s in zip(kb, pairs["scene_b"]) if s == "outliers"]
    assert all(p not in set(select(table, split.test)["path"])
               for p in pairs["path_b"][pairs["scene_b"] == "outliers"])
    assert len(outside) > 0
    # Balanced per dataset, at most 20 + 20, no pair twice.
    for _, group in pairs.groupby("dataset_a"):
        assert (group["label"] == 1).sum() == (group["label"] == 0).sum() <= 20
    assert not pairs.duplicated(["path_a", "path_b"]).any()
    if protocol == "hard":
        # Same-dataset negatives wherever the dataset has two evaluated scenes.
        negatives = pairs[pairs["label"] == 0]
        multi = {d for d, g in select(table, split.test).groupby("dataset") if g["scene"].nunique() > 1}
        rows = negatives[negatives["dataset_a"].isin(multi)]
        assert (rows["dataset_a"] == rows["dataset_b"]).all()
    again = make_pairs(table, split.test, protocol, max_pairs_per_dataset=20, seed=5)
    assert again.equals(pairs)
    assert not make_pairs(table, split.test, protocol, max_pairs_per_dataset=20, seed=6).equals(pairs)
