"""Evaluation metrics: leave-one-out retrieval, pair verification, scene clustering.

Retrieval. Every embedding is used in turn as a query against all the *other*
embeddings, ranked by Euclidean distance (see :func:`imgsim.index.knn`); a
retrieved embedding is relevant when it has the query's label. Definitions
follow deep metric learning practice (Oh Song et al. 2016 for Recall@K,
Musgrave et al. 2020 for mAP@R, as in pytorch-metric-learning's
``AccuracyCalculator``).

Lone queries: an embedding whose label occurs only once has no relevant item
to find, so it is not used as a query. It stays in the gallery, where it can
be retrieved by (and count as a miss for) other queries, e.g. outlier images
each given a unique label. Ties in distance are broken in no guaranteed order.

Verification. Each image pair has a 0/1 label (1: same scene) and a score
where *higher means more likely the same scene* (negate distances first). A
pair is predicted positive iff ``score >= threshold``; pairs with tied scores
are therefore always accepted or rejected together. Thresholds are chosen on
validation pairs (:func:`calibrate_threshold`) and applied unchanged to test
pairs (:func:`accuracy_at_threshold`, :func:`verification_report`).

Clustering. :func:`cluster` groups images into scenes, labelling images left
unclustered -1; :func:`clustering_report` scores such labels against the true
scenes.
"""

import numbers

import numpy as np
from sklearn.cluster import HDBSCAN, AgglomerativeClustering
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    normalized_mutual_info_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.metrics.cluster import contingency_matrix

from imgsim.index import _check_matrix, knn

__all__ = [
    "accuracy_at_threshold",
    "calibrate_threshold",
    "cluster",
    "clustering_report",
    "map_at_r",
    "precision_at_1",
    "recall_at_k",
    "retrieval_per_query",
    "retrieval_report",
    "roc_auc",
    "tpr_at_fpr",
    "verification_report",
    "weighted_roc_figures",
]


def _check_positive_int(k, name):
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


