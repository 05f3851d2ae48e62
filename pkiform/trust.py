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

import hashlib
import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import attrs

from pkiform.address import Address
from pkiform.apply import Applier
from pkiform.errors import SecretKeyError, TrustProofError
from pkiform.model import Config, Host, TlsEdge
from pkiform.offload import Forked
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
    verified: int = 0  # distinct half-edge verifications run (the rest were memoized)
    # Pairs proven through a representative of their host's symmetry class, not one by one.
    represented: int = 0

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
            line = (f"trust: {self.edges} edges verified across {self.phases} "
                    f"phase{'s' if self.phases != 1 else ''} ({self.checks} checks")
            if self.represented:
                line += (f"; {self.represented} of them through a representative host of the "
                         "same shape")
            lines.append(line + ")")
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
            "verified": self.verified,
            "represented": self.represented,
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
        self._cache: dict[tuple[Address, str], bytes | None] = {}

    def value(self, address: Address, output: str) -> bytes | None:
        key = (address, output)
        try:
            return self._cache[key]
        except KeyError:
            pass
        record = self.state.get(str(address))
        if record is None:
            value = None
        elif record.kind == "kubeconfig":
            value = record.outputs["ca_bundle"].encode()
        else:
            value = self.registry[record.kind].output_value(record.outputs, {}, output)
        self._cache[key] = value
        return value


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
    input; client halves differ per client certificate. `prefetch` verifies a batch of
    distinct inputs on a thread pool (cryptography's verifier releases the GIL).
    """

    def __init__(self, at: datetime, known: Mapping[bytes, str | None] | None = None,
                 threads: int | None = None) -> None:
        self.at = at
        self.threads = threads or _VERIFY_THREADS
        self._server: dict[tuple[str, bytes, bytes], str | None] = {}
        self._client: dict[tuple[bytes, bytes], str | None] = {}
        # Verdicts at the same time from another process (`export`), by digest of the inputs.
        self._known = known or {}
        self.verified = 0

    @staticmethod
    def _digest(key: tuple[Any, ...]) -> bytes:
        # Names and PEM never contain NUL: the parts cannot run into each other.
        return hashlib.sha256(b"\0".join(
            part.encode() if isinstance(part, str) else part for part in key)).digest()

    def _known_verdict(self, target: dict[Any, str | None], key: tuple[Any, ...]) -> bool:
        if not self._known:
            return False
        digest = self._digest(key)
        if digest not in self._known:
            return False
        target[key] = self._known[digest]
        return True

    def export(self) -> dict[bytes, str | None]:
        """Every verdict so far, by digest of its inputs (small enough to send across)."""
        return {self._digest(key): verdict
                for table in (self._server, self._client) for key, verdict in table.items()}

    @staticmethod
    def _keys(pair: _Pair, client: _Views, server: _Views
              ) -> tuple[tuple[str, bytes, bytes] | None, tuple[bytes, bytes] | None]:
        server_key = client_key = None
        if pair.server_cert is not None and pair.client_trust is not None:
            chain = server.value(pair.server_cert, "chain")
            trust = client.value(pair.client_trust, "cert")
            if chain is not None and trust is not None:
                server_key = (pair.server_name, chain, trust)
        if pair.client_cert is not None and pair.server_client_ca is not None:
            chain = client.value(pair.client_cert, "chain")
            trust = server.value(pair.server_client_ca, "cert")
            if chain is not None and trust is not None:
                client_key = (chain, trust)
        return server_key, client_key

    def _verify_server(self, key: tuple[str, bytes, bytes]) -> str | None:
        return verify_server_chain(chain_pem=key[1], trust_pem=key[2], server_name=key[0],
                                   at=self.at)

    def _verify_client(self, key: tuple[bytes, bytes]) -> str | None:
        return verify_client_chain(chain_pem=key[0], trust_pem=key[1], at=self.at)

    def prefetch(self, items: Iterable[tuple[_Pair, _Views, _Views]]
                 ) -> list[tuple[Any, Any]]:
        """Verify what ``items`` need, in a batch; returns their keys (in order) for
        `check_keys`, so that a caller walking the same items does not look them up again."""
        servers: dict[tuple[str, bytes, bytes], None] = {}
        clients: dict[tuple[bytes, bytes], None] = {}
        keys = []
        for pair, client, server in items:
            server_key, client_key = both = self._keys(pair, client, server)
            keys.append(both)
            if server_key is not None and server_key not in self._server and \
                    not self._known_verdict(self._server, server_key):
                servers[server_key] = None
            if client_key is not None and client_key not in self._client and \
                    not self._known_verdict(self._client, client_key):
                clients[client_key] = None
        jobs: list[tuple[Callable[[Any], str | None], Any]] = [
            (self._verify_server, k) for k in servers] + [(self._verify_client, k) for k in clients]
        def run(batch: list[tuple[Callable[[Any], str | None], Any]]) -> list[str | None]:
            return [verify(key) for verify, key in batch]

        threads = self.threads if len(jobs) >= _PARALLEL_MIN else 1
        if threads == 1:
            results = run(jobs)
        else:
            # One contiguous slice per thread: a future per verification costs more than the
            # Python around each one.
            size = -(-len(jobs) // threads)
            with ThreadPoolExecutor(threads) as pool:
                parts = pool.map(run, [jobs[i:i + size] for i in range(0, len(jobs), size)])
                results = [result for part in parts for result in part]
        self.verified += len(jobs)
        for (verify, key), result in zip(jobs, results, strict=True):
            target: dict[Any, str | None] = (
                self._server if verify == self._verify_server else self._client)
            target[key] = result
        return keys

    def check_keys(self, keys: tuple[Any, Any]) -> list[str]:
        reasons = []
        server_key, client_key = keys
        if server_key is not None:
            if server_key not in self._server and \
                    not self._known_verdict(self._server, server_key):
                self._server[server_key] = self._verify_server(server_key)
                self.verified += 1
            if self._server[server_key]:
                reasons.append(f"server auth: {self._server[server_key]}")
        if client_key is not None:
            if client_key not in self._client and \
                    not self._known_verdict(self._client, client_key):
                self._client[client_key] = self._verify_client(client_key)
                self.verified += 1
            if self._client[client_key]:
                reasons.append(f"client auth: {self._client[client_key]}")
        return reasons


# Below this many distinct verifications a thread pool costs more than it saves.
_PARALLEL_MIN = 256
_VERIFY_THREADS = max(1, min(8, os.cpu_count() or 1))


# -- symmetry: hosts that are the same up to their name ---------------------------------------
#
# Every per-host instance is its declaration's table with {host.name}/{host.address}
# substituted and same-host references resolved to the host's own instance. Two hosts with
# the same declarations, groups, planned changes, trust-relevant state (who signed their
# certificates, which bundles they hold, where a rotation stands) and an unbroken baseline
# are therefore the same up to renaming, and every verdict on one holds for the other with the
# names swapped. The proof simulates and checks one representative per class (two, for pairs
# between different members) instead of all 5,000 kubelets. Any failure found that way is
# re-proven in full, so a report that names failures always names every host.

# Outputs that decide what a host's certificates chain to and what its trust holds. Anything
# else a record has (its own certificate, paths, serials) differs per host by construction.
_TRUST_OUTPUTS = ("signer", "signer_fingerprint", "intermediates", "ca_bundle", "rotation",
                  "active", "fingerprints")


def _record_shape(record: Any) -> Any:
    if record is None:
        return None
    outputs = record.outputs
    shape: list[Any] = [record.kind]
    for key in _TRUST_OUTPUTS:
        if key in outputs:
            shape.append((key, repr(outputs[key])))
    if record.kind == "ca":  # a per-host CA makes its host one of a kind
        shape.append(("generations", tuple(g.get("fingerprint") for g in
                                           outputs.get("generations", ()))))
    return tuple(shape)


def _host_of(address: Address, spec: Any) -> str | None:
    return address.host or (spec.host.name if spec is not None and spec.host else None)


def _representatives(plan: Plan, config: Config, state: State, pairs: list[_Pair],
                     broken: Iterable[_Pair]) -> dict[str, tuple[str, str | None]] | None:
    """Host → (first, second) member of its symmetry class; None when nothing collapses."""
    unique: set[str] = set()
    for pair in broken:  # a host with a broken edge is proven on its own
        unique.update(h for h in (pair.client_host, pair.server_host) if h)
    for edge in config.tls_edges:  # so is a host an edge names by its instance
        unique.update(ref.host for ref in (edge.client_cert, edge.client_trust, edge.server_cert,
                                           edge.server_client_ca)
                      if ref is not None and ref.host)
    shapes: dict[str, list[Any]] = defaultdict(list)
    records = state.resources
    for address, spec in config.resources.items():
        host = _host_of(address, spec)
        if host is not None:
            shapes[host].append((address.kind, address.name,
                                 _record_shape(records.get(str(address)))))
    for change in plan.changes:
        host = change.address.host or _host_of(change.address, change.spec)
        if host is not None:
            shapes[host].append(("change", change.kind, change.address.name,
                                 change.action, change.phase, change.step,
                                 change.outputs))
    classes: dict[Any, list[str]] = defaultdict(list)
    for name in sorted(config.hosts):
        host = config.hosts[name]
        if name in unique:
            key: Any = ("unique", name)
        else:
            # In config and plan order, not sorted: same-shaped hosts list the same things in
            # the same order, and hosts whose lists merely differ in order are only kept
            # apart (fewer collapse), never wrongly merged.
            key = (host.groups, tuple(shapes.get(name, ())))
        classes[key].append(name)
    if all(len(members) == 1 for members in classes.values()):
        return None
    result: dict[str, tuple[str, str | None]] = {}
    for members in classes.values():
        pick = (members[0], members[1] if len(members) > 1 else None)
        for name in members:
            result[name] = pick
    return result


def _reduce(plan: Plan, pairs: list[_Pair],
            classes: Mapping[str, tuple[str, str | None]]) -> tuple[Plan, list[_Pair]] | None:
    """The plan on representative hosts only, and the pairs that stand for all others."""
    kept_hosts = {h for pick in classes.values() for h in pick if h is not None}
    kept, dropped = [], set()
    for change in plan.changes:
        host = change.host
        if host is None or host in kept_hosts:
            kept.append(change)
        else:
            dropped.add(change.address)
    for change in kept:
        needs = {r.address for r in change.dependencies} | set(change.order_after)
        if needs & dropped:  # a shared resource built from a dropped one: no symmetry
            return None
    chosen = []
    existing = {(id(pair.edge), pair.client_host, pair.server_host) for pair in pairs}
    for pair in pairs:
        client, server = pair.client_host, pair.server_host
        want_client = classes[client][0] if client in classes else client
        want_server = classes[server][0] if server in classes else server
        if (client is not None and server is not None and client != server
                and classes.get(client) is not None
                and classes.get(client) == classes.get(server)):
            want_server = classes[server][1]
        if (id(pair.edge), want_client, want_server) not in existing:
            return None  # the pair has no image among the representatives: no symmetry
        if (client, server) == (want_client, want_server):
            chosen.append(pair)
    return attrs.evolve(plan, changes=tuple(kept)), chosen


@attrs.frozen
class Baseline:
    """The proof's look at the state before any plan: which pairs already fail, and what the
    proof of a plan with nothing to do reports.

    It depends only on the config, the state's public outputs and the time, not on the plan,
    so `start_baseline` computes it in a forked child while the plan is being made.
    """

    at: datetime
    pairs: int  # len(expand_edges(config)): a baseline of another config is not used
    # id() of the config object it was computed from: the same in a forked child, and unique
    # while the workspace holds that config. Lets an empty plan skip expanding the edges.
    config_id: int
    broken: tuple[int, ...]  # indices into expand_edges(config)
    current: ProofReport  # the report for an empty plan (its mode is the plan's)
    # The verdicts behind it by digest of their inputs, so that the proof of a plan does not
    # verify them again (empty when computed in the same process: the proof has them).
    verdicts: Mapping[bytes, str | None] = attrs.field(factory=dict, repr=False)


def baseline(config: Config, state: State, registry: Registry, at: datetime, *,
             threads: int | None = None) -> Baseline:
    """The `Baseline`, in a form to send to another process."""
    verdicts = _Verdicts(at, threads=threads)
    result = _baseline(expand_edges(config), state, registry, verdicts, id(config))
    return attrs.evolve(result, verdicts=verdicts.export())


def _baseline(pairs: list[_Pair], state: State, registry: Registry, verdicts: _Verdicts,
              config_id: int) -> Baseline:
    initial = _Views(state, registry)
    keys = verdicts.prefetch((pair, initial, initial) for pair in pairs)
    broken = [index for index, pair_keys in enumerate(keys) if verdicts.check_keys(pair_keys)]
    # The report of an empty plan, from the keys already looked up (not a second time).
    current = _check("", [("before", initial)], pairs, [pairs[i] for i in broken], verdicts,
                     len(pairs), keys=keys)
    return Baseline(verdicts.at, len(pairs), config_id, tuple(broken), current)


def start_baseline(config: Config, state: State | Callable[[], State], registry: Registry,
                   at: datetime) -> Forked[Baseline] | None:
    """`baseline` in a forked child (None where that is not possible; `prove` then computes
    it itself). ``state`` may be a function that loads it, called in the child."""
    # One verification thread: the parent keeps the other core busy planning meanwhile.
    return Forked.start(lambda: baseline(config, state() if callable(state) else state,
                                         registry, at, threads=1))


def prove(plan: Plan, config: Config, state: State, registry: Registry, *,
          symmetry: bool = True, known: Baseline | None = None) -> ProofReport:
    """``known``: the `Baseline` of this config and state at ``plan.at``, if it was computed
    ahead (by `start_baseline`); anything else is ignored and computed here."""
    if (plan.is_empty and known is not None and known.at == plan.at and known.pairs
            and known.config_id == id(config)):
        return attrs.evolve(known.current, mode=plan.mode)
    pairs = expand_edges(config)
    if not pairs:
        return ProofReport(0, len(plan.phases), 0, (), plan.mode, skipped="no tls edges declared")
    if known is None or known.at != plan.at or known.pairs != len(pairs):
        verdicts = _Verdicts(plan.at)
        known = _baseline(pairs, state, registry, verdicts, id(config))
    else:  # the baseline's verifications ran in the child: count them, do not repeat them
        verdicts = _Verdicts(plan.at, known=known.verdicts)
        verdicts.verified = known.current.verified
    if plan.is_empty:
        return attrs.evolve(known.current, mode=plan.mode)
    baseline_broken = [pairs[i] for i in known.broken]
    reduced = None
    if symmetry:
        classes = _representatives(plan, config, state, pairs, baseline_broken)
        reduced = _reduce(plan, pairs, classes) if classes is not None else None
    if reduced is not None:
        small_plan, chosen = reduced
        views = [(name, _Views(s, registry)) for name, s in simulate(small_plan, state, registry)]
        report = _check(plan.mode, views, chosen, baseline_broken, verdicts, len(pairs))
        if report.ok:
            return attrs.evolve(report, represented=len(pairs) - len(chosen))
        # Name every failing host, not just the representatives: prove again in full.
    views = [(name, _Views(s, registry)) for name, s in simulate(plan, state, registry)]
    return _check(plan.mode, views, pairs, baseline_broken, verdicts, len(pairs))


def _check(mode: str, views: list[tuple[str, _Views]], pairs: list[_Pair],
           baseline_broken: list[_Pair], verdicts: _Verdicts, total: int,
           keys: list[tuple[Any, Any]] | None = None) -> ProofReport:
    """``keys``: what `_Verdicts.prefetch` returned for exactly these pairs and views, if the
    caller has it already."""
    failures: list[EdgeFailure] = []
    preexisting: list[EdgeFailure] = []
    checks = 0
    broken = {id(pair) for pair in baseline_broken}
    boundaries = list(itertools.pairwise(views)) or [(views[0], views[0])]
    combos_of = []
    for (_, before), (phase, after) in boundaries:
        combos = [("before", before, "before", before), ("before", before, "after", after),
                  ("after", after, "before", before), ("after", after, "after", after)]
        combos_of.append((phase, combos[:1] if before is after else combos))
    if keys is None:
        keys = verdicts.prefetch((pair, c_view, s_view) for _, combos in combos_of
                                 for pair in pairs for _, c_view, _, s_view in combos)
    pending = iter(keys)
    for phase, combos in combos_of:
        seen: set[tuple[Any, ...]] = set()
        for pair in pairs:
            for c_label, _, s_label, _ in combos:  # the order prefetch was given
                checks += 1
                for reason in verdicts.check_keys(next(pending)):
                    marker = (pair.edge.name, pair.client_host, pair.server_host, phase, reason)
                    if marker in seen:
                        continue
                    seen.add(marker)
                    target = preexisting if id(pair) in broken else failures
                    target.append(EdgeFailure(
                        pair.edge.name, pair.client_host or "-", pair.server_host or "-",
                        phase if len(views) > 1 else "current",
                        f"client {c_label} / server {s_label}", reason))
    return ProofReport(total, max(1, len(views) - 1), checks, tuple(failures), mode,
                       preexisting=tuple(preexisting), verified=verdicts.verified)


def prove_plan(workspace: Any, plan: Plan) -> ProofReport:
    """Run the proof for a workspace's plan; refuse a zero-downtime plan that breaks an edge."""
    try:
        # Only a simulation signs anything; a no-op plan is proven on public outputs alone.
        state = workspace.load_state(decrypt=not plan.is_empty)
    except SecretKeyError as exc:
        workspace.cancel_baseline()
        return ProofReport(0, len(plan.phases), 0, (), plan.mode,
                           skipped=f"state key unavailable: {exc.message}")
    if state.is_empty:
        state = attrs.evolve(state, lineage=plan.lineage)
    report = prove(plan, workspace.config, state, workspace.registry,
                   known=workspace.take_baseline(plan.at))
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
