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


# --------------------------------------------------------------------------- evidence and clustering

import itertools

from imgsim.errors import ConfigError
from imgsim.graph import bridge_images, cluster_graph, conductance, edge_evidence, merge_communities


def test_edge_evidence_hand_worked():
    # 100 inliers, 60 planar at weight 0.5: 40 + 30; a bunched pair counts 0; fusion scales
    got = edge_evidence([100, 100, 50, 50], [60, 60, 0, 0], [0.5, 0.01, 0.3, 0.3], planar_weight=0.5,
                        min_spread=0.05, probability=[1.0, 1.0, 0.8, 0.4])
    assert got.tolist() == [70.0, 0.0, 40.0, 0.0]
    assert edge_evidence([10, 20]).tolist() == [10.0, 20.0]
    with pytest.raises(ValueError, match="n_planar"):
        edge_evidence([10], [11])


def _block_edges(rng, blocks, density=0.9, low=80, high=400):
    """Dense random blocks (each connected through a chain), weights in [low, high]."""
    edges, weights = [], []
    for block in blocks:
        for a, b in itertools.combinations(block, 2):
            if b == a + 1 or rng.random() < density:
                edges.append((a, b))
                weights.append(float(rng.integers(low, high)))
    return edges, weights


def test_two_scenes_joined_by_one_false_edge_are_split():
    rng = np.random.default_rng(0)
    blocks = [list(range(0, 10)), list(range(10, 22))]
    edges, weights = _block_edges(rng, blocks)
    edges.append((4, 15))  # a look-alike pair: verified, above the edge threshold
    weights.append(60.0)
    assert cluster_graph(22, edges, weights, 30, method="components") == [list(range(22))]
    assert cluster_graph(22, edges, weights, 30, method="louvain") == [blocks[1], blocks[0]]


@pytest.mark.parametrize("n", [36, 90])
def test_a_ring_scene_stays_whole(n):
    """A turntable / video sequence (each view matches its 3 neighbours each way) is one scene.
    Modularity alone chops a ring into arcs; arcs touch through 3 images each side, so they are
    merged back. Conductance alone would not do: the two halves of a long ring are joined at two
    places only, which is little against their volumes (n = 90: 0.03 < 0.05)."""
    from imgsim.graph import _louvain

    edges = [(i, (i + d) % n) for i in range(n) for d in (1, 2, 3)]
    weights = [300.0 / d for i in range(n) for d in (1, 2, 3)]
    adjacency = _adjacency(n, edges, weights)
    arcs = _louvain(adjacency, 0, 1.0)
    assert len(arcs) > 1
    if n == 90:
        assert len(merge_communities(adjacency, arcs, 0.05, min_bridge_images=n)) > 1
    assert cluster_graph(n, edges, weights, 30) == [list(range(n))]


def _adjacency(n, edges, weights):
    adjacency = np.zeros((n, n))
    for (a, b), w in zip(edges, weights):
        adjacency[a, b] = adjacency[b, a] = np.log1p(w)
    return adjacency


def _partitions(items):
    """Every set partition of ``items`` (brute force; Bell(8) = 4140)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]
        yield [[first]] + part


def _modularity(adjacency, partition):
    """Newman's modularity by its definition: sum_c L_c / m - (d_c / 2m)^2."""
    m = adjacency.sum() / 2
    degree = adjacency.sum(axis=1)
    return sum(adjacency[np.ix_(c, c)].sum() / (2 * m) - (degree[c].sum() / (2 * m)) ** 2
               for c in partition)


def _cut_images(adjacency, a, b):
    """Images of a with an edge into b and of b with an edge into a, the fewer (by loops)."""
    touching_a = {i for i in a for j in b if adjacency[i, j] > 0}
    touching_b = {j for i in a for j in b if adjacency[i, j] > 0}
    return min(len(touching_a), len(touching_b))