def _check_labels(labels, name, n_expected=None, expected_from=None):
    """Validate a non-empty 1-D label array, optionally of a given length."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {labels.shape}")
    if n_expected is not None and len(labels) != n_expected:
        raise ValueError(f"{name} has {len(labels)} entries but {expected_from}")
    if len(labels) == 0:
        raise ValueError(f"{name} is empty")
    return labels


def _codes(labels):
    """Integer codes 0, 1, ... of hashable labels, in order of first appearance."""
    codes_of = {}
    return np.array([codes_of.setdefault(label, len(codes_of)) for label in labels.tolist()], dtype=np.int64)


def _relevance(embeddings, labels, k, *, up_to_r=False, scores=None):
    """Rank the other embeddings for each non-lone query and mark same-label hits.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features) or None
    labels : array-like of shape (n_samples,)
        Hashable class labels.
    k : int
        Number of neighbours to rank per query.
    up_to_r : bool, default=False
        Also rank at least ``R_max`` neighbours, the largest number of
        same-label other embeddings of any query (largest class size - 1).
    scores : array-like of shape (n_samples, n_samples), optional
        Instead of embeddings: pairwise similarities, higher = more similar
        (the diagonal is ignored; ties keep index order).

    Returns
    -------
    relevant : ndarray of shape (n_queries, depth), dtype bool
        ``relevant[q, i]`` is True when the (i+1)-th nearest other embedding
        of query ``q`` has the query's label. ``depth`` is ``k`` (or
        ``max(k, R_max)`` if ``up_to_r``), capped at ``n_samples - 1``.
        Only non-lone queries are included, in their original order.
    n_positives : ndarray of shape (n_queries,), dtype int
        Number R of other embeddings sharing each query's label (R >= 1).
    """
    if scores is None:
        embeddings = _check_matrix(embeddings, "embeddings")
        n = len(embeddings)
    else:
        scores = np.array(scores, dtype=np.float64)
        n = len(scores)
        if scores.ndim != 2 or scores.shape != (n, n) or n < 2:
            raise ValueError(f"scores must be a square (n, n) matrix with n >= 2, got {scores.shape}")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
    labels = _check_labels(labels, "labels", n, f"the inputs have {n} rows")
    codes = _codes(labels)
    n_positives = np.bincount(codes)[codes] - 1
    is_query = n_positives > 0
    if not is_query.any():
        raise ValueError(
            "no query left: every label occurs only once, so no embedding has a same-label neighbour"
        )

    depth = int(min(max(k, n_positives.max()) if up_to_r else k, n - 1))
    if scores is None:
        _, indices = knn(embeddings, k=depth)
    else:
        np.fill_diagonal(scores, -np.inf)
        indices = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    relevant = codes[indices[is_query]] == codes[is_query, None]
    return relevant, n_positives[is_query]


def _precision_at_1(relevant):
    return float(relevant[:, 0].mean())


def _recall_at_k(relevant, k):
    return float(relevant[:, :k].any(axis=1).mean())


def _ap_at_r(relevant, n_positives):
    """AP@R of every query (see :func:`map_at_r`)."""
    rank = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / rank
    counted = relevant & (rank <= n_positives[:, None])
    return (precision * counted).sum(axis=1) / n_positives


def _map_at_r(relevant, n_positives):
    return float(_ap_at_r(relevant, n_positives).mean())


def precision_at_1(embeddings, labels):
    """Leave-one-out precision at 1.

    Fraction of queries whose nearest other embedding (Euclidean distance)
    has the query's label. Embeddings whose label occurs only once are not
    used as queries but remain in the gallery as distractors.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features)
        Embedding vectors, finite real values.
    labels : array-like of shape (n_samples,)
        Class label of each embedding; any hashable values (ints, strings).

    Returns
    -------
    float
        Precision@1 in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are malformed, or every label occurs only once
        (no query left).
    """
    return _precision_at_1(_relevance(embeddings, labels, 1)[0])


def recall_at_k(embeddings, labels, k):
    """Leave-one-out Recall@K as used in deep metric learning.

    Fraction of queries with at least one same-label embedding among their
    ``k`` nearest other embeddings (Euclidean distance); Oh Song et al.
    (2016), and pytorch-metric-learning's usage. This is a hit rate, not the
    information-retrieval recall. Embeddings whose label occurs only once are
    not used as queries but remain in the gallery as distractors.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features)
        Embedding vectors, finite real values.
    labels : array-like of shape (n_samples,)
        Class label of each embedding; any hashable values (ints, strings).
    k : int
        Number of neighbours, ``k >= 1``. Values above ``n_samples - 1``
        retrieve every other embedding and so give 1.0.

    Returns
    -------
    float
        Recall@K in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are malformed, ``k`` is not a positive integer, or
        every label occurs only once (no query left).
    """
    _check_positive_int(k, "k")
    return _recall_at_k(_relevance(embeddings, labels, k)[0], k)


def map_at_r(embeddings, labels):
    """Leave-one-out mean average precision at R (mAP@R).

    As defined by Musgrave et al. (2020), "A Metric Learning Reality Check",
    and pytorch-metric-learning's ``AccuracyCalculator``. For a query with R
    other embeddings of its label, rank its R nearest other embeddings
    (Euclidean distance) and compute

        AP@R = (1/R) * sum_{i=1..R} P(i) * rel(i)

    where rel(i) is 1 if the i-th result has the query's label (else 0) and
    P(i) is the precision among the first i results. mAP@R is the mean of
    AP@R over queries. Embeddings whose label occurs only once (R = 0) are not
    used as queries but remain in the gallery as distractors.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features)
        Embedding vectors, finite real values.
    labels : array-like of shape (n_samples,)
        Class label of each embedding; any hashable values (ints, strings).

    Returns
    -------
    float
        mAP@R in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are malformed, or every label occurs only once
        (no query left).
    """
    return _map_at_r(*_relevance(embeddings, labels, 1, up_to_r=True))


def retrieval_report(embeddings, labels, ks=(1, 5), *, scores=None):
    """Precision@1, Recall@K for each K, and mAP@R from a single search.

    Same definitions, lone-query rule and errors as :func:`precision_at_1`,
    :func:`recall_at_k` and :func:`map_at_r`; one nearest-neighbour search of
    depth ``max(max(ks), R_max)`` capped at ``n_samples - 1`` serves all of
    them, where ``R_max`` is the largest class size minus one.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features) or None
        Embedding vectors, finite real values. None when ``scores`` is given.
    labels : array-like of shape (n_samples,)
        Class label of each embedding; any hashable values (ints, strings).
    ks : sequence of int, default=(1, 5)
        Values of K for Recall@K, each ``>= 1``.
    scores : array-like of shape (n_samples, n_samples), optional
        Rank by these pairwise similarities instead (higher = more similar,
        e.g. SIFT inliers or a fused probability); the diagonal is ignored and
        ties keep index order.

    Returns
    -------
    dict of str to float
        ``{"precision_at_1": ..., "recall_at_<k>": ... for k in ks,
        "map_at_r": ...}``.
    """
    per_query = retrieval_per_query(embeddings, labels, ks, scores=scores)
    return {name: float(values.mean()) for name, values in per_query.items() if name != "query"}


def retrieval_per_query(embeddings, labels, ks=(1, 5), *, scores=None):
    """The per-query values that :func:`retrieval_report` averages.

    Same definitions, lone-query rule and errors as :func:`retrieval_report`;
    for resampling queries (e.g. a bootstrap over scenes).

    Returns
    -------
    dict of str to ndarray of shape (n_queries,)
        ``"query"``: the row index of each query (non-lone rows, in order);
        ``"precision_at_1"``, ``"recall_at_<k>"`` (0/1 floats) and
        ``"map_at_r"`` (AP@R) of each query. Their means are
        :func:`retrieval_report`'s figures.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks must contain at least one value")
    for k in ks:
        _check_positive_int(k, "every value in ks")
    relevant, n_positives = _relevance(embeddings, labels, max(ks), up_to_r=True, scores=scores)
    codes = _codes(np.asarray(labels))
    out = {"query": np.flatnonzero(np.bincount(codes)[codes] > 1),
           "precision_at_1": relevant[:, 0].astype(np.float64)}
    out.update({f"recall_at_{k}": relevant[:, :k].any(axis=1).astype(np.float64) for k in ks})
    out["map_at_r"] = _ap_at_r(relevant, n_positives)
    return out


