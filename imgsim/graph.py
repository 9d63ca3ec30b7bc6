"""The verified-match graph of a dataset: edge evidence, clusters of scenes, outliers.

Nodes are images, edges verified pairs. :func:`edge_evidence` turns a pair's
verification into one number, *effective inliers*: inliers that need a
fundamental matrix count fully, inliers that one homography explains (a planar
backdrop, a poster, a floor, a camera that only turned) count
``planar_weight``, pairs whose inliers bunch on a small patch of either image
(``spread`` below ``min_spread``: a logo, a watermark) count nothing, and a
fitted :class:`~imgsim.fusion.FusionModel`'s same-scene probability, where one
is given, scales the rest. Static matches (a still backdrop behind a
turntable) were dropped before verification (:func:`imgsim.sift.static_matches`).

:func:`cluster_graph` then keeps the edges with at least ``min_weight``
effective inliers, makes an image whose best edge is weaker than ``min_best``
an outlier, splits each connected component into communities (Louvain,
seeded, on ``log1p`` weights) and merges communities back unless they are
joined by a *weak bridge*: a cut that rests on fewer than
``min_bridge_images`` images on one of its sides (one look-alike pair, or one
image matching a few of the other group) and has a conductance
``cut(A, B) / min(vol(A), vol(B))`` (weighted degree sums) below
``max_conductance``. Two halves of one scene that modularity alone cuts apart
(a ring of turntable views, a video sequence chopped into arcs) touch each
other through several images and are merged back. Splitting a true scene
costs far more than leaving two scenes joined (SfM then usually builds two
models anyway), so the rule splits only at such bridges. Groups smaller than
``min_size`` are outliers too.
"""

import numpy as np

from imgsim.errors import ConfigError

METHODS = ("components", "louvain")


def connected_components(n, edges):
    """Connected components of an undirected graph, largest first.

    Parameters
    ----------
    n : int
        Number of nodes 0 … n-1.
    edges : iterable of (int, int)

    Returns
    -------
    list of sorted lists of node ids; ties in size ordered by smallest id.
    """
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups = {}
    for node in range(n):
        groups.setdefault(find(node), []).append(node)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def edge_evidence(n_inliers, n_planar=None, spread=None, planar_weight=1.0, min_spread=0.0,
                  probability=None, min_probability=0.5):
    """Effective inliers of each edge.

    Parameters
    ----------
    n_inliers : array-like of shape (m,)
        Verified inliers of each pair.
    n_planar : array-like of shape (m,), optional
        Of those, the ones one homography explains
        (:func:`imgsim.sift.pair_evidence`); None: none are.
    spread : array-like of shape (m,), optional
        Fraction of image cells the inliers cover (the smaller image's).
    planar_weight : float
        In [0, 1]: what a homography-explained inlier counts.
    min_spread : float
        Pairs spreading less count 0.
    probability : array-like of shape (m,), optional
        Same-scene probability of each pair (a fitted fusion model); scales
        the evidence, and pairs below ``min_probability`` count 0.
    min_probability : float

    Returns
    -------
    numpy.ndarray of shape (m,), float64:
    ``((n_inliers - n_planar) + planar_weight * n_planar) * probability``, 0 where
    ``spread < min_spread`` or ``probability < min_probability``.
    """
    inliers = np.asarray(n_inliers, np.float64)
    planar = np.zeros_like(inliers) if n_planar is None else np.asarray(n_planar, np.float64)
    if planar.shape != inliers.shape or np.any(planar > inliers) or np.any(planar < 0):
        raise ValueError("n_planar must have the shape of n_inliers, with 0 <= n_planar <= n_inliers")
    if not 0 <= planar_weight <= 1:
        raise ValueError(f"planar_weight must be in [0, 1], got {planar_weight!r}")
    weight = (inliers - planar) + planar_weight * planar
    if spread is not None:
        weight[np.asarray(spread, np.float64) < min_spread] = 0.0
    if probability is not None:
        probability = np.asarray(probability, np.float64)
        weight = np.where(probability >= min_probability, weight * probability, 0.0)
    return weight


def conductance(adjacency, a, b):
    """``cut(a, b) / min(vol(a), vol(b))`` of two node sets in a weighted graph.

    Parameters
    ----------
    adjacency : numpy.ndarray of shape (n, n)
        Symmetric non-negative edge weights (0: no edge).
    a, b : sequence of int
        Disjoint node sets.

    Returns
    -------
    float in [0, 1]; 0 when either set has no edge at all.
    """
    a, b = list(a), list(b)
    degree = adjacency.sum(axis=1)
    smaller = min(degree[a].sum(), degree[b].sum())
    return float(adjacency[np.ix_(a, b)].sum() / smaller) if smaller > 0 else 0.0


