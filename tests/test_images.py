"""Decoding: EXIF orientation, every colour mode → 8-bit RGB, resizing, EXIF ↔ stored pixel geometry."""

import numpy as np
import pytest
from PIL import Image

from imgsim.data import load_table
from imgsim.images import displayed_to_stored, load_image, load_images


def rgb_pattern(h=48, w=64):
    """A deterministic non-symmetric colour image."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 4) % 256, (y * 5) % 256, (x * y) % 256], axis=-1).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path):
    base = rgb_pattern()
    expected = {1: base, 2: base[:, ::-1], 3: base[::-1, ::-1], 6: np.rot90(base, k=-1),
                8: np.rot90(base, k=1)}
    for orientation, want in expected.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(base).save(path, exif=exif)
        np.testing.assert_array_equal(load_image(path), want, err_msg=f"orientation {orientation}")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_displayed_to_stored_points_at_the_same_pixel(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(stored).save(path, exif=exif)
    shown = load_image(path)
    ys, xs = np.mgrid[0:shown.shape[0], 0:shown.shape[1]]
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    back = displayed_to_stored(points, path)
    assert np.allclose(back, np.rint(back))  # pixel centres land on pixel centres
    back = np.rint(back).astype(int)
    np.testing.assert_array_equal(stored[back[:, 1], back[:, 0]], shown[points[:, 1], points[:, 0]])


def test_colour_modes_become_8_bit_rgb(tmp_path):
    base = rgb_pattern()
    gray = base[..., 0]
    cases = {}
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    cases["l.png"] = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(np.dstack([gray, base[..., 1]]), "LA").save(tmp_path / "la.png")
    cases["la.png"] = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(np.dstack([base, base[..., :1]]), "RGBA").save(tmp_path / "rgba.png")
    cases["rgba.png"] = base
    palette = np.random.default_rng(0).integers(0, 256, size=(256, 3), dtype=np.uint8)
    indices = (base[..., 0] // 16).astype(np.uint8)
    p = Image.fromarray(indices, "P")
    p.putpalette(palette.ravel().tolist())
    p.save(tmp_path / "p.png")
    cases["p.png"] = palette[indices]
    sixteen = (gray.astype(np.uint32) * 257 + 7).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")
    cases["g16.png"] = np.repeat(np.round(sixteen / 65535 * 255).astype(np.uint8)[..., None], 3, 2)
    Image.fromarray(base).convert("CMYK").save(tmp_path / "cmyk.tif")
    cases["cmyk.tif"] = base  # RGB → CMYK with K = 0 is exactly invertible
    Image.fromarray(gray > 100).save(tmp_path / "bw.png")
    cases["bw.png"] = np.repeat(np.where(gray > 100, 255, 0).astype(np.uint8)[..., None], 3, 2)
    for name, want in cases.items():
        got = load_image(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == base.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_resize_keeps_whole_image(photo_path):
    img = load_image(photo_path, size=(40, 50))
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8
    big = load_image(photo_path)
    # A resized flat-mean check: the whole picture is kept, not a crop.
    assert abs(img.mean() - big.mean()) < 3.0


def test_load_images_parallel_equals_one_by_one(sample_root):
    paths = list(load_table(sample_root)["path"][:6])
    batch, ok = load_images(paths, 64)
    assert ok.all()
    np.testing.assert_array_equal(batch, np.stack([load_image(p, 64) for p in paths]))
