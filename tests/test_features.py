"""The backbone feature cache of fast mode: computed once, keyed by content, copy 0 = the photo."""

import os
import shutil

import numpy as np
import pytest

from conftest import SAMPLE
from imgsim.augment import AugmentConfig
from imgsim.features import FeatureCache
from imgsim.model import EmbeddingConfig, frozen_stems

CONFIG = EmbeddingConfig(alpha=0.35, image_size=64, trainable_layers=0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from imgsim.data import load_table

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for path in load_table(SAMPLE)["path"][:3]:
        paths.append(str(folder / os.path.basename(path)))
        shutil.copyfile(path, paths[-1])
    return paths


def test_copy_zero_is_the_stem_on_the_photo_and_copies_are_augmented(tmp_path, photos):
    from imgsim.images import load_images

    (maps,), ok = FeatureCache(str(tmp_path)).maps(photos, CONFIG, AugmentConfig(), copies=2)
    assert ok.all() and maps.shape[:2] == (3, 3) and maps.dtype == np.float16
    images, _ = load_images(photos, CONFIG.image_size)
    want = frozen_stems(CONFIG)[0].predict_on_batch(images.astype(np.float32))
    np.testing.assert_allclose(maps[:, 0].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert not np.allclose(maps[:, 1], maps[:, 0]) and not np.allclose(maps[:, 1], maps[:, 2])
    # A fresh cache computes the same copies (seeded by content), and a second call reads the files.
    (again,), _ = FeatureCache(str(tmp_path / "other")).maps(photos, CONFIG, AugmentConfig(), copies=2)
    np.testing.assert_array_equal(again, maps)
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs)
    stamps = [os.stat(f).st_mtime_ns for f in files]
    FeatureCache(str(tmp_path)).maps(photos, CONFIG, AugmentConfig(), copies=2)
    assert [os.stat(f).st_mtime_ns for f in files] == stamps


def test_keys_follow_content_and_settings(tmp_path, photos):
    cache = FeatureCache(str(tmp_path))
    (first,), _ = cache.maps(photos[:1], CONFIG, AugmentConfig(), copies=1)
    count = lambda: sum(len(fs) for _, _, fs in os.walk(tmp_path))  # noqa: E731
    assert count() == 1
    cache.maps(photos[:1], CONFIG, AugmentConfig(strength=2.0), copies=1)  # other augmentation
    cache.maps(photos[:1], CONFIG, AugmentConfig(), copies=1, seed=5)  # other seed
    assert count() == 3 and len(cache._stems) == 1  # the stem network was built once
    shutil.copyfile(photos[1], photos[0] + ".jpg")  # other bytes under a new name, then the same name
    shutil.copyfile(photos[1], photos[0])
    (changed,), _ = cache.maps(photos[:1], CONFIG, AugmentConfig(), copies=1)
    assert count() == 4 and not np.array_equal(changed, first)


def test_bad_photo_is_skipped_and_counted(tmp_path, photos):
    from imgsim.errors import ImageDecodeError
    from imgsim.images import BadFiles

    broken = tmp_path / "broken.jpg"
    broken.write_text("not a photo")
    bad = BadFiles()
    (maps,), ok = FeatureCache(str(tmp_path / "c")).maps([photos[0], str(broken)], CONFIG,
                                                          AugmentConfig(), 1, on_error="skip", bad=bad)
    assert ok.tolist() == [True, False] and len(maps) == 1 and len(bad) == 1
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        FeatureCache(str(tmp_path / "c")).maps([str(broken)], CONFIG, AugmentConfig(), 1)