def _brute_force_clusters(n, edges, weights, min_weight, min_size, max_conductance, min_bridge=2):
    """Per component: the highest-modularity partition among those in which every two parts
    are joined by a weak bridge at most (conductance below max_conductance and fewer than
    min_bridge images on one side of the cut); then parts of min_size or more."""
    kept = [(e, w) for e, w in zip(edges, weights) if w >= min_weight]
    adjacency = _adjacency(n, [e for e, _ in kept], [w for _, w in kept])
    reach = (adjacency > 0) | np.eye(n, dtype=bool)
    for _ in range(n):
        reach = (reach.astype(int) @ reach.astype(int)) > 0
    clusters = []
    for component in {tuple(np.flatnonzero(row)) for row in reach}:
        component = list(component)
        sub = adjacency[np.ix_(component, component)]
        best, best_q = None, -np.inf
        for partition in _partitions(list(range(len(component)))):
            if any(conductance(sub, a, b) >= max_conductance
                   or (conductance(sub, a, b) > 0 and _cut_images(sub, a, b) >= min_bridge)
                   for a, b in itertools.combinations(partition, 2)):
                continue
            q = _modularity(sub, partition) if sub.sum() else 0.0
            if q > best_q + 1e-12:
                best, best_q = partition, q
        clusters += [sorted(component[k] for k in part) for part in best if len(part) >= min_size]
    return sorted(clusters, key=lambda c: (-len(c), c[0]))


@pytest.mark.parametrize("seed", range(12))
def test_clustering_rule_equals_brute_force_on_hand_built_graphs(seed):
    rng = np.random.default_rng(100 + seed)
    # 2-3 blocks, at most 8 images (Bell(8) = 4140 partitions); a block of 2 is below min_size
    sizes = [(3, 3), (3, 4), (4, 4), (3, 3, 2), (3, 2, 3)][seed % 5]
    bounds = np.cumsum(np.concatenate([[0], sizes]))
    blocks = [list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))]
    n = int(bounds[-1])
    edges, weights = _block_edges(rng, blocks, density=0.8)
    for _ in range(int(rng.integers(0, 3))):  # weak false edges between blocks, some below the edge threshold
        a, b = rng.choice(len(blocks), 2, replace=False)
        edges.append((int(rng.choice(blocks[a])), int(rng.choice(blocks[b]))))
        weights.append(float(rng.integers(20, 60)))
    got = cluster_graph(n, edges, weights, min_weight=30, min_size=3, max_conductance=0.05, seed=seed)
    assert got == _brute_force_clusters(n, edges, weights, 30, 3, 0.05)


def test_outlier_rule_and_small_groups_by_hand():
    edges = [(0, 1), (1, 2), (0, 2), (2, 3), (4, 5), (5, 6), (4, 6)]
    weights = [200, 200, 200, 40, 200, 200, 200]
    # image 3's best edge (40 effective inliers) is weak at min_best 50: an outlier
    assert cluster_graph(8, edges, weights, 30, min_best=50, method="components") == [[0, 1, 2], [4, 5, 6]]
    assert cluster_graph(8, edges, weights, 30, method="components") == [[0, 1, 2, 3], [4, 5, 6]]
    assert cluster_graph(8, edges, weights, 30, min_size=4, method="components") == [[0, 1, 2, 3]]
    assert cluster_graph(8, edges, weights, 300) == []


def test_merge_communities_hand_worked():
    adjacency = np.zeros((4, 4))
    adjacency[0, 1] = adjacency[1, 0] = 3.0
    adjacency[2, 3] = adjacency[3, 2] = 3.0
    adjacency[1, 2] = adjacency[2, 1] = 1.0
    # cut 1, volumes 7 and 7: conductance 1/7; the cut rests on one image each side
    assert conductance(adjacency, [0, 1], [2, 3]) == pytest.approx(1 / 7)
    assert bridge_images(adjacency, [0, 1], [2, 3]) == 1
    assert merge_communities(adjacency, [[0, 1], [2, 3]], 0.2) == [[0, 1], [2, 3]]
    assert merge_communities(adjacency, [[0, 1], [2, 3]], 0.1) == [[0, 1, 2, 3]]
    adjacency[0, 3] = adjacency[3, 0] = 1.0  # a second pair of images across: no longer a bridge
    assert bridge_images(adjacency, [0, 1], [2, 3]) == 2
    assert merge_communities(adjacency, [[0, 1], [2, 3]], 0.9) == [[0, 1, 2, 3]]
    assert merge_communities(adjacency, [[0, 1], [2, 3]], 0.9, min_bridge_images=3) == [[0, 1], [2, 3]]


def test_bad_cluster_method():
    with pytest.raises(ConfigError, match="cluster method"):
        cluster_graph(3, [], [], 30, method="spectral")
