"""SIFT extraction, matching and verification on real photos of the embedded sample.

Geometry is checked against a homography the test applies itself (numpy
reprojection), matching against hand-made descriptors, RootSIFT against a numpy
computation from plain SIFT descriptors of the same keypoints.
"""

import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from imgsim.data import load_image, load_table
from imgsim.errors import ConfigError, ImageDecodeError
from imgsim.sift import (
    FeatureCache,
    Features,
    PairScore,
    SiftConfig,
    extract,
    extract_many,
    match,
    pair_matches,
    pair_score,
    verify,
)

MAX_SIDE = 640  # the sample's photos are at most 640 px: no resize
# Mild perspective + 10° rotation + 0.9 scale + shift, in pixel coordinates (x, y, 1).
ANGLE = np.deg2rad(10)
H = np.array([[0.9 * np.cos(ANGLE), -0.9 * np.sin(ANGLE), 40.0],
              [0.9 * np.sin(ANGLE), 0.9 * np.cos(ANGLE), -10.0],
              [1e-4, 5e-5, 1.0]])


@pytest.fixture(scope="module")
def photos():
    """Sample photo paths by file name."""
    table = load_table(SAMPLE)
    return dict(zip(table["image"].map(os.path.basename), table["path"]))


@pytest.fixture(scope="module")
def fountain(photos):
    return load_image(photos["fountain_p11_0000.jpg"])


@pytest.fixture(scope="module")
def warped(fountain):
    height, width = fountain.shape[:2]
    return cv2.warpPerspective(fountain, H, (width, height))


def reprojection_error(pm):
    """Distance, in original pixels of B, between H(keypoint in A) and its match in B (every match)."""
    a = pm.features_a.keypoints[pm.matches[:, 0]].astype(np.float64)
    b = pm.features_b.keypoints[pm.matches[:, 1]].astype(np.float64)
    projected = np.c_[a, np.ones(len(a))] @ H.T
    return np.linalg.norm(projected[:, :2] / projected[:, 2:] - b, axis=1)


def features_equal(f, g):
    return (all(np.array_equal(getattr(f, name), getattr(g, name))
                for name in ("keypoints", "scales", "angles", "descriptors"))
            and f.image_size == g.image_size and f.scale == g.scale)


# --------------------------------------------------------------------------- geometry on real photos


def test_homography_inliers_agree_with_the_known_warp(fountain, warped):
    config = SiftConfig(max_side=480, estimator="homography")  # 640 → 480: exercises the rescaling
    pm = pair_matches(fountain, warped, config)
    assert pm.features_a.scale == pytest.approx(480 / 640)
    assert pm.features_a.image_size == fountain.shape[:2]
    assert pm.reason is None and pm.inliers.sum() >= 50
    # threshold is in resized pixels: 1 px there is 1 / scale px in the original
    bound = 3 * config.ransac_threshold / pm.features_b.scale
    assert reprojection_error(pm)[pm.inliers].max() < bound


def test_fundamental_inliers_on_the_known_warp(fountain, warped):
    pm = pair_matches(fountain, warped, SiftConfig(max_side=MAX_SIDE, estimator="fundamental"))
    assert pm.inliers.sum() >= 50
    # an epipolar constraint is weaker than H: nearly all of its inliers are still true matches
    assert np.mean(reprojection_error(pm)[pm.inliers] < 3.0) > 0.95


@pytest.mark.parametrize("estimator", ["fundamental", "homography"])
def test_same_scene_beats_different_scenes(photos, estimator):
    config = SiftConfig(max_side=MAX_SIDE, estimator=estimator)
    different = pair_score(photos["castle_p30_0003.jpg"],
                           photos["espresso_PXL_20210526_021804355.jpg"], config)
    same = pair_score(photos["fountain_p11_0000.jpg"], photos["fountain_p11_0001.jpg"], config)
    assert different.n_inliers < 15
    assert same.n_inliers >= 50 and same.n_inliers > 5 * different.n_inliers
    assert same.inlier_ratio == pytest.approx(same.n_inliers / same.n_matches)
    assert same.reason is None


