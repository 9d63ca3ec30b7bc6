"""The report of a reconstructed IMC benchmark: scores, counts, stage times, camera centres.

:func:`write_report` scores a submission (:func:`imgsim.imc.score`) and writes
``metrics.json``, ``summary.md`` and ``camera_centres.png`` (true vs predicted
centres after a Horn alignment) into a report folder, with per-dataset
diagnostics (:func:`dataset_diagnostics`): verified pairs joining two
scenes, a clusters × scenes table, each scene's registered fraction and the
purity of its cluster (also for scenes without ground-truth poses, which the
IMC score cannot weigh), outliers put in a cluster and scene images left out.
"""

import os

import numpy as np
import pandas as pd

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
        result = _default_score(gt, gt_csv, submission_csv, thresholds_csv)
        try:
            kaggle = score(gt_csv, submission_csv, thresholds_csv, official=True)
            official = {"score": kaggle["score"], "warnings": kaggle["warnings"],
                        "datasets": {name: {k: d[k] for k in ("score", "maa", "clusterness")}
                                     for name, d in kaggle["datasets"].items()}}
        except ImgsimError as exc:
            official = {"error": f"{type(exc).__name__}: {exc}"}
    info = {name: {k: v for k, v in i.items() if k != "edge_list"} for name, i in run["info"].items()}
    metrics = {"score": result["score"], "datasets": result["datasets"], "warnings": result["warnings"],
               "official": official, "timings": run["timings"], "info": info, "wall_s": run["wall_s"],
               "config": run.get("config"),
               "diagnostics": dataset_diagnostics(gt_csv, submission_csv, run["info"], result)}
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
    figure = viz.camera_centres(panels)
    if not panels:  # an unposed benchmark: say so rather than leave no figure
        figure.text(0.5, 0.5, "no scene with 3 posed images: nothing to align", ha="center")
    viz.save_figure(figure, os.path.join(report_dir, "camera_centres.png"))
    return metrics


def _default_score(gt, gt_csv, submission_csv, thresholds_csv):
    """imgsim's score; for a ground truth without one scorable scene (an unposed benchmark) the
    official rule's matching of scenes and clusters, every score and mAA None."""
    from imgsim.imc import OUTLIERS, TO_DEC, score

    posed = gt[(gt["scene"] != OUTLIERS) & np.isfinite(gt[["cx", "cy", "cz"]].to_numpy()).all(1)]
    if (posed.groupby(["dataset", "scene"]).size() > TO_DEC).any():
        return score(gt_csv, submission_csv, thresholds_csv)
    result = score(gt_csv, submission_csv, thresholds_csv, official=True)
    for d in result["datasets"].values():
        d["score"] = d["maa"] = None
    return {**result, "score": None, "official": False, "warnings": result["warnings"] + [
        f"no scene has more than {TO_DEC} posed images: no IMC score; clusters are matched to "
        "scenes as the official rule does, for the diagnostics"]}


def _source_labels(gt_csv, gt):
    """Each ground-truth image's source scene (``benchmark_sources.csv`` beside ``gt_csv``)."""
    from imgsim.benchmarks import SOURCES_FILE

    file = os.path.join(os.path.dirname(os.fspath(gt_csv)), SOURCES_FILE)
    if not os.path.exists(file):
        return {}
    sources = pd.read_csv(file, dtype=str, keep_default_na=False)
    return {(d, i): s for d, i, s in zip(sources["dataset"], sources["image"], sources["source"])}


def _has_pose(column):
    """Rows with a pose: not ``nan``, ``nan;nan;…`` (Kaggle's form) or empty."""
    first = column.astype(str).str.split(";").str[0].str.strip().str.lower()
    return ~first.isin(["nan", ""])


