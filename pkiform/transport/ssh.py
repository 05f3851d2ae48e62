"""The SSH transport: files and restarts on real hosts, over one fabric connection per host.

The only module of pkiform that imports fabric (and paramiko).

* Host keys are verified against known_hosts — the host's ``known_hosts`` setting or the
  user's ``~/.ssh/known_hosts`` — with paramiko's RejectPolicy. Fabric's default is
  AutoAddPolicy (silently trust any key); that is replaced before the first connect.
* Writes are atomic on the host: ``mktemp`` in the target's own directory (unpredictable name,
  never /tmp), content streamed over stdin (never on a command line, where ``ps`` would show a
  key), owner/mode set, fsync'd, then renamed over the target. The file it replaces is kept
  as ``<path>.pkiform-backup`` (one generation, hard link, same mode) for manual rollback.
  A symlink at the target path is refused.
* Restarts: ``systemctl restart|reload``, wait until ``is-active``, then the health check;
  on failure the error carries the unit's last journal lines.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import paramiko
from fabric import Connection

from pkiform.errors import HostKeyError, ServiceError, TransportError
from pkiform.model import Host
from pkiform.transport.base import FileStat, HealthCheck, RestartOutcome

BACKUP_SUFFIX = ".pkiform-backup"
READ_CHUNK = 400  # paths per stat round trip; keeps the command line far below ARG_MAX

_WRITE_SCRIPT = r"""
set -eu
target=$1 mode=$2 owner=$3
dir=$(dirname -- "$target")
mkdir -p -m 0755 -- "$dir"
if [ -L "$target" ]; then echo "pkiform: refusing to write through symlink $target" >&2; exit 40; fi
tmp=$(mktemp -- "$dir/.pkiform.XXXXXXXXXX")
trap 'rm -f -- "$tmp"' EXIT
chmod 0600 -- "$tmp"
cat > "$tmp"
if [ -n "$owner" ]; then chown -- "$owner" "$tmp"; fi
chmod -- "$mode" "$tmp"
sync -- "$tmp"
if [ -f "$target" ] && [ ! -L "$target" ]; then ln -f -- "$target" "$target.pkiform-backup"; fi
mv -f -- "$tmp" "$target"
trap - EXIT
sync -- "$dir"
"""

_READ_SCRIPT = r"""
for p in "$@"; do
  if [ -L "$p" ]; then echo "L"
  elif [ -f "$p" ]; then
    s=$(sha256sum < "$p" | cut -d' ' -f1) || s=unreadable
    echo "F $s $(stat -c '%a %U %G' -- "$p")"
  else echo "M"; fi
done
"""

_RESTART_SCRIPT = r"""
unit=$1 verb=$2 timeout=$3
systemctl "$verb" -- "$unit" || true
end=$(( $(date +%s) + timeout ))
while :; do
  state=$(systemctl is-active -- "$unit" 2>/dev/null || true)
  [ "$state" = active ] && exit 0
  if [ "$state" = failed ] || [ "$(date +%s)" -ge "$end" ]; then
    echo "state=$state"
    journalctl -u "$unit" -n 15 --no-pager 2>&1 | tail -n 15
    exit 41
  fi
  sleep 0.2
done
"""

_HEALTH_SCRIPT = r"""
timeout=$1; shift
end=$(( $(date +%s) + timeout ))
while :; do
  if out=$(sh -c "$1" 2>&1); then exit 0; fi
  if [ "$(date +%s)" -ge "$end" ]; then printf '%s\n' "$out" | tail -n 5; exit 42; fi
  sleep 0.5
