"""Figures from arrays and metrics: computing happens elsewhere, drawing happens here.

Every function returns an :class:`InlineFigure` (a matplotlib ``Figure``
drawn with the non-interactive Agg canvas, outside pyplot) and never runs a
model. :func:`save_figure` writes a PNG atomically.
"""

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgsim.fileio import atomic_write_bytes

INLIER_COLOUR, OUTLIER_COLOUR = "#1a9850", "#d73027"


class InlineFigure(Figure):
    """A matplotlib ``Figure`` that every Jupyter front end shows inline as PNG.

    Figures made outside pyplot (no figure manager, nothing left open in
    ``pyplot``'s registry) have no display formatter unless the inline
    backend happened to be loaded; :meth:`_repr_png_` is IPython's standard
    hook, used by the kernel whatever the front end (JupyterLab, nbconvert,
    papermill, Voilà). Where pyplot's inline backend is active, its own
    formatter takes precedence and honours ``InlineBackend.figure_formats``.
    """

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def _figure(*args, **kwargs):
    return InlineFigure(*args, **kwargs)


def save_figure(fig, path, dpi=110):
    """Write ``fig`` to ``path`` as PNG, atomically; returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def roc_curves(curves, title="ROC on test pairs"):
    """ROC curves of several methods: full range (left) and low false-positive rates (right).

    Parameters
    ----------
    curves : dict of name → (y_true, scores)
        Scores: higher means same scene.
    """
    from sklearn.metrics import RocCurveDisplay, roc_curve

    fig = _figure(figsize=(10, 4.6), layout="constrained")
    full, low = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, (y_true, scores) in curves.items():
        display = RocCurveDisplay.from_predictions(y_true, scores, name=name, ax=full)
        fpr, tpr, _ = roc_curve(y_true, scores)
        low.plot(np.maximum(fpr, 1e-4), tpr, color=display.line_.get_color(), label=name)
    full.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    full.set_title(title)
    low.set_xscale("log")
    low.set_xlim(1e-3, 1.0)
    low.axvline(0.01, c="grey", lw=0.8, ls="--", label="FPR 1 %")
    low.set_xlabel("false positive rate (log)")
    low.set_ylabel("true positive rate")
    low.set_title("low false-positive rates")
    low.legend(fontsize=8)
    return fig


def score_histograms(panels, bins=30):
    """Positive vs negative score distributions, one panel per method, with the threshold.

    Parameters
    ----------
    panels : dict of name → (y_true, values, threshold, xlabel)
    """
    fig = _figure(figsize=(4.2 * len(panels), 3.4))
    for i, (name, (y_true, values, threshold, xlabel)) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        y_true, values = np.asarray(y_true), np.asarray(values, np.float64)
        edges = np.histogram_bin_edges(values, bins=bins)
        ax.hist(values[y_true == 1], bins=edges, alpha=0.6, color=INLIER_COLOUR, label="same scene")
        ax.hist(values[y_true == 0], bins=edges, alpha=0.6, color=OUTLIER_COLOUR, label="different")
        ax.axvline(threshold, c="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    return fig


def neighbour_grid(rows):
    """Query images and their nearest neighbours, framed green (same scene) or red.

    Parameters
    ----------
    rows : list of (query_image, [(image, same_scene, caption), ...])
        Images are (h, w, 3) uint8 arrays.
    """
    n_cols = 1 + max(len(neighbours) for _, neighbours in rows)
    fig = _figure(figsize=(1.9 * n_cols, 2.0 * len(rows)))
    for r, (query, neighbours) in enumerate(rows):
        ax = fig.add_subplot(len(rows), n_cols, r * n_cols + 1)
        ax.imshow(query)
        ax.set_title("query", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        for c, (image, same, caption) in enumerate(neighbours):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 2)
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(INLIER_COLOUR if same else OUTLIER_COLOUR)
                spine.set_linewidth(4)
            ax.set_title(caption, fontsize=7)
    return fig


def keypoints_figure(image, keypoints, scales=None, title="SIFT keypoints"):
    """Keypoints (n, 2) in image pixels drawn over ``image``; circle size follows scale."""
    fig = _figure(figsize=(6, 6 * image.shape[0] / image.shape[1]))
    ax = fig.add_subplot()
    ax.imshow(image)
    size = 4.0 if scales is None else np.clip(np.asarray(scales) * 2.0, 2, 60)
    ax.scatter(keypoints[:, 0], keypoints[:, 1], s=size, facecolors="none", edgecolors="yellow",
               linewidths=0.6)
    ax.set_title(f"{title} ({len(keypoints)})")
    ax.set_axis_off()
    return fig


def matches_figure(image_a, image_b, kp_a, kp_b, matches, inlier_mask, title="", max_lines=300):
    """Two images side by side with matches: inliers green, outliers red.

    Parameters
    ----------
    kp_a, kp_b : (n, 2) keypoints in each image's pixels
    matches : (m, 2) int index pairs into ``kp_a`` and ``kp_b``
    inlier_mask : (m,) bool
    """
    height = max(image_a.shape[0], image_b.shape[0])
    canvas = np.zeros((height, image_a.shape[1] + image_b.shape[1], 3), np.uint8)
    canvas[:image_a.shape[0], :image_a.shape[1]] = image_a
    canvas[:image_b.shape[0], image_a.shape[1]:] = image_b
    fig = _figure(figsize=(10, 10 * height / canvas.shape[1] + 0.4))
    ax = fig.add_subplot()
    ax.imshow(canvas)
    matches, inlier_mask = np.asarray(matches), np.asarray(inlier_mask, bool)
    order = np.random.default_rng(0).permutation(len(matches))[:max_lines]
    for i in order:
        a, b = kp_a[matches[i, 0]], kp_b[matches[i, 1]]
        colour = INLIER_COLOUR if inlier_mask[i] else OUTLIER_COLOUR
        ax.plot([a[0], b[0] + image_a.shape[1]], [a[1], b[1]], c=colour, lw=0.6,
                alpha=0.9 if inlier_mask[i] else 0.4)
    ax.set_title(f"{title} — {int(inlier_mask.sum())} inliers / {len(matches)} matches")
    ax.set_axis_off()
    return fig


def embedding_projection(points, labels, title="Embeddings (PCA, 2-D)"):
    """Scatter of 2-D points coloured by label (legend when few labels)."""
    fig = _figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    labels = np.asarray(labels)
    names = sorted(set(labels.tolist()))
    colours = _palette(len(names))
    for name, colour in zip(names, colours):
        mask = labels == name
        ax.scatter(points[mask, 0], points[mask, 1], s=18, color=colour, label=str(name))
    if len(names) <= 20:
        ax.legend(fontsize=6, loc="best", ncol=2)
    ax.set_title(title)
    return fig


def _palette(n):
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if n <= 20 else colormaps["nipy_spectral"]
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


def image_grid(groups, title=None):
    """One row per group of thumbnails: ``[(label, [image, ...]), ...]``."""
    n_cols = max(len(images) for _, images in groups)
    fig = _figure(figsize=(1.6 * n_cols + 1.5, 1.6 * len(groups) + (0.4 if title else 0)),
                  layout="constrained")
    for r, (label, images) in enumerate(groups):
        for c, image in enumerate(images):
            ax = fig.add_subplot(len(groups), n_cols, r * n_cols + c + 1)
            ax.imshow(image)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label.split("/")[-1], fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    return fig


def history_figure(history, metrics=("loss", "val_loss", "val_map_at_r", "val_precision_at_1")):
    """Training curves from ``history.csv`` rows (dicts of strings or numbers), one panel each."""
    shown = [m for m in metrics if history and m in history[0]]
    fig = _figure(figsize=(3.6 * max(len(shown), 1), 3.0))
    epochs = [int(r["epoch"]) + 1 for r in history]
    for i, name in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        ax.plot(epochs, [float(r[name]) for r in history], marker="o", ms=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if len(epochs) <= 10:  # whole epochs on the axis, never 0.95 ... 1.05
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def metrics_vs_parameters(rows, metrics, parameters):
    """Sweep summary: one scatter panel per (metric, swept parameter), metrics as rows."""
    fig = _figure(figsize=(3.4 * len(parameters), 2.6 * len(metrics)), layout="constrained")
    for i, metric in enumerate(metrics):
        for j, parameter in enumerate(parameters):
            ax = fig.add_subplot(len(metrics), len(parameters), i * len(parameters) + j + 1)
            points = [(r.get(parameter), r[metric]) for r in rows if r.get(metric) is not None]
            if points:
                xs, ys = zip(*points)
                numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
                if not numeric:
                    names = sorted(set(map(str, xs)))
                    ax.set_xticks(range(len(names)), names)
                    xs = [names.index(str(x)) for x in xs]
                ax.scatter(xs, ys)
                if numeric and min(xs) > 0 and max(xs) / min(xs) >= 20:
                    ax.set_xscale("log")
            ax.set_xlabel(parameter, fontsize=8)
            ax.set_ylabel(metric, fontsize=8)
    return fig


def pair_keypoints_figure(image_a, image_b, kp_a, kp_b, names=("A", "B")):
    """The two images of a pair side by side, each with its keypoints."""
    fig = _figure(figsize=(10, 4.2))
    for i, (image, kp, name) in enumerate(((image_a, kp_a, names[0]), (image_b, kp_b, names[1]))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.imshow(image)
        ax.scatter(kp[:, 0], kp[:, 1], s=3, c="yellow", linewidths=0)
        ax.set_title(f"{name} ({len(kp)} keypoints)", fontsize=9)
        ax.set_axis_off()
    return fig


def camera_centres(panels, ncols=3):
    """Predicted vs true camera centres after alignment, one panel per scene.

    Parameters
    ----------
    panels : list of (title, true, predicted)
        ``true`` and ``predicted``: arrays of shape (n, 3) in the ground-truth
        frame, rows matching; unregistered cameras are rows of ``nan`` in
        ``predicted``. Each panel shows the plane of the two principal axes
        of the true centres (a top view for a camera path on the ground).
    """
    rows = max(1, int(np.ceil(len(panels) / ncols)))
    fig = _figure(figsize=(4.2 * min(ncols, max(len(panels), 1)), 3.8 * rows), layout="constrained")
    for k, (title, true, pred) in enumerate(panels):
        ax = fig.add_subplot(rows, min(ncols, len(panels)), k + 1)
        true, pred = np.asarray(true, float), np.asarray(pred, float)
        centre = true.mean(0)
        axes = np.linalg.svd(true - centre, full_matrices=False)[2][:2].T
        t2, p2 = (true - centre) @ axes, (pred - centre) @ axes
        ok = np.isfinite(p2).all(1)
        for a, b in zip(t2[ok], p2[ok]):
            ax.plot([a[0], b[0]], [a[1], b[1]], c="grey", lw=0.7)
        ax.scatter(t2[:, 0], t2[:, 1], s=22, facecolors="none", edgecolors="#1f78b4", label="true")
        ax.scatter(p2[ok, 0], p2[ok, 1], s=10, c=INLIER_COLOUR, label="predicted (aligned)")
        ax.scatter(t2[~ok, 0], t2[~ok, 1], s=30, marker="x", c=OUTLIER_COLOUR, label="unregistered")
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"{title}\n{int(ok.sum())}/{len(true)} registered", fontsize=9)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    return fig


def paired_differences(results, figures):
    """Forest plot of paired differences: one panel per figure, one row per recipe.

    Parameters
    ----------
    results : dict of recipe name → pooled figures
        Each figure a dict with ``difference``, ``low``, ``high`` (recipe −
        baseline and its interval) and ``imagenet`` (the baseline's value),
        as :func:`imgsim.crossval.paired_summary` returns. Rows are drawn in
        the order given, top to bottom.
    figures : sequence of str
        Which figures, one panel each.

    An interval wholly above 0 is green, wholly below red, otherwise grey.
    """
    names = list(results)
    ncols = min(len(figures), 4)
    nrows = int(np.ceil(len(figures) / ncols))
    fig = _figure(figsize=(3.7 * ncols, (0.42 * len(names) + 1.5) * nrows), layout="constrained")
    y = np.arange(len(names))[::-1]
    for j, name in enumerate(figures):
        ax = fig.add_subplot(nrows, ncols, j + 1)
        for row, recipe in zip(y, names):
            v = results[recipe][name]
            d, lo, hi = v["difference"], v["low"], v["high"]
            colour = INLIER_COLOUR if lo > 0 else OUTLIER_COLOUR if hi < 0 else "grey"
            if np.isfinite(d):
                ax.errorbar([d], [row], xerr=[[d - lo], [hi - d]], fmt="o", color=colour,
                            ms=4, capsize=3, lw=1.2)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(y, names if j % ncols == 0 else [""] * len(names), fontsize=8)
        ax.set_ylim(-0.7, len(names) - 0.3)
        base = results[names[0]][name]["imagenet"] if names else float("nan")
        ax.set_title(f"{name}\n(ImageNet {base:.3f})", fontsize=9)
        ax.set_xlabel("recipe − ImageNet", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", lw=0.4, alpha=0.5)
    return fig


# --------------------------------------------------------------------------- drawings at display size
#
# The inspector shows keypoints and matches as images of exactly the size they are displayed at
# (no figure resampled by the browser): OpenCV draws anti-aliased marks on the photos scaled to
# ``width`` pixels. Each function returns an (h, width, 3) uint8 array and what it drew.

INLIER_RGB, OUTLIER_RGB, KEYPOINT_RGB = (26, 152, 80), (215, 48, 39), (255, 221, 0)


def _subsample(n, cap, seed):
    """Sorted indices of at most ``cap`` of ``n`` items, drawn without replacement (seeded)."""
    if cap is None or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _scaled(image, width):
    """``image`` resized to ``width`` pixels wide (aspect kept) and its scale factor."""
    import cv2

    factor = width / image.shape[1]
    height = max(1, int(round(image.shape[0] * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=interpolation), factor


def draw_keypoints(image, keypoints, width=480, max_points=300, seed=0):
    """Keypoints (n, 2) in ``image`` pixels drawn as small circles on ``image`` shown ``width`` px wide.

    Returns
    -------
    (canvas, shown) : ((h, width, 3) uint8 array, number of keypoints drawn — at most ``max_points``,
    a seeded random subset when there are more)
    """
    import cv2

    canvas, factor = _scaled(image, width)
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, 2)
    keep = _subsample(len(keypoints), max_points, seed)
    for x, y in keypoints[keep] * factor:
        cv2.circle(canvas, (int(round(x)), int(round(y))), 3, KEYPOINT_RGB, 1, cv2.LINE_AA)
    return canvas, len(keep)


def draw_matches(image_a, image_b, kp_a, kp_b, matches, inlier_mask, width=960, show_outliers=False,
                 max_lines=150, seed=0, gap=8):
    """Two photos side by side, ``width`` px wide in all, with match lines.

    Inliers are drawn green; outliers red only with ``show_outliers``. At most
    ``max_lines`` lines are drawn (a seeded random subset of those eligible).

    Parameters
    ----------
    kp_a, kp_b : (n, 2) keypoints in each photo's pixels
    matches : (m, 2) int index pairs into ``kp_a`` and ``kp_b``
    inlier_mask : (m,) bool

    Returns
    -------
    (canvas, shown, eligible) : the (h, width, 3) uint8 array, lines drawn, lines that could be drawn
    """
    import cv2

    half = (width - gap) // 2
    a, fa = _scaled(image_a, half)
    b, fb = _scaled(image_b, width - gap - half)
    canvas = np.full((max(len(a), len(b)), width, 3), 255, np.uint8)
    canvas[:len(a), :half] = a
    canvas[:len(b), half + gap:] = b
    matches = np.asarray(matches, np.int64).reshape(-1, 2)
    inlier_mask = np.asarray(inlier_mask, bool).reshape(-1)
    eligible = np.arange(len(matches)) if show_outliers else np.flatnonzero(inlier_mask)
    chosen = eligible[_subsample(len(eligible), max_lines, seed)]
    # outliers first, so inliers stay on top
    for i in sorted(chosen, key=lambda i: inlier_mask[i]):
        pa = np.asarray(kp_a[matches[i, 0]], np.float64) * fa
        pb = np.asarray(kp_b[matches[i, 1]], np.float64) * fb + (half + gap, 0)
        colour = INLIER_RGB if inlier_mask[i] else OUTLIER_RGB
        pa, pb = tuple(int(round(v)) for v in pa), tuple(int(round(v)) for v in pb)
        cv2.line(canvas, pa, pb, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, pa, 2, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, pb, 2, colour, -1, cv2.LINE_AA)
    return canvas, len(chosen), len(eligible)


def png_bytes(rgb):
    """PNG-encode an (h, w, 3) uint8 RGB array."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()
