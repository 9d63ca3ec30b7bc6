"""Leave-one-out retrieval metrics over a labelled set of embeddings.

Every embedding is used in turn as a query against all the *other*
embeddings, ranked by Euclidean distance (see :func:`imgsim.index.knn`); a
retrieved embedding is relevant when it has the query's label. Definitions
follow deep metric learning practice (Oh Song et al. 2016 for Recall@K,
Musgrave et al. 2020 for mAP@R, as in pytorch-metric-learning's
``AccuracyCalculator``).

Lone queries: an embedding whose label occurs only once has no relevant item
to find, so it is not used as a query. It stays in the gallery, where it can
be retrieved by (and count as a miss for) other queries, e.g. outlier images
each given a unique label. Ties in distance are broken in no guaranteed order.
"""

import numbers

import numpy as np

from imgsim.index import _check_matrix, knn

__all__ = ["map_at_r", "precision_at_1", "recall_at_k", "retrieval_report"]


def _check_positive_int(k, name):
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")


def _relevance(embeddings, labels, k, *, up_to_r=False):
    """Rank the other embeddings for each non-lone query and mark same-label hits.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features)
    labels : array-like of shape (n_samples,)
        Hashable class labels.
    k : int
        Number of neighbours to rank per query.
    up_to_r : bool, default=False
        Also rank at least ``R_max`` neighbours, the largest number of
        same-label other embeddings of any query (largest class size - 1).

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
    embeddings = _check_matrix(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if len(labels) != len(embeddings):
        raise ValueError(f"labels has {len(labels)} entries but embeddings has {len(embeddings)} rows")

    codes_of = {}
    codes = np.array([codes_of.setdefault(label, len(codes_of)) for label in labels.tolist()], dtype=np.int64)
    n_positives = np.bincount(codes)[codes] - 1
    is_query = n_positives > 0
    if not is_query.any():
        raise ValueError(
            "no query left: every label occurs only once, so no embedding has a same-label neighbour"
        )

    depth = max(k, n_positives.max()) if up_to_r else k
    _, indices = knn(embeddings, k=int(min(depth, len(embeddings) - 1)))
    relevant = codes[indices[is_query]] == codes[is_query, None]
    return relevant, n_positives[is_query]


def _precision_at_1(relevant):
    return float(relevant[:, 0].mean())


def _recall_at_k(relevant, k):
    return float(relevant[:, :k].any(axis=1).mean())


def _map_at_r(relevant, n_positives):
    rank = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / rank
    counted = relevant & (rank <= n_positives[:, None])
    return float(((precision * counted).sum(axis=1) / n_positives).mean())


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


def retrieval_report(embeddings, labels, ks=(1, 5)):
    """Precision@1, Recall@K for each K, and mAP@R from a single search.

    Same definitions, lone-query rule and errors as :func:`precision_at_1`,
    :func:`recall_at_k` and :func:`map_at_r`; one nearest-neighbour search of
    depth ``max(max(ks), R_max)`` capped at ``n_samples - 1`` serves all of
    them, where ``R_max`` is the largest class size minus one.

    Parameters
    ----------
    embeddings : array-like of shape (n_samples, n_features)
        Embedding vectors, finite real values.
    labels : array-like of shape (n_samples,)
        Class label of each embedding; any hashable values (ints, strings).
    ks : sequence of int, default=(1, 5)
        Values of K for Recall@K, each ``>= 1``.

    Returns
    -------
    dict of str to float
        ``{"precision_at_1": ..., "recall_at_<k>": ... for k in ks,
        "map_at_r": ...}``.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks must contain at least one value")
    for k in ks:
        _check_positive_int(k, "every value in ks")
    relevant, n_positives = _relevance(embeddings, labels, max(ks), up_to_r=True)
    report = {"precision_at_1": _precision_at_1(relevant)}
    report.update({f"recall_at_{k}": _recall_at_k(relevant, k) for k in ks})
    report["map_at_r"] = _map_at_r(relevant, n_positives)
    return report
