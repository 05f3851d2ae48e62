"""The kubeadm example applied over SSH to three real lab hosts (systemd + sshd), and its faults.

One Lab of 3 hosts is booted for the module; the ``cluster`` fixture installs fake control-plane
units on each, writes a kubeadm config whose hosts are the lab's 127.0.1.x addresses with
``transport = "ssh"`` and applies it once. The tests then run in file order against that one
cluster (each leaves it applied and its plan empty): what is on the hosts, restarts, drift,
a rotation with sshd cut mid-apply, host keys, symlinks, permissions, a failing unit.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pkiform.address import Address
from pkiform.apply import Event
from pkiform.cli import main
from pkiform.errors import HostKeyError, ServiceError, TransportError
from pkiform.provider import Action
from pkiform.transport import ssh as ssh_transport
from pkiform.transport.base import HealthCheck
from pkiform.transport.ssh import SshTransport
from pkiform.workspace import Workspace

from .hosts import Lab, LabHost, _port_open, lab_supported

_REASON = lab_supported()

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

UNITS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
FAKE_UNIT = "[Unit]\nDescription=fake {name} for pkiform lab tests\n\n" \
            "[Service]\nExecStart=/bin/sleep infinity\n"
FAILING_UNIT = "[Unit]\nDescription=broken {name}\n\n[Service]\nExecStart=/bin/false\n"
PKI = "/etc/kubernetes/pki"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- out ---\n{self.out[-6000:]}\n--- err ---\n{self.err[-6000:]}"


def cli(directory: Path, *argv: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    code = main(["-C", str(directory), "--no-color", *argv], out=out, err=err)
    return CliResult(code, out.getvalue(), err.getvalue())


def plan_json(directory: Path, *argv: str) -> dict[str, Any]:
    result = cli(directory, "plan", "--json", *argv)
    assert result.code == 0, str(result)
    return json.loads(result.out)


def host_table(lab: Lab, name: str, *, known_hosts: Path | None = None, user: str = "root",
               sudo: bool = False, groups: Iterable[str] = ("control-plane",)) -> str:
    host = lab.host(name)
    return (
        f"[hosts.{name}]\n"
        f'address = "{host.address}"\n'
        f"groups = {json.dumps(list(groups))}\n"
        'transport = "ssh"\n'
        f'user = "{user}"\n'
        f'identity_file = "{lab.key_path}"\n'
        f'known_hosts = "{known_hosts or lab.known_hosts_path}"\n'
        f"sudo = {'true' if sudo else 'false'}\n\n"
    )


def host_exec(host: LabHost, command: str, timeout: float = 30) -> str:
    """Run ``command`` inside ``host`` without ssh (works while its sshd is down).

    nsenter into the host's mount + PID namespaces and its root, so /proc, pkill and
    systemctl see only the host's processes; a guard refuses to run anywhere else.
    """
    guard = f'[ "$(hostname)" = {shlex.quote(host.name)} ] || exit 99; '
    res = subprocess.run(
        ["nsenter", "-t", str(host.pid), "-m", "-u", "-i", "-p", "-r", "-w", "--",
         "sh", "-c", guard + command],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )
    assert res.returncode != 99, f"{host.name}: nsenter did not land in the host"
    return res.stdout


def cut_ssh(host: LabHost) -> None:
    """Stop sshd on ``host`` and kill every established session (stopping ssh.service
    alone leaves sessions running: KillMode=process), so pkiform's connection dies."""
    host_exec(host, "systemctl stop ssh.socket ssh.service 2>/dev/null; pkill -KILL -x sshd; "
                    "true")
    assert not _port_open(host.address, 22)
    # (killed sessions linger as zombies until PID 1 reaps them)
    deadline = time.monotonic() + 10
    while host_exec(host, "ps -C sshd -o stat= | grep -v Z || true").strip():
        assert time.monotonic() < deadline, host_exec(host, "ps -C sshd -o pid,stat,args")
        time.sleep(0.05)


def restore_ssh(host: LabHost) -> None:
    host_exec(host, "systemctl start ssh.service")
    deadline = time.monotonic() + 20
    while not _port_open(host.address, 22):
        assert time.monotonic() < deadline, f"{host.name}: sshd did not come back"
        time.sleep(0.1)


def unit_props(host: LabHost, units: Iterable[str], props: Iterable[str]) -> dict[str, dict]:
    """``systemctl show`` of several units in one round trip: {unit: {prop: value}}."""
    names = [f"{u}.service" if "." not in u else u for u in units]
    out = host.run("systemctl show -p Id," + ",".join(props) + " " + shlex.join(names)).stdout
    result: dict[str, dict[str, str]] = {}
    for block in out.strip().split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        result[values["Id"].removesuffix(".service")] = values
    return result


def active_since(lab: Lab, units: Iterable[str] = UNITS) -> dict[tuple[str, str], int]:
    """ActiveEnterTimestampMonotonic (µs) of every unit on every host."""
    stamps = {}
    for host in lab.hosts:
        props = unit_props(host, units, ["ActiveEnterTimestampMonotonic", "ActiveState"])
        for unit, values in props.items():
            stamps[(host.name, unit)] = int(values["ActiveEnterTimestampMonotonic"])
    return stamps


