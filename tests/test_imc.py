"""The IMC 2025 score (imgsim.imc) on hand-made ground truth with hand-computed values."""

import csv
import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import reference_path
from imgsim.errors import DataLayoutError
from imgsim.imc import (ScoreWarning, camera_centres, horn_similarity, mAA, read_submission,
                        register_by_ransac, score)

# dataset -> scene -> number of cameras; "outliers" images have no pose
LAYOUT = {"ds1": {"a": 8, "b": 10, "outliers": 2}, "ds2": {"c": 6, "d": 7, "outliers": 1}}
NAN_R, NAN_T = ";".join(["nan"] * 9), "nan;nan;nan"


def rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def fmt(values):
    return ";".join(repr(float(v)) for v in np.ravel(values))


def make_gt(seed=0):
    """Rows dataset, scene, image, R (3, 3) or None, t (3,) or None."""
    rng, rows = np.random.default_rng(seed), []
    for ds, scenes in LAYOUT.items():
        for sc, n in scenes.items():
            for i in range(n):
                if sc == "outliers":
                    rows.append([ds, sc, f"{ds}_{sc}_{i}.png", None, None])
                else:
                    R, c = rotation(rng), rng.normal(scale=5.0, size=3)
                    rows.append([ds, sc, f"{ds}_{sc}_{i}.png", R, -R @ c])
    return rows


def to_frame(rows, image_id=True):
    df = pd.DataFrame({
        "dataset": [r[0] for r in rows], "scene": [r[1] for r in rows],
        "image": [r[2] for r in rows],
        "rotation_matrix": [NAN_R if r[3] is None else fmt(r[3]) for r in rows],
        "translation_vector": [NAN_T if r[4] is None else fmt(r[4]) for r in rows]})
    if image_id:
        df.insert(0, "image_id", [f"id{i}" for i in range(len(rows))])
    return df


@pytest.fixture
def gt_rows():
    return make_gt()


@pytest.fixture
def gt_csv(tmp_path, gt_rows):
    path = tmp_path / "gt.csv"
    to_frame(gt_rows, image_id=False).to_csv(path, index=False)
    return path


def write(tmp_path, rows, name="submission.csv"):
    path = tmp_path / name
    to_frame(rows).to_csv(path, index=False)
    return path


def harmonic(a, b):
    return 2 * a * b / (a + b)


def test_camera_centres_and_horn():
    np.testing.assert_allclose(camera_centres(np.eye(3), [1.0, 2.0, 3.0]), [-1, -2, -3])
    rng = np.random.default_rng(3)
    for _ in range(5):
        Q, s, b = rotation(rng), rng.uniform(0.1, 10), rng.normal(size=3) * 10
        src = rng.normal(size=(6, 3))
        s2, R2, t2 = horn_similarity(src, s * src @ Q.T + b)
        assert abs(s2 - s) < 1e-9 and np.abs(R2 - Q).max() < 1e-9 and np.abs(t2 - b).max() < 1e-9


def test_mAA_formula():
    # thresholds 1..5, the first two skipped; 6 cameras; errors per camera
    e = np.array([0.5, 2.5, 2.5, 3.5, 3.5, 9.0])
    err = np.repeat(e[:, None], 5, axis=1)
    # kept thresholds 3, 4, 5: hits 3, 5, 5 -> (0 + 2 + 2) / (3 * (6 - 3))
    assert mAA(err, [1, 2, 3, 4, 5], 6) == pytest.approx(4 / 9)
    assert mAA(err[:2], [1, 2, 3, 4, 5], 6) == 0.0


def test_ransac_sampled_triplets_and_outlier():
    rng = np.random.default_rng(5)
    dst = rng.normal(size=(12, 3))
    src = 3.0 * dst @ rotation(rng) + 1.0
    src[4] += 50.0
    src[7] = np.nan
    err = register_by_ransac(src, dst, [0.01, 0.1], max_triplets=10, seed=1)
    assert err.shape == (12, 2) and np.isinf(err[7]).all() and (err[4] > 10).all()
    assert np.delete(err, [4, 7], axis=0).max() < 1e-9


def test_perfect_submission_scores_100(tmp_path, gt_csv, gt_rows):
    result = score(gt_csv, write(tmp_path, gt_rows))
    assert result["score"] == pytest.approx(100.0)
    a = result["datasets"]["ds1"]["scenes"]["a"]
    assert a == {"maa": pytest.approx(1.0), "clusterness": 1.0, "cluster": "a", "shared": 8,
                 "registered": 8, "posed": 8, "total": 8}
    assert "outliers" not in result["datasets"]["ds1"]["scenes"]