def _louvain(adjacency, seed, resolution):
    import networkx as nx

    n = len(adjacency)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    rows, cols = np.nonzero(np.triu(adjacency, 1))
    graph.add_weighted_edges_from((int(i), int(j), float(adjacency[i, j])) for i, j in zip(rows, cols))
    return [sorted(c) for c in nx.community.louvain_communities(graph, weight="weight",
                                                                resolution=resolution, seed=seed)]


def bridge_images(adjacency, a, b):
    """Images on the thinner side of the cut between node sets ``a`` and ``b``.

    Returns
    -------
    int: ``min(#a with an edge into b, #b with an edge into a)``; 1 for a single
    look-alike pair or one image matching several of the other set.
    """
    cut = adjacency[np.ix_(list(a), list(b))] > 0
    return int(min(cut.any(axis=1).sum(), cut.any(axis=0).sum()))


def merge_communities(adjacency, communities, max_conductance, min_bridge_images=2):
    """Merge communities until every two left are joined by at most a weak bridge.

    Two communities are *joined* when the cut between them touches at least
    ``min_bridge_images`` images on each side (:func:`bridge_images`) or has a
    :func:`conductance` of at least ``max_conductance``; the joined pair with
    the highest conductance is merged first, then the test is repeated.

    Parameters
    ----------
    adjacency : numpy.ndarray of shape (n, n)
    communities : list of lists of int
        A partition of (some of) the nodes.
    max_conductance : float
    min_bridge_images : int

    Returns
    -------
    list of sorted lists, no two of them joined.
    """
    groups = [sorted(c) for c in communities]
    while len(groups) > 1:
        best, pair = None, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                phi = conductance(adjacency, groups[i], groups[j])
                joined = phi >= max_conductance or (
                    phi > 0 and bridge_images(adjacency, groups[i], groups[j]) >= min_bridge_images)
                if joined and (best is None or phi > best):
                    best, pair = phi, (i, j)
        if pair is None:
            break
        i, j = pair
        groups[i] = sorted(groups[i] + groups[j])
        del groups[j]
    return groups


def cluster_graph(n, edges, weights, min_weight, min_best=0.0, min_size=3, method="louvain",
                  max_conductance=0.05, min_bridge_images=2, resolution=1.0, seed=0):
    """Scenes of a verified-match graph: clusters of images, the rest outliers.

    Parameters
    ----------
    n : int
        Images 0 … n-1.
    edges : sequence of (int, int)
        Verified pairs.
    weights : array-like of shape (len(edges),)
        Their effective inliers (:func:`edge_evidence`).
    min_weight : float
        Weaker edges are dropped.
    min_best : float
        An image whose strongest remaining edge is weaker is an outlier.
    min_size : int
        Smaller clusters are outliers.
    method : {"components", "louvain"}
        ``components``: each connected component is a cluster (no split);
        ``louvain``: communities merged back by conductance (module notes).
    max_conductance : float
        Communities joined at least this strongly are merged.
    min_bridge_images : int
        Communities whose cut touches this many images on each side are merged.
    resolution : float
        Louvain's resolution (larger: smaller communities before merging).
    seed : int

    Returns
    -------
    clusters : list of sorted lists of int
        At least ``min_size`` images each, largest first (ties: smallest id).
    """
    if method not in METHODS:
        raise ConfigError(f"cluster method must be one of {METHODS}, got {method!r}")
    weights = np.asarray(weights, np.float64).reshape(-1)
    if len(weights) != len(edges):
        raise ValueError(f"{len(edges)} edges but {len(weights)} weights")
    adjacency = np.zeros((n, n))
    for (a, b), w in zip(edges, weights):
        if a != b and w >= min_weight and w > adjacency[a, b]:
            adjacency[a, b] = adjacency[b, a] = w
    weak = adjacency.max(axis=1, initial=0.0) < max(min_best, np.finfo(float).tiny)
    adjacency[weak, :] = adjacency[:, weak] = 0.0
    kept = [(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(adjacency, 1)))]
    clusters = []
    for component in connected_components(n, kept):
        if len(component) < min_size:
            continue
        if method == "components" or len(component) < 2 * min_size:
            clusters.append(component)
            continue
        sub = np.log1p(adjacency[np.ix_(component, component)])
        local = merge_communities(sub, _louvain(sub, seed, resolution), max_conductance,
                                  min_bridge_images)
        clusters += [[component[k] for k in group] for group in local]
    clusters = [sorted(c) for c in clusters if len(c) >= min_size]
    return sorted(clusters, key=lambda c: (-len(c), c[0]))