def test_threshold_is_in_resized_pixels():
    """40 exact matches of H, 40 moved 3 px off it, 20 random: 3 px is 0.75 px at scale 0.25."""
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1000, (100, 2))
    projected = np.c_[a, np.ones(100)] @ H.T
    b = projected[:, :2] / projected[:, 2:]
    angle = rng.uniform(0, 2 * np.pi, 40)
    b[40:80] += 3 * np.c_[np.cos(angle), np.sin(angle)]
    b[80:] = rng.uniform(0, 1000, (20, 2))
    descriptors = rng.uniform(0, 1, (100, 128)).astype(np.float32)  # keypoint i matches keypoint i
    config = SiftConfig(estimator="homography", ransac_threshold=1.0)
    for scale, expected in ((1.0, 40), (0.5, 40), (0.25, 80)):  # 3, 1.5 and 0.75 px off
        fa, fb = (Features(xy.astype(np.float32), np.ones(100, np.float32), np.zeros(100, np.float32),
                           descriptors, (1000, 1000), scale) for xy in (a, b))
        pm = pair_matches(fa, fb, config)
        np.testing.assert_array_equal(pm.matches, np.c_[np.arange(100), np.arange(100)])
        np.testing.assert_array_equal(pm.inliers, np.arange(100) < expected)
        mask, reason = verify(a, b, pm.matches, config, scales=(scale, scale))
        assert reason is None and np.array_equal(mask, pm.inliers)


# --------------------------------------------------------------------------- descriptors and matching


def test_root_sift_is_sqrt_of_l1_normalised_sift(fountain):
    plain = extract(fountain, SiftConfig(max_side=MAX_SIDE, root_sift=False))
    root = extract(fountain, SiftConfig(max_side=MAX_SIDE, root_sift=True))
    assert len(plain) > 100 and np.array_equal(plain.keypoints, root.keypoints)
    d = plain.descriptors.astype(np.float64)
    assert d.min() >= 0
    np.testing.assert_allclose(root.descriptors, np.sqrt(d / d.sum(axis=1, keepdims=True)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(root.descriptors, axis=1), 1.0, atol=1e-5)
    assert root.descriptors.dtype == np.float32 and root.descriptors.shape == (len(root), 128)


def test_upright_keypoints_have_no_orientation(fountain):
    free = extract(fountain, SiftConfig(max_side=MAX_SIDE))
    upright = extract(fountain, SiftConfig(max_side=MAX_SIDE, upright=True))
    assert np.all(upright.angles == 0)
    places = {tuple(row) for row in np.c_[upright.keypoints, upright.scales]}
    assert len(places) == len(upright)  # orientation duplicates are gone
    assert places <= {tuple(row) for row in np.c_[free.keypoints, free.scales]}
    assert len(upright) < len(free)


B = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
A = np.array([
    [0.1, 0, 0],  # 0 → b0 at 0.1, next at 9.9: a clear match
    [5, 5, 0],    # 1 → b0, b1, b2 all at 7.07: ambiguous, rejected
    [0, 0, 9.9],  # 2 → b3 at 0.1: a clear match
    [0, 0, 9],    # 3 → b3 at 1.0, next at 9.0 (ratio 0.11); b3's nearest is a2, not a3
], np.float32)


@pytest.mark.parametrize("ratio, mutual, expected", [
    (0.8, True, [[0, 0], [2, 3]]),
    (0.8, False, [[0, 0], [2, 3], [3, 3]]),
    (0.05, False, [[0, 0], [2, 3]]),  # a3's ratio 0.11 fails, a0's and a2's 0.01 pass
    (1.0, False, [[0, 0], [2, 3], [3, 3]]),  # ties never pass, even at ratio 1
])
def test_match_ratio_and_mutual(ratio, mutual, expected):
    result = match(A, B, ratio=ratio, mutual=mutual)
    assert result.dtype == np.int64
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("desc_a, desc_b", [(A[:1], B), (A, B[:1]), (A[:0], B), (A, B[:0])])
def test_match_needs_two_descriptors_on_each_side(desc_a, desc_b):
    result = match(desc_a, desc_b)
    assert result.shape == (0, 2) and result.dtype == np.int64


def test_match_argument_errors():
    with pytest.raises(ValueError, match="descriptor sizes differ: 3 and 2"):
        match(A, B[:, :2])
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\], got 0"):
        match(A, B, ratio=0)


