"""The pair inspector: pick or upload two photos, see the deep, SIFT and fused verdicts.

:class:`PairInspector` is an ipywidgets composite for JupyterLab and Voilà
(``imgsim serve``, :mod:`imgsim.serve`). Its numbers come from plain functions
testable without a browser — :func:`compare_pair`, :func:`verdicts`,
:func:`check_upload`, :func:`history_row`, :func:`load_calibration` — and the
widget only wires pickers, uploads, sliders and outputs to them.

* One source of truth per side: the side compares either its dataset pick or
  its upload, a toggle shows which, and a preview shows exactly the image that
  will be compared. Picking an image switches the side back to the dataset.
* Verdicts are calibrated when a report of ``imgsim evaluate`` is given (its
  thresholds and fusion model, fitted on validation pairs); otherwise the
  sliders start at uncalibrated defaults and the page says so.
* Every Compare appends a history row that keeps the thresholds and verdicts
  of that moment, with a timestamp and the full paths; the history is saved
  to a session file (restored on reload) and downloadable from the browser.
* Keypoints and matches are drawn at the size they are displayed
  (:func:`imgsim.viz.draw_matches`): inliers only unless asked, at most
  ``max_lines`` lines.

Work runs off the UI thread with a busy indicator, results are cached per
pair, and moving a threshold slider re-draws the verdicts without recomputing.
"""

import base64
import csv
import datetime
import hashlib
import io
import os
import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from imgsim import data as data_mod
from imgsim import images as images_mod
from imgsim.errors import ConfigError, ImageDecodeError, ImgsimError
from imgsim.model import distance, embed, similarity_percent
from imgsim.sift import SiftConfig, pair_matches

MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = 64_000_000  # a 48 Mpx phone photo passes; decoded RGB stays under 200 MB
DEFAULT_THRESHOLDS = {"dl": 85.0, "sift": 15, "fused": 0.5}
METHOD_NAMES = {"dl": "deep embedding", "sift": "SIFT", "fused": "fused"}
SIMILARITY_SCALE = 5.0
HISTORY_COLUMNS = (
    "time", "source_a", "source_b", "name_a", "name_b", "distance", "similarity", "n_keypoints_a",
    "n_keypoints_b", "n_matches", "n_inliers", "inlier_ratio", "probability", "threshold_dl",
    "threshold_sift", "threshold_fused", "verdict_dl", "verdict_sift", "verdict_fused", "calibration")


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


