"""Smoke tests for the lab hosts (tests/lab/hosts.py): real systemd + sshd per host.

Run with ``python -m pytest tests/lab -v -m lab`` as root.  Skipped, with the reason,
where lab hosts cannot run (see ``lab_supported()``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from .hosts import (
    SSH_PORT,
    Lab,
    LabError,
    LabHost,
    _cgroup_pids,
    _port_open,
    _reap_stale_runs,
    _start_time,
    lab_supported,
)

_REASON = lab_supported()

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

FAKE_APISERVER = """\
[Unit]
Description=fake kube-apiserver for pkiform lab tests

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(2, tmp_path_factory.mktemp("lab")) as lab:
        yield lab


def _mounts_containing(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def _gone(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` no longer exists (or is now a different process)."""
    return _start_time(pid) != start_time


def _wait_until(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _parse_us_timestamp(value: str) -> datetime:
    # e.g. "Sun 2025-11-23 10:44:12.123456 UTC"
    _, day, clock, *_ = value.split()
    return datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S.%f")


def test_two_hosts_boot(lab: Lab) -> None:
    assert [h.name for h in lab.hosts] == ["lab-1", "lab-2"]
    assert len({h.address for h in lab.hosts}) == 2
    for host in lab.hosts:
        assert host.address.startswith("127.0.1.")
        assert host.is_alive()
        out = host.run(
            "hostname; systemctl is-system-running; systemctl is-active ssh"
        ).stdout.split()
        assert out == [host.name, "running", "active"]
        # each sshd listens on its own loopback address only
        listen = host.run("sshd -T | grep -i '^listenaddress'").stdout.split()
        assert listen == ["listenaddress", f"{host.address}:{SSH_PORT}"]
        # root's dotfiles are stock ones, not the machine's (which run pyenv there)
        assert host.file_path("/root/.bashrc").read_text() == Path("/etc/skel/.bashrc").read_text()
        # masked units really are masked inside the host
        assert host.run("systemctl is-enabled etcd.service", check=False).stdout.strip() == "masked"
        assert (
            host.run("systemctl is-active etcd.service", check=False).stdout.strip() == "inactive"
        )
    # nothing of ours on the machine's own 127.0.0.1:22
    assert not _port_open("127.0.0.1", SSH_PORT)


def test_ssh_with_host_key_verification(lab: Lab) -> None:
    # The exported ssh_config, as pkiform would use it ...
    config = lab.ssh_config_path.read_text()
    assert "StrictHostKeyChecking yes" in config
    # ... and the explicit options, without any config.
    for host in lab.hosts:
        res = subprocess.run(
            [
                "ssh",
                "-F",
                "/dev/null",
                "-i",
                str(lab.key_path),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={lab.known_hosts_path}",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                f"root@{host.address}",
                "hostname",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == host.name
    # every host has its own host key
    keys = [line.split()[2] for line in lab.known_hosts_path.read_text().splitlines()]
    assert len(set(keys)) == len(lab.hosts)


def _ssh_with_known_hosts(
    lab: Lab, host: LabHost, known_hosts: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(lab.key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            f"root@{host.address}",
            "echo",
            "SHOULD-NOT-RUN",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_unknown_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = _ssh_with_known_hosts(lab, lab.hosts[0], empty)
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr
    assert "SHOULD-NOT-RUN" not in res.stdout
    assert empty.read_text() == ""  # and nothing was learned


def test_other_hosts_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab1, lab2 = lab.hosts
    lab2_key = next(
        line
        for line in lab.known_hosts_path.read_text().splitlines()
        if line.startswith(lab2.address + " ")
    )
    wrong = tmp_path / "known_hosts"
    wrong.write_text(lab2_key.replace(lab2.address, lab1.address, 1) + "\n")
    res = _ssh_with_known_hosts(lab, lab1, wrong)
    assert res.returncode == 255
    assert "Host key verification failed" in res.stderr
    assert "SHOULD-NOT-RUN" not in res.stdout


def test_files_are_private_to_each_host(lab: Lab) -> None:
    lab1, lab2 = lab.hosts
    path = f"/etc/kubernetes/pki/lab-smoke-{secrets.token_hex(4)}.crt"
    lab1.run(f"mkdir -p /etc/kubernetes/pki && cat > {path}", input="marker\n")

    assert lab1.run(f"cat {path}").stdout == "marker\n"
    assert lab1.file_path(path).read_text() == "marker\n"  # seen from the machine
    assert lab2.run(f"test -e {path}", check=False).returncode == 1
    assert not lab2.file_path(path).exists()
    assert not Path(path).exists()  # the machine's own /etc is untouched


def test_restart_moves_active_enter_timestamp(lab: Lab) -> None:
    host = lab.hosts[0]
    host.install_unit("kube-apiserver.service", FAKE_APISERVER, start=True)
    assert host.run("systemctl is-active kube-apiserver").stdout.strip() == "active"
    before = host.show_property("kube-apiserver.service", "ActiveEnterTimestamp")
    pid_before = host.show_property("kube-apiserver.service", "MainPID")

    host.run("systemctl restart kube-apiserver")

    after = host.show_property("kube-apiserver.service", "ActiveEnterTimestamp")
    assert host.run("systemctl is-active kube-apiserver").stdout.strip() == "active"
    assert _parse_us_timestamp(after) > _parse_us_timestamp(before), (before, after)
    assert host.show_property("kube-apiserver.service", "MainPID") != pid_before
    # the other host knows nothing about the unit
    other = lab.hosts[1].run("systemctl is-active kube-apiserver", check=False)
    assert other.stdout.strip() == "inactive"


def test_install_unit_replaces_a_masked_unit(lab: Lab) -> None:
    host = lab.hosts[1]
    host.install_unit("etcd.service", FAKE_APISERVER.replace("kube-apiserver", "etcd"), start=True)
    assert host.run("systemctl is-active etcd").stdout.strip() == "active"
    host.run("systemctl stop etcd")


def test_teardown_leaves_nothing(tmp_path: Path) -> None:
    t0 = time.monotonic()
    with Lab(3, tmp_path) as lab:
        booted = time.monotonic() - t0
        hosts = [(h.name, h.address, h.pid, h._start_time, list(h._cgroups)) for h in lab.hosts]
        assert [h.run("hostname").stdout.strip() for h in lab.hosts] == [
            "lab-1",
            "lab-2",
            "lab-3",
        ]
        lab_dir = lab.dir
        t1 = time.monotonic()
    print(
        f"3 hosts: start() {booted:.2f}s (ssh ready after {lab.boot_seconds:.2f}s), "
        f"teardown {time.monotonic() - t1:.2f}s"
    )

    assert _mounts_containing(str(tmp_path)) == []
    for name, address, pid, start_time, cgroups in hosts:
        assert _gone(pid, start_time), f"{name}: PID 1 ({pid}) survived"
        assert not _port_open(address, SSH_PORT), f"{name}: sshd still listening"
        assert all(not cg.exists() for cg in cgroups), f"{name}: cgroups left: {cgroups}"
    assert not lab_dir.exists()
    lab.close()  # idempotent


def test_failed_boot_raises_with_diagnostics_and_cleans_up(tmp_path: Path) -> None:
    # No sshd at all: the lab must give up after boot_timeout, say why, and tear down.
    lab = Lab(1, tmp_path, mask_units=("ssh.service",), boot_timeout=3)
    with pytest.raises(LabError, match="not reachable over ssh") as excinfo:
        lab.start()
    assert "-- journal --" in str(excinfo.value)
    host = lab.hosts[0]
    assert _gone(host.pid, host._start_time)
    assert all(not cg.exists() for cg in host._cgroups)
    assert _mounts_containing(str(tmp_path)) == []
    assert not lab.dir.exists()


# The owner of a lab dying must not leave hosts behind either.
_OWNER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    import hosts
    lab = hosts.Lab(1, Path(sys.argv[2])).start()
    h = lab.hosts[0]
    print(json.dumps({"pid": h.pid, "start": h._start_time, "address": h.address,
                      "cgroups": [str(c) for c in h._cgroups], "dir": str(lab.dir)}), flush=True)
    time.sleep(600)
    """
)


@dataclass(frozen=True)
class _OwnerInfo:
    pid: int
    start: int
    address: str
    cgroups: list[Path]
    dir: Path


def _start_owner(tmp_path: Path) -> tuple[subprocess.Popen[str], _OwnerInfo]:
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(Path(__file__).parent), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert owner.stdout is not None and owner.stderr is not None
    line = owner.stdout.readline()
    if not line:
        owner.wait(timeout=10)
        pytest.fail(f"lab owner failed: {owner.stderr.read()}")
    raw = json.loads(line)
    info = _OwnerInfo(
        pid=int(raw["pid"]),
        start=int(raw["start"]),
        address=str(raw["address"]),
        cgroups=[Path(c) for c in raw["cgroups"]],
        dir=Path(raw["dir"]),
    )
    return owner, info


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_dead_owner_takes_hosts_down(tmp_path: Path, sig: signal.Signals) -> None:
    owner, info = _start_owner(tmp_path)
    try:
        assert not _gone(info.pid, info.start)
        os.kill(owner.pid, sig)
        owner.wait(timeout=30)
    finally:
        if owner.poll() is None:
            owner.kill()  # its hosts follow it (PR_SET_PDEATHSIG)
            owner.wait()

    assert _wait_until(lambda: _gone(info.pid, info.start)), "host PID 1 outlived its owner"
    assert _wait_until(lambda: not _port_open(info.address, SSH_PORT))
    assert _wait_until(lambda: not any(_cgroup_pids(cg) for cg in info.cgroups if cg.exists()))
    assert _mounts_containing(str(tmp_path)) == []
    if sig == signal.SIGTERM:
        # the signal handler ran the full teardown
        assert all(not cg.exists() for cg in info.cgroups)
        assert not info.dir.exists()
    else:
        # nobody could remove the cgroups; the next lab run reaps them
        _reap_stale_runs()
        assert all(not cg.exists() for cg in info.cgroups)
