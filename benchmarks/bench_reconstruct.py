"""The cost curve of ``imgsim reconstruct``: time and peak memory of each stage against N images.

Data: one dataset of N real photos — the shared photos (``../shared/data``,
424) and, beyond them, augmented copies of them written as JPEG files
(``make-data``: the :mod:`imgsim.augment` layers, ``AugmentConfig()``
defaults, applied to each photo shrunk to a long side of at most 1024 px —
SIFT's ``max_side`` — and saved at quality 90). Sets are nested: the first N
files of one fixed order (photos shuffled, then copies round-robin over the
photos), hard-linked into ``<root>/n<N>/all/``.

``run`` reconstructs each N into a fresh work dir (nothing cached) with the
shortlist (``shortlist_k`` 10) and records, per stage, the wall time
(``reconstruct``'s own ``timings``) and the peak resident memory of this
process plus all its children (pool or Dask workers), sampled every 0.1 s. A
run may be killed (a time limit, to keep each locked timing run short) and
started again: it resumes in the same work dir and the stage times add up
(match resumes by pair chunk, SfM by cluster; ``sfm_clusters`` records each
mapped cluster's size and seconds).
``unfinished`` records a size that was killed before its end (its last
stage as a lower bound). ``compare`` runs the embed and match stages on the same images with the
process pool and with a 2-worker Dask ``LocalCluster``, interleaved, and
checks that both give the same embeddings and inliers. ``fit`` prints
``time = a · N^b`` per stage (least squares in log-log); ``benchmarks.scale_report``
writes the tables and the projection.

Usage (each step resumable; wrap timing runs in ``flock /tmp/imgsim-timing.lock``)::

    python -m benchmarks.bench_reconstruct make-data --data ../shared/data --root /tmp/scale/curve --n 3000
    python -m benchmarks.bench_reconstruct run --root /tmp/scale/curve --sizes 100 300 1000
    python -m benchmarks.bench_reconstruct compare --root /tmp/scale/curve --n 150 --repeats 3
    python -m benchmarks.bench_reconstruct fit --root /tmp/scale/curve
"""

import argparse
import glob
import json
import os
import shutil
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgsim.cli import set_thread_waits  # noqa: E402

set_thread_waits()  # a script owns its process, as the imgsim command does (before FAISS loads)
from imgsim.fileio import atomic_write_json, read_json  # noqa: E402

STAGES = ("embed", "pairs", "match", "cluster", "sfm")
RESUMABLE = {"match", "sfm"}  # stages that resume inside themselves (pair chunks, clusters); the others start over
COPY_SIDE = 1024


# --------------------------------------------------------------------------- data


def make_data(data, root, n, seed=0):
    """Write augmented copies up to ``n`` images in all under ``root/pool`` (resumable)."""
    import keras
    from PIL import Image

    from imgsim.augment import AugmentConfig, build_augmentation
    from imgsim.data import load_table
    from imgsim.images import load_image

    table = load_table(data, min_images_per_scene=1)
    photos = list(np.random.default_rng(seed).permutation(table["path"].to_numpy()))
    pool = os.path.join(root, "pool")
    os.makedirs(pool, exist_ok=True)
    order = []
    for i, path in enumerate(photos):
        name = f"{i:06d}_{os.path.basename(path)}"
        if not os.path.exists(os.path.join(pool, name)):
            shutil.copyfile(path, os.path.join(pool, name))
        order.append(name)
    for c in range(len(photos), n):
        source = photos[c % len(photos)]
        name = f"{c:06d}_copy.jpg"
        order.append(name)
        if os.path.exists(os.path.join(pool, name)):
            continue
        image = load_image(source)
        scale = min(1.0, COPY_SIDE / max(image.shape[:2]))
        if scale < 1:
            image = np.asarray(Image.fromarray(image).resize(
                (round(image.shape[1] * scale), round(image.shape[0] * scale)), Image.BILINEAR))
        keras.utils.set_random_seed(seed * 1_000_003 + c)
        augment = build_augmentation(AugmentConfig())
        out = np.asarray(augment(image[None].astype(np.float32), training=True))[0]
        tmp = os.path.join(pool, f".tmp-{name}")
        Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8)).save(tmp, quality=90)
        os.replace(tmp, os.path.join(pool, name))
        if (c + 1) % 250 == 0:
            print(f"{c + 1}/{n} images", flush=True)
    atomic_write_json(os.path.join(root, "order.json"), order)
    return order