def compare_pair(model, image_a, image_b, sift_config=None, fusion=None, scale=SIMILARITY_SCALE,
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


def check_upload(name, content, max_bytes=MAX_UPLOAD_BYTES, min_side=images_mod.MIN_SIDE,
                 max_pixels=MAX_UPLOAD_PIXELS):
    """Decode an uploaded file in memory (never written under its own name).

    Returns the RGB array, or raises :class:`~imgsim.errors.ImageDecodeError`
    naming the upload and the problem (too large a file, too many pixels,
    empty, truncated, not an image, too small). The pixel count is read from
    the header before anything is decoded.
    """
    from PIL import Image

    label = "upload " + os.path.basename(str(name))[:80]
    if len(content) > max_bytes:
        raise ImageDecodeError(f"{label}: file is {len(content) / 2**20:.1f} MB, over the "
                               f"{max_bytes / 2**20:.0f} MB limit")
    try:
        with Image.open(io.BytesIO(bytes(content))) as img:
            width, height = img.size
    except Exception:  # not an image, empty, cut: decode_image_bytes says which
        width = height = 0
    if width * height > max_pixels:
        raise ImageDecodeError(f"{label}: image is {width}x{height} pixels ({width * height / 1e6:.0f} Mpx), "
                               f"over the {max_pixels / 1e6:.0f} Mpx limit")
    return images_mod.decode_image_bytes(bytes(content), label, min_side=min_side)


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """Thresholds and fusion model an ``imgsim evaluate`` report fitted on validation pairs.

    Attributes
    ----------
    thresholds : dict
        ``{"dl": similarity %, "sift": inliers, "fused": probability}``.
    fusion : imgsim.fusion.FusionModel
    report : str
        The report's ``metrics.json``.
    model : str
        What the report measured: ``"imagenet@<size>"`` or the run folder.
    sift : SiftConfig
        The SIFT settings the inlier threshold holds for.
    description : str
        One line for the page.
    """

    thresholds: dict
    fusion: object
    report: str
    model: str
    sift: SiftConfig
    description: str


def model_label(run=None, image_size=224):
    """How the inspector names a model: a run folder, or ``imagenet@<size>``."""
    return os.path.abspath(run) if run else f"imagenet@{int(image_size)}"


def load_calibration(report):
    """:class:`Calibration` from an ``imgsim evaluate`` ``metrics.json``.

    Raises
    ------
    ConfigError
        The file is missing, not JSON, or not an evaluation report (no
        thresholds or fusion model).
    """
    from imgsim.fileio import read_json
    from imgsim.fusion import FusionModel

    if not os.path.isfile(report):
        raise ConfigError(f"{report}: no such report (pass an `imgsim evaluate` metrics.json)")
    try:
        saved = read_json(report)
        fusion = FusionModel.from_dict(saved["fusion"])
        # The report's dl threshold is on the score -distance.
        dl = similarity_percent(-float(saved["dl"]["threshold"]), SIMILARITY_SCALE)
        sift_threshold, fused = float(saved["sift"]["threshold"]), float(saved["fused"]["threshold"])
        config = saved.get("config", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{report}: not an `imgsim evaluate` report (missing {exc})") from None
    run = config.get("run")
    protocol = saved.get("headline_protocol", "hard")
    pairs = saved.get("pairs", {}).get(protocol, {})
    description = (f"calibrated by {report}: {protocol} protocol, thresholds from "
                   f"{pairs.get('val', '?')} validation pairs, {pairs.get('test', '?')} test pairs")
    sift = SiftConfig.from_dict(config["sift"]) if "sift" in config else SiftConfig()
    return Calibration({"dl": dl, "sift": int(np.ceil(sift_threshold)), "fused": fused}, fusion,
                       os.path.abspath(report), model_label(run, config.get("image_size", 224)),
                       sift, description)


# --------------------------------------------------------------------------- history


def history_row(result, thresholds, sources, when=None, calibration=None, methods=("dl", "sift", "fused")):
    """One history row: the pair's scores with the thresholds and verdicts of this moment.

    Parameters
    ----------
    result : PairResult
    thresholds : dict
        The sliders' values when the pair was compared.
    sources : (str, str)
        Full path of each side, or ``upload <name> sha256:<digest>``.
    when : datetime, optional
        Default: now (local time, with its UTC offset).
    calibration : str, optional
        Where the thresholds came from (a report path) or None (uncalibrated).
    methods : tuple
        Methods that have a score (fused only with a fusion model).

    Returns
    -------
    dict with the keys of :data:`HISTORY_COLUMNS`
    """
    when = when or datetime.datetime.now().astimezone()
    row = {"time": when.isoformat(timespec="seconds"), "source_a": sources[0], "source_b": sources[1]}
    row.update(result.row())
    row.pop("reason", None)
    shown = verdicts(result, thresholds, methods)
    for method in ("dl", "sift", "fused"):
        row[f"threshold_{method}"] = thresholds[method] if method in methods else None
        row[f"verdict_{method}"] = shown.get(method)
    row["calibration"] = calibration or "uncalibrated"
    return {k: row.get(k) for k in HISTORY_COLUMNS}


def history_csv(rows):
    """CSV text of history rows (the columns of :data:`HISTORY_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, HISTORY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_history(path):
    """Rows of a session file written by the inspector (empty list if there is none)."""
    if not path or not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("time")]


def default_session_file():
    """``$XDG_CACHE_HOME/imgsim/inspector/history.csv`` (default under ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "imgsim", "inspector", "history.csv")


# --------------------------------------------------------------------------- the widget


@dataclass
class Source:
    """What one side compares: a dataset image (``kind="dataset"``) or an upload."""

    kind: str
    key: str  # cache key: the path, or upload:<digest>
    image: object  # path or (h, w, 3) uint8 array
    name: str  # short name for the page
    full: str  # full path, or "upload <name> sha256:<digest>"


STYLE = """<style>
.imgsim-inactive { opacity: 0.45; }
.imgsim-placeholder { border: 1px dashed #999; color: #555; padding: 1.5em; text-align: center;
                      width: 100%; box-sizing: border-box; }
.imgsim-error { color: #d73027; }
.imgsim-note { color: #555; font-size: 90%; }
.imgsim-history td, .imgsim-history th { padding: 0 0.6em; text-align: left; white-space: nowrap; }
</style>"""


def _escape(text):
    import html

    return html.escape(str(text))


def _error(text):
    return f"<span class='imgsim-error'>{_escape(text)}</span>"


def _thumbnail(image, height=150):
    """A small RGB array of a path or array (EXIF orientation applied), for the source previews."""
    rgb = images_mod.load_image(image) if isinstance(image, (str, os.PathLike)) else image
    width = max(1, int(round(rgb.shape[1] * height / rgb.shape[0])))
    return images_mod.resize(rgb, (height, width))


class PairInspector:
    """ipywidgets inspector over a dataset table (and uploads).

    Parameters
    ----------
    model : keras.Model
    table : pandas.DataFrame from :func:`imgsim.data.load_table`
    sift_config : SiftConfig, optional
        Default: the calibration's, else ``SiftConfig(max_side=640)``.
    fusion : FusionModel, optional
        Default: the calibration's.
    thresholds : dict, optional
        Initial slider values: ``{"dl": %, "sift": inliers, "fused": probability}``
        (default: the calibration's, else :data:`DEFAULT_THRESHOLDS`).
    max_upload_bytes, max_upload_pixels : int
    calibration : Calibration, optional
        Calibrated thresholds and fusion model (:func:`load_calibration`).
    model_name : str, optional
        How the page names the model (:func:`model_label`); a calibration
        made for another model is flagged.
    session_file : str, optional
        History CSV, rewritten atomically after every Compare and read back
        when the inspector starts (a page reload keeps the session). None: not saved.
    display_width : int
        Width in pixels of the drawings (they are drawn at that size).
    max_lines : int
        Most match lines drawn (a seeded random subset beyond).

    Use ``inspector.widget`` (or just display the inspector) in a notebook.
    """

    def __init__(self, model, table, sift_config=None, fusion=None, thresholds=None,
                 max_upload_bytes=MAX_UPLOAD_BYTES, calibration=None, model_name=None,
                 session_file=None, display_width=960, max_lines=60,
                 max_upload_pixels=MAX_UPLOAD_PIXELS):
        import ipywidgets as w

        self.model, self.table = model, table.reset_index(drop=True)
        self.calibration = calibration
        self.sift_config = sift_config or (calibration.sift if calibration else SiftConfig(max_side=640))
        self.fusion = fusion if fusion is not None else (calibration.fusion if calibration else None)
        self.max_upload_bytes, self.max_upload_pixels = max_upload_bytes, max_upload_pixels
        self.model_name, self.session_file = model_name, session_file
        self.display_width = display_width
        self.cache, self.result, self.result_sources = {}, None, None
        self.history = read_history(session_file)
        self._index, self._thread = None, None
        self._uploads = {"a": None, "b": None}
        self.sources = {"a": None, "b": None}
        self._syncing = False
        self.message = w.HTML("")
        self.message.add_class("imgsim-message")
        start = dict(DEFAULT_THRESHOLDS, **(calibration.thresholds if calibration else {}),
                     **(thresholds or {}))

        scenes = sorted(set(data_mod.scene_keys(self.table)))
        self.pickers = {}
        for side in ("a", "b"):
            label = side.upper()
            scene = w.Dropdown(options=scenes, value=scenes[0], description=f"scene {label}")
            image = w.Dropdown(description=f"image {label}")
            upload = w.FileUpload(accept="image/*", multiple=False, description=f"upload {label}")
            use = w.ToggleButtons(options=[("dataset image", "dataset"), ("upload", "upload")],
                                  value="dataset", description=f"compare {label}",
                                  tooltips=["the image picked above", "the uploaded file"])
            preview = w.Image(format="png")
            caption = w.HTML("")
            caption.add_class("imgsim-source")
            self.pickers[side] = {"scene": scene, "image": image, "upload": upload, "use": use,
                                  "preview": preview, "caption": caption}
            scene.observe(lambda change, s=side: self._fill_images(s), names="value")
            image.observe(lambda change, s=side: self._on_pick(s), names="value")
            upload.observe(lambda change, s=side: self._on_upload(s, change["new"]), names="value")
            use.observe(lambda change, s=side: self._on_use(s, change["new"]), names="value")
            self._fill_images(side)
        rows = self.pickers["b"]["image"]
        if len(rows.options) > 1:
            rows.value = rows.options[1][1]

        self.sliders = {
            # Fine steps: a calibrated threshold stays what the report fitted.
            "dl": w.FloatSlider(value=start["dl"], min=60.0, max=100.0, step=0.001, readout_format=".2f",
                                description="similarity %", continuous_update=True),
            "sift": w.IntSlider(value=start["sift"], min=0, max=500, description="inliers"),
            "fused": w.FloatSlider(value=start["fused"], min=0.0, max=1.0, step=0.001, readout_format=".3f",
                                   description="probability", disabled=self.fusion is None),
        }
        for slider in self.sliders.values():
            slider.observe(lambda change: self._show_verdicts(), names="value")
        available = [("deep", "dl"), ("SIFT", "sift")] + ([("fused", "fused")] if self.fusion else [])
        self.methods = w.SelectMultiple(options=available, value=tuple(v for _, v in available),
                                        description="methods", rows=3)
        self.methods.observe(lambda change: self._show_verdicts(), names="value")
        self.calibration_note = w.HTML(self._calibration_text())
        self.calibration_note.add_class("imgsim-calibration")

        self.compare_button = w.Button(description="Compare", button_style="primary")
        self.compare_button.on_click(lambda _: self.compare())
        self.busy = w.HTML("")
        self.numbers = w.HTML("")
        self.verdict = w.HTML("")
        self.placeholder = w.HTML("<div class='imgsim-placeholder'>Pick two dataset images or upload "
                                  "your own, then press <b>Compare</b>: keypoints, matches and "
                                  "verdicts appear here.</div>")
        hidden = dict(display="none")
        self.images = w.Image(format="png", layout=w.Layout(**hidden))
        self.matches = w.Image(format="png", layout=w.Layout(**hidden))
        self.drawing_note = w.HTML("")
        self.show_outliers = w.Checkbox(value=False, description="show outlier matches (red)")
        self.max_lines = w.IntSlider(value=max_lines, min=10, max=1000, step=10, description="most lines")
        for control in (self.show_outliers, self.max_lines):
            control.observe(lambda change: self._draw(), names="value")
        self.history_html = w.HTML("")
        self.download = w.HTML("")
        self.download.add_class("imgsim-download")
        self.nearest_button = w.Button(description="Nearest to A")
        self.nearest_button.on_click(lambda _: self.show_nearest())
        self.nearest_image = w.Image(format="png", layout=w.Layout(**hidden))
        limit = w.HTML(f"<span class='imgsim-note' data-imgsim-upload-limit='{max_upload_bytes}'>"
                       f"uploads: images up to {max_upload_bytes / 2**20:.0f} MB and "
                       f"{max_upload_pixels / 1e6:.0f} Mpx, decoded in memory, never stored</span>")

        side_boxes = [w.VBox([self.pickers[s][k] for k in ("scene", "image", "upload", "use", "caption",
                                                             "preview")]) for s in ("a", "b")]
        slider_box = w.VBox(list(self.sliders.values()) + [self.calibration_note])
        self.widget = w.VBox([
            w.HTML(STYLE),
            w.HBox(side_boxes), limit,
            w.HBox([self.methods, slider_box]),
            w.HBox([self.compare_button, self.busy]),
            self.message, self.numbers, self.verdict, self.placeholder,
            self.images, w.HBox([self.show_outliers, self.max_lines]), self.drawing_note, self.matches,
            w.HTML("<b>History</b> <span class='imgsim-note'>(each row keeps the thresholds and "
                   "verdicts of the moment it was compared)</span>"),
            self.history_html, self.download,
            self.nearest_button, self.nearest_image,
        ])
        self._show_history()

    # ------------------------------------------------------------------ display

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _calibration_text(self):
        c = self.calibration
        if c is None:
            text = ("<b>uncalibrated</b> default thresholds: the similarity % and inlier sliders are "
                    "guesses. Pass an <code>imgsim evaluate</code> report (<code>imgsim serve "
                    "--report reports/&lt;run&gt;/metrics.json</code>) for calibrated thresholds.")
        else:
            text = f"<b>calibrated</b> thresholds ({_escape(c.description)})"
            if self.model_name and self.model_name != c.model:
                text += (f"<br><span class='imgsim-error'>the report measured {_escape(c.model)}, "
                         f"this page runs {_escape(self.model_name)}: its thresholds may not fit</span>")
        if self.fusion is None:
            text += ("<br>fused probability: <b>off</b> — it needs the fusion model of an "
                     "<code>imgsim evaluate</code> report (<code>--report</code>)")
        return f"<span class='imgsim-note'>{text}</span>"

    # ------------------------------------------------------------------ inputs

    def _fill_images(self, side):
        scene = self.pickers[side]["scene"].value
        rows = self.table[data_mod.scene_keys(self.table) == scene]
        options = [(os.path.basename(p), p) for p in rows["path"]]
        picker, before = self.pickers[side]["image"], self.sources[side]
        picker.options = options  # selects the first option: _on_pick runs
        if options and picker.value != options[0][1]:
            picker.value = options[0][1]
        if self.sources[side] is before:  # the value did not change, but this is a new pick
            self._on_pick(side)

    def _on_pick(self, side):
        path = self.pickers[side]["image"].value
        if path is None:
            return
        self.sources[side] = Source("dataset", path, path, os.path.basename(path), os.path.abspath(path))
        self._set_use(side, "dataset")
        upload = self.pickers[side].get("upload")
        if upload is not None and upload.value:
            upload.value = ()  # the upload button shows no file that is not compared
        self._show_source(side)

    def _on_upload(self, side, value):
        if not value:
            return
        item = value[0] if isinstance(value, (list, tuple)) else next(iter(value.values()))
        content = item["content"]
        try:
            image = check_upload(item["name"], content, self.max_upload_bytes,
                                 max_pixels=self.max_upload_pixels)
        except ImgsimError as exc:  # what was compared stays as it was
            # the button shows no file that is not used, reset before the message tells why
            self.pickers[side]["upload"].value = ()
            self.message.value = _error(exc)
            return
        digest = hashlib.sha256(bytes(content)).hexdigest()[:16]
        name = "upload " + os.path.basename(item["name"])[:80]
        self._uploads[side] = Source("upload", f"upload:{digest}", image, name,
                                     f"{name} sha256:{digest}")
        self.sources[side] = self._uploads[side]
        self.message.value = f"image {side.upper()}: {_escape(name)} ready ({image.shape[1]}x{image.shape[0]})"
        self._set_use(side, "upload")
        self._show_source(side)

    def _on_use(self, side, value):
        if self._syncing:
            return
        if value == "upload":
            if self._uploads[side] is None:
                self.message.value = _error(f"image {side.upper()}: nothing uploaded yet")
                self._set_use(side, "dataset")
                return
            self.sources[side] = self._uploads[side]
        else:
            path = self.pickers[side]["image"].value
            if path is not None:
                self.sources[side] = Source("dataset", path, path, os.path.basename(path),
                                            os.path.abspath(path))
        self._show_source(side)

    def _set_use(self, side, value):
        toggle = self.pickers[side]["use"]
        self._syncing = True  # the caller has set the source already
        try:
            toggle.value = value
        finally:
            self._syncing = False

    def _show_source(self, side):
        source, p = self.sources[side], self.pickers[side]
        for key in ("scene", "image"):
            (p[key].remove_class if source.kind == "dataset" else p[key].add_class)("imgsim-inactive")
        p["caption"].value = (f"<span class='imgsim-note' data-kind='{source.kind}'>comparing "
                              f"<b>{_escape(source.name)}</b><br>{_escape(source.full)}</span>")
        from imgsim import viz

        try:
            thumbnail = _thumbnail(source.image)
        except ImgsimError as exc:
            self.message.value = _error(exc)
            return
        p["preview"].value = viz.png_bytes(thumbnail)
        p["preview"].width, p["preview"].height = str(thumbnail.shape[1]), str(thumbnail.shape[0])

    def source(self, side):
        """(cache key, image path or array, display name) of what one side compares."""
        source = self.sources[side]
        if source is None:
            raise ImageDecodeError(f"image {side.upper()}: pick an image or upload one")
        return source.key, source.image, source.name

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
            sources = (self.sources["a"], self.sources["b"])
            (key_a, image_a, name_a), (key_b, image_b, name_b) = self.source("a"), self.source("b")
            key = (key_a, key_b)
            if key not in self.cache:
                self.cache[key] = compare_pair(self.model, image_a, image_b, self.sift_config,
                                               self.fusion, names=(name_a, name_b))
            self.result, self.result_sources = self.cache[key], sources
            self.message.value = ""
            self._show_result()
            self.history.append(history_row(
                self.result, self.thresholds(), (sources[0].full, sources[1].full),
                calibration=self.calibration.report if self.calibration else None,
                methods=tuple(m for _, m in self.methods.options)))
            self._save_history()
            self._show_history()
        except ImgsimError as exc:  # the previous result stays on screen
            self.message.value = _error(exc)
        finally:
            self.busy.value = ""
            self.compare_button.disabled = False

    def thresholds(self):
        return {m: s.value for m, s in self.sliders.items()}

    def _show_result(self):
        r = self.result
        calibrated = self.calibration is not None
        threshold = self.sliders["dl"].value
        self.numbers.value = (
            f"<div class='imgsim-numbers'>similarity <b class='imgsim-similarity'>{r.similarity:.1f} %</b>"
            f" · distance {r.distance:.4f} · keypoints {r.n_keypoints_a} / {r.n_keypoints_b}"
            f" · matches {r.n_matches} · inliers <b>{r.n_inliers}</b>"
            + (f" · fused probability <b class='imgsim-probability'>{r.probability:.3f}</b>"
               if r.probability is not None else "")
            + (f" · <i>{_escape(r.reason)}</i>" if r.reason else "") + "</div>"
            f"<div class='imgsim-note'>similarity % = exp(−d/{SIMILARITY_SCALE:g})·100 of the embedding "
            f"distance d (the seed's score). Embeddings are unit vectors, so d lies in [0, 2] and the "
            f"score in [{similarity_percent(2.0, SIMILARITY_SCALE):.0f} %, 100 %]: unrelated photos "
            f"still score ~80 %. It is not a probability; read it against the "
            f"{'calibrated' if calibrated else 'uncalibrated'} threshold "
            f"({threshold:.1f} % ⇔ d ≤ {-SIMILARITY_SCALE * np.log(threshold / 100):.3f}).</div>")
        self.placeholder.layout.display = "none"
        self._draw()
        self._show_verdicts()

    def _draw(self):
        from imgsim import viz

        if self.result is None:
            return
        r, m = self.result, self.result.matches
        a, b = r.images
        half = (self.display_width - 8) // 2
        left, shown_a = viz.draw_keypoints(a, m.features_a.keypoints, half)
        right, shown_b = viz.draw_keypoints(b, m.features_b.keypoints, self.display_width - 8 - half)
        both = np.full((max(len(left), len(right)), self.display_width, 3), 255, np.uint8)
        both[:len(left), :half], both[:len(right), half + 8:] = left, right
        lines, shown, eligible = viz.draw_matches(
            a, b, m.features_a.keypoints, m.features_b.keypoints, m.matches, m.inliers,
            self.display_width, self.show_outliers.value, self.max_lines.value)
        for image, canvas in ((self.images, both), (self.matches, lines)):
            image.value = viz.png_bytes(canvas)
            image.width = str(canvas.shape[1])  # shown at the size it was drawn
            image.layout.display = None
        kind = "matches" if self.show_outliers.value else "inliers"
        self.drawing_note.value = (
            f"<span class='imgsim-note' data-shown='{shown}' data-eligible='{eligible}'>keypoints: "
            f"{shown_a} of {r.n_keypoints_a} (A), {shown_b} of {r.n_keypoints_b} (B) drawn · "
            f"{kind}: {shown} of {eligible} drawn"
            + (" (a random subset)" if shown < eligible else "") + " · green: inlier, red: outlier</span>")

    def current_verdicts(self):
        """Verdicts of the shown pair at the sliders' thresholds (no recomputation)."""
        if self.result is None:
            return {}
        return verdicts(self.result, self.thresholds(), self.methods.value)

    def _show_verdicts(self):
        if self.result is None:
            return
        scores = {"dl": f"{self.result.similarity:.1f} %", "sift": f"{self.result.n_inliers} inliers",
                  "fused": None if self.result.probability is None else f"{self.result.probability:.3f}"}
        units = {"dl": " %", "sift": " inliers", "fused": ""}
        kind = "calibrated" if self.calibration else "uncalibrated"
        parts = []
        for method, same in self.current_verdicts().items():
            text = "no score" if same is None else ("same scene" if same else "different scenes")
            colour = "#1a9850" if same else "#d73027"
            value = format(self.sliders[method].value, {"dl": ".2f", "sift": "d", "fused": ".3f"}[method])
            rule = "" if same is None else (f" ({scores[method]} {'≥' if same else '<'} {kind} "
                                            f"threshold {value}{units[method]})")
            parts.append(f"<div class='imgsim-verdict' data-method='{method}' style='color:{colour}'>"
                         f"{METHOD_NAMES[method]}: <b>{text}</b>{_escape(rule)}</div>")
        self.verdict.value = "".join(parts)

    # ------------------------------------------------------------------ history

    def history_rows(self):
        """The history rows: scores, and the thresholds and verdicts when each pair was compared."""
        return list(self.history)

    def history_csv(self):
        """The history as CSV text (:data:`HISTORY_COLUMNS`)."""
        return history_csv(self.history)

    def _save_history(self):
        if self.session_file:
            from imgsim.fileio import atomic_write_text

            try:
                atomic_write_text(self.session_file, self.history_csv())
            except OSError as exc:
                self.message.value = _error(f"{self.session_file}: history not saved ({exc.strerror})")

    def export_history(self, path="pair_history.csv"):
        """Write the history CSV to ``path`` on this machine (the page offers a browser download)."""
        from imgsim.fileio import atomic_write_text

        atomic_write_text(path, self.history_csv())
        return path

    def _show_history(self):
        def verdict(row, method):
            value, threshold = row.get(f"verdict_{method}"), row.get(f"threshold_{method}")
            if value in (None, "", "None"):
                return "–"
            same = value in (True, "True")
            return f"{'same' if same else 'different'} @ {float(threshold):.4g}"

        def number(value, digits):
            return "–" if value in (None, "", "None") else f"{float(value):.{digits}f}"

        header = ["time", "A", "B", "similarity %", "inliers", "probability", "deep", "SIFT", "fused"]
        body = "".join(
            "<tr>" + "".join(f"<td>{_escape(cell)}</td>" for cell in (
                str(r["time"]).replace("T", " ")[:19], r["name_a"], r["name_b"],
                number(r["similarity"], 1), r["n_inliers"], number(r["probability"], 3),
                verdict(r, "dl"), verdict(r, "sift"), verdict(r, "fused"))) + "</tr>"
            for r in reversed(self.history))
        self.history_html.value = ("<table class='imgsim-history'><tr>"
                                   + "".join(f"<th>{k}</th>" for k in header) + "</tr>" + body + "</table>"
                                   + ("" if self.history else "<i class='imgsim-note'>no pairs yet</i>"))
        if self.history:
            payload = base64.b64encode(self.history_csv().encode("utf-8")).decode("ascii")
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            self.download.value = (f"<a download='imgsim-pair-history-{stamp}.csv' "
                                   f"href='data:text/csv;charset=utf-8;base64,{payload}'>"
                                   f"⬇ Download history CSV ({len(self.history)} rows)</a>"
                                   + (f" <span class='imgsim-note'>· saved in {_escape(self.session_file)}"
                                      "</span>" if self.session_file else ""))
        else:
            self.download.value = ""

    # ------------------------------------------------------------------ nearest

    def show_nearest(self, k=5):
        """Draw image A's ``k`` nearest dataset images (green: same scene) with similarity %."""
        try:
            self.nearest_image.value = _show_nearest_grid(self, k)
            self.nearest_image.layout.display = None
        except ImgsimError as exc:
            self.message.value = _error(exc)

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
    fig = viz.neighbour_grid([(query, thumbs)])
    return fig._repr_png_()


# --------------------------------------------------------------------------- defaults

REPO_ROOT = os.path.dirname(os.path.dirname(data_mod.SAMPLE_DATA))
DEMO_REPORT = os.path.join(REPO_ROOT, "reports", "demo", "metrics.json")
SHIPPED_CALIBRATION = os.path.join(REPO_ROOT, "reports", "shared_data_imagenet", "metrics.json")


def _demo_model():
    """The demo run's ``best.keras`` if ``make demo`` has run here, else None."""
    from imgsim.fileio import read_json

    if not os.path.exists(DEMO_REPORT):
        return None
    candidate = os.path.join(REPO_ROOT, read_json(DEMO_REPORT).get("run_dir", ""), "best.keras")
    return candidate if os.path.isfile(candidate) else None


def _resolve_run(run):
    """A report's run folder as an existing path (reports store it relative to where they ran)."""
    for candidate in (run, os.path.join(REPO_ROOT, run)):
        if os.path.isfile(os.path.join(candidate, "best.keras")):
            return candidate
    raise ConfigError(f"{run}: the report's run folder (best.keras) is not here; pass --model")


def default_inspector(model_path=None, data_root=None, image_size=224, report="auto", sift_config=None,
                      session_file=None, max_upload_mb=MAX_UPLOAD_BYTES / 2**20):
    """A :class:`PairInspector` with sensible defaults, ready right after set-up.

    Parameters
    ----------
    model_path : str, optional
        A ``.keras`` model. Default: the report's model when a report is
        given, else the demo run's ``best.keras`` (written by ``make demo``)
        if it exists, else the ImageNet backbone (GAP features).
    data_root : str, optional
        Default: the embedded sample.
    image_size : int
        Input size of the ImageNet backbone when it is used without a report.
    report : str or None
        An evaluation ``metrics.json`` (``imgsim evaluate``): its fusion model,
        calibrated thresholds and SIFT settings are used. ``"auto"``: the
        calibration shipped in ``reports/shared_data_imagenet/`` when the
        model is the one it measured (ImageNet backbone at its input size),
        else none. None: uncalibrated.
    session_file : str, optional
        History CSV kept across page reloads (:func:`default_session_file` for
        the usual place); None keeps the history in memory only.
    max_upload_mb : float
        Largest upload accepted.
    """
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, load_model

    if report == "auto":
        model_path = model_path or _demo_model()
        fits = (model_path is None and os.path.isfile(SHIPPED_CALIBRATION)
                and load_calibration(SHIPPED_CALIBRATION).model == model_label(None, image_size))
        report = SHIPPED_CALIBRATION if fits else None
    elif report is None:
        model_path = model_path or _demo_model()
    calibration = load_calibration(report) if report else None
    if model_path is None and calibration is not None:  # the model the report measured
        if calibration.model.startswith("imagenet@"):
            image_size = int(calibration.model.split("@")[1])
        else:
            model_path = os.path.join(_resolve_run(calibration.model), "best.keras")
    if model_path:
        model, name = load_model(model_path), model_label(os.path.dirname(os.path.abspath(model_path)))
    else:
        model = build_imagenet_baseline(EmbeddingConfig(image_size=image_size))
        name = model_label(None, image_size)
    table = data_mod.load_table(data_root or data_mod.SAMPLE_DATA, on_error="skip")
    return PairInspector(model, table, sift_config, calibration=calibration, model_name=name,
                         session_file=session_file, max_upload_bytes=int(max_upload_mb * 2**20))
