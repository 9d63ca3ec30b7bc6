"""The verified-match graph: components against a brute-force transitive closure."""

import numpy as np
import pytest

from imgsim.graph import connected_components


def _closure_components(n, edges):
    """Connected components by transitive closure of the adjacency matrix (brute force)."""
    reach = np.eye(n, dtype=bool)
    for a, b in edges:
        reach[a, b] = reach[b, a] = True
    for _ in range(n):
        reach = (reach.astype(int) @ reach.astype(int)) > 0
    return {frozenset(np.flatnonzero(row)) for row in reach}


@pytest.mark.parametrize("seed", range(5))
def test_connected_components_equal_transitive_closure(seed):
    rng = np.random.default_rng(seed)
    n = 30
    edges = [tuple(rng.choice(n, 2, replace=False)) for _ in range(int(rng.integers(5, 35)))]
    got = connected_components(n, edges)
    assert {frozenset(c) for c in got} == _closure_components(n, edges)
    assert sorted(x for c in got for x in c) == list(range(n))
    assert [len(c) for c in got] == sorted((len(c) for c in got), reverse=True)
