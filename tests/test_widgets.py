"""The pair inspector driven from Python: numbers equal imgsim computed independently."""

import base64
import csv
import datetime
import io
import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

from conftest import REPO, SAMPLE  # noqa: E402
from imgsim import viz, widgets  # noqa: E402
from imgsim.data import load_table  # noqa: E402
from imgsim.errors import ConfigError, ImageDecodeError  # noqa: E402
from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed  # noqa: E402
from imgsim.sift import SiftConfig, pair_score  # noqa: E402

SIFT = SiftConfig(max_side=320, n_features=500)
SHIPPED = os.path.join(REPO, "reports", "shared_data_imagenet", "metrics.json")


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


def distance_of(model, a, b):
    e = embed(model, [a, b]).astype(np.float64)
    return float(np.sqrt(((e[0] - e[1]) ** 2).sum()))


def test_numbers_equal_independent_computation_and_verdicts_flip(setup, monkeypatch):
    model, table = setup
    calls = []
    real = widgets.compare_pair
    monkeypatch.setattr(widgets, "compare_pair", lambda *a, **k: calls.append(1) or real(*a, **k))
    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    assert inspector.images.layout.display == "none" and "Compare" in inspector.placeholder.value
    a = pick(inspector, "a", "fountain_p11", 0)
    b = pick(inspector, "b", "fountain_p11", 1)
    inspector.compare(wait=True)
    r = inspector.result
    d = distance_of(model, a, b)
    assert r.distance == pytest.approx(d, abs=1e-6)
    assert r.similarity == pytest.approx(np.exp(-d / 5) * 100, abs=1e-6)
    assert r.n_inliers == pair_score(a, b, SIFT).n_inliers
    assert f"{r.similarity:.1f} %" in inspector.numbers.value
    assert inspector.placeholder.layout.display == "none" and inspector.images.layout.display is None
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
    lines = inspector.history_csv().strip().splitlines()
    assert len(lines) == 3 and lines[0] == ",".join(widgets.HISTORY_COLUMNS)
    assert "uncalibrated" in inspector.calibration_note.value and inspector.sliders["fused"].disabled
    assert "fused probability: <b>off</b>" in inspector.calibration_note.value


def test_history_keeps_the_verdicts_of_the_moment_and_survives_a_reload(setup, tmp_path):
    model, table = setup
    session = str(tmp_path / "session" / "history.csv")
    inspector = widgets.PairInspector(model, table, sift_config=SIFT, session_file=session)
    a, b = pick(inspector, "a", "fountain_p11", 0), pick(inspector, "b", "fountain_p11", 1)
    before = datetime.datetime.now().astimezone().replace(microsecond=0)
    inspector.compare(wait=True)
    first = inspector.result
    low = math.floor(first.similarity) - 1.0
    inspector.sliders["dl"].value, inspector.sliders["sift"].value = low, 0
    pick(inspector, "b", "espresso", 0)
    inspector.compare(wait=True)
    inspector.sliders["dl"].value, inspector.sliders["sift"].value = 99.9, 500  # later: stricter
    rows = list(csv.DictReader(open(session)))
    assert len(rows) == 2 and rows == widgets.read_history(session)
    assert rows[0]["verdict_dl"] == "True" and float(rows[0]["threshold_dl"]) == 85.0  # the defaults then
    assert float(rows[1]["threshold_dl"]) == low and rows[1]["threshold_sift"] == "0"
    assert rows[1]["verdict_sift"] == "True"  # at the 0-inlier threshold of that moment
    assert rows[0]["source_a"] == os.path.abspath(a) and rows[0]["source_b"] == os.path.abspath(b)
    assert rows[0]["threshold_fused"] == "" and rows[0]["verdict_fused"] == "" and rows[0]["calibration"] == "uncalibrated"
    stamp = datetime.datetime.fromisoformat(rows[0]["time"])
    assert stamp.tzinfo is not None and before <= stamp <= datetime.datetime.now().astimezone()
    assert float(rows[0]["similarity"]) == pytest.approx(100 * np.exp(-distance_of(model, a, b) / 5), abs=1e-6)
    # The page's download link carries the same CSV; a new inspector (a reload) shows the rows.
    href = re.search(r"href='data:text/csv;charset=utf-8;base64,([^']+)'", inspector.download.value).group(1)
    assert base64.b64decode(href).decode() == open(session).read()
    again = widgets.PairInspector(model, table, sift_config=SIFT, session_file=session)
    assert again.history == rows and again.history_html.value.count("<tr>") == 3
    assert "different @ 99.9" not in again.history_html.value and "same @ 85" in again.history_html.value


