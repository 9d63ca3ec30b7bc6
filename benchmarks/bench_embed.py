"""Embedding throughput and memory: the seed's way vs imgsim's pipeline vs the forward-pass limit.

(a) seed: one ``model.predict`` per image, each loaded with ``keras.utils.load_img``;
(b) imgsim: ``imgsim.model.embed`` (parallel decode with JPEG draft scaling, batching, the next
    batch decoded while the model runs, Keras' compiled predict);
(c) limit: ``model.predict_on_batch`` alone on preloaded tensors;
(d) OpenVINO (f32) on the same weights and tensors (``compile_for_inference(model, "openvino")``),
    if installed, with its max |difference| to (c), and (b) with ``engine="openvino"``.
All measured in one run on the same images; ratios are what to read.

The breakdown (printed) explains (b)/(c): decode + resize alone (``embed``'s loader threads, no
model), the forward pass alone, and the bound that sharing the cores implies. When decoding and
the forward pass are both CPU-bound on the same cores, overlapping them cannot beat doing one
after the other: an image costs 1/decode_rate + 1/forward_rate seconds of the whole machine, so
(b) <= 1 / (1/decode_rate + 1/forward_rate).
"""

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np


def _best(fn, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _interleaved(fns, rounds=5):
    """Best wall time of each of ``fns`` (a dict), measured in turn ``rounds`` times.

    Taking turns gives every candidate the same chances at a quiet moment on a shared
    machine. Returns {name: (seconds, cores busy = process CPU seconds / wall seconds)} of
    each one's fastest run.
    """
    best = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if name not in best or wall < best[name][0]:
                best[name] = (wall, cpu / wall)
    return best


def shared_core_bound(decode_img_s, forward_img_s):
    """Best end-to-end img/s when decode and forward are CPU-bound on the same cores."""
    return 1.0 / (1.0 / decode_img_s + 1.0 / forward_img_s)


def throughput(paths, alpha=1.0, size=224, batch_size=32, rounds=5, verbose=True):
    import keras

    from imgsim.images import load_images
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, compile_for_inference, embed

    model = build_imagenet_baseline(EmbeddingConfig(alpha=alpha, image_size=size))
    n = len(paths)
    model.predict_on_batch(np.zeros((batch_size, size, size, 3), np.float32))  # warm-up / trace

    def seed_way():
        for p in paths:
            x = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
            model.predict(x[None], verbose=0)

    def decode():  # what embed's loader does, batch by batch, without the model
        for i in range(0, n, batch_size):
            load_images(paths[i:i + batch_size], size)

    images = load_images(paths, size)[0]  # uint8
    batches = [images[i:i + batch_size].astype(np.float32) for i in range(0, n, batch_size)]
    fns = {"decode": decode,
           "forward": lambda: [model.predict_on_batch(b) for b in batches],
           "imgsim": lambda: embed(model, paths, batch_size)}
    try:
        import openvino  # noqa: F401
    except ImportError:
        has_openvino = False
    else:
        has_openvino = True
        cache = tempfile.mkdtemp(prefix="imgsim-bench-openvino-")
        start = time.perf_counter()
        compiled = compile_for_inference(model, "openvino", cache_dir=cache)  # export + compile
        t_export = time.perf_counter() - start
        shutil.rmtree(cache, ignore_errors=True)
        uint8_batches = [images[i:i + batch_size] for i in range(0, n, batch_size)]
        compiled(uint8_batches[0])
        diff = max(float(np.abs(compiled(u) - model.predict_on_batch(f)).max())
                   for u, f in zip(uint8_batches, batches))
        fns["openvino"] = lambda: [compiled(b) for b in uint8_batches]
        # embed(model, paths, engine="openvino") reuses the model compiled above but hashes the
        # weights on every call to find it; embed(compiled, paths) does not.
        fns["imgsim_openvino"] = lambda: embed(model, paths, batch_size, engine="openvino")
        fns["imgsim_openvino_compiled"] = lambda: embed(compiled, paths, batch_size)
    t_a = _best(seed_way, repeats=1)
    best = _interleaved(fns, rounds)
    rate = {name: n / wall for name, (wall, _) in best.items()}
    rows = {"images": n, "cores": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
            "seed_img_s": n / t_a, "imgsim_img_s": rate["imgsim"],
            "forward_img_s": rate["forward"], "decode_img_s": rate["decode"],
            "shared_core_bound_img_s": shared_core_bound(rate["decode"], rate["forward"]),
            **{f"{name}_cores_busy": cores for name, (_, cores) in best.items()}}
    if has_openvino:
        rows.update(openvino_img_s=rate["openvino"], openvino_max_abs_diff=diff,
                    imgsim_openvino_img_s=rate["imgsim_openvino"],
                    imgsim_openvino_compiled_img_s=rate["imgsim_openvino_compiled"],
                    openvino_shared_core_bound_img_s=shared_core_bound(rate["decode"], rate["openvino"]),
                    openvino_export_compile_s=t_export)
    else:
        rows.update(openvino_img_s=None, openvino_max_abs_diff=None, imgsim_openvino_img_s=None)
    if verbose:
        print(format_breakdown(rows))
    return rows


def format_breakdown(rows):
    """The (b)/(c) profile as text: where the time of ``embed`` goes."""
    c = rows["forward_img_s"]
    lines = [f"embed breakdown, {rows['images']} images, {rows['cores']} cores, 1-min load average"
             f" {rows['load_avg_1min']:.2f} at the end (img/s; ratio to (c)):",
             f"  decode + resize alone (loader threads, no model) {rows['decode_img_s']:8.1f}"
             f"   {rows['decode_cores_busy']:.2f} cores busy",
             f"  (c) forward alone, Keras predict_on_batch       {c:8.1f}   1.00"
             f"   {rows['forward_cores_busy']:.2f} cores busy",
             f"  shared-core bound 1/(1/decode + 1/forward)      {rows['shared_core_bound_img_s']:8.1f}"
             f"   {rows['shared_core_bound_img_s'] / c:.2f}",
             f"  (b) embed end to end, engine='keras'            {rows['imgsim_img_s']:8.1f}"
             f"   {rows['imgsim_img_s'] / c:.2f}   {rows['imgsim_cores_busy']:.2f} cores busy;"
             f" {rows['imgsim_img_s'] / rows['shared_core_bound_img_s']:.2f} of the bound"]
    if rows.get("openvino_img_s"):
        lines += [
            f"  (d) forward alone, OpenVINO f32                 {rows['openvino_img_s']:8.1f}"
            f"   {rows['openvino_img_s'] / c:.2f}   {rows['openvino_cores_busy']:.2f} cores busy;"
            f" max |diff| {rows['openvino_max_abs_diff']:.1e};"
            f" export + compile once {rows['openvino_export_compile_s']:.1f} s",
            f"  shared-core bound with OpenVINO                 "
            f"{rows['openvino_shared_core_bound_img_s']:8.1f}   "
            f"{rows['openvino_shared_core_bound_img_s'] / c:.2f}",
            f"  (b) embed end to end, engine='openvino'         {rows['imgsim_openvino_img_s']:8.1f}"
            f"   {rows['imgsim_openvino_img_s'] / c:.2f}   {rows['imgsim_openvino_cores_busy']:.2f} cores busy;"
            f" {rows['imgsim_openvino_img_s'] / rows['openvino_shared_core_bound_img_s']:.2f} of the bound,"
            f" {rows['imgsim_openvino_img_s'] / rows['openvino_img_s']:.2f} of (d)",
            f"    same, precompiled: embed(compile_for_inference(model), ...) "
            f"{rows['imgsim_openvino_compiled_img_s']:8.1f}   {rows['imgsim_openvino_compiled_img_s'] / c:.2f}"
            f"   {rows['imgsim_openvino_compiled_cores_busy']:.2f} cores busy;"
            f" {rows['imgsim_openvino_compiled_img_s'] / rows['openvino_shared_core_bound_img_s']:.2f}"
            f" of the bound"]
    return "\n".join(lines)


def memory(paths, n_images=10_000, alpha=0.35, size=96, batch_size=64):
    """Peak RSS growth of ``embed`` over ``n_images`` (paths repeated), per 1,000 images."""
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed

    model = build_imagenet_baseline(EmbeddingConfig(alpha=alpha, image_size=size))
    embed(model, paths[:batch_size], batch_size)
    many = [paths[i % len(paths)] for i in range(n_images)]
    peaks = []
    for chunk in range(0, n_images, 1000):
        embed(model, many[chunk:chunk + 1000], batch_size)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"images": n_images, "peak_rss_mb_per_1000": peaks}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--no-memory", action="store_true", help="throughput only")
    args = parser.parse_args()
    from imgsim.data import load_table

    table = load_table(args.data)
    paths = list(table[table["dataset"] == "strecha_mvs"]["path"][:64])
    print(throughput(paths))
    if not args.no_memory:
        print(memory(list(table["path"]), n_images=2000))
