"""The evaluation report on the embedded sample, recomputed independently from its parts."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from imgsim.evaluate import FIGURES, METHODS, EvalConfig, evaluate
from imgsim.sift import SiftConfig


def mann_whitney_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    config = EvalConfig(data=SAMPLE, report_dir=str(folder), max_pairs_per_dataset=8,
                        image_size=96, cache_dir=str(folder / "cache"),
                        sift=SiftConfig(max_side=320, n_features=500))
    return folder, config, evaluate(config)


@pytest.mark.slow
def test_report_files_and_keys(report):
    folder, _, result = report
    saved = json.load(open(folder / "metrics.json"))
    for method in METHODS:
        for key in ("accuracy", "roc_auc", "tpr_at_fpr_1pct", "precision_at_1", "map_at_r", "ari"):
            assert 0.0 <= saved[method][key] <= 1.0, (method, key)
    assert set(saved["protocols"]) == {"hard", "easy"}
    summary = open(folder / "summary.md").read()
    assert "| dl |" in summary and "| sift |" in summary and "| fused |" in summary
    for name in FIGURES:  # the single-protocol ROC appears once per protocol
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and min(img.size) > 200, name


@pytest.mark.slow
def test_verification_figures_recomputed_from_public_parts(report):
    """Rebuild the hard test pairs, embed and match them independently, recompute AUC and accuracy."""
    from imgsim.data import Split, load_table
    from imgsim.pairs import make_pairs
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed
    from imgsim.sift import pair_score

    _, config, result = report
    table = load_table(SAMPLE)
    split = Split.from_dict(result["split"])
    pairs = make_pairs(table, split.test, "hard", config.max_pairs_per_dataset, config.seed)
    y = pairs["label"].to_numpy()
    assert result["pairs"]["hard"]["test"] == len(pairs)
    model = build_imagenet_baseline(EmbeddingConfig(image_size=96))
    d = np.linalg.norm(embed(model, list(pairs["path_a"])) - embed(model, list(pairs["path_b"])), axis=1)
    assert result["dl"]["roc_auc"] == pytest.approx(mann_whitney_auc(y, -d), abs=1e-9)
    threshold = result["dl"]["threshold"]
    assert result["dl"]["accuracy"] == pytest.approx(np.mean((-d >= threshold) == (y == 1)))
    inliers = np.array([pair_score(a, b, config.sift).n_inliers
                        for a, b in zip(pairs["path_a"], pairs["path_b"])], float)
    assert result["sift"]["roc_auc"] == pytest.approx(mann_whitney_auc(y, inliers), abs=1e-9)
    # The fused probability comes from a model fitted on validation pairs only.
    from imgsim.fusion import FusionModel, pair_features

    fusion = FusionModel.from_dict(result["fusion"])
    ratios = np.array([pair_score(a, b, config.sift).inlier_ratio
                       for a, b in zip(pairs["path_a"], pairs["path_b"])])
    p = fusion.predict_proba(pair_features(d, inliers, ratios))
    assert result["fused"]["roc_auc"] == pytest.approx(mann_whitney_auc(y, p), abs=1e-6)


@pytest.mark.slow
def test_retrieval_figures_use_test_scenes_and_distractors_only(report):
    _, _, result = report
    split = result["split"]
    assert result["retrieval_images"]["distractors"] == len(split["train"]) + len(split["val"])
    assert not set(split["train"]) & set(split["test"])
