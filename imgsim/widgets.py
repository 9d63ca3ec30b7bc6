"""The pair inspector: pick two photos, see the deep, SIFT and fused verdicts.

:class:`PairInspector` is an ipywidgets composite for JupyterLab and Voilà. Its
numbers come from :func:`compare_pair` and :func:`verdicts` (plain functions,
testable without a browser); the widget only wires pickers, sliders and
outputs to them. Work runs off the UI thread with a busy indicator, results
are cached per pair, and moving a threshold slider re-draws the verdicts
without recomputing features.
"""

import csv
import hashlib
import io
import os
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from imgsim import data as data_mod
from imgsim import images as images_mod
from imgsim.errors import ImageDecodeError, ImgsimError
from imgsim.model import distance, embed, similarity_percent
from imgsim.sift import SiftConfig, pair_matches

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_THRESHOLDS = {"dl": 85.0, "sift": 15, "fused": 0.5}
METHOD_NAMES = {"dl": "deep embedding", "sift": "SIFT", "fused": "fused"}


@dataclass
class PairResult:
    """Every score of one compared pair (``probability`` is None without a fusion model)."""

    name_a: str
    name_b: str
    distance: float
    similarity: float
    n_keypoints_a: int
    n_keypoints_b: int
    n_matches: int
    n_inliers: int
    inlier_ratio: float
    probability: float = None
    reason: str = None
    matches: object = field(default=None, repr=False, compare=False)
    images: tuple = field(default=None, repr=False, compare=False)

    def row(self):
        """The scalar fields, for the history table."""
        return {k: v for k, v in asdict(self).items() if k not in ("matches", "images")}


def compare_pair(model, image_a, image_b, sift_config=None, fusion=None, scale=5.0,
                 names=("A", "B")):
    """Deep distance and similarity %, SIFT matches and inliers, fused probability.

    Parameters
    ----------
    model : keras.Model
        An embedding model (:func:`imgsim.model.load_model` or the ImageNet baseline).
    image_a, image_b : path or (h, w, 3) uint8 array
    sift_config : SiftConfig, optional
    fusion : imgsim.fusion.FusionModel, optional
    scale : float
        ``similarity_percent`` scale (the seed's 5.0).

    Returns
    -------
    PairResult
    """
    from imgsim.fusion import pair_features

    load = lambda x: images_mod.load_image(x) if isinstance(x, (str, os.PathLike)) else x  # noqa: E731
    a, b = load(image_a), load(image_b)
    # Embed from the sources themselves: paths go through embed's own decoding, exactly as
    # imgsim.model.embed(model, [path_a, path_b]) would compute them.
    e = embed(model, [image_a, image_b])
    d = distance(e[0], e[1])
    m = pair_matches(a, b, sift_config or SiftConfig())
    s = m.score()
    p = None
    if fusion is not None:
        p = float(fusion.predict_proba(pair_features([d], [s.n_inliers], [s.inlier_ratio]))[0])
    return PairResult(names[0], names[1], d, similarity_percent(d, scale), s.n_keypoints_a,
                      s.n_keypoints_b, s.n_matches, s.n_inliers, s.inlier_ratio, p, s.reason, m,
                      (a, b))


def verdicts(result, thresholds, methods=("dl", "sift", "fused")):
    """``{method: True/False/None}``: same scene at these thresholds (None: no score).

    ``thresholds``: ``{"dl": similarity %, "sift": inliers, "fused": probability}``;
    a pair is the same scene when its score is at or above the threshold.
    """
    scores = {"dl": result.similarity, "sift": result.n_inliers, "fused": result.probability}
    return {m: (None if scores[m] is None else bool(scores[m] >= thresholds[m])) for m in methods}


def check_upload(name, content, max_bytes=MAX_UPLOAD_BYTES, min_side=images_mod.MIN_SIDE):
    """Decode an uploaded file in memory (never written under its own name).

    Returns the RGB array, or raises :class:`~imgsim.errors.ImageDecodeError`
    naming the upload and the problem (too large, empty, truncated, not an
    image, too small).
    """
    label = "upload " + os.path.basename(str(name))[:80]
    if len(content) > max_bytes:
        raise ImageDecodeError(f"{label}: file is {len(content) / 2**20:.1f} MB, over the "
                               f"{max_bytes / 2**20:.0f} MB limit")
    return images_mod.decode_image_bytes(bytes(content), label, min_side=min_side)


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


