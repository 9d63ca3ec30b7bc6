"""TripletSemiHardLoss against tensorflow-addons' reference values and a brute-force definition."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, reference_path

TOL = 1e-5


def reference_cases():
    with open(reference_path("tfa_triplet_losses.json")) as f:
        return json.load(f)["cases"]


def gradient_cases():
    with open(reference_path("tfa_triplet_semihard_gradients.json")) as f:
        return json.load(f)["cases"]


def brute_force_semihard(labels, embeddings, margin, metric, anchors=None):
    """Written from the FaceNet/tfa definition with explicit loops, float64 (anchors: the first rows)."""
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
    for a in range(n if anchors is None else anchors):
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
from imgsim.losses import CrossBatchMemory, TripletHardLoss, TripletLoss, TripletSemiHardLoss
assert keras.config.backend() == "jax"
cases = json.load(open(sys.argv[1]))["cases"]
values = [float(TripletSemiHardLoss(c["margin"], c["distance_metric"])(
    np.array(c["labels"]), np.array(c["embeddings"], np.float32))) for c in cases]
hard = [[float(TripletHardLoss(c["margin"], soft, c["distance_metric"])(
    np.array(c["labels"]), np.array(c["embeddings"], np.float32))) for soft in (False, True)]
    for c in cases]
# A cross-batch memory trained with fit under JAX (stateless, jit-compiled): the queue's content.
x_in, y_in = keras.Input((3,)), keras.Input((), dtype="int32")
emb = keras.layers.UnitNormalization()(keras.layers.Dense(3, kernel_initializer="identity")(x_in))
model = keras.Model([x_in, y_in], CrossBatchMemory(6, name="xbm")([emb, y_in]))
model.compile(optimizer=keras.optimizers.SGD(0.0), loss=TripletLoss("hard", 0.2, cross_batch=True))
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 3)).astype(np.float32)
y = np.array([0, 0, 1, 1, 2, 2, 3, 3], np.int32)
model.fit([x, y], y, batch_size=4, epochs=1, shuffle=False, verbose=0)
memory = model.get_layer("xbm")
xbm = {"memory": np.asarray(memory.memory).tolist(), "labels": np.asarray(memory.memory_labels).tolist(),
       "filled": np.asarray(memory.filled).tolist(), "position": int(np.asarray(memory.position))}
grads = []
for c in json.load(open(sys.argv[2]))["cases"]:
    loss = TripletSemiHardLoss(c["margin"], c["distance_metric"])
    labels = np.array(c["labels"])
    g = jax.grad(lambda e: loss(labels, e))(np.array(c["embeddings"], np.float32))
    grads.append(np.asarray(g).tolist())
print(json.dumps({"values": values, "grads": grads, "hard": hard, "xbm": xbm}))
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
    for i, (case, (value, soft)) in enumerate(zip(reference_cases(), result["hard"], strict=True)):
        assert value == pytest.approx(case["triplet_hard"], rel=TOL, abs=TOL), i
        assert soft == pytest.approx(case["triplet_hard_soft"], rel=TOL, abs=TOL), i
    # The queue after two batches of 4 into 6 slots: slots 0-3 the first batch, then 4, 5, 0, 1.
    x = np.random.default_rng(0).normal(size=(8, 3))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    xbm = result["xbm"]
    np.testing.assert_allclose(xbm["memory"], unit[[6, 7, 2, 3, 4, 5]], atol=1e-6)
    assert xbm["labels"] == [3, 3, 1, 1, 2, 2] and xbm["filled"] == [1] * 6 and xbm["position"] == 2


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


# --------------------------------------------------------------------------- batch-hard (tfa)


@pytest.mark.parametrize("soft, key", [(False, "triplet_hard"), (True, "triplet_hard_soft")])
def test_batch_hard_equals_tfa_on_all_reference_cases(soft, key):
    """tfa's TripletHardLoss values (both variants, all 72 cases, infinities included)."""
    from imgsim.losses import TripletHardLoss

    cases = reference_cases()
    assert len(cases) == 72
    infinite = 0
    for i, case in enumerate(cases):
        loss = TripletHardLoss(case["margin"], soft, case["distance_metric"])
        value = float(loss(np.array(case["labels"]), np.array(case["embeddings"], np.float32)))
        expected = case[key]
        if math.isinf(expected):
            infinite += 1
            assert math.isinf(value), i
        else:
            assert value == pytest.approx(expected, rel=TOL, abs=TOL), (i, value, expected)
    assert infinite == (2 if soft else 0)  # exp overflows in two squared-L2 cases, as in tfa


