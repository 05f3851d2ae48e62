"""The applier's pipeline: private keys generated ahead in a pool that can start before the
plan is proven, each generated once, changes started as their keys arrive (no thread waits
for one), an apply that survives a broken pool, and host steps that start only once every
journal entry they use is durable (group commit)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from pkiform.address import Address
from pkiform.apply import Applier, Event, KeySource, key_requests
from pkiform.pki import keys as keys_module
from pkiform.pki.keys import generate_private_key_pem, key_algorithm_of
from pkiform.workspace import Workspace
from tests.test_crash_safety import CONFIG  # two hosts, kubeadm, ECDSA: quick keys


def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "pkiform.toml").write_text(CONFIG)
    return Workspace(tmp_path)


def applier(ws: Workspace, plan: object, **kwargs: object) -> Applier:
    return Applier(plan, ws.store, ws.registry, ws.transport_factory,  # type: ignore[arg-type]
                   **kwargs)  # type: ignore[arg-type]


def test_key_requests_are_what_the_apply_takes(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    plan = ws.plan()
    requests = key_requests(plan, ws.registry)
    assert requests and list(requests) == sorted(requests)  # plan order: CAs first
    taken: Counter[tuple[Address, str]] = Counter()

    class Recording(KeySource):
        def take(self, address: Address, algorithm: str) -> bytes:
            taken[address, algorithm] += 1
            return super().take(address, algorithm)

    result = applier(ws, plan, keys=Recording(workers=1)).run()
    assert result.ok
    assert taken == Counter((a, alg) for a, algs in requests.items() for alg in algs)


def test_an_early_key_source_generates_every_key_once_in_its_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = KeySource(workers=2)  # forks now, before the config is even loaded
    assert keys._pool is not None and len(keys._pool._processes) == 2
    ws = workspace(tmp_path)
    plan = ws.plan()
    requests = key_requests(plan, ws.registry)
    keys.request(requests)
    keys.request(requests)  # the same plan again (as apply does): nothing more is queued
    queued = {a: [alg for alg, _ in q] for a, q in keys._futures.items()}
    assert queued == requests

    def inline(algorithm: str) -> bytes:
        raise AssertionError("a key was generated outside the pool")

    # The workers forked with the real function; only this process sees the fake.
    monkeypatch.setattr(keys_module, "generate_private_key_pem", inline)
    result = applier(ws, plan, keys=keys).run()
    assert result.ok, result.failed
    assert keys._pool is None  # run() closed it
    assert not keys._futures
    keys.close()  # idempotent


class _ManualKeys:
    """Keys that arrive when the test lets them: the CAs' first, then the leaves' in reverse
    plan order, each only after the change of the previous one has started."""

    def __init__(self, requests: Mapping[Address, Sequence[str]]) -> None:
        self.futures = {a: [(alg, cf.Future[bytes]()) for alg in algs]
                        for a, algs in requests.items()}
        self.leaves = [a for a in reversed(list(self.futures)) if a.kind != "ca"]
        self.started = threading.Semaphore(0)
        self.early_takes: list[Address] = []
        self.closed = False
        threading.Thread(target=self._release, daemon=True).start()

    def _resolve(self, address: Address) -> None:
        for algorithm, future in list(self.futures[address]):
            future.set_result(generate_private_key_pem(algorithm))

    def _release(self) -> None:
        for address in self.futures:
            if address.kind == "ca":
                self._resolve(address)
        for index, address in enumerate(self.leaves):
            time.sleep(0.001)
            self._resolve(address)
            if not self.started.acquire(timeout=10):  # stuck: let the apply finish anyway
                for rest in self.leaves[index + 1:]:
                    self._resolve(rest)
                return

    def pending(self, address: Address) -> list[cf.Future[bytes]]:
        return [f for _, f in self.futures.get(address, []) if not f.done()]

    def take(self, address: Address, algorithm: str) -> bytes:
        for index, (wanted, future) in enumerate(self.futures[address]):
            if wanted == algorithm:
                del self.futures[address][index]
                if not future.done():
                    self.early_takes.append(address)
                return future.result(timeout=20)
        raise AssertionError(f"{address}: no {algorithm} key requested")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("parallelism", [1, 4])
def test_changes_start_when_their_keys_arrive_and_no_thread_waits_for_one(
        tmp_path: Path, parallelism: int) -> None:
    ws = workspace(tmp_path)
    plan = ws.plan()
    sources: list[_ManualKeys] = []
    starts: list[Address] = []

    def factory(requests: Mapping[Address, list[str]]) -> _ManualKeys:
        sources.append(_ManualKeys(requests))
        return sources[-1]

    def hook(event: Event) -> None:
        if event.kind == "start" and event.change is not None:
            starts.append(event.change.address)
            if event.change.address in sources[0].leaves:
                sources[0].started.release()

    result = applier(ws, plan, key_source=factory, parallelism=parallelism,
                     hooks=(hook,)).run()
    assert result.ok, result.failed
    (source,) = sources
    assert source.closed
    assert source.early_takes == []  # no change that needed a key started before it came
    # Leaves start in the order their keys arrive (the reverse of the plan's), not in the
    # plan's order of ready changes.
    assert [a for a in starts if a in source.leaves] == source.leaves
    assert len(source.leaves) > 2


def test_a_dead_keygen_worker_does_not_fail_the_apply() -> None:
    keys = KeySource({Address("cert", "x"): ["rsa-2048"] * 8}, workers=2)
    assert keys._pool is not None
    for process in list(keys._pool._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
    try:
        for _ in range(8):
            pem = keys.take(Address("cert", "x"), "rsa-2048")  # from the pool or inline
            assert key_algorithm_of(pem) == "rsa-2048"
        # Not requested at all: generated inline.
        assert key_algorithm_of(keys.take(Address("cert", "y"), "ecdsa-p256")) == "ecdsa-p256"
    finally:
        keys.close()


def test_a_few_keys_need_no_pool() -> None:
    keys = KeySource({Address("cert", "x"): ["ecdsa-p256"] * 3}, workers=2)
    assert keys._pool is None
    assert keys.pending(Address("cert", "x")) == []
    assert key_algorithm_of(keys.take(Address("cert", "x"), "ecdsa-p256")) == "ecdsa-p256"
    keys.close()


class _DurabilityProbe:
    """A store that knows which journal entries a sync has made durable."""

    def __init__(self, store: object) -> None:
        self._store = store
        self.appended: set[str] = set()
        self.durable: set[str] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    def journal_append(self, base: object, address: str, record: object, secrets: object,
                       *, sync: bool = True) -> None:
        self._store.journal_append(base, address, record, secrets,  # type: ignore[attr-defined]
                                   sync=False)
        self.appended.add(address)
        if sync:
            self.journal_sync()

    def journal_sync(self) -> None:
        self._store.journal_sync()  # type: ignore[attr-defined]
        self.durable |= self.appended


@pytest.mark.parametrize("parallelism", [1, 4])
def test_a_host_step_starts_only_once_what_it_uses_is_durable(
        tmp_path: Path, parallelism: int) -> None:
    ws = workspace(tmp_path)
    plan = ws.plan()
    probe = _DurabilityProbe(ws.store)
    checked: list[Address] = []

    def hook(event: Event) -> None:
        change = event.change
        if event.kind != "start" or change is None:
            return
        if ws.registry[change.kind].per_host:
            uses = {str(r.address) for r in change.dependencies}
            uses.update(str(a) for a in change.order_after)
            assert uses & probe.appended <= probe.durable, change.address
            checked.append(change.address)

    result = Applier(plan, probe, ws.registry, ws.transport_factory,  # type: ignore[arg-type]
                     parallelism=parallelism, keygen_workers=1, hooks=(hook,)).run()
    assert result.ok, result.failed
    assert len(checked) > 10


def test_the_longest_chain_starts_first(tmp_path: Path) -> None:
    """Ready changes start by the expected length of the chain behind them, not by address:
    the rolling restarts (a settle window each) and the files they use go before files
    nothing restarts for (admin.conf, CA keys), which address order would put first."""
    ws = workspace(tmp_path)
    plan = ws.plan()
    started: list[Address] = []

    def hook(event: Event) -> None:
        if event.kind == "start" and event.change is not None:
            started.append(event.change.address)

    result = applier(ws, plan, parallelism=1, keygen_workers=1, hooks=(hook,)).run()
    assert result.ok, result.failed
    used = {r.address for c in plan.changes if c.kind == "service" for r in c.dependencies}
    unused = [a for a in started if a.kind == "file" and a not in used]
    rolling = [c.address for c in plan.changes if c.rolling]
    assert unused and rolling
    position = {a: i for i, a in enumerate(started)}
    first_unused = min(position[a] for a in unused)
    assert all(position[a] < first_unused for a in rolling), started
    # Still a topological order: every file a restart uses was written before it.
    for change in plan.changes:
        if change.kind == "service":
            assert all(position[r.address] < position[change.address]
                       for r in change.dependencies)


class _Remote:
    """The local transport as a remote one looks to the applier (no ``inline_steps``), whose
    file writes wait ``delay`` seconds for the network first."""

    def __init__(self, inner: object, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def __getattr__(self, name: str) -> object:
        if name == "inline_steps":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def write_file(self, *args: object, **kwargs: object) -> None:
        time.sleep(self._delay)
        self._inner.write_file(*args, **kwargs)  # type: ignore[attr-defined]


def test_local_work_runs_in_the_scheduler_thread_remote_steps_on_worker_threads(
        tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    plan = ws.plan()
    remote_host = "worker-1"

    def factory(host: object) -> object:
        transport = ws.transport_factory(host)  # type: ignore[arg-type]
        return _Remote(transport, 0.2) if host.name == remote_host else transport  # type: ignore[attr-defined]

    threads: dict[Address, int] = {}
    finished: dict[Address, float] = {}

    class Recording(Applier):
        def _run(self, change):  # type: ignore[no-untyped-def]
            threads[change.address] = threading.get_ident()
            try:
                return super()._run(change)
            finally:
                finished[change.address] = time.monotonic()

    scheduler = threading.get_ident()
    result = Recording(plan, ws.store, ws.registry, factory, parallelism=4,  # type: ignore[arg-type]
                       keygen_workers=1).run()
    assert result.ok, result.failed
    remote = {c.address for c in plan.changes if c.host == remote_host and c.kind == "file"}
    local_files = {c.address for c in plan.changes if c.host != remote_host
                   and c.kind == "file"}
    in_process = {c.address for c in plan.changes if c.kind in ("ca", "cert", "kubeconfig")}
    assert remote and local_files and in_process
    assert all(threads[a] == scheduler for a in local_files | in_process)
    assert all(threads[a] != scheduler for a in remote)
    # Inline work did not wait for the slow remote writes: the local host's files were all
    # written before the last remote write ended (they do not depend on worker-1's files).
    assert max(finished[a] for a in local_files) < max(finished[a] for a in remote)
    # And the plan's order still holds across the two kinds of steps.
    for change in plan.changes:
        for ref in change.dependencies:
            if ref.address in finished and change.address in finished:
                assert finished[ref.address] <= finished[change.address], change.address
