"""Euclidean nearest-neighbour search over embeddings, backed by FAISS.

:class:`Index` wraps four FAISS index kinds behind one interface:

``"flat"``
    Exhaustive search (``faiss.IndexFlatL2``): exact up to float32 rounding.
``"ivf"``
    Inverted file (``faiss.IndexIVFFlat`` over a flat quantizer): k-means
    partitions the vectors into ``nlist`` lists and a search scans the
    ``nprobe`` lists nearest to the query. Approximate.
``"hnsw"``
    Hierarchical navigable small-world graph (``faiss.IndexHNSWFlat``).
    Approximate; ``ef_search`` trades speed for recall.
``"ivfpq"``
    Inverted file over product-quantized codes (``faiss.IndexIVFPQ``,
    ``pq_m`` sub-quantizers of 8 bits: ``pq_m`` bytes per vector instead of
    ``4 · dim``). Approximate twice over (lists and codes); with ``refine``
    the ``refine · k`` best candidates are re-ranked by exact distance
    (``faiss.IndexRefineFlat``, which keeps the float vectors too).

IVF kinds train their k-means (and PQ) on a seeded random sample of the
first add of at most ``TRAIN_PER_LIST · nlist`` vectors (FAISS recommends 39 to
256 per list), so training cost does not grow with the collection.
:meth:`Index.for_size` is the default for a collection of a given size —
exact up to ``EXACT_UP_TO`` vectors, IVF-PQ with exact re-ranking above —
chosen from ``benchmarks/bench_index.py`` on real embeddings (see there).

:class:`EmbeddingIndex` and :func:`knn` are exact searches built on a flat
:class:`Index`. Distances are always returned as Euclidean distances, not the
squared distances FAISS works with internally.

FAISS's OpenMP threads spin while they wait unless ``OMP_WAIT_POLICY=PASSIVE``
is set before FAISS loads; on cores that other work shares, spinning made
FAISS up to 25x slower (see the README's "Performance on shared cores"). This
module leaves the environment alone; the ``imgsim`` command and the Dask
workers it starts set it.
"""

import math
import numbers
import os
import tempfile

import faiss
import numpy as np

__all__ = ["EmbeddingIndex", "Index", "knn", "self_knn"]

KINDS = ("flat", "ivf", "hnsw", "ivfpq")
TRAIN_PER_LIST = 64  # IVF training sample: at most this many vectors per list
PQ_MIN_TRAIN = 10_000  # ... and at least this many for the product quantizer (39 × 256)
EXACT_UP_TO = 20_000  # Index.for_size: exact search up to this many vectors
DEFAULT_NPROBE, DEFAULT_REFINE = 4, 10  # Index.for_size above it: IVF-PQ with exact re-ranking


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


