"""Laws of the plan/apply engine, checked on random DAGs of fast fake resources.

1. apply order respects every edge (data and ``depends_on``), phases run one after another;
2. a plan made on the state an apply committed is empty;
3. the state round-trips through save/load (secrets included);
4. replacing a resource replans exactly its transitive dependents whose inputs change;
5. plans are deterministic (twice, and across shuffled dict insertion orders);
6. restarts come after every write of a file they use (within each phase);
7. a rolling group never has two members restarting at once;
8. a failure skips exactly its dependents, and a second apply converges to the state of an
   uninterrupted run;
9. removing or moving resources leaves exactly the declared files on the hosts; deletes run
   dependents-first, and a file renamed in place survives (both were engine bugs these tests
   found).
10. among ready changes the one with the longest expected chain behind it starts first
   (ties: address order), a rolling group's chain included;
11. a host never has more steps in flight than its transport carries (``max_concurrent_steps``),
   and the cap loses no change and breaks no edge.

Expected sets are computed from the specs' attributes with networkx, not with engine code.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from pkiform.address import Address, Ref
from pkiform.apply import Applier, ApplyResult, Event
from pkiform.model import Host, ResourceSpec
from pkiform.plan import Change, Plan
from pkiform.provider import Action
from pkiform.state.model import ResourceState, State

from .fakes import (
    PHASES,
    FakeTransport,
    Harness,
    Recorder,
    examples,
    make_config,
    scratch,
    state_store,
)
from .strategies import data_edges, fake_configs, order_edges, reshuffled

# No health check needs suppressing: a 40-resource DAG is a few hundred draws, and the
# st.data() draws made after an apply are not timed as generation.
ENGINE = settings(phases=PHASES, max_examples=examples(50), deadline=None)
PROPAGATING = frozenset({"out", "token", "content"})  # outputs a replacement/update changes


def resources(config: Any) -> st.SearchStrategy[Address]:
    """Any resource, but nodes (the interesting replacements) two times in three: files and
    services, being per-host instances, would otherwise dominate."""
    nodes = sorted(a for a in config.resources if a.kind == "node")
    anything = st.sampled_from(sorted(config.resources))
    return st.one_of(st.sampled_from(nodes), st.sampled_from(nodes), anything)


def changes_of(plan: Plan) -> list[Change]:
    return [c for c in plan.changes if c.action is not Action.NOOP]


def addresses_of(plan: Plan) -> set[Address]:
    return {c.address for c in changes_of(plan)}


def dependency_graph(config: Any, *, propagating_only: bool = False,
                     ordering: bool = True) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(config.resources)
    for dep, dependent, output in data_edges(config):
        if not propagating_only or output in PROPAGATING:
            graph.add_edge(dep, dependent)
    if ordering and not propagating_only:
        graph.add_edges_from(order_edges(config))
    return graph


def rolling_groups(config: Any) -> dict[Address, list[Address]]:
    groups: dict[Address, list[Address]] = defaultdict(list)
    for address, spec in config.resources.items():
        if address.kind == "service" and spec.get("max_unavailable") and address.host:
            groups[address.base].append(address)
    return {base: sorted(members) for base, members in groups.items()}


def by_phase(plan: Plan, items: Iterable[Any], address_of: Any) -> dict[tuple[Address, str], Any]:
    """Pair the n-th recorded item of an address with its n-th change in phase order."""
    phase_index = {p.name: i for i, p in enumerate(plan.phases)}
    wanted: dict[Address, list[str]] = defaultdict(list)
    for change in sorted(changes_of(plan), key=lambda c: phase_index[c.phase]):
        wanted[change.address].append(change.phase)
    seen: dict[Address, int] = defaultdict(int)
    result: dict[tuple[Address, str], Any] = {}
    for item in items:
        address = address_of(item)
        if address is None or address not in wanted:
            continue
        n = seen[address]
        seen[address] += 1
        assert n < len(wanted[address]), f"{address} ran more often than planned"
        result[(address, wanted[address][n])] = item
    return result


def applied(harness: Harness, plan: Plan, **options: Any) -> ApplyResult:
    harness.recorder.reset()
    result = harness.apply(plan, **options)
    assert result.ok, (result.failed, result.skipped)
    return result


def check_order(harness: Harness, plan: Plan) -> None:
    config, recorder = harness.config, harness.recorder
    spans = by_phase(plan, sorted(recorder.spans, key=lambda s: s.start), lambda s: s.address)
    assert set(spans) == {(c.address, c.phase) for c in changes_of(plan)}
    edges = [(d, a) for d, a, _ in data_edges(config)] + order_edges(config)
    for phase in plan.phases:
        for dep, dependent in edges:
            before, after = spans.get((dep, phase.name)), spans.get((dependent, phase.name))
            if before is not None and after is not None:
                assert before.end < after.start, (
                    f"{dependent} started before its dependency {dep} finished ({phase.name})")
    # Phases run one after another.
    for earlier, later in itertools.pairwise(plan.phases):
        ends = [s.end for (_, p), s in spans.items() if p == earlier.name]
        starts = [s.start for (_, p), s in spans.items() if p == later.name]
        if ends and starts:
            assert max(ends) < min(starts), f"phase {later.name} began before {earlier.name} ended"


# -- 1, 2, 3, 6: a create, then a replacement of 1–3 random resources ----------------------


def create_then_replace(config: Any, data: Any, root: Any) -> Iterator[
        tuple[Harness, Plan, ApplyResult]]:
    """Apply the create plan, then a (possibly phased) replacement; yield after each."""
    harness = Harness(config, root)
    harness.recorder.apply_delay = 0.0005  # give a wrong order a chance to show
    replace = data.draw(st.lists(resources(config), min_size=1, max_size=3, unique=True),
                        label="replace")
    for replacing in (False, True):
        plan = harness.plan(replace=[str(a) for a in replace] if replacing else ())
        assert not plan.is_empty
        yield harness, plan, applied(harness, plan, parallelism=4)


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_apply_order_respects_every_edge(config: Any, data: Any) -> None:
    with scratch() as root:
        for harness, plan, _ in create_then_replace(config, data, root):
            check_order(harness, plan)


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_plan_after_apply_is_empty(config: Any, data: Any) -> None:
    with scratch() as root:
        for harness, _, _ in create_then_replace(config, data, root):
            follow = harness.plan()
            assert follow.is_empty and not follow.changes, [
                (str(c.address), c.reasons) for c in follow.changes]


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_committed_state_roundtrips_through_load(config: Any, data: Any) -> None:
    with scratch() as root:
        for harness, _, result in create_then_replace(config, data, root):
            loaded = harness.store().load(decrypt=True)
            assert loaded == result.state
            assert all("token" in loaded.secrets_of(str(a))
                       for a in config.resources if a.kind == "node")


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_restarts_come_after_the_writes_of_their_files(config: Any, data: Any) -> None:
    with scratch() as root:
        for harness, plan, _ in create_then_replace(config, data, root):
            check_restarts_after_writes(harness, plan)


def check_restarts_after_writes(harness: Harness, plan: Plan) -> None:
    recorder, config = harness.recorder, harness.config
    by_unit = {(spec.host.name, spec["unit"]): address
               for address, spec in config.resources.items() if address.kind == "service"}
    by_path = {(spec.host.name, spec["path"]): address
               for address, spec in config.resources.items() if address.kind == "file"}
    restarts = by_phase(plan, sorted(recorder.restarts, key=lambda r: r.start),
                        lambda r: by_unit.get((r.host, r.unit)))
    writes = by_phase(plan, sorted(recorder.writes, key=lambda w: w.seq),
                      lambda w: by_path.get((w.host, w.path)))
    planned_restarts = {(c.address, c.phase) for c in changes_of(plan)
                        if c.kind == "service"}
    assert set(restarts) == planned_restarts
    for (service, phase), restart in restarts.items():
        for used in config.resources[service]["uses"]:
            write = writes.get((used, phase))
            if write is not None:
                assert write.seq < restart.start, (
                    f"{service} restarted before {used} was written ({phase})")


# -- 3: arbitrary states round-trip -----------------------------------------------------------

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_scalars = st.one_of(_text, st.integers(-(2**63), 2**63 - 1), st.booleans())
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_addresses = st.builds(
    lambda kind, name, host: str(Address(kind, name, host)),
    st.sampled_from(["ca", "cert", "file", "node"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,6}", fullmatch=True),
    st.none() | st.sampled_from(["h0", "h1"]),
)
_records = st.builds(
    ResourceState,
    kind=st.sampled_from(["ca", "cert", "file", "node"]),
    inputs=st.dictionaries(_text, _values, max_size=3),
    deps=st.dictionaries(_text, _text, max_size=3),
    digests=st.dictionaries(_text, _text, max_size=3),
    outputs=st.dictionaries(_text, _values, max_size=4),
)
_states = st.builds(
    State,
    lineage=st.uuids().map(str),
    serial=st.integers(0, 10**6),
    resources=st.dictionaries(_addresses, _records, max_size=4),
    secrets=st.dictionaries(_addresses, st.dictionaries(_text, _text, min_size=1, max_size=3),
                            max_size=3),
)


@settings(phases=PHASES, max_examples=examples(60), deadline=None)
@given(state=_states)
def test_state_roundtrips_through_save_and_load(state: State) -> None:
    with scratch() as root:
        store = state_store(root)
        store.save(state)
        assert state_store(root).load(decrypt=True) == state
        assert state_store(root).load(decrypt=False) == attrs.evolve(state, secrets={})


@settings(phases=PHASES, max_examples=examples(25), deadline=None)
@given(state=_states, extra=_records, secret=st.dictionaries(_text, _text, max_size=2))
def test_state_roundtrips_through_the_journal(state: State, extra: ResourceState,
                                              secret: dict[str, str]) -> None:
    """A step journaled after the last save is part of the state a fresh store loads."""
    with scratch() as root:
        store = state_store(root)
        store.save(state)
        store.journal_append(state, "node.journaled", extra, secret)
        expected = state.with_resource("node.journaled", extra, secret)
        assert state_store(root).load(decrypt=True) == expected


# -- 4: replacement replans exactly the propagating dependents ------------------------------


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_replace_replans_exactly_the_dependents_whose_inputs_change(config: Any,
                                                                     data: Any) -> None:
    with scratch() as root:
        harness = Harness(config, root)
        applied(harness, harness.plan())
        target = data.draw(resources(config), label="replace")
        plan = harness.plan(replace=[str(target)])
        propagation = dependency_graph(config, propagating_only=True)
        expected = {target} | nx.descendants(propagation, target)
        assert addresses_of(plan) == expected
        phased = target.kind == "node" and config.resources[target]["phased"]
        phases = {c.phase for c in changes_of(plan) if c.address == target}
        assert phases == ({"trust-both", "reissue", "retire"} if phased else {"apply"})
        # And what the planner promised is what happened: nothing left to do afterwards.
        applied(harness, plan)
        assert harness.plan().is_empty


# -- 5: determinism ----------------------------------------------------------------------------


def plan_fingerprint(plan: Plan) -> tuple[Any, ...]:
    changes = [
        (c.address, c.action, c.phase, c.reasons, c.kind, c.step, c.outputs, c.dependencies,
         c.order_after, c.summary, c.rolling, c.steps_total)
        for c in plan.changes
    ]
    return (changes, [attrs.astuple(p) for p in plan.phases], plan.notes, plan.mode)


def shuffled_state(state: State, rnd: random.Random) -> State:
    items = list(state.resources.items())
    rnd.shuffle(items)
    resources = {}
    for address, record in items:
        deps = list(record.deps.items())
        rnd.shuffle(deps)
        resources[address] = attrs.evolve(record, deps=dict(deps))
    return attrs.evolve(state, resources=resources)


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_plans_are_deterministic(config: Any, data: Any) -> None:
    rnd = data.draw(st.randoms(use_true_random=False), label="shuffle")
    other = reshuffled(config, rnd)
    with scratch() as root:
        harness = Harness(config, root)
        empty = State.empty()
        first = plan_fingerprint(harness.plan(state=empty))
        assert plan_fingerprint(harness.plan(state=empty)) == first
        assert plan_fingerprint(harness.plan(state=empty, config=other)) == first
        applied(harness, harness.plan())
        state = harness.store().load(decrypt=False)
        replace = [str(a) for a in data.draw(st.lists(
            resources(config), min_size=1, max_size=3, unique=True),
            label="replace")]
        for mode in ("zero-downtime", "immediate"):
            base = plan_fingerprint(harness.plan(replace=replace, mode=mode, state=state))
            assert plan_fingerprint(harness.plan(replace=replace, mode=mode,
                                                 state=state)) == base
            assert plan_fingerprint(harness.plan(
                replace=list(reversed(replace)), mode=mode, config=other,
                state=shuffled_state(state, rnd))) == base


# -- 7: rolling groups ------------------------------------------------------------------------


@settings(ENGINE, max_examples=examples(15))
@given(config=fake_configs(max_resources=20, rolling=True), data=st.data())
def test_rolling_group_never_restarts_two_members_at_once(config: Any, data: Any) -> None:
    groups = rolling_groups(config)
    assert any(len(m) >= 2 for m in groups.values())
    with scratch() as root:
        harness = Harness(config, root)
        harness.recorder.restart_delay = 0.003
        sources = sorted({config.resources[f]["source"] for members in groups.values()
                          for s in members for f in config.resources[s]["uses"]})
        replace = data.draw(st.sampled_from(sources), label="replace")
        for plan_of in (lambda: harness.plan(), lambda: harness.plan(replace=[str(replace)])):
            plan = plan_of()
            applied(harness, plan, parallelism=8)
            check_no_overlap(harness.recorder, config, groups)


def check_no_overlap(recorder: Recorder, config: Any,
                     groups: dict[Address, list[Address]]) -> None:
    for base, members in groups.items():
        keys = {(config.resources[m].host.name, config.resources[m]["unit"]) for m in members}
        spans = sorted((r for r in recorder.restarts if (r.host, r.unit) in keys),
                       key=lambda r: r.t_start)
        for a, b in itertools.pairwise(spans):
            assert a.t_end <= b.t_start and a.end < b.start, (
                f"{base}: {a.host} and {b.host} restarted at the same time")


def test_overlap_check_sees_unchained_restarts() -> None:
    """Sanity check of the check: a group without max_unavailable restarts in parallel."""
    hosts = {h: Host(h, f"10.0.0.{i + 1}") for i, h in enumerate(("h0", "h1", "h2"))}
    node = Address("node", "n")
    specs = {node: ResourceSpec(node, {"value": "v", "deps": [], "phased": False})}
    for host in hosts:
        file, service = Address("file", "f", host), Address("service", "s", host)
        specs[file] = ResourceSpec(file, {"path": "/f", "source": node, "content": "out"},
                                   hosts[host])
        specs[service] = ResourceSpec(service, {"unit": "s.service", "uses": [file],
                                                "max_unavailable": None}, hosts[host])
    loose = make_config(hosts, specs)
    with scratch() as root:
        harness = Harness(loose, root)
        harness.recorder.restart_delay = 0.05
        applied(harness, harness.plan(), parallelism=8)
        members = sorted(a for a in specs if a.kind == "service")
        try:
            check_no_overlap(harness.recorder, loose, {members[0].base: members})
        except AssertionError:
            return
        raise AssertionError("restarts of an unchained group never overlapped")


# -- 8: failure isolation ----------------------------------------------------------------------


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_failure_skips_dependents_and_a_second_apply_converges(config: Any,
                                                                data: Any) -> None:
    faulty = data.draw(resources(config), label="faulty")
    graph = dependency_graph(config)
    for members in rolling_groups(config).values():
        nx.add_path(graph, members)  # a rolling group stops at its first failure
    dependents = nx.descendants(graph, faulty)
    with scratch() as root:
        harness = Harness(config, root)
        harness.recorder.fail = {faulty}
        first = harness.apply(harness.plan(), parallelism=4)
        assert {c.address for c, _ in first.failed} == {faulty}
        assert {c.address for c, _ in first.skipped} == dependents
        assert {c.address for c in first.done} == set(config.resources) - dependents - {faulty}
        started = {s.address for s in harness.recorder.spans}
        assert not started & dependents, "a skipped change was started"

        harness.recorder.fail = set()
        second_plan = harness.plan()
        assert addresses_of(second_plan) == dependents | {faulty}
        second = applied(harness, second_plan)
        assert harness.plan().is_empty

        clean = Harness(config, root, name="clean")
        uninterrupted = applied(clean, clean.plan())
        assert second.state.resources == uninterrupted.state.resources
        assert second.state.secrets == uninterrupted.state.secrets


# -- 9: removals and moves --------------------------------------------------------------------


def without(config: Any, removed: set[Address], moved: dict[Address, Address],
            *, keep_paths: bool = False) -> Any:
    """``config`` minus ``removed``; each file in ``moved`` renamed (and, unless
    ``keep_paths``, given a new path), every reference to it following."""

    def follow(address: Address) -> Address:
        return moved.get(address, address)

    resources = {}
    for address, spec in config.resources.items():
        if address in removed:
            continue
        attributes = dict(spec.attributes)
        attributes["depends_on"] = [follow(a) for a in attributes.get("depends_on") or ()]
        if address.kind == "node":
            attributes["deps"] = [attrs.evolve(r, address=follow(r.address))
                                  for r in attributes["deps"]]
        elif address.kind == "service":
            attributes["uses"] = [follow(f) for f in attributes["uses"]]
        if address in moved and not keep_paths:
            attributes["path"] = attributes["path"] + ".moved"
        resources[follow(address)] = ResourceSpec(follow(address), attributes, spec.host)
    return make_config(config.hosts, resources)


def files_on_hosts(harness: Harness) -> dict[str, set[str]]:
    return {name: set(t.files) for name, t in harness.transports.items() if t.files}


def declared_files(config: Any) -> dict[str, set[str]]:
    result: dict[str, set[str]] = defaultdict(set)
    for address, spec in config.resources.items():
        if address.kind == "file":
            result[spec.host.name].add(spec["path"])
    return dict(result)


@ENGINE
@given(config=fake_configs(), data=st.data())
def test_removed_and_moved_resources_leave_exactly_the_declared_files(config: Any,
                                                                       data: Any) -> None:
    seeds = data.draw(st.lists(resources(config), max_size=3, unique=True), label="removed")
    removed = set(seeds)
    for seed in seeds:
        removed |= nx.descendants(dependency_graph(config), seed)
    kept_files = sorted(a for a in config.resources if a.kind == "file" and a not in removed)
    renamed = data.draw(st.lists(st.sampled_from(kept_files), max_size=3, unique=True),
                        label="moved") if kept_files else []
    moved = {a: Address("file", f"m{a.name}", a.host) for a in renamed}
    smaller = without(config, removed, moved)
    with scratch() as root:
        harness = Harness(config, root)
        applied(harness, harness.plan())
        assert files_on_hosts(harness) == declared_files(config)
        harness.config = smaller
        plan = harness.plan()
        deletes = {c.address for c in plan.changes if c.action is Action.DELETE}
        assert deletes == removed | set(moved)
        applied(harness, plan)
        assert {a for _, a in harness.recorder.deletes} == deletes
        assert harness.plan().is_empty
        assert files_on_hosts(harness) == declared_files(smaller)


# regression (fixed): Planner._deletes lists deletes dependents first (reverse recorded deps),
# but a delete Change carries no dependencies, so Applier._phase_graph has no edge between  them
# and runs them in address order (or in parallel): node.a is deleted before node.b,  which was
# built from it



def test_deletes_run_dependents_first() -> None:
    a, b = Address("node", "a"), Address("node", "b")
    config = make_config({}, {
        a: ResourceSpec(a, {"value": "v", "deps": [], "phased": False}),
        b: ResourceSpec(b, {"value": "v", "deps": [Ref(a, "out")], "phased": False}),
    })
    with scratch() as root:
        harness = Harness(config, root)
        applied(harness, harness.plan())
        harness.config = make_config({}, {})
        plan = harness.plan()
        assert [c.address for c in plan.changes] == [b, a]  # the planner's promise
        applied(harness, plan, parallelism=1)
        assert [address for _, address in sorted(harness.recorder.deletes)] == [b, a]


# regression (fixed): renaming a file resource while keeping its path plans a delete of the old
# address and a create of the new one in the same phase with no edge between them; the  Applier
# runs the create (file.a) first and the delete (file.z) then removes the file  just written, so
# the host ends without the file while the state records it (the plan  after apply is empty
# without a refresh). Same with the real FileProvider and  LocalTransport



def test_renaming_a_file_keeps_it_on_its_host() -> None:
    host = Host("h0", "10.0.0.1")
    node, old = Address("node", "n"), Address("file", "z", "h0")
    config = make_config({"h0": host}, {
        node: ResourceSpec(node, {"value": "v", "deps": [], "phased": False}),
        old: ResourceSpec(old, {"path": "/etc/ca.crt", "source": node, "content": "out"}, host),
    })
    renamed = without(config, set(), {old: Address("file", "a", "h0")}, keep_paths=True)
    with scratch() as root:
        harness = Harness(config, root)
        applied(harness, harness.plan())
        harness.config = renamed
        applied(harness, harness.plan(), parallelism=1)
        assert harness.plan().is_empty
        assert files_on_hosts(harness) == {"h0": {"/etc/ca.crt"}}


# -- the planner's own topological sort --------------------------------------------------------

_dag_nodes = st.lists(st.integers(0, 40), unique=True, min_size=0, max_size=25)


@given(nodes=_dag_nodes, data=st.data())
def test_lexicographic_order_matches_networkx_and_detects_every_cycle(nodes: list[int],
                                                                      data: Any) -> None:
    """`graph.lexicographic_order` (dicts + heap) gives networkx's lexicographic order on a
    DAG, and None exactly when networkx finds a cycle."""
    from pkiform import graph as dag

    edges = data.draw(st.lists(st.tuples(st.sampled_from(nodes), st.sampled_from(nodes)),
                               max_size=60)) if nodes else []
    dependencies: dict[int, set[int]] = defaultdict(set)
    for dep, dependent in edges:
        dependencies[dependent].add(dep)
    key = lambda n: (n % 7, -n)  # noqa: E731 - ties in n % 7 must still order deterministically
    order = dag.lexicographic_order(nodes, dependencies, key=key)
    graph = dag.build(nodes, dependencies)
    if dag.find_cycle(graph) is not None:
        assert order is None
        return
    assert order == list(nx.lexicographical_topological_sort(graph, key=key))
    position = {n: i for i, n in enumerate(order)}
    assert all(position[dep] < position[dependent] for dep, dependent in edges)


# -- 10: longest chain first ------------------------------------------------------------------


def expected_start_order(changes: list[Change], cost: Any) -> list[Address]:
    """One batch (a phase's deletes, or the rest) run one change at a time: the graph from the
    changes' own edges and rolling groups (networkx), heights by node weight ``cost``, then a
    greedy walk that always starts the ready change of the greatest height, then address."""
    graph = nx.DiGraph()
    graph.add_nodes_from(c.address for c in changes)
    for change in changes:
        for before in {r.address for r in change.dependencies} | set(change.order_after):
            if before in graph and before != change.address:
                graph.add_edge(before, change.address)
    groups: dict[str, list[Change]] = defaultdict(list)
    for change in changes:
        if change.rolling and change.action is Action.RESTART:
            groups[change.rolling].append(change)
    for members in groups.values():
        members.sort(key=lambda c: c.address.sort_key)
        width = max(1, members[0].rolling_width)
        for a, b in zip(members, members[width:], strict=False):
            graph.add_edge(a.address, b.address)
    weight = {c.address: cost(c) for c in changes}
    height: dict[Address, int] = {}
    for node in reversed(list(nx.topological_sort(graph))):
        height[node] = weight[node] + max((height[s] for s in graph.successors(node)),
                                          default=0)
    waiting = {n: graph.in_degree(n) for n in graph}
    ready = {n for n, d in waiting.items() if d == 0}
    order: list[Address] = []
    while ready:
        node = min(ready, key=lambda n: (-height[n], n.sort_key))
        ready.remove(node)
        order.append(node)
        for successor in graph.successors(node):
            waiting[successor] -= 1
            if waiting[successor] == 0:
                ready.add(successor)
    return order


@settings(ENGINE, max_examples=examples(25))
@given(config=fake_configs(max_resources=25, rolling=True), data=st.data())
def test_the_ready_change_with_the_longest_chain_starts_first(config: Any, data: Any) -> None:
    """Weights are the engine's own estimates (`Applier._expected_ms`); what is checked is the
    order they imply on the graph built here. One change at a time, so the order is exact."""
    with scratch() as root:
        harness = Harness(config, root)
        sources = sorted({s["source"] for a, s in config.resources.items() if a.kind == "file"})
        replace = data.draw(st.sampled_from(sources), label="replace")
        started: list[tuple[str, Address]] = []

        def hook(event: Event) -> None:
            if event.kind == "start" and event.change is not None:
                started.append((event.change.phase, event.change.address))

        for plan_of in (lambda: harness.plan(), lambda: harness.plan(replace=[str(replace)])):
            plan = plan_of()
            started.clear()
            harness.recorder.reset()
            estimator = Applier(plan, harness.store(), harness.registry, harness.transport)
            result = harness.apply(plan, parallelism=1, hooks=(hook,))
            assert result.ok, (result.failed, result.skipped)
            for phase in plan.phases:
                batch = [c for c in changes_of(plan) if c.phase == phase.name]
                expected = [
                    *expected_start_order([c for c in batch if c.action is Action.DELETE],
                                          estimator._expected_ms),
                    *expected_start_order([c for c in batch if c.action is not Action.DELETE],
                                          estimator._expected_ms)]
                assert [a for p, a in started if p == phase.name] == expected


# -- 11: a host runs at most as many steps at once as its transport carries -----------------


@settings(ENGINE, max_examples=examples(20))
@given(config=fake_configs(max_resources=25, rolling=True), data=st.data())
def test_a_host_never_runs_more_steps_than_its_transport_carries(config: Any,
                                                                 data: Any) -> None:
    """With ``max_concurrent_steps = k`` on every host's transport, the steps of one host in
    flight (started, not finished: events in the scheduler's own order) never exceed k, every
    change still runs, and every edge still holds (the next test shows the peaks do exceed
    the cap without one)."""
    cap = data.draw(st.integers(1, 2), label="cap")
    with scratch() as root:
        harness = Harness(config, root)
        harness.recorder.apply_delay = 0.002  # steps of one host would overlap uncapped
        harness.recorder.restart_delay = 0.002
        sources = sorted({s["source"] for a, s in config.resources.items() if a.kind == "file"})
        replace = data.draw(st.sampled_from(sources), label="replace")
        for plan_of in (lambda: harness.plan(), lambda: harness.plan(replace=[str(replace)])):
            plan = plan_of()
            peaks = host_peaks(harness, plan, cap)
            assert max(peaks.values(), default=0) <= cap, peaks
            check_order(harness, plan)


def host_peaks(harness: Harness, plan: Plan, cap: int | None) -> dict[str, int]:
    """Apply ``plan`` with every host's transport capped at ``cap`` steps (None: no cap);
    the most steps each host had in flight at once, from the scheduler's own events."""
    peak: dict[str, int] = defaultdict(int)
    in_flight: dict[str, int] = defaultdict(int)

    def hook(event: Event) -> None:
        change = event.change
        if change is None or change.host is None:
            return
        if event.kind == "start":
            in_flight[change.host] += 1
            peak[change.host] = max(peak[change.host], in_flight[change.host])
        elif event.kind in ("done", "failed"):
            in_flight[change.host] -= 1

    for transport in harness.transports.values():
        transport.max_concurrent_steps = cap  # type: ignore[attr-defined]
    plain = harness.transport

    def capped(host: Host) -> FakeTransport:
        transport = plain(host)
        transport.max_concurrent_steps = cap  # type: ignore[attr-defined]
        return transport

    harness.transport = capped  # type: ignore[method-assign]
    try:
        result = applied(harness, plan, parallelism=8, hooks=(hook,))
    finally:
        harness.transport = plain  # type: ignore[method-assign]
    assert {c.address for c in result.done} == {c.address for c in changes_of(plan)}
    assert not any(in_flight.values())
    return dict(peak)


def test_the_host_cap_law_sees_uncapped_overlap() -> None:
    """Sanity check of the law above: one host's six independent files overlap without a
    cap, and never with a cap of 1 or 2."""
    hosts = {"h": Host("h", "10.0.0.1")}
    node = Address("node", "n")
    specs = {node: ResourceSpec(node, {"value": "v", "deps": [], "phased": False})}
    for n in range(6):
        file = Address("file", f"f{n}", "h")
        specs[file] = ResourceSpec(file, {"path": f"/f{n}", "source": node, "content": "out"},
                                   hosts["h"])
    config = make_config(hosts, specs)
    with scratch() as root:
        harness = Harness(config, root)
        harness.recorder.apply_delay = 0.02
        plan = harness.plan()
        assert host_peaks(harness, plan, None)["h"] > 2
        for cap in (1, 2):
            with scratch() as other:
                fresh = Harness(config, other)
                fresh.recorder.apply_delay = 0.02
                assert host_peaks(fresh, fresh.plan(), cap)["h"] == cap