def remote_stats(host: LabHost, paths: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """(mode, owner, group, sha256) of each path, read over ssh in one round trip."""
    script = ('for p in "$@"; do s=$(sha256sum < "$p"); '
              'echo "$(stat -c "%a %U %G" -- "$p") ${s%% *}"; done')
    out = host.run("sh -c " + shlex.quote(script) + " stats " + shlex.join(paths)).stdout
    lines = out.splitlines()
    assert len(lines) == len(paths), out
    return {p: tuple(line.split()) for p, line in zip(paths, lines, strict=True)}  # type: ignore[misc]


@dataclass(frozen=True)
class Managed:
    """One managed file: what the state records as written, and what a render gives now."""

    address: str
    recorded_sha256: str  # what the state says the host holds
    content: bytes  # rendered from the state's sources now (differs while a step is pending)
    mode: str
    owner: str
    group: str

    @property
    def pending(self) -> bool:
        return hashlib.sha256(self.content).hexdigest() != self.recorded_sha256


def managed_files(directory: Path) -> dict[str, dict[str, Managed]]:
    """{host: {path: Managed}} for every file resource in the (decrypted) state."""
    ws = Workspace(directory)
    state = ws.load_state(decrypt=True)
    files: dict[str, dict[str, Managed]] = {}
    for address, record in sorted(state.resources.items()):
        if record.kind != "file":
            continue
        spec = ws.config.resources[Address.parse(address)]
        source = str(spec["source"])
        source_record = state.get(source)
        assert source_record is not None, f"{address}: its source {source} is not in the state"
        content = ws.registry[source_record.kind].output_value(
            source_record.outputs, state.secrets_of(source), spec["content"])
        out = record.outputs
        files.setdefault(out["host"], {})[out["path"]] = Managed(
            address, out["content_sha256"], content, out["mode"].lstrip("0") or "0",
            out["owner"], out["group"])
    return files


_SURVEY = r"""
for p in "$@"; do
  case $p in
    dir:*) echo "D $(stat -c '%a %U' -- "${p#dir:}") ${p#dir:}" ;;
    *) s=$(sha256sum < "$p"); echo "F $(stat -c '%a %U %G' -- "$p") ${s%% *} $p" ;;
  esac
done
find /etc -name '.pkiform.*' | sed 's/^/T /'
"""


def deployment_problems(lab: Lab, directory: Path, hosts: Iterable[str] | None = None
                        ) -> list[str]:
    """Every difference between the hosts and what the state says they hold (content, mode,
    owner, group; keys 0600; directories 0755; no temp files; no step pending). Contents
    are compared byte for byte through the host's root; the rest is read over ssh, in one
    round trip per host."""
    problems = []
    for name, files in sorted(managed_files(directory).items()):
        if hosts is not None and name not in hosts:
            continue
        host = lab.host(name)
        dirs = sorted({str(Path(p).parent) for p in files} | {"/etc/kubernetes"})
        out = host.run("sh -c " + shlex.quote(_SURVEY) + " survey "
                       + shlex.join([*sorted(files), *(f"dir:{d}" for d in dirs)])).stdout
        stats, dir_modes, leftovers = {}, {}, []
        for line in out.splitlines():
            kind, *fields = line.split()
            if kind == "F":
                stats[fields[-1]] = tuple(fields[:-1])
            elif kind == "D":
                dir_modes[fields[-1]] = tuple(fields[:-1])
            else:
                leftovers.append(fields[0])
        for path, file in sorted(files.items()):
            if file.pending:
                problems.append(f"{name}:{path}: {file.address} has a pending change")
            if host.file_path(path).read_bytes() != file.content:
                problems.append(f"{name}:{path}: content differs from the state's")
            got_mode, got_owner, got_group, got_sha = stats[path]
            if got_sha != file.recorded_sha256:
                problems.append(f"{name}:{path}: sha256 over ssh differs from the state's")
            if (got_mode, got_owner, got_group) != (file.mode, file.owner, file.group):
                problems.append(f"{name}:{path}: {got_mode} {got_owner}:{got_group}, "
                                f"declared {file.mode} {file.owner}:{file.group}")
            if path.endswith(".key") and got_mode != "600":
                problems.append(f"{name}:{path}: a private key with mode {got_mode}")
        for path in dirs:
            if dir_modes[path] != ("755", "root"):
                problems.append(f"{name}:{path}: directory {dir_modes[path]}, expected 755 root")
        if leftovers:
            problems.append(f"{name}: temp files left: {leftovers}")
    return problems


def temp_files(host: LabHost, root: str = "/etc") -> list[str]:
    return host.run(f"find {root} -name '.pkiform.*'").stdout.split()


@dataclass
class Cluster:
    lab: Lab
    directory: Path
    before_first_apply: dict[tuple[str, str], int]
    first_apply: CliResult

    def host(self, name: str) -> LabHost:
        return self.lab.host(name)


def kubeadm_config(lab: Lab, *, known_hosts: dict[str, Path] | None = None) -> str:
    known_hosts = known_hosts or {}
    text = ('[settings]\nstate_dir = "state"\n\n'
            '[preset.kubeadm]\nkey = "ecdsa-p256"\nhealth_checks = false\n\n')
    for host in lab.hosts:
        text += host_table(lab, host.name, known_hosts=known_hosts.get(host.name))
    return text


def install_units(lab: Lab, template: str = FAKE_UNIT, *, hosts: Iterable[str] | None = None,
                  units: Iterable[str] = UNITS) -> None:
    """Write the units (replacing the lab's masks) and (re)start them: one round trip per
    host (``LabHost.install_unit`` does one daemon-reload per unit)."""
    units = list(units)
    script = "set -e; umask 022\n"
    for unit in units:
        path = f"/etc/systemd/system/{unit}.service"
        script += (f"rm -f {path}\ncat > {path} <<'EOF'\n{template.format(name=unit)}EOF\n")
    script += "systemctl daemon-reload\nsystemctl restart " + " ".join(
        f"{u}.service" for u in units) + "\n"
    for host in lab.hosts:
        if hosts is None or host.name in hosts:
            host.run(script)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(lab_hosts: Any) -> Lab:
    return lab_hosts(3)


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    install_units(lab)
    directory = tmp_path_factory.mktemp("kubeadm-ssh")
    (directory / "pkiform.toml").write_text(kubeadm_config(lab))
    before = active_since(lab)
    time.sleep(0.01)
    first = cli(directory, "apply", "--auto-approve")
    assert first.code == 0, str(first)
    yield Cluster(lab, directory, before, first)


def assert_plan_empty(directory: Path) -> None:
    result = cli(directory, "plan", "--detailed-exitcode")
    assert result.code == 0, str(result)
    assert "No changes." in result.out


# --------------------------------------------------------------------------------------
# the happy path
# --------------------------------------------------------------------------------------


def test_apply_writes_every_file_with_declared_content_owner_and_mode(cluster: Cluster) -> None:
    assert "Apply complete!" in cluster.first_apply.out
    assert "0 failed, 0 skipped" in cluster.first_apply.out
    files = managed_files(cluster.directory)
    # the kubeadm layout: 27 files on the first control-plane node (super-admin.conf), 26 on
    # the others
    assert {h: len(f) for h, f in files.items()} == {"lab-1": 27, "lab-2": 26, "lab-3": 26}
    assert deployment_problems(cluster.lab, cluster.directory) == []
    # nothing but pkiform's files under /etc/kubernetes, and no backups (nothing was replaced)
    for host in cluster.lab.hosts:
        found = set(host.run("find /etc/kubernetes -type f").stdout.split())
        assert found == set(files[host.name]), host.name
        assert not host.run("find /etc/kubernetes -type l").stdout.strip()


def test_certificates_verify_on_the_hosts(cluster: Cluster) -> None:
    # Real openssl on each host: every leaf chains to the CA file deployed beside it, and the
    # apiserver cert names the host's own address.
    pairs = [("ca.crt", "apiserver.crt"), ("ca.crt", "apiserver-kubelet-client.crt"),
             ("front-proxy-ca.crt", "front-proxy-client.crt"),
             ("etcd/ca.crt", "etcd/server.crt"), ("etcd/ca.crt", "etcd/peer.crt"),
             ("etcd/ca.crt", "etcd/healthcheck-client.crt"),
             ("etcd/ca.crt", "apiserver-etcd-client.crt")]
    keys = ("apiserver", "etcd/server", "etcd/peer", "front-proxy-client", "ca")
    script = "set -e; cd " + PKI + "\n"
    script += "".join(f"openssl verify -CAfile {ca} {leaf}\n" for ca, leaf in pairs)
    script += "openssl x509 -noout -ext subjectAltName -in apiserver.crt\n"
    # each key matches its certificate
    script += "".join(f'[ "$(openssl x509 -noout -pubkey -in {name}.crt)" = '
                      f'"$(openssl pkey -pubout -in {name}.key)" ] && echo "{name}: key matches"\n'
                      for name in keys)
    for host in cluster.lab.hosts:
        out = host.run(script).stdout
        assert out.count(": OK") == len(pairs), out
        assert f"IP Address:{host.address}" in out
        assert out.count("key matches") == len(keys), out


def test_declared_units_were_really_restarted(cluster: Cluster) -> None:
    after = active_since(cluster.lab)
    assert set(after) == set(cluster.before_first_apply)
    not_restarted = [key for key, stamp in after.items()
                     if stamp <= cluster.before_first_apply[key]]
    assert not_restarted == []
    out = cluster.first_apply.out
    for host in cluster.lab.hosts:
        for unit in UNITS:
            assert f"service.{unit}[{host.name}]" in out
        states = unit_props(host, UNITS, ["ActiveState"])
        assert {u: v["ActiveState"] for u, v in states.items()} == dict.fromkeys(UNITS, "active")


def test_second_plan_is_empty(cluster: Cluster) -> None:
    assert_plan_empty(cluster.directory)


def test_remote_edit_plans_exactly_that_update(cluster: Cluster) -> None:
    host = cluster.host("lab-2")
    path = f"{PKI}/apiserver.crt"
    original = host.file_path(path).read_bytes()
    host.run(f"printf x >> {path}")
    tampered = original + b"x"
    stamps = active_since(cluster.lab)

    plan = plan_json(cluster.directory)
    changes = [(c["address"], c["action"], c["reasons"]) for c in plan["changes"]]
    # Only the file: the bytes pkiform writes back are the ones kube-apiserver loaded at its
    # last restart, so there is nothing to reload (pkiform cannot know whether the unit
    # restarted on the tampered file meanwhile; the operator who edited it can).
    assert changes == [("file.apiserver-crt[lab-2]", "update", ["changed on host"])]

    applied = cli(cluster.directory, "apply", "--auto-approve")
    assert applied.code == 0, str(applied)
    assert "1 done, 0 failed, 0 skipped" in applied.out
    assert host.file_path(path).read_bytes() == original
    # the overwritten file was kept as the backup, with the same mode
    backup = host.file_path(path + ".pkiform-backup")
    assert backup.read_bytes() == tampered
    assert remote_stats(host, [path + ".pkiform-backup"])[path + ".pkiform-backup"][:3] == (
        "644", "root", "root")
    assert active_since(cluster.lab) == stamps  # nothing restarted
    assert temp_files(host) == []
    assert_plan_empty(cluster.directory)


def test_mode_drift_of_a_key_is_planned(cluster: Cluster) -> None:
    host = cluster.host("lab-3")
    path = f"{PKI}/apiserver.key"
    host.run(f"chmod 0644 {path}")
    try:
        plan = plan_json(cluster.directory)
        assert [c["address"] for c in plan["changes"]] == ["file.apiserver-key[lab-3]"]
    finally:
        host.run(f"chmod 0600 {path}")


# --------------------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------------------


def test_rotation_survives_sshd_cut_mid_apply(cluster: Cluster) -> None:
    lab, directory = cluster.lab, cluster.directory
    lab3 = cluster.host("lab-3")
    ws = Workspace(directory)
    plan = ws.plan(replace=["ca.kubernetes"])
    assert [p.name for p in plan.phases] == ["trust-both", "reissue", "retire"]
    cut_at: list[str] = []
    seen: list[Event] = []

    def hook(event: Event) -> None:
        seen.append(event)
        change = event.change
        # Cut lab-3 as its first write starts, while the other hosts' writes are under way.
        # (Cutting after some other host's first write left it to timing whether lab-3 had
        # anything left to write: with fast SSH it often had not.)
        if (not cut_at and event.kind == "start" and change is not None
                and change.host == "lab-3" and change.kind == "file"):
            cut_ssh(lab3)
            cut_at.append(str(change.address))

    try:
        result = ws.apply(plan, hooks=(hook,))
    finally:
        ws.close()
        if not _port_open(lab3.address, 22):
            restore_ssh(lab3)
    assert cut_at, "the hook never fired"
    assert not result.ok

    # every failure is on lab-3 and says what happened and what to do
    assert result.failed
    for change, reason in result.failed:
        assert change.host == "lab-3", (change.address, reason)
        assert reason.startswith("lab-3: "), reason
        assert any(what in reason for what in (
            "connection lost", "unreachable at", "closed the connection during login")), reason
        assert "fix: " in reason and "apply again" in reason, reason
    # (a CA has a step in every phase: changes are told apart by phase and address)
    def key(change: Any) -> tuple[str, str]:
        return (change.phase, str(change.address))

    skipped = {key(c): why for c, why in result.skipped}
    done = {key(c) for c in result.done}
    phase1 = [c for c in plan.changes if c.phase == "trust-both" and c.action is not Action.NOOP]
    # lab-3's dependents were skipped: none of its restarts ran
    lab3_restarts = [key(c) for c in phase1 if c.host == "lab-3" and c.action is Action.RESTART]
    assert lab3_restarts and not done & set(lab3_restarts)
    # each was skipped behind a failed write, or failed itself when lab-3's writes had all
    # landed before the cut (SSH is fast enough now that this depends on timing)
    failed = {key(c) for c, _ in result.failed}
    assert all(k in failed or skipped.get(k, "").startswith("depends on ")
               for k in lab3_restarts), (skipped, failed)
    # the other hosts' part of the phase was done; later phases did not start
    for change in phase1:
        if change.host != "lab-3":
            assert key(change) in done, (key(change), skipped.get(key(change)))
    later = {key(c) for c in plan.changes
             if c.phase != "trust-both" and c.action is not Action.NOOP}
    assert later and later <= set(skipped)
    assert all(skipped[k] == "an earlier phase did not complete" for k in later)
    assert not any(c.phase != "trust-both" for c in result.done)

    # The state is consistent: it loads, it records the rotation in progress, every file it
    # records matches its host on lab-1/lab-2, and an interrupted write left no temp file.
    state = Workspace(directory).load_state(decrypt=True)
    assert state.serial > 0
    assert deployment_problems(lab, directory, hosts=("lab-1", "lab-2")) == []
    # each lab-3 file is whole: either what the state recorded, or (cut after the rename,
    # before the step was recorded) the new content - never a torn or temp file
    lab3_files = managed_files(directory)["lab-3"]
    stats = remote_stats(lab3, sorted(lab3_files))
    for path, file in lab3_files.items():
        assert stats[path][3] in (file.recorded_sha256,
                                  hashlib.sha256(file.content).hexdigest()), path
    assert any(file.pending for file in lab3_files.values())
    assert temp_files(lab3) == []

    # sshd back: the next plan resumes phase 1 on lab-3, then the later phases
    resumed = plan_json(directory)
    assert [p["name"] for p in resumed["phases"]] == ["trust-both", "reissue", "retire"]
    phase1_left = {c["address"] for c in resumed["changes"] if c["phase"] == "trust-both"}
    assert phase1_left and all(a.endswith("[lab-3]") for a in phase1_left if "[" in a), \
        phase1_left
    applied = cli(directory, "apply", "--auto-approve")
    assert applied.code == 0, str(applied)
    assert "Apply complete!" in applied.out
    assert_plan_empty(directory)
    assert deployment_problems(lab, directory) == []
    # the rotation really happened: every host trusts only the new CA now, and certs chain
    ca_pems = {h.name: h.file_path(f"{PKI}/ca.crt").read_bytes() for h in lab.hosts}
    assert len(set(ca_pems.values())) == 1
    assert ca_pems["lab-1"].count(b"BEGIN CERTIFICATE") == 1
    for host in lab.hosts:
        assert ": OK" in host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/apiserver.crt"
                                  ).stdout


