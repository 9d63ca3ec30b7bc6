"""Write ``reports/scale/README.md`` (issue 13's evidence) from the JSON results beside it.

Every table is generated here from the committed JSON files; nothing is typed by hand:

* ``ann-*.json`` — :mod:`benchmarks.bench_index` runs on real-distribution
  vectors (:mod:`benchmarks.ann_data`), one table per file (one run: its
  speed-ups are measured against the exact search of the same run), with the
  load average and peak RSS read from the run's ``.log`` beside it, and
  the run's ``.note.md`` (which code it ran) where there is one;
* ``curve.json`` — :mod:`benchmarks.bench_reconstruct` ``run``: time and peak
  memory per reconstruct stage for each N; the growth exponent per stage is
  fitted here (``time = a · N^b``, least squares in log-log) and projected;
* ``compare-n*.json`` — ``bench_reconstruct compare``: process pool vs a
  2-worker Dask ``LocalCluster``, interleaved.

Usage, from the repository root::

    python -m benchmarks.scale_report reports/scale
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np

STAGES = ("embed", "pairs", "match", "cluster", "sfm")
PARALLEL = {"embed", "match"}  # stages cut into independent chunks: time / W on W workers
# work per image (embed: N images) or per shortlisted pair (match: N extractions, at most k·N pairs):
# linear in N by construction, so projected linearly from the largest N (their measured exponents,
# moved by fixed costs below and by the load above, are in the table)
LINEAR_WORK = {"embed", "match"}
GOAL_RECALL, GOAL_SPEEDUP = 0.95, 20.0
DEFAULT_SETTING = "refine=10, nprobe=4"  # Index.for_size above EXACT_UP_TO (imgsim.index)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _log_facts(log):
    """(load average at the start, load average at the end, peak RSS GB, wall clock) from a run's log."""
    if not os.path.exists(log):
        return None, None, None, None
    text = open(log).read()
    start = re.search(r"load average: ([\d.]+)", text)
    end = re.search(r"load average after: ([\d.]+); peak RSS ([\d.]+) GB", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    return (float(start.group(1)) if start else None, float(end.group(1)) if end else None,
            float(end.group(2)) if end else None, wall.group(1) if wall else None)


# --------------------------------------------------------------------------- ANN


def self_search(row):
    """Seconds to build the index and query it with all its ``n`` vectors (1,000 queries took ``search_s``)."""
    return row["build_s"] + row["n"] / 1000 * row["search_s"]


def ann_section(path):
    data = _load(path)
    rows = data["rows"]
    load0, load1, rss, wall = _log_facts(path[:-len(".json")] + ".log")
    n = rows[0]["n"]
    exact = rows[0]
    retimed = "exact_s_end" in exact
    lines = [f"### `{os.path.basename(path)}`: N = {n:,}, methods "
             + ", ".join(dict.fromkeys(r["method"] for r in rows[1:])),
             "",
             f"{data['vectors'].replace('/tmp/scale/ann', 'the ann_data set')}; 1,000 queries (fresh views), "
             f"k = 10, search time = median of 3 for all 1,000 queries; load average {load0} at the start, "
             f"{load1} at the end; peak RSS {rss} GB; wall clock {wall}. Speed-up = exact search time / "
             + ("this search time, the exact search timed at the start "
                f"({exact['exact_s_start']:.3f} s) and at the end ({exact['exact_s_end']:.3f} s) of the run, "
                "their mean." if retimed else
                "this search time, the exact search timed once, at the start of the run."),
             "",
             "| method | settings | build s | search s | queries/s | speed-up | memory MB | recall@10 "
             "| distance recall@10 | same-scene@10 | goal | self-search s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        met = r["recall"] >= GOAL_RECALL and r["speedup"] >= GOAL_SPEEDUP and r is not exact
        dist = r.get("distance_recall")
        speedup = "reference" if r is exact else f"{r['speedup']:.1f}×"
        lines.append(f"| {r['method']} | {r['setting'] or '-'} | {r['build_s']:.1f} | {r['search_s']:.3f} | "
                     f"{1000 / r['search_s']:,.0f} | {speedup} | {r['memory_mb']:,.0f} | "
                     f"{r['recall']:.4f} | {'-' if dist is None else f'{dist:.4f}'} | "
                     f"{r['same_scene']:.4f} | {'**met**' if met else ''} | {self_search(r):,.0f} |")
    lines += ["", "Self-search s = build + N queries at this rate: what a one-shot shortlist of every "
              "vector (reconstruct's pairs stage) would pay."]
    best = [r for r in rows[1:] if r["recall"] >= GOAL_RECALL and r["speedup"] >= GOAL_SPEEDUP]
    lines.append("")
    if best:
        per_method = {}
        for r in best:
            if r["method"] not in per_method or r["speedup"] > per_method[r["method"]]["speedup"]:
                per_method[r["method"]] = r
        lines.append(f"Goal (recall@10 ≥ {GOAL_RECALL} at ≥ {GOAL_SPEEDUP:.0f}× the exact query throughput) "
                     "**met in this run** by: " + "; ".join(
                         f"{m} ({r['setting']}: recall {r['recall']:.4f} at {r['speedup']:.1f}×)"
                         for m, r in per_method.items()) + ".")
    else:
        lines.append("Goal (recall@10 ≥ 0.95 at ≥ 20× the exact query throughput) **missed in this run**.")
    return "\n".join(lines), {"n": n, "met": bool(best)}


# --------------------------------------------------------------------------- cost curve


def fit_curve(curve):
    """{stage: (exponent b, factor a, [(N, s)])} for time = a · N^b, least squares in log-log."""
    sizes = sorted(int(n) for n in curve)
    out = {}
    for stage in STAGES:
        points = [(n, curve[str(n)][stage]["s"]) for n in sizes if curve[str(n)][stage]["s"]]
        if len(points) >= 2:
            b, log_a = np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)
            out[stage] = (float(b), float(np.exp(log_a)), points)
    return out


def _hours(seconds):
    hours = seconds / 3600
    return f"{hours:.1e} h" if hours >= 1e4 else f"{hours:,.1f} h" if seconds >= 360 else f"{seconds:,.0f} s"


def _growth(curve, stage, sizes):
    """(N, seconds, exponent, is_lower_bound) for projecting ``stage`` from its two largest sizes.

    A size whose run ended inside this stage (``at_least_s``) gives a lower
    bound on its time, and so on the exponent from the size before it.
    """
    points = [(n, curve[str(n)][stage]["s"], False) for n in sizes if curve[str(n)][stage]["s"]]
    points += [(n, curve[str(n)][stage]["at_least_s"], True) for n in sizes
               if curve[str(n)][stage]["s"] is None and curve[str(n)][stage].get("at_least_s")]
    points.sort()
    if len(points) < 2:
        return None
    (n1, t1, _), (n2, t2, bound) = points[-2:]
    return n2, t2, float(np.log(t2 / t1) / np.log(n2 / n1)), bound


def curve_section(curve, projections=(100_000, 1_000_000), workers=(1, 16, 100), pairs_measured=None):
    sizes = sorted(int(n) for n in curve)
    lines = ["| stage | " + " | ".join(f"N = {n:,}: s / peak MB" for n in sizes)
             + " | exponent b (finished N) | b (two largest N) |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    fits = fit_curve(curve)
    for stage in STAGES:
        cells = []
        for n in sizes:
            row = curve[str(n)][stage]
            if row["s"] is not None:
                cells.append(f"{row['s']:.2f} / {row['peak_mb']:,.0f}")
            elif row.get("at_least_s"):
                cells.append(f"≥ {row['at_least_s']:.0f} (stopped unfinished) / {row['peak_mb']:,.0f}")
            else:
                cells.append("-")
        b = fits.get(stage, (None,))[0]
        growth = _growth(curve, stage, sizes)
        local = "-" if growth is None else ("≥ " if growth[3] else "") + f"{growth[2]:.2f}"
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {'-' if b is None else f'{b:.2f}'} | {local} |")
    totals = []
    for n in sizes:
        rows = [curve[str(n)][s] for s in STAGES]
        unfinished = any(r["s"] is None and r.get("at_least_s") for r in rows)
        total = sum(r["s"] if r["s"] is not None else r.get("at_least_s") or 0 for r in rows)
        totals.append(("≥ " if unfinished else "") + f"{total:.1f}")
    lines.append("| **total** | " + " | ".join(totals) + " | | |")
    lines += ["", "| N | pairs matched | images registered | clusters ≥ 3 | load average per session |",
              "|---:|---:|---:|---:|---|"]
    for n in sizes:
        info = curve[str(n)]["info"]
        loads = ", ".join(f"{s['load_before']:.1f}→{s.get('load_now', float('nan')):.1f}"
                          for s in curve[str(n)]["sessions"])
        if curve[str(n)].get("unfinished"):
            comps = info.get("components") or info.get("clusters")
            lines.append(f"| {n:,} | {info.get('pairs', '-'):,} | - (killed in {curve[str(n)]['unfinished']}) | "
                         f"{'-' if comps is None else f'{len(comps)} (largest {comps[0]})'} | {loads} |")
        else:
            comps = info.get("clusters") or info["components"]
            lines.append(f"| {n:,} | {info['pairs']:,} | {info['registered']:,} | {len(comps)} "
                         f"(largest {max(comps)}) | {loads} |")
    sfm_fit = fit_sfm_clusters(curve)
    if sfm_fit is not None:
        c, a, points = sfm_fit
        lines += ["", f"**SfM per cluster.** Each cluster maps on its own (one task each on Dask), so SfM's cost is "
                  f"the sum over clusters of one cluster's cost, and that grows with the cluster's size: fitted "
                  f"on the {len(points)} clusters of at least {SFM_FIT_MIN} images mapped at all N together, "
                  f"seconds = {a:.3g} · images^{c:.2f}. The largest clusters of each N (images → seconds, "
                  "images in the largest model):", ""]
        for n in sizes:
            mapped = curve[str(n)].get("sfm_clusters") or []
            if mapped:
                lines.append(f"- N = {n:,}: " + ", ".join(
                    f"{m['images']} → {m['seconds']:.1f} s ({m['registered']})" for m in mapped[:6])
                    + (f" (+{len(mapped) - 6} smaller)" if len(mapped) > 6 else ""))
    lines += ["", "Projection (an order of magnitude, not a forecast: far beyond the measured range), "
              "through the largest N that finished the stage (SfM: the largest N that finished SfM). Embed and match: exponent 1 — their work is one per image "
              "and one per shortlisted pair (at most k·N), linear by construction — divided by W, as they are "
              "cut into independent chunks. Pairs (†): the default index's self-search measured on the ANN "
              "vectors at that N (below), on one machine. Cluster, on one machine: with scenes growing, the "
              "exponent between the two largest N, at least 1 (it reads every edge); with scenes added, 1 "
              "(the same components, more of them). SfM: the per-cluster fit above summed over the clusters, W clusters mapped at once "
              "(wall ≈ the larger of total / W and the largest cluster's time), in two cases: "
              "*scenes grow* — what this data set does (the copies join their originals' scenes), every "
              "cluster of the largest finished N grown by N / that N; *scenes added* — an archive that grows by "
              "adding places, N / that N times as many clusters of the measured sizes.", "",
              "| stage | b used | " + " | ".join(f"N = {n:,}, W = {w}" for n in projections for w in workers)
              + " |",
              "|---|---:|" + "---:|" * (len(projections) * len(workers))]
    rows, reference = {}, max((n for n in sizes if not curve[str(n)].get("unfinished")), default=None)
    for stage in STAGES:
        growth = _growth(curve, stage, sizes)
        if stage == "sfm" or growth is None:
            continue
        n2, t2, b, bound = growth
        # clustering reads every edge (at least linear); with scenes added its components keep their
        # sizes and only their number grows: linear
        cases = {"cluster (scenes grow)": max(1.0, b), "cluster (scenes added)": 1.0} if stage == "cluster" \
            else {stage: 1.0 if stage in LINEAR_WORK else max(1.0, b)}
        for name, b in cases.items():
            cells = {}
            for n in projections:
                for w in workers:
                    t = t2 * (n / n2) ** b / (w if stage in PARALLEL else 1)
                    measured = stage == "pairs" and n in (pairs_measured or {})
                    cells[(n, w)] = (pairs_measured[n] if measured else t, "≥ " if bound else "",
                                     " †" if measured else "")
            shown = "†" if stage == "pairs" and set(projections) <= set(pairs_measured or {}) else \
                ("≥ " if bound else "") + f"{b:.2f}"
            rows[name] = (shown, cells)
    if sfm_fit is not None and reference is not None:
        sizes_now = [m["images"] for m in curve[str(reference)]["sfm_clusters"]]
        for case in ("scenes grow", "scenes added"):
            cells = {}
            for n in projections:
                for w in workers:
                    total, largest = sfm_projection(sizes_now, reference, n, sfm_fit, case)
                    cells[(n, w)] = (max(total / w, largest), "", "")
            rows[f"sfm ({case})"] = (f"{sfm_fit[0]:.2f} per cluster", cells)
    for stage, (shown, cells) in rows.items():
        lines.append(f"| {stage} | {shown} | " + " | ".join(
            mark + _hours(t) + dagger for (t, mark, dagger) in (cells[(n, w)] for n in projections for w in workers))
            + " |")
    dominant = {}
    for case in ("scenes grow", "scenes added"):
        for key in ((n, w) for n in projections for w in workers):
            candidates = {stage: cells[key][0] for stage, (_, cells) in rows.items()
                          if "(" not in stage or stage.endswith(f"({case})")}
            dominant[(case, *key)] = max(candidates, key=candidates.get) if candidates else "-"
        lines.append(f"| **dominant ({case})** | | " + " | ".join(
            dominant[(case, n, w)] for n in projections for w in workers) + " |")
    return "\n".join(lines), fits, dominant


SFM_FIT_MIN = 10  # smaller clusters cost mostly the fixed start-up of a mapping


def fit_sfm_clusters(curve):
    """(exponent c, factor a, [(images, seconds)]) of one cluster's SfM time = a · images^c, or None."""
    points = [(m["images"], m["seconds"]) for row in curve.values() for m in row.get("sfm_clusters") or []
              if m["images"] >= SFM_FIT_MIN and m["seconds"] > 0]
    if len({n for n, _ in points}) < 2:
        return None
    c, log_a = np.polyfit(np.log([n for n, _ in points]), np.log([t for _, t in points]), 1)
    return float(c), float(np.exp(log_a)), points


def sfm_projection(cluster_sizes, n_measured, n, fit, case):
    """(total seconds, the largest cluster's seconds) of SfM at ``n`` images from clusters measured at ``n_measured``.

    ``case`` "scenes grow": every cluster ``n / n_measured`` times larger;
    "scenes added": ``n / n_measured`` times as many clusters of the same sizes.
    """
    c, a, _ = fit
    scale = n / n_measured
    if case == "scenes grow":
        cost = [a * (size * scale) ** c for size in cluster_sizes]
        return sum(cost), max(cost)
    cost = [a * size ** c for size in cluster_sizes]
    return sum(cost) * scale, max(cost)


def compare_section(path):
    data = _load(path)
    s = data["summary"]
    lines = [f"N = {data['n']} images, {data['workers']} workers / processes, {len(data['rows']) // 2} repeats "
             "interleaved (pool, Dask, pool, Dask, ...), fresh caches each time; the Dask cluster started "
             "once outside the timings and warmed up (each worker built its model), as the pool path's "
             "model is built once outside them.", "",
             "| stage | process pool s (median) | Dask LocalCluster s (median) | Dask / pool |",
             "|---|---:|---:|---:|"]
    for stage in ("embed_s", "match_s"):
        lines.append(f"| {stage[:-2]} | {s[stage]['pool']:.2f} | {s[stage]['dask']:.2f} | "
                     f"{s[stage]['dask_over_pool']:.2f} |")
    lines += ["", "| repeat | executor | embed s | match s | pairs | load average | identical to the first |",
              "|---:|---|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['repeat']} | {r['executor']} | {r['embed_s']:.2f} | {r['match_s']:.2f} | "
                     f"{r['pairs']} | {r['load']:.2f} | {r.get('identical', '(reference)')} |")
    lines += ["", f"Embeddings (max |diff| ≤ 1e-6), shortlist pairs and every pair's inliers identical "
              f"across all runs: **{data['identical']}**."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="reports/scale: the JSON results; README.md is written there")
    args = parser.parse_args(argv)
    folder = args.folder
    parts = [open(os.path.join(folder, "intro.md")).read().rstrip(), "", "## Approximate shortlist: the ANN table", ""]
    for path in sorted(glob.glob(os.path.join(folder, "ann-*.json"))):
        text, _ = ann_section(path)
        parts += [text, ""]
        note = path[:-len(".json")] + ".note.md"  # what a run's JSON cannot say (the code it ran)
        if os.path.exists(note):
            parts += [open(note).read().rstrip(), ""]
    default = [(os.path.basename(p), r) for p in sorted(glob.glob(os.path.join(folder, "ann-*.json")))
               for r in _load(p)["rows"] if r["method"] == "ivfpq" and r["setting"].endswith(DEFAULT_SETTING)]
    curve_file = os.path.join(folder, "curve.json")
    if os.path.exists(curve_file):
        text, fits, dominant = curve_section(_load(curve_file),
                                             pairs_measured={r["n"]: self_search(r) for _, r in default})
        parts += ["## The cost curve of reconstruct", "", text, ""]
        with open(os.path.join(folder, "fit.json"), "w") as f:
            json.dump({s: {"exponent": b, "a": a, "points": p} for s, (b, a, p) in fits.items()}, f, indent=1)
    if default:
        parts += ["The pairs stage above ran exact search (N ≤ 20,000). Above, `Index.for_size` takes IVF-PQ "
                  f"({DEFAULT_SETTING}); measured on the ANN vectors, its self-search (build + N queries) "
                  "costs: " + "; ".join(f"N = {r['n']:,}: {self_search(r):,.0f} s (build {r['build_s']:.0f} s, "
                                        f"recall@10 {r['recall']:.3f}; `{name}`)" for name, r in default)
                  + ".", ""]
    for path in sorted(glob.glob(os.path.join(folder, "compare-n*.json"))):
        parts += [f"## Dask LocalCluster vs process pool, same box: N = {_load(path)['n']} "
                  f"(`{os.path.basename(path)}`)", "",
                  compare_section(path), ""]
    notes = os.path.join(folder, "notes.md")
    if os.path.exists(notes):
        parts += [open(notes).read().rstrip(), ""]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("<!-- generated by `python -m benchmarks.scale_report reports/scale`; edit intro.md / notes.md -->\n"
                + "\n".join(parts))
    print(f"wrote {os.path.join(folder, 'README.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