# --------------------------------------------------------------------------- bad input: a reason, no exception


def test_flat_colour_has_no_keypoints(fountain):
    flat = np.full((300, 400, 3), 128, np.uint8)
    features = extract(flat)
    assert features.keypoints.shape == (0, 2) and features.descriptors.shape == (0, 128)
    assert features.keypoints.dtype == features.descriptors.dtype == np.float32
    config = SiftConfig(max_side=MAX_SIDE)
    assert pair_score(flat, fountain, config) == PairScore(0, len(extract(fountain, config)), 0, 0, 0.0,
                                                           "no keypoints in image A")
    assert pair_score(fountain, flat, config).reason == "no keypoints in image B"
    assert pair_score(flat, flat, config).reason == "no keypoints in image A and B"


def test_tiny_gradient_file(tmp_path, fountain):
    y, x = np.mgrid[0:40, 0:40]
    path = tmp_path / "gradient.png"
    Image.fromarray(((x + y) * 3).astype(np.uint8)).save(path)
    score = pair_score(fountain, path, SiftConfig(max_side=MAX_SIDE))
    assert (score.n_keypoints_b, score.n_matches, score.n_inliers) == (0, 0, 0)
    assert score.reason == "no keypoints in image B"
    assert len(extract(np.zeros((1, 1), np.uint8))) == 0


def test_fewer_than_min_matches(fountain):
    config = SiftConfig(max_side=MAX_SIDE)
    full = extract(fountain, config)
    five = Features(full.keypoints[:5], full.scales[:5], full.angles[:5], full.descriptors[:5],
                    full.image_size, full.scale)
    score = pair_score(full, five, config)  # each of the five matches its own copy, mutually
    assert (score.n_keypoints_b, score.n_matches, score.n_inliers) == (5, 5, 0)
    assert score.reason == "fewer than 8 matches (5)"
    mask, reason = verify(full.keypoints, full.keypoints, np.zeros((0, 2), int), config)
    assert mask.shape == (0,) and reason == "fewer than 8 matches (0)"


@pytest.mark.parametrize("estimator, name", [("fundamental", "fundamental matrix"),
                                             ("homography", "homography")])
def test_degenerate_and_failing_estimation(monkeypatch, estimator, name):
    config = SiftConfig(estimator=estimator)
    same_point = np.full((10, 2), 5.0)
    pairs = np.c_[np.arange(10), np.arange(10)]
    mask, reason = verify(same_point, same_point, pairs, config)
    assert not mask.any() and mask.shape == (10,) and reason == f"no {name} found"

    def boom(*args, **kwargs):
        raise cv2.error("boom")

    monkeypatch.setattr(cv2, "findFundamentalMat", boom)
    monkeypatch.setattr(cv2, "findHomography", boom)
    rng = np.random.default_rng(0)
    mask, reason = verify(rng.uniform(0, 500, (10, 2)), rng.uniform(0, 500, (10, 2)), pairs, config)
    assert not mask.any() and reason == f"{name} estimation failed: boom"


def test_bad_file_error_comes_from_load_image(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("hello")
    with pytest.raises(ImageDecodeError, match="x.jpg: not an image"):
        extract(path)
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 4\) and dtype uint8"):
        extract(np.zeros((4, 4, 4), np.uint8))


def test_pair_score_to_dict():
    score = PairScore(10, 20, 8, 4, 0.5, None)
    assert score.to_dict() == {"n_keypoints_a": 10, "n_keypoints_b": 20, "n_matches": 8,
                               "n_inliers": 4, "inlier_ratio": 0.5, "reason": None,
                               "n_static": 0}
    assert PairScore.from_dict(score.to_dict()) == score


