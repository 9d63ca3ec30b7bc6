import os

import numpy as np
import pytest

from imgsim.index import EmbeddingIndex, Index, knn


def brute_force_knn(queries, references, k, exclude_self=False):
    """Full float64 distance matrix + stable argsort."""
    q = np.asarray(queries, dtype=np.float64)
    r = np.asarray(references, dtype=np.float64)
    dist = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=-1))
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


@pytest.mark.parametrize("seed, n_q, n_r, dim, k", [(0, 7, 30, 3, 1), (1, 40, 25, 16, 25), (2, 5, 9, 1, 4)])
def test_knn_matches_brute_force(seed, n_q, n_r, dim, k):
    rng = np.random.default_rng(seed)
    queries, references = rng.normal(size=(n_q, dim)), rng.normal(size=(n_r, dim))
    distances, indices = knn(queries, references, k=k)
    expected_dist, expected_idx = brute_force_knn(queries, references, k)
    assert distances.shape == indices.shape == (n_q, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_idx)
    np.testing.assert_allclose(distances, expected_dist, rtol=1e-4, atol=1e-5)
    assert (np.diff(distances, axis=1) >= 0).all()


@pytest.mark.parametrize("seed, n, dim, k", [(3, 12, 2, 11), (4, 50, 8, 5)])
def test_knn_self_search_matches_brute_force(seed, n, dim, k):
    x = np.random.default_rng(seed).normal(size=(n, dim))
    distances, indices = knn(x, k=k)
    expected_dist, expected_idx = brute_force_knn(x, x, k, exclude_self=True)
    np.testing.assert_array_equal(indices, expected_idx)
    np.testing.assert_allclose(distances, expected_dist, rtol=1e-4, atol=1e-5)

    # Without exclusion each point is its own nearest neighbour at distance 0.
    distances, indices = knn(x, k=k + 1, exclude_self=False)
    np.testing.assert_array_equal(indices[:, 0], np.arange(n))
    np.testing.assert_allclose(distances[:, 0], 0, atol=1e-3)
    np.testing.assert_array_equal(indices[:, 1:], expected_idx)


def test_exclude_self_with_duplicates_drops_by_index():
    # Rows 0..4 are identical and 5 is far away: for k=1 the top-2 FAISS
    # results of rows 2..4 may not contain the row itself at all.
    x = np.array([[1.0, 2.0]] * 5 + [[10.0, 10.0]])
    for k in (1, 2, 4):
        distances, indices = knn(x, k=k)
        for i in range(5):
            assert i not in indices[i]
            assert set(indices[i]) <= {0, 1, 2, 3, 4}
            assert len(set(indices[i])) == k
        np.testing.assert_allclose(distances[:5], 0, atol=1e-3)
    # With k=5 the far point comes last for the duplicates; it sees all of them.
    distances, indices = knn(x, k=5)
    np.testing.assert_array_equal(indices[:5, -1], [5] * 5)
    assert sorted(indices[5]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(distances[5], np.hypot(9.0, 8.0), rtol=1e-6)


def test_knn_accepts_ints_lists_and_non_contiguous_input():
    x = np.arange(20.0).reshape(10, 2)[:, ::-1]  # non-contiguous view
    distances, indices = knn(x[::2].tolist(), np.asfortranarray(x), k=1)
    np.testing.assert_array_equal(indices[:, 0], [0, 2, 4, 6, 8])
    np.testing.assert_allclose(distances, 0, atol=1e-3)
    distances, indices = knn(np.array([[0], [3], [10]]), k=1)  # int dtype
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 1])
    np.testing.assert_allclose(distances[:, 0], [3, 3, 7])


def test_embedding_index_search():
    rng = np.random.default_rng(5)
    references, queries = rng.normal(size=(20, 4)), rng.normal(size=(6, 4))
    index = EmbeddingIndex(references)
    assert len(index) == 20
    distances, indices = index.search(queries, 3)
    expected_dist, expected_idx = brute_force_knn(queries, references, 3)
    np.testing.assert_array_equal(indices, expected_idx)
    np.testing.assert_allclose(distances, expected_dist, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"number of available references \(20\), got k=21"):
        index.search(queries, 21)


