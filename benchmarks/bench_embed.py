"""Embedding throughput and memory: the seed's way vs imgsim's pipeline vs the forward-pass limit.

(a) seed: one ``model.predict`` per image, each loaded with ``keras.utils.load_img``;
(b) imgsim: ``imgsim.model.embed`` (parallel decode with JPEG draft scaling, batching, the next
    batch decoded while the model runs, Keras' compiled predict);
(c) limit: ``model.predict_on_batch`` alone on preloaded tensors;
(d) OpenVINO (f32) on the same weights and tensors, if installed, with its max |difference| to (c).
All measured in one run on the same images; ratios are what to read.
"""

import argparse
import os
import resource
import time

import numpy as np


def _best(fn, repeats=2):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(paths, alpha=1.0, size=224, batch_size=32):
    import keras

    from imgsim.data import load_images
    from imgsim.model import EmbeddingConfig, build_imagenet_baseline, embed

    model = build_imagenet_baseline(EmbeddingConfig(alpha=alpha, image_size=size))
    n = len(paths)
    model.predict_on_batch(np.zeros((batch_size, size, size, 3), np.float32))  # warm-up / trace

    def seed_way():
        for p in paths:
            x = keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
            model.predict(x[None], verbose=0)

    t_a = _best(seed_way, repeats=1)
    t_b = _best(lambda: embed(model, paths, batch_size))
    images = load_images(paths, size)[0].astype(np.float32)
    batches = [images[i:i + batch_size] for i in range(0, n, batch_size)]
    t_c = _best(lambda: [model.predict_on_batch(b) for b in batches])
    rows = {"images": n, "seed_img_s": n / t_a, "imgsim_img_s": n / t_b, "forward_img_s": n / t_c}
    try:
        import openvino as ov

        folder = "/tmp/imgsim-bench-openvino"
        model.export(os.path.join(folder, "model.xml"), format="openvino", verbose=False)
        compiled = ov.Core().compile_model(os.path.join(folder, "model.xml"), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        compiled(batches[0])
        t_d = _best(lambda: [compiled(b)[0] for b in batches])
        diff = max(float(np.abs(compiled(b)[0] - model.predict_on_batch(b)).max()) for b in batches)
        rows.update(openvino_img_s=n / t_d, openvino_max_abs_diff=diff)
    except ImportError:
        rows.update(openvino_img_s=None, openvino_max_abs_diff=None)
    return rows


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
    args = parser.parse_args()
    from imgsim.data import load_table

    table = load_table(args.data)
    paths = list(table[table["dataset"] == "strecha_mvs"]["path"][:64])
    print(throughput(paths))
    print(memory(list(table["path"]), n_images=2000))
