"""The IMC task's evidence for ``reports/imc/``: runs, then the report built from them.

``run``: reconstruct one benchmark folder at one setting into a report folder
(submission, ``metrics.json``, ``summary.md``, figure) and append one line —
load average, report folder, score, wall time — to a log::

    nice -n 5 flock /tmp/imgsim-timing.lock python benchmarks/imc_before_after.py run \\
        BENCH_ROOT WORK_DIR REPORT_DIR --shortlist-k 10 --log runs.log

Use a fresh ``WORK_DIR`` per timed run: stage outputs and SIFT features are
cached there, and a cached stage costs nothing.

``report``: the tables of ``reports/imc/summary.md`` and ``metrics.json`` from
such report folders (``before-<benchmark>-k<k>``, ``after-<benchmark>-k<k>``
under ``--runs``), the logs (load averages) and a sweep's ``summary.csv``::

    python benchmarks/imc_before_after.py report --runs DIR --log DIR/runs.log \\
        --sweep SWEEP/summary.csv --out reports/imc

Every number in the report comes from those files; the diagnostics of a
"before" submission (written by older code) are recomputed here with
:func:`imgsim.imc_report.dataset_diagnostics` from its submission and the
ground truth.
"""

import argparse
import json
import os
import re
import shutil
import sys
import time

STAGES = ("embed", "pairs", "match", "cluster", "sfm")
KS = (("10", "shortlist (k = 10)"), ("0", "all pairs"))