@pytest.mark.parametrize(
    "queries, references, k, exclude_self, message",
    [
        (np.zeros(3), None, 1, True, r"queries must be a 2-D array .* got shape \(3,\)"),
        (np.zeros((3, 2)), np.zeros((4, 2, 1)), 1, True, r"references must be a 2-D .* shape \(4, 2, 1\)"),
        (np.zeros((3, 2)), np.zeros((4, 3)), 1, True, "queries have 2 features but references have 3"),
        (np.zeros((3, 0)), None, 1, True, "queries must have at least one feature"),
        (np.array([["a", "b"]]), None, 1, True, "queries must hold real numbers"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), None, 1, True, "queries contains non-finite values"),
        (np.zeros((3, 2)), np.array([[np.inf, 0.0]]), 1, True, "references contains non-finite values"),
        (np.array([[1e39, 0.0], [0.0, 0.0]]), None, 1, True, "non-finite values"),  # float32 overflow
        (np.zeros((3, 2)), np.zeros((4, 2)), 5, True, r"number of available references \(4\), got k=5"),
        (np.zeros((3, 2)), None, 3, True, r"number of available references \(2\), got k=3"),
        (np.zeros((3, 2)), None, 4, False, r"number of available references \(3\), got k=4"),
        (np.zeros((3, 2)), None, 0, True, r"number of available references \(2\), got k=0"),
        (np.zeros((3, 2)), None, 1.5, True, "k must be an integer, got 1.5"),
    ],
)
def test_knn_validation(queries, references, k, exclude_self, message):
    with pytest.raises(ValueError, match=message):
        knn(queries, references, k=k, exclude_self=exclude_self)


# ----------------------------------------------------------------------------- Index


def exact_neighbours(queries, references, k):
    """Exact top-k by float64 squared distances via matmul (memory-light brute force)."""
    q, r = np.asarray(queries, np.float64), np.asarray(references, np.float64)
    squared = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2 * q @ r.T
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.maximum(np.take_along_axis(squared, order, axis=1), 0)), order


def recall_at_k(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


@pytest.fixture(scope="module")
def clustered():
    """5,000 + 200 float32 points in dim 32 from 50 overlapping Gaussian clusters (embedding-like)."""
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(50, 32))
    points = centres[rng.integers(0, 50, 5200)] + rng.normal(size=(5200, 32))
    references, queries = points[:5000].astype(np.float32), points[5000:].astype(np.float32)
    return references, queries, exact_neighbours(queries, references, 10)[1]


def test_flat_index_matches_brute_force_and_ids_follow_insertion_order():
    rng = np.random.default_rng(11)
    references, queries = rng.normal(size=(1000, 16)), rng.normal(size=(50, 16))
    index = Index(16)
    index.add(references[:400])
    index.add(references[400:].tolist())  # second add continues the ids at 400
    assert len(index) == 1000 and index.kind == "flat"
    distances, ids = index.search(queries, 10)
    expected_dist, expected_ids = exact_neighbours(queries, references, 10)
    assert distances.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (50, 10)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_dist, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_recall(clustered, kind):
    references, queries, truth = clustered
    index = Index(32, kind=kind)  # default nprobe=16 / ef_search=64
    index.add(references)
    distances, ids = index.search(queries, 10)
    assert recall_at_k(ids, truth) >= 0.9
    assert (ids >= 0).all() and (np.diff(distances, axis=1) >= 0).all()
    # Distances are the Euclidean distances to the returned vectors.
    actual = np.linalg.norm(references[ids] - queries[:, None, :], axis=-1)
    np.testing.assert_allclose(distances, actual, rtol=1e-4, atol=1e-4)


def test_hnsw_recall_on_unstructured_data():
    rng = np.random.default_rng(12)
    references, queries = rng.normal(size=(5000, 32)), rng.normal(size=(100, 32))
    index = Index(32, kind="hnsw")
    index.add(references)
    assert recall_at_k(index.search(queries, 10)[1], exact_neighbours(queries, references, 10)[1]) >= 0.9


def test_ivf_recall_grows_with_nprobe_and_is_exact_when_all_lists_are_probed():
    # Unstructured Gaussian data is hard for IVF, but more probes never hurt and nprobe = nlist is exhaustive.
    rng = np.random.default_rng(13)
    references, queries = rng.normal(size=(2000, 16)), rng.normal(size=(100, 16))
    truth = exact_neighbours(queries, references, 10)[1]
    index = Index(16, kind="ivf", nprobe=1)
    index.add(references)
    assert index.nlist == int(4 * np.sqrt(2000)) == 178
    recalls = []
    for nprobe in (1, 4, 16, 64, 178):
        index.nprobe = nprobe
        recalls.append(recall_at_k(index.search(queries, 10)[1], truth))
    assert recalls == sorted(recalls) and recalls[0] < 1.0 and recalls[-1] == 1.0
    index.nprobe = 10_000  # capped at nlist
    np.testing.assert_array_equal(index.search(queries, 10)[1], truth)


