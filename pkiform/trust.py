"""The trust-edge proof: every declared TLS connection verifies across every phase boundary.

A plan is simulated end to end with the real providers against an in-memory copy of the state
and a transport that writes nowhere (keys are generated as ECDSA P-256 for speed: algorithms do
not change names, usages or chains). The state after each phase gives each resource's public
outputs. During phase k consumers restart one by one, so at any moment a client may hold the
view before or after the phase and so may the server: all four combinations must verify,
with cryptography's X.509 verifier, for serverAuth and the name the client dials, and for mTLS
for clientAuth against the server's client CA.

In zero-downtime mode a failing edge refuses the plan; with ``--rotation=immediate`` the broken
edges are reported as the expected outage.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from pkiform.address import Address
from pkiform.apply import Applier
from pkiform.errors import SecretKeyError, TrustProofError
from pkiform.model import Config, Host, TlsEdge
from pkiform.pki.keys import generate_private_key_pem
from pkiform.pki.verify import verify_client_chain, verify_server_chain
from pkiform.plan import Plan
from pkiform.provider import Action, Registry
from pkiform.state.model import State

SHADOW_KEY = "ecdsa-p256"


@attrs.frozen
class EdgeFailure:
    edge: str
    client: str
    server: str
    phase: str
    views: str  # "client before / server after"
    reason: str

    def describe(self) -> str:
        return (f"{self.edge} ({self.client} → {self.server}) during phase {self.phase} "
                f"[{self.views}]: {self.reason}")


@attrs.frozen
class ProofReport:
    edges: int  # concrete (client, server) pairs
    phases: int
    checks: int  # verifications performed
    failures: tuple[EdgeFailure, ...]
    mode: str
    skipped: str | None = None
    # Pairs already broken before the plan (e.g. expired certs): reported, never blamed on it.
    preexisting: tuple[EdgeFailure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        if self.skipped:
            return f"trust: not checked ({self.skipped})"
        lines = []
        if self.preexisting:
            lines.append(f"trust: {len(self.preexisting)} edge checks already fail before "
                         "this plan (not caused by it):")
            lines += [f"  ! {f.describe()}" for f in self.preexisting[:20]]
            if len(self.preexisting) > 20:
                lines.append(f"  … and {len(self.preexisting) - 20} more")
        if self.ok:
            lines.append(f"trust: {self.edges} edges verified across {self.phases} "
                         f"phase{'s' if self.phases != 1 else ''} ({self.checks} checks)")
            return "\n".join(lines)
        head = (f"trust: {len(self.failures)} broken edge checks of {self.checks} across "
                f"{self.phases} phases")
        if self.mode == "immediate":
            head += " — expected outage of an immediate rotation:"
        lines += [head] + [f"  ✗ {f.describe()}" for f in self.failures[:50]]
        if len(self.failures) > 50:
            lines.append(f"  … and {len(self.failures) - 50} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges,
            "phases": self.phases,
            "checks": self.checks,
            "ok": self.ok,
            "skipped": self.skipped,
            "failures": [attrs.asdict(f) for f in self.failures],
            "preexisting": [attrs.asdict(f) for f in self.preexisting],
        }


class _MemoryStore:
    """Just enough of `StateStore` for a simulated apply: nothing touches the disk."""

    def __init__(self, state: State) -> None:
        self.state = state

    def load(self, *, decrypt: bool = True) -> State:
        return self.state

    def exists(self) -> bool:
        return True

    def journal_append(self, *args: Any, **kwargs: Any) -> None:
        return None

    def journal_sync(self) -> None:
        return None

    def commit(self, state: State) -> State:
        return state


class _NullTransport:
    def __init__(self, host: Host) -> None:
        self.host = host

    def write_file(self, *args: Any, **kwargs: Any) -> None:
        return None

    def remove_file(self, path: str) -> bool:
        return True

    def restart_service(self, *args: Any, **kwargs: Any) -> Any:
        from pkiform.transport.base import RestartOutcome

        return RestartOutcome(False, "simulated")

    def close(self) -> None:
        return None


class _ShadowKeys:
    def __init__(self, requests: Mapping[Address, list[str]]) -> None:
        self._cache: list[bytes] = []

    def take(self, address: Address, algorithm: str) -> bytes:
        return generate_private_key_pem(SHADOW_KEY)

    def close(self) -> None:
        return None


def simulate(plan: Plan, state: State, registry: Registry) -> list[tuple[str, State]]:
    """The state before the plan and after each of its phases (public outputs are real)."""
    snapshots: list[tuple[str, State]] = [("before", state)]
    applier = Applier(
        plan, _MemoryStore(state), registry, _NullTransport,  # type: ignore[arg-type]
        parallelism=1, now=plan.at, key_source=_ShadowKeys,
        on_phase_end=lambda name, s: snapshots.append((name, s)),
    )
    result = applier.run()
    if result.failed:
        change, reason = result.failed[0]
        raise TrustProofError(f"simulating the plan failed at {change.address}: {reason}")
    return snapshots


class _Views:
    """Public values of one snapshot: chains, trust bundles, kubeconfig CA data."""

    def __init__(self, state: State, registry: Registry) -> None:
        self.state = state
        self.registry = registry
        self._cache: dict[tuple[str, str], bytes | None] = {}

    def value(self, address: Address, output: str) -> bytes | None:
        key = (str(address), output)
        if key not in self._cache:
            record = self.state.get(str(address))
            if record is None:
                self._cache[key] = None
            elif record.kind == "kubeconfig":
                self._cache[key] = record.outputs["ca_bundle"].encode()
            else:
                self._cache[key] = self.registry[record.kind].output_value(
                    record.outputs, {}, output)
        return self._cache[key]


def _instances(index: Mapping[Address, dict[str | None, Address]],
               base: Address | None) -> dict[str | None, Address]:
    if base is None:
        return {}
    if base.host is not None:
        return {base.host: base}
    return index.get(base, {})


def _hosts_of(*groups: dict[str | None, Address]) -> list[str | None]:
    hosts: set[str | None] = set()
    for group in groups:
        hosts |= set(group)
    if len(hosts) > 1:
        hosts.discard(None)
    return sorted(hosts, key=lambda h: h or "")


def _pick(group: dict[str | None, Address], host: str | None) -> Address | None:
    if not group:
        return None
    if None in group:
        return group[None]
    return group.get(host)


@attrs.frozen
class _Pair:
    edge: TlsEdge
    client_host: str | None
    server_host: str | None
    client_cert: Address | None
    client_trust: Address | None
    server_cert: Address | None
    server_client_ca: Address | None
    server_name: str


def expand_edges(config: Config) -> list[_Pair]:
    pairs: list[_Pair] = []
    index: dict[Address, dict[str | None, Address]] = defaultdict(dict)
    for address in config.resources:
        index[Address(address.kind, address.name)][address.host] = address
    for edge in config.tls_edges:
        client_cert = _instances(index, edge.client_cert)
        client_trust = _instances(index, edge.client_trust)
        server_cert = _instances(index, edge.server_cert)
        server_ca = _instances(index, edge.server_client_ca)
        for client_host, server_host in itertools.product(
            _hosts_of(client_cert, client_trust), _hosts_of(server_cert, server_ca)
        ):
            if edge.pairs == "same-host" and client_host != server_host and None not in (
                client_host, server_host
            ):
                continue
            host = config.hosts.get(server_host or "")
            name = edge.server_name
            if host is not None:
                name = name.replace("{server.address}", host.address).replace(
                    "{server.name}", host.name)
            pairs.append(_Pair(
                edge, client_host, server_host,
                _pick(client_cert, client_host), _pick(client_trust, client_host),
                _pick(server_cert, server_host), _pick(server_ca, server_host), name,
            ))
    return pairs


class _Verdicts:
    """Verification results memoized per half-edge on the exact bytes involved.

    Thousands of pairs share the same server chain and client trust (every kubelet dials the
    same apiserver with the same CA bundle), so the server half is verified once per distinct
    input; client halves differ per client certificate.
    """

    def __init__(self, at: datetime) -> None:
        self.at = at
        self._server: dict[tuple[str, bytes, bytes], str | None] = {}
        self._client: dict[tuple[bytes, bytes], str | None] = {}

    def check(self, pair: _Pair, client: _Views, server: _Views) -> list[str]:
        reasons = []
        if pair.server_cert is not None and pair.client_trust is not None:
            chain = server.value(pair.server_cert, "chain")
            trust = client.value(pair.client_trust, "cert")
            if chain is not None and trust is not None:
                key = (pair.server_name, chain, trust)
                if key not in self._server:
                    self._server[key] = verify_server_chain(
                        chain_pem=chain, trust_pem=trust, server_name=pair.server_name,
                        at=self.at)
                if self._server[key]:
                    reasons.append(f"server auth: {self._server[key]}")
        if pair.client_cert is not None and pair.server_client_ca is not None:
            chain = client.value(pair.client_cert, "chain")
            trust = server.value(pair.server_client_ca, "cert")
            if chain is not None and trust is not None:
                ckey = (chain, trust)
                if ckey not in self._client:
                    self._client[ckey] = verify_client_chain(chain_pem=chain, trust_pem=trust,
                                                             at=self.at)
                if self._client[ckey]:
                    reasons.append(f"client auth: {self._client[ckey]}")
        return reasons


def prove(plan: Plan, config: Config, state: State, registry: Registry) -> ProofReport:
    pairs = expand_edges(config)
    if not pairs:
        return ProofReport(0, len(plan.phases), 0, (), plan.mode, skipped="no tls edges declared")
    snapshots = simulate(plan, state, registry) if not plan.is_empty else [("before", state)]
    views = [(name, _Views(s, registry)) for name, s in snapshots]
    failures: list[EdgeFailure] = []
    preexisting: list[EdgeFailure] = []
    checks = 0
    verdicts = _Verdicts(plan.at)
    initial = views[0][1]
    baseline_broken = {id(pair) for pair in pairs if verdicts.check(pair, initial, initial)}
    boundaries = list(itertools.pairwise(views)) or [(views[0], views[0])]
    for (_, before), (phase, after) in boundaries:
        combos = [("before", before, "before", before), ("before", before, "after", after),
                  ("after", after, "before", before), ("after", after, "after", after)]
        if before is after:
            combos = combos[:1]
        seen: set[tuple[Any, ...]] = set()
        for pair in pairs:
            for c_label, c_view, s_label, s_view in combos:
                checks += 1
                for reason in verdicts.check(pair, c_view, s_view):
                    marker = (pair.edge.name, pair.client_host, pair.server_host, phase, reason)
                    if marker in seen:
                        continue
                    seen.add(marker)
                    target = preexisting if id(pair) in baseline_broken else failures
                    target.append(EdgeFailure(
                        pair.edge.name, pair.client_host or "-", pair.server_host or "-",
                        phase if len(views) > 1 else "current",
                        f"client {c_label} / server {s_label}", reason))
    return ProofReport(len(pairs), max(1, len(views) - 1), checks, tuple(failures), plan.mode,
                       preexisting=tuple(preexisting))


def prove_plan(workspace: Any, plan: Plan) -> ProofReport:
    """Run the proof for a workspace's plan; refuse a zero-downtime plan that breaks an edge."""
    try:
        # Only a simulation signs anything; a no-op plan is proven on public outputs alone.
        state = workspace.store.load(decrypt=not plan.is_empty)
    except SecretKeyError as exc:
        return ProofReport(0, len(plan.phases), 0, (), plan.mode,
                           skipped=f"state key unavailable: {exc.message}")
    if state.is_empty:
        state = attrs.evolve(state, lineage=plan.lineage)
    report = prove(plan, workspace.config, state, workspace.registry)
    if not report.ok and plan.mode != "immediate" and _rotates(plan):
        first = report.failures[0]
        raise TrustProofError(
            f"refusing the plan: TLS edge {first.describe()}"
            + (f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""),
            hint="fix the trust configuration, or accept the outage explicitly with "
            "--rotation=immediate",
        )
    return report


def _rotates(plan: Plan) -> bool:
    return any(c.action in (Action.REPLACE, Action.UPDATE, Action.CREATE, Action.DELETE)
               for c in plan.changes)
