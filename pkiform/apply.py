"""Apply: carry out a `Plan`, step by step, persisting the state after every step.

The order comes from the plan alone (its changes and their dependencies), never from the
config. Phases run one after another; inside a phase, changes run as soon as everything they
depend on is done, up to ``parallelism`` at a time on worker threads (remote transports wait
on the network), except members of a rolling group, which run one at a time in host order.
Changes that are short work in this process and wait on nothing remote (signing a
certificate, rendering a kubeconfig: providers with ``inline``; a file written by the local
transport: transports with ``inline_steps``) run in the scheduler's own thread instead: on a
worker thread they would gain nothing under the GIL and cost a hand-off for every system call
(at 1,000 nodes, 4.0 s of CPU on threads against 2.7 s inline, the same work).

Among ready changes, the one with the longest expected chain still behind it goes first (a
restart counts its settle window), so a rolling group's first member and the files it uses are
not queued behind files that nothing waits for; the edges alone decide what may run, the
priority only what runs first.

Private keys are the only CPU-heavy work. They are generated ahead in a process pool
(`KeySource`), which a caller can start before the plan is even proven, so that keygen runs
from the first instant and everything else overlaps it. A change that needs keys waits for
them outside the thread pool and starts the moment they arrive; no thread ever blocks on one.

A failed change skips its dependents; independent branches go on. If anything in a phase
failed, later phases are not started: a rotation must never reissue leaves before every
consumer trusts the new CA. The state records each completed step (journal), so the next
apply resumes where this one stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import heapq
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from pkiform.address import Address, Ref
from pkiform.errors import PkiformError, StalePlanError
from pkiform.model import Host
from pkiform.offload import die_with_parent
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


def key_requests(plan: Plan, registry: Registry) -> dict[Address, list[str]]:
    """The private keys applying ``plan`` generates: per address, in plan order (the providers
    are asked exactly as the applier asks them)."""
    requests: dict[Address, list[str]] = {}
    for change in plan.changes:
        if change.spec is not None and change.action is not Action.DELETE:
            wanted = registry[change.kind].keys_needed(change.spec, change.action, change.step)
            if wanted:
                requests.setdefault(change.address, []).extend(wanted)
    return requests


def _generate_key(algorithm: str) -> bytes:
    from pkiform.pki.keys import generate_private_key_pem

    return generate_private_key_pem(algorithm)


def _warm_up() -> None:
    # Starts the workers; the first key does not pay for the import (already there when the
    # parent imported it before forking, as `KeySource` does).
    import pkiform.pki.keys  # noqa: F401


def _fork_context() -> Any:
    # fork, explicitly (3.14 makes forkserver the default): forkserver's server and workers
    # outlived a SIGKILLed apply; spawn re-imports the CLI's __main__.
    try:
        return multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform
        return None


class KeySource:
    """Private keys generated ahead in a process pool, handed out per address in request order.

    ``KeySource(requests)`` starts generating at once (what `Applier` does when it is given
    no key source). To start earlier, the caller creates ``KeySource(workers=...)`` before it
    even loads the config (the pool forks at once, while the process has no threads: workers
    forked from a threaded process could inherit locks held by another thread, or pipes of a
    subprocess another thread is starting), calls `request` as soon as the plan is known,
    before proving it, and hands the source to the `Applier` (``keys=``), which adds whatever
    is still missing and closes it. Keys are only ever in memory: requested keys a cancelled
    apply does not use are discarded with the pool.
    """

    def __init__(self, requests: Mapping[Address, Sequence[str]] | None = None,
                 workers: int | None = None) -> None:
        self._workers = workers if workers is not None else (os.cpu_count() or 1)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._futures: dict[Address, deque[tuple[str, cf.Future[bytes]]]] = defaultdict(deque)
        self._requested: dict[Address, Counter[str]] = defaultdict(Counter)
        self._closed = False
        if requests is None:
            self._start()
        else:
            self.request(requests)

    def _start(self) -> None:
        if self._pool is not None or self._closed or self._workers <= 1:
            return
        # Imported before the fork, so every worker starts with it (this process signs with
        # it anyway): workers that each import it compete with this process's config load.
        import pkiform.pki.keys  # noqa: F401
        self._pool = cf.ProcessPoolExecutor(max_workers=self._workers,
                                            mp_context=_fork_context(),
                                            initializer=die_with_parent,
                                            initargs=(os.getpid(),))
        # With fork, every worker starts at the first submit: this one, not a later one made
        # while apply's threads run.
        self._pool.submit(_warm_up)

    def request(self, requests: Mapping[Address, Sequence[str]]) -> None:
        """Queue these keys in the pool, in this order, beyond those already requested per
        address (so the same plan's keys can be requested twice: early, then by apply)."""
        wanted: list[tuple[Address, str]] = []
        with self._lock:
            for address, algorithms in requests.items():
                have = self._requested[address]
                extra = Counter(algorithms) - have
                for algorithm in algorithms:
                    if extra[algorithm] > 0:
                        extra[algorithm] -= 1
                        have[algorithm] += 1
                        wanted.append((address, algorithm))
        if len(wanted) >= 4:
            self._start()
        if self._pool is None or self._closed:
            return  # a few keys (or one core): generated inline when taken
        for address, algorithm in wanted:
            future = self._pool.submit(_generate_key, algorithm)
            with self._lock:
                self._futures[address].append((algorithm, future))

    def pending(self, address: Address) -> list[cf.Future[bytes]]:
        """The keys of ``address`` still being generated (the applier starts the change when
        they are done, rather than have a thread wait in `take`)."""
        with self._lock:
            queued = self._futures.get(address)
            return [f for _, f in queued if not f.done()] if queued else []

    def take(self, address: Address, algorithm: str) -> bytes:
        with self._lock:
            queue_ = self._futures.get(address)
            future = None
            if queue_:
                for index, (wanted, candidate) in enumerate(queue_):
                    if wanted == algorithm:
                        del queue_[index]
                        future = candidate
                        break
        if future is not None:
            try:
                return future.result()
            except (cf.BrokenExecutor, cf.CancelledError):
                pass  # a worker died (OOM killer?): this apply goes on without the pool
        return _generate_key(algorithm)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._futures.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


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
        keys: KeySource | None = None,
        on_phase_end: Callable[[str, State], None] | None = None,
    ) -> None:
        """``keys``: a `KeySource` started early (see there), used and closed by `run`;
        ``key_source``: a factory of anything with ``take`` and ``close`` (the trust proof's
        simulation); neither: `run` starts a `KeySource` of ``keygen_workers`` processes."""
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
        self.keys: Any
        self._key_source = key_source
        self._given_keys = keys
        # Journal group commit: entries appended, entries known durable, and the entry of
        # each address (a host step waits for a sync only if a step it uses is not durable).
        self._appended = 0
        self._synced = 0
        self._entry: dict[str, int] = {}
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
        requests = key_requests(self.plan, self.registry)
        if self._given_keys is not None:
            self.keys = self._given_keys
            self.keys.request(requests)
        elif self._key_source is not None:
            self.keys = self._key_source(requests)
        else:
            self.keys = KeySource(requests, self.keygen_workers)
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

    def _expected_ms(self, change: Change) -> int:
        """What a change is expected to take, in ms, for the scheduler's priorities only:
        the provider's ``expected_seconds(spec, action)`` if it has one (a restart: its
        settle window), else a round trip to a host or a little local work."""
        provider = self.registry[change.kind]
        expected = getattr(provider, "expected_seconds", None)
        if expected is not None and change.spec is not None:
            return max(1, int(1000 * expected(change.spec, change.action)))
        return 50 if provider.per_host else 10

    def _priorities(self, ordered: list[Change], successors: list[list[int]],
                    waiting: list[int]) -> list[int]:
        """Minus the expected length (ms) of the longest chain each change starts, itself
        included: a heap key. One pass in reverse topological order, so linear (this runs
        for every phase of every proof)."""
        count = len(ordered)
        left = list(waiting)
        order = [i for i in range(count) if left[i] == 0]
        for i in order:  # Kahn's order; the list grows while it is walked
            for j in successors[i]:
                left[j] -= 1
                if left[j] == 0:
                    order.append(j)
        height = [self._expected_ms(change) for change in ordered]
        own = list(height)
        for i in reversed(order):  # a change left out by a cycle never runs: its own cost
            longest = max((height[j] for j in successors[i]), default=0)
            height[i] = own[i] + longest
        return [-h for h in height]

    def _run_phase(
        self,
        phase: str,
        changes: list[Change],
        base: State,
        done: list[Change],
        failed: list[tuple[Change, str]],
        skipped: list[tuple[Change, str]],
    ) -> None:
        # Changes by rank (address order: ties in priority break by address), the
        # graph as plain lists (no networkx: this also runs once per phase of every proof).
        ordered = sorted(changes, key=lambda c: c.address.sort_key)
        names = [str(c.address) for c in ordered]
        rank = {c.address: i for i, c in enumerate(ordered)}
        successors: list[list[int]] = [[] for _ in ordered]
        waiting = [0] * len(ordered)
        uses: list[list[str]] = [[] for _ in ordered]  # everything a step comes after
        for i, change in enumerate(ordered):
            wanted = {r.address for r in change.dependencies}
            wanted.update(change.order_after)
            uses[i] = [str(a) for a in wanted]
            for dep in {rank[a] for a in wanted if a in rank}:
                successors[dep].append(i)
                waiting[i] += 1
        # Rolling groups: member i waits for member i - max_unavailable (host order), so at
        # most max_unavailable members of a group restart at once (1: etcd quorum).
        groups: dict[str, list[int]] = defaultdict(list)
        for i, change in enumerate(ordered):
            if change.rolling and change.action is Action.RESTART:
                groups[change.rolling].append(i)  # already in address order
        for members in groups.values():
            width = max(1, ordered[members[0]].rolling_width)
            for index in range(width, len(members)):
                successors[members[index - width]].append(members[index])
                waiting[members[index]] += 1
                uses[members[index]].append(names[members[index - width]])

        # Longest chain first: among ready changes, start the one with the most expected
        # work still behind it (a rolling group's first member, the files it uses); ties
        # keep address order. Only the order of independent changes moves, never an edge.
        priority = self._priorities(ordered, successors, waiting)
        ready = [(priority[i], i) for i, n in enumerate(waiting) if n == 0]
        heapq.heapify(ready)
        settled = [False] * len(ordered)  # done, failed or skipped
        keys_missing = [0] * len(ordered)
        # Worker threads and the keygen pool report here; only this thread touches the
        # bookkeeping, the state and the journal.
        notices: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        pending_keys = getattr(self.keys, "pending", None)
        inline = self.parallelism == 1
        pool: Any = None if inline else cf.ThreadPoolExecutor(
            max_workers=self.parallelism, thread_name_prefix="pkiform-apply")
        running = 0
        parked = 0
        # A host runs at most as many steps at once as its transport says it can use (its
        # ``max_concurrent_steps``; SSH: a few per session): the rest wait here, in priority
        # order, instead of queueing in the transport in whatever order their threads
        # arrive, and taking threads other hosts could use.
        host_cap: dict[str, int | None] = {}
        on_host: dict[str, int] = defaultdict(int)
        held: dict[str, list[tuple[int, int]]] = defaultdict(list)
        inline_for: dict[tuple[str, str | None], bool] = {}

        def runs_inline(change: Change) -> bool:
            key = (change.kind, change.host)
            answer = inline_for.get(key)
            if answer is None:
                provider = self.registry[change.kind]
                if not provider.per_host:
                    answer = bool(getattr(provider, "inline", False))
                else:
                    host = self.plan.hosts.get(change.host or "")
                    answer = host is not None and bool(
                        getattr(self.transport(host), "inline_steps", False))
                inline_for[key] = answer
            return answer

        def cap_of(name: str) -> int | None:
            if name not in host_cap:
                host = self.plan.hosts.get(name)
                host_cap[name] = None if host is None else getattr(
                    self.transport(host), "max_concurrent_steps", None)
            return host_cap[name]

        def finish(i: int, began: float, outcome: Any, error: BaseException | None) -> None:
            change = ordered[i]
            settled[i] = True
            duration = time.monotonic() - began
            if error is not None:
                reason = str(error) if isinstance(error, PkiformError) else (
                    f"{type(error).__name__}: {error}")
                failed.append((change, reason))
                self.emit(Event("failed", reason, change, phase, duration))
                why = f"depends on {change.address}, which failed"
                below: set[int] = set()
                frontier = list(successors[i])
                while frontier:
                    j = frontier.pop()
                    if j not in below:
                        below.add(j)
                        frontier.extend(successors[j])
                for j in sorted(below):
                    if not settled[j]:
                        settled[j] = True
                        skipped.append((ordered[j], why))
                        self.emit(Event("skipped", why, ordered[j], phase))
                return
            record, secrets, message = outcome
            key = names[i]
            with self._state_lock:
                # Durable before any host step that uses it runs (group commit: the sync
                # happens in `launch`, once for every step finished since the last one).
                self.store.journal_append(base, key, record, secrets, sync=False)
                self._appended += 1
                self._entry[key] = self._appended
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
            for j in successors[i]:
                waiting[j] -= 1
                if waiting[j] == 0 and not settled[j]:
                    heapq.heappush(ready, (priority[j], j))

        def launch(i: int, inline_step: bool = False) -> None:
            nonlocal running
            change = ordered[i]
            if change.action is Action.DELETE:
                needed = self._appended  # removes from a host: everything done so far first
            elif self.registry[change.kind].per_host:
                # Changes a host: whatever it deploys or comes after must be durable first
                # (and with it every step journaled before, its own dependencies included).
                needed = max((self._entry.get(name, 0) for name in uses[i]), default=0)
            else:
                needed = 0
            if needed > self._synced:
                self.store.journal_sync()
                self._synced = self._appended
            self.emit(Event("start", "", change, phase))
            began = time.monotonic()
            if pool is None or inline_step:
                try:
                    outcome = self._run(change)
                except Exception as exc:
                    finish(i, began, None, exc)
                else:
                    finish(i, began, outcome, None)
                return
            running += 1
            pool.submit(self._run, change).add_done_callback(
                lambda future: notices.put(("done", i, (began, future))))

        def take_notices(block: bool) -> None:
            """Handle what worker threads and the keygen pool reported: everything already
            there, waiting for the first one only if ``block``."""
            nonlocal running, parked
            try:
                notice = notices.get() if block else notices.get_nowait()
            except queue.Empty:
                return
            while True:
                kind, i, payload = notice
                if kind == "key":
                    keys_missing[i] -= 1
                    if keys_missing[i] == 0:
                        parked -= 1
                        heapq.heappush(ready, (priority[i], i))
                else:
                    running -= 1
                    host = ordered[i].host
                    if host is not None and host in on_host:
                        on_host[host] -= 1
                        while held[host]:  # its slot goes to the best that still runs
                            item = heapq.heappop(held[host])
                            if not settled[item[1]]:
                                heapq.heappush(ready, item)
                                break
                    began, future = payload
                    error = future.exception()
                    finish(i, began, None if error else future.result(), error)
                try:  # everything that is already there, before starting more
                    notice = notices.get_nowait()
                except queue.Empty:
                    break

        try:
            while True:
                while ready and running < self.parallelism:
                    _, i = heapq.heappop(ready)
                    if settled[i]:
                        continue
                    if pending_keys is not None and not keys_missing[i]:
                        futures = pending_keys(ordered[i].address)
                        if futures:
                            # Wait for the keys outside the thread pool: the change starts
                            # when they are all there, and a thread is never parked on one.
                            keys_missing[i] = len(futures)
                            parked += 1
                            for future in futures:
                                future.add_done_callback(
                                    lambda _f, i=i: notices.put(("key", i, None)))
                            continue
                    change = ordered[i]
                    if pool is not None and runs_inline(change):
                        launch(i, inline_step=True)  # done on return: no slot, no host cap
                        if running:  # and what worker threads finished meanwhile goes on
                            take_notices(block=False)
                        continue
                    host = change.host
                    if host is not None and not inline:
                        cap = cap_of(host)
                        if cap is not None and on_host[host] >= cap:
                            heapq.heappush(held[host], (priority[i], i))
                            continue
                        on_host[host] += 1
                    launch(i)
                if not running and not parked:
                    break
                take_notices(block=True)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        for i, change in enumerate(ordered):
            if not settled[i]:  # only a dependency cycle could leave one (plans have none)
                why = "never became ready (dependency cycle)"
                skipped.append((change, why))
                self.emit(Event("skipped", why, change, phase))
