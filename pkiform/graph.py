"""A deterministic dependency graph of resource addresses.

This module knows nothing about certificates: nodes are hashable, sortable keys (addresses),
edges point from a dependency to its dependent. Every order it returns breaks ties by the node
key, so the same input always walks, prints and applies in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

import networkx as nx

from pkiform.errors import ConfigError

Node = TypeVar("Node", bound=Hashable)


def build(
    nodes: Iterable[Node], dependencies: Mapping[Node, Iterable[Node]]
) -> nx.DiGraph:
    """Graph with an edge dependency → dependent for each entry of ``dependencies``.

    Every dependency must itself be a node: a dangling one is a config error upstream, and an
    edge to a missing node here would silently create it.
    """
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
    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return None
    cycle = [edge[0] for edge in edges]
    return [*cycle, cycle[0]]


def require_acyclic(graph: nx.DiGraph, describe: Callable[[Any], str] = str) -> None:
    cycle = find_cycle(graph)
    if cycle is not None:
        path = " → ".join(describe(node) for node in cycle)
        raise ConfigError(
            f"dependency cycle: {path}",
            address=describe(cycle[0]),
            hint="remove one of these references; a resource cannot depend on itself",
        )


def topological_order(graph: nx.DiGraph, key: Callable[[Any], Any] | None = None) -> list[Any]:
    """Dependencies before dependents; among nodes ready together, smallest key first."""
    return list(nx.lexicographical_topological_sort(graph, key=key))


def descendants(graph: nx.DiGraph, roots: Iterable[Any]) -> set[Any]:
    """Every node reachable from ``roots`` (roots excluded unless reachable from another)."""
    seen: set[Any] = set()
    for root in roots:
        seen |= nx.descendants(graph, root)
    return seen