def _probe_config(lab: Lab, directory: Path, hosts: dict[str, dict[str, Any]],
                  path: str) -> Path:
    """A tiny config (one CA, its cert written to ``path`` on each host) for host-level
    faults that must not disturb the kubeadm cluster's files."""
    directory.mkdir(parents=True, exist_ok=True)
    text = ('[settings]\nstate_dir = "state"\n\n'
            '[ca.probe]\ncommon_name = "probe-ca"\nkey = "ecdsa-p256"\n\n'
            f'[file.probe]\nfor_each = "*"\npath = "{path}"\nsource = "ca.probe"\n'
            'content = "cert"\n\n')
    for name, options in hosts.items():
        text += host_table(lab, name, groups=("probe",), **options)
    (directory / "pkiform.toml").write_text(text)
    return directory


def _known_hosts_line(lab: Lab, host: LabHost) -> str:
    return next(line for line in lab.known_hosts_path.read_text().splitlines()
                if line.split()[0] == host.address)


def test_unknown_host_key_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    lab = cluster.lab
    lab1, lab3 = lab.host("lab-1"), lab.host("lab-3")
    known = tmp_path / "known_hosts"
    known.write_text(_known_hosts_line(lab, lab1) + "\n")  # lab-3 missing
    path = "/etc/pkiform-probe/unknown-key.crt"
    directory = _probe_config(lab, tmp_path / "cfg", {
        "lab-1": {"known_hosts": known}, "lab-3": {"known_hosts": known}}, path)

    applied = cli(directory, "apply", "--auto-approve")
    assert applied.code == 1, str(applied)
    assert "Error: file.probe[lab-3]: lab-3: the host key of " + lab3.address in applied.err
    assert "refusing to connect to an unknown host" in applied.err
    assert f"ssh-keyscan -p 22 {lab3.address} >> {known}" in applied.err  # how to trust it
    assert lab1.file_path(path).exists()
    assert not lab3.file_path(path).exists() and not lab3.file_path(path).parent.exists()
    assert known.read_text() == _known_hosts_line(lab, lab1) + "\n"  # nothing learned

    # plan's refresh of the cluster (it reads lab-3's files) stops with the same error
    copy = tmp_path / "cluster"
    shutil.copytree(cluster.directory, copy)
    (copy / "pkiform.toml").write_text(kubeadm_config(lab, known_hosts={"lab-3": known}))
    planned = cli(copy, "plan")
    assert planned.code == 1, str(planned)
    assert planned.err.startswith(f"Error: lab-3: the host key of {lab3.address} is not in")
    assert "ssh-keyscan" in planned.err

    ws = Workspace(directory)
    with pytest.raises(HostKeyError, match="not in"):
        SshTransport(ws.config.hosts["lab-3"], base_dir=directory).read_files([path])