class PairInspector:
    """ipywidgets inspector over a dataset table (and uploads).

    Parameters
    ----------
    model : keras.Model
    table : pandas.DataFrame from :func:`imgsim.data.load_table`
    sift_config : SiftConfig, optional
    fusion : FusionModel, optional
    thresholds : dict, optional
        Initial slider values: ``{"dl": %, "sift": inliers, "fused": probability}``.
    max_upload_bytes : int

    Use ``inspector.widget`` (or just display the inspector) in a notebook.
    """

    def __init__(self, model, table, sift_config=None, fusion=None, thresholds=None,
                 max_upload_bytes=MAX_UPLOAD_BYTES):
        import ipywidgets as w

        self.model, self.table = model, table.reset_index(drop=True)
        self.sift_config, self.fusion = sift_config or SiftConfig(max_side=640), fusion
        self.max_upload_bytes = max_upload_bytes
        self.cache, self.history, self.result = {}, [], None
        self.uploads = {"a": None, "b": None}
        self._index = None
        self._thread = None
        thresholds = dict(DEFAULT_THRESHOLDS, **(thresholds or {}))

        scenes = sorted(set(data_mod.scene_keys(self.table)))
        self.pickers = {}
        for side in ("a", "b"):
            scene = w.Dropdown(options=scenes, value=scenes[0], description=f"scene {side.upper()}")
            image = w.Dropdown(description=f"image {side.upper()}")
            upload = w.FileUpload(accept="image/*", multiple=False, description=f"upload {side.upper()}")
            scene.observe(lambda change, s=side: self._fill_images(s), names="value")
            upload.observe(lambda change, s=side: self._on_upload(s, change["new"]), names="value")
            self.pickers[side] = {"scene": scene, "image": image, "upload": upload}
            self._fill_images(side)
        rows = self.pickers["b"]["image"]
        if len(rows.options) > 1:
            rows.value = rows.options[1][1]

        self.sliders = {
            "dl": w.FloatSlider(value=thresholds["dl"], min=60.0, max=100.0, step=0.1,
                                description="similarity %", continuous_update=True),
            "sift": w.IntSlider(value=thresholds["sift"], min=0, max=500, description="inliers"),
            "fused": w.FloatSlider(value=thresholds["fused"], min=0.0, max=1.0, step=0.01,
                                   description="probability", disabled=fusion is None),
        }
        for slider in self.sliders.values():
            slider.observe(lambda change: self._show_verdicts(), names="value")
        self.methods = w.SelectMultiple(options=[("deep", "dl"), ("SIFT", "sift"), ("fused", "fused")],
                                        value=("dl", "sift") + (("fused",) if fusion else ()),
                                        description="methods", rows=3)
        self.methods.observe(lambda change: self._show_verdicts(), names="value")
        self.compare_button = w.Button(description="Compare", button_style="primary")
        self.compare_button.on_click(lambda _: self.compare())
        self.busy = w.HTML("")
        self.message = w.HTML("")
        self.numbers = w.HTML("")
        self.verdict = w.HTML("")
        self.images = w.Image(format="png")
        self.matches = w.Image(format="png")
        self.history_html = w.HTML("")
        self.export_button = w.Button(description="Export history CSV")
        self.export_button.on_click(lambda _: self.export_history())
        self.nearest_button = w.Button(description="Nearest to A")
        self.nearest_button.on_click(lambda _: self.show_nearest())
        self.nearest_image = w.Image(format="png")
        picker_box = w.HBox([w.VBox(list(self.pickers[s].values())) for s in ("a", "b")])
        self.widget = w.VBox([
            picker_box,
            w.HBox([self.methods, w.VBox(list(self.sliders.values()))]),
            w.HBox([self.compare_button, self.busy]),
            self.message, self.numbers, self.verdict, self.images, self.matches,
            w.HTML("<b>History</b>"), self.history_html, self.export_button,
            self.nearest_button, self.nearest_image,
        ])

    # ------------------------------------------------------------------ display

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------ inputs

    def _fill_images(self, side):
        scene = self.pickers[side]["scene"].value
        rows = self.table[data_mod.scene_keys(self.table) == scene]
        options = [(os.path.basename(p), p) for p in rows["path"]]
        self.pickers[side]["image"].options = options
        self.pickers[side]["image"].value = options[0][1] if options else None
        self.uploads[side] = None

    def _on_upload(self, side, value):
        if not value:
            return
        item = value[0] if isinstance(value, (list, tuple)) else next(iter(value.values()))
        try:
            image = check_upload(item["name"], item["content"], self.max_upload_bytes)
        except ImgsimError as exc:
            self.message.value = f"<span style='color:#d73027'>{_escape(str(exc))}</span>"
            return
        digest = hashlib.sha256(bytes(item["content"])).hexdigest()[:16]
        self.uploads[side] = (f"upload:{digest}", image, "upload " + os.path.basename(item["name"])[:80])
        self.message.value = f"image {side.upper()}: {_escape(self.uploads[side][2])} ready"

    def source(self, side):
        """(cache key, image path or array, display name) of one side's current pick."""
        if self.uploads[side] is not None:
            return self.uploads[side]
        path = self.pickers[side]["image"].value
        if path is None:
            raise ImageDecodeError(f"image {side.upper()}: pick an image or upload one")
        return path, path, os.path.basename(path)

    # ------------------------------------------------------------------ work

    def compare(self, wait=False):
        """Compare the current pair in a worker thread (``wait=True``: block until done)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._compare_now, daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()

    def _compare_now(self):
        self.compare_button.disabled = True
        self.busy.value = "<span class='imgsim-busy'>⏳ computing…</span>"
        try:
            (key_a, image_a, name_a), (key_b, image_b, name_b) = self.source("a"), self.source("b")
            key = (key_a, key_b)
            if key not in self.cache:
                self.cache[key] = compare_pair(self.model, image_a, image_b, self.sift_config,
                                               self.fusion, names=(name_a, name_b))
            self.result = self.cache[key]
            self.message.value = ""
            self._show_result(*self.result.images)
            self.history.append(self.result)
            self._show_history()
        except ImgsimError as exc:  # the previous result stays on screen
            self.message.value = f"<span style='color:#d73027'>{_escape(str(exc))}</span>"
        finally:
            self.busy.value = ""
            self.compare_button.disabled = False

    def _show_result(self, a, b):
        from imgsim import viz

        r = self.result
        m = r.matches
        self.numbers.value = (
            f"<div class='imgsim-numbers'>similarity <b class='imgsim-similarity'>{r.similarity:.1f} %</b>"
            f" · distance {r.distance:.4f} · keypoints {r.n_keypoints_a} / {r.n_keypoints_b}"
            f" · matches {r.n_matches} · inliers <b>{r.n_inliers}</b>"
            + (f" · fused probability <b>{r.probability:.3f}</b>" if r.probability is not None else "")
            + (f" · <i>{_escape(r.reason)}</i>" if r.reason else "") + "</div>")
        fig = viz.matches_figure(a, b, m.features_a.keypoints, m.features_b.keypoints, m.matches,
                                 m.inliers, f"{r.name_a} vs {r.name_b}")
        self.matches.value = _png(fig)
        self.images.value = _png(viz.pair_keypoints_figure(
            a, b, m.features_a.keypoints, m.features_b.keypoints, (r.name_a, r.name_b)))
        self._show_verdicts()

    def thresholds(self):
        return {m: s.value for m, s in self.sliders.items()}

    def current_verdicts(self):
        """Verdicts of the shown pair at the sliders' thresholds (no recomputation)."""
        if self.result is None:
            return {}
        return verdicts(self.result, self.thresholds(), self.methods.value)

    def _show_verdicts(self):
        parts = []
        for method, same in self.current_verdicts().items():
            text = "no score" if same is None else ("same scene" if same else "different scenes")
            colour = "#1a9850" if same else "#d73027"
            parts.append(f"<span class='imgsim-verdict' data-method='{method}' style='color:{colour}'>"
                         f"{METHOD_NAMES[method]}: <b>{text}</b></span>")
        self.verdict.value = " &nbsp; ".join(parts)

    # ------------------------------------------------------------------ history

    def history_rows(self):
        rows = []
        for r in self.history:
            row = r.row()
            row.update({f"verdict_{m}": v for m, v in verdicts(r, self.thresholds()).items()})
            rows.append(row)
        return rows

    def history_csv(self):
        """The compared pairs, every score and verdict, as CSV text."""
        rows = self.history_rows()
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return buffer.getvalue()

    def export_history(self, path="pair_history.csv"):
        from imgsim.fileio import atomic_write_text

        atomic_write_text(path, self.history_csv())
        self.message.value = f"history written to {_escape(os.path.abspath(path))}"
        return path

    def _show_history(self):
        rows = self.history_rows()
        keys = ["name_a", "name_b", "similarity", "distance", "n_inliers", "probability",
                "verdict_dl", "verdict_sift", "verdict_fused"]
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
        body = "".join("<tr>" + "".join(f"<td>{_escape(fmt(r[k]))}</td>" for k in keys) + "</tr>"
                       for r in rows)
        self.history_html.value = ("<table class='imgsim-history'><tr>" + "".join(f"<th>{k}</th>" for k in keys)
                                   + "</tr>" + body + "</table>")

    # ------------------------------------------------------------------ nearest

    def show_nearest(self, k=5):
        """Draw image A's ``k`` nearest dataset images (green: same scene) with similarity %."""
        try:
            self.nearest_image.value = _show_nearest_grid(self, k)
        except ImgsimError as exc:
            self.message.value = f"<span style='color:#d73027'>{_escape(str(exc))}</span>"

    def nearest(self, image, k=5):
        """The ``k`` dataset images nearest to ``image`` (path or array) by embedding distance.

        Returns a DataFrame with columns path, scene, distance, similarity.
        """
        import pandas as pd

        from imgsim.index import EmbeddingIndex

        if self._index is None:
            self._embeddings = embed(self.model, list(self.table["path"]))
            self._index = EmbeddingIndex(self._embeddings)
        d, ids = self._index.search(embed(self.model, [image]), k)
        rows = self.table.iloc[ids[0]]
        return pd.DataFrame({"path": rows["path"].to_numpy(), "scene": rows["scene"].to_numpy(),
                             "distance": d[0], "similarity": similarity_percent(d[0])})


