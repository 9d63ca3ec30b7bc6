"""The report of a reconstructed IMC benchmark: scores, counts, stage times, camera centres.

:func:`write_report` scores a submission (:func:`imgsim.imc.score`) and writes
``metrics.json``, ``summary.md`` and ``camera_centres.png`` (true vs predicted
centres after a Horn alignment) into a report folder.
"""

import os

import numpy as np

from imgsim.fileio import atomic_write_json, atomic_write_text
from imgsim.reconstruct import STAGES



def aligned_centres(gt, submission, dataset, scene, cluster):
    """True and predicted centres of one scene's images, the prediction aligned to the truth.

    The similarity is Horn's least-squares fit on every image of ``scene``
    that ``cluster`` holds with a pose (a figure of the overall fit; the score
    itself uses RANSAC, :func:`imgsim.imc.register_by_ransac`).

    Parameters
    ----------
    gt, submission : pandas.DataFrame
        As returned by :func:`imgsim.imc.read_submission` (camera centres
        ``cx, cy, cz``).
    dataset, scene, cluster : str

    Returns
    -------
    true, predicted : arrays of shape (n, 3), n = posed ground-truth images of
    the scene; ``predicted`` rows are ``nan`` where the image is not in
    ``cluster`` or unposed, and all ``nan`` with fewer than 3 posed.
    """
    from imgsim.imc import horn_similarity

    g = gt[(gt["dataset"] == dataset) & (gt["scene"] == scene)]
    g = g[np.isfinite(g[["cx", "cy", "cz"]].to_numpy()).all(1)]
    s = submission[submission["dataset"] == dataset].set_index("image").loc[g["image"]]
    true = g[["cx", "cy", "cz"]].to_numpy()
    pred = s[["cx", "cy", "cz"]].to_numpy().copy()
    pred[(s["scene"] != cluster).to_numpy()] = np.nan
    ok = np.isfinite(pred).all(1)
    if ok.sum() < 3:
        return true, np.full_like(true, np.nan)
    scale, R, t = horn_similarity(pred[ok], true[ok])
    return true, scale * pred @ R.T + t


def write_report(gt_csv, submission_csv, run, report_dir, thresholds_csv=None):
    """Score a submission and write ``metrics.json``, ``summary.md`` and ``camera_centres.png``.

    Parameters
    ----------
    gt_csv, submission_csv : path
    run : dict
        :func:`reconstruct`'s result (timings, counts, wall time).
    report_dir : path
    thresholds_csv : path, optional
        See :func:`imgsim.imc.score`.

    Returns
    -------
    dict: the metrics written.
    """
    import warnings

    from imgsim import viz
    from imgsim.errors import ImgsimError
    from imgsim.imc import ScoreWarning, read_submission, score

    gt, submission = read_submission(gt_csv), read_submission(submission_csv)
    with warnings.catch_warnings():  # kept in metrics.json and summary.md
        warnings.simplefilter("ignore", ScoreWarning)
        result = score(gt_csv, submission_csv, thresholds_csv)
        try:
            kaggle = score(gt_csv, submission_csv, thresholds_csv, official=True)
            official = {"score": kaggle["score"], "warnings": kaggle["warnings"],
                        "datasets": {name: {k: d[k] for k in ("score", "maa", "clusterness")}
                                     for name, d in kaggle["datasets"].items()}}
        except ImgsimError as exc:
            official = {"error": f"{type(exc).__name__}: {exc}"}
    metrics = {"score": result["score"], "datasets": result["datasets"], "warnings": result["warnings"],
               "official": official, "timings": run["timings"], "info": run["info"], "wall_s": run["wall_s"],
               "config": run.get("config")}
    os.makedirs(report_dir, exist_ok=True)
    atomic_write_json(os.path.join(report_dir, "metrics.json"), metrics)
    atomic_write_text(os.path.join(report_dir, "summary.md"), summary_markdown(metrics))
    panels = []
    for name, d in sorted(result["datasets"].items()):
        for scene, s in sorted(d["scenes"].items()):
            if s["cluster"] is not None:
                true, pred = aligned_centres(gt, submission, name, scene, s["cluster"])
                if len(true) >= 3:
                    panels.append((f"{name} / {scene} (mAA {s['maa']:.2f})", true, pred))
    if panels:
        viz.save_figure(viz.camera_centres(panels), os.path.join(report_dir, "camera_centres.png"))
    return metrics


def _official_line(metrics):
    """The official metric's number beside imgsim's, with the datasets where they differ."""
    official = metrics.get("official") or {}
    if "error" in official:
        return f"Official metric (imc25-utils metric.py): cannot score: {official['error']}"
    if "score" not in official:
        return ""
    differ = [f"{name} {100 * d['score']:.2f} (imgsim: " + (
              "not scored" if metrics["datasets"][name]["score"] is None else
              f"{100 * metrics['datasets'][name]['score']:.2f}") + ")"
              for name, d in sorted(official["datasets"].items())
              if metrics["datasets"][name]["score"] is None
              or abs(d["score"] - metrics["datasets"][name]["score"]) > 1e-9]
    return (f"Official metric (imc25-utils metric.py): {official['score']:.2f}"
            + (f", differs in {', '.join(differ)}" if differ else ", agrees in every dataset"))


def _fixed(value, digits):
    return "–" if value is None else f"{value:.{digits}f}"


def summary_markdown(metrics):
    """Markdown tables of a :func:`write_report` result: datasets, then scenes."""
    notes = [f"- warning: {w}" for w in metrics.get("warnings", [])]
    lines = [f"**IMC score: {metrics['score']:.2f}** (wall time {metrics['wall_s']:.1f} s)", "",
             _official_line(metrics), ""] + (notes + [""] if notes else []) + [
             "| dataset | score | mAA | clusterness | registered / images (incl. outliers) | pairs | "
             + " | ".join(f"{s} s" for s in STAGES) + " |",
             "|---" * (6 + len(STAGES)) + "|"]
    for name, d in sorted(metrics["datasets"].items()):
        info, timing = metrics["info"][name], metrics["timings"][name]
        total = None if d["score"] is None else 100 * d["score"]
        lines.append(f"| {name} | {_fixed(total, 2)} | {_fixed(d['maa'], 3)} | {d['clusterness']:.3f} | "
                     f"{info['registered']} / {info['images']} | {info['pairs']} | "
                     + " | ".join(f"{timing.get(s, 0):.1f}" for s in STAGES) + " |")
    lines += ["", "| dataset | scene | cluster | mAA | clusterness | registered / images |",
              "|---|---|---|---|---|---|"]
    for name, d in sorted(metrics["datasets"].items()):
        for scene, s in sorted(d["scenes"].items()):
            lines.append(f"| {name} | {scene} | {s['cluster'] or '–'} | {s['maa']:.3f} | "
                         f"{s['clusterness']:.3f} | {s['registered']} / {s['total']} |")
    return "\n".join(lines) + "\n"