# --------------------------------------------------------------------------- #
# Pair verification
# --------------------------------------------------------------------------- #


def _check_pairs(y_true, scores, *, both_classes=False):
    """Validate pair labels and scores; return them as int64 and float64 arrays."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array, got shape {scores.shape}")
    if scores.dtype.kind not in "biuf":
        raise ValueError(f"scores must hold real numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores contains non-finite values (NaN or inf)")
    y_true = _check_labels(y_true, "y_true", len(scores), f"scores has {len(scores)}")
    if y_true.dtype.kind not in "biuf":
        raise ValueError(f"y_true must hold 0/1 labels, got dtype {y_true.dtype}")
    bad = ~np.isin(y_true, (0, 1))
    if bad.any():
        raise ValueError(f"y_true must contain only 0 and 1 (or False and True), got {y_true[bad][0].item()!r}")
    y_true = y_true.astype(np.int64)
    if both_classes and np.ptp(y_true) == 0:
        raise ValueError(
            f"y_true contains only {'positive' if y_true[0] else 'negative'} pairs; "
            "this figure needs both positive (1) and negative (0) pairs"
        )
    return y_true, scores


def _check_real(value, name, low=-np.inf, high=np.inf):
    """Check that ``value`` is a real number (not NaN, not bool) in [low, high]; return it as float."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not low <= value <= high:
        allowed = "(not NaN)" if (low, high) == (-np.inf, np.inf) else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name} must be a real number {allowed}, got {value!r}")
    return float(value)


def _accuracy(y_true, scores, threshold):
    return float(accuracy_score(y_true, scores >= threshold))


def _tpr_at_fpr(y_true, scores, max_fpr):
    fpr, tpr, _ = roc_curve(y_true, scores, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr].max())


def accuracy_at_threshold(y_true, scores, threshold):
    """Fraction of pairs classified correctly by ``score >= threshold``.

    Parameters
    ----------
    y_true : array-like of shape (n_pairs,)
        1 if the two images of a pair show the same scene, else 0 (bools
        accepted).
    scores : array-like of shape (n_pairs,)
        Finite similarity scores, higher meaning more likely the same scene.
    threshold : float
        A pair is predicted positive iff its score is ``>= threshold``;
        ``-inf`` accepts and ``inf`` rejects every pair.

    Returns
    -------
    float
        Accuracy in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are malformed or ``threshold`` is NaN or not a number.
    """
    y_true, scores = _check_pairs(y_true, scores)
    return _accuracy(y_true, scores, _check_real(threshold, "threshold"))