def test_dataframes_and_no_image_id(gt_rows):
    assert score(to_frame(gt_rows, False), to_frame(gt_rows, False))["score"] == pytest.approx(100)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_transformed_submission_scores_100(tmp_path, gt_csv, gt_rows, seed):
    # World change X' = s Q X + b, a different one per scene: R' = R Q^T,
    # t' = s t - R Q^T b, so that the centre becomes c' = s Q c + b.
    rng, transforms, rows = np.random.default_rng(100 + seed), {}, []
    for ds, sc, image, R, t in gt_rows:
        if R is not None:
            s, Q, b = transforms.setdefault(
                (ds, sc), (rng.uniform(0.01, 100), rotation(rng), rng.normal(size=3) * 50))
            R2, t2 = R @ Q.T, s * t - R @ Q.T @ b
            np.testing.assert_allclose(camera_centres(R2, t2), s * Q @ camera_centres(R, t) + b)
            R, t = R2, t2
        rows.append([ds, sc, image, R, t])
    assert score(gt_csv, write(tmp_path, rows))["score"] == pytest.approx(100.0)


def test_all_nan_scores_0(tmp_path, gt_csv, gt_rows):
    result = score(gt_csv, write(tmp_path, [r[:3] + [None, None] for r in gt_rows]))
    assert result["score"] == 0.0
    assert result["datasets"]["ds2"]["maa"] == 0.0 and result["datasets"]["ds2"]["clusterness"] == 1.0
    assert result["datasets"]["ds2"]["scenes"]["c"]["registered"] == 0


def test_merged_scenes_lose_clusterness(tmp_path, gt_csv, gt_rows):
    rows = [[ds, "x" if sc in ("a", "b") else sc, *rest] for ds, sc, *rest in gt_rows]
    ds1 = score(gt_csv, write(tmp_path, rows))["datasets"]["ds1"]
    # a: 8 shared of cluster x (18), b: 10 shared of x (18) -> (8 + 10) / (18 + 18)
    assert ds1["clusterness"] == pytest.approx(18 / 36)
    assert ds1["maa"] == pytest.approx(1.0)
    assert ds1["scenes"]["a"]["cluster"] == ds1["scenes"]["b"]["cluster"] == "x"
    assert ds1["score"] == pytest.approx(harmonic(1.0, 0.5))


def test_outliers_put_in_a_cluster_lower_clusterness(tmp_path, gt_csv, gt_rows):
    rows = [[ds, "a" if (ds, sc) == ("ds1", "outliers") else sc, *rest] for ds, sc, *rest in gt_rows]
    result = score(gt_csv, write(tmp_path, rows))
    # a: 8 of 10 images, b: 10 of 10 -> 18 / 20
    assert result["datasets"]["ds1"]["clusterness"] == pytest.approx(18 / 20)
    assert result["score"] == pytest.approx(100 * (harmonic(1.0, 0.9) + 1.0) / 2)


def move(row, shift):
    ds, sc, image, R, t = row
    return [ds, sc, image, R, -R @ (camera_centres(R, t) + shift)]


def test_far_moved_cameras_lower_mAA(tmp_path, gt_csv, gt_rows):
    # two cameras of scene b (10 cameras) moved 1000 units, far beyond every
    # default threshold (<= 0.1 x median radius of ~5-unit spread)
    rows = [move(r, [1000.0, 0, 0]) if r[2] in ("ds1_b_0.png", "ds1_b_5.png") else r
            for r in gt_rows]
    ds1 = score(gt_csv, write(tmp_path, rows))["datasets"]["ds1"]
    # 4 kept thresholds; a: 4 * (8 - 3) = 20 of 20; b: 4 * (10 - 2 - 3) = 20 of 28
    assert ds1["scenes"]["b"]["maa"] == pytest.approx(20 / 28)
    assert ds1["maa"] == pytest.approx(40 / 48)
    assert ds1["score"] == pytest.approx(harmonic(40 / 48, 1.0))


def test_thresholds_file(tmp_path, gt_csv, gt_rows):
    # scene a gets thresholds 0.01;0.02 (skipped) 0.1;0.2;1;2; one camera moved by 0.5
    path = tmp_path / "thresholds.csv"
    path.write_text("dataset,scene,thresholds\nds1,a,0.01;0.02;0.1;0.2;1;2\n")
    rows = [move(r, [0.3, 0.4, 0.0]) if r[2] == "ds1_a_3.png" else r for r in gt_rows]
    ds1 = score(gt_csv, write(tmp_path, rows), path)["datasets"]["ds1"]
    # hits 7, 7, 8, 8 -> (4 + 4 + 5 + 5) / (4 * 5); b (defaults) perfect: 28 / 28
    assert ds1["scenes"]["a"]["maa"] == pytest.approx(18 / 20)
    assert ds1["maa"] == pytest.approx((18 + 28) / (20 + 28))


