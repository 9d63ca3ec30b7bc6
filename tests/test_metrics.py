import numpy as np
import pytest

import imgsim.metrics
from imgsim.metrics import map_at_r, precision_at_1, recall_at_k, retrieval_report


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
        (lambda x: map_at_r(x, [0, 0, 1]), "labels has 3 entries but embeddings has 4 rows"),
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