def roc_auc(y_true, scores):
    """Area under the ROC curve of the pair scores.

    Equals the Mann-Whitney probability that a random positive pair scores
    higher than a random negative pair, a tie counting 1/2
    (:func:`sklearn.metrics.roc_auc_score`).

    Parameters
    ----------
    y_true : array-like of shape (n_pairs,)
        1 if the two images of a pair show the same scene, else 0.
    scores : array-like of shape (n_pairs,)
        Finite similarity scores, higher meaning more likely the same scene.

    Returns
    -------
    float
        ROC AUC in [0, 1]; 0.5 for uninformative scores.

    Raises
    ------
    ValueError
        If the inputs are malformed or ``y_true`` holds only one class.
    """
    y_true, scores = _check_pairs(y_true, scores, both_classes=True)
    return float(roc_auc_score(y_true, scores))


def tpr_at_fpr(y_true, scores, max_fpr=0.01):
    """Largest true positive rate reachable with a false positive rate <= ``max_fpr``.

    The operating points are those of :func:`sklearn.metrics.roc_curve`
    (with ``drop_intermediate=False``): the thresholds ``score >= t`` for
    ``t`` = every distinct score, plus ``t = inf`` (accept nothing, TPR = FPR
    = 0). Pairs with tied scores are accepted or rejected together, and no
    interpolation between operating points is done, so the result is the TPR
    of an actual threshold. ``max_fpr`` is compared to FPR = FP / n_negative
    inclusively.

    Parameters
    ----------
    y_true : array-like of shape (n_pairs,)
        1 if the two images of a pair show the same scene, else 0.
    scores : array-like of shape (n_pairs,)
        Finite similarity scores, higher meaning more likely the same scene.
    max_fpr : float, default=0.01
        Largest allowed false positive rate, in [0, 1].

    Returns
    -------
    float
        TPR in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are malformed, ``max_fpr`` is outside [0, 1], or
        ``y_true`` holds only one class.
    """
    max_fpr = _check_real(max_fpr, "max_fpr", 0, 1)
    return _tpr_at_fpr(*_check_pairs(y_true, scores, both_classes=True), max_fpr)


