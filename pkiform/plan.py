"""Planning: config + state (+ what refresh observed) → a `Plan`, a plain value.

The planner walks the resource graph in dependency order once per phase. Every resource
exposes named outputs (a CA's ``cert`` trust bundle, its ``signing`` identity, a file's
``content``); the state records a digest per output and, per resource, the digests of the
dependency outputs it was built from. A resource changes when its own inputs changed, when a
provider check says so (expiry, drift), when it was asked to be replaced, or when an output
it depends on changes earlier in the same walk. That last rule is the whole cascade: nothing
about certificates is special-cased here.

A replacement can be phased: a provider may split it into steps (a CA: trust both, reissue,
retire), each in its own phase and each changing only some of its outputs, so dependents
react in the phase where what they use actually changes. The state records a rotation's
progress, so an interrupted one resumes from its phase.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from pkiform import graph as dag
from pkiform.address import Address, Ref
from pkiform.errors import DependencyCycleError, PlanError
from pkiform.model import Config, Host, ResourceSpec
from pkiform.provider import (
    ALL_OUTPUTS,
    PHASE_DOCS,
    PHASES,
    Action,
    Decision,
    Observation,
    PlanRequest,
    Provider,
    Registry,
    ReplaceStep,
)
from pkiform.state.model import State

_NOOP = Decision.noop()
ROTATION_KEY = "rotation"  # in a resource's public outputs while a phased replace is under way
SINGLE_PHASE = "apply"


@attrs.frozen
class Change:
    address: Address
    action: Action
    phase: str
    reasons: tuple[str, ...]
    kind: str
    step: str | None = None
    outputs: tuple[str, ...] = ()
    spec: ResourceSpec | None = None  # what to build; None for deletes
    dependencies: tuple[Ref, ...] = ()
    order_after: tuple[Address, ...] = ()  # depends_on: ordering without data
    summary: str = ""  # e.g. "/etc/kubernetes/pki/ca.crt on control-1"
    rolling: str | None = None  # group key for rolling restarts
    rolling_width: int = 1  # max_unavailable: members restarting at once
    steps_total: tuple[str, ...] = ()  # every step of a phased replace, for the state record

    @property
    def host(self) -> str | None:
        return self.address.host or (self.spec.host.name if self.spec and self.spec.host else None)


@attrs.frozen
class PhaseInfo:
    name: str
    description: str
    outside: tuple[str, ...] = ()


@attrs.frozen
class Plan:
    changes: tuple[Change, ...]
    phases: tuple[PhaseInfo, ...]
    lineage: str
    serial: int
    state_hash: str
    mode: str
    at: datetime
    created: datetime
    config_path: str
    hosts: Mapping[str, Host] = attrs.field(factory=dict)
    notes: tuple[str, ...] = ()
    proof: Any = None  # trust.ProofReport, attached by the caller that runs the proof

    @property
    def is_empty(self) -> bool:
        return not any(c.action is not Action.NOOP for c in self.changes)

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for change in self.changes:
            result[change.action.value] = result.get(change.action.value, 0) + 1
        return result

    def in_phase(self, phase: str) -> list[Change]:
        return [c for c in self.changes if c.phase == phase]


def expand_replace(requests: Iterable[str], config: Config, state: State) -> set[Address]:
    """``--replace`` arguments → instance addresses; a per-host base names every instance."""
    result: set[Address] = set()
    known = set(config.resources)
    for text in requests:
        target = Address.parse(text)
        if target in known:
            result.add(target)
            continue
        instances = {a for a in known if a.base == target and target.host is None}
        if not instances:
            raise PlanError(
                f"--replace {text}: no such resource in the configuration",
                hint="see `pkiform state list` for addresses",
            )
        result |= instances
    return result


_VERBS = {
    Action.CREATE: "created",
    Action.UPDATE: "updated",
    Action.REPLACE: "replaced",
    Action.DELETE: "deleted",
    Action.RESTART: "restarted",
    Action.NOOP: "unchanged",
}


def _verb(action: Action) -> str:
    return _VERBS[action]


@attrs.frozen(eq=False)
class ResourceGraph:
    """A config's dependencies and its deterministic walk order (dependencies first)."""

    refs: Mapping[Address, tuple[Ref, ...]]  # the outputs each resource is built from
    requires: Mapping[Address, tuple[Address, ...]]  # refs' resources + depends_on
    order: tuple[Address, ...]

    def to_networkx(self) -> Any:
        return dag.build(self.order, self.requires)


