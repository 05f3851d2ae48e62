"""A deterministic dependency graph of resource addresses.

This module knows nothing about certificates: nodes are hashable, sortable keys (addresses),
edges point from a dependency to its dependent. Every order it returns breaks ties by the node
key, so the same input always walks, prints and applies in the same order.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

# networkx is imported where it is used: planning needs only `lexicographic_order`, and the
# import costs 85 ms of every command's start-up.
if TYPE_CHECKING:
    import networkx as nx

Node = TypeVar("Node", bound=Hashable)


def build(
    nodes: Iterable[Node], dependencies: Mapping[Node, Iterable[Node]]
) -> nx.DiGraph:
    """Graph with an edge dependency → dependent for each entry of ``dependencies``.

    Every dependency must itself be a node: a dangling one is a config error upstream, and an
    edge to a missing node here would silently create it.
    """
    import networkx as nx

    graph: nx.DiGraph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    for dependent, deps in dependencies.items():
        for dep in deps:
            if dep not in graph:
                raise KeyError(f"{dependent} depends on unknown node {dep}")
            graph.add_edge(dep, dependent)
    return graph


def find_cycle(graph: nx.DiGraph) -> list[Any] | None:
    """One cycle as a list of nodes (first node repeated at the end), or None."""
    import networkx as nx

    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    cycle = [edge[0] for edge in edges]
    return [*cycle, cycle[0]]


def lexicographic_order(
    nodes: Iterable[Node],
    dependencies: Mapping[Node, Iterable[Node]],
    key: Callable[[Node], Any],
) -> list[Node] | None:
    """Dependencies before dependents, smallest ``key`` first among nodes ready together;
    None when the dependencies have a cycle (`find_cycle` on `build` names it).

    The same order as `topological_order` with the same key, computed on plain dicts (Kahn's
    algorithm with a heap): at 25,000 resources it is several times faster than building a
    networkx graph first, and planning needs only the order.
    """
    waiting: dict[Node, int] = {}
    dependents: dict[Node, list[Node]] = {}
    for node in nodes:
        waiting[node] = 0
        dependents[node] = []
    for dependent, deps in dependencies.items():
        for dep in set(deps):
            if dep not in dependents:
                raise KeyError(f"{dependent} depends on unknown node {dep}")
            dependents[dep].append(dependent)
            waiting[dependent] += 1
    # (key, sequence, node): equal keys fall back to first-seen order, never compare nodes.
    ready = [(key(node), i, node) for i, (node, count) in enumerate(waiting.items())
             if count == 0]
    heapq.heapify(ready)
    sequence = len(waiting)
    order: list[Node] = []
    while ready:
        node = heapq.heappop(ready)[2]
        order.append(node)
        for dependent in dependents[node]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                sequence += 1
                heapq.heappush(ready, (key(dependent), sequence, dependent))
    return order if len(order) == len(waiting) else None


def topological_order(graph: nx.DiGraph, key: Callable[[Any], Any] | None = None) -> list[Any]:
    """Dependencies before dependents; among nodes ready together, smallest key first."""
    import networkx as nx

    return list(nx.lexicographical_topological_sort(graph, key=key))