def dataset(root, n):
    """``root/n<N>``: a folder layout with one dataset ``all`` of the first ``n`` images (hard links)."""
    order = read_json(os.path.join(root, "order.json"))
    if n > len(order):
        raise SystemExit(f"{root}: only {len(order)} images made; run make-data --n {n}")
    folder = os.path.join(root, f"n{n}", "all")
    os.makedirs(folder, exist_ok=True)
    for name in order[:n]:
        link = os.path.join(folder, name)
        if not os.path.exists(link):
            os.link(os.path.join(root, "pool", name), link)
    return os.path.dirname(folder)


# --------------------------------------------------------------------------- measuring


class StageMonitor:
    """Wall time and peak RSS (MB, this process + its children) per named phase, in a thread.

    Saved to ``file`` every ``save_every`` seconds and read back at start, so a
    run killed by a time limit and started again adds up the time of a stage
    that resumes inside itself (``RESUMABLE``); a stage that starts over
    counts its last session only.
    """

    def __init__(self, file, interval=0.1, save_every=2.0):
        import psutil

        self._me, self.file, self.interval, self.save_every = psutil.Process(), file, interval, save_every
        state = read_json(file) if os.path.exists(file) else {}
        self.seconds, self.peaks = state.get("seconds", {}), state.get("peaks", {})
        self.sessions = state.get("sessions", []) + [{"load_before": os.getloadavg()[0]}]
        self.phase, self._started, self._begun = None, None, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self):
        total = 0
        for proc in [self._me] + self._me.children(recursive=True):
            try:
                total += proc.memory_info().rss
            except Exception:  # a child that just ended
                pass
        return total / 2**20

    def begin(self, phase):
        if phase not in RESUMABLE and phase not in self._begun:
            self.seconds.pop(phase, None)  # it starts over: an earlier session's part was lost
        self._begun.add(phase)
        self.phase, self._started = phase, time.perf_counter()
        self._sample()

    def end(self):
        self._sample()
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + time.perf_counter() - self._started
        self.phase = None

    def _sample(self):
        if self.phase is not None:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), self._rss())

    def _run(self):
        saved = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(self.interval)
            self._sample()
            if time.perf_counter() - saved >= self.save_every:
                self.save()
                saved = time.perf_counter()

    def save(self, **extra):
        """Write the state; the phase in flight counts up to now (a kill then loses < save_every)."""
        seconds = dict(self.seconds)
        phase = self.phase
        if phase is not None:
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - self._started
        self.sessions[-1]["load_now"] = os.getloadavg()[0]
        atomic_write_json(self.file, {"seconds": seconds, "peaks": self.peaks,
                                      "sessions": self.sessions, **extra})

    def stop(self):
        self._stop.set()
        self._thread.join()


def _watch_stages(monitor):
    """Wrap reconstruct's stage functions so that ``monitor.phase`` names the running stage.

    The embedding model's construction counts as embed, and the feature reads
    of the SfM stage (``extract_many`` outside any other stage) as sfm.
    """
    import imgsim.reconstruct as rec
    import imgsim.sift as sift

    wrapped = [(rec, f"{stage}_stage", stage) for stage in STAGES] + [(rec, "sfm_clusters", "sfm")]
    wrapped += [(rec, "embedding_model", "embed"), (sift, "extract_many", "sfm")]
    originals = []
    for module, name, stage in wrapped:
        original = getattr(module, name)
        originals.append((module, name, original))

        def phase(*args, _stage=stage, _original=original, **kwargs):
            if monitor.phase is not None:  # a call inside another stage belongs to it
                return _original(*args, **kwargs)
            monitor.begin(_stage)
            try:
                return _original(*args, **kwargs)
            finally:
                monitor.end()

        setattr(module, name, phase)
    return lambda: [setattr(module, name, f) for module, name, f in originals]


