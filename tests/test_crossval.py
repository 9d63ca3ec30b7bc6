"""Cross-validation by scene: folds, bootstrap intervals with known answers, figures, reports."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from imgsim.crossval import (
    CrossValConfig,
    bootstrap_mean_difference,
    fold_figures,
    fold_pairs,
    fold_splits,
    paired_summary,
    percentile_interval,
    resample_weights,
    sweep_report,
)
from imgsim.errors import ConfigError


def synthetic_table(scenes_per_dataset=(5, 3, 2, 1, 4, 6), images=3):
    rows = []
    for d, n in enumerate(scenes_per_dataset):
        for s in range(n):
            for i in range(images):
                rows.append((f"/x/d{d}/s{s}_{i}.jpg", f"d{d}/s{s}_{i}.jpg", f"d{d}", f"s{s}",
                             "nan", "nan"))
    return pd.DataFrame(rows, columns=["path", "image", "dataset", "scene", "rotation_matrix",
                                       "translation_vector"])


# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize("group_by_dataset", [False, True])
def test_folds_are_disjoint_by_scene_cover_every_scene_and_are_seeded(group_by_dataset):
    table = synthetic_table()
    keys = set(table["dataset"] + "/" + table["scene"])
    splits = fold_splits(table, folds=5, seed=3, group_by_dataset=group_by_dataset)
    tests = [set(s.test) for s in splits]
    assert set().union(*tests) == keys and sum(map(len, tests)) == len(keys)  # a partition
    for split in splits:
        train, val, test = set(split.train), set(split.val), set(split.test)
        assert not (train & val or train & test or val & test)
        assert train | val | test == keys and len(val) >= 2
        if group_by_dataset:  # a dataset's scenes are all in one fold
            assert not {k.split("/")[0] for k in test} & {k.split("/")[0] for k in train | val}
    again = fold_splits(table, folds=5, seed=3, group_by_dataset=group_by_dataset)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in splits]
    other = fold_splits(table, folds=5, seed=4, group_by_dataset=group_by_dataset)
    assert [s.to_dict() for s in other] != [s.to_dict() for s in splits]
    if not group_by_dataset:  # near-equal folds: 21 scenes into 5
        assert sorted(map(len, tests)) == [4, 4, 4, 4, 5]


def test_folds_need_enough_scenes_and_datasets():
    with pytest.raises(ConfigError, match="5 folds need at least 5 scenes"):
        fold_splits(synthetic_table((2, 2)), folds=5)
    with pytest.raises(ConfigError, match="group_by_dataset needs at least 5 datasets"):
        fold_splits(synthetic_table((3, 3, 3)), folds=5, group_by_dataset=True)
    with pytest.raises(ConfigError, match="folds must be at least 2"):
        CrossValConfig(folds=1)
    with pytest.raises(ConfigError, match="untrained=True needs"):
        CrossValConfig(untrained=True)  # the default recipe's head starts from a PCA, not ImageNet


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_two_scenes_has_the_exact_binomial_answer():
    """Scenes with differences 0 and 1: resampled means are 0, 1/2, 1 with chances 1/4, 1/2, 1/4,
    so the 95 % percentile interval is exactly [0, 1] and half the resamples give 1/2."""
    a, b = np.array([0.0, 1.0]), np.zeros(2)
    difference, low, high = bootstrap_mean_difference(a, b, ["s0", "s1"], [0, 0], n_boot=4000)
    assert (difference, low, high) == (0.5, 0.0, 1.0)
    w = resample_weights(["s0", "s1"], [0, 0], n_boot=4000, seed=1)
    means = w @ a / 2
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.03)


def test_bootstrap_interval_of_a_mean_matches_the_normal_approximation():
    """400 independent scenes: the interval is mean ± 1.96 s / sqrt(n) within a few percent."""
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, 400)
    difference, low, high = bootstrap_mean_difference(d, np.zeros(400), np.arange(400),
                                                      np.zeros(400), n_boot=4000)
    half = 1.96 * d.std(ddof=1) / np.sqrt(400)
    assert difference == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_bootstrap_resamples_whole_scenes_within_each_fold():
    clusters = np.array(["a", "a", "b", "c", "c", "c", "a", "d"])
    strata = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # scene "a" of fold 1 is another cluster
    w = resample_weights(clusters, strata, n_boot=500, seed=2)
    assert w.shape == (500, 8)
    # The images of a scene move together, ...
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 4]) and np.all(w[:, 4] == w[:, 5])
    # ... each fold keeps its number of scenes (3 and 2), and fold 1's "a" is drawn on its own.
    np.testing.assert_array_equal(w[:, 0] + w[:, 2] + w[:, 3], 3)
    np.testing.assert_array_equal(w[:, 6] + w[:, 7], 2)
    assert np.any(w[:, 0] != w[:, 6])


def test_constant_difference_has_a_zero_width_interval():
    difference, low, high = bootstrap_mean_difference(np.full(9, 0.7), np.full(9, 0.5),
                                                      np.repeat(["x", "y", "z"], 3), np.zeros(9))
    assert difference == pytest.approx(0.2) and low == pytest.approx(0.2) and high == pytest.approx(0.2)
    assert all(np.isnan(percentile_interval([np.nan, np.nan])))


# --------------------------------------------------------------------------- figures of a fold


def fold_case():
    """Two datasets: d0 with scenes s0, s1 (look-alike), d1 with scene s0; 3 images each."""
    table = synthetic_table((2, 1), images=3)
    rows = table.reset_index(drop=True)
    scenes = (rows["dataset"] + "/" + rows["scene"]).to_numpy()
    centre = {"d0/s0": [1, 0, 0], "d0/s1": [0, 1, 0], "d1/s0": [0, 0, 1]}
    perfect = np.array([centre[s] for s in scenes], float) + 0.01 * np.arange(len(rows))[:, None]
    confused = perfect.copy()
    # The two look-alike scenes collapse onto a line, at 0, 1, 3, 6, 10, 15 (× 0.01): gaps
    # 1, 2, 3, 4, 5, so each image's nearest neighbour is the one before it (after it, for 0).
    confused[rows["dataset"] == "d0"] = [1, 1, 0]
    confused[rows["dataset"] == "d0"] += 0.01 * np.array([0, 1, 3, 6, 10, 15])[:, None] * [[1, -1, 0]]
    return table, rows, perfect, confused


def test_fold_figures_hand_worked():
    table, rows, perfect, confused = fold_case()
    pairs = fold_pairs(table, sorted(set(rows["dataset"] + "/" + rows["scene"])), 60, 0)
    # d0: 6 positives and 6 same-dataset negatives; d1: 3 positives, negatives from d0's images.
    assert (pairs.groupby("dataset_a")["label"].agg(["sum", "count"]).to_dict("index")
            == {"d0": {"sum": 6, "count": 12}, "d1": {"sum": 3, "count": 6}})
    assert set(pairs.loc[pairs["dataset_a"] == "d1", "scene_b"]) >= {"outliers"}
    good = fold_figures(rows, perfect, pairs, shortlist_k=2)
    q = good["queries"]
    assert len(q) == 9 and q["precision_at_1"].eq(1).all() and q["map_at_r"].eq(1).all()
    # Within-dataset P@1 only for d0 (two scenes); d1 has one scene: NaN.
    assert q.loc[q["scene"].str.startswith("d0"), "within_dataset_precision_at_1"].eq(1).all()
    assert q.loc[q["scene"].str.startswith("d1"), "within_dataset_precision_at_1"].isna().all()
    assert q["shortlist_recall_at_10"].eq(1).all()  # 2 partners each, both among the 2 nearest
    bad = fold_figures(rows, confused, pairs, shortlist_k=2)["queries"]
    d0 = bad["scene"].str.startswith("d0")
    # Collapsed d0 (scenes s0 s0 s0 s1 s1 s1 along the line): only the first s1 image misses.
    np.testing.assert_allclose(bad.loc[d0, "precision_at_1"], [1, 1, 1, 0, 1, 1])
    summary = paired_summary([{"imagenet": fold_figures(rows, confused, pairs, 2),
                               "recipe": good}], n_boot=300)
    assert summary["precision_at_1"]["difference"] == pytest.approx(1 / 9)
    assert summary["within_dataset_precision_at_1"]["difference"] == pytest.approx(1 / 6)
    assert summary["roc_auc"]["recipe"] == 1.0 and summary["roc_auc"]["difference"] > 0
    same = paired_summary([{"imagenet": good, "recipe": good}], n_boot=100)
    assert all(v["difference"] == 0 and v["low"] == 0 and v["high"] == 0 for v in same.values())


def test_sweep_report_marks_intervals_above_zero(tmp_path):
    def result(name, low):
        pooled = {f: {"imagenet": 0.8, "recipe": 0.8 + low + 0.01, "difference": low + 0.01,
                      "low": low, "high": low + 0.02, "units": 10}
                  for f in ("precision_at_1", "recall_at_5", "map_at_r",
                            "within_dataset_precision_at_1", "roc_auc", "tpr_at_fpr_1pct",
                            "shortlist_recall_at_10")}
        folds = [{"test_scenes": ["d/a", "d/b"]}, {"test_scenes": ["d/c"]}]
        return {"name": name, "pooled": pooled, "folds": folds, "config": {
            "level": 0.95, "fold_seed": 0, "train": {"mode": "fast", "embedding": {"trainable_layers": 0}}}}

    table = sweep_report([result("worse", -0.05), result("better", 0.01)], str(tmp_path))
    assert list(table["recipe"]) == ["better", "worse"]
    text = (tmp_path / "summary.md").read_text()
    assert "| better | fast, backbone frozen | **+0.0200 [0.0100, 0.0300]**" in text
    assert "| worse | fast, backbone frozen | -0.0400 [-0.0500, -0.0300]" in text
    assert (tmp_path / "paired_differences.png").stat().st_size > 1000
    saved = json.load(open(tmp_path / "metrics.json"))
    assert set(saved["recipes"]) == {"better", "worse"}
    assert saved["recommended"] == "better" and saved["beats_imagenet"] is True
    assert "Folds: 2 by scene, 3 scenes" in text
    assert os.path.exists(tmp_path / "summary.md")


def test_demo_states_the_evidence_and_its_verdict():
    """The demo's words follow the report: a win names its lower bound; no win keeps ImageNet."""
    from imgsim.demo import evidence_lines

    def result(low):
        pooled = {f: {"imagenet": 0.8, "recipe": 0.81, "difference": 0.01, "low": low, "high": 0.03}
                  for f in ("map_at_r", "within_dataset_precision_at_1", "tpr_at_fpr_1pct")}
        return {"pooled": pooled, "folds": [{"test_scenes": ["d/a", "d/b"]}, {"test_scenes": ["d/c"]}]}

    won = "\n".join(evidence_lines("r", result(0.002), True))
    assert "3 scenes (2 folds by scene" in won and "map_at_r: 0.810 vs 0.800, +0.0100 [+0.0020, +0.0300]" in won
    assert "beats ImageNet" in won and "lower end is +0.0020" in won and "weak evidence" in won
    lost = "\n".join(evidence_lines("r", result(-0.002), False))
    assert "No training recipe beats ImageNet" in lost and "ImageNet stays the default" in lost
    assert "within-dataset P@1 (look-alike scenes): +0.010" in lost