def test_tie_in_shared_images_goes_to_higher_mAA(tmp_path, gt_csv, gt_rows):
    # scene b split in two clusters of 5: b1 (listed first) unregistered, b2 exact
    rows = [[ds, sc, image, None, None] for ds, sc, image, *_ in gt_rows
            if image in {f"ds1_b_{i}.png" for i in range(5)}]
    rows = [[r[0], "b1", *r[2:]] for r in rows]
    rows += [[ds, "b2", *rest] if sc == "b" and ds == "ds1" else [ds, sc, *rest]
             for ds, sc, *rest in gt_rows if not rest[0].startswith("ds1_b_") or int(rest[0][6]) >= 5]
    ds1 = score(gt_csv, write(tmp_path, rows))["datasets"]["ds1"]
    assert ds1["scenes"]["b"]["cluster"] == "b2"
    assert ds1["scenes"]["b"]["maa"] == pytest.approx(4 * 2 / (4 * 7))
    assert ds1["maa"] == pytest.approx((20 + 8) / (20 + 28)) and ds1["clusterness"] == 1.0


def test_ground_truth_without_pose_is_not_scored(tmp_path, gt_rows):
    rows = [r[:3] + [None, None] if r[2] == "ds2_d_0.png" else r for r in gt_rows]
    gt = tmp_path / "gt_nan.csv"
    to_frame(rows, image_id=False).to_csv(gt, index=False)
    result = score(gt, write(tmp_path, gt_rows))
    assert result["score"] == pytest.approx(100.0)
    assert result["datasets"]["ds2"]["scenes"]["d"]["shared"] == 7


def test_identical_centres_cannot_register(tmp_path, gt_csv, gt_rows):
    rows = [r[:3] + [np.eye(3), np.zeros(3)] for r in gt_rows]
    result = score(gt_csv, write(tmp_path, rows))
    assert result["score"] == 0.0 and result["datasets"]["ds1"]["scenes"]["b"]["registered"] == 10


def test_scene_left_in_outliers_matches_no_cluster(tmp_path, gt_csv, gt_rows):
    rows = [[ds, "outliers" if (ds, sc) == ("ds1", "a") else sc, *rest] for ds, sc, *rest in gt_rows]
    ds1 = score(gt_csv, write(tmp_path, rows))["datasets"]["ds1"]
    assert ds1["scenes"]["a"]["cluster"] is None and ds1["scenes"]["a"]["maa"] == 0.0
    # a still counts 4 * (8 - 3) in the denominator; b: 28 of 28; clusterness 10 / 10
    assert ds1["maa"] == pytest.approx(28 / 48) and ds1["clusterness"] == 1.0


def line_of(path, image):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if image in line)


@pytest.mark.parametrize("column,value,message", [
    ("rotation_matrix", "1;0;0;0;1;0;0;0", "rotation_matrix has 8 values, expected 9"),
    ("translation_vector", "1;2", "translation_vector has 2 values, expected 3"),
    ("translation_vector", "1;x;3", "translation_vector has a non-numeric value"),
    ("rotation_matrix", "1;0;0;0;1;0;0;0;one", "rotation_matrix has a non-numeric value"),
])
def test_bad_values_name_the_row(tmp_path, gt_csv, gt_rows, column, value, message):
    df = to_frame(gt_rows)
    df.loc[df["image"] == "ds2_c_2.png", column] = value
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataLayoutError, match=f"bad.csv row {line_of(path, 'ds2_c_2.png')}: {message}"):
        score(gt_csv, path)


def test_missing_column(tmp_path, gt_csv, gt_rows):
    path = tmp_path / "bad.csv"
    to_frame(gt_rows).drop(columns="translation_vector").to_csv(path, index=False)
    with pytest.raises(DataLayoutError, match="bad.csv: missing column.*translation_vector"):
        score(gt_csv, path)


def test_unknown_image(tmp_path, gt_csv, gt_rows):
    path = write(tmp_path, gt_rows + [["ds1", "a", "stranger.png", None, None]])
    with pytest.raises(DataLayoutError, match=f"row {line_of(path, 'stranger.png')}: .*stranger.png"):
        score(gt_csv, path)
    # a known image under the wrong dataset is unknown too
    path = write(tmp_path, gt_rows + [["ds2", "c", "ds1_a_0.png", None, None]])
    with pytest.raises(DataLayoutError, match=f"row {len(gt_rows) + 2}: .*ds1_a_0.png"):
        score(gt_csv, path)


def test_duplicate_image(tmp_path, gt_csv, gt_rows):
    path = write(tmp_path, gt_rows + [["ds1", "b", "ds1_a_1.png", None, None]])
    with pytest.raises(DataLayoutError, match=f"row {len(gt_rows) + 2}: image 'ds1_a_1.png'.*twice"):
        score(gt_csv, path)


