"""Exact Euclidean nearest-neighbour search over embeddings, backed by FAISS.

All searches are exhaustive (``faiss.IndexFlatL2``), so results are exact up to
float32 rounding. Distances are returned as Euclidean distances, not the
squared distances FAISS works with internally.
"""

import numbers

import faiss
import numpy as np

__all__ = ["EmbeddingIndex", "knn"]


def _check_matrix(x, name):
    """Validate a 2-D array of finite real values; return it as C-contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n_samples, n_features), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one feature, got shape {x.shape}")
    with np.errstate(over="ignore"):  # float32 overflow is reported just below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf, possibly from float32 overflow)")
    return x


def _check_k(k, n_available):
    """Check that 1 <= k <= n_available."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= n_available:
        raise ValueError(
            f"k must be between 1 and the number of available references ({n_available}), got k={k}"
        )


class EmbeddingIndex:
    """Exact Euclidean index over a fixed set of reference embeddings.

    The FAISS index is built once, so repeated searches against the same
    references do not rebuild it.

    Parameters
    ----------
    embeddings : array-like of shape (n_references, n_features)
        Reference embeddings; stored as a C-contiguous float32 copy (no copy if
        already such an array).

    Attributes
    ----------
    embeddings : ndarray of shape (n_references, n_features), dtype float32
        The validated reference embeddings.
    """

    def __init__(self, embeddings):
        self.embeddings = _check_matrix(embeddings, "embeddings")
        self._faiss = faiss.IndexFlatL2(self.embeddings.shape[1])
        self._faiss.add(self.embeddings)

    def __len__(self):
        return self.embeddings.shape[0]

    def search(self, queries, k):
        """Find the ``k`` nearest references of each query.

        Equivalent to ``knn(queries, self.embeddings, k=k)``.

        Parameters
        ----------
        queries : array-like of shape (n_queries, n_features)
        k : int
            Number of neighbours, ``1 <= k <= len(self)``.

        Returns
        -------
        distances : ndarray of shape (n_queries, k), dtype float32
            Euclidean distances, ascending along each row.
        indices : ndarray of shape (n_queries, k), dtype int64
            Row indices into ``self.embeddings``.
        """
        queries = _check_matrix(queries, "queries")
        self._check_dim(queries)
        _check_k(k, len(self))
        return self._search(queries, k)

    def _check_dim(self, queries):
        if queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"queries have {queries.shape[1]} features but references have {self.embeddings.shape[1]}"
            )

    def _search(self, queries, k):
        """Search validated float32 queries; no argument checks."""
        squared, indices = self._faiss.search(queries, k)
        return np.sqrt(np.maximum(squared, 0)), indices.astype(np.int64, copy=False)


def knn(queries, references=None, *, k, exclude_self=True):
    """Exact k-nearest-neighbour search by Euclidean distance.

    Parameters
    ----------
    queries : array-like of shape (n_queries, n_features)
        Query embeddings. Any real dtype; converted to C-contiguous float32.
    references : array-like of shape (n_references, n_features), default=None
        Embeddings to search. If None, the queries search among themselves.
    k : int
        Number of neighbours per query. Must satisfy ``1 <= k <= n_available``,
        where ``n_available`` is ``n_references``, or ``n_queries - 1`` when
        the queries search themselves with ``exclude_self=True``.
    exclude_self : bool, default=True
        Only used when ``references`` is None: remove each query's own row
        from its result. Removal is by index, so an exact duplicate of the
        query (distance 0) is still returned as a neighbour.

    Returns
    -------
    distances : ndarray of shape (n_queries, k), dtype float32
        Euclidean (not squared) distances, ascending along each row. Ties are
        broken in no guaranteed order.
    indices : ndarray of shape (n_queries, k), dtype int64
        Row indices into ``references`` (into ``queries`` if ``references``
        is None) of the neighbours, in the order of ``distances``.

    Raises
    ------
    ValueError
        If an input is not a 2-D array of finite real values, the feature
        dimensions differ, or ``k`` is out of range.
    """
    queries = _check_matrix(queries, "queries")
    self_search = references is None
    if not self_search:
        references = _check_matrix(references, "references")
    index = EmbeddingIndex(queries if self_search else references)
    index._check_dim(queries)
    drop_self = self_search and exclude_self
    _check_k(k, len(index) - 1 if drop_self else len(index))
    if not drop_self:
        return index._search(queries, k)

    # Search one extra neighbour and drop the query itself by index: with
    # duplicates, self need not come first. If self is not among the k + 1
    # results (more than k exact duplicates), drop the last one instead.
    distances, indices = index._search(queries, k + 1)
    keep = indices != np.arange(len(queries))[:, None]
    keep[keep.all(axis=1), -1] = False
    return distances[keep].reshape(-1, k), indices[keep].reshape(-1, k)
