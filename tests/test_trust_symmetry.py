"""The trust proof's symmetry reduction says exactly what the full proof says.

`trust.prove` simulates and checks one representative per class of hosts that are the same up
to their name (5,000 kubelets → one). These tests run both ways on a generated kubeadm cluster
with several workers and compare: every rotation, both modes, a host whose state differs from
its peers, and a broken edge.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

from pkiform import trust
from pkiform.state.model import State
from pkiform.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from generate import generate

NODES = 8  # 3 control planes + 5 workers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("symmetry")
    generate(directory, NODES, key="ecdsa-p256")
    ws = Workspace(directory)
    result = ws.apply(ws.plan(), keygen_workers=1)
    assert not result.failed
    return directory


def _both(ws: Workspace, plan: trust.Plan, state: State | None = None
          ) -> tuple[trust.ProofReport, trust.ProofReport]:
    state = state or ws.load_state(decrypt=True)
    reduced = trust.prove(plan, ws.config, state, ws.registry)
    full = trust.prove(plan, ws.config, state, ws.registry, symmetry=False)
    return reduced, full


def _failures(report: trust.ProofReport, *, preexisting: bool = False) -> set[tuple[str, ...]]:
    # Reasons name key ids of the simulation's fresh keys, which differ run to run: compare
    # which half of which pair failed, when, and in which view.
    return {(f.edge, f.client, f.server, f.phase, f.views, f.reason.split(":")[0])
            for f in (report.preexisting if preexisting else report.failures)}


@pytest.mark.parametrize("target", ["ca.kubernetes", "ca.etcd", "ca.front-proxy"])
@pytest.mark.parametrize("mode", ["zero-downtime", "immediate"])
def test_reduced_proof_matches_the_full_proof(cluster: Path, target: str, mode: str) -> None:
    ws = Workspace(cluster)
    plan = ws.plan(replace=[target], mode=mode)
    reduced, full = _both(ws, plan)
    assert reduced.ok == full.ok
    assert _failures(reduced) == _failures(full)
    assert reduced.edges == full.edges
    assert _failures(reduced, preexisting=True) == _failures(full, preexisting=True)
    if mode == "zero-downtime":
        assert full.ok, full.summary()
        if target == "ca.kubernetes":
            # The five workers collapse to representatives: far fewer checks, same verdict.
            assert reduced.represented > 0
            assert reduced.checks < full.checks
    elif target != "ca.front-proxy":
        # An immediate swap of a CA with declared edges breaks them; the reduced proof falls
        # back to the full one so that every broken host is named.
        assert not full.ok
        hosts = {f.client for f in full.failures} | {f.server for f in full.failures}
        assert hosts & {f"worker-{i}" for i in range(1, NODES - 2)} or target == "ca.etcd"


def test_a_host_whose_state_differs_is_proven_on_its_own(cluster: Path) -> None:
    """worker-4's kubelet cert is swapped for one signed by another CA (etcd's): its edge to
    the apiserver is broken before the plan. The reduced proof must see exactly what the full
    one sees, although worker-4 otherwise looks like every other worker."""
    ws = Workspace(cluster)
    state = ws.load_state(decrypt=True)
    victim = state.resources["cert.kubelet[worker-4]"]
    foreign = state.resources["cert.etcd-healthcheck-client[control-1]"]
    forged = attrs.evolve(victim, outputs={**victim.outputs, "cert": foreign.outputs["cert"],
                                           "signer_fingerprint":
                                           foreign.outputs["signer_fingerprint"]})
    # Its key goes with it, so the kubeconfig built from the pair stays consistent.
    state = attrs.evolve(
        state, resources={**state.resources, "cert.kubelet[worker-4]": forged},
        secrets={**state.secrets, "cert.kubelet[worker-4]":
                 state.secrets["cert.etcd-healthcheck-client[control-1]"]})
    plan = ws.plan(replace=["ca.kubernetes"])
    reduced, full = _both(ws, plan, state)
    assert full.preexisting, "the forged certificate must break worker-4's edge"
    assert any(f.client == "worker-4" for f in full.preexisting)
    assert _failures(reduced, preexisting=True) == _failures(full, preexisting=True)
    assert _failures(reduced) == _failures(full)


def test_symmetry_needs_a_plan_without_cross_host_builds(cluster: Path) -> None:
    """`_reduce` refuses when a kept change is built from a dropped one."""
    ws = Workspace(cluster)
    plan = ws.plan(replace=["ca.kubernetes"])
    state = ws.load_state(decrypt=True)
    pairs = trust.expand_edges(ws.config)
    classes = trust._representatives(plan, ws.config, state, pairs, [])
    assert classes is not None
    assert classes["worker-5"] == ("worker-1", "worker-2")
    assert classes["control-1"][0] == "control-1"
    dropped = next(c for c in plan.changes if c.host == "worker-5")
    keeper = next(c for c in plan.changes if c.host is None)
    needy = attrs.evolve(keeper, order_after=(*keeper.order_after, dropped.address))
    bad = attrs.evolve(plan, changes=tuple(needy if c is keeper else c for c in plan.changes))
    assert trust._reduce(bad, pairs, classes) is None
    assert trust._reduce(plan, pairs, classes) is not None


def test_the_baseline_reports_what_the_check_of_an_empty_plan_reports(cluster: Path) -> None:
    """`trust.baseline` builds the empty plan's report from the verdicts it already has; it
    must be the report `_check` gives for the single "before" view, broken edge included."""
    ws = Workspace(cluster)
    state = ws.load_state(decrypt=True)
    victim = state.resources["cert.kubelet[worker-2]"]
    foreign = state.resources["cert.etcd-healthcheck-client[control-1]"]
    forged = attrs.evolve(victim, outputs={**victim.outputs, "cert": foreign.outputs["cert"]})
    for current in (state, attrs.evolve(
            state, resources={**state.resources, "cert.kubelet[worker-2]": forged})):
        plan = ws.plan()
        known = trust.baseline(ws.config, current, ws.registry, plan.at)
        pairs = trust.expand_edges(ws.config)
        verdicts = trust._Verdicts(plan.at)
        views = [("before", trust._Views(current, ws.registry))]
        broken = [pairs[i] for i in known.broken]
        expected = trust._check("", views, pairs, broken, verdicts, len(pairs))
        assert known.current == expected
        assert bool(expected.preexisting) == (current is not state)
        # and what the full proof of an empty plan says (the mode is the plan's)
        assert trust.prove(plan, ws.config, current, ws.registry, symmetry=False) == \
            attrs.evolve(expected, mode=plan.mode)
