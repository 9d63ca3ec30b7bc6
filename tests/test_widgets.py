"""The pair inspector driven from Python: numbers equal imgsim computed independently."""

import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from conftest import SAMPLE  # noqa: E402
from imgsim import widgets  # noqa: E402
from imgsim.data import load_table  # noqa: E402
from imgsim.errors import ImageDecodeError  # noqa: E402
from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed  # noqa: E402
from imgsim.sift import SiftConfig, pair_score  # noqa: E402

SIFT = SiftConfig(max_side=320, n_features=500)


@pytest.fixture(scope="module")
def setup():
    table = load_table(SAMPLE)
    table = table[table["scene"].isin(["fountain_p11", "espresso", "robot"])].reset_index(drop=True)
    model = build_imagenet_baseline(EmbeddingConfig(alpha=0.35, image_size=96))
    return model, table


def pick(inspector, side, scene_suffix, index):
    scene = [s for s in inspector.pickers[side]["scene"].options if s.endswith(scene_suffix)][0]
    inspector.pickers[side]["scene"].value = scene
    options = inspector.pickers[side]["image"].options
    inspector.pickers[side]["image"].value = options[index][1]
    return options[index][1]


def test_numbers_equal_independent_computation_and_verdicts_flip(setup, monkeypatch):
    model, table = setup
    calls = []
    real = widgets.compare_pair
    monkeypatch.setattr(widgets, "compare_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    a = pick(inspector, "a", "fountain_p11", 0)
    b = pick(inspector, "b", "fountain_p11", 1)
    inspector.compare(wait=True)
    r = inspector.result
    e = embed(model, [a, b])
    d = float(np.sqrt(((e[0].astype(np.float64) - e[1]) ** 2).sum()))
    assert r.distance == pytest.approx(d, abs=1e-6)
    assert r.similarity == pytest.approx(np.exp(-d / 5) * 100, abs=1e-6)
    assert r.n_inliers == pair_score(a, b, SIFT).n_inliers
    assert f"{r.similarity:.1f} %" in inspector.numbers.value
    # Move the similarity slider across the pair's score: the verdict flips, nothing recomputes.
    inspector.sliders["dl"].value = round(r.similarity - 0.5, 1)
    assert inspector.current_verdicts()["dl"] is True and "deep embedding: <b>same scene" in inspector.verdict.value
    inspector.sliders["dl"].value = round(r.similarity + 0.5, 1)
    assert inspector.current_verdicts()["dl"] is False
    assert "deep embedding: <b>different scenes" in inspector.verdict.value
    inspector.sliders["sift"].value = r.n_inliers + 1
    assert inspector.current_verdicts()["sift"] is False
    inspector.sliders["sift"].value = r.n_inliers
    assert inspector.current_verdicts()["sift"] is True
    assert len(calls) == 1
    inspector.compare(wait=True)  # the same pair again: cached
    assert len(calls) == 1 and len(inspector.history) == 2
    csv_text = inspector.history_csv().strip().splitlines()
    assert len(csv_text) == 3 and csv_text[0].startswith("name_a,name_b,distance,similarity")


def test_nearest_matches_brute_force(setup):
    model, table = setup
    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    query = table["path"][3]
    got = inspector.nearest(query, k=4)
    e = embed(model, list(table["path"])).astype(np.float64)
    d = np.linalg.norm(e - e[3], axis=1)
    want = np.argsort(d, kind="stable")[:4]
    assert list(got["path"]) == list(table["path"].iloc[want])
    np.testing.assert_allclose(got["distance"], d[want], atol=1e-4)
    assert got["path"][0] == query
    inspector.pickers["a"]["image"].value = query
    inspector.show_nearest(k=3)
    assert inspector.nearest_image.value[:4] == b"\x89PNG"


def png_bytes(size):
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_uploads_give_messages_and_keep_the_previous_result(setup, photo_path):
    model, table = setup
    jpeg = open(photo_path, "rb").read()
    cases = {
        "notes.txt": (b"hello, not a photo", "upload notes.txt: not an image"),
        "empty.jpg": (b"", "upload empty.jpg: empty file (0 bytes)"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "upload cut.jpg: truncated image data"),
        "tiny.png": (png_bytes((20, 24)), "upload tiny.png: image is 20x24 pixels, smaller than 32 px"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(ImageDecodeError) as err:
            widgets.check_upload(name, content)
        assert str(err.value) == message
    with pytest.raises(ImageDecodeError) as err:
        widgets.check_upload("big.png", png_bytes((64, 64)), max_bytes=100)
    assert str(err.value).startswith("upload big.png: file is 0.0 MB, over the 0 MB limit")
    with pytest.raises(ImageDecodeError, match="upload passwd: not an image"):
        widgets.check_upload("../../etc/passwd", b"root:x:0:0")  # the path part is dropped

    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    inspector.compare(wait=True)
    before = inspector.result
    inspector._on_upload("a", [{"name": "notes.txt", "content": memoryview(b"not a photo")}])
    assert "upload notes.txt: not an image" in inspector.message.value
    assert inspector.uploads["a"] is None and inspector.result is before
    inspector._on_upload("a", [{"name": "mine.jpg", "content": memoryview(jpeg)}])
    assert inspector.uploads["a"] is not None
    inspector.compare(wait=True)
    assert inspector.result is not before and inspector.result.name_a == "upload mine.jpg"