# --------------------------------------------------------------------------- cache


def test_cache_hit_equals_fresh_features(tmp_path, photos):
    path = photos["fountain_p11_0000.jpg"]
    config = SiftConfig(max_side=MAX_SIDE)
    cache = FeatureCache(tmp_path)
    first, second = cache.get(path, config), cache.get(path, config)
    assert (cache.misses, cache.hits) == (1, 1)
    fresh = extract(path, config)
    assert features_equal(first, fresh) and features_equal(second, fresh)

    copy = tmp_path / "renamed.jpg"  # the key is the content, not the name
    shutil.copyfile(path, copy)
    cache.get(copy, config)
    assert (cache.misses, cache.hits) == (1, 2)

    other = SiftConfig(max_side=MAX_SIDE, n_features=500)
    assert len(cache.get(path, other)) == 500
    assert (cache.misses, cache.hits) == (2, 2)
    assert cache.file_for(path, other) != cache.file_for(path, config)
    # matching settings are not part of the key
    cache.get(path, SiftConfig(max_side=MAX_SIDE, ratio=0.6, estimator="homography"))
    assert (cache.misses, cache.hits) == (2, 3)


def test_corrupt_cache_file_is_a_miss_and_rewritten(tmp_path, photos):
    path = photos["castle_p30_0003.jpg"]
    config = SiftConfig(max_side=MAX_SIDE)
    cache = FeatureCache(tmp_path)
    fresh = cache.get(path, config)
    file = cache.file_for(path, config)
    good = open(file, "rb").read()
    for damaged in (good[: len(good) // 2], good[:-10], good[:30], b"", b"not a zip file"):
        with open(file, "wb") as f:
            f.write(damaged)
        misses = cache.misses
        assert features_equal(cache.get(path, config), fresh)
        assert cache.misses == misses + 1
        assert open(file, "rb").read() == good
    assert cache.hits == 0


def test_pair_set_extracts_each_image_once(tmp_path, photos):
    a, b, c = (photos[f"fountain_p11_000{i}.jpg"] for i in range(3))
    config = SiftConfig(max_side=320)
    cache = FeatureCache(tmp_path / "pairs")
    scores = [pair_score(x, y, config, cache=cache) for x, y in ((a, b), (b, c), (a, c))]
    assert (cache.misses, cache.hits) == (3, 3)
    assert all(s.n_inliers > 0 for s in scores)
    assert len(os.listdir(tmp_path / "pairs")) == 3

    cache = FeatureCache(tmp_path / "many")
    features = extract_many([a, b, b, c, a], config, cache=cache, workers=3, progress=True)
    assert (cache.misses, cache.hits) == (3, 0)
    assert features[0] is features[4] and features[1] is features[2]
    assert features_equal(features[3], extract(c, config))


def test_arrays_bypass_the_cache(tmp_path, photos, fountain):
    cache = FeatureCache(tmp_path)
    pair_score(fountain, photos["fountain_p11_0001.jpg"], SiftConfig(max_side=320), cache=cache)
    assert (cache.misses, cache.hits) == (1, 0)
    assert len(os.listdir(tmp_path)) == 1


def test_default_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert FeatureCache().folder == str(tmp_path / "xdg" / "imgsim" / "sift")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert FeatureCache().folder == str(tmp_path / ".cache" / "imgsim" / "sift")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("changes, message", [
    ({"max_side": 16}, "max_side must be an integer >= 32, got 16"),
    ({"max_side": 640.0}, "max_side must be an integer >= 32, got 640.0"),
    ({"n_features": -1}, "n_features must be an integer >= 0 (0: all), got -1"),
    ({"root_sift": 1}, "root_sift must be True or False, got 1"),
    ({"upright": "no"}, "upright must be True or False, got 'no'"),
    ({"mutual": None}, "mutual must be True or False, got None"),
    ({"ratio": 0}, "ratio must be in (0, 1], got 0"),
    ({"ratio": 1.2}, "ratio must be in (0, 1], got 1.2"),
    ({"estimator": "affine"}, "estimator must be one of ('fundamental', 'homography'), got 'affine'"),
    ({"ransac_threshold": 0}, "ransac_threshold must be > 0 pixels, got 0"),
    ({"confidence": 1.0}, "confidence must be in (0, 1), got 1.0"),
    ({"max_iters": 0}, "max_iters must be an integer >= 1, got 0"),
    ({"min_matches": 6}, "min_matches must be an integer >= 7 for estimator 'fundamental', got 6"),
    ({"min_matches": 3, "estimator": "homography"},
     "min_matches must be an integer >= 4 for estimator 'homography', got 3"),
])
def test_config_validation(changes, message):
    with pytest.raises(ConfigError) as info:
        SiftConfig(**changes)
    assert str(info.value) == message


def test_config_round_trip():
    config = SiftConfig(max_side=800, estimator="homography", min_matches=4)
    assert SiftConfig.from_dict(config.to_dict()) == config
    assert SiftConfig(**{"min_matches": 4, "estimator": "homography"}).min_matches == 4
    with pytest.raises(ConfigError, match="unknown SiftConfig keys: threshold"):
        SiftConfig.from_dict({"threshold": 2})


# --------------------------------------------------------------------------- many pairs; shortlist

import imgsim.sift as sift_module  # noqa: E402
from imgsim.sift import score_pairs, shortlist_pairs  # noqa: E402

FAST = {"max_side": 320, "n_features": 500}


@pytest.fixture(scope="module")
def pair_set(photos):
    f = [photos[f"fountain_p11_000{i}.jpg"] for i in range(3)]
    castle, espresso = photos["castle_p30_0003.jpg"], photos["espresso_PXL_20210526_021804355.jpg"]
    # same scene, reversed (matching is not symmetric), different scenes, a repeat, an image with itself
    return [(f[0], f[1]), (f[1], f[0]), (f[1], f[2]), (f[0], f[2]), (castle, espresso),
            (f[2], castle), (f[0], f[1]), (espresso, espresso)]


@pytest.mark.parametrize("matcher", ["bf", "flann"])
def test_score_pairs_equals_pair_score_per_pair(tmp_path, pair_set, matcher):
    config = SiftConfig(**FAST, matcher=matcher)
    expected = [pair_score(a, b, config) for a, b in pair_set]
    cache = FeatureCache(tmp_path)
    scores = score_pairs(pair_set, config, cache=cache, processes=2, progress=True)
    assert scores == expected
    assert (cache.misses, cache.hits) == (5, 0)  # five distinct images, each extracted once
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 5
    assert expected[0].n_inliers >= 20 and expected[4].n_inliers < expected[0].n_inliers
    # seven distinct pairs, fewer than MIN_CHUNKS: one pair per chunk file
    assert (cache.chunk_misses, len(os.listdir(tmp_path / "pairs"))) == (7, 7)
    # again, one process: every chunk comes from the cache, no feature is even read
    assert score_pairs(pair_set, config, cache=cache, processes=1) == expected
    assert (cache.misses, cache.hits, cache.chunk_hits, cache.chunk_misses) == (5, 0, 7, 7)
    # a lost chunk is scored again, from cached features
    os.remove(tmp_path / "pairs" / sorted(os.listdir(tmp_path / "pairs"))[0])
    assert score_pairs(pair_set, config, cache=cache, processes=1) == expected
    assert (cache.misses, cache.chunk_hits, cache.chunk_misses) == (5, 13, 8) and cache.hits in (1, 2)


def test_score_pairs_keeps_the_verified_matches_of_each_pair(tmp_path, pair_set):
    config = SiftConfig(**FAST)
    expected = [pair_matches(a, b, config) for a, b in pair_set]
    got = score_pairs(pair_set, config, cache=FeatureCache(tmp_path), processes=2, keep_matches=True)
    for want, (score, inliers) in zip(expected, got):
        assert score == want.score()
        assert inliers.dtype == np.uint32 and inliers.shape == (score.n_inliers, 2)
        # the same (index_a, index_b) rows as the single-pair call's matches under its inlier mask
        assert np.array_equal(inliers, want.matches[want.inliers])


def test_score_pairs_without_cache_leaves_nothing(tmp_path, monkeypatch, pair_set):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    config = SiftConfig(**FAST)
    expected = [pair_score(a, b, config) for a, b in pair_set[:3]]
    assert score_pairs(pair_set[:3], config, processes=2) == expected
    assert os.listdir(tmp_path) == []
    assert score_pairs([], config) == []


def test_score_pairs_reads_missing_cache_files_from_the_image(tmp_path, pair_set):
    """A worker whose cache file disappeared extracts the image itself."""
    config = SiftConfig(**FAST)
    (a, b), cache = pair_set[0], FeatureCache(tmp_path)
    cache.get(a, config)
    sift_module._init_worker([cache.file_for(a, config), str(tmp_path / "gone.npz")], [a, b], config, 1, False)
    try:
        assert sift_module._score_chunk([(0, 1)]) == [pair_score(a, b, config)]
    finally:
        sift_module._worker.clear()


def test_extract_many_into_the_cache_returns_and_keeps_nothing(tmp_path, photos):
    """keep=False (score_pairs' extraction pass): every image's features land in the cache, equal to
    a fresh extraction, and none is returned (memory stays flat whatever the number of images)."""
    paths = [photos[f"fountain_p11_000{i}.jpg"] for i in range(3)]
    config = SiftConfig(**FAST)
    cache = FeatureCache(tmp_path)
    assert extract_many(paths + paths[:1], config, cache, keep=False) is None
    assert (cache.misses, cache.hits) == (3, 0)  # the repeat extracted once
    for path in paths:
        assert features_equal(cache.get(path, config), extract(path, config))
    assert (cache.misses, cache.hits) == (3, 3)
    with pytest.raises(ValueError, match="keep=False needs a cache"):
        extract_many(paths, config, keep=False)


def test_score_pairs_argument_errors(pair_set):
    with pytest.raises(ValueError, match="processes must be an integer >= 1, got 0"):
        score_pairs(pair_set, processes=0)
    with pytest.raises(ValueError, match=r"pairs must be \(path_a, path_b\) tuples"):
        score_pairs([("a", "b", "c")])


def test_flann_matches_close_to_brute_force(photos):
    a, b = photos["fountain_p11_0000.jpg"], photos["fountain_p11_0001.jpg"]
    bf, flann = (pair_score(a, b, SiftConfig(max_side=MAX_SIDE, matcher=m)) for m in ("bf", "flann"))
    assert bf.n_inliers >= 100
    assert abs(flann.n_inliers - bf.n_inliers) <= 0.05 * bf.n_inliers
    with pytest.raises(ConfigError, match="matcher must be one of \\('bf', 'flann'\\), got 'kd'"):
        SiftConfig(matcher="kd")
    with pytest.raises(ValueError, match="matcher must be one of"):
        match(A, B, matcher="kd")
    # FLANN distances are Euclidean (not squared) and ties never pass, as with brute force
    np.testing.assert_array_equal(match(A, B, 0.8, True, "flann"), [[0, 0], [2, 3]])
    np.testing.assert_array_equal(match(A, B, 1.0, False, "flann"), [[0, 0], [2, 3], [3, 3]])


@pytest.mark.parametrize("n, dim, k", [(40, 8, 1), (60, 16, 5), (25, 4, 24)])
def test_shortlist_pairs_against_brute_force(n, dim, k):
    x = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    d = np.linalg.norm(x[:, None].astype(np.float64) - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    expected = {(min(i, j), max(i, j)) for i in range(n) for j in np.argsort(d[i])[:k]}
    result = shortlist_pairs(x, k)
    assert result == sorted(expected)
    assert all(isinstance(i, int) and isinstance(j, int) and i < j for i, j in result)
    assert n * k / 2 <= len(result) <= n * k
    if k == n - 1:
        assert len(result) == n * (n - 1) // 2
    with pytest.raises(ValueError, match="k must be between 1"):
        shortlist_pairs(x, n)


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_shortlist_pairs_with_an_approximate_index(index):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(40, 16))[rng.integers(0, 40, 3000)] + 0.5 * rng.normal(size=(3000, 16)))
    exact = set(shortlist_pairs(x.astype(np.float32), 5))
    approximate = shortlist_pairs(x.astype(np.float32), 5, index)
    assert all(i < j for i, j in approximate) and len(set(approximate)) == len(approximate)
    assert len(exact & set(approximate)) >= 0.9 * len(exact)


@pytest.mark.parametrize("matcher", ["bf", "flann"])
def test_mutual_check_equals_a_full_reverse_search(photos, matcher):
    """match() looks up the reverse nearest neighbour only of matched b's: same result as all of them."""
    config = SiftConfig(max_side=MAX_SIDE, n_features=1500)
    a, b = (extract(photos[name], config).descriptors
            for name in ("sacre_coeur_02928139_3448003521.jpg", "sacre_coeur_03903474_1471484089.jpg"))
    one_way = match(a, b, 0.8, mutual=False, matcher=matcher)
    if matcher == "flann":
        nearest = {m.queryIdx: m.trainIdx for m in sift_module._flann(a).match(b)}
    else:
        nearest = {m.queryIdx: m.trainIdx for m in cv2.BFMatcher(cv2.NORM_L2).match(b, a)}
    expected = [(i, j) for i, j in one_way if nearest[j] == i]
    assert 20 <= len(expected) < len(one_way)
    np.testing.assert_array_equal(match(a, b, 0.8, mutual=True, matcher=matcher), expected)


# --------------------------------------------------------------------------- evidence


def _features(xy, descriptors=None, size=(480, 640), scale=1.0):
    from imgsim.sift import Features

    xy = np.asarray(xy, np.float32).reshape(-1, 2)
    if descriptors is None:
        descriptors = np.random.default_rng(len(xy)).random((len(xy), 128)).astype(np.float32)
    return Features(keypoints=xy, scales=np.ones(len(xy), np.float32), angles=np.zeros(len(xy), np.float32),
                    descriptors=np.asarray(descriptors, np.float32), image_size=size, scale=scale)


def test_static_matches_hand_worked():
    from imgsim.sift import static_matches

    a = _features([[10, 10], [100, 50], [300, 200]])
    b = _features([[10.4, 10.3], [105, 50], [300, 200.9]])
    matches = np.array([[0, 0], [1, 1], [2, 2]])
    assert static_matches(a, b, matches, 1.0).tolist() == [True, False, True]
    assert static_matches(a, b, matches, 0).tolist() == [False] * 3
    other = _features(b.keypoints, size=(480, 641))  # no common pixel grid
    assert not static_matches(a, other, matches, 1.0).any()
    # displacements are measured in resized pixels: 0.8 original px at scale 0.5 is 0.4
    half = (_features([[0, 0]], scale=0.5), _features([[0.8, 0]], scale=0.5))
    assert static_matches(*half, np.array([[0, 0]]), 0.5).tolist() == [True]


def test_still_keypoints_against_brute_force():
    from imgsim.sift import still_keypoints

    rng = np.random.default_rng(3)
    xy_a = rng.uniform(0, 600, (400, 2))
    desc_a = rng.random((400, 128))
    xy_b = rng.uniform(0, 600, (400, 2))
    desc_b = rng.random((400, 128))
    # 60 keypoints of A repeat in B within a pixel, 40 of them with the same descriptor
    xy_b[:60] = xy_a[:60] + rng.uniform(-0.6, 0.6, (60, 2))
    desc_b[:40] = desc_a[:40] + rng.normal(0, 0.01, (40, 128))
    a, b = _features(xy_a, desc_a), _features(xy_b, desc_b)
    got_a, got_b = still_keypoints(a, b, 1.0)
    cosine = (desc_a @ desc_b.T) / np.outer(np.linalg.norm(desc_a, axis=1), np.linalg.norm(desc_b, axis=1))
    near = np.linalg.norm(xy_a[:, None] - xy_b[None], axis=-1) <= 1.0
    want = {i for i in range(400) if (near[i] & (cosine[i] >= 0.9)).any()}
    assert set(got_a.tolist()) == want and want >= set(range(40))
    assert all(near[i, j] and cosine[i, j] >= 0.9 for i, j in zip(got_a, got_b))
    assert len(still_keypoints(a, _features(xy_b, desc_b, size=(481, 640)), 1.0)[0]) == 0


def test_backdrop_keypoints_need_something_that_moved():
    from imgsim.sift import backdrop_keypoints

    a = _features([[10, 10], [20, 20], [300, 300]], np.eye(3, 128))
    b = _features([[10.2, 10], [20, 20.2], [30, 300]], np.eye(3, 128))
    marks = backdrop_keypoints([a, b], [(0, 1)], [40], 1.0, min_moving=30)
    assert marks[0].tolist() == [True, True, False] and marks[1].tolist() == [True, True, False]
    assert backdrop_keypoints([a, b], [(0, 1)], [10], 1.0, min_moving=30) == {}  # near-duplicates


def test_pair_evidence_planar_versus_3d_and_spread():
    from imgsim.sift import pair_evidence

    rng = np.random.default_rng(0)
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    # points on one plane z = 5 (a poster) and points at depths 3 to 12 (a 3-D scene)
    plane = np.column_stack([rng.uniform(-2, 2, 200), rng.uniform(-1.5, 1.5, 200), np.full(200, 5.0)])
    depth = rng.uniform(3, 12, 200)
    scene = np.column_stack([rng.uniform(-0.6, 0.6, 200) * depth, rng.uniform(-0.45, 0.45, 200) * depth,
                             depth])
    angle = np.radians(8)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-0.8, 0.05, 0.1])

    def project(points, R=np.eye(3), t=np.zeros(3)):
        p = (points @ R.T + t) @ K.T
        return p[:, :2] / p[:, 2:]

    for points, planar in ((plane, True), (scene, False)):
        xa, xb = project(points), project(points, R, t)
        inside = ((xa >= 0) & (xa < [640, 480])).all(1) & ((xb >= 0) & (xb < [640, 480])).all(1)
        xa, xb = xa[inside], xb[inside]
        n = len(xa)
        n_planar, spread = pair_evidence(_features(xa), _features(xb), np.column_stack([np.arange(n)] * 2))
        assert (n_planar == n) if planar else (n_planar < 0.5 * n), (planar, n_planar, n)
        cells = lambda xy: len({(int(y * 8 // 480), int(x * 8 // 640)) for x, y in xy})  # noqa: E731
        assert spread == pytest.approx(min(cells(xa), cells(xb)) / 64)
    assert pair_evidence(_features(xa), _features(xb), np.zeros((0, 2))) == (0, 0.0)


def test_cache_digest_is_the_files_sha256_and_follows_a_rewrite(tmp_path):
    """FeatureCache.digest (shared by reconstruct's stage keys and the feature files) is the
    SHA-256 of the bytes, and a file rewritten in place gets its new content's digest."""
    import hashlib

    path = tmp_path / "a.jpg"
    path.write_bytes(b"first photo")
    cache = FeatureCache(tmp_path / "cache")
    assert cache.digest(path) == hashlib.sha256(b"first photo").hexdigest()
    with open(path, "wb") as f:  # same inode, same size
        f.write(b"other photo")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert cache.digest(path) == hashlib.sha256(b"other photo").hexdigest()
    assert os.path.basename(cache.file_for(path)).startswith(hashlib.sha256(b"other photo").hexdigest())
