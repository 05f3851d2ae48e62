"""The SSH transport: files and restarts on real hosts, over one fabric connection per host.

The only module of pkiform that imports fabric (and paramiko).

* Host keys are verified against known_hosts — the host's ``known_hosts`` setting or the
  user's ``~/.ssh/known_hosts`` — with paramiko's RejectPolicy. Fabric's default is
  AutoAddPolicy (silently trust any key); that is replaced before the first connect.
* One connection per host carries at most ``max_sessions`` commands at a time (sshd refuses
  more than MaxSessions, default 10, channels per connection). A command whose connection
  dies before it reports an exit status fails as "connection lost", never as a result. A
  host that cannot be reached is tried once per run: its further steps fail at once with
  the same error (until ``close()``). TCP_NODELAY is set: a command is a few small packets
  each way, which Nagle's algorithm and delayed ACKs would hold back ~40 ms each.
* Writes are atomic on the host, each file on its own: a temp file in the target's own
  directory (a random name from pkiform, created 0600 with O_EXCL, never /tmp), content
  streamed over stdin (never on a command line, where ``ps`` would show a key) and checked
  against its length and SHA-256 before use (a cut connection ends stdin early: a truncated
  file must never be renamed into place), owner/mode set, fsync'd, then renamed over the
  target. The file it replaces is kept as ``<path>.pkiform-backup`` (one generation, hard
  link, same mode) for manual rollback. A symlink, directory or other non-regular file at
  the target path is refused. Writes are carried together (group commit): one upload
  command per host at a time, which takes every upload queued by the time it starts (after
  a few ms without a new one), so a host gets a deploy's files in a few commands, not one
  each (a command costs the host a session and a few processes whatever it carries); each
  caller gets its own file's outcome.
* Restarts: one round trip runs ``systemctl restart|reload`` (a unit that is not loaded, or a
  failed job, fails at once), waits until the unit is active and, if the service has a health
  check, until the check passes — the gate, as a readiness probe is in Kubernetes — and the
  unit is still the invocation that became active (a unit that dies meanwhile fails at once:
  its main process is looked for in /proc after every failed try, the unit asked only when
  that process is gone).
  A unit without a health check is watched for the settle window instead (a ``Type=simple``
  unit is "active" the moment it is forked, even if it exits right away): looked at every
  ``SETTLE_POLL`` seconds and at the end of the window, it must be active and the same
  invocation (InvocationID, NRestarts) each time. ``settle_seconds`` sets the window, also
  after a health check (minReadySeconds). On failure the error carries the unit's last journal
  lines. The window holds no SSH session.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import paramiko
from fabric import Connection

from pkiform.errors import HostKeyError, ServiceError, TransportError
from pkiform.model import Host
from pkiform.transport.base import (
    FileStat,
    HealthCheck,
    RestartOutcome,
    settle_window,
)

BACKUP_SUFFIX = ".pkiform-backup"
READ_CHUNK = 400  # paths per stat round trip; keeps the command line far below ARG_MAX
# Concurrent channels per connection. sshd refuses more than MaxSessions (default 10), and
# frees a session a little after its close, so stay well below it.
MAX_SESSIONS = 4
# A restarted unit must stay active (the same invocation) this long, looked at every
# SETTLE_POLL seconds meanwhile. The window is on the critical path of a rolling group (its
# members restart one after another); a configured health check is the stronger gate.
SETTLE_POLL = 0.25

# Uploads carried by one command at most: its command line (7 arguments a file) stays far
# below ARG_MAX, and a batch's contents stay small enough to hold in memory.
UPLOAD_BATCH_FILES = 64
UPLOAD_BATCH_BYTES = 8 << 20
# Upload commands in flight per connection (group commit): the files that arrive while one
# runs wait for it and go together in the next. A command costs the host a session (sshd's
# fork, the login shell, sh) and a few processes whatever it carries, so a deploy's files
# in a few commands instead of one each leave the host's CPU to its restarts; the first file
# still goes at once, and the others wait at most one command.
UPLOAD_COMMANDS = 1
# Before it takes the queue, the carrier waits until no new upload has come for
# UPLOAD_LINGER seconds (at most UPLOAD_LINGER_MAX): a step's siblings on the same host
# (launched with it, still rendering their files) join its command instead of each taking
# one of their own right after. Small next to any round trip to a real host.
UPLOAD_LINGER = 0.004
UPLOAD_LINGER_MAX = 0.02

_WIRE_LOGGER = "pkiform.transport.ssh.wire"


class _Sessions:
    """A counter (a connection's sessions, or its upload turns) that a waiter can also stop
    waiting on: an upload that another caller took into its command needs no turn of its own."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._changed = threading.Condition()

    def acquire(self, give_up: Callable[[], bool] | None = None) -> bool:
        """Take a session; False (none taken) as soon as ``give_up()`` is true instead."""
        with self._changed:
            while self._free == 0:
                if give_up is not None and give_up():
                    return False
                self._changed.wait()
            self._free -= 1
            return True

    def release(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()

    def wake(self) -> None:
        """Let waiters look at their ``give_up`` again."""
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@attrs.define(eq=False)
class _Upload:
    """A file waiting for a session; whichever caller gets one carries it (see write_file)."""

    path: str
    content: bytes = attrs.field(repr=False)
    mode: str  # "0644"
    owner_spec: str  # "user:group", "user" or "" (leave as is)
    backup: bool
    taken: bool = False  # into some caller's command
    finished: threading.Event = attrs.field(factory=threading.Event)
    error: BaseException | None = None


class _DropRefusedChannels(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger(_WIRE_LOGGER).addFilter(_DropRefusedChannels())

# Uploads, several files per round trip (a host under load spends its time forking and in
# sshd's per-session setup, once per command). Arguments: 7 per file (target, mode, owner,
# size, SHA-256, backup 1/0, temp name); stdin: the contents, one after another. Each file
# is atomic on its own: received into a fresh temp file beside its target (the name is
# random, from pkiform; created 0600 with O_EXCL), checked against its SHA-256 (a complete
# upload matches it, so its size too; the size is reported on a mismatch), owner/mode set,
# fsync'd, renamed over the target, directory fsync'd. One line per file on stdout: "N ok"
# or "N CODE message" (40 symlink, 44 not a regular file, 43 incomplete, 1 other).
_WRITE_SCRIPT = r"""
set -u
umask 022
n=0 temps=
cleanup() {
  printf '%s' "$temps" | while IFS= read -r t; do [ -n "$t" ] && rm -f -- "$t"; done
}
trap cleanup EXIT
trap 'exit 129' HUP INT TERM PIPE
note() { eval "why_$n=\$1"; }
while [ $# -ge 7 ]; do
  n=$((n + 1))
  target=$1 mode=$2 owner=$3 size=$4 sha=$5 backup=$6 tmp=${7:-}; shift 7
  dir=${target%/*}; dir=${dir:-/}; tmp=$dir/$tmp
  eval "target_$n=\$target mode_$n=\$mode owner_$n=\$owner size_$n=\$size sha_$n=\$sha"
  eval "backup_$n=\$backup dir_$n=\$dir tmp_$n= why_$n="
  if [ -L "$target" ]; then note "40 refusing to write through symlink $target"
  elif [ -e "$target" ] && [ ! -f "$target" ]; then
    note "44 $target exists and is not a regular file"
  elif [ ! -d "$dir" ] && ! msg=$(mkdir -p -m 0755 -- "$dir" 2>&1); then note "1 $msg"
  elif ! { umask 077; set -C; true > "$tmp"; } 2>/dev/null; then
    set +C; umask 022
    if [ -w "$dir" ]; then note "1 cannot create a temporary file in $dir"
    else note "1 cannot create a temporary file in $dir: Permission denied"; fi
  else
    set +C; umask 022
    eval "tmp_$n=\$tmp"
    temps="$temps$tmp
"
  fi
  eval "tmp=\$tmp_$n"
  if [ -n "$tmp" ]; then head -c "$size" >> "$tmp"
  else head -c "$size" > /dev/null; fi  # its bytes are in the stream all the same
done
set --
i=0; while [ $i -lt $n ]; do
  i=$((i + 1)); eval "tmp=\$tmp_$i"; [ -n "$tmp" ] && set -- "$@" "$tmp"
done
sums=
[ $# -gt 0 ] && sums=$(sha256sum -- "$@" 2>&1)
exec 3<<SUMS
$sums
SUMS
set --
i=0; while [ $i -lt $n ]; do
  i=$((i + 1)); eval "tmp=\$tmp_$i sha=\$sha_$i size=\$size_$i target=\$target_$i"
  [ -n "$tmp" ] || continue
  read -r got _ <&3 || got=
  if [ "${got#\\}" != "$sha" ]; then
    got=$(wc -c < "$tmp")
    if [ "$got" -ne "$size" ]; then
      eval "why_$i=\"43 received \$got of \$size bytes for \$target; left unchanged\""
    else eval "why_$i=\"43 content for \$target arrived corrupted; left unchanged\""; fi
    eval "tmp_$i="; rm -f -- "$tmp"; continue
  fi
done
exec 3<&-
# Owners, then modes: one chown (chmod) for each run of files that share the value (a batch
# comes sorted by owner and mode); only if it fails, each file of the run again on its own,
# so that the error is that file's alone.
run() {  # run chown|chmod VALUE "INDICES" (its own variable names: sh has no locals)
  [ -n "$3" ] || return 0
  r_cmd=$1 r_value=$2 r_list=$3
  set --
  for r_i in $r_list; do eval "set -- \"\$@\" \"\$tmp_$r_i\""; done
  "$r_cmd" -- "$r_value" "$@" 2>/dev/null && return 0
  for r_i in $r_list; do
    eval "r_tmp=\$tmp_$r_i"
    if ! msg=$("$r_cmd" -- "$r_value" "$r_tmp" 2>&1); then
      eval "why_$r_i=\"1 \$msg\" tmp_$r_i="; rm -f -- "$r_tmp"
    fi
  done
}
for cmd in chown chmod; do
  key= list=
  i=0; while [ $i -lt $n ]; do
    i=$((i + 1)); eval "tmp=\$tmp_$i"
    [ -n "$tmp" ] || continue
    if [ $cmd = chown ]; then eval "value=\$owner_$i"; else eval "value=\$mode_$i"; fi
    case $cmd/$value in chown/|chmod/0600) continue ;; esac  # as created: nothing to do
    if [ "$value" != "$key" ]; then run $cmd "$key" "$list"; key=$value list=; fi
    list="$list $i"
  done
  run $cmd "$key" "$list"
done
set --
i=0; while [ $i -lt $n ]; do
  i=$((i + 1)); eval "tmp=\$tmp_$i"; [ -n "$tmp" ] && set -- "$@" "$tmp"
done
[ $# -gt 0 ] && sync -- "$@"
set --
i=0; while [ $i -lt $n ]; do
  i=$((i + 1)); eval "tmp=\$tmp_$i why=\$why_$i target=\$target_$i backup=\$backup_$i"
  if [ -z "$tmp" ]; then echo "$i ${why:-1 not written}"; continue; fi
  if [ "$backup" = 1 ] && [ -f "$target" ] && [ ! -L "$target" ]; then
    ln -f -- "$target" "$target.pkiform-backup"
  elif [ -e "$target.pkiform-backup" ] || [ -L "$target.pkiform-backup" ]; then
    rm -f -- "$target.pkiform-backup"  # never keep an old private key lying around
  fi
  if msg=$(mv -f -T -- "$tmp" "$target" 2>&1); then
    echo "$i ok"; eval "set -- \"\$@\" \"\$dir_$i\""
  else echo "$i 1 $msg"; rm -f -- "$tmp"; fi
done
temps=
[ $# -gt 0 ] && sync -- "$@"
exit 0
"""

_READ_SCRIPT = r"""
for p in "$@"; do
  if [ -L "$p" ]; then echo "L"
  elif [ -f "$p" ]; then
    if s=$(sha256sum < "$p" 2>/dev/null); then echo "F ${s%% *} $(stat -c '%a %U %G' -- "$p")"
    else echo "U"; fi
  else echo "M"; fi
done
"""

_RESTART_SCRIPT = r"""
unit=$1 verb=$2 timeout=$3 health_timeout=${4:-0} check=${5:-}
journal() { journalctl -u "$unit" -n 15 --no-pager 2>&1 | tail -n 15; }
look() {  # one systemctl call per look at the unit
  LoadState= ActiveState= Type= Result= InvocationID= NRestarts= MainPID=
  props=$(systemctl show -p LoadState -p ActiveState -p Type -p Result -p InvocationID \
    -p NRestarts -p MainPID -- "$unit" 2>/dev/null) || true
  while IFS='=' read -r key value; do
    case $key in
      LoadState) LoadState=$value ;;
      ActiveState) ActiveState=$value ;;
      Type) Type=$value ;;
      Result) Result=$value ;;
      InvocationID) InvocationID=$value ;;
      NRestarts) NRestarts=$value ;;
      MainPID) MainPID=$value ;;
    esac
  done <<EOF
$props
EOF
}
now() { read -r up _ </proc/uptime; t=${up%.*}${up#*.}; }  # centiseconds, no process
now; t0=$t
# Straight to the restart (a not-loaded unit fails it at once; its LoadState says why after):
# every process here is on a rolling group's critical path, once per member.
# bounded: systemctl itself waits up to the unit's TimeoutStartSec otherwise
if ! msg=$(timeout "$timeout" systemctl "$verb" -- "$unit" 2>&1); then
  look
  if [ "$LoadState" != loaded ]; then
    echo "is not loaded on the host (LoadState=${LoadState:-unknown})"; exit 41
  fi
  echo "$verb failed: $(printf '%s' "$msg" | tr '\n' ' ')"; journal; exit 41
fi
end=
while :; do
  look
  case $ActiveState in
    active) break ;;
    failed) echo "failed after $verb (state=failed)"; journal; exit 41 ;;
    inactive)
      if [ "$Type" = oneshot ] && [ "$Result" = success ]; then InvocationID=done; break; fi ;;
  esac
  now
  end=${end:-$(( t + timeout * 100 ))}
  if [ "$t" -ge "$end" ]; then
    echo "did not become active within ${timeout}s after $verb (state=$ActiveState)"
    journal; exit 41
  fi
  sleep 0.1
done
invocation=${InvocationID:--} restarts=${NRestarts:--} pid=${MainPID:-0}
now; active=$(( t - t0 )) healthy=-
if [ -n "$check" ]; then
  # The health check is the gate: polled briskly at first (a member that is back in 0.1 s
  # should not wait a whole 0.5 s: a rolling group pays it once per member), every 0.5 s
  # after ~2 s, until health_timeout.
  end=$(( t + health_timeout * 100 )) tries=0
  until out=$(sh -c "$check" 2>&1); do
    tries=$(( tries + 1 ))
    # A unit that died meanwhile fails now, not after health_timeout. Its main process is
    # looked for after every failed try (in /proc: no process), the unit itself (a look is
    # a systemctl process, on a host whose CPU the unit being waited for needs too) only
    # when that process is gone, or every third try if it cannot be seen (no main PID, or
    # a /proc that hides it).
    if [ "$invocation" = done ]; then :
    elif [ "$pid" -gt 0 ] && [ -d "/proc/$pid" ]; then :
    elif [ "$pid" -gt 0 ] || [ $(( tries % 3 )) -eq 0 ]; then
      look
      if [ "$ActiveState" != active ] || [ "${InvocationID:--}" != "$invocation" ]; then
        echo "went down again while waiting for its health check (state=$ActiveState," \
          "NRestarts $restarts -> ${NRestarts:--})"
        journal; exit 41
      fi
      # Still up: its main process changed (follow that one), or it is hidden from us
      # (from now on every third try).
      if [ "${MainPID:-0}" = "$pid" ]; then pid=0; else pid=${MainPID:-0}; fi
    fi
    now
    if [ "$t" -ge "$end" ]; then printf '%s\n' "$out" | tail -n 5; exit 42; fi
    if [ "$tries" -le 10 ]; then sleep 0.05
    elif [ "$tries" -le 25 ]; then sleep 0.1
    else sleep 0.5; fi
  done
  now; healthy=$(( t - t0 ))
  if [ "$invocation" != done ]; then
    # Healthy, but still the process that became active? A port probe passes on the new
    # process of a crash that Restart= repaired while the check ran.
    look
    if [ "$ActiveState" != active ] || [ "${InvocationID:--}" != "$invocation" ] \
        || [ "${NRestarts:--}" != "$restarts" ]; then
      echo "went down again while its health check ran (state=$ActiveState," \
        "NRestarts $restarts -> ${NRestarts:--})"
      journal; exit 41
    fi
  fi
fi
echo "$invocation $restarts $active $healthy"
"""

# A look at a unit during the settle window: is it still the invocation that became active?
_UNIT_SCRIPT = r"""
if [ "$2" != journal ]; then  # the usual look: no subshell (the last look ends a window)
  exec systemctl show -p ActiveState -p InvocationID -p NRestarts -- "$1"
fi
systemctl show -p ActiveState -p InvocationID -p NRestarts -- "$1" || exit 1
journalctl -u "$1" -n 15 --no-pager 2>&1 | tail -n 15
"""

class SshTransport:
    def __init__(self, host: Host, *, base_dir: Path, connect_timeout: float = 15.0,
                 command_timeout: float = 120.0, max_sessions: int = MAX_SESSIONS) -> None:
        self.host = host
        self.base_dir = Path(base_dir)
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._connection: Connection | None = None
        self._connect_error: TransportError | None = None
        self._lock = threading.Lock()
        self._sessions = _Sessions(max(1, max_sessions))
        # Turns to carry uploads (UPLOAD_COMMANDS): a caller waits for one here, then for a
        # session; every upload queued by the time it has both goes in its command.
        self._upload_turns = _Sessions(min(UPLOAD_COMMANDS, max(1, max_sessions)))
        self._uploads: list[_Upload] = []
        self._uploads_lock = threading.Lock()
        self._uploads_grew = threading.Condition(self._uploads_lock)
        # For the apply's scheduler: steps beyond the sessions wait in the transport, where
        # the uploads among them are carried together (one command for many files); more
        # than twice the sessions would only take threads that other hosts could use.
        self.max_concurrent_steps = 2 * max(1, max_sessions)

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
            if self._connection is not None:  # died since its last use
                self._discard(self._connection)
            if self._connect_error is not None:
                # Tried and failed in this run: every further step fails at once instead of
                # waiting out another connect timeout.
                raise self._connect_error
            try:
                self._connection = self._open()
            except TransportError as exc:
                self._connect_error = exc
                raise
            return self._connection

    def _open(self) -> Connection:
        known_hosts = self.known_hosts
        identity = self._path(self.host.identity_file, None)
        if identity is not None and not identity.is_file():
            raise TransportError(f"identity_file {identity} does not exist",
                                 host=self.host.name,
                                 hint="fix identity_file in the host's config")
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
        # paramiko logs every refused channel as an ERROR; those are retried (and reported
        # if they persist), so its messages go to a logger of ours that drops them.
        connection.client.set_log_channel(_WIRE_LOGGER)
        # Never trust an unknown key: fabric's default would add it silently.
        connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            connection.client.load_host_keys(str(known_hosts))
        except FileNotFoundError:
            raise HostKeyError(
                f"known_hosts file {known_hosts} does not exist, so the host key of "
                f"{self.host.address} cannot be verified",
                host=self.host.name, hint=self._trust_hint()) from None
        sock: socket.socket | None = None
        opened = False
        try:
            if not connection.gateway:  # a ProxyJump from ssh_config brings its own channel
                sock = self._socket(connection.host, int(connection.port))
                connection.connect_kwargs["sock"] = sock
            connection.open()
            opened = True
        except paramiko.BadHostKeyException as exc:
            connection.close()
            raise HostKeyError(
                f"the host key of {self.host.address} CHANGED (got "
                f"{exc.key.get_name()} {exc.key.get_fingerprint().hex()}); refusing to "
                "connect", host=self.host.name,
                hint="if the host was really reinstalled, remove its old line with "
                f"ssh-keygen -R {self._host_key_name()} -f {known_hosts}, verify the new "
                "fingerprint out of band, then add it") from None
        except (paramiko.SSHException, EOFError) as exc:
            # paramiko reports a connection closed during the handshake as a bare EOFError,
            # and one closed during authentication as an AuthenticationException.
            closed = isinstance(exc, EOFError) or not self._alive(connection)
            connection.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    f"the host key of {self.host.address} is not in {known_hosts}; "
                    "refusing to connect to an unknown host",
                    host=self.host.name, hint=self._trust_hint()) from None
            if closed:
                raise TransportError(
                    f"{self.host.address}:{self.host.port} closed the connection during login"
                    + (f" ({exc})" if str(exc) else ""),
                    host=self.host.name,
                    hint="check that the host is up and its sshd runs (and is not refusing "
                    "connections: MaxStartups); then run pkiform apply again") from None
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
            connection.close()
            raise TransportError(
                f"unreachable at {self.host.address}:{self.host.port} ({exc})",
                host=self.host.name,
                hint="check that the host is up, sshd runs and the address/port are "
                "right; then run pkiform apply again") from None
        finally:
            if not opened and sock is not None:
                sock.close()
        transport = connection.client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        return connection

    def _socket(self, address: str, port: int) -> socket.socket:
        sock = socket.create_connection((address, port), timeout=self.connect_timeout)
        # Every command is a few small packets each way. Without TCP_NODELAY, Nagle's
        # algorithm holds a channel request back until the peer ACKs the previous packet,
        # and the peer delays that ACK (40 ms on Linux): ~50 ms per command instead of ~5.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @staticmethod
    def _alive(connection: Connection) -> bool:
        transport = connection.client.get_transport()
        return transport is not None and transport.is_active()

    @staticmethod
    def _discard(connection: Connection) -> None:
        try:
            connection.close()
        except Exception:
            pass

    def _lost(self, connection: Connection, detail: str) -> TransportError:
        """Forget a dead connection (the next command reconnects) and say so."""
        with self._lock:
            if self._connection is connection:
                self._connection = None
        self._discard(connection)
        return TransportError(f"connection lost ({detail})", host=self.host.name,
                              hint="check that the host and its sshd are up, then run "
                              "pkiform apply again: completed steps are kept")

    def _trust_hint(self) -> str:
        return (f"verify the host's key fingerprint out of band (on the host: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_ed25519_key.pub), then add it: ssh-keyscan -p "
                f"{self.host.port} {self.host.address} >> {self.known_hosts}")

    def _channel(self, timeout: float) -> tuple[Connection, paramiko.Channel]:
        """A new session channel. Nothing has run on the host yet, so this may retry: a
        connection found dead is reopened once, a refused channel is asked for again."""
        reopened = False
        refusal: BaseException | None = None
        for attempt in range(8):
            connection = self._connect()
            transport = connection.client.get_transport()
            try:
                if transport is None or not transport.is_active():
                    raise EOFError("the connection is closed")
                return connection, transport.open_session(timeout=timeout)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                if transport is not None and transport.is_active():
                    # sshd refused this channel (MaxSessions: closed sessions are freed a
                    # little after their close); the connection itself is fine. (paramiko
                    # may even report another thread's refusal as "Unable to open channel".)
                    refusal = exc
                    time.sleep(0.05 * (attempt + 1))
                    continue
                error = self._lost(connection, str(exc) or type(exc).__name__)
                if reopened:
                    raise error from None
                reopened = True
        raise TransportError(f"sshd keeps refusing new sessions ({refusal})",
                             host=self.host.name,
                             hint="raise MaxSessions in the host's sshd_config (default 10)")

    def _exec(self, script: str, args: Sequence[str] = (), *, stdin: bytes | None = None,
              timeout: float | None = None) -> tuple[int, str, str]:
        """Run ``sh -c script`` (under sudo if configured); returns (status, stdout, stderr)."""
        with self._sessions:
            return self._exec_in_session(script, args, stdin=stdin, timeout=timeout)

    def _exec_in_session(self, script: str, args: Sequence[str] = (), *,
                         stdin: bytes | None = None, timeout: float | None = None
                         ) -> tuple[int, str, str]:
        """`_exec` for a caller that holds one of ``self._sessions``."""
        command = "sh -c " + shlex.quote(script) + " pkiform " + " ".join(
            shlex.quote(a) for a in args)
        if self.host.sudo:
            command = "sudo -n " + command
        timeout = timeout or self.command_timeout
        connection, channel = self._channel(timeout)
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin is not None:
                try:
                    channel.sendall(stdin)
                except OSError:
                    pass  # the command exited early; its status says why
            channel.shutdown_write()
            out = channel.makefile("rb").read().decode(errors="replace")
            err = channel.makefile_stderr("rb").read().decode(errors="replace")
            status = channel.recv_exit_status()
        except TimeoutError:
            raise TransportError(
                f"no answer within {timeout:.0f}s", host=self.host.name,
                hint="the host or the command hangs; check the host, then run pkiform "
                "apply again") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not self._alive(connection):
                raise self._lost(connection, str(exc) or type(exc).__name__) from None
            raise TransportError(f"the command's channel failed ({exc})",
                                 host=self.host.name,
                                 hint="run pkiform apply again") from None
        finally:
            channel.close()
        if status == -1:
            # No exit status: the channel closed without one. Either the connection died
            # (sshd stopped or killed) or the command was killed by a signal.
            if not self._alive(connection):
                raise self._lost(connection, "the host closed the connection")
            raise TransportError("the command was killed on the host (no exit status)",
                                 host=self.host.name,
                                 hint="check the host (out of memory?), then run pkiform "
                                 "apply again")
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
                elif parts[0] == "U":
                    raise TransportError(
                        f"cannot read {path} as {self.host.user}: permission denied",
                        host=self.host.name,
                        hint="log in as root, or set sudo = true for this host")
                else:
                    result[path] = FileStat(parts[1], int(parts[2], 8), parts[3], parts[4])
        return result

    def write_file(self, path: str, content: bytes, *, mode: int, owner: str | None,
                   group: str | None, backup: bool = True) -> None:
        """Queue the upload; whichever caller gets the next upload turn and a session
        carries every upload queued by then in one command (one round trip and a few
        processes on the host for many files, each still atomic on its own), and each
        caller gets its own outcome."""
        upload = _Upload(path, content, f"{mode:04o}",
                         f"{owner}:{group}" if owner and group else (owner or ""), backup)
        with self._uploads_lock:
            self._uploads.append(upload)
            self._uploads_grew.notify_all()
        while not upload.taken and self._upload_turns.acquire(give_up=lambda: upload.taken):
            try:
                with self._sessions:
                    with self._uploads_lock:
                        self._linger()
                        batch = self._take_uploads()
                    self._upload_turns.wake()  # callers whose uploads this took wait no more
                    if batch:
                        self._upload(batch)
            finally:
                self._upload_turns.release()
        upload.finished.wait()
        if upload.error is not None:
            raise upload.error

    def _linger(self) -> None:
        """Wait (holding ``_uploads_lock``) until the queue has stopped growing for
        UPLOAD_LINGER seconds, at most UPLOAD_LINGER_MAX, or is a full batch already."""
        deadline = time.monotonic() + UPLOAD_LINGER_MAX
        while len(self._uploads) < UPLOAD_BATCH_FILES:
            seen = len(self._uploads)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._uploads_grew.wait(min(UPLOAD_LINGER, left))
            if len(self._uploads) == seen:
                return

    def _take_uploads(self) -> list[_Upload]:
        """The queued uploads, oldest first, up to UPLOAD_BATCH_FILES files and
        UPLOAD_BATCH_BYTES bytes (at least one)."""
        taken, size = 0, 0
        for upload in self._uploads:
            if taken and (taken >= UPLOAD_BATCH_FILES
                          or size + len(upload.content) > UPLOAD_BATCH_BYTES):
                break
            taken += 1
            size += len(upload.content)
        batch, self._uploads = self._uploads[:taken], self._uploads[taken:]
        for upload in batch:
            upload.taken = True
        return batch

    def _upload(self, batch: Sequence[_Upload]) -> None:
        """One command for ``batch`` (a session is held); sets every upload's outcome, and
        raises nothing."""
        # By owner and mode: the host runs one chown and one chmod per run of equal values.
        batch = sorted(batch, key=lambda u: (u.owner_spec, u.mode))
        try:
            args: list[str] = []
            for upload in batch:
                # Length and hash (not the content: a key's SHA-256 reveals nothing) go on
                # the command line so the host can tell a complete upload from one cut short.
                args += [upload.path, upload.mode, upload.owner_spec, str(len(upload.content)),
                         hashlib.sha256(upload.content).hexdigest(),
                         "1" if upload.backup else "0", f".pkiform.{secrets.token_hex(8)}"]
            status, out, err = self._exec_in_session(
                _WRITE_SCRIPT, args, stdin=b"".join(u.content for u in batch))
            reports: dict[int, tuple[int, str]] = {}
            for line in out.splitlines():
                number, _, rest = line.partition(" ")
                code, _, message = rest.partition(" ")
                if number.isdigit() and (code == "ok" or code.isdigit()):
                    reports[int(number)] = (0 if code == "ok" else int(code), message)
            for number, upload in enumerate(batch, start=1):
                report = reports.get(number)
                if report is None:
                    upload.error = TransportError(
                        f"writing {upload.path} failed: "
                        f"{(err or out).strip() or f'exit status {status}'}",
                        host=self.host.name)
                elif report[0] != 0:
                    upload.error = self._write_error(upload, *report)
        except Exception as exc:  # the command itself failed: so did every upload in it
            # Not raised here: the carrier's own upload may not be in this batch, and must
            # not be reported failed while it still waits in the queue.
            for upload in batch:
                if upload.error is None:
                    upload.error = exc
        finally:
            for upload in batch:
                upload.finished.set()

    def _write_error(self, upload: _Upload, status: int, message: str) -> TransportError:
        path, owner_spec = upload.path, upload.owner_spec
        if status == 40:
            return TransportError(f"refusing to write {path}: it is a symlink",
                                  host=self.host.name, hint="replace the symlink by a regular "
                                  "file or remove it, then apply again")
        if status == 44:
            return TransportError(f"refusing to write {path}: it exists and is not a regular "
                                  "file", host=self.host.name,
                                  hint="move whatever is at that path away, then apply again")
        if status == 43:
            return TransportError(f"{path} arrived incomplete ({message}); the file on the "
                                  "host is unchanged", host=self.host.name,
                                  hint="check the connection to the host, then apply again")
        if "No space left" in message:
            return TransportError(f"disk full writing {path}", host=self.host.name,
                                  hint="free space on the host, then apply again")
        if "Permission denied" in message or "Operation not permitted" in message:
            return TransportError(f"permission denied writing {path}", host=self.host.name,
                                  hint="log in as root, or set sudo = true for this host")
        if "invalid user" in message or "invalid group" in message:
            return TransportError(f"owner {owner_spec} does not exist on the host ({message})",
                                  host=self.host.name, hint="create the user/group first, or "
                                  "change owner/group of the file resource")
        return TransportError(f"writing {path} failed: {message}", host=self.host.name)

    def remove_file(self, path: str) -> bool:
        status, out, err = self._exec(
            'if [ -e "$1" ] || [ -L "$1" ]; then rm -f -- "$1"; echo removed; fi', [path])
        if status != 0:
            raise TransportError(f"cannot remove {path}: {err.strip()}", host=self.host.name)
        return out.strip() == "removed"

    def restart_service(self, unit: str, *, reload: bool, health: HealthCheck | None,
                        timeout: float, settle: float | None = None) -> RestartOutcome:
        """One round trip restarts the unit, waits until it is active and, with ``health``,
        until the check passes (the unit still the invocation that became active); then the
        settle window, if any, is watched from here (see settle_window)."""
        verb = "reload" if reload else "restart"
        args = [unit, verb, str(int(timeout))]
        check = ""
        if health is not None:
            check = health.command or f"curl -fsSk --max-time 5 {shlex.quote(health.url or '')}"
            args += [str(int(health.timeout)), check]
        budget = timeout + (health.timeout if health is not None else 0) + 30
        status, out, err = self._exec(_RESTART_SCRIPT, args, timeout=budget)
        if status == 42:
            assert health is not None
            raise ServiceError(
                f"{unit} is active but its health check failed for {health.timeout:.0f}s: "
                f"{check}\n    " + "\n    ".join((out or err).splitlines()[-5:]),
                host=self.host.name,
                hint="the rollout stopped here; fix the service, then run pkiform apply again")
        words = out.split()
        if status != 0 or len(words) != 4:
            lines = out.splitlines() or [err.strip() or f"exit status {status}"]
            raise self._unit_error(unit, lines[0], lines[1:])
        invocation, restarts, active_cs, healthy_cs = words
        detail = f"{verb}ed, active after {int(active_cs) / 100:.1f}s"
        if healthy_cs != "-":
            detail += f", healthy after {int(healthy_cs) / 100:.1f}s"
        window = settle_window(settle, health is not None)
        if invocation != "done" and window > 0:
            self._settle(unit, verb, invocation, restarts, window)
            detail += f", up for {window:g}s"
        return RestartOutcome(True, detail)

    def _settle(self, unit: str, verb: str, invocation: str, restarts: str,
                window: float) -> None:
        """Make sure the unit stays up for ``window`` seconds after it became active: a
        ``Type=simple`` unit is "active" the moment it is forked, even if its process exits
        right away. It is looked at every SETTLE_POLL seconds (a fixed grid, nothing in the
        last half poll) and once more at the end of the window (counted from here: the host
        saw it active before); it must be active
        each time and still the same invocation (a crash that ``Restart=`` repaired in
        between gives a new InvocationID and NRestarts). No session is held while waiting,
        so the host's other steps go on meanwhile."""
        since = time.monotonic()
        deadline = since + window
        look_at = since + SETTLE_POLL
        while True:
            if look_at > deadline - SETTLE_POLL / 2:
                # No look in the last half poll but the one that ends the window: a slow look
                # (a busy host, a wait for a session) must not push that one past its deadline.
                look_at = deadline
            time.sleep(max(0.0, look_at - time.monotonic()))
            last = time.monotonic() >= deadline
            status, out, err = self._exec(_UNIT_SCRIPT, [unit])
            if status != 0:
                raise TransportError(f"cannot read the state of {unit}: "
                                     f"{err.strip() or out.strip()}", host=self.host.name)
            props = dict(line.partition("=")[::2] for line in out.splitlines())
            state = props.get("ActiveState") or "unknown"
            now = (props.get("InvocationID") or "-", props.get("NRestarts") or "-")
            if state == "active" and now == (invocation, restarts):
                if last:
                    return
                # the next poll on the grid after now (a late look does not bring on a burst)
                look_at = since + SETTLE_POLL * (int((time.monotonic() - since) / SETTLE_POLL) + 1)
                continue
            elapsed = time.monotonic() - since
            why = f"state={state}" if state != "active" else (
                f"restarted by systemd in between, NRestarts {restarts} -> {now[1]}")
            _, out, _ = self._exec(_UNIT_SCRIPT, [unit, "journal"])
            journal = [line for line in out.splitlines()
                       if line.partition("=")[0] not in ("ActiveState", "InvocationID",
                                                         "NRestarts")]
            raise self._unit_error(unit, f"went down again within {elapsed:.1f}s of becoming "
                                   f"active after {verb} ({why})", journal)

    def _unit_error(self, unit: str, message: str, journal: Sequence[str]) -> ServiceError:
        return ServiceError(
            f"{unit} {message}\n  last journal lines:\n    "
            + "\n    ".join(journal or ["(none)"]),
            host=self.host.name,
            hint=f"fix the unit (journalctl -u {unit} on {self.host.name}); then run "
            "pkiform apply again: the rollout continues from this host")

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
                self._discard(self._connection)
            self._connection = None
            self._connect_error = None