def weighted_roc_figures(y_true, scores, weights, max_fpr=0.01):
    """ROC AUC and TPR at ``max_fpr`` of the same pairs under many weightings at once.

    Row ``r`` gives what :func:`roc_auc` and :func:`tpr_at_fpr` give for the
    pairs repeated ``weights[r]`` times (equivalently, sklearn's
    ``sample_weight``): for a bootstrap, thousands of resamples in one pass.

    Parameters
    ----------
    y_true, scores, max_fpr
        As in :func:`tpr_at_fpr`.
    weights : array-like of shape (n_sets, n_pairs)
        Non-negative weights (counts) of every pair in every set.

    Returns
    -------
    auc, tpr : ndarray of shape (n_sets,)
        NaN for a set whose weights leave only one class.
    """
    y_true, scores = _check_pairs(y_true, scores)
    max_fpr = _check_real(max_fpr, "max_fpr", 0, 1)
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(scores) or (weights < 0).any():
        raise ValueError(f"weights must be a non-negative (n_sets, {len(scores)}) array, "
                         f"got shape {weights.shape}")
    order = np.argsort(-scores, kind="stable")
    ranked, y, w = scores[order], y_true[order], weights[:, order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # end of each block of ties
    tp = np.cumsum(w * y, axis=1)[:, last]
    fp = np.cumsum(w * (1 - y), axis=1)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.c_[np.zeros(len(w)), tp / tp[:, -1:]]
        fpr = np.c_[np.zeros(len(w)), fp / fp[:, -1:]]
        auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
        at = np.where(fpr <= max_fpr, tpr, -np.inf).max(axis=1)
    invalid = (tp[:, -1] == 0) | (fp[:, -1] == 0)
    auc[invalid], at[invalid] = np.nan, np.nan
    return auc, at


def calibrate_threshold(y_true, scores, method="accuracy", target_fpr=0.01):
    """Choose a decision threshold on validation pairs.

    Candidate thresholds are ``-inf`` (accept every pair), the midpoints
    between consecutive distinct scores, and ``inf`` (reject every pair).
    Each candidate stands for one way of splitting these pairs, and a
    midpoint leaves the widest margin on both sides for unseen pairs (for two
    adjacent floats, whose midpoint rounds to the lower, the higher is used).

    Parameters
    ----------
    y_true : array-like of shape (n_pairs,)
        1 if the two images of a pair show the same scene, else 0.
    scores : array-like of shape (n_pairs,)
        Finite similarity scores, higher meaning more likely the same scene.
    method : {"accuracy", "fpr"}, default="accuracy"
        ``"accuracy"``: the candidate with the highest accuracy on these
        pairs; among equally accurate candidates, the smallest.
        ``"fpr"``: the smallest candidate whose false positive rate on these
        pairs is ``<= target_fpr`` (so the one accepting the most pairs).
    target_fpr : float, default=0.01
        Largest allowed false positive rate, in [0, 1]; only used by
        ``method="fpr"``.

    Returns
    -------
    float
        The threshold, to be used as ``score >= threshold``; possibly
        ``-inf`` or ``inf``.

    Raises
    ------
    ValueError
        If the inputs are malformed, ``method`` is unknown, ``target_fpr``
        is outside [0, 1], or ``method="fpr"`` and there is no negative pair.
    """
    if method not in ("accuracy", "fpr"):
        raise ValueError(f"method must be 'accuracy' or 'fpr', got {method!r}")
    target_fpr = _check_real(target_fpr, "target_fpr", 0, 1)
    y_true, scores = _check_pairs(y_true, scores)
    n_negative = len(y_true) - y_true.sum()
    if method == "fpr" and n_negative == 0:
        raise ValueError("method='fpr' needs negative (0) pairs, but y_true has none")

    values, inverse = np.unique(scores, return_inverse=True)
    # Candidate i accepts the pairs scoring values[i:] (i = 0..m; m accepts none).
    accepted_pos = np.r_[np.cumsum(np.bincount(inverse, weights=y_true)[::-1])[::-1], 0]
    accepted_neg = np.r_[np.cumsum(np.bincount(inverse, weights=1 - y_true)[::-1])[::-1], 0]
    low, high = values[:-1], values[1:]
    middle = low / 2 + high / 2  # no overflow; lies in (low, high] after the guard
    thresholds = np.r_[-np.inf, np.where(middle > low, middle, high), np.inf]
    if method == "accuracy":
        best = np.argmax(accepted_pos - accepted_neg)  # = n_negative + TP - FP, up to a constant
    else:
        best = np.argmax(accepted_neg / n_negative <= target_fpr)  # FPR falls with i; 0 at i = m
    return float(thresholds[best])


def verification_report(y_true, scores, threshold):
    """Accuracy at a fixed threshold, ROC AUC and TPR at 1% FPR of pair scores.

    Same definitions and errors as :func:`accuracy_at_threshold`,
    :func:`roc_auc` and :func:`tpr_at_fpr`.

    Parameters
    ----------
    y_true : array-like of shape (n_pairs,)
        1 if the two images of a pair show the same scene, else 0.
    scores : array-like of shape (n_pairs,)
        Finite similarity scores, higher meaning more likely the same scene.
    threshold : float
        Decision threshold (``score >= threshold``), typically from
        :func:`calibrate_threshold` on validation pairs.

    Returns
    -------
    dict
        ``{"accuracy": float, "roc_auc": float, "tpr_at_fpr_1pct": float,
        "threshold": float, "n_positive": int, "n_negative": int}``.
    """
    y_true, scores = _check_pairs(y_true, scores, both_classes=True)
    threshold = _check_real(threshold, "threshold")
    n_positive = int(y_true.sum())
    return {
        "accuracy": _accuracy(y_true, scores, threshold),
        "roc_auc": float(roc_auc_score(y_true, scores)),
        "tpr_at_fpr_1pct": _tpr_at_fpr(y_true, scores, 0.01),
        "threshold": threshold,
        "n_positive": n_positive,
        "n_negative": len(y_true) - n_positive,
    }


# --------------------------------------------------------------------------- #
# Scene clustering
# --------------------------------------------------------------------------- #


def _check_distances(distances):
    """Validate a square, symmetric, non-negative, zero-diagonal distance matrix; return it as float64."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(
            f"distances must be a square matrix of shape (n_images, n_images), got shape {distances.shape}"
        )
    if distances.dtype.kind not in "biuf":
        raise ValueError(f"distances must hold real numbers, got dtype {distances.dtype}")
    distances = distances.astype(np.float64)
    if not np.isfinite(distances).all():
        raise ValueError("distances contains non-finite values (NaN or inf)")
    if (distances < 0).any():
        raise ValueError(f"distances must be non-negative, got minimum {distances.min():g}")
    if (np.diagonal(distances) != 0).any():
        raise ValueError("distances must have a zero diagonal (each image is at distance 0 from itself)")
    if not np.array_equal(distances, distances.T):
        raise ValueError(
            "distances must be exactly symmetric (distances[i, j] == distances[j, i]), got largest "
            f"|distances - distances.T| = {np.abs(distances - distances.T).max():g}; average it with its transpose"
        )
    return distances


def cluster(embeddings=None, distances=None, method="agglomerative", threshold=None, min_cluster_size=2):
    """Group images into scenes; images left unclustered are labelled -1.

    ``"agglomerative"``: average-linkage agglomerative clustering
    (:class:`sklearn.cluster.AgglomerativeClustering`) that merges two
    clusters while their average pairwise distance is strictly below
    ``threshold``; afterwards every cluster with fewer than
    ``min_cluster_size`` images is dissolved into -1.

    ``"hdbscan"``: :class:`sklearn.cluster.HDBSCAN` with this
    ``min_cluster_size`` (and its default ``min_samples``, equal to it); its
    noise points are the -1 images. With fewer images than
    ``min_cluster_size``, every image is -1.

    Distances are Euclidean between ``embeddings``, or read from
    ``distances``. Clusters are numbered 0, 1, ... in order of first
    appearance, so labels do not depend on the algorithm's internal numbering.

    Parameters
    ----------
    embeddings : array-like of shape (n_images, n_features), optional
        Finite embedding vectors. Give exactly one of ``embeddings`` and
        ``distances``.
    distances : array-like of shape (n_images, n_images), optional
        Pairwise distances: finite, non-negative, exactly symmetric, with a
        zero diagonal.
    method : {"agglomerative", "hdbscan"}, default="agglomerative"
    threshold : float, optional
        Required for ``"agglomerative"`` (distance units, ``>= 0``; ``inf``
        merges everything), must be None for ``"hdbscan"``.
    min_cluster_size : int, default=2
        Smallest cluster kept; ``>= 1`` for ``"agglomerative"`` (1 keeps
        every cluster) and ``>= 2`` for ``"hdbscan"``.

    Returns
    -------
    labels : ndarray of shape (n_images,), dtype int64
        Cluster of each image, or -1 for an unclustered image.

    Raises
    ------
    ValueError
        If not exactly one of ``embeddings`` and ``distances`` is given,
        either is malformed, there are fewer than 2 images, or ``method``,
        ``threshold`` or ``min_cluster_size`` is invalid.
    """
    if (embeddings is None) == (distances is None):
        raise ValueError("give exactly one of embeddings and distances")
    if method not in ("agglomerative", "hdbscan"):
        raise ValueError(f"method must be 'agglomerative' or 'hdbscan', got {method!r}")
    _check_positive_int(min_cluster_size, "min_cluster_size")
    if method == "agglomerative":
        if threshold is None:
            raise ValueError("method='agglomerative' needs a distance threshold")
        threshold = _check_real(threshold, "threshold", 0, np.inf)
    elif threshold is not None:
        raise ValueError(f"method='hdbscan' takes no threshold, got {threshold!r}")
    elif min_cluster_size < 2:
        raise ValueError(f"method='hdbscan' needs min_cluster_size >= 2, got {min_cluster_size}")
    if distances is not None:
        x, metric = _check_distances(distances), "precomputed"
    else:
        x, metric = _check_matrix(embeddings, "embeddings"), "euclidean"
    if len(x) < 2:
        raise ValueError(f"cluster needs at least 2 images, got {len(x)}")

    if len(x) < min_cluster_size:
        labels = np.full(len(x), -1)
    elif method == "agglomerative":
        labels = AgglomerativeClustering(
            n_clusters=None,
            distance_threshold=min(threshold, np.finfo(np.float64).max),  # sklearn refuses inf
            linkage="average",
            metric=metric,
        ).fit_predict(x)
        labels[np.bincount(labels)[labels] < min_cluster_size] = -1
    else:
        labels = HDBSCAN(min_cluster_size=min_cluster_size, metric=metric, copy=True).fit_predict(x)
    clustered = labels >= 0
    renumbered = np.full(len(labels), -1, dtype=np.int64)
    renumbered[clustered] = _codes(labels[clustered])
    return renumbered


def clustering_report(true_scenes, pred_labels, outlier_label="outliers"):
    """Score predicted clusters against the true scenes.

    ``ari`` (:func:`sklearn.metrics.adjusted_rand_score`) and ``nmi``
    (:func:`sklearn.metrics.normalized_mutual_info_score`, arithmetic
    normalisation) compare two partitions of *all* images, in which every true
    outlier and every unclustered (-1) image forms a cluster of its own.

    The IMC 2025-style figures match each true scene (outliers excluded),
    independently, to the predicted cluster (not -1) sharing the most images
    with it; ties go to the smaller cluster, then to the lower cluster label.
    Several scenes may match the same cluster. With ``shared`` the images in
    both, the scene's precision is ``|shared| / |cluster|`` (true outliers in
    the cluster count against it) and its recall ``|shared| / |scene|``
    (images of the scene left unclustered count against it); a scene sharing
    no image with any cluster gets precision 0 and recall 0.
    ``imc_precision`` and ``imc_recall`` are the unweighted means over scenes
    and ``imc_f1`` is the harmonic mean of these two means (0 if both are 0).

    Parameters
    ----------
    true_scenes : array-like of shape (n_images,)
        True scene of each image; any hashable values (e.g. strings).
    pred_labels : array-like of shape (n_images,)
        Integer cluster of each image, -1 for unclustered (as from
        :func:`cluster`).
    outlier_label : hashable, default="outliers"
        Value of ``true_scenes`` marking images that belong to no scene.

    Returns
    -------
    dict
        ``{"ari": float, "nmi": float, "imc_precision": float,
        "imc_recall": float, "imc_f1": float, "per_scene": {scene: {"cluster":
        int or None, "n_images": int, "precision": float, "recall": float}}}``,
        scenes in order of first appearance.

    Raises
    ------
    ValueError
        If the inputs are malformed or every image is an outlier.
    """
    true_scenes = _check_labels(true_scenes, "true_scenes")
    n_images = len(true_scenes)
    pred_labels = _check_labels(pred_labels, "pred_labels", n_images, f"true_scenes has {n_images}")
    if pred_labels.dtype.kind not in "iu":
        raise ValueError(f"pred_labels must hold integers, got dtype {pred_labels.dtype}")
    if (pred_labels < -1).any():
        raise ValueError(f"pred_labels must be >= 0, or -1 for unclustered images, got {pred_labels.min()}")
    pred_labels = pred_labels.astype(np.int64)
    is_outlier = np.array([scene == outlier_label for scene in true_scenes.tolist()])
    if is_outlier.all():
        raise ValueError(f"true_scenes holds no scene: every image is labelled outlier_label={outlier_label!r}")

    codes = _codes(true_scenes)
    singletons = -1 - np.arange(len(codes))
    true_flat = np.where(is_outlier, singletons, codes)
    pred_flat = np.where(pred_labels == -1, singletons, pred_labels)
    report = {
        "ari": float(adjusted_rand_score(true_flat, pred_flat)),
        "nmi": float(normalized_mutual_info_score(true_flat, pred_flat)),
    }

    clusters = np.unique(pred_labels)
    shared = contingency_matrix(codes, pred_labels)[:, clusters >= 0]  # rows: codes 0, 1, ...
    clusters = clusters[clusters >= 0]
    cluster_sizes = shared.sum(axis=0)
    scene_sizes = np.bincount(codes)
    names = true_scenes.tolist()
    per_scene = {}
    for code, first in enumerate(np.unique(codes, return_index=True)[1]):
        if is_outlier[first]:
            continue
        row = shared[code]
        if row.max(initial=0) == 0:
            match, precision, recall = None, 0.0, 0.0
        else:
            best = np.lexsort((clusters, cluster_sizes, -row))[0]
            match = int(clusters[best])
            precision = float(row[best] / cluster_sizes[best])
            recall = float(row[best] / scene_sizes[code])
        per_scene[names[first]] = {
            "cluster": match,
            "n_images": int(scene_sizes[code]),
            "precision": precision,
            "recall": recall,
        }
    precision = float(np.mean([scene["precision"] for scene in per_scene.values()]))
    recall = float(np.mean([scene["recall"] for scene in per_scene.values()]))
    report["imc_precision"] = precision
    report["imc_recall"] = recall
    report["imc_f1"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    report["per_scene"] = per_scene
    return report
