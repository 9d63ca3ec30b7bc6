"""``python -m benchmarks [--data ../shared/data] [--quick]``: every benchmark, one table of ratios.

Each ratio is measured side by side in one run (these machines are noisy); results go to
``benchmarks/results/<date>-<host>.json``. Absolute times mean something only for the machine
named in the file.
"""

import argparse
import datetime
import json
import os
import platform
import socket

import numpy as np

from benchmarks import bench_cli, bench_embed, bench_index, bench_sift, bench_train

HERE = os.path.dirname(os.path.abspath(__file__))


def _goal(value, target):
    return "n/a" if value is None else ("met" if value >= target else "missed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cli", "embed", "sift", "index", "train", "memory"])
    parser.add_argument("--ann-vectors", default=None,
                        help="real-distribution vectors from benchmarks.ann_data (default: random unit vectors)")
    args = parser.parse_args(argv)
    from imgsim.data import load_table

    table = load_table(args.data)
    results, rows = {"machine": {"host": socket.gethostname(), "cpus": os.cpu_count(),
                                 "platform": platform.platform()}}, []
    if "cli" not in args.skip:
        c = results["cli"] = bench_cli.run(3 if args.quick else 7)
        tf = c["python -c 'import tensorflow'"]
        for name in ("imgsim --help", "imgsim score --help"):
            rows.append((f"CLI: TensorFlow import / {name}", tf / c[name], None,
                         f"{c[name]:.3f} s wall ({'met' if c[name] < 1 else 'missed'}: goal < 1 s)"))
    if "embed" not in args.skip:
        strecha = list(table[table["dataset"] == "strecha_mvs"]["path"][: 16 if args.quick else 64])
        e = results["embed"] = bench_embed.throughput(strecha)
        rows += [("embed: imgsim / seed", e["imgsim_img_s"] / e["seed_img_s"], None, ""),
                 ("embed: imgsim / forward limit", e["imgsim_img_s"] / e["forward_img_s"], 0.9,
                  _goal(e["imgsim_img_s"] / e["forward_img_s"], 0.9)),
                 ("embed: forward limit / seed", e["forward_img_s"] / e["seed_img_s"], None, "")]
        if e.get("openvino_img_s"):
            ratio = e["openvino_img_s"] / e["forward_img_s"]
            rows.append(("embed: OpenVINO f32 / forward limit", ratio, 1.5,
                         f"{_goal(ratio, 1.5)} (max |diff| {e['openvino_max_abs_diff']:.1e})"))
    if "memory" not in args.skip:
        m = results["memory"] = bench_embed.memory(list(table["path"]), 2000 if args.quick else 10_000)
        peaks = m["peak_rss_mb_per_1000"]
        rows.append(("memory: peak RSS growth MB, first → last 1,000", peaks[-1] - peaks[0], None,
                     f"{peaks[0]:.0f} → {peaks[-1]:.0f} MB over {m['images']} images"))
    if "sift" not in args.skip:
        s = results["sift"] = bench_sift.run_benchmark(args.data, n_images=40 if args.quick else 100)
        rows += [("SIFT all pairs: imgsim / seed (per pair)", s["speedup"], 5.0, _goal(s["speedup"], 5.0)),
                 ("SIFT shortlist: speed-up vs all pairs", s["shortlist_speedup"], None,
                  f"recall of positive pairs {s['shortlist_recall']:.3f}")]
    if "index" not in args.skip:
        sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
        if args.ann_vectors:
            from benchmarks.ann_data import load

            data = load(args.ann_vectors, max(sizes), dtype=np.float16)
            data = data[:2] + (data[2].astype(np.float32),) + data[3:]
        else:  # random unit vectors: a smoke run only (recall says nothing about real embeddings)
            data = bench_index.random_data(max(sizes))
        results["index"] = bench_index.run(*data, sizes=sizes, verbose=False)
        for n in sizes:
            rows_n = [r for r in results["index"] if r["n"] == n and r["method"] != "flat (exact)"]
            good = [r for r in rows_n if r["recall"] >= 0.95]
            best = max(good or rows_n, key=lambda r: r["speedup"])
            rows.append((f"NN N={n:,}: fastest with recall@10 >= 0.95 / exact ({best['method']}, "
                         f"{best['setting']})", best["speedup"], 20.0,
                         _goal(best["speedup"] if good else 0.0, 20.0) + f", recall@10 {best['recall']:.3f}"))
    if "train" not in args.skip:
        results["train"] = bench_train.run(args.data, steps={"tensorflow": 3 if args.quick else 6,
                                                              "jax": 1 if args.quick else 2})
        by = {r["backend"]: r for r in results["train"] if "error" not in r}
        for backend, r in by.items():
            rows.append((f"train {backend} CPU: pipeline / synthetic", r["pipeline_img_s"] / r["synthetic_img_s"],
                         None, f"{r['synthetic_img_s']:.1f} img/s synthetic"))
        if {"tensorflow", "jax"} <= set(by):
            rows.append(("train CPU: tensorflow / jax (synthetic)",
                         by["tensorflow"]["synthetic_img_s"] / by["jax"]["synthetic_img_s"], None, ""))
    results["table"] = [{"ratio": name, "value": value, "goal": goal, "note": note}
                        for name, value, goal, note in rows]
    width = max(len(r[0]) for r in rows)
    print(f"{'ratio'.ljust(width)}  {'value':>9}  {'goal':>6}  note")
    for name, value, goal, note in rows:
        print(f"{name.ljust(width)}  {value:9.2f}  {('≥' + format(goal, 'g')) if goal else '':>6}  {note}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"{datetime.date.today()}-{socket.gethostname()}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=float)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