def run_sizes(root, sizes, workers=None, processes=2, max_sfm_seconds=0):
    """Reconstruct each N; returns {N: {stage: {"s": ..., "peak_mb": ...}, ...}}.

    Each N starts from an empty work dir, unless an unfinished run of it left
    one (killed by a time limit): that one is resumed and its stage times add
    up (``progress.json``); the stage in flight loses at most its last chunk.
    """
    from imgsim.reconstruct import ReconstructConfig, reconstruct

    results_file = os.path.join(root, "curve-dask.json" if workers else "curve.json")
    for n in sizes:
        folder = dataset(root, n)
        work = os.path.join(root, "work", f"n{n}-{'dask' if workers else 'pool'}")
        progress = os.path.join(work, "progress.json")
        if not os.path.exists(progress) or read_json(progress).get("done"):
            shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work, exist_ok=True)
        config = ReconstructConfig(processes=processes, workers=workers, sfm={"max_seconds": max_sfm_seconds})
        monitor = StageMonitor(progress)
        restore = _watch_stages(monitor)
        try:
            out = reconstruct(folder, os.path.join(work, "submission.csv"), work_dir=work, config=config)
        finally:
            restore()
            monitor.stop()
        monitor.save(done=True)
        row = {stage: {"s": monitor.seconds.get(stage), "peak_mb": monitor.peaks.get(stage)}
               for stage in STAGES}
        info = {k: v for k, v in out["info"]["all"].items() if k != "edge_list"}  # counts, not every pair
        row.update(sessions=monitor.sessions, info=info, sfm_clusters=sfm_clusters(work),
                   executor="dask" if workers else "pool")
        results = read_json(results_file) if os.path.exists(results_file) else {}
        results[str(n)] = row
        atomic_write_json(results_file, results)
        print(f"N={n}: " + ", ".join(f"{s} {row[s]['s']:.1f} s / {row[s]['peak_mb']:.0f} MB"
                                     for s in STAGES if row[s]["s"] is not None)
              + f"; pairs {row['info']['pairs']}, registered {row['info']['registered']}, "
              f"sessions {len(monitor.sessions)}, load {[round(x['load_before'], 1) for x in monitor.sessions]}",
              flush=True)
    return results


def sfm_clusters(work):
    """Each mapped cluster's images, pairs, seconds and largest model, from its ``models.json``."""
    found = []
    for file in glob.glob(os.path.join(work, "all", "sfm-*", "cluster*", "models.json")):
        done = read_json(file)
        found.append({"images": done["images"], "pairs": done["pairs"], "seconds": done["seconds"],
                      "registered": len(done["models"][0]) if done["models"] else 0})
    return sorted(found, key=lambda c: -c["images"])


def record_unfinished(root, n, executor="pool"):
    """Put an unfinished size (killed, not resumed to the end) into ``curve.json`` from its ``progress.json``.

    The stages it finished keep their times; the stage that was running when
    it was killed gets ``"s": None`` and ``"at_least_s"``, the time it had run
    in its last session (a lower bound: that stage starts over after a kill).
    """
    progress = read_json(os.path.join(root, "work", f"n{n}-{executor}", "progress.json"))
    finished = [stage for stage in STAGES if stage in progress["seconds"]]
    running = finished[-1]  # stages run in order; the last one begun was in flight at the kill
    row = {stage: {"s": None if stage == running else progress["seconds"].get(stage),
                   "peak_mb": progress["peaks"].get(stage)} for stage in STAGES}
    row[running]["at_least_s"] = progress["seconds"][running]
    info = {"images": n}  # what the finished stages wrote
    for stage, name, count in (("pairs", "pairs", len), ("cluster", "components", lambda c: sorted(map(len, c))[::-1])):
        files = glob.glob(os.path.join(root, "work", f"n{n}-{executor}", "all", f"{stage}-*.json"))
        if files:
            info[name] = count(read_json(files[0]))
    row.update(sessions=progress["sessions"], info=info, executor=executor, unfinished=running,
               sfm_clusters=sfm_clusters(os.path.join(root, "work", f"n{n}-{executor}")))
    results_file = os.path.join(root, "curve.json")
    results = read_json(results_file) if os.path.exists(results_file) else {}
    results[str(n)] = row
    atomic_write_json(results_file, results)
    return row