def test_changed_host_key_is_refused(lab: Lab, tmp_path: Path) -> None:
    lab1, lab3 = lab.host("lab-1"), lab.host("lab-3")
    known = tmp_path / "known_hosts"
    # lab-3's address with lab-1's key: what a man in the middle (or a reinstall) looks like
    impostor = _known_hosts_line(lab, lab1).replace(lab1.address, lab3.address, 1)
    known.write_text(impostor + "\n")
    path = "/etc/pkiform-probe/changed-key.crt"
    directory = _probe_config(lab, tmp_path / "cfg", {"lab-3": {"known_hosts": known}}, path)
    applied = cli(directory, "apply", "--auto-approve")
    assert applied.code == 1, str(applied)
    assert f"lab-3: the host key of {lab3.address} CHANGED" in applied.err
    assert "ssh-keygen -R" in applied.err
    assert not lab3.file_path(path).exists()
    ws = Workspace(directory)
    with pytest.raises(HostKeyError, match="CHANGED"):
        SshTransport(ws.config.hosts["lab-3"], base_dir=directory).read_files([path])


def test_symlink_or_directory_at_a_target_path_is_refused(cluster: Cluster) -> None:
    host = cluster.host("lab-2")
    path = f"{PKI}/front-proxy-client.crt"
    elsewhere = "/root/elsewhere.crt"
    host.run(f"mv {path} {elsewhere} && ln -s {elsewhere} {path}")
    before = host.file_path(elsewhere).read_bytes()

    plan = plan_json(cluster.directory)
    assert [c["address"] for c in plan["changes"]] == ["file.front-proxy-client-crt[lab-2]"]
    applied = cli(cluster.directory, "apply", "--auto-approve")
    assert applied.code == 1, str(applied)
    assert (f"Error: file.front-proxy-client-crt[lab-2]: lab-2: refusing to write {path}: "
            "it is a symlink") in applied.err
    assert host.run(f"readlink {path}").stdout.strip() == elsewhere
    assert host.file_path(elsewhere).read_bytes() == before  # the link's target untouched

    host.run(f"rm {path} && mkdir {path}")
    applied = cli(cluster.directory, "apply", "--auto-approve")
    assert applied.code == 1, str(applied)
    assert f"refusing to write {path}: it exists and is not a regular file" in applied.err
    assert host.run(f"find {path} -mindepth 1").stdout == ""  # nothing written inside

    host.run(f"rmdir {path} && rm {elsewhere}")
    applied = cli(cluster.directory, "apply", "--auto-approve")
    assert applied.code == 0, str(applied)
    assert_plan_empty(cluster.directory)
    assert deployment_problems(cluster.lab, cluster.directory, hosts=("lab-2",)) == []


