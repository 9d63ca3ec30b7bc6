import numpy as np
import pytest

from imgsim.index import EmbeddingIndex, knn


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