def cmd_run(args):
    from imgsim.imc_report import write_report
    from imgsim.reconstruct import ReconstructConfig, reconstruct

    cfg = dict(shortlist_k=args.shortlist_k, image_size=224, sift={"max_side": 1024, "n_features": 4000})
    cfg.update(json.loads(args.settings))
    config = ReconstructConfig(**cfg)
    os.makedirs(args.report, exist_ok=True)
    load_before = os.getloadavg()
    run = reconstruct(args.bench, os.path.join(args.report, "submission.csv"), work_dir=args.work,
                      config=config)
    metrics = write_report(os.path.join(args.bench, "train_labels.csv"),
                           os.path.join(args.report, "submission.csv"), run, args.report)
    line = (f"{os.getloadavg()} {os.path.abspath(args.report)} score "
            f"{metrics['score'] and round(metrics['score'], 2)} wall {run['wall_s']:.1f} "
            f"load_before {load_before} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
    print(line, flush=True)
    if args.log:
        with open(args.log, "a") as f:
            f.write(line + "\n")


# --------------------------------------------------------------------------- report


def read_loads(logs):
    """{report folder name: 1-minute load average at the run's end} from ``run``'s log lines."""
    loads = {}
    for log in logs:
        for line in open(log):
            m = re.match(r"\(([^)]*)\) (\S+) score", line)
            if m:
                loads[os.path.basename(m.group(2).rstrip("/"))] = float(m.group(1).split(",")[0])
    return loads


def load_run(folder, name, gt_root):
    """metrics.json of a report folder, with diagnostics and per-stage sums over datasets.

    A "before" folder (the code before issue 11) has no diagnostics: they are
    recomputed from its submission and ``gt_root/<benchmark>/train_labels.csv``.
    That code's ``timings.json`` summed every run of a work dir, and its
    all-pairs runs shared the shortlist run's work dir: their stage times are
    the difference.
    """
    from imgsim.imc import score
    from imgsim.imc_report import dataset_diagnostics

    m = json.load(open(os.path.join(folder, name, "metrics.json")))
    m["stage_s"] = {s: sum(t.get(s, 0.0) for t in m.get("timings", {}).values()) for s in STAGES}
    if "diagnostics" not in m:
        bench = name.split("-")[1]
        gt = os.path.join(gt_root, bench, "train_labels.csv")
        sub = os.path.join(folder, name, "submission.csv")
        m["diagnostics"] = dataset_diagnostics(gt, sub, {}, score(gt, sub))
        if name.endswith("-k0"):
            first = load_run(folder, name[:-1] + "10", gt_root)["stage_s"]
            m["stage_s"] = {s: m["stage_s"][s] - first[s] for s in STAGES}
    return m


def pct(x):
    return "–" if x is None else f"{100 * x:.2f}"


def _sum(diag, key):
    return sum(d[key] for d in diag.values())


def before_after_table(runs, bench):
    out = ["| pairs | dataset | score before | score after | mAA before → after | clusterness before → after "
           "| outliers in a scene's cluster, before → after (of outliers) "
           "| scene images left out, before → after (of scene images) |",
           "|---|---|---|---|---|---|---|---|"]
    for k, label in KS:
        b, a = runs.get(f"before-{bench}-k{k}"), runs.get(f"after-{bench}-k{k}")
        if a is None:
            continue
        for name in sorted(a["datasets"]):
            db, da = (b["datasets"][name] if b else None), a["datasets"][name]
            gb, ga = (b["diagnostics"][name] if b else None), a["diagnostics"][name]
            out.append(
                f"| {label} | {name} | {pct(db and db['score'])} | **{pct(da['score'])}** | "
                f"{db['maa']:.3f} → {da['maa']:.3f} | {db['clusterness']:.3f} → {da['clusterness']:.3f} | "
                f"{gb['outliers_in_scene_clusters'] if gb else '–'} → {ga['outliers_in_scene_clusters']} "
                f"of {ga['outliers']} | {gb['scene_images_left_out'] if gb else '–'} → "
                f"{ga['scene_images_left_out']} of {ga['scene_images']} |")
        lowest = min(100 * d["score"] for d in a["datasets"].values())
        out.append(
            f"| {label} | **mean** | {b['score']:.2f} | **{a['score']:.2f}** (lowest {lowest:.2f}) | | | "
            f"{_sum(b['diagnostics'], 'outliers_in_scene_clusters') if b else '–'} → "
            f"{_sum(a['diagnostics'], 'outliers_in_scene_clusters')} of {_sum(a['diagnostics'], 'outliers')} | "
            f"{_sum(b['diagnostics'], 'scene_images_left_out') if b else '–'} → "
            f"{_sum(a['diagnostics'], 'scene_images_left_out')} of {_sum(a['diagnostics'], 'scene_images')} |")
    return out


def timing_table(runs, loads, benches):
    out = ["| benchmark | code | pairs | pairs matched | " + " | ".join(f"{s} s" for s in STAGES)
           + " | wall s | load (1 min, at the end) | all pairs / shortlist wall |",
           "|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|"]
    ratios = {}
    for bench in benches:
        for who in ("before", "after", "after_loaded"):  # after_loaded: a repeat under heavier load
            walls = {}
            for k, label in KS:
                name = f"{who}-{bench}-k{k}"
                m = runs.get(name)
                if m is None:
                    continue
                walls[k] = m["wall_s"]
                ratio = ""
                if k == "0" and "10" in walls:
                    ratios[f"{who}-{bench}"] = walls["0"] / walls["10"]
                    ratio = f"{ratios[f'{who}-{bench}']:.2f}×"
                npairs = sum(i["pairs"] for i in m["info"].values())
                out.append(f"| {bench} | {who} | {label} | {npairs} | "
                           + " | ".join(f"{m['stage_s'][s]:.1f}" for s in STAGES)
                           + f" | {m['wall_s']:.1f} | {loads.get(name) or float('nan'):.1f} | {ratio} |")
    return out, ratios


def unposed_table(runs):
    out = ["| pairs | code | dataset | scene | images | registered | in its main cluster | cluster purity |",
           "|---|---|---|---|---|---|---|---|"]
    for k, label in KS:
        for who in ("before", "after"):
            m = runs.get(f"{who}-unposed-k{k}")
            for name, d in sorted((m or {}).get("diagnostics", {}).items()):
                for scene, s in sorted(d["scenes"].items()):
                    out.append(f"| {label} | {who} | {name} | {scene} | {s['images']} | {s['registered']} "
                               f"({s['registered'] / s['images']:.0%}) | {s['in_main_cluster']} | "
                               f"{s['purity']:.3f} |")
                out.append(f"| {label} | {who} | {name} | outliers | {d['outliers']} | | "
                           f"{d['outliers_in_scene_clusters']} in a scene's cluster | |")
    return out


def sweep_table(csv_path):
    """The sweep's summary.csv as a Markdown table (scores in %), and the frame."""
    import pandas as pd

    df = pd.read_csv(csv_path)
    df = df[df["status"] == "ok"] if "status" in df.columns else df
    keep = [c for c in ("benchmark", "shortlist_k", "min_inliers", "settings", "score", "wall_s",
                        "outliers_clustered", "scene_images_left_out") if c in df.columns]
    per = [c for c in df.columns if c.startswith("datasets.") and c.endswith(".score")]
    head = keep + [c.split(".")[1] for c in per]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in df.iterrows():
        cells = []
        for c in keep + per:
            v = row[c]
            if isinstance(v, float) and v != v:
                cells.append("")
            elif c in per:
                cells.append(f"{100 * v:.2f}")
            elif isinstance(v, float):
                cells.append(f"{v:g}" if v.is_integer() and c != "score" else f"{v:.2f}")
            else:
                cells.append(str(v).replace("|", "/"))
        out.append("| " + " | ".join(cells) + " |")
    return out, df


def cmd_report(args):
    import pandas as pd

    runs = {}
    for name in sorted(os.listdir(args.runs)):
        if re.fullmatch(r"(before|after|after_loaded)-(hard|full|unposed)-k\d+", name) and \
                os.path.isfile(os.path.join(args.runs, name, "metrics.json")):
            runs[name] = load_run(args.runs, name, args.gt_root)
    logged = read_loads(args.log)  # a run folder may be a link to the folder the log names
    loads = {name: logged.get(name, logged.get(os.path.basename(os.path.realpath(os.path.join(args.runs, name)))))
             for name in runs}
    lines = ["# The IMC task on the hard, full and unposed benchmarks", "",
             "Generated by `benchmarks/imc_before_after.py report` from the run folders (its `run` verb) "
             "and logs it is given; every run on the 2-core VM (no GPU), `nice -n 5`, timed runs under "
             "`flock /tmp/imgsim-timing.lock`, each in a fresh work dir unless said. Settings: ImageNet "
             "MobileNetV2 shortlist at 224 px, SIFT 4,000 features at ≤ 1,024 px, pycolmap incremental "
             "mapping. *Before*: the code before issue 11 (main at commit 777410b: connected components of "
             "pairs with ≥ 30 inliers, one camera per image size, COLMAP defaults). Scores are the IMC "
             "score in %, the mean over datasets.", ""]
    metrics = {"runs": {}, "loads": loads}
    for bench in ("hard", "full"):
        lines += [f"## `{bench}`", ""] + before_after_table(runs, bench) + [""]
    lines += ["## Unposed scenes (registered fraction, cluster purity)", ""] + unposed_table(runs) + [""]
    t, ratios = timing_table(runs, loads, ("hard", "full"))
    lines += ["## Wall time per stage (seconds, summed over datasets)", "",
              "Every *after* run in a fresh work dir (nothing cached). The *before* all-pairs runs shared "
              "the shortlist run's work dir, so their SIFT features were cached (embed 0, match without "
              "extraction): their ratio understates the cost of all pairs. The load average is the "
              "machine's (2 cores, shared with other engineers' jobs), at the run's end. *after_loaded*: "
              "the same runs repeated earlier, not back to back, under heavier load (kept to show how "
              "much load moves a ratio taken across runs).", ""] + t + [""]
    metrics["all_pairs_over_shortlist_wall"] = ratios
    if args.sweep:
        s, df = sweep_table(args.sweep)
        total = len(pd.read_csv(args.sweep))
        lines += [f"## Sweep (`experiments/imc.yaml`: {len(df)} of its {total} settings ran)", "",
                  "Runs of one benchmark share stage caches, so a row's wall time is only the stages its "
                  "setting changed; it is not a timing measurement. Blank cells are the defaults "
                  "(shortlist_k 10, min_inliers 30, no further settings); scores in %; "
                  "`scene_images_left_out` counts the unposed scenes' images outside their main "
                  "cluster too.", ""] + s + [""]
        metrics["sweep"] = json.loads(df.to_json(orient="records"))
    if args.notes:
        lines += [open(args.notes).read().rstrip(), ""]
    for name, m in runs.items():
        metrics["runs"][name] = {k: m[k] for k in ("score", "datasets", "wall_s", "stage_s", "diagnostics",
                                                   "info") if k in m}
    from imgsim.fileio import atomic_write_json, atomic_write_text

    os.makedirs(args.out, exist_ok=True)
    figures = []
    for name in sorted(runs):  # predicted vs true camera centres of the posed shortlist runs
        source = os.path.join(args.runs, name, "camera_centres.png")
        if name in ("after-hard-k10", "after-full-k10") and os.path.isfile(source):
            figures.append(f"camera_centres_{name.split('-')[1]}.png")
            shutil.copyfile(source, os.path.join(args.out, figures[-1]))
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    atomic_write_text(os.path.join(args.out, "summary.md"), "\n".join(lines))
    atomic_write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(os.path.join(args.out, "summary.md"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="reconstruct and report one benchmark at one setting")
    r.add_argument("bench", help="benchmark folder (train/ and train_labels.csv)")
    r.add_argument("work", help="work dir (stage caches; fresh for a timed run)")
    r.add_argument("report", help="report folder to write")
    r.add_argument("--shortlist-k", type=int, default=10, help="0: all pairs (default 10)")
    r.add_argument("--settings", default="{}", help="JSON of further ReconstructConfig fields")
    r.add_argument("--log", help="append the run's load/score/wall line here")
    q = sub.add_parser("report", help="write summary.md and metrics.json from finished runs")
    q.add_argument("--runs", required=True, help="folder of before-/after-<benchmark>-k<k> report folders")
    q.add_argument("--gt-root", required=True,
                   help="folder of the benchmark folders (<gt-root>/<benchmark>/train_labels.csv)")
    q.add_argument("--log", action="append", default=[], help="run logs (load averages); repeatable")
    q.add_argument("--sweep", help="a sweep's summary.csv")
    q.add_argument("--notes", help="a Markdown file appended as is (the judgement calls)")
    q.add_argument("--out", required=True, help="output folder (reports/imc)")
    args = p.parse_args(argv)
    return cmd_run(args) if args.verb == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