def test_missing_dataset_or_image(tmp_path, gt_csv, gt_rows):
    with pytest.raises(DataLayoutError, match="dataset 'ds2' is missing"):
        score(gt_csv, write(tmp_path, [r for r in gt_rows if r[0] == "ds1"]))
    with pytest.raises(DataLayoutError, match="'ds1_b_4.png'"):
        score(gt_csv, write(tmp_path, [r for r in gt_rows if r[2] != "ds1_b_4.png"]))


def test_dataframe_errors_name_submission(gt_csv, gt_rows):
    df = to_frame(gt_rows)
    df.loc[3, "rotation_matrix"] = "1;2"
    with pytest.raises(DataLayoutError, match="submission row 5: rotation_matrix has 2 values"):
        score(gt_csv, df)


# --------------------------------------------------------------------------- the two rules, hand-worked
# Every case below has thresholds rows of 4 values (lt = 4 - 2 = 2 kept thresholds, far above the
# ~1e-14 errors of an exact pose and far below the 1000-unit moves), so a scene of m cameras
# registered exactly adds lt (m - 3) = 2 (m - 3) to the mAA numerator.

LT = 2


def scene_rows(rng, ds, sc, n, cluster=None, gt_pose=True):
    """[gt row, submission row] pairs of one scene; the submission copies the true pose."""
    out = []
    for i in range(n):
        R, c = rotation(rng), rng.normal(scale=5.0, size=3)
        pose = [R, -R @ c] if gt_pose else [None, None]
        image = f"{ds}_{sc}_{i}.png"
        out.append(([ds, sc, image, *pose], [ds, cluster or sc, image, *pose]))
    return out


def frames(tmp_path, pairs, tag=""):
    """gt.csv, submission.csv (rows in the given order) and thresholds.csv of 4 values per scene."""
    gt, sub = tmp_path / f"gt{tag}.csv", tmp_path / f"sub{tag}.csv"
    to_frame([g for g, _ in pairs], image_id=False).to_csv(gt, index=False)
    to_frame([s for _, s in pairs]).to_csv(sub, index=False)
    scenes = sorted({(g[0], g[1]) for g, _ in pairs if g[1] != "outliers"})
    th = tmp_path / f"th{tag}.csv"
    th.write_text("dataset,scene,thresholds\n" + "".join(f"{d},{s},0.001;0.002;0.1;0.5\n" for d, s in scenes))
    return gt, sub, th


