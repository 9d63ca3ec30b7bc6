"""The IMC 2025 score (imgsim.imc) on hand-made ground truth with hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from imgsim.errors import DataLayoutError
from imgsim.imc import camera_centres, horn_similarity, mAA, register_by_ransac, score

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
                 "registered": 8, "total": 8}
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