def test_truncated_upload_never_replaces_the_target(cluster: Cluster) -> None:
    # What a connection cut while a file streams looks like to the host: stdin ends early.
    # The host must notice (length + SHA-256) and leave the old file alone.
    host = cluster.host("lab-1")
    path = f"{PKI}/ca.crt"
    before = host.file_path(path).read_bytes()
    ws = Workspace(cluster.directory)
    transport = SshTransport(ws.config.hosts["lab-1"], base_dir=cluster.directory)
    content = b"-----BEGIN CERTIFICATE-----\n" + b"A" * 4000 + b"\n"
    try:
        # Two files in one command, the stream cut inside the first: neither is replaced.
        args = []
        for target in (path, f"{PKI}/front-proxy-ca.crt"):
            args += [target, "0644", "root:root", str(len(content)),
                     hashlib.sha256(content).hexdigest(), "1", f".pkiform.cut{len(args)}"]
        proxy_before = host.file_path(f"{PKI}/front-proxy-ca.crt").read_bytes()
        status, out, err = transport._exec(ssh_transport._WRITE_SCRIPT, args,
                                           stdin=content[:1500])
        assert status == 0, err
        assert out.splitlines() == [
            f"1 43 received 1500 of 4029 bytes for {path}; left unchanged",
            f"2 43 received 0 of 4029 bytes for {PKI}/front-proxy-ca.crt; left unchanged"]
        assert host.file_path(f"{PKI}/front-proxy-ca.crt").read_bytes() == proxy_before
        # the same bytes in full go through
        other = f"/etc/pkiform-probe/{time.monotonic_ns()}.crt"
        transport.write_file(other, content, mode=0o640, owner="root", group="root")
        assert host.file_path(other).read_bytes() == content
        assert remote_stats(host, [other])[other][:3] == ("640", "root", "root")
    finally:
        transport.close()
    assert host.file_path(path).read_bytes() == before
    assert temp_files(host) == []