# One analysis per (config object, registry): the loader's cycle check and the planner share it.
_GRAPHS: weakref.WeakKeyDictionary[Config, tuple[Registry, ResourceGraph]] = (
    weakref.WeakKeyDictionary()
)


def resource_graph(config: Config, registry: Registry) -> ResourceGraph:
    """Dependencies and order of ``config``'s resources; `DependencyCycleError` if none exists."""
    cached = _GRAPHS.get(config)
    if cached is not None and cached[0] is registry:
        return cached[1]
    refs: dict[Address, tuple[Ref, ...]] = {}
    requires: dict[Address, tuple[Address, ...]] = {}
    providers = {kind: registry[kind] for kind in {a.kind for a in config.resources}}
    for address, spec in config.resources.items():
        own = tuple(providers[address.kind].dependencies(spec))
        refs[address] = own
        # Deduplicated in a fixed order (the walk order does not depend on it).
        requires[address] = tuple(dict.fromkeys(
            [r.address for r in own] + list(spec.get("depends_on") or ())))
    order = dag.lexicographic_order(config.resources, requires, key=_sort_key)
    if order is None:
        cycle = dag.find_cycle(dag.build(config.resources, requires))
        assert cycle is not None  # Kahn's walk stopped short: there is one
        raise DependencyCycleError(cycle, file=config.resources[cycle[0]].origin)
    result = ResourceGraph(refs, requires, tuple(order))
    _GRAPHS[config] = (registry, result)
    return result