def test_ivf_nlist_is_decided_by_the_first_add():
    rng = np.random.default_rng(14)
    index = Index(4, kind="ivf", nlist=50)
    assert index.nlist == 50 and len(index) == 0
    index.add(np.zeros((0, 4)))  # nothing to train on yet
    assert index.nlist == 50 and len(index) == 0
    x = rng.normal(size=(20, 4))
    index.add(x)  # fewer vectors than nlist
    assert index.nlist == 20 and len(index) == 20
    index.add(x + 100)  # later adds reuse the trained lists and continue the ids
    assert index.nlist == 20 and len(index) == 40
    index.nprobe = 20
    np.testing.assert_array_equal(index.search(x[:3] + 100, 1)[1][:, 0], [20, 21, 22])


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_fewer_results_than_k_are_padded(kind):
    index = Index(2, kind=kind)
    distances, ids = index.search([[0.0, 0.0]], 2)  # empty index
    np.testing.assert_array_equal(ids, [[-1, -1]])
    np.testing.assert_array_equal(distances, [[np.inf, np.inf]])
    index.add([[0.0, 0.0], [3.0, 4.0]])
    distances, ids = index.search([[0.0, 0.0]], 4)
    np.testing.assert_array_equal(ids, [[0, 1, -1, -1]])
    np.testing.assert_allclose(distances, [[0.0, 5.0, np.inf, np.inf]])
    assert distances.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("kind, settings", [
    ("flat", {}),
    ("ivf", {"nlist": 30, "nprobe": 3}),
    ("hnsw", {"hnsw_m": 8, "ef_search": 20}),
])
def test_save_load_round_trip(tmp_path, clustered, kind, settings):
    references, queries, _ = clustered
    index = Index(32, kind=kind, **settings)
    index.add(references[:2000])
    path = tmp_path / f"{kind}.faiss"
    path.write_bytes(b"an older file is replaced")
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    loaded = Index.load(str(path))
    assert (loaded.dim, loaded.kind, len(loaded)) == (32, kind, 2000)
    for name, value in settings.items():
        assert getattr(loaded, name) == value
    for got, expected in zip(loaded.search(queries, 10), index.search(queries, 10)):
        np.testing.assert_array_equal(got, expected)
    loaded.add(references[2000:2100])  # a loaded index keeps growing
    assert loaded.search(references[2050:2051], 1)[1][0, 0] == 2050


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="'ivf' index cannot be saved before its first add"):
        Index(3, kind="ivf").save(tmp_path / "untrained.faiss")
    assert list(tmp_path.iterdir()) == []
    faiss = pytest.importorskip("faiss")
    faiss.write_index(faiss.IndexFlatIP(3), str(tmp_path / "ip.faiss"))
    with pytest.raises(ValueError, match="non-L2 metric"):
        Index.load(tmp_path / "ip.faiss")
    faiss.write_index(faiss.IndexLSH(3, 8), str(tmp_path / "lsh.faiss"))
    with pytest.raises(ValueError, match="holds a FAISS IndexLSH, not an index written by Index.save"):
        Index.load(tmp_path / "lsh.faiss")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Index(4, kind="lsh"), "unknown index kind 'lsh'; expected one of 'flat', 'ivf', 'hnsw'"),
        (lambda: Index(0), "dim must be an integer >= 1, got 0"),
        (lambda: Index(4.0), "dim must be an integer >= 1, got 4.0"),
        (lambda: Index(4, kind="ivf", nlist=0), "nlist must be an integer >= 1, got 0"),
        (lambda: Index(4, kind="ivf", nprobe=0), "nprobe must be an integer >= 1, got 0"),
        (lambda: Index(4, kind="hnsw", hnsw_m=1), "hnsw_m must be an integer >= 2, got 1"),
        (lambda: Index(4, kind="hnsw", ef_search=True), "ef_search must be an integer >= 1, got True"),
    ],
)
def test_index_constructor_validation(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ix: ix.add(np.zeros((2, 3))), "vectors have 3 features but the index has dim 4"),
        (lambda ix: ix.add(np.zeros(4)), r"vectors must be a 2-D array .* got shape \(4,\)"),
        (lambda ix: ix.add([[0.0, 1.0, np.nan, 0.0]]), "vectors contains non-finite values"),
        (lambda ix: ix.search(np.zeros((1, 5)), 1), "queries have 5 features but the index has dim 4"),
        (lambda ix: ix.search([[np.inf, 0, 0, 0]], 1), "queries contains non-finite values"),
        (lambda ix: ix.search(np.zeros((1, 4)), 0), "k must be an integer >= 1, got 0"),
        (lambda ix: ix.search(np.zeros((1, 4)), 1.5), "k must be an integer >= 1, got 1.5"),
        (lambda ix: setattr(ix, "nprobe", -2), "nprobe must be an integer >= 1, got -2"),
        (lambda ix: setattr(ix, "ef_search", 0), "ef_search must be an integer >= 1, got 0"),
    ],
)
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_argument_validation(kind, call, message):
    index = Index(4, kind=kind)
    index.add(np.eye(4))
    with pytest.raises(ValueError, match=message):
        call(index)
    assert len(index) == 4  # a rejected add adds nothing


