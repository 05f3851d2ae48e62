"""Lab hosts: real systemd + sshd "VMs" on this one machine, for pkiform's tests.

See ``/work/shared/LAB.md`` for the recipe this implements.  In short, a lab host is

* a PID + mount + UTS + IPC + cgroup namespace (``unshare``),
* whose root is an overlay of the machine's own ``/`` (lower) with the upper and work
  dirs on a fresh tmpfs, so everything the host writes lands in memory and neither the
  machine nor the other hosts see it,
* with fresh ``/proc``, read-only ``/sys``, a private minimal ``/dev``, and fresh tmpfs
  on ``/run`` and ``/tmp`` (systemd-tmpfiles empties ``/tmp`` at boot),
* running ``/lib/systemd/systemd --system`` as its PID 1, in container mode,
* with sshd bound only to the host's own loopback address ``127.0.1.N`` (all hosts
  share the machine's network namespace; all of 127.0.0.0/8 is loopback on Linux).

Only the host's processes ever see its mounts: they are made inside its private mount
namespace and vanish with it.  From outside, the host's filesystem is reached through
``/proc/<pid>/root`` (see :attr:`LabHost.root`).

Teardown SIGKILLs each host's PID 1 (SIGTERM would make systemd re-execute itself),
which takes the whole PID namespace, its processes and its mounts with it.  As safety
nets: ``close()`` is called from ``__exit__``, from ``atexit`` and from SIGTERM/SIGHUP
handlers; and every host's launcher runs with ``PR_SET_PDEATHSIG=SIGKILL`` (and
``unshare --kill-child``), so even a SIGKILLed test process takes its hosts with it.

This module deliberately does not import pytest.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import errno
import fcntl
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

__all__ = [
    "ADDRESS_PREFIX",
    "LAB_PACKAGES",
    "SAFETY_MASKED_UNITS",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabHost",
    "LabTimeout",
    "default_masked_units",
    "ensure_lab_packages",
    "lab_supported",
]

ADDRESS_PREFIX = "127.0.1."
SSH_PORT = 22
SYSTEMD = Path("/lib/systemd/systemd")
SSHD = Path("/usr/sbin/sshd")
LAB_PACKAGES = ("openssh-server", "etcd-server", "etcd-client")

# Address and run locks (flock), so concurrent lab runs on this machine never pick the
# same 127.0.1.N and never reap each other's cgroups.
LOCK_DIR = Path("/run/lock/pkiform-lab")
# Per-host cgroups are created as <our cgroup>/<CGROUP_PREFIX><run id>-<host name> in
# every hierarchy.
CGROUP_PREFIX = "pkiform-lab-"
# Every lab host's systemd, journald, logind and a root login's ``systemd --user`` take
# inotify instances (~7 per host) from one machine-wide per-user budget: all hosts run as
# the machine's root.  Debian's default of 128 runs out with two 12-host labs up at once,
# and a host then boots degraded (user@0.service: "Too many open files").
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
LAB_INOTIFY_INSTANCES = 4096

# Units masked in every lab host no matter what the caller asks for: they would reach
# out of the host (network, the real disks, the real kernel's settings, the real
# console) or just slow boot down.  Most are also skipped by systemd's own conditions
# in container mode / with a read-only /sys; masking makes that explicit and robust.
SAFETY_MASKED_UNITS: tuple[str, ...] = (
    # network access (NTP, package downloads)
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    # real block devices / filesystems
    "fstrim.timer",
    "fstrim.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    # real kernel state
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-pstore.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    # terminals: there are none in a lab host
    "getty.target",
    "console-getty.service",
    # periodic jobs nobody needs during a test
    "man-db.timer",
    "dpkg-db-backup.timer",
    "systemd-tmpfiles-clean.timer",
)

# Services enabled on the image that a lab host keeps running.
_KEEP_ENABLED = frozenset({"ssh.service", "sshd.service"})

# Heavy or clashing services masked by default if the image has their unit at all.
# etcd binds 127.0.0.1:2379 by default, so two hosts running it would clash.
_HEAVY_SERVICES = (
    "etcd.service",
    "etcd2.service",
    "postgresql.service",
    "postgresql@.service",
    "mysql.service",
    "mariadb.service",
    "redis-server.service",
    "redis.service",
    "memcached.service",
    "nginx.service",
    "apache2.service",
    "docker.service",
    "docker.socket",
    "containerd.service",
    "kubelet.service",
    "cron.service",
)

_UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
_UNIT_NAME = re.compile(
    r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|target|timer|mount|automount|path|slice|scope)$"
)


class LabError(RuntimeError):
    """A lab host could not be booted or torn down."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run on a lab host failed; str() includes its output."""

    def __init__(self, host: str, cmd: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(returncode, cmd, stdout, stderr)
        self.host = host

    def __str__(self) -> str:
        return (
            f"{self.host}: {self.cmd!r} exited {self.returncode}\n"
            f"--- stdout ---\n{_tail(self.stdout)}\n--- stderr ---\n{_tail(self.stderr)}"
        )


class LabTimeout(subprocess.TimeoutExpired):
    """A command run on a lab host timed out; str() includes the host's journal."""

    def __init__(
        self, host: LabHost, cmd: str, timeout: float, exc: subprocess.TimeoutExpired
    ) -> None:
        super().__init__(cmd, timeout, exc.output, exc.stderr)
        self.host = host.name
        self.diagnostics = host.diagnostics()

    def __str__(self) -> str:
        return f"{self.host}: {self.cmd!r} timed out after {self.timeout}s\n{self.diagnostics}"


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# Environment checks and packages
# --------------------------------------------------------------------------------------


def lab_supported() -> str | None:
    """Return None if lab hosts can run here, else a human-readable reason why not."""
    if sys.platform != "linux":
        return "lab hosts need Linux"
    if os.geteuid() != 0:
        return "lab hosts need root (namespaces, mounts, cgroups)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    if not re.search(r"\boverlay$", filesystems, re.MULTILINE):
        return "overlayfs is not available (no 'overlay' in /proc/filesystems)"
    for tool in ("unshare", "nsenter", "setpriv", "chroot", "tar", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing (systemd is not installed)"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing (install openssh-server, see scripts/install-test-deps.sh)"
    try:
        hierarchies = _cgroup_hierarchies()
    except OSError as exc:
        return f"cannot inspect cgroups: {exc}"
    if not any(h.is_systemd or h.is_v2 for h in hierarchies):
        return "no name=systemd or cgroup2 hierarchy is mounted under /sys/fs/cgroup"
    return None


def _missing_packages(packages: Sequence[str]) -> list[str]:
    missing = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 or res.stdout.strip() != "install ok installed":
            missing.append(pkg)
    return missing


def ensure_lab_packages(packages: Sequence[str] = LAB_PACKAGES) -> list[str]:
    """apt-get install ``packages`` that are not installed yet; return what was installed.

    Does not touch apt at all when everything is present.  ``apt-get update`` runs only
    when apt does not know a candidate for a missing package.  Installing does not start
    any service: nothing runs systemd as PID 1 on the machine itself.
    """
    missing = _missing_packages(packages)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError(f"need root to install {missing}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # wait for another apt/dpkg run instead of failing on its lock
    apt_get = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
    unknown = [
        pkg
        for pkg in missing
        if "Candidate: (none)" in (policy := _apt_policy(pkg, env)) or "Candidate:" not in policy
    ]
    if unknown:
        subprocess.run([*apt_get, "update"], env=env, check=True, capture_output=True, text=True)
    subprocess.run(
        [*apt_get, "install", "-y", *missing],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    still = _missing_packages(missing)
    if still:
        raise LabError(f"apt-get install did not install {still}")
    return missing


def _apt_policy(pkg: str, env: dict[str, str]) -> str:
    return subprocess.run(
        ["apt-cache", "policy", pkg],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout


def default_masked_units() -> tuple[str, ...]:
    """Units masked in every lab host besides :data:`SAFETY_MASKED_UNITS`.

    That is: the known heavy/clashing services (etcd, databases, web servers, docker, ...)
    whose unit exists on this image, plus every unit the image has enabled under
    ``/etc/systemd/system/*.wants`` except sshd.  Tests re-create the services they want
    (``LabHost.install_unit``), so nothing else should start on its own.
    """
    units: set[str] = set()
    for name in _HEAVY_SERVICES:
        if any((d / name).exists() or (d / name).is_symlink() for d in _UNIT_DIRS):
            units.add(name)
    for wants in Path("/etc/systemd/system").glob("*.wants"):
        for link in wants.iterdir():
            # remote-fs.target and similar targets are harmless synchronisation points
            if link.name not in _KEEP_ENABLED and not link.name.endswith(".target"):
                units.add(link.name)
    return tuple(sorted(units))


# --------------------------------------------------------------------------------------
# cgroups
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hierarchy:
    """One cgroup hierarchy this process belongs to, with where it is mounted."""

    hid: str  # hierarchy id from /proc/self/cgroup ("0" for cgroup2)
    controllers: str  # "memory", "name=systemd", "" for cgroup2
    own_dir: Path  # directory of this process's cgroup in that hierarchy

    @property
    def is_v2(self) -> bool:
        return self.hid == "0"

    @property
    def is_systemd(self) -> bool:
        return self.controllers == "name=systemd"


def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _mountinfo(pid: str = "self") -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) for each mount visible to ``pid``."""
    mounts = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        mounts.append(
            (
                _unescape_mountinfo(fields[3]),
                _unescape_mountinfo(fields[4]),
                post_fields[0],
                post_fields[2],
            )
        )
    return mounts


def _cgroup_hierarchies() -> list[_Hierarchy]:
    mounts = _mountinfo()
    result = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        wanted = set(controllers.split(",")) if controllers else set()
        for root, mountpoint, fstype, opts in mounts:
            if hid == "0":
                match = fstype == "cgroup2"
            else:
                match = fstype == "cgroup" and wanted <= set(opts.split(","))
            if not match or not (path + "/").startswith(root.rstrip("/") + "/"):
                continue
            rel = path[len(root.rstrip("/")) :].lstrip("/")
            result.append(_Hierarchy(hid, controllers, Path(mountpoint) / rel))
            break
    return result


def _make_cgroup(hierarchy: _Hierarchy, name: str) -> Path:
    path = hierarchy.own_dir / name
    path.mkdir()
    if "cpuset" in hierarchy.controllers.split(","):
        # A new cgroup v1 cpuset starts with no CPUs/memory nodes and refuses tasks.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            (path / knob).write_text((hierarchy.own_dir / knob).read_text())
    return path


def _cgroup_pids(top: Path) -> list[int]:
    pids: list[int] = []
    for procs in top.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except OSError:
            pass
    return pids


def _remove_cgroup_tree(top: Path) -> None:
    """rmdir a cgroup and its descendants, deepest first (cgroupfs only allows rmdir)."""
    if not top.is_dir():
        return
    dirs = sorted(
        (p for p in top.rglob("*") if p.is_dir()),
        key=lambda p: len(p.parts),
        reverse=True,
    )
    for d in [*dirs, top]:
        try:
            d.rmdir()
        except FileNotFoundError:
            pass


def _reap_stale_runs() -> None:
    """Clean up after lab runs that died without tearing down (e.g. SIGKILLed).

    Their hosts are gone already (PR_SET_PDEATHSIG), but their per-host cgroups and lock
    files remain.  Only runs whose run lock is free are touched, and rmdir of a cgroup
    that still has processes fails, so this never disturbs a live run.
    """
    for hierarchy in _cgroup_hierarchies():
        try:
            candidates = [
                p for p in hierarchy.own_dir.iterdir() if p.name.startswith(CGROUP_PREFIX)
            ]
        except OSError:
            continue
        for cg in candidates:
            run_id = cg.name[len(CGROUP_PREFIX) :].split("-", 1)[0]
            lock = _Lock.try_acquire(LOCK_DIR / f"run-{run_id}.lock")
            if lock is None:
                continue  # a live run owns it
            try:
                if not _cgroup_pids(cg):
                    _remove_cgroup_tree(cg)
            except OSError:
                pass
            finally:
                lock.release()
    # Lock files nobody holds (safe to remove: see _Lock).
    for path in LOCK_DIR.glob("*.lock"):
        lock = _Lock.try_acquire(path)
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------


def _raise_inotify_limit(wanted: int = LAB_INOTIFY_INSTANCES) -> None:
    """Raise (never lower) the per-user inotify instance limit, so concurrent lab runs on
    this machine do not make each other's hosts boot degraded."""
    try:
        if int(INOTIFY_INSTANCES.read_text()) < wanted:
            INOTIFY_INSTANCES.write_text(f"{wanted}\n")
    except (OSError, ValueError):
        pass  # not writable here: the lab may still boot; a degraded boot says why


def _start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (to tell a process from a later one reusing its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def _ns_inode(pid: int, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def _pids_in_namespace(ns: str, inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _ns_inode(int(entry), ns) == inode:
            pids.append(int(entry))
    return pids


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class _Lock:
    """An flock()ed lock file that is unlinked on release.

    Holders only ever unlink a lock file while holding it, and ``try_acquire`` checks
    after flock() that the file it locked is still the one at ``path`` - so deleting
    lock files cannot let two holders in at once.
    """

    path: Path
    fd: int

    @classmethod
    def try_acquire(cls, path: Path) -> _Lock | None:
        """The lock, or None if somebody else holds it (never blocks)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return cls(path, fd)
            except FileNotFoundError:
                pass
            os.close(fd)  # unlinked by its previous holder meanwhile: try again

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def _port_free(address: str, port: int) -> bool:
    """True if nothing listens on address:port (SO_REUSEADDR ignores TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# boot script
# --------------------------------------------------------------------------------------

# Runs twice: "outer" on the machine (join the host's cgroups, then unshare into the new
# namespaces), and "inner" as PID 1 of the new PID namespace (build the root, exec
# systemd).  Everything mounted in "inner" exists only in the host's mount namespace.
_BOOT_SCRIPT = r"""#!/bin/bash
# Generated by tests/lab/hosts.py -- boots lab host {name}.
set -euo pipefail
HOSTDIR={hostdir}
if [ "${{1:-}}" = outer ]; then
    for procs in {cgroup_procs}; do echo $$ > "$procs"; done
    # container= puts systemd in container mode: it takes its settings from argv, not
    # from the machine's kernel command line, does not log to the machine's kmsg, and
    # skips units meant for real hardware (ConditionVirtualization=!container).
    exec env -i container=pkiform-lab PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --propagation private \
        /bin/bash "$HOSTDIR/boot.sh" inner
fi

M=$HOSTDIR/mnt
R=$M/root
mount -t tmpfs -o mode=0755 pkiform-lab "$M"
mkdir "$M/upper" "$M/work" "$R"
mount -t overlay overlay -o "lowerdir=/,upperdir=$M/upper,workdir=$M/work" "$R"

mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
# /proc/sys is global for most settings: read-only, so the host cannot change the
# machine's kernel parameters.
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then
    mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
    mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi

# Read-only /sys (so no udev, no writes to real devices) with this host's own view of
# the cgroup hierarchies: the cgroup namespace makes its per-host cgroups their roots.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
{cgroup_mounts}

# A private /dev with only the basic nodes: the host must not run gettys on, or
# change, the machine's devices.  Its console is a log file (systemd writes little
# there since it is no tty; the journal is the place to look).
mount -t tmpfs -o mode=0755,nosuid dev "$R/dev"
for node in null zero full random urandom tty; do cp -a "/dev/$node" "$R/dev/"; done
mkdir -m 0755 "$R/dev/pts"
mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"
mount --bind "$HOSTDIR/console.log" "$R/dev/console"

# Fresh /run and /tmp: systemd-tmpfiles empties /tmp at boot.
mount -t tmpfs -o mode=0755,nosuid,nodev run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"

# Host-specific files (hostname, sshd config, keys, masked units) into the upper layer;
# keep the metadata of directories that already exist.
tar -C "$HOSTDIR/seed" -cf - . | tar -C "$R" -xpf - --no-overwrite-dir

cd "$R"
exec </dev/null >>"$HOSTDIR/console.log" 2>&1
exec chroot . /lib/systemd/systemd --system
"""


def _cgroup_mount_commands(hierarchies: Sequence[_Hierarchy]) -> str:
    """Shell commands mounting the host's view of the cgroup hierarchies.

    Only the hierarchies systemd itself manages are pre-mounted; systemd mounts the v1
    controllers it wants by itself.  Thanks to the cgroup namespace all of them are
    rooted in the host's own cgroups, never in the machine's.
    """
    has_v2 = any(h.is_v2 for h in hierarchies)
    if not any(h.is_systemd for h in hierarchies):  # pure cgroup2 machine
        return 'mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"'
    cmds = [
        'mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup "$R/sys/fs/cgroup"',
        'mkdir "$R/sys/fs/cgroup/systemd"',
        "mount -t cgroup -o none,name=systemd,nosuid,nodev,noexec cgroup"
        ' "$R/sys/fs/cgroup/systemd"',
    ]
    if has_v2:  # hybrid layout
        cmds += [
            'mkdir "$R/sys/fs/cgroup/unified"',
            'mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup/unified"',
        ]
    return "\n".join(cmds)


# --------------------------------------------------------------------------------------
# hosts
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class LabHost:
    """One booted lab host.

    ``pid`` is the host's PID-1 systemd as seen from the machine.  ``root`` is the
    host's root directory (its overlay) as seen from the machine: ``/proc/<pid>/root``.
    The overlay is mounted only inside the host's mount namespace, so that magic link is
    the way in.  Beware that absolute symlinks met while walking such a path resolve
    against the *machine's* root, not the host's.
    """

    name: str
    address: str
    state_dir: Path
    ssh_config_path: Path
    pid: int = 0
    _start_time: int | None = field(default=None, repr=False)
    _launcher: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _cgroups: list[Path] = field(default_factory=list, repr=False)
    _pid_ns: int | None = field(default=None, repr=False)
    _mnt_ns: int | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    def file_path(self, path: str | os.PathLike[str]) -> Path:
        """Map an absolute path inside the host to the path visible from the machine."""
        p = Path(path)
        if not p.is_absolute():
            raise ValueError(f"expected an absolute in-host path, got {str(p)!r}")
        return self.root / p.relative_to("/")

    def is_alive(self) -> bool:
        return (
            self.pid > 0
            and self._start_time is not None
            and _start_time(self.pid) == self._start_time
        )

    # -- commands --------------------------------------------------------------------

    def ssh_argv(self, cmd: str | None = None) -> list[str]:
        """The real ``ssh`` command line that runs ``cmd`` on this host (root, BatchMode,
        the run's key and known_hosts, StrictHostKeyChecking=yes)."""
        argv = ["ssh", "-F", str(self.ssh_config_path), self.name]
        if cmd is not None:
            argv += ["--", cmd]
        return argv

    def run(
        self,
        cmd: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host over ssh; text mode, output captured.

        Raises LabCommandError (check=True and non-zero exit) or LabTimeout; both say
        what went wrong on the host.
        """
        try:
            res = subprocess.run(
                self.ssh_argv(cmd),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabTimeout(self, cmd, timeout, exc) from exc
        if check and res.returncode != 0:
            raise LabCommandError(self.name, cmd, res.returncode, res.stdout, res.stderr)
        return res

    def install_unit(
        self, name: str, text: str, *, enable: bool = False, start: bool = False
    ) -> None:
        """Write /etc/systemd/system/NAME on the host and ``systemctl daemon-reload``.

        Replaces whatever was there, including a mask symlink to /dev/null (writing
        through that symlink would be lost), so this also works for e.g. etcd.service.
        """
        if not _UNIT_NAME.match(name):
            raise ValueError(f"not a unit name: {name!r}")
        path = f"/etc/systemd/system/{name}"
        script = f"set -e; umask 022; rm -f {path}; cat > {path}; systemctl daemon-reload"
        if enable:
            script += f"; systemctl enable --quiet {name}"
        if start:
            script += f"; systemctl start {name}"
        self.run(script, input=text)

    def show_property(self, unit: str, prop: str) -> str:
        """``systemctl show -p PROP --value UNIT`` (timestamps with microseconds)."""
        return self.run(
            f"systemctl show --timestamp=us -p {shlex.quote(prop)} --value {shlex.quote(unit)}"
        ).stdout.strip()

    def journal(self, lines: int = 60) -> str:
        """The tail of the host's journal, read without ssh (works when sshd is down)."""
        if not self.is_alive():
            return "(host is not running)"
        try:
            # -r/-w: the host's root and cwd, so journalctl reads the host's journal
            nsenter = [
                "nsenter",
                "-t",
                str(self.pid),
                "-m",
                "-u",
                "-i",
                "-p",
                "-r",
                "-w",
            ]
            journalctl = ["journalctl", "--no-pager", "-o", "short-monotonic"]
            res = subprocess.run(
                [*nsenter, "--", *journalctl, "-n", str(lines)],
                capture_output=True,
                text=True,
                timeout=15,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "(journalctl timed out)"
        return res.stdout + res.stderr

    def diagnostics(self) -> str:
        parts = [f"== {self.name} ({self.address}, pid {self.pid}) =="]
        for label, path in (
            ("launcher", self.state_dir / "launch.log"),
            ("console", self.console_log),
        ):
            try:
                parts.append(f"-- {label} --\n{_tail(path.read_text(errors='replace'))}")
            except OSError:
                pass
        parts.append(f"-- journal --\n{self.journal()}")
        return "\n".join(parts)

    # -- lifecycle (used by Lab) -------------------------------------------------------

    def _kill(self) -> None:
        """SIGKILL PID 1 (taking the PID namespace and all its processes with it), and
        anything else that entered the host's namespaces (e.g. a stray nsenter)."""
        if not self.is_alive():
            return
        # Scan while PID 1 still pins the namespaces: once they are freed their inode
        # numbers may be reused by another lab run's namespaces.
        members: set[int] = set()
        for ns, inode in (("pid", self._pid_ns), ("mnt", self._mnt_ns)):
            if inode is not None:
                members.update(_pids_in_namespace(ns, inode))
        if self._launcher is not None:
            members.discard(self._launcher.pid)  # it exits by itself once PID 1 is gone
        _kill(self.pid)
        for pid in members:
            _kill(pid)

    def _reap(self, errors: list[str]) -> None:
        if self._launcher is not None:
            try:
                self._launcher.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._launcher.kill()
                self._launcher.wait(timeout=5)
                errors.append(f"{self.name}: launcher did not exit after its PID 1 was killed")
        # Nothing may survive in the host's cgroups (they are unique to this run, so
        # unlike namespace inodes they cannot be confused with anyone else's).
        deadline = time.monotonic() + 10
        while leftovers := {pid for cg in self._cgroups for pid in _cgroup_pids(cg)}:
            if time.monotonic() > deadline:
                errors.append(f"{self.name}: processes survive teardown: {sorted(leftovers)}")
                break
            for pid in leftovers:
                _kill(pid)
            time.sleep(0.05)
        for cg in self._cgroups:
            for _ in range(50):
                try:
                    _remove_cgroup_tree(cg)
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        errors.append(f"{self.name}: cannot remove cgroup {cg}: {exc}")
                        break
                    time.sleep(0.1)
            else:
                errors.append(f"{self.name}: cgroup {cg} stays busy")


# --------------------------------------------------------------------------------------
# the lab
# --------------------------------------------------------------------------------------

_OPEN_LABS: set[Lab] = set()
_OPEN_LABS_LOCK = threading.Lock()
_SAFETY_NET_INSTALLED = False


def _close_all_labs() -> None:
    with _OPEN_LABS_LOCK:
        labs = list(_OPEN_LABS)
    for lab in labs:
        try:
            lab.close()
        except Exception as exc:  # last-resort cleanup: report and go on
            print(f"pkiform lab: teardown failed: {exc}", file=sys.stderr)


def _on_fatal_signal(signum: int, frame: FrameType | None) -> None:
    _close_all_labs()
    # Then die of the signal as we would have without the handler.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_safety_net() -> None:
    """atexit + SIGTERM/SIGHUP handlers that tear labs down; SIGINT already raises
    KeyboardInterrupt, which unwinds through ``Lab.__exit__``."""
    global _SAFETY_NET_INSTALLED
    if _SAFETY_NET_INSTALLED:
        return
    _SAFETY_NET_INSTALLED = True
    atexit.register(_close_all_labs)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                signal.signal(sig, _on_fatal_signal)


class Lab:
    """Boot ``n`` lab hosts ``lab-1..lab-n`` at ``127.0.1.<first_octet + i>``.

    Use as a context manager (or call :meth:`start` and :meth:`close`)::

        with Lab(2, tmp_path) as lab:
            lab.hosts[0].run("systemctl is-system-running")

    ``first_octet`` is the last octet of lab-1's address; by default the lowest block of
    ``n`` free addresses is taken (free = not locked by another lab run on this machine
    and nothing listening on port 22).  Every host masks :data:`SAFETY_MASKED_UNITS`,
    :func:`default_masked_units` and the extra ``mask_units``.  A test that wants one of
    those services writes its own unit with :meth:`LabHost.install_unit`, which replaces
    the mask.

    The hosts are tied to the thread that starts them (PR_SET_PDEATHSIG fires when the
    creating *thread* exits), so create the lab in a thread that outlives it - pytest's
    main thread is fine.
    """

    def __init__(
        self,
        n: int,
        workdir: Path,
        mask_units: Iterable[str] = (),
        *,
        first_octet: int | None = None,
        boot_timeout: float = 60.0,
        name_prefix: str = "lab",
        keep_files: bool = False,
    ) -> None:
        if not 1 <= n <= 250:
            raise ValueError("n must be between 1 and 250")
        if first_octet is not None and not (1 <= first_octet and first_octet + n - 1 <= 254):
            raise ValueError("first_octet out of range")
        extra = tuple(mask_units)
        for unit in extra:
            if not _UNIT_NAME.match(unit):
                raise ValueError(f"not a unit name: {unit!r}")
        self.n = n
        # Always additive: dropping a default mask would e.g. start the packaged etcd,
        # which binds 127.0.0.1:2379 in the machine's (shared) network namespace.
        self.mask_units: tuple[str, ...] = tuple(
            sorted({*extra, *default_masked_units(), *SAFETY_MASKED_UNITS})
        )
        self.first_octet = first_octet
        self.boot_timeout = boot_timeout
        self.name_prefix = name_prefix
        self.keep_files = keep_files
        self.run_id = secrets.token_hex(4)
        self.dir = Path(workdir).resolve() / f"pkiform-lab-{self.run_id}"
        self.key_path = self.dir / "ssh" / "id_ed25519"
        self.known_hosts_path = self.dir / "ssh" / "known_hosts"
        self.ssh_config_path = self.dir / "ssh" / "config"
        self.hosts: list[LabHost] = []
        self.boot_seconds: float | None = None
        self._locks: list[_Lock] = []
        self._closed = False
        self._started = False

    # -- context manager -------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, name: str) -> LabHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    # -- boot --------------------------------------------------------------------------

    def start(self) -> Self:
        """Boot all hosts in parallel and wait until ssh (and systemd) is up on each."""
        if self._started:
            raise LabError("lab already started")
        reason = lab_supported()
        if reason is not None:
            raise LabError(f"lab hosts are not supported here: {reason}")
        self._started = True
        with _OPEN_LABS_LOCK:
            _OPEN_LABS.add(self)
        _install_safety_net()
        try:
            self._start()
        except BaseException:
            try:
                self.close()
            except LabError as exc:
                print(f"pkiform lab: teardown after failed boot: {exc}", file=sys.stderr)
            raise
        return self

    def _start(self) -> None:
        run_lock = _Lock.try_acquire(LOCK_DIR / f"run-{self.run_id}.lock")
        assert run_lock is not None  # run ids are random
        self._locks.append(run_lock)
        _reap_stale_runs()
        _raise_inotify_limit()
        addresses = self._allocate_addresses()
        (self.dir / "ssh").mkdir(parents=True, mode=0o700)
        _keygen(self.key_path, f"pkiform-lab-{self.run_id}")

        known_hosts, ssh_config = [], []
        for i, address in enumerate(addresses, start=1):
            name = f"{self.name_prefix}-{i}"
            host = LabHost(name, address, self.dir / name, self.ssh_config_path)
            self.hosts.append(host)
            host_pub = self._write_seed(host, addresses)
            known_hosts.append(f"{address} {host_pub}\n")
            ssh_config.append(self._ssh_config_entry(host))
        self.known_hosts_path.write_text("".join(known_hosts))
        self.ssh_config_path.write_text("".join(ssh_config))

        hierarchies = _cgroup_hierarchies()
        t0 = time.monotonic()
        # Launch from this thread (see the class docstring), wait in parallel.
        for host in self.hosts:
            self._launch(host, hierarchies)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.hosts)) as pool:
            failures = [msg for msg in pool.map(self._wait_ready, self.hosts) if msg]
        if failures:
            raise LabError("lab hosts did not come up:\n" + "\n\n".join(failures))
        self.boot_seconds = time.monotonic() - t0

    def _allocate_addresses(self) -> list[str]:
        starts = [self.first_octet] if self.first_octet is not None else range(1, 256 - self.n)
        for start in starts:
            locks: list[_Lock] = []
            for octet in range(start, start + self.n):
                address = f"{ADDRESS_PREFIX}{octet}"
                lock = _Lock.try_acquire(LOCK_DIR / f"{address}.lock")
                if lock is None:
                    break
                locks.append(lock)
                if not _port_free(address, SSH_PORT):
                    break
            else:
                self._locks += locks
                return [f"{ADDRESS_PREFIX}{o}" for o in range(start, start + self.n)]
            for lock in locks:
                lock.release()
        raise LabError(
            f"no {self.n} free lab addresses"
            + (f" from {ADDRESS_PREFIX}{self.first_octet}" if self.first_octet is not None else "")
            + " (in use by another lab run, or something listens on port 22 there)"
        )

    def _write_seed(self, host: LabHost, addresses: Sequence[str]) -> str:
        """Stage the files that make up ``host``'s identity; returns its host public key."""
        seed = host.state_dir / "seed"
        etc = seed / "etc"
        for d in (
            etc / "ssh" / "sshd_config.d",
            etc / "systemd" / "system",
            seed / "var" / "lib" / "dbus",
        ):
            d.mkdir(parents=True, mode=0o755)
        # make every staged dir 0755 (mkdir's mode is subject to the umask)
        for d in [seed, *(p for p in seed.rglob("*") if p.is_dir())]:
            d.chmod(0o755)
        (seed / "root" / ".ssh").mkdir(parents=True)
        (seed / "root").chmod(0o700)
        (seed / "root" / ".ssh").chmod(0o700)
        (host.state_dir / "mnt").mkdir()
        host.console_log.touch()

        (etc / "hostname").write_text(f"{host.name}\n")
        hosts_lines = [
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        hosts_lines += [
            f"{addr}\t{self.name_prefix}-{i}" for i, addr in enumerate(addresses, start=1)
        ]
        (etc / "hosts").write_text("\n".join(hosts_lines) + "\n")
        machine_id = secrets.token_hex(16) + "\n"
        (etc / "machine-id").write_text(machine_id)
        (seed / "var" / "lib" / "dbus" / "machine-id").write_text(machine_id)
        for path in (etc / "hostname", etc / "hosts", etc / "machine-id"):
            path.chmod(0o644)

        # sshd: own address only, own fresh host key only (so hosts are distinguishable
        # by key), key-only root login.
        (etc / "ssh" / "sshd_config.d" / "pkiform-lab.conf").write_text(
            f"ListenAddress {host.address}:{SSH_PORT}\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UseDNS no\n"
        )
        host_key = etc / "ssh" / "ssh_host_ed25519_key"
        _keygen(host_key, f"root@{host.name}")
        # A stock root home: the machine's /root/.bashrc (sourced by bash even for
        # non-interactive ssh commands) runs `pyenv init`, whose `pyenv rehash` waits up
        # to 60 s for a lock file that shows through the overlay whenever something on
        # the machine rehashes - commands on the hosts then hang at random.
        for dotfile in (".bashrc", ".profile"):
            skel = Path("/etc/skel") / dotfile
            (seed / "root" / dotfile).write_text(skel.read_text() if skel.exists() else "")
            (seed / "root" / dotfile).chmod(0o644)
        authorized = seed / "root" / ".ssh" / "authorized_keys"
        authorized.write_text(self.key_path.with_suffix(".pub").read_text())
        authorized.chmod(0o600)

        for unit in self.mask_units:
            (etc / "systemd" / "system" / unit).symlink_to("/dev/null")

        pub = host_key.with_suffix(".pub").read_text().split()
        return f"{pub[0]} {pub[1]}"

    def _ssh_config_entry(self, host: LabHost) -> str:
        return (
            f"Host {host.name}\n"
            f"    HostName {host.address}\n"
            f"    Port {SSH_PORT}\n"
            "    User root\n"
            f"    IdentityFile {self.key_path}\n"
            "    IdentitiesOnly yes\n"
            "    IdentityAgent none\n"
            f"    UserKnownHostsFile {self.known_hosts_path}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    UpdateHostKeys no\n"
            "    BatchMode yes\n"
            "    PasswordAuthentication no\n"
            "    KbdInteractiveAuthentication no\n"
            "    ConnectTimeout 10\n"
            "    LogLevel ERROR\n"
            "\n"
        )

    def _launch(self, host: LabHost, hierarchies: Sequence[_Hierarchy]) -> None:
        cgroup_name = f"{CGROUP_PREFIX}{self.run_id}-{host.name}"
        host._cgroups = [_make_cgroup(h, cgroup_name) for h in hierarchies]
        script = _BOOT_SCRIPT.format(
            name=host.name,
            hostdir=shlex.quote(str(host.state_dir)),
            cgroup_procs=" ".join(shlex.quote(str(cg / "cgroup.procs")) for cg in host._cgroups),
            cgroup_mounts=_cgroup_mount_commands(hierarchies),
        )
        boot = host.state_dir / "boot.sh"
        boot.write_text(script)
        boot.chmod(0o755)
        with open(host.state_dir / "launch.log", "wb") as log:
            host._launcher = subprocess.Popen(
                # setpriv: SIGKILL the launcher (and, via unshare --kill-child, the host's
                # PID 1) if this process dies without tearing down.
                [
                    "setpriv",
                    "--pdeathsig",
                    "KILL",
                    "--",
                    "/bin/bash",
                    str(boot),
                    "outer",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to handle
            )
        # The host's PID 1 is unshare's only child.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = _children(host._launcher.pid)
            if children:
                host.pid = children[0]
                host._start_time = _start_time(host.pid)
                # unshare created the namespaces before forking, so these are final
                host._pid_ns = _ns_inode(host.pid, "pid")
                host._mnt_ns = _ns_inode(host.pid, "mnt")
                return
            if host._launcher.poll() is not None:
                break
            time.sleep(0.01)
        raise LabError(f"{host.name}: launcher did not start:\n{host.diagnostics()}")

    def _wait_ready(self, host: LabHost) -> str | None:
        """Wait for ssh (verifying the host key) and for systemd to finish booting.

        Returns None when ready, else an error message with the host's logs.
        """
        deadline = time.monotonic() + self.boot_timeout
        last = "sshd never listened"
        while time.monotonic() < deadline:
            if not host.is_alive():
                return f"{host.name}: PID 1 died during boot\n{host.diagnostics()}"
            if _port_open(host.address, SSH_PORT):
                res = host.run(
                    "systemctl is-system-running --wait",
                    check=False,
                    timeout=max(5.0, deadline - time.monotonic()),
                )
                state = res.stdout.strip()
                if state == "running":
                    served = (
                        host.file_path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
                    )
                    expected = self.known_hosts_path.read_text().splitlines()
                    if f"{host.address} {served[0]} {served[1]}" not in expected:
                        return f"{host.name}: serves an unexpected host key {served}"
                    return None
                if res.returncode == 255:  # ssh itself failed: sshd still starting
                    last = res.stderr.strip()
                else:
                    failed = host.run("systemctl --failed --no-legend --plain", check=False).stdout
                    return (
                        f"{host.name}: booted {state!r}; failed units:\n{failed}\n"
                        + host.diagnostics()
                    )
            time.sleep(0.1)
        return (
            f"{host.name}: not reachable over ssh after {self.boot_timeout:.0f}s ({last})\n"
            + host.diagnostics()
        )

    # -- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Tear every host down; idempotent.  Raises LabError if anything is left over
        (after having tried to clean up everything else)."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        try:
            for host in self.hosts:
                host._kill()
            for host in self.hosts:
                host._reap(errors)
            errors += self._remove_mounts()
            if not errors and not self.keep_files and self.dir.exists():
                try:
                    self._remove_files()
                except OSError as exc:
                    errors.append(f"cannot remove {self.dir}: {exc}")
        finally:
            for lock in self._locks:
                lock.release()
            self._locks.clear()
            with _OPEN_LABS_LOCK:
                _OPEN_LABS.discard(self)
        if errors:
            raise LabError("lab teardown left things behind:\n" + "\n".join(errors))

    def leftover_mounts(self) -> list[str]:
        """Mount points under this lab's directory visible from the machine."""
        prefix = str(self.dir)
        return [mp for _, mp, _, _ in _mountinfo() if mp == prefix or mp.startswith(prefix + "/")]

    def _remove_mounts(self) -> list[str]:
        # The hosts mount only inside their own mount namespaces, so normally there is
        # nothing here; this guards against a mount leaking out anyway.
        leftovers = self.leftover_mounts()
        for mp in sorted(leftovers, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        still = self.leftover_mounts()
        return [f"mount left behind: {mp}" for mp in still]

    def _remove_files(self) -> None:
        # Only after leftover_mounts() came back empty: rmtree follows into mounts, and
        # a host's root is an overlay of the machine's "/".  Each host's mnt/ must be an
        # empty directory by now; rmdir (not rmtree) it to be sure.
        for host in self.hosts:
            mnt = host.state_dir / "mnt"
            if mnt.exists():
                mnt.rmdir()
        shutil.rmtree(self.dir)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