def compare(root, n, repeats=3, workers=2):
    """Embed + match of N images on the process pool vs a Dask LocalCluster, interleaved."""
    from imgsim import distributed
    from imgsim.reconstruct import ReconstructConfig, embed_stage, embedding_model, match_stage, pairs_stage
    from imgsim.sift import FeatureCache

    folder = os.path.join(dataset(root, n), "all")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    pool_config = ReconstructConfig(processes=workers)
    dask_config = ReconstructConfig(processes=workers, workers=workers)
    model = embedding_model(pool_config)
    rows, reference = [], None
    with distributed.client(workers=workers) as dask_client:  # started once, outside the timings
        # warm up as the pool path is warm (its model is built above): each worker builds its model
        from imgsim.model import embed_sharded

        embed_sharded(paths[:2 * workers], cache_dir=os.path.join(root, "work", "warm-up"), shard_size=1,
                      scheduler=dask_client)
        shutil.rmtree(os.path.join(root, "work", "warm-up"))
        for r in range(repeats):
            for name, config in (("pool", pool_config), ("dask", dask_config)):
                work = os.path.join(root, "work", f"compare-{name}")
                shutil.rmtree(work, ignore_errors=True)
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                emb = embed_stage(paths, model if name == "pool" else None, config,
                                  os.path.join(work, "embeddings"))
                t1 = time.perf_counter()
                pairs = pairs_stage(emb, config)
                t2 = time.perf_counter()
                matches, _ = match_stage(paths, pairs, config, FeatureCache(os.path.join(work, "features")))
                t3 = time.perf_counter()
                rows.append({"repeat": r, "executor": name, "embed_s": t1 - t0, "match_s": t3 - t2,
                             "pairs": len(pairs), "load": load})
                print(rows[-1], flush=True)
                if reference is None:
                    reference = (emb, pairs, matches)
                else:
                    same = (np.abs(emb - reference[0]).max() <= 1e-6 and pairs == reference[1]
                            and all(np.array_equal(a, b) for a, b in zip(matches, reference[2])))
                    rows[-1]["identical"] = bool(same)
    summary = {}
    for stage in ("embed_s", "match_s"):
        pool = np.median([r[stage] for r in rows if r["executor"] == "pool"])
        dask = np.median([r[stage] for r in rows if r["executor"] == "dask"])
        summary[stage] = {"pool": pool, "dask": dask, "dask_over_pool": dask / pool}
    result = {"n": n, "workers": workers, "rows": rows, "summary": summary,
              "identical": all(r.get("identical", True) for r in rows)}
    atomic_write_json(os.path.join(root, f"compare-n{n}.json"), result)
    print(json.dumps(summary, indent=1), "identical:", result["identical"])
    return result


def fit(root, project=(100_000, 1_000_000)):
    """Growth exponent per stage (log-log least squares, :func:`benchmarks.scale_report.fit_curve`), printed."""
    from benchmarks.scale_report import fit_curve

    fits = fit_curve(read_json(os.path.join(root, "curve.json")))
    for stage, (b, a, _) in fits.items():
        print(f"{stage:8s} exponent {b:.2f}  " + "  ".join(f"N={n:,}: {a * n ** b / 3600:.1f} h" for n in project))
    return fits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make-data", help="write augmented copies (resumable)")
    p.add_argument("--data", required=True, help="the photos (e.g. ../shared/data)")
    p.add_argument("--root", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="images in all")
    p = sub.add_parser("run", help="reconstruct each size afresh, timing every stage")
    p.add_argument("--root", required=True)
    p.add_argument("--sizes", type=int, nargs="+", required=True)
    p.add_argument("--workers", type=int, default=None, help="Dask LocalCluster workers (default: process pool)")
    p.add_argument("--processes", type=int, default=2, help="pool processes and COLMAP threads")
    p.add_argument("--max-sfm-seconds", type=float, default=0, help="per-component SfM limit (0: none)")
    p = sub.add_parser("unfinished", help="record a size killed before its end (its last stage as a lower bound)")
    p.add_argument("--root", required=True)
    p.add_argument("--n", type=int, required=True)
    p = sub.add_parser("compare", help="embed + match: process pool vs Dask LocalCluster")
    p.add_argument("--root", required=True)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("fit", help="growth exponents and projections")
    p.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    if args.command == "make-data":
        make_data(args.data, args.root, args.n)
    elif args.command == "run":
        run_sizes(args.root, args.sizes, args.workers, args.processes, args.max_sfm_seconds)
    elif args.command == "unfinished":
        print(json.dumps(record_unfinished(args.root, args.n), indent=1))
    elif args.command == "compare":
        compare(args.root, args.n, args.repeats)
    else:
        fit(args.root)


if __name__ == "__main__":
    main()