# --------------------------------------------------------------------------- IVF-PQ, defaults, self-search


@pytest.mark.parametrize("refine", [None, 8])
def test_ivfpq_recall_and_exact_reranking(clustered, refine):
    references, queries, truth = clustered
    index = Index(32, kind="ivfpq", nlist=20, nprobe=20, pq_m=8, refine=refine)
    index.add(references)
    distances, ids = index.search(queries, 10)
    # 4-byte codes of 32-d vectors lose the fine order; re-ranking 80 candidates exactly restores it
    assert recall_at_k(ids, truth) >= (0.98 if refine else 0.5)  # measured 0.9995 and 0.69
    if refine:  # re-ranked distances are the exact Euclidean distances
        actual = np.linalg.norm(references[ids] - queries[:, None, :], axis=-1)
        np.testing.assert_allclose(distances, actual, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot be switched on or off"):
        index.refine = None if refine else 4
    with pytest.raises(ValueError, match="pq_m must divide dim"):
        Index(32, kind="ivfpq", pq_m=5)
    with pytest.raises(ValueError, match="refine is for kind 'ivfpq' only"):
        Index(32, kind="ivf", refine=2)


def test_ivfpq_save_load_round_trip(tmp_path, clustered):
    references, queries, _ = clustered
    index = Index(32, kind="ivfpq", nlist=16, nprobe=4, pq_m=4, refine=3)
    index.add(references[:3000])
    index.save(tmp_path / "pq.faiss")
    loaded = Index.load(tmp_path / "pq.faiss")
    assert (loaded.kind, loaded.nlist, loaded.nprobe, loaded.pq_m, loaded.refine) == ("ivfpq", 16, 4, 4, 3)
    for got, expected in zip(loaded.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(got, expected)


def test_ivf_trains_on_a_bounded_sample(monkeypatch, clustered):
    import faiss

    import imgsim.index as index_module

    references, queries, truth = clustered
    seen = []
    real_train = faiss.IndexIVFFlat.train
    monkeypatch.setattr(faiss.IndexIVFFlat, "train", lambda self, x: seen.append(len(x)) or real_train(self, x))
    monkeypatch.setattr(index_module, "TRAIN_PER_LIST", 40)
    index = Index(32, kind="ivf", nlist=25, nprobe=25)
    index.add(references)  # 5,000 vectors, trained on 40 x 25 of them
    assert seen == [1000] and len(index) == 5000
    np.testing.assert_array_equal(index.search(queries, 10)[1], truth)  # every list probed: exact


def test_for_size_is_exact_up_to_the_threshold_then_ivfpq():
    from imgsim.index import EXACT_UP_TO

    assert Index.for_size(EXACT_UP_TO, 8).kind == "flat"
    big = Index.for_size(1_000_000, 1280)
    assert (big.kind, big.nlist, big.nprobe, big.refine, big.pq_m) == ("ivfpq", 1000, 4, 10, 64)
    assert Index.for_size(EXACT_UP_TO + 1, 100).pq_m == 50  # the largest divisor of dim up to 64


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_self_knn_against_brute_force(clustered, kind):
    from imgsim.index import self_knn

    references = clustered[0][:1000]
    truth = brute_force_knn(references, references, 10, exclude_self=True)[1]
    ids = self_knn(references, 10, kind)
    assert ids.shape == (1000, 10) and not (ids == np.arange(1000)[:, None]).any()
    assert recall_at_k(ids, truth) >= (1.0 if kind == "exact" else 0.9)
    with pytest.raises(ValueError, match="index must be 'auto', 'exact' or one of"):
        self_knn(references, 10, "lsh")


# --------------------------------------------------------------------------- OpenMP waits on shared cores


def test_importing_the_index_leaves_the_environment_alone_and_the_command_sets_passive_waits():
    import subprocess
    import sys

    code = ("import os, imgsim.index; print(os.environ.get('OMP_WAIT_POLICY'));"
            "from imgsim.cli import set_thread_waits; set_thread_waits(); print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_WAIT_POLICY="ACTIVE"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ACTIVE", "ACTIVE"]  # a user's choice stands