def both(gt, sub, th=None):
    """imgsim's and the official rule's results; their ScoreWarnings are in result["warnings"]."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        default = score(gt, sub, th)
        official = score(gt, sub, th, official=True)
    assert [str(w.message) for w in record] == default["warnings"] + official["warnings"]
    assert all(w.category is ScoreWarning for w in record)
    return default, official


def museum_pairs(rng, first):
    """A: 10 cameras, 4 moved 1000 units; B: 8 exact; C: 6, all left in outliers; 2 true outliers."""
    a = scene_rows(rng, "m", "A", 10, "a")
    for i, shift in enumerate(([1000, 0, 0], [0, 1000, 0], [0, 0, 1000], [-1000, 700, 0])):
        a[i] = (a[i][0], move(a[i][1], np.array(shift, float)))
    b = scene_rows(rng, "m", "B", 8, "b")
    c = scene_rows(rng, "m", "C", 6, "outliers")
    out = [([*g[:3], None, None], [*s[:1], "outliers", s[2], None, None])
           for g, s in scene_rows(rng, "m", "outliers", 2)]
    return (out + a + b + c) if first == "outliers" else (b + a + c + out)


@pytest.mark.parametrize("first", ["outliers", "b"])
def test_museum_scene_sharing_no_image(tmp_path, first):
    # numerators: A 6 of 10 within every kept threshold: 2 (6 - 3) = 6; B 2 (8 - 3) = 10; C none.
    # imgsim: den 2 (7 + 5 + 3) = 30, mAA 16/30, clusterness (10 + 8) / (10 + 8) -> 16/23.
    # official, outliers the submission's first scene: C matches it with m = 0:
    #   den 2 (10 + 8 + 0 - 3 * 3) = 18, mAA 16/18, clusterness 18/18 -> 16/17;
    # official, cluster b first: C matches b (0 shared) with m = 6: den 2 (24 - 9) = 30, mAA 16/30,
    #   clusterness 18 / (10 + 8 + 8) = 9/13 -> 2 (8/15)(9/13) / (8/15 + 9/13) = 144/239.
    default, official = both(*frames(tmp_path, museum_pairs(np.random.default_rng(7), first)))
    d, o = default["datasets"]["m"], official["datasets"]["m"]
    assert d["scenes"]["C"]["cluster"] is None and d["maa"] == pytest.approx(16 / 30, abs=1e-12)
    assert d["clusterness"] == 1.0 and default["score"] == pytest.approx(100 * 16 / 23, abs=1e-12)
    assert o["scenes"]["C"]["cluster"] == first
    if first == "outliers":
        assert o["maa"] == pytest.approx(16 / 18, abs=1e-12) and o["clusterness"] == 1.0
        assert official["score"] == pytest.approx(100 * 16 / 17, abs=1e-12)
    else:
        assert o["maa"] == pytest.approx(16 / 30, abs=1e-12) and o["clusterness"] == pytest.approx(9 / 13)
        assert official["score"] == pytest.approx(100 * 144 / 239, abs=1e-12)
    assert any("m/C: shares no image" in w and repr(first) in w for w in official["warnings"])


def test_scene_of_two_images(tmp_path):
    # A (6 exact) and D (2 exact). imgsim leaves D out: 6/6 -> 100. official: den 2 (6 + 2 - 6) = 4,
    # mAA 6/4 = 1.5, clusterness 1 -> 2 * 1.5 / 2.5 = 1.2: a score of 120.
    rng = np.random.default_rng(1)
    default, official = both(*frames(tmp_path, scene_rows(rng, "x", "A", 6) + scene_rows(rng, "x", "D", 2)))
    assert default["score"] == 100.0 and default["datasets"]["x"]["maa"] == 1.0
    assert official["datasets"]["x"]["maa"] == 1.5 and official["score"] == pytest.approx(120.0)
    assert any("left out of mAA" in w and "'D'" in w for w in default["warnings"])
    assert any("exceeds 1" in w for w in official["warnings"])


def test_dataset_without_poses(tmp_path):
    # y: one scene of 5 images, no true pose. imgsim: y left out, mean of x alone = 100;
    # official: y scores 0 (mAA 0, clusterness 1), mean (100 + 0) / 2 = 50.
    rng = np.random.default_rng(2)
    pairs = scene_rows(rng, "x", "A", 6) + scene_rows(rng, "y", "U", 5, gt_pose=False)
    default, official = both(*frames(tmp_path, pairs))
    assert default["score"] == 100.0 and default["datasets"]["y"]["score"] is None
    assert default["datasets"]["y"]["clusterness"] == 1.0
    assert any(w.startswith("y: no scene has more than 3 posed") for w in default["warnings"])
    assert official["score"] == pytest.approx(50.0) and official["datasets"]["y"]["score"] == 0.0
    assert any(w.startswith("y: no posed ground truth") for w in official["warnings"])


@pytest.mark.parametrize("pose_the_unposed", [False, True])
def test_unposed_images_in_a_posed_scene(tmp_path, pose_the_unposed):
    # K: 8 images, 2 without a true pose, the other 6 exact. imgsim: m = 6, mAA 2*3 / (2*3) = 1;
    # official: m = 8, mAA 6 / (2 * 5) = 0.6, score 2 * 0.6 / 1.6 = 0.75. Posing the 2 makes the
    # official code fail (LinAlgError); imgsim's official rule scores them as never within a threshold.
    rng = np.random.default_rng(3)
    pairs = scene_rows(rng, "x", "K", 8)
    for i in (2, 5):
        g, s = pairs[i]
        pairs[i] = ([*g[:3], None, None], s if pose_the_unposed else [*s[:3], None, None])
    default, official = both(*frames(tmp_path, pairs))
    assert default["score"] == 100.0
    assert official["datasets"]["x"]["maa"] == pytest.approx(0.6) and official["score"] == pytest.approx(75.0)
    assert any("LinAlgError" in w for w in official["warnings"]) == pose_the_unposed
    assert any("'K': 2 of 8" in w for w in official["warnings"]) and not default["warnings"]


@pytest.mark.parametrize("official", [False, True])
def test_tied_clusters_go_to_the_first_row(tmp_path, official):
    # A (8) split into p and q of 4 exact cameras each: equal shared counts and numerators
    # (2 (4 - 3) = 2), so the cluster of the first row wins; mAA 2 / (2 * 5) = 0.2 either way.
    rng = np.random.default_rng(4)
    pairs = [(g, [s[0], "pq"[i % 2], *s[2:]]) for i, (g, s) in enumerate(scene_rows(rng, "x", "A", 8))]
    for order, want in ((pairs, "p"), (pairs[1:] + pairs[:1], "q")):
        result = score(*frames(tmp_path, order), official=official)
        a = result["datasets"]["x"]["scenes"]["A"]
        assert a["cluster"] == want and a["shared"] == 4 and not result["warnings"]
        assert result["datasets"]["x"]["maa"] == pytest.approx(0.2, abs=1e-12)


def test_official_rule_needs_one_thresholds_length(tmp_path, gt_csv, gt_rows):
    path = tmp_path / "thresholds.csv"
    path.write_text("dataset,scene,thresholds\nds1,a,0.01;0.02;0.1;0.2;1;2;3\n")
    assert score(gt_csv, write(tmp_path, gt_rows), path)["score"] == pytest.approx(100.0)
    with pytest.raises(DataLayoutError, match=r"thresholds.csv: the official metric needs one number .*\[6, 7\]"):
        score(gt_csv, write(tmp_path, gt_rows), path, official=True)
    with pytest.warns(ScoreWarning, match="4 scene.s. without a thresholds row"):
        assert score(gt_csv, write(tmp_path, gt_rows), official=True)["score"] == pytest.approx(100.0)


def test_perfect_submission_with_scenes_of_1_2_3_and_more_posed_images_scores_exactly_100(tmp_path):
    rng = np.random.default_rng(5)
    pairs = []
    for d, sizes in enumerate([(1, 2, 3, 9), (4, 2), (3, 5, 1, 12, 6)]):
        for s, n in enumerate(sizes):
            pairs += scene_rows(rng, f"d{d}", f"s{s}", n)
    gt, sub, _ = frames(tmp_path, pairs)
    with pytest.warns(ScoreWarning, match="fewer than 3 posed images left out"):
        result = score(gt, sub)
    assert result["score"] == 100.0 and all(d["maa"] == 1.0 for d in result["datasets"].values())


def random_case(rng):
    """A random ground truth (scenes of 1-12 images, some unposed, outliers) and a submission
    (scenes kept, split, merged, left in outliers or scattered; exact, noisy, far-off or missing poses),
    both in shuffled row order: lists of [dataset, scene, image, R or None, t or None]."""
    gt, sub = [], []
    for d in range(rng.integers(1, 4)):
        ds, n_scenes = f"ds{d}", int(rng.integers(1, 5))
        for s in range(n_scenes):
            sc, n, radius = f"s{s}", int(rng.choice([1, 2, 3, 4, 5, 6, 8, 10, 12])), rng.uniform(0.5, 20)
            mode = rng.choice(["same", "split", "merge", "outliers", "scatter"], p=[.4, .15, .15, .1, .2])
            Q, scale, shift, unposed = rotation(rng), rng.uniform(0.1, 10), rng.normal(size=3) * 5, rng.random() < .1
            for i in range(n):
                R, c = rotation(rng), rng.normal(size=3) * radius
                cluster = {"same": f"c{s}", "split": f"c{s}{'ab'[i % 2]}", "merge": "cm", "outliers": "outliers",
                           "scatter": rng.choice([f"c{s}", f"c{s}", "outliers", f"c{(s + 1) % n_scenes}"])}[mode]
                gt.append([ds, sc, f"{ds}_{sc}_{i}.jpg"] + ([None, None] if unposed else [R, -R @ c]))
                if cluster == "outliers" or unposed or rng.random() < 0.15:
                    sub.append([ds, cluster, f"{ds}_{sc}_{i}.jpg", None, None])
                    continue
                noise = radius * rng.choice([0.001, 0.02, 0.1, 3.0], p=[.4, .3, .2, .1]) * rng.normal(size=3)
                R2 = rotation(rng)
                sub.append([ds, cluster, f"{ds}_{sc}_{i}.jpg", R2, -R2 @ (scale * Q @ c + shift + noise)])
        for i in range(rng.integers(0, 5)):
            gt.append([ds, "outliers", f"{ds}_out_{i}.jpg", None, None])
            sub.append([ds, rng.choice(["outliers", "c0", "cm"]), f"{ds}_out_{i}.jpg", None, None])
    return [gt[i] for i in rng.permutation(len(gt))], [sub[i] for i in rng.permutation(len(sub))]


def write_case(tmp_path, rng, tag):
    gt_rows, sub_rows = random_case(rng)
    gt, sub, th = tmp_path / f"gt{tag}.csv", tmp_path / f"sub{tag}.csv", tmp_path / f"th{tag}.csv"
    to_frame(gt_rows, image_id=False).to_csv(gt, index=False)
    to_frame(sub_rows).to_csv(sub, index=False)
    scenes = sorted({(r[0], r[1]) for r in gt_rows if r[1] != "outliers"})
    th.write_text("dataset,scene,thresholds\n" + "".join(
        f"{d},{s},{fmt(np.sort(rng.uniform(0.01, 3, 5)))}\n" for d, s in scenes))
    return gt, sub, th


def test_random_cases_stay_within_100_and_agree_where_no_quirk_applies(tmp_path):
    """40 random cases: imgsim's rule within [0, 100]; the two rules equal on every dataset where the
    official rule reports no quirk and every scene has more than 3 images, all posed."""
    rng, compared = np.random.default_rng(1000), 0
    for case in range(40):
        gt, sub, th = write_case(tmp_path, rng, case)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScoreWarning)
            official = score(gt, sub, th, official=True)
            try:
                default = score(gt, sub, th)
            except DataLayoutError as exc:  # no dataset with a scene of > 3 posed images
                assert "nothing to score" in str(exc)
                continue
        assert 0.0 <= default["score"] <= 100.0, case
        assert all(d["maa"] is None or 0.0 <= d["maa"] <= 1.0 for d in default["datasets"].values())
        for name, d in official["datasets"].items():
            quirk = any(w.startswith((f"{name}:", f"{name}/")) for w in official["warnings"])
            if not quirk and all(s["posed"] == s["total"] > 3 for s in d["scenes"].values()):
                mine = default["datasets"][name]
                assert (d["maa"], d["clusterness"]) == pytest.approx((mine["maa"], mine["clusterness"]),
                                                                     abs=1e-12), (case, name)
                compared += 1
    assert compared >= 5, compared


def test_official_rule_equals_the_official_codes_stored_values(tmp_path):
    """The 40 cases of tests/reference/imc25_official_scores.json, scored by the IMC 2025 hosts' own
    metric.py outside the repository (scripts/imc25_official_check.py): imgsim's official rule gives
    the same final and per-dataset scores to 1e-12."""
    with open(reference_path("imc25_official_scores.json")) as f:
        cases = json.load(f)["cases"]
    assert len(cases) == 40
    for i, case in enumerate(cases):
        paths = []
        for name in ("gt", "submission", "thresholds"):
            path = tmp_path / f"{i}_{name}.csv"
            path.write_text(case[name])
            paths.append(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScoreWarning)
            ours = score(*paths, official=True)
        expected = case["official"]
        assert ours["score"] == pytest.approx(expected["score"], abs=1e-12), i
        assert set(ours["datasets"]) == set(expected["datasets"]), i
        for name, value in expected["datasets"].items():
            assert 100 * ours["datasets"][name]["score"] == pytest.approx(value, abs=1e-12), (i, name)


# --------------------------------------------------------------------------- submissions the official reader takes


def official_rows(path):
    """Read a CSV as the official metric does: csv module, split on ';', reshape to (3, 3) and (3,)."""
    with open(path, newline="\n") as f:
        rows = list(csv.reader(f))
    col = {name: i for i, name in enumerate(rows[0])}
    return [(row[col["dataset"]], row[col["scene"]], row[col["image"]],
             np.array([float(x) for x in row[col["rotation_matrix"]].split(";")]).reshape(3, 3),
             np.array([float(x) for x in row[col["translation_vector"]].split(";")]).reshape(3))
            for row in rows[1:]]


def test_written_submission_parses_the_official_way(tmp_path, gt_csv, gt_rows):
    from imgsim.reconstruct import _join

    assert _join(None, 9) == "nan;nan;nan;nan;nan;nan;nan;nan;nan" and _join(None, 3) == "nan;nan;nan"
    path = tmp_path / "submission.csv"
    pd.DataFrame({"image_id": [f"id{i}" for i in range(len(gt_rows))],
                  "dataset": [r[0] for r in gt_rows], "scene": [r[1] for r in gt_rows],
                  "image": [r[2] for r in gt_rows],
                  "rotation_matrix": [_join(r[3], 9) for r in gt_rows],
                  "translation_vector": [_join(r[4], 3) for r in gt_rows]}).to_csv(path, index=False)
    parsed = official_rows(path)
    assert [p[2] for p in parsed] == [r[2] for r in gt_rows]
    for (_, _, _, R, t), row in zip(parsed, gt_rows):
        if row[3] is None:
            assert np.isnan(R).all() and np.isnan(t).all()
        else:  # 9 significant digits
            np.testing.assert_allclose(R, row[3], rtol=1e-8, atol=1e-9)
            np.testing.assert_allclose(t, row[4], rtol=1e-8, atol=1e-8)
    back = read_submission(path)
    unposed = np.array([r[3] is None for r in gt_rows])
    assert np.isnan(back[["cx", "cy", "cz"]].to_numpy()[unposed]).all()
    assert np.isfinite(back[["cx", "cy", "cz"]].to_numpy()[~unposed]).all()
    with pytest.warns(ScoreWarning, match="without a thresholds row"):
        assert score(gt_csv, path, official=True)["score"] == pytest.approx(100.0)


def test_bare_nan_is_read_by_default_and_refused_by_the_official_rule(tmp_path, gt_csv, gt_rows):
    df = to_frame(gt_rows)
    df.loc[df["scene"] == "outliers", ["rotation_matrix", "translation_vector"]] = "nan"
    path = tmp_path / "bare.csv"
    df.to_csv(path, index=False)
    assert score(gt_csv, path)["score"] == pytest.approx(100.0)
    row = line_of(path, "ds1_outliers_0.png")
    with pytest.raises(DataLayoutError, match=f"bare.csv row {row}: rotation_matrix is 'nan'; the official "
                                              "reader .* needs 9 values, nan;nan;nan;nan;nan;nan;nan;nan;nan"):
        score(gt_csv, path, official=True)


# --------------------------------------------------------------------------- bad input: one line naming file and row


def bad_input_cases(tmp_path, gt_rows):
    """(gt, submission, thresholds, message regex) for each bad input."""
    good_gt, good_sub = tmp_path / "gt.csv", write(tmp_path, gt_rows)
    to_frame(gt_rows, image_id=False).to_csv(good_gt, index=False)
    empty = tmp_path / "empty_gt.csv"
    empty.write_text("dataset,scene,image,rotation_matrix,translation_vector\n")
    blank = to_frame(gt_rows)
    blank.loc[4, "scene"] = " "
    blank.to_csv(tmp_path / "blank.csv", index=False)
    short = tmp_path / "short.csv"
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]
    short.write_text("\n".join(lines) + "\n")
    cases = [(empty, good_sub, None, "empty_gt.csv: no rows, nothing to score"),
             (good_gt, tmp_path / "blank.csv", None, "blank.csv row 6: empty scene"),
             (good_gt, short, None, "short.csv row 4: 5 fields, the header has 6")]
    for i, text in enumerate(["-0.1;0.2;0.3", "nan;0.2;0.3", "0.1;inf;0.3", "0.1;0.2", ""]):
        path = tmp_path / f"th{i}.csv"
        path.write_text(f"dataset,scene,thresholds\nds1,b,0.1;0.2;0.3\nds1,a,{text}\n")
        cases.append((good_gt, good_sub, path, f"th{i}.csv row 3: thresholds needs more than 2 positive finite"))
    dup = tmp_path / "dup.csv"
    dup.write_text("dataset,scene,thresholds\nds1,a,0.1;0.2;0.3\nds1,a,0.1;0.2;0.4\n")
    cases.append((good_gt, good_sub, dup, "dup.csv row 3: scene 'a' of dataset 'ds1' appears twice"))
    return cases


@pytest.mark.parametrize("official", [False, True])
def test_bad_inputs_are_refused(tmp_path, gt_rows, official):
    for gt, sub, th, message in bad_input_cases(tmp_path, gt_rows):
        with pytest.raises(DataLayoutError, match=message):
            score(gt, sub, th, official=official)


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, gt_rows, capsys):
    from imgsim.cli import main

    for gt, sub, th, message in bad_input_cases(tmp_path, gt_rows):
        for flag in ([], ["--official"]):
            argv = ["score", str(gt), str(sub)] + (["--thresholds", str(th)] if th else []) + flag
            assert main(argv) == 2, argv
            err = capsys.readouterr().err.strip()
            assert err.startswith("DataLayoutError: ") and "\n" not in err and "Traceback" not in err, err
            assert re.search(message, err), (message, err)


def test_cli_prints_both_rules(tmp_path, capsys):
    from imgsim.cli import main

    gt, sub, th = frames(tmp_path, museum_pairs(np.random.default_rng(7), "outliers"))
    assert main(["score", str(gt), str(sub), "--thresholds", str(th)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"m: score {100 * 16 / 23:.2f}  mAA {16 / 30:.3f}  clusterness 1.000  "
        f"(official rule: score {100 * 16 / 17:.2f}  mAA {16 / 18:.3f}  clusterness 1.000)",
        f"IMC score: {100 * 16 / 23:.2f} (imgsim rule)", f"official rule: {100 * 16 / 17:.2f}"]
    assert "warning (official rule): m/C: shares no image" in err
    assert main(["score", str(gt), str(sub), "--thresholds", str(th), "--official"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [f"IMC score: {100 * 16 / 17:.2f} (official rule)", f"imgsim rule: {100 * 16 / 23:.2f}"]
    gt, sub, th = frames(tmp_path, scene_rows(np.random.default_rng(8), "x", "A", 7), tag="agree")
    assert main(["score", str(gt), str(sub), "--thresholds", str(th)]) == 0
    assert capsys.readouterr().out.splitlines() == ["x: score 100.00  mAA 1.000  clusterness 1.000",
                                                    "IMC score: 100.00 (imgsim rule)", "official rule: agrees"]
