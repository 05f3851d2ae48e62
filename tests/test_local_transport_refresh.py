"""Workspace.refresh reads remote hosts in parallel, the local target inline, and reports the
same observations as reading the hosts one after another; every host is tried, and every
failure reported.

The "remote" hosts here are the kubeadm example's hosts with ``transport = "ssh"`` whose
transport is a LocalTransport in disguise, so no SSH is involved; the lab tests cover the
real thing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from pkiform.errors import TransportError
from pkiform.model import Host
from pkiform.transport.base import FileStat
from pkiform.transport.local import LocalTransport
from pkiform.workspace import Workspace
from tests.conftest import copy_example, run_cli


class Disguised:
    """A local transport that says it is remote and records who read what, from where."""

    def __init__(self, host: Host, root: Path, log: list[tuple[str, str]],
                 barrier: threading.Barrier | None, failing: Sequence[str]) -> None:
        self.host = host
        self._local = LocalTransport(host, root)
        self._log = log
        self._barrier = barrier
        self._failing = failing

    def read_files(self, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        self._log.append((self.host.name, threading.current_thread().name))
        if self._barrier is not None:
            self._barrier.wait()  # every host is being read at the same time, or this times out
        if self.host.name in self._failing:
            raise TransportError("unreachable (test)", host=self.host.name)
        return self._local.read_files(paths)

    def serving_certificate(self, endpoint: str) -> bytes | None:
        return None

    def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    example = copy_example("kubeadm", tmp_path_factory.mktemp("refresh"))
    result = run_cli("-C", str(example), "apply", "--auto-approve")
    assert result.code == 0, result.err
    # drift on one host, so the observations are not all alike
    (example / "target/control-2/etc/kubernetes/pki/ca.crt").write_text("edited\n")
    (example / "target/worker-1/etc/kubernetes/kubelet.conf").unlink()
    return example


def disguise(ws: Workspace, *, barrier: bool = False, failing: Sequence[str] = ()
             ) -> list[tuple[str, str]]:
    log: list[tuple[str, str]] = []
    hosts = {name: attrs.evolve(host, transport="ssh") for name, host in ws.config.hosts.items()}
    ws.config = attrs.evolve(ws.config, hosts=hosts)
    wait = threading.Barrier(len(hosts), timeout=10) if barrier else None
    ws._new_transport = lambda host: Disguised(  # type: ignore[method-assign]
        host, ws.target_root, log, wait, failing)
    return log


def local_view(ws: Workspace, state: Any) -> dict[Any, Any]:
    """What one-host-at-a-time reads give, with owners as a remote host reports them."""
    observations = Workspace(ws.directory).refresh(state)
    owned = {}
    for address, seen in observations.items():
        if seen.content_sha256 is not None:
            path = state.get(str(address)).outputs["path"]
            host = state.get(str(address)).outputs["host"]
            stat = LocalTransport(ws.config.hosts[host], ws.target_root).read_files([path])[path]
            assert stat is not None
            seen = attrs.evolve(seen, owner=stat.owner, group=stat.group)
        owned[address] = seen
    return owned


def test_remote_hosts_are_read_in_parallel_with_the_same_result(applied: Path) -> None:
    ws = Workspace(applied)
    state = ws.load_state()
    expected = local_view(ws, state)
    log = disguise(ws, barrier=True)
    observations = ws.refresh(state)
    assert observations == expected
    assert list(observations) == list(expected)  # same order as the sequential reads
    assert sorted(name for name, _ in log) == sorted(ws.config.hosts)
    threads = {thread for _, thread in log}
    assert len(threads) == len(ws.config.hosts)
    assert all(thread.startswith("pkiform-refresh") for thread in threads)
    missing = [str(a) for a, seen in observations.items() if seen.content_sha256 is None]
    assert len(missing) == 1 and missing[0].endswith("[worker-1]")


def test_the_local_target_is_read_in_the_calling_thread(applied: Path) -> None:
    ws = Workspace(applied)
    reads: list[str] = []
    original = LocalTransport.read_files

    def spy(self: LocalTransport, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        reads.append(threading.current_thread().name)
        return original(self, paths)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalTransport, "read_files", spy)
        ws.refresh(ws.load_state())
    assert reads and set(reads) == {threading.current_thread().name}


def test_every_host_is_tried_and_every_failure_is_reported(applied: Path) -> None:
    ws = Workspace(applied)
    names = sorted(ws.config.hosts)
    log = disguise(ws, failing=[names[-1], names[1]])
    with pytest.raises(TransportError) as excinfo:
        ws.refresh(ws.load_state())
    assert sorted(name for name, _ in log) == names
    message = str(excinfo.value)
    assert message.startswith(f"cannot read 2 hosts ({names[1]}, {names[-1]}):"), message
    reasons = [line.strip() for line in message.splitlines()[1:3]]
    assert reasons == [f"{names[1]}: unreachable (test)", f"{names[-1]}: unreachable (test)"]
    assert "fix: check the hosts" in message


def test_one_failed_host_is_reported_as_its_own_error(applied: Path) -> None:
    ws = Workspace(applied)
    names = sorted(ws.config.hosts)
    disguise(ws, failing=[names[2]])
    with pytest.raises(TransportError) as excinfo:
        ws.refresh(ws.load_state())
    assert excinfo.value.host == names[2]
    assert str(excinfo.value) == f"{names[2]}: unreachable (test)"


def test_only_the_hosts_asked_for_are_read(applied: Path) -> None:
    ws = Workspace(applied)
    names = sorted(ws.config.hosts)
    log = disguise(ws)
    state = ws.load_state()
    observations = ws.refresh(state, hosts=iter(names[:2]))
    assert sorted(name for name, _ in log) == names[:2]
    assert observations
    assert {state.get(str(a)).outputs["host"] for a in observations} == set(names[:2])
