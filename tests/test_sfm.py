"""imgsim's own COLMAP database: cameras from imgsim's decoding, EXIF focal priors, any format."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from imgsim.errors import ConfigError, ImageDecodeError
from imgsim.sfm import DEFAULT_FOCAL_FACTOR, SfmConfig, camera_groups, image_camera


def _jpeg(path, size=(640, 480), exif=None):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    image.save(path, "JPEG", **({"exif": exif} if exif is not None else {}))
    return str(path)


def _exif(make="Canon", model="EOS", focal_35=None, focal_mm=None, x_res=None, unit=None, width=None):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    sub = exif.get_ifd(0x8769)
    for tag, value in ((0xA405, focal_35), (0x920A, focal_mm), (0xA20E, x_res), (0xA210, unit),
                       (0xA002, width)):
        if value is not None:
            sub[tag] = value
    return exif


def test_image_camera_focal_from_exif_and_default(tmp_path):
    plain = image_camera(_jpeg(tmp_path / "a.jpg"))
    assert plain == {"width": 640, "height": 480, "prior": False, "focal": DEFAULT_FOCAL_FACTOR * 640,
                     "make_model": ""}
    # 35 mm equivalent: the diagonal of a 36 x 24 mm frame maps to the image diagonal
    cam = image_camera(_jpeg(tmp_path / "b.jpg", exif=_exif(focal_35=28)))
    assert cam["prior"] and cam["make_model"] == "Canon EOS"
    assert cam["focal"] == pytest.approx(28 / math.hypot(36, 24) * math.hypot(640, 480))
    # focal length 5 mm, focal plane resolution 200 px per mm (unit 4 = mm), native width 1280:
    # 1000 px at 1280 wide, 500 px in this 640-wide copy
    cam = image_camera(_jpeg(tmp_path / "c.jpg", exif=_exif(focal_mm=5.0, x_res=200.0, unit=4, width=1280)))
    assert cam["focal"] == pytest.approx(500.0)
    assert not image_camera(_jpeg(tmp_path / "d.jpg", exif=_exif(focal_35=28)), exif_focal=False)["prior"]
    (tmp_path / "e.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match="e.jpg"):
        image_camera(tmp_path / "e.jpg")


def test_camera_groups_by_hand():
    same = {"width": 640, "height": 480, "prior": True, "focal": 500.0, "make_model": "Canon EOS"}
    cams = [same, dict(same), dict(same, width=800), dict(same, make_model=""), dict(same, prior=False,
            make_model=""), dict(same, prior=False, make_model="")]
    # auto: one camera for the two identical EXIF cameras and one for the two without EXIF of one
    # size; a make and model without a focal length is another camera
    assert camera_groups(cams, "auto") == [0, 0, 1, 2, 3, 3]
    assert camera_groups(cams, "per_image") == [0, 1, 2, 3, 4, 5]
    assert camera_groups(cams, "single") == [0, 0, 1, 0, 0, 0]  # one per image size
    with pytest.raises(ConfigError, match="camera_mode"):
        camera_groups(cams, "rig")


@pytest.mark.parametrize("changes, message", [
    ({"camera_mode": "rig"}, "camera_mode"), ({"init_min_num_inliers": 3}, "init_min_num_inliers"),
    ({"retry_below": 1.5}, "retry_below"), ({"register_leftovers": "yes"}, "register_leftovers"),
    ({"max_seconds": -1}, "max_seconds")])
def test_sfm_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        SfmConfig(**changes)


def test_webp_photos_reach_sfm(tmp_path, sample_root):
    """COLMAP's own importer skips .webp; imgsim writes the database itself, so they register."""
    pytest.importorskip("pycolmap")
    from imgsim.data import load_table
    from imgsim.reconstruct import ReconstructConfig, sfm_stage
    from imgsim.sift import FeatureCache, SiftConfig, score_pairs

    table = load_table(sample_root)
    paths = []
    for k, path in enumerate(table[table["scene"] == "fountain_p11"]["path"].iloc[:5]):
        target = str(tmp_path / f"view{k}.{'webp' if k % 2 == 0 else 'jpg'}")
        Image.open(path).save(target, **({"quality": 95} if target.endswith("webp") else {}))
        paths.append(target)
    sift = SiftConfig(max_side=640, n_features=2000)
    cache = FeatureCache(tmp_path / "features")
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    results = score_pairs([(paths[i], paths[j]) for i, j in pairs], sift, cache, processes=1,
                          keep_matches=True)
    models = sfm_stage(str(tmp_path / "sfm"), paths, pairs, [inliers for _, inliers in results],
                       ReconstructConfig(processes=2), cache, sift)
    assert models and {f"view{k}.webp" for k in (0, 2, 4)} <= set(models[0])
    assert len(models[0]) == 5
    for pose in models[0].values():
        R = np.array(pose["R"])
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert os.path.exists(tmp_path / "sfm" / "database.db")


def test_mapper_options_and_their_relaxed_retries():
    pytest.importorskip("pycolmap")
    from imgsim.sfm import _options

    config = SfmConfig(init_min_num_inliers=100, init_min_tri_angle=16.0, abs_pose_min_num_inliers=30,
                       abs_pose_min_inlier_ratio=0.25, init_max_forward_motion=0.9, max_seconds=60)
    plain = _options(config, 3, 2)
    assert (plain.mapper.init_min_num_inliers, plain.mapper.init_min_tri_angle,
            plain.mapper.init_max_forward_motion) == (100, 16.0, pytest.approx(0.9))
    limit = plain.max_runtime_seconds  # the option passed through, not a timing
    assert (plain.min_model_size, plain.num_threads, limit) == (3, 2, 60)
    retry = _options(config, 3, 2, relax_init=True)  # halved, and a walk straight ahead allowed
    assert (retry.mapper.init_min_num_inliers, retry.mapper.init_min_tri_angle,
            retry.mapper.init_max_forward_motion) == (50, 8.0, 1.0)
    leftovers = _options(config, 3, 2, relax_registration=True)
    assert (leftovers.mapper.abs_pose_min_num_inliers, leftovers.mapper.abs_pose_min_inlier_ratio) == \
        (15, pytest.approx(0.125))
    assert leftovers.mapper.init_min_num_inliers == 100