# --------------------------------------------------------------------------- miners vs brute force


def distances(x, metric):
    x = np.asarray(x, np.float64)
    if metric == "angular":
        u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        return np.maximum(1.0 - u @ u.T, 0.0)
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    return d if metric == "squared-L2" else np.sqrt(d)


def brute_force_hard(labels, x, margin, metric, soft, anchors):
    d = distances(x, metric)
    total = []
    for a in range(anchors):
        pos = [d[a, j] for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        neg = [d[a, j] for j in range(len(labels)) if labels[j] != labels[a]]
        hp = max(pos) if pos else 0.0
        hn = min(neg) if neg else max(d[a])
        total.append(np.log1p(np.exp(hp - hn)) if soft else max(hp - hn + margin, 0.0))
    return float(np.mean(total))


def brute_force_all(labels, x, margin, metric, soft, anchors):
    d = distances(x, metric)
    values = []
    for a in range(anchors):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(labels)):
                if labels[n] != labels[a]:
                    values.append(d[a, p] - d[a, n])
    values = np.array(values)
    if soft:
        return float(np.mean(np.log1p(np.exp(values)))) if len(values) else 0.0
    hinge = np.maximum(values + margin, 0.0)
    return float(hinge.sum() / max((hinge > 0).sum(), 1))


def brute_force_distance_weighted(labels, x, margin, metric, soft, anchors):
    """Wu et al. 2017: weight of negative n of anchor a ∝ 1 / q(max(d, 0.5)) for d < 1.4."""
    d = distances(x, "L2")
    dim = x.shape[1]
    total, count = 0.0, 0
    for a in range(anchors):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a] and d[a, n] < 1.4]
        q = [max(d[a, n], 0.5) ** (dim - 2) * (1 - max(d[a, n], 0.5) ** 2 / 4) ** ((dim - 3) / 2)
             for n in negatives]
        w = np.array([1.0 / v for v in q])
        w = w / w.sum() if len(w) else w
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            for weight, n in zip(w, negatives):
                gap = d[a, p] - d[a, n]
                total += weight * (np.log1p(np.exp(gap)) if soft else max(gap + margin, 0.0))
    return total / count if count else 0.0


BRUTE_FORCE = {"semihard": lambda labels, x, margin, metric, soft, anchors:
               brute_force_semihard(labels, x, margin, metric, anchors),
               "hard": brute_force_hard, "all": brute_force_all,
               "distance_weighted": brute_force_distance_weighted}