def _check_int(value, name, minimum=1):
    """Check that ``value`` is an integer (not a bool) >= ``minimum``; return it as int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_k(k, n_available):
    """Check that 1 <= k <= n_available."""
    if not isinstance(k, numbers.Integral) or isinstance(k, bool):
        raise ValueError(f"k must be an integer, got {k!r}")
    if not 1 <= k <= n_available:
        raise ValueError(
            f"k must be between 1 and the number of available references ({n_available}), got k={k}"
        )


class Index:
    """Euclidean nearest-neighbour index of one of the kinds in :data:`KINDS`.

    Vectors get ids in insertion order: the first :meth:`add` gives 0..n-1,
    the next continues from n.

    Parameters
    ----------
    dim : int
        Number of features of every vector.
    kind : {"flat", "ivf", "hnsw", "ivfpq"}, default="flat"
        See the module docstring.
    nlist : int, optional
        ``"ivf"``/``"ivfpq"``: number of k-means lists. Decided at the first
        :meth:`add`, whose vectors train the quantizer: default
        ``max(1, int(4 * sqrt(n)))``, and never more than the ``n`` vectors
        of that first add. Later adds reuse the trained lists.
    nprobe : int, default=16
        ``"ivf"``/``"ivfpq"``: lists scanned per query (settable; capped at ``nlist``).
    hnsw_m : int, default=32
        ``"hnsw"`` only: graph neighbours per node (at least 2).
    ef_search : int, default=64
        ``"hnsw"`` only: search candidate-list size (settable; FAISS uses at
        least ``k``).
    ef_construction : int, default=200
        ``"hnsw"`` only: candidate-list size while building the graph. FAISS'
        default, 40, builds 2.5x faster but on 10^6 real embeddings (many
        near-duplicates) its graph caps recall@10 at 0.82 whatever
        ``ef_search``; 200 reached 0.996 at ``ef_search`` 64
        (``reports/scale/README.md``).
    pq_m : int, optional
        ``"ivfpq"`` only: sub-quantizers (bytes per code), a divisor of
        ``dim``; default the largest divisor of ``dim`` up to 64.
    refine : int, optional
        ``"ivfpq"`` only: re-rank the ``refine · k`` best candidates by exact
        distance (settable once built). None: PQ distances as they are.

    Examples
    --------
    >>> index = Index(2, kind="hnsw")
    >>> index.add(np.array([[0.0, 0.0], [3.0, 4.0]]))
    >>> index.search(np.array([[0.0, 0.0]]), k=3)
    (array([[ 0.,  5., inf]], dtype=float32), array([[ 0,  1, -1]]))
    """

    def __init__(self, dim, kind="flat", nlist=None, nprobe=16, hnsw_m=32, ef_search=64, pq_m=None,
                 refine=None, ef_construction=200):
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
        self.dim = _check_int(dim, "dim")
        self.kind = kind
        self._faiss = None
        self.nlist = None if nlist is None else _check_int(nlist, "nlist")
        self.hnsw_m = _check_int(hnsw_m, "hnsw_m", minimum=2)
        self.ef_construction = _check_int(ef_construction, "ef_construction")
        if pq_m is None:
            pq_m = max(m for m in range(1, min(64, self.dim) + 1) if self.dim % m == 0)
        self.pq_m = _check_int(pq_m, "pq_m")
        if self.dim % self.pq_m:
            raise ValueError(f"pq_m must divide dim ({self.dim}), got {pq_m!r}")
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.refine = refine
        if kind == "flat":
            self._faiss = faiss.IndexFlatL2(self.dim)
        elif kind == "hnsw":
            self._faiss = faiss.IndexHNSWFlat(self.dim, self.hnsw_m)
            self._faiss.hnsw.efConstruction = self.ef_construction
            self._faiss.hnsw.efSearch = self._ef_search
        # "ivf", "ivfpq": built and trained by the first add

    @classmethod
    def for_size(cls, n, dim):
        """The default index for ``n`` vectors of ``dim`` features.

        Exact (``"flat"``) up to ``EXACT_UP_TO`` vectors; above, IVF-PQ with
        exact re-ranking: ``nlist = sqrt(n)``, ``nprobe`` 4, ``refine`` 10,
        ``pq_m`` the default. On real GAP embeddings (1280-d; the benchmark in
        ``benchmarks/bench_index.py``, tables in ``reports/scale/README.md``)
        that gave recall@10 0.987 at 10^5 and 0.971 at 10^6 vectors, at 14x
        and 129x the exact search's query throughput; built in 32 s and 69 s
        on 2 cores — at 10^6 the cheapest build + N queries at that recall of
        the kinds measured (at 10^5 IVF costs about the same), which is what a
        one-shot self-search (``reconstruct``'s shortlist) pays. A long-lived index
        answering many queries does better with ``"hnsw"`` (0.996 at 196x at
        10^6 in its run, but a build 12x longer). Memory is about that of the float
        vectors (the re-ranking keeps them), plus ``pq_m`` bytes per vector.
        """
        n = _check_int(n, "n", minimum=0)
        if n <= EXACT_UP_TO:
            return cls(dim, "flat")
        return cls(dim, "ivfpq", nlist=max(1, int(math.sqrt(n))), nprobe=DEFAULT_NPROBE,
                   refine=DEFAULT_REFINE)

    @property
    def nprobe(self):
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value):
        self._nprobe = _check_int(value, "nprobe")
        if self.kind in ("ivf", "ivfpq") and self._faiss is not None:
            ivf = faiss.extract_index_ivf(self._faiss)
            ivf.nprobe = min(self._nprobe, ivf.nlist)

    @property
    def ef_search(self):
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value):
        self._ef_search = _check_int(value, "ef_search")
        if self.kind == "hnsw" and self._faiss is not None:
            self._faiss.hnsw.efSearch = self._ef_search

    @property
    def refine(self):
        return self._refine

    @refine.setter
    def refine(self, value):
        if value is not None:
            value = _check_int(value, "refine")
            if self.kind != "ivfpq":
                raise ValueError(f"refine is for kind 'ivfpq' only, not {self.kind!r}")
        built = self._faiss
        if built is not None and isinstance(built, faiss.IndexRefine) != (value is not None):
            raise ValueError("refine cannot be switched on or off once an 'ivfpq' index is built")
        self._refine = value
        if value is not None and built is not None:
            built.k_factor = float(value)

    def __len__(self):
        return 0 if self._faiss is None else int(self._faiss.ntotal)

    def __repr__(self):
        extra = {"flat": "", "ivf": f", nlist={self.nlist}, nprobe={self.nprobe}",
                 "hnsw": f", hnsw_m={self.hnsw_m}, ef_search={self.ef_search}",
                 "ivfpq": f", nlist={self.nlist}, nprobe={self.nprobe}, pq_m={self.pq_m}, "
                          f"refine={self.refine}"}[self.kind]
        return f"Index(dim={self.dim}, kind={self.kind!r}{extra}, n={len(self)})"

    def _check_dim(self, x, name):
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} have {x.shape[1]} features but the index has dim {self.dim}")

    def add(self, vectors):
        """Add vectors of shape (n, dim); they get the next n ids in order."""
        vectors = _check_matrix(vectors, "vectors")
        self._check_dim(vectors, "vectors")
        self._add(vectors)

    def _add(self, vectors):
        """Add validated float32 vectors; no argument checks."""
        if len(vectors) == 0:
            return
        if self._faiss is None:  # first add to an IVF index: train it on (a sample of) these vectors
            self._faiss = self._train(vectors)
        self._faiss.add(vectors)

    def _train(self, vectors):
        nlist = self.nlist if self.nlist is not None else max(1, int(4 * math.sqrt(len(vectors))))
        self.nlist = min(nlist, len(vectors))
        quantizer = faiss.IndexFlatL2(self.dim)
        if self.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist)
            limit = TRAIN_PER_LIST * self.nlist
        else:
            index = faiss.IndexIVFPQ(quantizer, self.dim, self.nlist, self.pq_m, 8)
            limit = max(TRAIN_PER_LIST * self.nlist, PQ_MIN_TRAIN)
        if len(vectors) > limit:
            sample = np.sort(np.random.default_rng(0).choice(len(vectors), limit, replace=False))
            index.train(vectors[sample])
        else:
            index.train(vectors)
        index.nprobe = min(self._nprobe, self.nlist)
        if self.kind == "ivfpq" and self._refine is not None:
            refined = faiss.IndexRefineFlat(index)  # keeps a reference to index
            refined.k_factor = float(self._refine)
            return refined
        return index

    def search(self, queries, k):
        """Find the ``k`` nearest vectors of each query.

        Parameters
        ----------
        queries : array-like of shape (n_queries, dim)
        k : int
            Number of neighbours, at least 1. If fewer than ``k`` are found
            (fewer vectors, or an approximate kind missed some), the row is
            padded with id -1 at distance inf.

        Returns
        -------
        distances : ndarray of shape (n_queries, k), dtype float32
            Euclidean distances, ascending along each row (for ``"ivfpq"``
            without ``refine``, distances to the quantized vectors).
        ids : ndarray of shape (n_queries, k), dtype int64
        """
        queries = _check_matrix(queries, "queries")
        self._check_dim(queries, "queries")
        return self._search(queries, _check_int(k, "k"))

    def _search(self, queries, k):
        """Search validated float32 queries; no argument checks."""
        if len(self) == 0:
            return np.full((len(queries), k), np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        squared, ids = self._faiss.search(queries, k)
        distances = np.sqrt(np.maximum(squared, 0, out=squared), out=squared)
        distances[ids < 0] = np.inf
        return distances, ids.astype(np.int64, copy=False)

    def save(self, path):
        """Write the index to ``path`` atomically (temporary file, then rename).

        The kind and its settings (``nlist``, ``nprobe``, ``hnsw_m``,
        ``ef_search``, ``pq_m``, ``refine``) are part of the FAISS file, so
        :meth:`load` needs nothing else. An IVF index can only be saved once
        trained, i.e. after its first non-empty :meth:`add`.
        """
        if self._faiss is None:
            raise ValueError(f"an {self.kind!r} index cannot be saved before its first add "
                             "(it is not trained yet)")
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self._faiss, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path):
        """Read an index written by :meth:`save`."""
        raw = faiss.read_index(os.fspath(path))  # returns the concrete FAISS class
        if raw.metric_type != faiss.METRIC_L2:
            raise ValueError(f"{path} holds a FAISS index with a non-L2 metric, not one written by Index.save")
        base = faiss.downcast_index(raw.base_index) if type(raw) is faiss.IndexRefineFlat else None
        if type(raw) is faiss.IndexFlatL2:
            index = cls(raw.d, "flat")
        elif type(raw) is faiss.IndexIVFFlat:
            index = cls(raw.d, "ivf", nlist=raw.nlist, nprobe=raw.nprobe)
        elif type(raw) is faiss.IndexHNSWFlat:
            index = cls(raw.d, "hnsw", hnsw_m=raw.hnsw.nb_neighbors(1), ef_search=raw.hnsw.efSearch,
                        ef_construction=raw.hnsw.efConstruction)
        elif type(raw) is faiss.IndexIVFPQ or type(base) is faiss.IndexIVFPQ:
            ivf = base if base is not None else raw
            index = cls(raw.d, "ivfpq", nlist=ivf.nlist, nprobe=ivf.nprobe, pq_m=ivf.pq.M)
            index._refine = None if base is None else int(round(raw.k_factor))
        else:
            raise ValueError(f"{path} holds a FAISS {type(raw).__name__}, not an index written by Index.save")
        index._faiss = raw
        return index


class EmbeddingIndex:
    """Exact Euclidean index over a fixed set of reference embeddings.

    The FAISS index (a flat :class:`Index`) is built once, so repeated
    searches against the same references do not rebuild it.

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
        self._index = Index(self.embeddings.shape[1], kind="flat")
        self._index._add(self.embeddings)

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
        return self._index._search(queries, k)


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


def self_knn(vectors, k, index="auto"):
    """Each vector's ``k`` nearest other vectors, exactly or through an approximate index.

    Parameters
    ----------
    vectors : array-like of shape (n, dim)
    k : int
        ``1 <= k <= n - 1``.
    index : {"auto", "exact", "flat", "ivf", "hnsw", "ivfpq"}
        ``"exact"`` (or ``"flat"``): :func:`knn`. ``"auto"``: exact up to
        ``EXACT_UP_TO`` vectors, else :meth:`Index.for_size`. A kind: an
        :class:`Index` of that kind with its default settings.

    Returns
    -------
    numpy.ndarray of shape (n, k), int64
        Row indices of the neighbours, nearest first; an approximate index may
        leave -1 where it found fewer than ``k``. A vector's own row is
        removed by index, as in :func:`knn`.
    """
    vectors = _check_matrix(vectors, "vectors")
    n = len(vectors)
    _check_k(k, n - 1)
    if index not in ("auto", "exact") + KINDS:
        raise ValueError(f"index must be 'auto', 'exact' or one of {', '.join(map(repr, KINDS))}, "
                         f"got {index!r}")
    if index in ("exact", "flat") or (index == "auto" and n <= EXACT_UP_TO):
        return knn(vectors, k=k)[1]
    search = Index.for_size(n, vectors.shape[1]) if index == "auto" else Index(vectors.shape[1], index)
    search._add(vectors)
    _, ids = search._search(vectors, k + 1)
    keep = ids != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False  # self not found: drop the farthest instead
    return ids[keep].reshape(n, k)