def test_uploads_and_pickers_are_one_source_of_truth(setup, photo_path):
    model, table = setup
    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    b = pick(inspector, "b", "robot", 0)
    jpeg = open(photo_path, "rb").read()
    inspector.pickers["a"]["upload"].value = ({"name": "mine.jpg", "type": "image/jpeg", "size": len(jpeg),
                                               "content": memoryview(jpeg),
                                               "last_modified": datetime.datetime.now()},)
    assert inspector.sources["a"].kind == "upload" and inspector.pickers["a"]["use"].value == "upload"
    assert "upload mine.jpg" in inspector.pickers["a"]["caption"].value
    assert "imgsim-inactive" in inspector.pickers["a"]["image"]._dom_classes
    inspector.compare(wait=True)
    assert inspector.result.name_a == "upload mine.jpg"
    # Picking an image switches side A back to the dataset: the pick is what is compared.
    picked = pick(inspector, "a", "espresso", 2)
    assert inspector.sources["a"].image == picked and inspector.pickers["a"]["use"].value == "dataset"
    assert inspector.pickers["a"]["upload"].value == () and "imgsim-inactive" not in inspector.pickers["a"]["image"]._dom_classes
    inspector.compare(wait=True)
    assert inspector.result.name_a == os.path.basename(picked)
    assert inspector.result.distance == pytest.approx(distance_of(model, picked, b), abs=1e-6)
    assert inspector.pickers["a"]["preview"].value == viz.png_bytes(widgets._thumbnail(picked))
    # The upload is kept: the toggle brings it back.
    inspector.pickers["a"]["use"].value = "upload"
    assert inspector.source("a")[2] == "upload mine.jpg"
    inspector.pickers["b"]["use"].value = "upload"  # nothing uploaded on B
    assert inspector.pickers["b"]["use"].value == "dataset" and "nothing uploaded yet" in inspector.message.value