def random_pk_batch(rng, unit=False):
    p, k, dim = int(rng.integers(2, 6)), int(rng.integers(2, 5)), int(rng.integers(4, 16))
    labels = np.repeat(rng.permutation(40)[:p], k)
    x = rng.normal(size=(p * k, dim)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels, x


@pytest.mark.parametrize("miner", ["semihard", "hard", "all", "distance_weighted"])
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_each_miner_matches_brute_force_on_random_batches(miner, seed):
    from imgsim.losses import triplet_loss

    rng = np.random.default_rng(seed)
    metrics = ["L2"] if miner == "distance_weighted" else ["L2", "squared-L2", "angular"]
    for metric in metrics:
        for soft in ([False] if miner == "semihard" else [False, True]):
            labels, x = random_pk_batch(rng, unit=metric == "L2")
            margin = float(rng.uniform(0.1, 1.0))
            got = float(triplet_loss(labels, x, miner, margin, metric, soft))
            want = BRUTE_FORCE[miner](labels, x, margin, metric, soft, len(labels))
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (metric, soft)


@pytest.mark.parametrize("miner", ["semihard", "hard", "all", "distance_weighted"])
def test_each_miner_with_a_cross_batch_memory_matches_brute_force(miner):
    """Anchors are the batch; positives and negatives come from the batch and the valid memory rows."""
    from imgsim.losses import triplet_loss

    rng = np.random.default_rng(5)
    labels, x = random_pk_batch(rng, unit=True)
    memory = rng.normal(size=(9, x.shape[1])).astype(np.float32)
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    memory_labels = rng.choice(np.concatenate([labels, [97, 98]]), 9).astype(np.float32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], np.float32)  # 3 slots not filled yet
    got = float(triplet_loss(labels, x, miner, 0.4, "L2", False, ref_labels=memory_labels,
                             ref_embeddings=memory, ref_valid=valid))
    all_labels = np.concatenate([labels, memory_labels[:6]])
    all_x = np.concatenate([x, memory[:6]])
    want = BRUTE_FORCE[miner](all_labels, all_x, 0.4, "L2", False, len(labels))
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_cross_batch_memory_queue_hand_worked():
    """Size 5, batches of 3: the output shows the memory before the batch; the batch then
    overwrites the oldest slots (0-2, then 3, 4, 0); no update outside training."""
    from imgsim.losses import CrossBatchMemory

    layer = CrossBatchMemory(5)
    e = np.arange(1, 19, dtype=np.float32).reshape(6, 3)  # rows e1..e6
    first = np.asarray(layer([e[:3], np.array([10, 20, 30])], training=True))
    assert first.shape == (8, 5)
    np.testing.assert_array_equal(first[:3], np.c_[[10, 20, 30], [1, 1, 1], e[:3]])
    np.testing.assert_array_equal(first[3:], np.zeros((5, 5)))  # empty memory: valid 0
    second = np.asarray(layer([e[3:], np.array([40, 50, 60])], training=True))
    np.testing.assert_array_equal(second[3:6], np.c_[[10, 20, 30], [1, 1, 1], e[:3]])
    np.testing.assert_array_equal(second[6:], np.zeros((2, 5)))
    np.testing.assert_array_equal(np.asarray(layer.memory), e[[5, 1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(layer.memory_labels), [60, 20, 30, 40, 50])
    np.testing.assert_array_equal(np.asarray(layer.filled), [1, 1, 1, 1, 1])
    assert int(np.asarray(layer.position)) == 1
    layer([e[:3], np.array([1, 2, 3])], training=False)
    np.testing.assert_array_equal(np.asarray(layer.memory_labels), [60, 20, 30, 40, 50])


def test_distance_weights_hand_worked():
    """dim 3: q(d) ∝ d (the exponent of (1 - d²/4) is 0), so weights ∝ 1/max(d, 0.5)."""
    from imgsim.losses import distance_weights

    d = np.array([[0.0, 0.25, 1.0, 1.3, 1.5]], np.float32)
    negatives = np.array([[0, 1, 1, 1, 1]], np.float32)
    w = np.asarray(distance_weights(d, negatives, 3))[0]
    raw = np.array([0, 1 / 0.5, 1 / 1.0, 1 / 1.3, 0])  # 1.5 is beyond the 1.4 cutoff
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-5)


def test_loss_options_are_checked():
    from imgsim.losses import TripletLoss

    with pytest.raises(ValueError, match="miner must be one of"):
        TripletLoss("hardest")
    with pytest.raises(ValueError, match="needs distance_metric='L2'"):
        TripletLoss("distance_weighted", distance_metric="angular")
    with pytest.raises(ValueError, match="soft=True needs miner"):
        TripletLoss("semihard", soft=True)
    again = TripletLoss.from_config(TripletLoss("all", 0.2, "angular", True).get_config())
    assert (again.miner, again.margin, again.distance_metric, again.soft) == ("all", 0.2, "angular", True)


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
