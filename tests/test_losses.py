"""TripletSemiHardLoss against tensorflow-addons' reference values and a brute-force definition."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, reference_path, shared_path

TOL = 1e-5


def reference_cases():
    with open(reference_path("tfa_triplet_losses.json")) as f:
        return json.load(f)["cases"]


def gradient_cases():
    with open(reference_path("tfa_triplet_semihard_gradients.json")) as f:
        return json.load(f)["cases"]


def brute_force_semihard(labels, embeddings, margin, metric):
    """Written from the FaceNet/tfa definition with explicit loops, float64."""
    x = np.asarray(embeddings, np.float64)
    n = len(labels)
    if metric == "angular":
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        d = np.maximum(1.0 - u @ u.T, 0.0)
    else:
        d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(n)] for i in range(n)])
        d = d if metric == "squared-L2" else np.sqrt(d)
        np.fill_diagonal(d, 0.0)
    total, count = 0.0, 0
    for a in range(n):
        negatives = [j for j in range(n) if labels[j] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            farther = [d[a, j] for j in negatives if d[a, j] > d[a, p]]
            if farther:
                neg = min(farther)
            elif negatives:
                neg = max(d[a, j] for j in negatives)
            else:  # tfa's masked maximum over an empty set: the row minimum
                neg = d[a].min()
            total += max(margin + d[a, p] - neg, 0.0)
    return total / count if count else 0.0


def test_all_reference_cases_tensorflow_backend():
    from imgsim.losses import TripletSemiHardLoss

    cases = reference_cases()
    assert len(cases) == 72
    nan_cases = 0
    for i, case in enumerate(cases):
        loss = TripletSemiHardLoss(case["margin"], case["distance_metric"])
        value = float(loss(np.array(case["labels"]), np.array(case["embeddings"], np.float32)))
        expected = case["triplet_semihard"]
        if math.isnan(expected):
            # The one deliberate difference: tfa returns NaN without positive pairs, imgsim 0.
            nan_cases += 1
            assert value == 0.0, i
        else:
            assert abs(value - expected) <= TOL, (i, value, expected)
    assert nan_cases == 12  # the all-distinct-label batches, cases 48-59


JAX_SCRIPT = r"""
import json, sys
import numpy as np
import keras, jax
from imgsim.losses import TripletSemiHardLoss
assert keras.config.backend() == "jax"
cases = json.load(open(sys.argv[1]))["cases"]
values = [float(TripletSemiHardLoss(c["margin"], c["distance_metric"])(
    np.array(c["labels"]), np.array(c["embeddings"], np.float32))) for c in cases]
grads = []
for c in json.load(open(sys.argv[2]))["cases"]:
    loss = TripletSemiHardLoss(c["margin"], c["distance_metric"])
    labels = np.array(c["labels"])
    g = jax.grad(lambda e: loss(labels, e))(np.array(c["embeddings"], np.float32))
    grads.append(np.asarray(g).tolist())