def test_concurrent_writes_share_commands_and_keep_their_own_outcomes(lab: Lab,
                                                                      tmp_path: Path) -> None:
    """Writes that wait for a session are carried together, several files per command; each
    file is still atomic on its own, and each caller gets its own outcome: a symlink at one
    target fails that write alone."""
    host = lab.host("lab-2")
    base = "/etc/pkiform-batch"
    host.run(f"rm -rf {base}; mkdir -p {base}; ln -s /etc/hostname {base}/link.crt")
    directory = _probe_config(lab, tmp_path / "cfg", {"lab-2": {}}, f"{base}/x.crt")
    transport = SshTransport(Workspace(directory).config.hosts["lab-2"], base_dir=directory)
    commands: list[int] = []
    carry = transport._exec_in_session

    def counted(script: str, args: Any = (), **kwargs: Any) -> tuple[int, str, str]:
        if script == ssh_transport._WRITE_SCRIPT:
            commands.append(len(args) // 7)
        return carry(script, args, **kwargs)

    transport._exec_in_session = counted  # type: ignore[method-assign]
    in_flight, most = 0, 0
    guard = threading.Lock()
    carry_upload = transport._upload

    def watched(batch: Any) -> None:
        nonlocal in_flight, most
        with guard:
            in_flight += 1
            most = max(most, in_flight)
        try:
            carry_upload(batch)
        finally:
            with guard:
                in_flight -= 1

    transport._upload = watched  # type: ignore[method-assign]
    names = [f"{base}/d{n % 3}/f{n}.crt" for n in range(40)] + [f"{base}/link.crt"]
    contents = {name: f"content of {name}\n".encode() * (1 + len(name) % 7) for name in names}
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            futures = {name: pool.submit(transport.write_file, name, contents[name],
                                         mode=0o600 if name.endswith("5.crt") else 0o644,
                                         owner="root", group="root")
                       for name in names}
        errors = {name: f.exception() for name, f in futures.items() if f.exception()}
    finally:
        transport.close()
    assert list(errors) == [f"{base}/link.crt"], errors
    assert "it is a symlink" in str(errors[f"{base}/link.crt"])
    # every file in exactly one command; some commands carried several (how many depends on
    # how busy the sessions were: a write that finds a session free goes at once)
    assert sum(commands) == len(names) and max(commands) > 1, commands
    # group commit: at most UPLOAD_COMMANDS upload commands at a time; the rest wait for one
    assert most == ssh_transport.UPLOAD_COMMANDS, most
    stats = remote_stats(host, names[:-1])
    for name in names[:-1]:
        assert host.file_path(name).read_bytes() == contents[name]
        assert stats[name][:3] == ("600" if name.endswith("5.crt") else "644", "root", "root")
    assert host.run(f"readlink {base}/link.crt").stdout.strip() == "/etc/hostname"
    assert temp_files(host, base) == []


def test_one_command_sets_each_files_owner_and_mode(lab: Lab, tmp_path: Path) -> None:
    """A command that carries files of several owners and modes sets each file's own (one
    chown/chmod per run of equal values); an owner that does not exist fails its file alone,
    with the owner's error, and no temp file is left."""
    host = lab.host("lab-2")
    base = "/etc/pkiform-owners"
    host.run(f"rm -rf {base}; mkdir -p {base}")
    directory = _probe_config(lab, tmp_path / "cfg", {"lab-2": {}}, f"{base}/x.crt")
    transport = SshTransport(Workspace(directory).config.hosts["lab-2"], base_dir=directory)
    wanted = {  # name: (mode, owner spec)
        "a.crt": ("0644", "root:root"), "b.key": ("0600", "root:root"),
        "c.crt": ("0644", "nobody:nogroup"), "d.crt": ("0640", "nobody"),
        "e.crt": ("0644", "no-such-user:root"), "f.crt": ("0644", ""),
        "g.key": ("0600", "nobody:nogroup"), "h.crt": ("0444", "root:root"),
    }
    uploads = [ssh_transport._Upload(f"{base}/{name}", f"{name}\n".encode(), mode, owner, True)
               for name, (mode, owner) in wanted.items()]
    commands: list[int] = []
    carry = transport._exec_in_session

    def counted(script: str, args: Any = (), **kwargs: Any) -> tuple[int, str, str]:
        commands.append(len(args) // 7)
        return carry(script, args, **kwargs)

    transport._exec_in_session = counted  # type: ignore[method-assign]
    try:
        with transport._sessions:
            transport._upload(uploads)
    finally:
        transport.close()
    assert commands == [len(wanted)]
    errors = {u.path.rpartition("/")[2]: u.error for u in uploads if u.error is not None}
    assert list(errors) == ["e.crt"], errors
    assert "does not exist on the host" in str(errors["e.crt"])
    written = [f"{base}/{name}" for name in wanted if name != "e.crt"]
    stats = remote_stats(host, written)
    for name, (mode, owner) in wanted.items():
        path = f"{base}/{name}"
        if name == "e.crt":
            assert not host.file_path(path).exists()
            continue
        user, _, group = owner.partition(":")  # chown USER alone leaves the group as made
        user, group = user or "root", group or "root"
        assert host.file_path(path).read_bytes() == f"{name}\n".encode()
        assert stats[path][:3] == (mode.lstrip("0"), user, group), (name, stats[path])
    assert temp_files(host, base) == []


@pytest.fixture(scope="module")
def deployer(lab: Lab) -> str:
    """A non-root user on lab-1 that logs in with the lab's key."""
    host = lab.host("lab-1")
    host.run("id deployer >/dev/null 2>&1 || useradd -m -s /bin/sh deployer; "
             "install -d -m 0700 -o deployer -g deployer ~deployer/.ssh; "
             "install -m 0600 -o deployer -g deployer /root/.ssh/authorized_keys "
             "~deployer/.ssh/authorized_keys")
    return "deployer"


def test_non_root_without_sudo_gets_permission_denied(lab: Lab, deployer: str,
                                                      tmp_path: Path) -> None:
    host = lab.host("lab-1")
    path = "/etc/pkiform-probe/non-root.crt"
    directory = _probe_config(lab, tmp_path / "cfg", {"lab-1": {"user": deployer}}, path)
    applied = cli(directory, "apply", "--auto-approve")
    assert applied.code == 1, str(applied)
    assert f"lab-1: permission denied writing {path}" in applied.err
    assert "set sudo = true for this host" in applied.err
    assert not host.file_path(path).exists()
    # reading root-only files (refresh) says the same instead of failing obscurely
    ws = Workspace(directory)
    transport = SshTransport(ws.config.hosts["lab-1"], base_dir=directory)
    try:
        with pytest.raises(TransportError, match="permission denied") as excinfo:
            transport.read_files([f"{PKI}/ca.crt", f"{PKI}/ca.key"])
        assert "set sudo = true" in str(excinfo.value)
        assert f"cannot read {PKI}/ca.key as deployer" in str(excinfo.value)
    finally:
        transport.close()


SUDO_MISSING = shutil.which("sudo") is None


@pytest.mark.skipif(SUDO_MISSING, reason="sudo is not installed on this machine (lab hosts "
                    "run its /usr): run scripts/install-test-deps.sh, which installs it")
def test_non_root_with_passwordless_sudo_works(lab: Lab, deployer: str, tmp_path: Path) -> None:
    host = lab.host("lab-1")
    path = "/etc/pkiform-probe/sudo.crt"
    directory = _probe_config(lab, tmp_path / "cfg",
                              {"lab-1": {"user": deployer, "sudo": True}}, path)
    host.run("rm -f /etc/sudoers.d/deployer")
    refused = cli(directory, "apply", "--auto-approve")
    assert refused.code == 1, str(refused)
    assert "sudo refused" in refused.err and "NOPASSWD" in refused.err
    host.run("echo 'deployer ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deployer && "
             "chmod 0440 /etc/sudoers.d/deployer")
    try:
        applied = cli(directory, "apply", "--auto-approve")
        assert applied.code == 0, str(applied)
        assert remote_stats(host, [path])[path][:3] == ("644", "root", "root")
        assert_plan_empty(directory)
    finally:
        host.run("rm -f /etc/sudoers.d/deployer")


def test_failing_unit_stops_its_rolling_group(cluster: Cluster) -> None:
    lab, directory = cluster.lab, cluster.directory
    install_units(lab, FAILING_UNIT, hosts=("lab-2",), units=("kube-apiserver",))
    try:
        before = active_since(lab, ["kube-apiserver"])
        ws = Workspace(directory)
        plan = ws.plan(replace=["cert.apiserver"])
        restarts = [str(c.address) for c in plan.changes if c.action is Action.RESTART]
        assert restarts == [f"service.kube-apiserver[lab-{i}]" for i in (1, 2, 3)]
        result = ws.apply(plan)
        ws.close()

        assert [str(c.address) for c, _ in result.failed] == ["service.kube-apiserver[lab-2]"]
        reason = result.failed[0][1]
        assert reason.startswith("lab-2: kube-apiserver.service ")
        assert "last journal lines:" in reason
        assert "status=1/FAILURE" in reason  # from the unit's journal
        assert "the rollout continues from this host" in reason
        skipped = {str(c.address): why for c, why in result.skipped}
        assert skipped == {"service.kube-apiserver[lab-3]":
                           "depends on service.kube-apiserver[lab-2], which failed"}
        after = active_since(lab, ["kube-apiserver"])
        assert after[("lab-1", "kube-apiserver")] > before[("lab-1", "kube-apiserver")]
        assert after[("lab-3", "kube-apiserver")] == before[("lab-3", "kube-apiserver")]
        # the state knows where it stopped: the new certs are deployed everywhere, and only
        # the two restarts that did not happen are left
        assert deployment_problems(lab, directory) == []
        left = plan_json(directory)
        assert [(c["address"], c["action"]) for c in left["changes"]] == [
            ("service.kube-apiserver[lab-2]", "restart"),
            ("service.kube-apiserver[lab-3]", "restart")]
    finally:
        install_units(lab, hosts=("lab-2",), units=("kube-apiserver",))

    applied = cli(directory, "apply", "--auto-approve")
    assert applied.code == 0, str(applied)
    final = active_since(lab, ["kube-apiserver"])
    assert final[("lab-1", "kube-apiserver")] == after[("lab-1", "kube-apiserver")]
    assert final[("lab-3", "kube-apiserver")] > after[("lab-3", "kube-apiserver")]
    assert_plan_empty(directory)


def test_restart_outcomes_seen_by_the_transport(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("lab-3")
    units = {
        # Type=simple units are "active" as soon as they are forked: the transport must not
        # take that for success when the process exits a moment later.
        "pkiform-flaky": "[Service]\nExecStart=/bin/sh -c 'sleep 0.3; exit 3'\n",
        # ... nor a unit that crashes and is restarted by systemd before the next look:
        # active again, but another invocation.
        "pkiform-looping": "[Service]\nExecStart=/bin/sh -c 'sleep 0.1; exit 3'\n"
                           "Restart=always\nRestartSec=10ms\n",
        "pkiform-gone": "[Service]\nExecStart=/bin/false\n",
        # dies after the default settle window: only a wider one (settle_seconds) sees it
        "pkiform-late": "[Service]\nExecStart=/bin/sh -c 'sleep 3; exit 3'\n",
        "pkiform-fine": "[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n",
    }
    for name, text in units.items():
        install_units(lab, text, hosts=("lab-3",), units=(name,))
    directory = _probe_config(lab, tmp_path / "cfg", {"lab-3": {}}, "/etc/pkiform-probe/x.crt")
    transport = SshTransport(Workspace(directory).config.hosts["lab-3"], base_dir=directory)
    try:
        for unit, status in (("pkiform-flaky", "status=3/NOTIMPLEMENTED"),
                             ("pkiform-looping", "status=3/NOTIMPLEMENTED"),
                             ("pkiform-gone", "status=1/FAILURE")):
            with pytest.raises(ServiceError) as excinfo:
                transport.restart_service(f"{unit}.service", reload=False, health=None,
                                          timeout=10)
            message = str(excinfo.value)
            assert message.startswith(f"lab-3: {unit}.service ")
            assert status in message and "last journal lines:" in message, message
        host.run("systemctl stop pkiform-looping.service")
        outcome = transport.restart_service("pkiform-late.service", reload=False, health=None,
                                            timeout=10)
        assert outcome.performed  # the default window is shorter than its 3 s of life
        with pytest.raises(ServiceError, match="went down again") as excinfo:
            transport.restart_service("pkiform-late.service", reload=False, health=None,
                                      timeout=10, settle=6)
        assert "status=3/NOTIMPLEMENTED" in str(excinfo.value)
        # every command is a few small packets: Nagle's algorithm would cost ~40 ms each
        sock = transport._connect().client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        started = time.monotonic()
        with pytest.raises(ServiceError, match="is not loaded on the host"):
            transport.restart_service("pkiform-missing.service", reload=False, health=None,
                                      timeout=30)
        assert time.monotonic() - started < 5  # at once, not after the timeout
        host.run("systemctl mask pkiform-masked.service")  # loaded as masked: refused too
        with pytest.raises(ServiceError, match=r"is not loaded on the host \(LoadState=masked"):
            transport.restart_service("pkiform-masked.service", reload=False, health=None,
                                      timeout=30)

        # reload keeps the process; a health check is waited for, and its output reported
        pid = unit_props(host, ["pkiform-fine"], ["MainPID"])["pkiform-fine"]["MainPID"]
        outcome = transport.restart_service("pkiform-fine.service", reload=True, health=None,
                                            timeout=10)
        assert outcome.performed and outcome.detail.startswith("reloaded, active after")
        assert unit_props(host, ["pkiform-fine"], ["MainPID"])["pkiform-fine"]["MainPID"] == pid
        health = HealthCheck(command="cat /run/pkiform-healthy", timeout=1)
        host.run("rm -f /run/pkiform-healthy")
        with pytest.raises(ServiceError, match="health check failed") as excinfo:
            transport.restart_service("pkiform-fine.service", reload=False, health=health,
                                      timeout=10)
        assert "No such file or directory" in str(excinfo.value)
        host.run("touch /run/pkiform-healthy")
        started = time.monotonic()
        outcome = transport.restart_service("pkiform-fine.service", reload=False,
                                            health=health, timeout=10)
        assert "healthy after" in outcome.detail and "up for" not in outcome.detail
        # the health check is the gate: no settle window after it unless one is asked for
        assert time.monotonic() - started < 0.9, outcome.detail
        assert unit_props(host, ["pkiform-fine"], ["MainPID"])["pkiform-fine"]["MainPID"] != pid

        # A unit that dies while its health check is still failing fails at once (with its
        # journal), not after the health timeout.
        never = HealthCheck(command="false", timeout=30)

        def dies_while_checked(unit: str, within: float) -> None:
            started = time.monotonic()
            with pytest.raises(ServiceError, match="went down again while waiting for its "
                               "health check") as excinfo:
                transport.restart_service(unit, reload=False, health=never, timeout=10)
            assert "status=3/NOTIMPLEMENTED" in str(excinfo.value)
            assert time.monotonic() - started < within

        dies_while_checked("pkiform-flaky.service", 10)
        # A check that passes on the process systemd restarted after a crash is not enough:
        # the unit must still be the invocation that became active.
        slow = HealthCheck(command="sleep 0.5", timeout=10)
        with pytest.raises(ServiceError, match="went down again") as excinfo:
            transport.restart_service("pkiform-looping.service", reload=False, health=slow,
                                      timeout=10)
        assert "NRestarts" in str(excinfo.value) or "status=3" in str(excinfo.value)
        host.run("systemctl stop pkiform-looping.service; systemctl reset-failed "
                 "pkiform-looping.service 2>/dev/null; true")
        # ... nor while the check still fails: the crashed main process is missed in /proc
        # at the next try, and the unit, looked at then, is another invocation.
        dies_while_checked("pkiform-looping.service", 5)
        host.run("systemctl stop pkiform-looping.service")
        # settle_seconds still applies after a passing health check (minReadySeconds)
        with pytest.raises(ServiceError, match="went down again within"):
            transport.restart_service("pkiform-late.service", reload=False,
                                      health=HealthCheck(command="true", timeout=5),
                                      timeout=10, settle=6)
    finally:
        transport.close()
