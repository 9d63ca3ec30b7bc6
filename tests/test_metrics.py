import numpy as np
import pytest

import imgsim.metrics
from imgsim.metrics import (
    accuracy_at_threshold,
    calibrate_threshold,
    cluster,
    clustering_report,
    map_at_r,
    precision_at_1,
    recall_at_k,
    retrieval_report,
    roc_auc,
    tpr_at_fpr,
    verification_report,
)


def brute_force_metrics(embeddings, labels, ks):
    """Leave-one-out P@1, Recall@K and mAP@R straight from the definitions."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = list(labels)
    n = len(labels)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1))
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, : n - 1]  # every other embedding

    p1, recalls, aps = [], {k: [] for k in ks}, []
    for q in range(n):
        r = sum(label == labels[q] for label in labels) - 1
        if r == 0:  # lone query: not a query, but still in the gallery
            continue
        rel = [labels[j] == labels[q] for j in order[q]]
        p1.append(rel[0])
        for k in ks:
            recalls[k].append(any(rel[:k]))
        aps.append(sum(sum(rel[: i + 1]) / (i + 1) * rel[i] for i in range(r)) / r)
    return np.mean(p1), {k: np.mean(v) for k, v in recalls.items()}, np.mean(aps)


def random_set(seed, n, dim, n_classes, n_singletons, string_labels):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, size=n)
    labels[:n_singletons] = -1 - np.arange(n_singletons)  # unique labels
    # Class-dependent means so that the metrics are neither ~0 nor ~1.
    x = rng.normal(size=(n, dim)) + 0.7 * rng.normal(size=(n_classes + n_singletons, dim))[labels]
    if string_labels:
        labels = np.array([f"class-{v}" for v in labels])
    return x, labels


@pytest.mark.parametrize(
    "seed, n, dim, n_classes, n_singletons, string_labels",
    [
        (0, 12, 1, 3, 0, False),
        (1, 40, 4, 5, 3, False),
        (2, 60, 16, 12, 6, True),
        (3, 25, 2, 2, 10, True),  # large classes: R up to ~10
        (4, 80, 8, 30, 0, False),  # many small classes, some of size 1 by chance
        (5, 9, 3, 1, 7, False),  # a single non-lone class of two, 7 lone distractors
    ],
)
def test_metrics_match_brute_force(seed, n, dim, n_classes, n_singletons, string_labels):
    x, labels = random_set(seed, n, dim, n_classes, n_singletons, string_labels)
    ks = (1, 2, 5, n - 1, n + 3)
    p1, recalls, mapr = brute_force_metrics(x, labels, ks)

    assert precision_at_1(x, labels) == pytest.approx(p1, abs=1e-12)
    for k in ks:
        assert recall_at_k(x, labels, k) == pytest.approx(recalls[k], abs=1e-12)
    assert map_at_r(x, labels) == pytest.approx(mapr, abs=1e-12)
    report = retrieval_report(x, labels, ks=ks)
    assert report == pytest.approx(
        {"precision_at_1": p1, "map_at_r": mapr, **{f"recall_at_{k}": recalls[k] for k in ks}}, abs=1e-12
    )


def test_hand_worked_with_lone_distractor():
    # 1-D embeddings, sorted by position:
    #   0.0 A, 1.0 A, 2.4 B, 5.0 A, 9.2 C (lone), 9.5 B
    # Nearest others per query (distance), + = same label:
    #   A@0.0: A@1.0 (1) +, B@2.4 (2.4), A@5.0 (5) +, C (9.2), B@9.5      R=2 -> [+, -]
    #   A@1.0: A@0.0 (1) +, B@2.4 (1.4), A@5.0 (4) +, C (8.2), B@9.5      R=2 -> [+, -]
    #   A@5.0: B@2.4 (2.6), A@1.0 (4) +, C (4.2), B@9.5 (4.5), A@0.0 (5) + R=2 -> [-, +]
    #   B@2.4: A@1.0 (1.4), A@0.0 (2.4), A@5.0 (2.6), C (6.8), B@9.5 (7.1) +  R=1 -> [-]
    #   B@9.5: C (0.3), A@5.0 (4.5), B@2.4 (7.1) +, A@1.0, A@0.0              R=1 -> [-]
    #   C is not a query (its label occurs once) but is retrieved by others.
    # P@1 = (1 + 1 + 0 + 0 + 0) / 5 = 0.4
    # R@2 = (1 + 1 + 1 + 0 + 0) / 5 = 0.6;  R@3 adds B@9.5 -> 0.8;  R@5 = 1
    # AP@R: [+, -] -> (1/2)(1/1) = 0.5;  [-, +] -> (1/2)(1/2) = 0.25;  [-] -> 0
    # mAP@R = (0.5 + 0.5 + 0.25 + 0 + 0) / 5 = 0.25
    x = np.array([[0.0], [1.0], [2.4], [5.0], [9.2], [9.5]])
    labels = ["A", "A", "B", "A", "C", "B"]
    assert precision_at_1(x, labels) == 0.4
    assert recall_at_k(x, labels, 1) == 0.4
    assert recall_at_k(x, labels, 2) == 0.6
    assert recall_at_k(x, labels, 3) == 0.8
    assert recall_at_k(x, labels, 4) == 0.8
    assert recall_at_k(x, labels, 5) == 1.0
    assert map_at_r(x, labels) == 0.25
    # Shuffling the rows changes nothing.
    perm = np.array([4, 2, 0, 5, 3, 1])
    assert map_at_r(x[perm], np.array(labels)[perm]) == 0.25


def test_hand_worked_larger_r():
    # 1-D embeddings: A at 0, 1, 3.5, 6.2 (R=3); B at 2.2, 20, 30 (R=2).
    #   A@0:   A@1 +, B@2.2, A@3.5 +, A@6.2 +    top R=3: [+, -, +] -> (1 + 2/3) / 3 = 5/9
    #   A@1:   A@0 +, B@2.2, A@3.5 +, A@6.2 +    [+, -, +] -> 5/9
    #   A@3.5: B@2.2 (1.3), A@1 (2.5) +, A@6.2 (2.7) +  [-, +, +] -> (1/2 + 2/3) / 3 = 7/18
    #   A@6.2: A@3.5 (2.7) +, B@2.2 (4), A@1 (5.2) +    [+, -, +] -> 5/9
    #   B@2.2: A@1 (1.2), A@3.5 (1.3)                   [-, -] -> 0
    #   B@20:  B@30 (10) +, A@6.2 (13.8)                [+, -] -> 1/2
    #   B@30:  B@20 (10) +, A@6.2 (23.8)                [+, -] -> 1/2
    # mAP@R = (3 * 5/9 + 7/18 + 0 + 1/2 + 1/2) / 7 = (55/18) / 7 = 55/126
    # P@1 = (1 + 1 + 0 + 1 + 0 + 1 + 1) / 7 = 5/7; R@2 = 6/7 (only B@2.2 misses); R@3 = 6/7
    x = np.array([0.0, 1.0, 3.5, 6.2, 2.2, 20.0, 30.0])[:, None]
    labels = np.array([7, 7, 7, 7, 3, 3, 3])
    assert map_at_r(x, labels) == pytest.approx(55 / 126, abs=1e-12)
    assert precision_at_1(x, labels) == pytest.approx(5 / 7, abs=1e-12)
    assert recall_at_k(x, labels, 2) == pytest.approx(6 / 7, abs=1e-12)
    assert recall_at_k(x, labels, 3) == pytest.approx(6 / 7, abs=1e-12)
    assert retrieval_report(x, labels, ks=(2,)) == pytest.approx(
        {"precision_at_1": 5 / 7, "recall_at_2": 6 / 7, "map_at_r": 55 / 126}, abs=1e-12
    )


def test_perfect_separation_and_plain_floats():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [5.1, 5.0], [50.0, 50.0]])
    labels = [0, 0, 0, 1, 1, 2]
    results = [precision_at_1(x, labels), recall_at_k(x, labels, 1), map_at_r(x, labels)]
    results += list(retrieval_report(x, labels).values())
    assert results == [1.0] * 7
    assert all(type(value) is float for value in results)


def test_retrieval_report_searches_once(monkeypatch):
    calls = []

    def counting_knn(*args, **kwargs):
        calls.append(kwargs["k"])
        return real_knn(*args, **kwargs)

    real_knn = imgsim.metrics.knn
    monkeypatch.setattr(imgsim.metrics, "knn", counting_knn)
    x = np.arange(10.0)[:, None]
    # Largest class has 4 members, so R_max = 3; max(ks) = 20 is capped at n - 1 = 9.
    retrieval_report(x, [0, 0, 0, 0, 1, 1, 2, 3, 4, 5], ks=(1, 2))
    retrieval_report(x, [0, 0, 0, 0, 1, 1, 2, 3, 4, 5], ks=(1, 20))
    assert calls == [3, 9]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: precision_at_1(x, [0, 1, 2, 3]), "no query left: every label occurs only once"),
        (lambda x: map_at_r(x, [0, 0, 1]), "labels has 3 entries but the inputs have 4 rows"),
        (lambda x: recall_at_k(x, [[0, 0], [1, 1]], 1), r"labels must be a 1-D array, got shape \(2, 2\)"),
        (lambda x: recall_at_k(x, [0, 0, 1, 1], 0), "k must be a positive integer, got 0"),
        (lambda x: recall_at_k(x, [0, 0, 1, 1], 2.0), "k must be a positive integer, got 2.0"),
        (lambda x: retrieval_report(x, [0, 0, 1, 1], ks=()), "ks must contain at least one value"),
        (lambda x: retrieval_report(x, [0, 0, 1, 1], ks=(5, -1)), "every value in ks must be a positive"),
        (lambda x: map_at_r(x[:, 0], [0, 0, 1, 1]), "embeddings must be a 2-D array"),
        (lambda x: map_at_r(np.where(x > 2, np.nan, x), [0, 0, 1, 1]), "embeddings contains non-finite"),
    ],
)
def test_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call(np.arange(8.0).reshape(4, 2))



# --------------------------------------------------------------------------- #
# Pair verification
# --------------------------------------------------------------------------- #


def brute_accuracy(y, s, t):
    return sum((score >= t) == (label == 1) for label, score in zip(y, s)) / len(y)


def brute_rates(y, s, t):
    """(TPR, FPR) of ``score >= t`` by counting."""
    tp = sum(1 for label, score in zip(y, s) if label == 1 and score >= t)
    fp = sum(1 for label, score in zip(y, s) if label == 0 and score >= t)
    return tp / sum(1 for label in y if label == 1), fp / sum(1 for label in y if label == 0)


def brute_auc(y, s):
    """Mann-Whitney: fraction of (positive, negative) pairs ranked right, ties 1/2."""
    positives = [score for label, score in zip(y, s) if label == 1]
    negatives = [score for label, score in zip(y, s) if label == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def brute_tpr_at_fpr(y, s, max_fpr):
    """Every threshold that splits the pairs differently: each distinct score, and inf."""
    return max(tpr for tpr, fpr in (brute_rates(y, s, t) for t in sorted(set(s)) + [np.inf]) if fpr <= max_fpr)


def brute_calibrate(y, s, method, target_fpr):
    """Exhaustive search over -inf, midpoints of consecutive distinct scores, inf (ascending)."""
    distinct = sorted(set(s))
    candidates = [-np.inf] + [(a + b) / 2 for a, b in zip(distinct, distinct[1:])] + [np.inf]
    if method == "accuracy":
        accuracies = [brute_accuracy(y, s, t) for t in candidates]
        return candidates[accuracies.index(max(accuracies))]  # first = smallest among the best
    return next(t for t in candidates if brute_rates(y, s, t)[1] <= target_fpr)


def random_pairs(seed, n, shift, decimals):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [1, 0]  # both classes
    scores = np.round(rng.normal(size=n) + shift * y, decimals)  # rounding makes many ties
    return y, scores


FPRS = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0)


@pytest.mark.parametrize(
    "seed, n, shift, decimals",
    [(0, 10, 0.5, 0), (1, 50, 1.0, 1), (2, 300, 1.5, 1), (3, 200, 0.0, 0), (4, 120, 3.0, 2), (5, 6, 9.0, 0)],
)
def test_verification_matches_brute_force(seed, n, shift, decimals):
    y, s = random_pairs(seed, n, shift, decimals)
    assert len(set(s)) < n  # ties present
    auc = brute_auc(y, s)
    assert roc_auc(y, s) == pytest.approx(auc, abs=1e-12)
    for max_fpr in FPRS:
        assert tpr_at_fpr(y, s, max_fpr) == pytest.approx(brute_tpr_at_fpr(y, s, max_fpr), abs=1e-12)

    every_split = [-np.inf] + sorted(set(s)) + [np.inf]  # one threshold per distinct accept set
    best_accuracy = max(brute_accuracy(y, s, t) for t in every_split)
    t = calibrate_threshold(y, s)
    assert t == pytest.approx(brute_calibrate(y, s, "accuracy", None), rel=1e-12)
    assert accuracy_at_threshold(y, s, t) == pytest.approx(brute_accuracy(y, s, t), abs=1e-12)
    assert brute_accuracy(y, s, t) == best_accuracy
    for target_fpr in FPRS:
        t = calibrate_threshold(y, s, method="fpr", target_fpr=target_fpr)
        assert t == pytest.approx(brute_calibrate(y, s, "fpr", target_fpr), rel=1e-12)
        assert brute_rates(y, s, t)[1] <= target_fpr
        # Lowest: every lower threshold accepts more pairs and exceeds the target.
        assert all(brute_rates(y, s, lower)[1] > target_fpr for lower in every_split if lower < t)

    for t in (-np.inf, np.median(s), s[0], np.inf):
        assert accuracy_at_threshold(y, s, t) == pytest.approx(brute_accuracy(y, s, t), abs=1e-12)
        report = verification_report(y, s, t)
        assert report == pytest.approx(
            {
                "accuracy": brute_accuracy(y, s, t),
                "roc_auc": auc,
                "tpr_at_fpr_1pct": brute_tpr_at_fpr(y, s, 0.01),
                "threshold": t,
                "n_positive": sum(y),
                "n_negative": n - sum(y),
            },
            abs=1e-12,
        )
        assert type(report["n_positive"]) is int and type(report["threshold"]) is float


def test_verification_hand_worked():
    # scores 0.9  0.8  0.8  0.6  0.5  0.3  0.2   (4 positives, 3 negatives)
    # label     1    1    0    1    0    0    1
    # AUC, Mann-Whitney over 4 * 3 = 12 (pos, neg) pairs:
    #   0.9 beats 0.8, 0.5, 0.3 -> 3;  0.8 ties 0.8, beats 0.5, 0.3 -> 2.5;
    #   0.6 beats 0.5, 0.3 -> 2;  0.2 -> 0.   (3 + 2.5 + 2 + 0) / 12 = 0.625
    # score >= t:  t = inf: TPR 0, FPR 0;  0.9: 1/4, 0;  0.8: 2/4, 1/3;  0.6: 3/4, 1/3;
    #              0.5: 3/4, 2/3;  0.3: 3/4, 1;  0.2: 1, 1
    # Accuracy (TP + TN) / 7 of each split: accept none 3/7; >= 0.9 4/7; >= 0.8 4/7;
    #   >= 0.6 5/7 (the only best: midpoint 0.55); >= 0.5 4/7; >= 0.3 3/7; all 4/7.
    y = [1, 1, 0, 1, 0, 0, 1]
    s = [0.9, 0.8, 0.8, 0.6, 0.5, 0.3, 0.2]
    assert roc_auc(y, s) == 0.625
    assert tpr_at_fpr(y, s, max_fpr=0.0) == 0.25
    assert tpr_at_fpr(y, s, max_fpr=0.3) == 0.25
    assert tpr_at_fpr(y, s, max_fpr=1 / 3) == 0.75  # FPR <= max_fpr is inclusive
    assert tpr_at_fpr(y, s, max_fpr=0.6) == 0.75
    assert tpr_at_fpr(y, s, max_fpr=1.0) == 1.0
    assert accuracy_at_threshold(y, s, 0.8) == 4 / 7  # the tied 0.8 pair is accepted with the other
    assert accuracy_at_threshold(y, s, 0.6) == 5 / 7
    assert accuracy_at_threshold(y, s, 0.55) == 5 / 7
    assert accuracy_at_threshold(y, s, -np.inf) == 4 / 7
    assert accuracy_at_threshold(y, s, np.inf) == 3 / 7
    assert calibrate_threshold(y, s) == pytest.approx(0.55, rel=1e-12)
    # FPR 0 first reached by accepting only 0.9 (midpoint with 0.8); FPR 1/3 by accepting >= 0.6.
    assert calibrate_threshold(y, s, method="fpr", target_fpr=0.0) == pytest.approx(0.85, rel=1e-12)
    assert calibrate_threshold(y, s, method="fpr", target_fpr=0.5) == pytest.approx(0.55, rel=1e-12)
    assert calibrate_threshold(y, s, method="fpr", target_fpr=1.0) == -np.inf
    assert verification_report(np.array(y, dtype=bool), s, 0.55) == {
        "accuracy": 5 / 7,
        "roc_auc": 0.625,
        "tpr_at_fpr_1pct": 0.25,
        "threshold": 0.55,
        "n_positive": 4,
        "n_negative": 3,
    }


def test_calibrate_threshold_conventions():
    # Splits of scores 1, 2, 3, 4 (labels 0, 1, 0, 1): accept all 2/4, >= 2 3/4, >= 3 2/4,
    # >= 4 3/4, none 2/4. Two best splits: the smaller threshold (1.5) wins.
    assert calibrate_threshold([0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0]) == 1.5
    # Only positives: accepting everything is perfect; only negatives: rejecting everything.
    assert calibrate_threshold([1, 1, 1], [0.2, 0.1, 0.2]) == -np.inf
    assert calibrate_threshold([0, 0], [0.2, 0.1]) == np.inf
    # Every score tied: the only splits are all or nothing.
    assert calibrate_threshold([1, 1, 0], [0.5, 0.5, 0.5]) == -np.inf
    assert calibrate_threshold([1, 1, 0], [0.5, 0.5, 0.5], method="fpr", target_fpr=0.5) == np.inf
    # Adjacent floats: the midpoint rounds to one of them, and must still separate them.
    low, high = 1.0, np.nextafter(1.0, 2.0)
    t = calibrate_threshold([0, 1], [low, high])
    assert low < t <= high
    assert accuracy_at_threshold([0, 1], [low, high], t) == 1.0
    # Huge scores: no overflow in the midpoint.
    assert calibrate_threshold([0, 1], [-1e308, 1e308]) == 0.0


def test_perfect_and_reversed_scores():
    y, s = [0, 0, 1, 1], [-3.0, -2.0, -1.0, 0.0]  # e.g. negated distances
    assert roc_auc(y, s) == 1.0 and tpr_at_fpr(y, s, 0.0) == 1.0
    assert roc_auc(y, [-v for v in s]) == 0.0 and tpr_at_fpr(y, [-v for v in s], 0.5) == 0.0
    assert calibrate_threshold(y, s) == -1.5 and calibrate_threshold(y, s, method="fpr", target_fpr=0) == -1.5


PAIRS = ([0, 1, 1, 0], [0.1, 0.7, 0.4, 0.2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda y, s: accuracy_at_threshold([0, 1, 2, 1], s, 0), r"y_true must contain only 0 and 1 .*got 2$"),
        (lambda y, s: roc_auc(["a", "b", "a", "b"], s), "y_true must hold 0/1 labels, got dtype <U1"),
        (lambda y, s: roc_auc(y[:3], s), "y_true has 3 entries but scores has 4"),
        (lambda y, s: roc_auc([], []), "y_true is empty"),
        (lambda y, s: roc_auc(y, [s]), r"scores must be a 1-D array, got shape \(1, 4\)"),
        (lambda y, s: roc_auc(y, ["a"] * 4), "scores must hold real numbers"),
        (lambda y, s: tpr_at_fpr(y, [0.1, np.inf, 0.2, 0.3]), r"scores contains non-finite values"),
        (lambda y, s: roc_auc([1, 1, 1, 1], s), "y_true contains only positive pairs; this figure needs both"),
        (lambda y, s: tpr_at_fpr([0, 0, 0, 0], s), "y_true contains only negative pairs"),
        (lambda y, s: verification_report([1, 1, 1, 1], s, 0.5), "y_true contains only positive pairs"),
        (lambda y, s: tpr_at_fpr(y, s, max_fpr=1.5), r"max_fpr must be a real number in \[0, 1\], got 1.5"),
        (lambda y, s: accuracy_at_threshold(y, s, np.nan), r"threshold must be a real number \(not NaN\), got na"),
        (lambda y, s: verification_report(y, s, "0.5"), r"threshold must be a real number \(not NaN\), got '0.5'"),
        (lambda y, s: calibrate_threshold(y, s, method="f1"), "method must be 'accuracy' or 'fpr', got 'f1'"),
        (lambda y, s: calibrate_threshold(y, s, target_fpr=-0.1), r"target_fpr must be a real number in \[0, 1\]"),
        (lambda y, s: calibrate_threshold([1, 1, 1, 1], s, method="fpr"), "method='fpr' needs negative"),
    ],
)
def test_verification_validation(call, message):
    with pytest.raises(ValueError, match=message):
        call(*PAIRS)


# --------------------------------------------------------------------------- #
# Scene clustering
# --------------------------------------------------------------------------- #

# Images in order A, B, A, C, B, A: a tight group A, a tight group B 5 away, C 18-20 away from all.
GROUPS = np.array(
    [
        # A0    B1    A2    C3    B4    A5
        [0.0, 5.0, 0.2, 20.0, 5.0, 0.4],
        [5.0, 0.0, 5.0, 18.0, 0.5, 5.0],
        [0.2, 5.0, 0.0, 20.0, 5.0, 0.3],
        [20.0, 18.0, 20.0, 0.0, 18.0, 20.0],
        [5.0, 0.5, 5.0, 18.0, 0.0, 5.0],
        [0.4, 5.0, 0.3, 20.0, 5.0, 0.0],
    ]
)


def test_agglomerative_hand_worked():
    # Average linkage: A0-A2 (0.2), then {A0, A2}-A5 ((0.4 + 0.3) / 2 = 0.35), B1-B4 (0.5);
    # next would be A-B at average 5.0, then C at (3 * 20 + 2 * 18) / 5 = 19.2 from A+B.
    assert cluster(distances=GROUPS, threshold=1.0).tolist() == [0, 1, 0, -1, 1, 0]  # C alone -> -1
    assert cluster(distances=GROUPS, threshold=1.0, min_cluster_size=1).tolist() == [0, 1, 0, 2, 1, 0]
    assert cluster(distances=GROUPS, threshold=1.0, min_cluster_size=3).tolist() == [0, -1, 0, -1, -1, 0]
    assert cluster(distances=GROUPS, threshold=5.0).tolist() == [0, 1, 0, -1, 1, 0]  # merge needs < 5.0
    assert cluster(distances=GROUPS, threshold=5.01).tolist() == [0, 0, 0, -1, 0, 0]
    assert cluster(distances=GROUPS, threshold=19.3).tolist() == [0] * 6
    assert cluster(distances=GROUPS, threshold=np.inf).tolist() == [0] * 6
    assert cluster(distances=GROUPS, threshold=0.1).tolist() == [-1] * 6
    assert cluster(distances=GROUPS, threshold=0.1, min_cluster_size=1).tolist() == [0, 1, 2, 3, 4, 5]
    assert cluster(distances=GROUPS, threshold=1.0, min_cluster_size=7).tolist() == [-1] * 6
    # Renumbered by first appearance: the same groups in another order.
    perm = [3, 4, 0, 1, 2, 5]  # C B A B A A
    assert cluster(distances=GROUPS[np.ix_(perm, perm)], threshold=1.0).tolist() == [-1, 0, 1, 0, 1, 1]


# The same layout as points: A near the origin, B near (5, 0), C at (40, 40).
POINTS = np.array([[0.0, 0.0], [5.0, 0.0], [0.2, 0.0], [40.0, 40.0], [5.0, 0.5], [0.0, 0.3]])


@pytest.mark.parametrize("method, kwargs", [("agglomerative", {"threshold": 1.0}), ("hdbscan", {})])
def test_cluster_embeddings_and_distances(method, kwargs):
    distances = np.sqrt(((POINTS[:, None, :] - POINTS[None, :, :]) ** 2).sum(axis=-1))
    expected = [0, 1, 0, -1, 1, 0]
    assert cluster(POINTS, method=method, **kwargs).tolist() == expected
    assert cluster(distances=distances, method=method, **kwargs).tolist() == expected
    labels = cluster(embeddings=POINTS, method=method, **kwargs)
    assert labels.dtype == np.int64 and labels.shape == (6,)


def test_hdbscan_too_few_images():
    assert cluster(POINTS[:2], method="hdbscan", min_cluster_size=3).tolist() == [-1, -1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of embeddings and distances"),
        ({"embeddings": POINTS, "distances": GROUPS}, "give exactly one of embeddings and distances"),
        ({"distances": GROUPS[:, :5]}, r"distances must be a square matrix .* got shape \(6, 5\)"),
        ({"distances": GROUPS - 1}, "distances must be non-negative, got minimum -1"),
        ({"distances": GROUPS + np.eye(6)}, "distances must have a zero diagonal"),
        ({"distances": np.triu(GROUPS)}, r"distances must be exactly symmetric .* = 20"),
        ({"distances": np.where(GROUPS == 20, np.inf, GROUPS)}, "distances contains non-finite"),
        ({"distances": GROUPS.astype(str)}, "distances must hold real numbers"),
        ({"embeddings": POINTS[:, 0]}, "embeddings must be a 2-D array"),
        ({"embeddings": POINTS[:1]}, "cluster needs at least 2 images, got 1"),
        ({"embeddings": POINTS, "threshold": None}, "method='agglomerative' needs a distance threshold"),
        ({"embeddings": POINTS, "threshold": -1.0}, r"threshold must be a real number in \[0, inf\], got -1.0"),
        ({"embeddings": POINTS, "min_cluster_size": 0}, "min_cluster_size must be a positive integer, got 0"),
        ({"embeddings": POINTS, "method": "kmeans"}, "method must be 'agglomerative' or 'hdbscan', got 'kmeans'"),
        ({"embeddings": POINTS, "method": "hdbscan", "threshold": 1.0}, "method='hdbscan' takes no threshold"),
        ({"embeddings": POINTS, "method": "hdbscan", "threshold": None, "min_cluster_size": 1}, ">= 2, got 1"),
    ],
)
def test_cluster_validation(kwargs, message):
    kwargs = {"threshold": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        cluster(**kwargs)


def test_clustering_report_hand_worked():
    #  image  0 1 2 3 4   5 6 7 8 9   10 11 12 13
    #  scene  a a a a out b b b b out c  c  d  d
    #  pred   0 0 0 1 0   1 1 2 2 -1  -1 -1 5  4
    # Cluster sizes (true outliers included): 0: {0,1,2,4} = 4, 1: {3,5,6} = 3, 2: {7,8} = 2, 4: 1, 5: 1.
    # a: shares 3 with cluster 0, 1 with cluster 1 -> cluster 0: precision 3/4 (outlier 4 inside), recall 3/4.
    # b: split, shares 2 with cluster 1 (size 3) and 2 with cluster 2 (size 2) -> smaller cluster 2:
    #    precision 2/2, recall 2/4.
    # c: both images unclustered -> no cluster: precision 0, recall 0.
    # d: shares 1 with clusters 4 and 5, both of size 1 -> lower label 4: precision 1, recall 1/2.
    # Means: precision (3/4 + 1 + 0 + 1) / 4 = 11/16, recall (3/4 + 1/2 + 0 + 1/2) / 4 = 7/16,
    # F1 = 2 (11/16)(7/16) / (18/16) = 77/144.
    true = ["a", "a", "a", "a", "outliers", "b", "b", "b", "b", "outliers", "c", "c", "d", "d"]
    pred = [0, 0, 0, 1, 0, 1, 1, 2, 2, -1, -1, -1, 5, 4]
    report = clustering_report(true, pred)
    assert report["per_scene"] == {
        "a": {"cluster": 0, "n_images": 4, "precision": 0.75, "recall": 0.75},
        "b": {"cluster": 2, "n_images": 4, "precision": 1.0, "recall": 0.5},
        "c": {"cluster": None, "n_images": 2, "precision": 0.0, "recall": 0.0},
        "d": {"cluster": 4, "n_images": 2, "precision": 1.0, "recall": 0.5},
    }
    assert list(report["per_scene"]) == ["a", "b", "c", "d"]
    assert report["imc_precision"] == 11 / 16
    assert report["imc_recall"] == 7 / 16
    assert report["imc_f1"] == pytest.approx(77 / 144, abs=1e-12)
    # ARI / NMI over the partitions with every true outlier and every -1 as a singleton
    # (outliers at 4 and 9 -> "o4", "o9"; -1 at 9, 10, 11 -> 109, 110, 111).
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    true_flat = ["a", "a", "a", "a", "o4", "b", "b", "b", "b", "o9", "c", "c", "d", "d"]
    pred_flat = [0, 0, 0, 1, 0, 1, 1, 2, 2, 109, 110, 111, 5, 4]
    assert report["ari"] == pytest.approx(adjusted_rand_score(true_flat, pred_flat), abs=1e-12)
    assert report["nmi"] == pytest.approx(normalized_mutual_info_score(true_flat, pred_flat), abs=1e-12)


def test_clustering_report_ari_hand_worked():
    # true  x x x y y out out      pred  0 0 1 1 1 -1 -1
    # Outliers and -1 are singletons, so the contingency table (rows x, y, out1, out2;
    # columns 0, 1, -1a, -1b) is  x: 2 1 0 0 / y: 0 2 0 0 / out1: 0 0 1 0 / out2: 0 0 0 1.
    # Pair counting, n = 7, C(7, 2) = 21:
    #   index    = sum C(n_ij, 2) = C(2,2) + C(2,2) = 2
    #   rows     = C(3,2) + C(2,2) + 0 + 0 = 4;   columns = C(2,2) + C(3,2) + 0 + 0 = 4
    #   expected = 4 * 4 / 21 = 16/21;  max = (4 + 4) / 2 = 4
    #   ARI = (2 - 16/21) / (4 - 16/21) = (26/21) / (68/21) = 13/34
    # (Lumping the outliers and the -1s into one cluster each would give 19/40 instead.)
    true = ["x", "x", "x", "y", "y", "out", "out"]
    report = clustering_report(true, [0, 0, 1, 1, 1, -1, -1], outlier_label="out")
    assert report["ari"] == pytest.approx(13 / 34, abs=1e-12)
    # x -> cluster 0 (2 shared of size 2): P 1, R 2/3;  y -> cluster 1 (2 of size 3): P 2/3, R 1.
    assert report["imc_precision"] == pytest.approx(5 / 6, abs=1e-12)
    assert report["imc_recall"] == pytest.approx(5 / 6, abs=1e-12)
    assert report["imc_f1"] == pytest.approx(5 / 6, abs=1e-12)


def test_clustering_report_perfect_and_empty():
    true = np.array([7, 7, 3, -1, 3, 9, 9, -1])  # int scenes, -1 = outlier
    perfect = clustering_report(true, [4, 4, 0, -1, 0, 1, 1, -1], outlier_label=-1)
    assert {k: v for k, v in perfect.items() if k != "per_scene"} == {
        "ari": 1.0,
        "nmi": 1.0,
        "imc_precision": 1.0,
        "imc_recall": 1.0,
        "imc_f1": 1.0,
    }
    assert list(perfect["per_scene"]) == [7, 3, 9]
    nothing = clustering_report(true, [-1] * 8, outlier_label=-1)
    assert (nothing["imc_precision"], nothing["imc_recall"], nothing["imc_f1"]) == (0.0, 0.0, 0.0)
    assert all(scene["cluster"] is None for scene in nothing["per_scene"].values())


@pytest.mark.parametrize(
    "true, pred, message",
    [
        (["a", "a", "b"], [0, 0], "pred_labels has 2 entries but true_scenes has 3"),
        ([], [], "true_scenes is empty"),
        ([["a", "b"]], [0], r"true_scenes must be a 1-D array, got shape \(1, 2\)"),
        (["a", "a", "b"], [0.0, 0.0, 1.0], "pred_labels must hold integers, got dtype float64"),
        (["a", "a", "b"], [0, -2, 1], r"pred_labels must be >= 0, or -1 for unclustered images, got -2"),
        (["outliers", "outliers"], [0, 0], "true_scenes holds no scene: every image is labelled outlier_label"),
    ],
)
def test_clustering_report_validation(true, pred, message):
    with pytest.raises(ValueError, match=message):
        clustering_report(true, pred)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_from_a_score_matrix_matches_brute_force(seed):
    """Ranking by similarity -d² must give the brute-force figures of the embeddings."""
    x, labels = random_set(seed, 30, 5, 4, 3, string_labels=bool(seed % 2))
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    p1, recalls, mapr = brute_force_metrics(x, labels, (1, 5))
    got = retrieval_report(None, labels, ks=(1, 5), scores=-d2)
    assert got["precision_at_1"] == pytest.approx(p1)
    assert got["recall_at_5"] == pytest.approx(recalls[5])
    assert got["map_at_r"] == pytest.approx(mapr)


def test_retrieval_from_scores_hand_worked_with_ties():
    """Inlier counts as scores; labels a a b b. Query 0: others scored [_, 5, 5, 0] → tie
    between 1 (same) and 2 (different) kept in index order → hit first, P@1 hit, AP@R (R=1) 1.
    Query 1: [5, _, 9, 1] → 2 (miss) first → AP 0. Query 2: [5, 9, _, 2] → 1 (miss) → AP 0.
    Query 3: [0, 1, 2, _] → 2 (hit) → AP 1. P@1 = mAP@R = 2/4."""
    scores = np.array([[0, 5, 5, 0], [5, 0, 9, 1], [5, 9, 0, 2], [0, 1, 2, 0]], float)
    got = retrieval_report(None, ["a", "a", "b", "b"], ks=(1,), scores=scores)
    assert got["precision_at_1"] == 0.5 and got["map_at_r"] == 0.5
    with pytest.raises(ValueError, match="scores must be a square"):
        retrieval_report(None, ["a", "a"], scores=np.zeros((2, 3)))


def test_weighted_roc_figures_equal_the_unweighted_ones_on_repeated_pairs():
    """Each row = roc_auc / tpr_at_fpr of the pairs repeated by its weights (ties included)."""
    from imgsim.metrics import roc_auc, tpr_at_fpr, weighted_roc_figures

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(size=60) + y, 1)  # many ties
    weights = rng.integers(0, 3, size=(25, 60))
    weights[0] = 1
    weights[1] = y  # positives only: undefined
    auc, tpr = weighted_roc_figures(y, scores, weights, max_fpr=0.05)
    assert np.isnan(auc[1]) and np.isnan(tpr[1])
    for r in [0] + list(range(2, 25)):
        idx = np.repeat(np.arange(60), weights[r])
        assert auc[r] == pytest.approx(roc_auc(y[idx], scores[idx]), abs=1e-12)
        assert tpr[r] == pytest.approx(tpr_at_fpr(y[idx], scores[idx], 0.05), abs=1e-12)
