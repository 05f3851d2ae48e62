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
    # Nodes become list positions at once: one hash per node and per edge, then plain ints
    # (at 25,000 resources the dict lookups per edge were most of the walk).
    position: dict[Node, int] = {}
    for node in nodes:
        position.setdefault(node, len(position))
    listed = list(position)
    waiting = [0] * len(listed)
    dependents: list[list[int]] = [[] for _ in listed]
    for dependent, deps in dependencies.items():
        at = position[dependent]
        for dep in set(deps):
            source = position.get(dep)
            if source is None:
                raise KeyError(f"{dependent} depends on unknown node {dep}")
            dependents[source].append(at)
            waiting[at] += 1
    # (key, sequence, position): equal keys fall back to first-seen order, never compare nodes.
    ready = [(key(listed[i]), i, i) for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    sequence = len(listed)
    order: list[Node] = []
    while ready:
        at = heapq.heappop(ready)[2]
        order.append(listed[at])
        for dependent in dependents[at]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                sequence += 1
                heapq.heappush(ready, (key(listed[dependent]), sequence, dependent))
    return order if len(order) == len(listed) else None


def topological_order(graph: nx.DiGraph, key: Callable[[Any], Any] | None = None) -> list[Any]:
    """Dependencies before dependents; among nodes ready together, smallest key first."""
    import networkx as nx

    return list(nx.lexicographical_topological_sort(graph, key=key))