def dataset_diagnostics(gt_csv, submission_csv, info, result):
    """Per dataset: where the match graph and the clusters went wrong.

    Parameters
    ----------
    gt_csv, submission_csv : path
    info : dict
        :func:`imgsim.reconstruct.reconstruct`'s ``info`` (``edge_list``: the
        verified pairs; optional).
    result : dict
        :func:`imgsim.imc.score`'s result (which cluster each scene matched).

    Returns
    -------
    dict dataset -> {"pairs", "verified", "cross_scene_verified" (verified
    pairs whose images belong to two different scenes; an outlier photo
    counts as its source scene where ``benchmark_sources.csv`` is present,
    else as a scene of its own), "confusion" ({cluster: {scene: images}}),
    "scenes" ({scene: {"images", "posed", "registered" (in a cluster, with a
    pose), "in_main_cluster",
    "main_cluster", "purity"}}), "outliers_in_scene_clusters" (ground-truth
    outliers in a cluster some scene matched), "outliers_in_other_clusters",
    "scene_images_left_out" (scene images not in their scene's matched
    cluster)}.
    """
    from imgsim.imc import OUTLIERS

    gt = pd.read_csv(gt_csv, dtype=str, keep_default_na=False)
    sub = pd.read_csv(submission_csv, dtype=str, keep_default_na=False)
    sources = _source_labels(gt_csv, gt)
    out = {}
    for name, g in gt.groupby("dataset", sort=True):
        rows_sub = sub[sub["dataset"] == name].set_index("image")
        s = rows_sub["scene"]
        has_pose = _has_pose(rows_sub["rotation_matrix"])
        truth = dict(zip(g["image"], g["scene"]))
        posed = dict(zip(g["image"], _has_pose(g["rotation_matrix"])))
        origin = {i: (sources.get((name, i), f"outlier:{i}") if sc == OUTLIERS else sc)
                  for i, sc in truth.items()}
        edges = (info.get(name) or {}).get("edge_list", [])
        cross = sum(origin.get(a) != origin.get(b) for a, b, *_ in edges)
        confusion = pd.crosstab(s.reindex(g["image"]).to_numpy(), g["scene"].to_numpy())
        scenes = {}
        for scene, rows in g[g["scene"] != OUTLIERS].groupby("scene"):
            placed = s.reindex(rows["image"])
            counts = placed[placed != OUTLIERS].value_counts()
            main = counts.index[0] if len(counts) else None
            scenes[scene] = {
                "images": len(rows), "posed": int(sum(posed[i] for i in rows["image"])),
                "registered": int(((placed != OUTLIERS) & has_pose.reindex(rows["image"])).sum()),
                "in_main_cluster": int(counts.iloc[0]) if main else 0, "main_cluster": main,
                "purity": float(counts.iloc[0] / (s == main).sum()) if main else 0.0}
        # each scene's cluster: the one the score matched it to (its main cluster where the score
        # matched none, or matched `outliers` as the official rule may)
        scored = result["datasets"].get(name, {}).get("scenes", {})
        cluster_of = {scene: scored.get(scene, {}).get("cluster") or x["main_cluster"]
                      for scene, x in scenes.items()}
        cluster_of = {scene: c if c != OUTLIERS else scenes[scene]["main_cluster"]
                      for scene, c in cluster_of.items()}
        matched = {c for c in cluster_of.values() if c is not None}
        left_out = sum(int((s.reindex(rows["image"]) != cluster_of[scene]).sum())
                       for scene, rows in g[g["scene"] != OUTLIERS].groupby("scene"))
        outliers = s.reindex(g.loc[g["scene"] == OUTLIERS, "image"])
        out[name] = {
            "pairs": (info.get(name) or {}).get("pairs", "–"),
            "verified": (info.get(name) or {}).get("verified", len(edges)),
            "cross_scene_verified": int(cross),
            "confusion": {str(c): {str(k): int(v) for k, v in row.items() if v}
                          for c, row in confusion.iterrows()},
            "scenes": scenes,
            "outliers": int(len(outliers)),
            "outliers_in_scene_clusters": int(outliers.isin(matched).sum()),
            "outliers_in_other_clusters": int(((outliers != OUTLIERS) & ~outliers.isin(matched)).sum()),
            "scene_images": int((g["scene"] != OUTLIERS).sum()),
            "scene_images_left_out": int(left_out)}
    return out


def diagnostics_markdown(diagnostics):
    """Markdown tables of :func:`dataset_diagnostics`."""
    from imgsim.imc import TO_DEC

    unposed = sorted(name for name, d in diagnostics.items()
                     if not any(x["posed"] > TO_DEC for x in d["scenes"].values()))
    lines = [""] + ([f"No scene of {', '.join(unposed)} has more than {TO_DEC} posed images: no IMC "
                     "score (the official rule counts 0); their measure is each scene's registered "
                     "images and the purity of its main cluster below.", ""] if unposed else [])
    lines += ["| dataset | pairs | verified | verified across scenes | outliers in a scene's cluster "
             "| outliers in other clusters | scene images left out |", "|---" * 7 + "|"]
    for name, d in sorted(diagnostics.items()):
        lines.append(f"| {name} | {d['pairs']} | {d['verified']} | {d['cross_scene_verified']} | "
                     f"{d['outliers_in_scene_clusters']} / {d['outliers']} | "
                     f"{d['outliers_in_other_clusters']} / {d['outliers']} | "
                     f"{d['scene_images_left_out']} / {d['scene_images']} |")
    lines += ["", "| dataset | scene | images (posed) | registered | in its main cluster | "
              "main cluster | purity |", "|---" * 7 + "|"]
    for name, d in sorted(diagnostics.items()):
        for scene, x in sorted(d["scenes"].items()):
            lines.append(f"| {name} | {scene} | {x['images']} ({x['posed']}) | {x['registered']} | "
                         f"{x['in_main_cluster']} | {x['main_cluster'] or '–'} | {x['purity']:.3f} |")
    for name, d in sorted(diagnostics.items()):
        scenes = sorted({k for row in d["confusion"].values() for k in row},
                        key=lambda k: (k == "outliers", k))
        lines += ["", f"Clusters × scenes, {name}:", "",
                  "| cluster | " + " | ".join(scenes) + " |", "|---" * (len(scenes) + 1) + "|"]
        for cluster, row in sorted(d["confusion"].items()):
            lines.append(f"| {cluster} | " + " | ".join(str(row.get(k, 0)) for k in scenes) + " |")
    return "\n".join(lines) + "\n"


def sweep_metrics(metrics):
    """The headline numbers of a :func:`write_report` result, for a sweep's summary table."""
    diagnostics = metrics.get("diagnostics") or {}
    return {"score": metrics["score"], "wall_s": metrics["wall_s"],
            "stage_s": {s: sum(t.get(s, 0.0) for t in metrics["timings"].values()) for s in STAGES},
            "pairs": sum(i["pairs"] for i in metrics["info"].values()),
            "outliers_clustered": sum(d["outliers_in_scene_clusters"] for d in diagnostics.values()),
            "scene_images_left_out": sum(d["scene_images_left_out"] for d in diagnostics.values()),
            "datasets": {k: {m: d[m] for m in ("score", "maa", "clusterness")}
                         for k, d in metrics["datasets"].items()}}


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
    lines = [f"**IMC score: {_fixed(metrics['score'], 2)}** (wall time {metrics['wall_s']:.1f} s)", "",
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
    text = "\n".join(lines) + "\n"
    if metrics.get("diagnostics"):
        text += diagnostics_markdown(metrics["diagnostics"])
    return text