print(json.dumps({"values": values, "grads": grads}))
"""


@pytest.mark.slow
def test_all_reference_cases_jax_backend():
    pytest.importorskip("jax")
    losses = reference_path("tfa_triplet_losses.json")
    grads = reference_path("tfa_triplet_semihard_gradients.json")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, losses, grads], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for i, (case, value) in enumerate(zip(reference_cases(), result["values"], strict=True)):
        expected = case["triplet_semihard"]
        if math.isnan(expected):
            assert value == 0.0, i
        else:
            assert abs(value - expected) <= TOL, (i, value, expected)
    for case, grad in zip(gradient_cases(), result["grads"], strict=True):
        np.testing.assert_allclose(grad, case["grad"], atol=1e-5, err_msg=case["name"])


def test_gradients_match_tfa_and_are_finite():
    import tensorflow as tf

    from imgsim.losses import TripletSemiHardLoss

    cases = gradient_cases()
    names = {c["name"] for c in cases}
    assert {"duplicate_within_class", "duplicate_across_classes", "three_identical_mixed_labels"} <= names
    for case in cases:
        loss = TripletSemiHardLoss(case["margin"], case["distance_metric"])
        x = tf.Variable(np.array(case["embeddings"], np.float32))
        with tf.GradientTape() as tape:
            value = loss(np.array(case["labels"]), x)
        grad = tape.gradient(value, x).numpy()
        assert np.all(np.isfinite(grad)), case["name"]
        assert abs(float(value) - case["semihard"]) <= TOL, case["name"]
        np.testing.assert_allclose(grad, case["grad"], atol=1e-5, err_msg=case["name"])


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_brute_force_on_random_pk_batches(metric, seed):
    from imgsim.losses import TripletSemiHardLoss

    rng = np.random.default_rng(seed)
    p, k, dim = int(rng.integers(2, 7)), int(rng.integers(2, 5)), int(rng.integers(2, 20))
    labels = np.repeat(rng.permutation(50)[:p], k)
    x = rng.normal(size=(p * k, dim)).astype(np.float32)
    if seed == 2:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    margin = float(rng.uniform(0.1, 1.5))
    value = float(TripletSemiHardLoss(margin, metric)(labels, x))
    assert value == pytest.approx(brute_force_semihard(labels, x, margin, metric), abs=1e-5)


def test_hand_worked_case():
    """Four points on a line, labels [0, 0, 1, 1], L2, margin 1.

    Positions 0, 1, 3, 6. Pairs (a, p): (0,1): d_ap=1, negatives of 0 at 3 and 6, the
    closest farther than 1 is 3 → 1+1-3 = -1 → 0. (1,0): d_ap=1, negatives at 2 and 5 →
    2 → 1+1-2 = 0. (2,3): d_ap=3, negatives at 3 and 2; none farther than 3 → hardest-is-
    farthest = 3 → 1+3-3 = 1. (3,2): d_ap=3, negatives at 6 and 5 → 5 → 1+3-5 = -1 → 0.
    Mean over 4 pairs = 1/4.
    """
    from imgsim.losses import TripletSemiHardLoss

    x = np.array([[0.0], [1.0], [3.0], [6.0]], np.float32)
    assert float(TripletSemiHardLoss(1.0)(np.array([0, 0, 1, 1]), x)) == pytest.approx(0.25)


def test_no_positive_pair_gives_zero_loss_and_zero_gradient():
    import tensorflow as tf

    from imgsim.losses import TripletSemiHardLoss

    x = tf.Variable(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = TripletSemiHardLoss()(np.arange(5), x)
    assert float(value) == 0.0  # tfa: NaN
    assert np.all(tape.gradient(value, x).numpy() == 0.0)


def test_config_round_trip_and_bad_metric():
    from imgsim.losses import TripletSemiHardLoss

    loss = TripletSemiHardLoss(0.3, "angular")
    again = TripletSemiHardLoss.from_config(loss.get_config())
    assert (again.margin, again.distance_metric) == (0.3, "angular")
    with pytest.raises(ValueError, match="distance_metric must be one of"):
        TripletSemiHardLoss(distance_metric="cosine")


# SHA-256 of the files in ../shared/reference/ (computed with tensorflow-addons; see tests/reference/README.md).
REFERENCE_SHA256 = {
    "tfa_triplet_losses.json": "50c5ce8319db1a21818ac8e1e3643d870edb2023bc411b484420be64a74d6331",
    "tfa_triplet_semihard_gradients.json": "a3df57b11128dda8b5b72c72857b03c37f57e862cb68640ef00c1d4b08eb4dad",
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SHA256))
def test_reference_copy_is_the_shared_file(name):
    """tests/reference/ is a verbatim copy, so a clone without ../shared runs every loss test."""
    import hashlib

    with open(reference_path(name), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == REFERENCE_SHA256[name]