def _show_nearest_grid(inspector, k=5):
    from imgsim import viz

    _, image, name = inspector.source("a")
    found = inspector.nearest(image, k + 1)
    query_scene = None if not isinstance(image, str) else inspector.table.loc[
        inspector.table["path"] == image, "scene"].iloc[0]
    thumbs = [(images_mod.load_image(p, 128), s == query_scene, f"{sim:.1f} %")
              for p, s, sim in zip(found["path"], found["scene"], found["similarity"])
              if p != image][:k]
    query = images_mod.load_image(image, 128) if isinstance(image, str) else images_mod.resize(image, 128)
    return _png(viz.neighbour_grid([(query, thumbs)]))


def _escape(text):
    import html

    return html.escape(str(text))


REPO_ROOT = os.path.dirname(os.path.dirname(data_mod.SAMPLE_DATA))
DEMO_REPORT = os.path.join(REPO_ROOT, "reports", "demo", "metrics.json")


def default_inspector(model_path=None, data_root=None, image_size=224, report=None,
                      sift_config=None):
    """A :class:`PairInspector` with sensible defaults, ready right after set-up.

    Parameters
    ----------
    model_path : str, optional
        A ``.keras`` model. Default: the demo run's ``best.keras`` (written by
        ``make demo``) if it exists, else the ImageNet backbone (GAP features).
    data_root : str, optional
        Default: the embedded sample.
    image_size : int
        Input size of the ImageNet backbone when it is used.
    report : str, optional
        An evaluation ``metrics.json`` (``imgsim evaluate``): its fusion model
        and calibrated thresholds are used.
    """
    from imgsim.fileio import read_json
    from imgsim.fusion import FusionModel
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, load_model

    if model_path is None and os.path.exists(DEMO_REPORT):
        candidate = os.path.join(REPO_ROOT, read_json(DEMO_REPORT).get("run_dir", ""), "best.keras")
        model_path = candidate if os.path.isfile(candidate) else None
    model = load_model(model_path) if model_path else build_imagenet_baseline(
        EmbeddingConfig(image_size=image_size))
    table = data_mod.load_table(data_root or data_mod.SAMPLE_DATA, on_error="skip")
    fusion, thresholds = None, {}
    if report:
        saved = read_json(report)
        fusion = FusionModel.from_dict(saved["fusion"])
        thresholds = {"dl": similarity_percent(-saved["dl"]["threshold"]),
                      "sift": int(np.ceil(saved["sift"]["threshold"])),
                      "fused": saved["fused"]["threshold"]}
    return PairInspector(model, table, sift_config, fusion, thresholds)


def serve(notebook=None, port=8866, ip="127.0.0.1", open_browser=False):
    """Serve the inspector notebook as a web app with Voilà; blocks until stopped.

    Returns Voilà's exit code.
    """
    import subprocess
    import sys

    notebook = notebook or os.path.join(REPO_ROOT, "notebooks", "04_pair_inspector.ipynb")
    if not os.path.isfile(notebook):
        raise ImgsimError(f"{notebook}: no such notebook")
    print(f"imgsim pair inspector: http://{ip}:{port}/", flush=True)
    cmd = [sys.executable, "-m", "voila", notebook, f"--port={port}", f"--Voila.ip={ip}",
           "--show_tracebacks=False"] + ([] if open_browser else ["--no-browser"])
    return subprocess.call(cmd)
