"""Training-step throughput (P×K = 32 images, 224 px, MobileNetV2 1.0 + semi-hard loss).

Each backend runs in its own subprocess (KERAS_BACKEND is read at import). ``synthetic``
feeds tensors already in memory (the limit); ``pipeline`` feeds imgsim's real P×K batches
(decoded photos, augmentation in the loader threads) through ``model.fit``.
"""

import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, sys, time
import numpy as np
import keras
from imgsim.augment import AugmentConfig, build_augmentation
from imgsim.data import label_ids, load_table
from imgsim.images import load_images
from imgsim.losses import TripletSemiHardLoss
from imgsim.model import EmbeddingConfig, build_embedding_model
from imgsim.train import PKBatches

data, steps = sys.argv[1], int(sys.argv[2])
model = build_embedding_model(EmbeddingConfig())
model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=TripletSemiHardLoss(0.3))
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (32, 224, 224, 3)).astype("float32")
y = np.repeat(np.arange(8), 4).astype("int32")
model.train_on_batch(x, y)
start = time.perf_counter()
for _ in range(steps):
    model.train_on_batch(x, y)
synthetic = 32 * steps / (time.perf_counter() - start)
table = load_table(data)
table = table[table["scene"] != "outliers"]
images, _ = load_images(table["path"], 224)
batches = PKBatches(images, label_ids(table), 8, 4, steps, augment=build_augmentation(AugmentConfig()),
                    workers=2)
model.fit(batches, epochs=1, verbose=0)  # warm-up epoch (traces the pipeline)
start = time.perf_counter()
model.fit(batches, epochs=1, verbose=0)
pipeline = 32 * steps / (time.perf_counter() - start)
print(json.dumps({"backend": keras.config.backend(), "synthetic_img_s": synthetic,
                  "pipeline_img_s": pipeline, "steps": steps}))
"""


def run(data, backends=("tensorflow", "jax"), steps={"tensorflow": 6, "jax": 2}):
    rows = []
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=repo, JAX_PLATFORMS="cpu",
                   TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run([sys.executable, "-c", SCRIPT, data, str(steps[backend])], env=env,
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            rows.append({"backend": backend, "error": out.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


if __name__ == "__main__":
    print(run(sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "shared", "data")))
