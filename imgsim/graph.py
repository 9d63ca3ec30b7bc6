"""The verified-match graph of a dataset: its nodes are images, its edges verified pairs."""


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
