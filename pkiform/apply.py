"""Apply: carry out a `Plan`, step by step, persisting the state after every step.

The order comes from the plan alone (its changes and their dependencies), never from the
config. Phases run one after another; inside a phase, changes run as soon as everything they
depend on is done, up to ``parallelism`` at a time (transports are I/O bound), except members
of a rolling group, which run one at a time in host order. Keys are generated ahead in a
process pool, since keygen is the only CPU-heavy work.

A failed change skips its dependents; independent branches go on. If anything in a phase
failed, later phases are not started: a rotation must never reissue leaves before every
consumer trusts the new CA. The state records each completed step (journal), so the next
apply resumes where this one stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import heapq
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from pkiform import graph as dag
from pkiform.address import Address, Ref
from pkiform.errors import PkiformError, StalePlanError
from pkiform.model import Host
from pkiform.plan import ROTATION_KEY, Change, Plan
from pkiform.provider import Action, ApplyRequest, Registry, ResourceResult
from pkiform.state.model import ResourceState, State
from pkiform.state.store import StateStore


@attrs.frozen
class Event:
    kind: str  # phase, start, done, failed, skipped, notice, finished
    message: str = ""
    change: Change | None = None
    phase: str | None = None
    duration: float = 0.0


Hook = Callable[[Event], None]


@attrs.frozen
class ApplyResult:
    done: tuple[Change, ...]
    failed: tuple[tuple[Change, str], ...]
    skipped: tuple[tuple[Change, str], ...]
    state: State
    duration: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def check_plan_current(plan: Plan, store: StateStore) -> None:
    """A saved plan applies only to the exact state it was made against (hash, not serial)."""
    current = store.content_hash()
    if current != plan.state_hash:
        raise StalePlanError(
            "the saved plan was made against another state "
            f"(plan: lineage {plan.lineage} serial {plan.serial}; state changed since)",
            hint="run `pkiform plan` again and apply the new plan",
        )


def _die_with_parent(parent: int) -> None:
    """Keygen workers must not outlive a killed apply (they would hold its pipes open)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers end when their queue closes
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _generate_key(algorithm: str) -> bytes:
    from pkiform.pki.keys import generate_private_key_pem

    return generate_private_key_pem(algorithm)