class Planner:
    def __init__(self, config: Config, state: State, registry: Registry) -> None:
        self.config = config
        self.state = state
        self.registry = registry
        analysis = resource_graph(config, registry)
        self.dependencies: Mapping[Address, tuple[Ref, ...]] = analysis.refs
        self.order: tuple[Address, ...] = analysis.order
        self._analysis = analysis
        # Looked up several times per resource per pass: once each.
        self._providers = {kind: registry[kind] for kind in {a.kind for a in config.resources}}
        self._priors = {address: state.get(str(address)) for address in self.order}
        self._step_cache: dict[tuple[Address, str], Sequence[ReplaceStep]] = {}

    @property
    def graph(self) -> Any:
        """The dependency graph as networkx (edges dependency → dependent), for display."""
        return self._analysis.to_networkx()

    def provider(self, address: Address) -> Provider:
        return self._providers.get(address.kind) or self.registry[address.kind]

    def _replace_steps(self, address: Address, mode: str) -> Sequence[ReplaceStep]:
        key = (address, mode)
        steps = self._step_cache.get(key)
        if steps is None:
            steps = self._step_cache[key] = tuple(
                self.provider(address).replace_steps(self.config.resources[address], mode))
        return steps

    def _steps(
        self, replace: set[Address], mode: str
    ) -> tuple[dict[Address, list[ReplaceStep]], dict[Address, tuple[str, ...]], list[str]]:
        """Per resource, the replace steps still to run (new requests and resumed ones)."""
        pending: dict[Address, list[ReplaceStep]] = {}
        all_steps: dict[Address, tuple[str, ...]] = {}
        notes: list[str] = []
        for address in self.order:
            prior = self._priors[address]
            rotation = prior.outputs.get(ROTATION_KEY) if prior else None
            if not rotation and address not in replace:
                continue
            steps = list(self._replace_steps(address, mode))
            if rotation and address not in replace:
                by_name = {s.name: s for s in self._replace_steps(
                    address, rotation.get("mode", mode))}
                names = list(rotation["steps"])
                done = int(rotation["done"])
                remaining = [by_name[n] for n in names[done:] if n in by_name]
                if remaining:
                    pending[address] = remaining
                    all_steps[address] = tuple(names)
                    notes.append(
                        f"{address}: resuming an interrupted rotation at phase "
                        f"{remaining[0].phase} (step {done + 1} of {len(names)})"
                    )
            elif address in replace and prior is not None:
                if rotation:
                    notes.append(f"{address}: an unfinished rotation is restarted from the top")
                pending[address] = steps
                all_steps[address] = tuple(s.name for s in steps)
        return pending, all_steps, notes

    def _forced_rotations(
        self, replace: set[Address], mode: str, now: datetime, renew: int
    ) -> dict[Address, tuple[str, ...]]:
        """Rotatable resources whose own checks demand a new one (expiry, changed subject).

        These go through the same phased steps as ``--replace``: an expiring CA is rotated
        without downtime, not swapped in one step.
        """
        forced: dict[Address, tuple[str, ...]] = {}
        for address in self.order:
            prior = self._priors[address]
            if address in replace or prior is None or prior.outputs.get(ROTATION_KEY):
                continue
            if len(self._replace_steps(address, mode)) <= 1:
                continue
            spec = self.config.resources[address]
            provider = self.provider(address)
            decision = provider.plan(PlanRequest(
                spec=spec, prior=prior, changed_dependencies={}, now=now,
                renew_before_days=int(spec.get("renew_before_days") or renew)))
            if decision.action is Action.REPLACE:
                forced[address] = decision.reasons
        return forced

    def plan(
        self,
        *,
        replace: Iterable[str] = (),
        mode: str = "zero-downtime",
        now: datetime | None = None,
        observations: Mapping[Address, Observation] | None = None,
        state_hash: str = "",
        renew_before_days: int | None = None,
    ) -> Plan:
        now = now or datetime.now(UTC)
        observations = observations or {}
        replace_set = expand_replace(replace, self.config, self.state)
        renew = (
            renew_before_days
            if renew_before_days is not None
            else self.config.settings.renew_before_days
        )
        auto = self._forced_rotations(replace_set, mode, now, renew)
        pending, all_steps, notes = self._steps(replace_set | set(auto), mode)
        multi = any(s.phase != SINGLE_PHASE for steps in pending.values() for s in steps)
        # A phased plan walks every phase; changes outside a rotation (creates, config edits,
        # leftovers of an interrupted phase) go in the first, so they land before the next
        # rotation step relies on them. Empty phases are dropped at the end.
        phases = [SINGLE_PHASE]
        if multi:
            # Resuming at a later step: leftovers of the interrupted phase are finished in that
            # phase (the one before the next step), not relabelled as an earlier one.
            earliest = min(PHASES.index(s.phase) for steps in pending.values() for s in steps
                           if s.phase in PHASES)
            phases = list(PHASES[max(0, earliest - 1):])

        priors = self._priors
        resources = self.config.resources
        providers = self._providers
        # "addr:output" → the digest it will have, for outputs this plan changes (a token of
        # the change, see below); every other output keeps the digest the state has.
        tokens: dict[str, str] = {}
        causes: dict[str, str] = {}
        def state_digest(ref: Ref) -> str | None:
            record = priors.get(ref.address)
            return record.digests.get(ref.output) if record is not None else None

        # One row per resource in walk order with everything every phase needs, so the walk
        # (a CA rotation at 5,000 nodes: 3 phases × 25,000 resources) indexes lists instead
        # of hashing addresses a dozen times per resource and phase.
        rows = []
        for address in self.order:
            spec = resources[address]
            refs = tuple((ref, str(ref), state_digest(ref)) for ref in self.dependencies[address])
            rows.append((address, spec, providers[address.kind], refs, pending.get(address),
                         priors[address], int(spec.get("renew_before_days") or renew)))
        exists = [row[5] is not None for row in rows]
        # What each resource was built from ("addr:output" → digest): the state's record,
        # unless this plan rebuilds it.
        recorded: list[Mapping[str, str] | None] = [None] * len(rows)
        # What a change carries that does not depend on the phase, made once per resource.
        facts: list[_Facts | None] = [None] * len(rows)
        all_outputs: dict[str, tuple[str, ...]] = {}
        changes: list[Change] = []
        outside: dict[str, list[str]] = {p: [] for p in phases}
        for index, phase in enumerate(phases):
            first = index == 0
            for i, (address, spec, provider, refs, steps, prior, renew_days) in enumerate(rows):
                decision = _NOOP
                step_name: str | None = None
                if not exists[i]:
                    if first:
                        # Some kinds are not "created" (a service is only ever restarted).
                        create = getattr(provider, "create_action", Action.CREATE)
                        decision = Decision(create, ("not in state",), ALL_OUTPUTS)
                else:
                    for step in steps or ():
                        # A single-step replace joins the first phase of a phased plan.
                        step_phase = phases[0] if step.phase == SINGLE_PHASE else step.phase
                        if step_phase == phase:
                            if address in replace_set:
                                reason = "replacement requested (--replace)"
                            elif address in auto:
                                reason = "; ".join(auto[address])
                            else:
                                reason = "resuming interrupted rotation"
                            decision = decision.merge(
                                Decision(step.action, (f"{reason}: {step.description}",),
                                         step.outputs, step.name)
                            )
                            step_name = step.name
                    seen = recorded[i]
                    if seen is None:
                        seen = prior.deps if prior is not None else {}
                    changed = {
                        ref: causes.get(key) or f"{ref.address} changed"
                        for ref, key, base in refs
                        if seen.get(key) != tokens.get(key, base)
                    }
                    if changed or first:
                        # A resource under a phased replace is not re-checked against its
                        # own inputs: its steps already are the change.
                        check_self = first and steps is None
                        request = PlanRequest(
                            spec=spec,
                            prior=prior if check_self else None,
                            changed_dependencies=changed,
                            now=now,
                            renew_before_days=renew_days,
                            observation=observations.get(address) if check_self else None,
                        )
                        decision = decision.merge(provider.plan(request))
                if decision.action is Action.NOOP:
                    continue
                exists[i] = True
                known = facts[i]
                if known is None:
                    known = facts[i] = _Facts.of(spec)
                if decision.outputs == ALL_OUTPUTS:
                    outputs = all_outputs.get(address.kind)
                    if outputs is None:
                        outputs = all_outputs[address.kind] = tuple(sorted(provider.outputs))
                else:
                    outputs = tuple(sorted(decision.outputs))
                cause = f"{address} {_VERBS[decision.action]}"
                if multi and step_name is not None:
                    step_info = next((s for s in steps or () if s.name == step_name), None)
                    if step_info is not None:
                        # "ca.etcd replaced (reissue: new CA becomes the active one)"
                        cause = f"{address} replaced ({phase}: {step_info.description})"
                text = str(address)
                for output in outputs:
                    key = f"{text}:{output}"
                    # A digest not known until apply: unique per resource, output and phase,
                    # so it never equals a recorded digest and dependents see the change.
                    tokens[key] = f"(after {phase}: {key})"
                    causes[key] = cause
                recorded[i] = {key: tokens.get(key, base) or "" for _, key, base in refs}
                changes.append(
                    Change(
                        address=address,
                        action=decision.action,
                        phase=phase,
                        reasons=decision.reasons,
                        kind=address.kind,
                        step=step_name,
                        outputs=outputs,
                        spec=spec,
                        dependencies=self.dependencies[address],
                        order_after=known.order_after,
                        summary=known.summary,
                        rolling=known.rolling,
                        rolling_width=known.rolling_width,
                        steps_total=all_steps.get(address, ()),
                    )
                )
                if decision.action is Action.CREATE:
                    continue  # what to do outside pkiform concerns replacements only
                notes_for = known.outside
                extra = getattr(provider, "outside_notes", None)
                if extra is not None:
                    notes_for = {**notes_for, phase: [*notes_for.get(phase, ()),
                                                      *extra(spec, decision)]}
                for note in notes_for.get(phase, ()):
                    if note not in outside[phase]:
                        outside[phase].append(note)

        changes = self._deletes(phases[0]) + changes
        for address in sorted(pending):
            explain = getattr(self.provider(address), "rotation_notes", None)
            if explain is not None and len(pending[address]) > 1:
                notes.extend(explain(self.config.resources[address]))
        rotated = sorted(
            str(a) for a in pending
            if len(self._replace_steps(a, "zero-downtime")) > 1
        )
        if mode == "immediate" and rotated:
            # Peers of a rolling group (etcd) cannot talk across an immediate CA swap: a
            # one-by-one restart would wait forever for the first member's health. Restart
            # every member together instead.
            changes = [attrs.evolve(c, rolling=None) if c.rolling else c for c in changes]
            notes.append(
                "immediate rotation: rolling groups restart all members at once (a member "
                "cannot become healthy while its peers still trust the old CA)")
            notes.append(
                f"immediate rotation of {', '.join(rotated)}: TLS connections between components "
                "break from the first restart until the last one (peers trust different CAs); "
                "use it only for throwaway clusters")
        used = {c.phase for c in changes}
        infos = tuple(
            PhaseInfo(p, PHASE_DOCS.get(p, p), tuple(outside.get(p, ())))
            for p in phases if p in used or len(phases) == 1
        )
        return Plan(
            changes=tuple(changes),
            phases=infos,
            lineage=self.state.lineage,
            serial=self.state.serial,
            state_hash=state_hash,
            mode=mode,
            at=now,
            created=datetime.now(UTC),
            config_path=self.config.path,
            hosts=dict(self.config.hosts),
            notes=tuple(notes),
        )

    def _deletes(self, phase: str) -> list[Change]:
        """State records with no config: delete dependents first (reverse recorded deps)."""
        declared = {str(a) for a in self.config.resources}
        gone = {
            Address.parse(a): r
            for a, r in self.state.resources.items()
            if a not in declared
        }
        if not gone:
            return []
        deps = {
            address: {Ref.parse(ref).address for ref in record.deps} & set(gone)
            for address, record in gone.items()
        }
        graph = dag.build(gone, deps)
        order = list(reversed(dag.topological_order(graph)))
        return [
            Change(
                address=address,
                action=Action.DELETE,
                phase=phase,
                reasons=("not in config",),
                kind=gone[address].kind,
                summary=_summary_from_state(gone[address].outputs),
                # A resource is deleted only after everything that was built from it.
                order_after=tuple(sorted(graph.successors(address))),
            )
            for address in order
        ]


