"""Real-distribution vectors for the nearest-neighbour benchmark: ImageNet GAP embeddings of real photos.

What ``reconstruct`` shortlists with is the ImageNet MobileNetV2 GAP embedding
(1280-d, L2-normalised) at 224 px. This module makes up to 10^6 such vectors
from the shared photos (424, 65 scenes) and labels each with its photo and scene:

* every photo is decoded once at 224 × 224 (as :func:`imgsim.model.embed` does);
* a **view** is one random augmentation of a photo by the :mod:`imgsim.augment`
  layers (``AugmentConfig()`` defaults: flip, ±18° rotation, ±10 % zoom,
  brightness, contrast, saturation, hue), rounded to uint8 and run through the
  MobileNetV2 backbone (OpenVINO f32) to its 7 × 7 × 1280 feature map;
* each view gives ``WINDOWS`` = 14 vectors: the GAP of the whole map — exactly
  the embedding ``reconstruct`` computes for that augmented image (checked
  against :func:`imgsim.model.embed`, max |diff| 6e-8) — and the GAPs of its
  four 6 × 6 and nine 5 × 5 windows, i.e. zoomed-in crops (86 % and 71 % of
  the side) seen through the same network, each L2-normalised.

One forward pass per view is the cost (9–15 ms on the shared 2-core VM); the
windows are free, which is what makes 10^6 vectors affordable: 172 views per
photo (72,928 forward passes) × 14 windows = 1,020,992 vectors. The views
are written in shards of ``VIEWS_PER_SHARD`` views per photo to
``out/shard-XXXX.npy`` (float16, shape (424 · VIEWS_PER_SHARD, 14, 1280)),
each atomically, so a killed run resumes with the next missing shard; the
queries (1,000 fresh views of random photos, another seed, whole-image
embeddings) go to ``out/queries.npy`` and the labels to ``out/meta.json``.

:func:`load` reads a database of N vectors: the ``windows_per_view`` (default
all 14) vectors of each of the first ⌈N / windows_per_view⌉ views, so a
smaller database is a prefix of a larger one; ``windows_per_view=1`` gives
pure augmented copies (whole-image embeddings only).

Usage::

    nice -n 5 python -m benchmarks.ann_data --data ../shared/data --out /tmp/scale/ann --views 172
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgsim.fileio import atomic_write_json  # noqa: E402

SIZE = 224
VIEWS_PER_SHARD = 4
# (row, col, side) of each window on the 7 x 7 map, in the order load() takes them.
WINDOWS = ([(0, 0, 7)] + [(r, c, 6) for r in (0, 1) for c in (0, 1)]
           + [(r, c, 5) for r, c in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
           + [(r, c, 5) for r, c in ((0, 1), (1, 0), (1, 2), (2, 1))])
BATCH = 32


def window_embeddings(maps):
    """(n, 7, 7, c) feature maps → (n, len(WINDOWS), c) L2-normalised window means, float32."""
    out = np.stack([maps[:, r:r + s, c:c + s].mean(axis=(1, 2)) for r, c, s in WINDOWS], axis=1)
    out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    return out.astype(np.float32)


def _backbone():
    """Keras model: (n, 224, 224, 3) in [0, 255] → (n, 7, 7, 1280) MobileNetV2 feature map."""
    import keras

    from imgsim.model import EmbeddingConfig, build_backbone

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    return keras.Model(inputs, build_backbone(EmbeddingConfig(image_size=SIZE))(x, training=False))


def _augmenter(seed):
    import keras
    import tensorflow as tf

    from imgsim.augment import AugmentConfig, build_augmentation

    keras.utils.set_random_seed(seed)  # every layer draws its own seed from it
    layers = build_augmentation(AugmentConfig())

    @tf.function
    def augment(batch):
        out = layers(tf.cast(batch, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    return augment


def _views(photos, copies, seed, forward):
    """``copies`` augmented views of every photo → (copies · n, 14, 1280) float16, photo-major per copy."""
    augment = _augmenter(seed)
    batch = np.concatenate([photos] * copies)
    out = np.empty((len(batch), len(WINDOWS), 1280), np.float16)
    for start in range(0, len(batch), 4 * BATCH):
        images = augment(batch[start:start + 4 * BATCH]).numpy()
        for i in range(0, len(images), BATCH):
            out[start + i:start + i + BATCH] = window_embeddings(forward(images[i:i + BATCH]))
    return out


def generate(data, out, views, n_queries=1000, seed=0):
    """Write ``views`` views per photo (in shards), the queries and the labels under ``out``."""
    from imgsim.data import load_table
    from imgsim.fileio import atomic_write_bytes
    from imgsim.images import load_images
    from imgsim.model import compile_for_inference

    os.makedirs(out, exist_ok=True)
    table = load_table(data, min_images_per_scene=1)
    scenes = (table["dataset"] + "/" + table["scene"]).tolist()
    atomic_write_json(os.path.join(out, "meta.json"), {
        "paths": table["path"].tolist(), "scenes": scenes, "views_per_shard": VIEWS_PER_SHARD,
        "windows": WINDOWS, "size": SIZE, "seed": seed})
    photos, _ = load_images(list(table["path"]), SIZE)
    forward = compile_for_inference(_backbone(), "openvino")

    def save(path, array):
        import io

        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(path, buffer.getvalue())

    queries = os.path.join(out, "queries.npy")
    if not os.path.exists(queries):
        copies = -(-n_queries // len(photos))
        save(queries, _views(photos, copies, seed + 10_000_000, forward)[:, 0])
    shards = -(-views // VIEWS_PER_SHARD)
    for shard in range(shards):
        path = os.path.join(out, f"shard-{shard:04d}.npy")
        if os.path.exists(path):
            continue
        start = time.perf_counter()
        save(path, _views(photos, VIEWS_PER_SHARD, seed + shard, forward))
        print(f"shard {shard + 1}/{shards}: {VIEWS_PER_SHARD * len(photos)} views in "
              f"{time.perf_counter() - start:.1f} s (load {os.getloadavg()[0]:.2f})", flush=True)


def load(folder, n, windows_per_view=len(WINDOWS), n_queries=1000, dtype=np.float32):
    """A database of ``n`` vectors, their labels, and the queries.

    Returns
    -------
    database : numpy.ndarray of shape (n, 1280), ``dtype``
    photo : numpy.ndarray of shape (n,), int64 — the photo of each vector
    queries : numpy.ndarray of shape (n_queries, 1280), ``dtype``
    query_photo : numpy.ndarray of shape (n_queries,), int64
    scenes : list of str, the scene of each photo (index with ``photo``)
    """
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    n_photos = len(meta["paths"])
    shards = sorted(p for p in os.listdir(folder) if p.startswith("shard-"))
    take = windows_per_view
    available = n_photos * meta["views_per_shard"] * len(shards) * take
    if n > available:
        raise ValueError(f"{folder}: {len(shards)} shards give at most {available} vectors with "
                         f"{take} per view, asked for {n}")
    database = np.empty((n, 1280), dtype)
    photo = np.empty(n, np.int64)
    filled = 0
    for shard in shards:
        if filled == n:
            break
        block = np.load(os.path.join(folder, shard), mmap_mode="r")
        rows = min(len(block), -(-(n - filled) // take))
        vectors = np.asarray(block[:rows, :take]).reshape(-1, 1280)[:n - filled]
        database[filled:filled + len(vectors)] = vectors
        photo[filled:filled + len(vectors)] = np.repeat(np.arange(rows) % n_photos, take)[:len(vectors)]
        filled += len(vectors)
    queries = np.load(os.path.join(folder, "queries.npy"))
    order = np.random.default_rng(0).permutation(len(queries))[:n_queries]
    return (database, photo, queries[order].astype(dtype), order % n_photos, meta["scenes"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the photos (e.g. ../shared/data)")
    parser.add_argument("--out", required=True, help="output folder (resumes what is there)")
    parser.add_argument("--views", type=int, default=172, help="augmented views per photo")
    parser.add_argument("--queries", type=int, default=1000, help="query views")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.data, args.out, args.views, args.queries, args.seed)


if __name__ == "__main__":
    main()