def png_bytes(size, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_uploads_give_messages_and_keep_the_previous_result(setup, photo_path):
    model, table = setup
    jpeg = open(photo_path, "rb").read()
    cases = {
        "notes.txt": (b"hello, not a photo", "upload notes.txt: not an image"),
        "empty.jpg": (b"", "upload empty.jpg: empty file (0 bytes)"),
        "cut.jpg": (jpeg[: len(jpeg) // 2], "upload cut.jpg: truncated image data"),
        "tiny.png": (png_bytes((20, 24)), "upload tiny.png: image is 20x24 pixels, smaller than 32 px"),
        "huge.png": (png_bytes((9000, 8000), "1"),
                     "upload huge.png: image is 9000x8000 pixels (72 Mpx), over the 64 Mpx limit"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(ImageDecodeError) as err:
            widgets.check_upload(name, content)
        assert str(err.value) == message
    with pytest.raises(ImageDecodeError) as err:
        widgets.check_upload("big.png", png_bytes((64, 64)), max_bytes=10)
    assert str(err.value).startswith("upload big.png: file is 0.0 MB, over the 0 MB limit")
    with pytest.raises(ImageDecodeError, match="upload passwd: not an image"):
        widgets.check_upload("../../etc/passwd", b"root:x:0:0")  # the path part is dropped

    inspector = widgets.PairInspector(model, table, sift_config=SIFT)
    inspector.compare(wait=True)
    before, source = inspector.result, inspector.sources["a"]
    inspector._on_upload("a", [{"name": "notes.txt", "content": memoryview(b"not a photo")}])
    assert "upload notes.txt: not an image" in inspector.message.value
    assert inspector.sources["a"] is source and inspector.result is before
    inspector._on_upload("a", [{"name": "mine.jpg", "content": memoryview(jpeg)}])
    assert inspector.sources["a"].kind == "upload"
    inspector.compare(wait=True)
    assert inspector.result is not before and inspector.result.name_a == "upload mine.jpg"


def test_calibration_from_a_report_sets_thresholds_and_enables_fusion(setup):
    model, table = setup
    saved = json.load(open(SHIPPED))
    calibration = widgets.load_calibration(SHIPPED)
    assert calibration.thresholds["dl"] == pytest.approx(100 * math.exp(saved["dl"]["threshold"] / 5))
    assert calibration.thresholds["sift"] == math.ceil(saved["sift"]["threshold"])
    assert calibration.thresholds["fused"] == saved["fused"]["threshold"]
    assert calibration.sift.n_features == saved["config"]["sift"]["n_features"]
    assert calibration.model == f"imagenet@{saved['config']['image_size']}"
    inspector = widgets.PairInspector(model, table, sift_config=SIFT, calibration=calibration,
                                      model_name="imagenet@96")
    assert not inspector.sliders["fused"].disabled and "fused" in inspector.methods.value
    assert inspector.sliders["sift"].value == calibration.thresholds["sift"]
    assert "<b>calibrated</b>" in inspector.calibration_note.value
    assert "the report measured imagenet@224, this page runs imagenet@96" in inspector.calibration_note.value
    pick(inspector, "a", "fountain_p11", 0), pick(inspector, "b", "fountain_p11", 1)
    inspector.compare(wait=True)
    r = inspector.result
    from imgsim.fusion import pair_features

    p = float(calibration.fusion.predict_proba(pair_features([r.distance], [r.n_inliers], [r.inlier_ratio]))[0])
    assert r.probability == pytest.approx(p) and f"{p:.3f}" in inspector.numbers.value
    assert "calibrated threshold" in inspector.verdict.value
    assert inspector.history[-1]["calibration"] == os.path.abspath(SHIPPED)
    with pytest.raises(ConfigError, match="not an `imgsim evaluate` report"):
        widgets.load_calibration(os.path.join(REPO, "reports", "demo", "metrics.json"))


def test_drawings_are_made_at_display_size_inliers_only_and_capped():
    a = np.zeros((100, 200, 3), np.uint8)
    b = np.zeros((50, 100, 3), np.uint8)
    kp_a = np.array([[20.0, 20.0]] + [[100.0, 50.0]] * 59)
    kp_b = np.array([[80.0, 10.0]] + [[50.0, 25.0]] * 59)
    matches = np.stack([np.arange(60), np.arange(60)], 1)
    inliers = np.zeros(60, bool)
    inliers[0] = True  # one inlier: (20, 20) in A ↔ (80, 10) in B
    canvas, shown, eligible = viz.draw_matches(a, b, kp_a, kp_b, matches, inliers, width=408, gap=8)
    assert canvas.shape == (100, 408, 3) and (shown, eligible) == (1, 1)
    # A is drawn 200 px wide (scale 1), B 200 px wide from x = 208 (scale 2): (80, 10) → (368, 20).
    mid = ((20 + 368) // 2, 20)
    r, g, b_ = canvas[mid[1], mid[0]]
    assert g > 100 and r < 100  # on the green line
    assert canvas[60, mid[0]].max() == 0  # far from it: untouched black
    red = lambda c: (c[..., 0] > 150) & (c[..., 1] < 100) & (c[..., 2] < 100)  # noqa: E731
    assert not red(canvas).any()  # outliers are hidden by default
    canvas, shown, eligible = viz.draw_matches(a, b, kp_a, kp_b, matches, inliers, width=408,
                                               show_outliers=True, max_lines=10)
    assert (shown, eligible) == (10, 60) and red(canvas).any()
    image = np.zeros((300, 400, 3), np.uint8)
    points = np.random.default_rng(0).uniform(0, 300, (1000, 2))
    canvas, shown = viz.draw_keypoints(image, points, width=200, max_points=400)
    assert canvas.shape == (150, 200, 3) and shown == 400


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


def test_default_inspector_picks_model_data_and_calibration(setup, mini_imc, tmp_path, monkeypatch):
    model, _ = setup
    built = []
    monkeypatch.setattr(widgets, "_demo_model", lambda: None)  # as in a fresh clone
    monkeypatch.setattr("imgsim.model.build_imagenet_baseline", lambda config: built.append(config) or model)
    auto = widgets.default_inspector(data_root=str(mini_imc), image_size=224)
    assert auto.calibration.report == os.path.abspath(SHIPPED) and built[-1].image_size == 224
    assert set(auto.table["path"]) == set(load_table(str(mini_imc))["path"])
    assert widgets.default_inspector(image_size=96).calibration is None  # not the model it measured
    assert widgets.default_inspector(report=None).calibration is None
    from imgsim.model import save_model

    path = str(tmp_path / "run" / "best.keras")
    save_model(model, path)
    chosen = widgets.default_inspector(model_path=path, report=SHIPPED)
    assert chosen.model_name == os.path.dirname(path) and chosen.calibration is not None
    assert "the report measured imagenet@224" in chosen.calibration_note.value