@attrs.frozen
class _Facts:
    """The parts of a resource's change that are the same in every phase."""

    order_after: tuple[Address, ...]
    summary: str
    rolling: str | None
    rolling_width: int
    outside: Mapping[str, Any]

    @classmethod
    def of(cls, spec: ResourceSpec) -> _Facts:
        return cls(tuple(spec.get("depends_on") or ()), _summary(spec), _rolling_key(spec),
                   int(spec.get("max_unavailable") or 1), spec.get("outside") or {})


def _sort_key(address: Address) -> tuple[str, str, str]:
    return address.sort_key


def _summary(spec: ResourceSpec) -> str:
    path = spec.get("path")
    if path and spec.host:
        return f"{path} on {spec.host.name}"
    unit = spec.get("unit")
    if unit and spec.host:
        return f"{unit} on {spec.host.name}"
    return ""


def _summary_from_state(outputs: Mapping[str, Any]) -> str:
    if outputs.get("path") and outputs.get("host"):
        return f"remove {outputs['path']} on {outputs['host']}"
    return ""


def _rolling_key(spec: ResourceSpec) -> str | None:
    if spec.get("max_unavailable") and spec.address.host:
        return str(spec.address.base)
    return None


def make_plan(
    config: Config,
    state: State,
    registry: Registry,
    **options: Any,
) -> Plan:
    return Planner(config, state, registry).plan(**options)