done
"""


class SshTransport:
    def __init__(self, host: Host, *, base_dir: Path, connect_timeout: float = 15.0,
                 command_timeout: float = 120.0) -> None:
        self.host = host
        self.base_dir = Path(base_dir)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    # -- connection ------------------------------------------------------------------------

    def _path(self, value: str | None, default: str | None) -> Path | None:
        text = value or default
        if text is None:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    @property
    def known_hosts(self) -> Path:
        return self._path(self.host.known_hosts, "~/.ssh/known_hosts")  # type: ignore[return-value]

    def _host_key_name(self) -> str:
        return self.host.address if self.host.port == 22 else \
            f"[{self.host.address}]:{self.host.port}"

    def _connect(self) -> Connection:
        with self._lock:
            if self._connection is not None and self._connection.is_connected:
                return self._connection
            known_hosts = self.known_hosts
            identity = self._path(self.host.identity_file, None)
            connection = Connection(
                self.host.address,
                user=self.host.user,
                port=self.host.port,
                connect_timeout=int(self.connect_timeout),
                connect_kwargs={
                    "key_filename": [str(identity)] if identity else None,
                    "look_for_keys": identity is None,
                    "allow_agent": identity is None,
                    "banner_timeout": self.connect_timeout,
                    "auth_timeout": self.connect_timeout,
                },
            )
            # Never trust an unknown key: fabric's default would add it silently.
            connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                connection.client.load_host_keys(str(known_hosts))
            except FileNotFoundError:
                raise HostKeyError(
                    f"known_hosts file {known_hosts} does not exist, so the host key of "
                    f"{self.host.address} cannot be verified",
                    host=self.host.name, hint=self._trust_hint()) from None
            try:
                connection.open()
            except paramiko.BadHostKeyException as exc:
                raise HostKeyError(
                    f"the host key of {self.host.address} CHANGED (got "
                    f"{exc.key.get_name()} {exc.key.get_fingerprint().hex()}); refusing to "
                    "connect", host=self.host.name,
                    hint="if the host was really reinstalled, remove its old line with "
                    f"ssh-keygen -R {self._host_key_name()} -f {known_hosts}, verify the new "
                    "fingerprint out of band, then add it") from None
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(
                        f"the host key of {self.host.address} is not in {known_hosts}; "
                        "refusing to connect to an unknown host",
                        host=self.host.name, hint=self._trust_hint()) from None
                if isinstance(exc, paramiko.AuthenticationException):
                    raise TransportError(
                        f"authentication failed as {self.host.user}@{self.host.address}"
                        + (f" with key {identity}" if identity else ""),
                        host=self.host.name,
                        hint="check user and identity_file in the host's config, and that the "
                        "public key is in the host's authorized_keys") from None
                raise TransportError(f"SSH error: {exc}", host=self.host.name,
                                     hint="check the host's sshd") from None
            except (TimeoutError, OSError) as exc:
                raise TransportError(
                    f"unreachable at {self.host.address}:{self.host.port} ({exc})",
                    host=self.host.name,
                    hint="check that the host is up, sshd runs and the address/port are "
                    "right; then run pkiform apply again") from None
            transport = connection.client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._connection = connection
            return connection

    def _trust_hint(self) -> str:
        return (f"verify the host's key fingerprint out of band (on the host: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub), then add it: ssh-keyscan -p "
                f"{self.host.port} {self.host.address} >> {self.known_hosts}")

    def _exec(self, script: str, args: Sequence[str] = (), *, stdin: bytes | None = None,
              timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``sh -c script`` (under sudo if configured); returns (status, stdout, stderr)."""
        connection = self._connect()
        command = "sh -c " + shlex.quote(script) + " pkiform " + " ".join(
            shlex.quote(a) for a in args)
        if self.host.sudo:
            command = "sudo -n " + command
        try:
            stdin_file, stdout_file, stderr_file = connection.client.exec_command(
                command, timeout=timeout or self.command_timeout)
            if stdin is not None:
                stdin_file.write(stdin)
            stdin_file.channel.shutdown_write()
            out = stdout_file.read().decode(errors="replace")
            err = stderr_file.read().decode(errors="replace")
            status = stdout_file.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            with self._lock:
                self._connection = None
            raise TransportError(f"connection lost ({exc})", host=self.host.name,
                                 hint="check that the host and its sshd are up, then run "
                                 "pkiform apply again: completed steps are kept") from None
        if status != 0 and "sudo:" in err and self.host.sudo:
            raise TransportError(f"sudo refused: {err.strip()}", host=self.host.name,
                                 hint=f"allow {self.host.user} passwordless sudo (NOPASSWD)")
        return status, out, err

    # -- the protocol ----------------------------------------------------------------------

    def read_files(self, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        result: dict[str, FileStat | None] = {}
        for start in range(0, len(paths), READ_CHUNK):
            chunk = list(paths[start:start + READ_CHUNK])
            status, out, err = self._exec(_READ_SCRIPT, chunk)
            lines = out.splitlines()
            if status != 0 or len(lines) != len(chunk):
                raise TransportError(f"cannot read file states: {err.strip() or out.strip()}",
                                     host=self.host.name)
            for path, line in zip(chunk, lines, strict=True):
                parts = line.split()
                if parts[0] == "M":
                    result[path] = None
                elif parts[0] == "L":
                    result[path] = FileStat("", 0, "", "", is_symlink=True)
                else:
                    result[path] = FileStat(parts[1], int(parts[2], 8), parts[3], parts[4])
        return result

    def write_file(self, path: str, content: bytes, *, mode: int, owner: str | None,
                   group: str | None) -> None:
        owner_spec = f"{owner}:{group}" if owner and group else (owner or "")
        status, out, err = self._exec(_WRITE_SCRIPT, [path, f"{mode:04o}", owner_spec],
                                      stdin=content)
        if status == 0:
            return
        message = (err or out).strip()
        if status == 40:
            raise TransportError(f"refusing to write {path}: it is a symlink",
                                 host=self.host.name, hint="replace the symlink by a regular "
                                 "file or remove it, then apply again")
        if "No space left" in message:
            raise TransportError(f"disk full writing {path}", host=self.host.name,
                                 hint="free space on the host, then apply again")
        if "Permission denied" in message or "Operation not permitted" in message:
            raise TransportError(f"permission denied writing {path}", host=self.host.name,
                                 hint="log in as root, or set sudo = true for this host")
        if "invalid user" in message or "invalid group" in message:
            raise TransportError(f"owner {owner_spec} does not exist on the host ({message})",
                                 host=self.host.name, hint="create the user/group first, or "
                                 "change owner/group of the file resource")
        raise TransportError(f"writing {path} failed: {message}", host=self.host.name)

    def remove_file(self, path: str) -> bool:
        status, out, err = self._exec(
            'if [ -e "$1" ] || [ -L "$1" ]; then rm -f -- "$1"; echo removed; fi', [path])
        if status != 0:
            raise TransportError(f"cannot remove {path}: {err.strip()}", host=self.host.name)
        return out.strip() == "removed"

    def restart_service(self, unit: str, *, reload: bool, health: HealthCheck | None,
                        timeout: float) -> RestartOutcome:
        started = time.monotonic()
        verb = "reload" if reload else "restart"
        status, out, err = self._exec(_RESTART_SCRIPT, [unit, verb, str(int(timeout))],
                                      timeout=timeout + 30)
        if status != 0:
            raise ServiceError(
                f"{unit} did not become active after {verb} ({out.splitlines()[0] if out else err})"
                + "\n  last journal lines:\n    " + "\n    ".join(out.splitlines()[1:]),
                host=self.host.name,
                hint=f"fix the unit (journalctl -u {unit} on {self.host.name}); then run "
                "pkiform apply again: the rollout continues from this host")
        active_after = time.monotonic() - started
        detail = f"{verb}ed, active after {active_after:.1f}s"
        if health is not None:
            check = health.command or f"curl -fsSk --max-time 5 {shlex.quote(health.url or '')}"
            status, out, err = self._exec(_HEALTH_SCRIPT, [str(int(health.timeout)), check],
                                          timeout=health.timeout + 30)
            if status != 0:
                raise ServiceError(
                    f"{unit} is active but its health check failed for {health.timeout:.0f}s: "
                    f"{check}\n    " + "\n    ".join((out or err).splitlines()[-5:]),
                    host=self.host.name,
                    hint="the rollout stopped here; fix the service, then run pkiform apply "
                    "again")
            detail += f", healthy after {time.monotonic() - started:.1f}s"
        return RestartOutcome(True, detail)

    def serving_certificate(self, endpoint: str) -> bytes | None:
        host, _, port = endpoint.rpartition(":")
        status, out, _ = self._exec(
            'echo | timeout 10 openssl s_client -connect "$1" 2>/dev/null '
            "| openssl x509 2>/dev/null", [endpoint])
        if status != 0 or "BEGIN CERTIFICATE" not in out:
            return None
        del host, port
        return out.encode()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