class KeySource:
    """Private keys prefetched in a process pool, handed out per address in request order."""

    def __init__(self, requests: Mapping[Address, list[str]], workers: int | None) -> None:
        self._pool: cf.ProcessPoolExecutor | None = None
        self._futures: dict[Address, deque[tuple[str, cf.Future[bytes]]]] = defaultdict(deque)
        total = sum(len(v) for v in requests.values())
        workers = workers if workers is not None else (os.cpu_count() or 1)
        if total >= 4 and workers > 1:
            # The default fork context, and the pool is filled here, before apply starts its
            # threads: workers forked later from a threaded process could inherit pipes of a
            # subprocess another thread is starting. (forkserver was tried: its server and
            # workers outlive a SIGKILLed apply; spawn re-imports the CLI's __main__.)
            self._pool = cf.ProcessPoolExecutor(max_workers=workers,
                                                initializer=_die_with_parent,
                                                initargs=(os.getpid(),))
            # Submit in plan order, but chunked so a pool worker amortises IPC over a few keys.
            for address, algorithms in requests.items():
                for algorithm in algorithms:
                    self._futures[address].append(
                        (algorithm, self._pool.submit(_generate_key, algorithm))
                    )

    def take(self, address: Address, algorithm: str) -> bytes:
        queue = self._futures.get(address)
        if queue:
            for index, (wanted, future) in enumerate(queue):
                if wanted == algorithm:
                    del queue[index]
                    return future.result()
        return _generate_key(algorithm)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _InlinePool:
    """parallelism = 1 (the proof's simulation): run each step at submit, no threads."""

    def __init__(self, **_: Any) -> None:
        return None

    def __enter__(self) -> _InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(function(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future


class _Context:
    """The `ApplyContext` a provider sees while applying one change."""

    def __init__(self, engine: Applier, change: Change) -> None:
        self._engine = engine
        self._change = change
        self.now = engine.now
        self.hosts = engine.plan.hosts

    def value(self, ref: Ref) -> bytes:
        return self._engine.output_value(ref)

    def private_key(self, address: Address, algorithm: str) -> bytes:
        return self._engine.keys.take(address, algorithm)

    def host_transport(self, host: Host) -> Any:
        return self._engine.transport(host)

    def is_secret(self, ref: Ref) -> bool:
        record = self._engine.record(str(ref.address))
        kind = record.kind if record is not None else ref.address.kind
        info = self._engine.registry[kind].outputs.get(ref.output)
        return bool(info and info.secret)


def digest_of(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


class Applier:
    def __init__(
        self,
        plan: Plan,
        store: StateStore,
        registry: Registry,
        transport_factory: Callable[[Host], Any],
        *,
        hooks: tuple[Hook, ...] = (),
        parallelism: int = 10,
        keygen_workers: int | None = None,
        now: datetime | None = None,
        key_source: Callable[[Mapping[Address, list[str]]], Any] | None = None,
        on_phase_end: Callable[[str, State], None] | None = None,
    ) -> None:
        self.plan = plan
        self.store = store
        self.registry = registry
        self.transport_factory = transport_factory
        self.hooks = hooks
        self.parallelism = max(1, parallelism)
        self.keygen_workers = keygen_workers
        self.now = now or datetime.now(UTC)
        self._transports: dict[str, Any] = {}
        self._transport_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._base: State = State.empty()
        self._resources: dict[str, ResourceState] = {}
        self._secrets: dict[str, Mapping[str, str]] = {}
        self.keys: KeySource
        self._key_source = key_source
        self._on_phase_end = on_phase_end

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            hook(event)

    def transport(self, host: Host) -> Any:
        with self._transport_lock:
            transport = self._transports.get(host.name)
            if transport is None:
                transport = self.transport_factory(host)
                self._transports[host.name] = transport
            return transport

    @property
    def state(self) -> State:
        """A snapshot of the state as applied so far (copies: for phase ends and the end)."""
        with self._state_lock:
            return attrs.evolve(self._base, resources=dict(self._resources),
                                secrets=dict(self._secrets))

    def record(self, address: str) -> ResourceState | None:
        return self._resources.get(address)

    def output_value(self, ref: Ref) -> bytes:
        with self._state_lock:
            record = self._resources.get(str(ref.address))
            secrets = self._secrets.get(str(ref.address), {})
        if record is None:
            raise PkiformError(f"{ref.address} has no state yet; it must be applied first")
        return self.registry[record.kind].output_value(record.outputs, secrets, ref.output)

    # -- one change --------------------------------------------------------------------

    def _run(self, change: Change) -> tuple[ResourceState | None, dict[str, str], str]:
        provider = self.registry[change.kind]
        context = _Context(self, change)
        with self._state_lock:
            prior = self._resources.get(str(change.address))
            prior_secrets = dict(self._secrets.get(str(change.address), {}))
        if change.action is Action.DELETE:
            message = provider.delete(change.address, prior, context)
            return None, {}, message
        assert change.spec is not None
        result: ResourceResult = provider.apply(
            ApplyRequest(change.spec, prior, prior_secrets, change.action, change.step, context)
        )
        outputs = dict(result.outputs)
        if len(change.steps_total) > 1 and change.step in change.steps_total:
            done = change.steps_total.index(change.step) + 1
            if done < len(change.steps_total):
                outputs[ROTATION_KEY] = {
                    "steps": list(change.steps_total),
                    "done": done,
                    "mode": self.plan.mode,
                }
            else:
                outputs.pop(ROTATION_KEY, None)
        with self._state_lock:
            deps = {}
            for ref in change.dependencies:
                record = self._resources.get(str(ref.address))
                deps[str(ref)] = record.digests.get(ref.output, "") if record else ""
        record = ResourceState(
            kind=change.kind,
            inputs=dict(provider.inputs(change.spec)),
            deps=deps,
            digests=dict(result.digests),
            outputs=outputs,
        )
        return record, dict(result.secrets), result.message

    # -- the walk --------------------------------------------------------------------------

    def _phase_graph(self, changes: list[Change]) -> Any:
        by_address = {c.address: c for c in changes}
        deps: dict[Address, set[Address]] = {}
        for change in changes:
            wanted = {r.address for r in change.dependencies} | set(change.order_after)
            deps[change.address] = {a for a in wanted if a in by_address}
        # Rolling groups: member i waits for member i - max_unavailable (host order), so at
        # most max_unavailable members of a group restart at once (1: etcd quorum).
        groups: dict[str, list[Change]] = defaultdict(list)
        for change in changes:
            if change.rolling and change.action is Action.RESTART:
                groups[change.rolling].append(change)
        for members in groups.values():
            members.sort(key=lambda c: c.address)
            width = max(1, members[0].rolling_width)
            for index in range(width, len(members)):
                deps[members[index].address].add(members[index - width].address)
        return dag.build(by_address, deps)

    def run(self) -> ApplyResult:
        started = time.monotonic()
        loaded = self.store.load(decrypt=True)
        if loaded.is_empty and self.plan.lineage and not self.store.exists():
            # First apply: adopt the lineage the plan was made against so a saved plan and
            # the state it creates belong together.
            loaded = attrs.evolve(loaded, lineage=self.plan.lineage)
        # Mutable working copies: rebuilding a frozen State per step would be quadratic.
        self._base = loaded
        self._resources = dict(loaded.resources)
        self._secrets = dict(loaded.secrets)
        base = loaded
        requests: dict[Address, list[str]] = {}
        for change in self.plan.changes:
            if change.spec is not None and change.action is not Action.DELETE:
                wanted = list(self.registry[change.kind].keys_needed(
                    change.spec, change.action, change.step))
                if wanted:
                    requests.setdefault(change.address, []).extend(wanted)
        self.keys = (self._key_source(requests) if self._key_source
                     else KeySource(requests, self.keygen_workers))
        done: list[Change] = []
        failed: list[tuple[Change, str]] = []
        skipped: list[tuple[Change, str]] = []
        try:
            for phase in self.plan.phases:
                changes = [c for c in self.plan.changes
                           if c.phase == phase.name and c.action is not Action.NOOP]
                if failed:
                    for change in changes:
                        reason = "an earlier phase did not complete"
                        skipped.append((change, reason))
                        self.emit(Event("skipped", reason, change, phase.name))
                    continue
                self.emit(Event("phase", phase.description, None, phase.name))
                # Deletes first: nothing kept depends on a deleted resource, and a file
                # renamed in place must be removed before its successor writes the path.
                deletes = [c for c in changes if c.action is Action.DELETE]
                if deletes:
                    self._run_phase(phase.name, deletes, base, done, failed, skipped)
                self._run_phase(phase.name, [c for c in changes if c.action is not Action.DELETE],
                                base, done, failed, skipped)
                if self._on_phase_end is not None and not failed:
                    self._on_phase_end(phase.name, self.state)
        finally:
            self.keys.close()
            for transport in self._transports.values():
                try:
                    transport.close()
                except Exception:
                    pass
        final = self.state
        if done:
            final = self.store.commit(final)
            self._base = final
        result = ApplyResult(tuple(done), tuple(failed), tuple(skipped), final,
                             time.monotonic() - started)
        self.emit(Event("finished", "", None, None, result.duration))
        return result

    def _run_phase(
        self,
        phase: str,
        changes: list[Change],
        base: State,
        done: list[Change],
        failed: list[tuple[Change, str]],
        skipped: list[tuple[Change, str]],
    ) -> None:
        graph = self._phase_graph(changes)
        by_address = {c.address: c for c in changes}
        waiting = {a: graph.in_degree(a) for a in graph}
        ready = [a for a, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        blocked: set[Address] = set()
        running: dict[cf.Future[Any], tuple[Change, float]] = {}
        pool_type: Any = _InlinePool if self.parallelism == 1 else cf.ThreadPoolExecutor
        with pool_type(max_workers=self.parallelism, thread_name_prefix="pkiform-apply") as pool:
            while ready or running:
                while ready and len(running) < self.parallelism:
                    address = heapq.heappop(ready)
                    change = by_address[address]
                    if address in blocked:
                        continue
                    if change.action is Action.DELETE or self.registry[change.kind].per_host:
                        self.store.journal_sync()
                    self.emit(Event("start", "", change, phase))
                    running[pool.submit(self._run, change)] = (change, time.monotonic())
                if not running:
                    continue
                finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: running[f][0].address):
                    change, began = running.pop(future)
                    duration = time.monotonic() - began
                    try:
                        record, secrets, message = future.result()
                    except Exception as exc:
                        reason = str(exc) if isinstance(exc, PkiformError) else (
                            f"{type(exc).__name__}: {exc}")
                        failed.append((change, reason))
                        self.emit(Event("failed", reason, change, phase, duration))
                        for dependent in sorted(dag.descendants(graph, [change.address])):
                            if dependent not in blocked:
                                blocked.add(dependent)
                                why = f"depends on {change.address}, which failed"
                                skipped.append((by_address[dependent], why))
                                self.emit(Event("skipped", why, by_address[dependent], phase))
                        continue
                    with self._state_lock:
                        # Durable before anything that changes a host runs (group commit).
                        self.store.journal_append(base, str(change.address), record, secrets,
                                                  sync=False)
                        key = str(change.address)
                        if record is None:
                            self._resources.pop(key, None)
                            self._secrets.pop(key, None)
                        else:
                            self._resources[key] = record
                            if secrets:
                                self._secrets[key] = secrets
                            else:
                                self._secrets.pop(key, None)
                    done.append(change)
                    self.emit(Event("done", message, change, phase, duration))
                    for dependent in graph.successors(change.address):
                        waiting[dependent] -= 1
                        if waiting[dependent] == 0:
                            heapq.heappush(ready, dependent)
