"""The state file on disk: atomic, backed up, locked, journaled, never world-readable.

Layout of a state directory (default ``state/`` next to the config)::

    pkiform.state.json          the state (JSON, mode 0600; secrets section encrypted)
    pkiform.state.json.backup   the previous version, kept on every save
    pkiform.journal             steps completed by an apply still running or interrupted
    pkiform.lock                the lock; holds who has it

Every completed apply step is appended to the journal and fsync'd, so an apply killed at any
point loses nothing it deployed; the next load replays the journal onto the state. Writing
the whole state after each of 25,000 steps would be quadratic, the journal is linear. The state
file itself is only ever replaced by rename, so it is always the old or the new version.

The format is JSON, one resource per line (readable diffs when the state is kept in git).
It was TOML at first; at fleet scale (5,000 nodes, ~35 MB) tomllib took 8.4 s to load and
tomli-w 11 s to save, against 0.3 s for the C JSON codec — and plan/apply load it every run.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import gc
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring, encode_basestring_ascii
from pathlib import Path
from typing import Any

import attrs

from pkiform.errors import SecretKeyError, StateError, StateLockedError
from pkiform.state import secrets as secret_box
from pkiform.state.model import FORMAT_VERSION, ResourceState, State

STATE_FILE = "pkiform.state.json"
FORMAT_NAME = "pkiform-state"
BACKUP_SUFFIX = ".backup"
JOURNAL_FILE = "pkiform.journal"
LOCK_FILE = "pkiform.lock"
EMPTY_STATE_HASH = "empty"


@attrs.frozen
class LockInfo:
    id: str
    pid: int
    host: str
    user: str
    operation: str
    created: str

    def describe(self) -> str:
        return (
            f"lock {self.id} held by {self.user}@{self.host} pid {self.pid} "
            f"({self.operation}, since {self.created})"
        )


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # umask may have narrowed or (never) widened it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _drop_none(value: Any) -> Any:
    """JSON's null is never written: optional values are simply absent (as in TOML, at first)."""
    if isinstance(value, Mapping):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value if v is not None]
    return value


class _NotPlain(Exception):
    """A value `_encode_plain` leaves to `_drop_none` (a Mapping that is not a dict, ...)."""


def _refuse(value: Any) -> Any:
    raise _NotPlain


def _compact_encoder(default: Callable[[Any], Any] | None) -> Callable[[Any], str]:
    """One reusable C encoder (``json.dumps`` builds a new one per call: 35,000 per save)."""
    make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
    if make_c_encoder is None:  # pragma: no cover - CPython has the C codec
        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=default)
        return encoder.encode
    # markers=None: no circular check (records are trees); the rest as json.dumps would pass.
    make = make_c_encoder(None, default, encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(make(value, 0))


_encode_plain = _compact_encoder(_refuse)
_encode_any = _compact_encoder(None)


def _compact_json(value: Any) -> str:
    """``json.dumps(_drop_none(value), separators=(",", ":"), ensure_ascii=False)``, fast.

    Records are plain dicts, lists, strings and numbers almost always: the C encoder writes
    them in one pass. What it would write differently goes the slow way: a Mapping that is not
    a dict (refused), a key that is not a str, number or bool (TypeError), a None (its ``null``
    shows in the text; so can a string that contains "null", which only costs time). The one
    difference left: a bool dict key is spelled ``"true"``, not ``"True"``.
    """
    try:
        text = _encode_plain(value)
    except (_NotPlain, TypeError):
        return _encode_any(_drop_none(value))
    if "null" in text:
        return _encode_any(_drop_none(value))
    return text


def _section(pieces: list[str], values: Mapping[str, Any], encode: Callable[[Any], str]
             ) -> None:
    """A JSON object with one key per line, keys in order, appended to ``pieces``."""
    if not values:
        pieces.append("{}")
        return
    separator = "{\n"
    for key in sorted(values):
        pieces += (separator, encode_basestring_ascii(key), ":", encode(values[key]))
        separator = ",\n"
    pieces.append("\n}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic GC while a state is parsed: millions of fresh, acyclic objects would trigger
    repeated full collections that find nothing (about a tenth of a 35 MB load)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class StateStore:
    def __init__(self, directory: Path, key_file: Path | None = None) -> None:
        self.directory = Path(directory)
        self.key_file = key_file
        self.path = self.directory / STATE_FILE
        self.backup_path = self.directory / (STATE_FILE + BACKUP_SUFFIX)
        self.journal_path = self.directory / JOURNAL_FILE
        self.lock_path = self.directory / LOCK_FILE
        self._lock_fd: int | None = None
        self._key: secret_box.StateKey | None = None
        self._raw: dict[str, Any] | None = None
        self._plain: tuple[State, Any, Any] | None = None
        self._journal_fd: int | None = None
        self._journal_dirty = False
        self._sealed = secret_box.SealCache()  # ciphertexts on disk, reused while unchanged

    # -- reading -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def content_hash(self) -> str:
        """Hash of exactly what is on disk (state + journal): what a saved plan is bound to."""
        if not self.path.exists() and not self.journal_path.exists():
            return EMPTY_STATE_HASH
        digest = hashlib.sha256()
        for path in (self.path, self.journal_path):
            digest.update(path.name.encode() + b"\0")
            if path.exists():
                digest.update(path.read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()

    def _parse(self) -> dict[str, Any]:
        try:
            data = self.path.read_bytes()
        except PermissionError as exc:
            raise StateError(f"{self.path}: cannot read the state file: {exc}") from None
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
                raise ValueError("not a pkiform state document")
        except (ValueError, UnicodeDecodeError) as exc:
            raise StateError(
                f"{self.path}: the state file is corrupt ({exc}); nothing was changed",
                hint=self._backup_hint(),
            ) from None
        version = raw.get("version")
        if version != FORMAT_VERSION:
            raise StateError(
                f"{self.path}: state format version {version!r} is not supported "
                f"(this pkiform reads version {FORMAT_VERSION})",
                hint="use the pkiform release that wrote it, or restore the backup",
            )
        for field in ("lineage", "serial"):
            if field not in raw:
                raise StateError(
                    f"{self.path}: the state file has no {field!r}; it was truncated or "
                    "edited by hand",
                    hint=self._backup_hint(),
                )
        return raw

    def _backup_hint(self) -> str:
        if self.backup_path.exists():
            return (
                f"the previous state is kept at {self.backup_path}; inspect it and restore "
                f"it with: cp {self.backup_path} {self.path}"
            )
        return "restore the state directory from version control or your backup"

    def load(self, *, decrypt: bool = True) -> State:
        """The current state, journal replayed. ``decrypt=False`` leaves secrets out (plan)."""
        with _collector_paused():
            return self._load(decrypt)

    def _load(self, decrypt: bool) -> State:
        if not self.path.exists():
            state = State.empty()
            raw: dict[str, Any] = {"secrets": {}}
        else:
            raw = self._parse()
            try:
                # The records adopt the parsed dicts; `_raw` keeps everything else.
                resources = {
                    address: ResourceState.from_dict(record)
                    for address, record in raw.pop("resources", {}).items()
                }
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StateError(
                    f"{self.path}: a resource record is malformed ({exc!r})",
                    hint=self._backup_hint(),
                ) from None
            state = State(
                lineage=str(raw["lineage"]), serial=int(raw["serial"]), resources=resources
            )
        self._raw = raw
        secrets: dict[str, dict[str, str]] = {}
        if decrypt and raw.get("secrets"):
            key = self.key_for(state.lineage, create=False)
            self._check_key_id(raw, key)
            secrets = secret_box.decrypt_section(key, raw["secrets"], self._sealed)
        state = attrs.evolve(state, secrets=secrets)
        state = self._replay_journal(state, decrypt=decrypt)
        # What `with_secrets` needs to decrypt this very state later without parsing it again.
        self._plain = None if decrypt else (state, raw.get("secrets"), raw.get("key_id"))
        return state

    def with_secrets(self, state: State) -> State:
        """``state`` with its secrets, where ``state`` is what the last ``load(decrypt=False)``
        returned and the caller knows the file is unchanged since: only the secrets section
        of that parse is decrypted (a CA rotation's proof at 5,000 nodes needs the keys after
        the plan read the state without them; parsing 25,000 records again took 0.25 s).
        Anything else — another state, a journal to replay — is a full ``load``."""
        plain = self._plain
        if plain is None or plain[0] is not state or self.has_journal():
            return self.load(decrypt=True)
        _, sealed, key_id = plain
        secrets: dict[str, dict[str, str]] = {}
        if sealed:
            key = self.key_for(state.lineage, create=False)
            self._check_key_id({"key_id": key_id}, key)
            with _collector_paused():
                secrets = secret_box.decrypt_section(key, sealed, self._sealed)
        return attrs.evolve(state, secrets=secrets)

    def _check_key_id(self, raw: Mapping[str, Any], key: secret_box.StateKey) -> None:
        expected = raw.get("key_id")
        if expected and expected != key.key_id:
            raise SecretKeyError(
                f"{self.path}: the state key from {key.source} is not the key this state was "
                f"encrypted with (key id {key.key_id}, state expects {expected}); nothing "
                "was changed",
                hint="point PKIFORM_STATE_KEY or settings.key_file at the right key",
            )

    # -- keys ------------------------------------------------------------------------------

    def default_key_path(self, lineage: str) -> Path:
        return self.key_file or secret_box.default_key_dir() / f"{lineage}.key"

    def _salt(self) -> bytes | None:
        salt = (self._raw or {}).get("kdf_salt")
        return base64.b64decode(salt) if salt else None

    def key_for(self, lineage: str, *, create: bool) -> secret_box.StateKey:
        """The state key; with ``create`` a missing key file is made (first apply)."""
        if self._key is not None:
            return self._key
        key = secret_box.key_from_environment(self._salt() or self._new_salt())
        if key is None:
            path = self.default_key_path(lineage)
            if path.exists() or not create:
                key = self._matching_key_file(path)
            else:
                key = secret_box.create_key_file(path)
                self.notice = (
                    f"created state key {path} (mode 0600): back it up; without it the keys "
                    "in this state cannot be read"
                )
        self._key = key
        return key

    def _matching_key_file(self, path: Path) -> secret_box.StateKey:
        """The key file whose key id the state names.

        ``state rekey`` writes ``<key>.new``, re-encrypts the state, then renames; if it was
        killed in between, the state already names the new key: find it by its id.
        """
        expected = (self._raw or {}).get("key_id")
        for candidate in (path, path.with_name(path.name + ".new"),
                          path.with_name(path.name + ".previous")):
            if candidate.exists():
                key = secret_box.read_key_file(candidate)
                if expected is None or key.key_id == expected:
                    return key
        return secret_box.read_key_file(path)

    def _new_salt(self) -> bytes:
        if self._raw is not None and "kdf_salt" not in self._raw:
            self._raw["kdf_salt"] = base64.b64encode(os.urandom(16)).decode()
        return self._salt() or b""

    notice: str | None = None

    # -- writing ---------------------------------------------------------------------------

    def serialize(self, state: State, key: secret_box.StateKey | None) -> bytes:
        document: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "lineage": state.lineage,
            "serial": state.serial,
            "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self._raw and self._raw.get("kdf_salt"):
            document["kdf_salt"] = self._raw["kdf_salt"]
        if key is not None:
            document["key_id"] = key.key_id
        secrets: dict[str, dict[str, str]] = {}
        if state.secrets:
            if key is None:
                raise SecretKeyError("refusing to write secrets without a state key")
            secrets = secret_box.encrypt_section(key, state.secrets, self._sealed)

        # One resource (one address's secrets) per line; one join for the whole file.
        head = json.dumps(document, separators=(",", ":"), ensure_ascii=False)[:-1]
        pieces = [head, ',\n"resources":']
        _section(pieces, state.resources, lambda record: _compact_json(record.to_dict()))
        pieces.append(',\n"secrets":')
        _section(pieces, secrets, _compact_json)
        pieces.append("}\n")
        return "".join(pieces).encode()

    def save(self, state: State) -> None:
        """Write ``state`` atomically (serial as given), keep the previous file as backup."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = self.key_for(state.lineage, create=True) if state.secrets else self._key
        data = self.serialize(state, key)
        if self.path.exists():
            tmp_backup = self.backup_path.with_name(f".{self.backup_path.name}.{uuid.uuid4().hex}")
            os.link(self.path, tmp_backup)
            os.replace(tmp_backup, self.backup_path)
        write_atomically(self.path, data)
        self._plain = None
        raw = dict(self._raw or {})
        raw["key_id"] = key.key_id if key is not None else raw.get("key_id")
        self._raw = raw

    # -- journal ---------------------------------------------------------------------------

    def journal_append(
        self, base: State, address: str, record: ResourceState | None, secrets: Mapping[str, str],
        *, sync: bool = True,
    ) -> None:
        """Record one completed step (durably at once, or at the next `journal_sync`)."""
        key = self.key_for(base.lineage, create=True) if secrets else self._key
        sealed = {
            name: self._sealed.seal(key, address, name, value)
            for name, value in secrets.items()
        } if secrets and key else {}
        # One JSON object per line, put together around the one reusable C encoder, the
        # record encoded as the state file encodes it (None dropped): a json.dumps per step
        # built an encoder and walked each record twice, 5,000 times at 1,000 nodes.
        line = "".join((
            '{"address":', encode_basestring(address),
            ',"lineage":', encode_basestring(base.lineage),
            ',"record":', _compact_json(record.to_dict()) if record is not None else "null",
            ',"secrets":', _encode_plain(sealed),
            ',"serial":', str(int(base.serial)),
            "}\n",
        )).encode()
        if self._journal_fd is None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            self._journal_fd = os.open(self.journal_path, flags, 0o600)
        os.write(self._journal_fd, line)
        self._journal_dirty = True
        if sync:
            self.journal_sync()

    def journal_sync(self) -> None:
        """Make every appended step durable (one fsync for all of them: group commit).

        The applier calls this before any step that changes a host, so nothing deployed can
        depend on a step the journal could still lose.
        """
        if self._journal_fd is not None and self._journal_dirty:
            os.fsync(self._journal_fd)
            self._journal_dirty = False

    def _close_journal(self) -> None:
        if self._journal_fd is not None:
            self.journal_sync()
            os.close(self._journal_fd)
            self._journal_fd = None

    def _replay_journal(self, state: State, *, decrypt: bool) -> State:
        if not self.journal_path.exists():
            return state
        lineage = state.lineage
        fresh = state.is_empty and state.serial == 0  # a first apply's journal: adopt its lineage
        # Mutable copies: a journal of a 25,000-step apply must replay in linear time.
        resources = dict(state.resources)
        secrets = dict(state.secrets)
        lines = self.journal_path.read_bytes().split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number >= len(lines) - 1:
                    break  # a torn last line: the step it describes did not complete
                raise StateError(
                    f"{self.journal_path}: line {number} is corrupt", hint=self._backup_hint()
                ) from None
            if fresh:
                lineage, fresh = entry["lineage"], False
            elif entry.get("lineage") != lineage:
                raise StateError(
                    f"{self.journal_path} belongs to another state (lineage "
                    f"{entry.get('lineage')}, state has {lineage})",
                    hint="move the journal away if it is not from this state",
                )
            address = entry["address"]
            if not entry["record"]:
                resources.pop(address, None)
                secrets.pop(address, None)
                continue
            resources[address] = ResourceState.from_dict(entry["record"])
            if decrypt and entry.get("secrets"):
                key = self.key_for(lineage, create=False)
                secrets[address] = {
                    name: self._sealed.open(key, address, name, token)
                    for name, token in entry["secrets"].items()
                }
            elif decrypt:
                secrets.pop(address, None)
        return attrs.evolve(state, lineage=lineage, resources=resources, secrets=secrets)

    def has_journal(self) -> bool:
        return self.journal_path.exists() and self.journal_path.stat().st_size > 0

    def commit(self, state: State) -> State:
        """Save the state with the journal folded in, then drop the journal."""
        state = attrs.evolve(state, serial=state.serial + 1)
        self._close_journal()
        self.save(state)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)
        _fsync_directory(self.directory)
        return state

    # -- lock ------------------------------------------------------------------------------

    def read_lock_info(self) -> LockInfo | None:
        try:
            data = json.loads(self.lock_path.read_text() or "{}")
            return LockInfo(**data) if data else None
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    @contextlib.contextmanager
    def lock(self, operation: str, timeout: float = 0.0) -> Iterator[LockInfo]:
        """Exclusive lock (flock on the lock file). Fails fast naming the holder, or waits."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = self.read_lock_info()
                    raise StateLockedError(
                        f"{self.directory}: state is locked"
                        + (f": {holder.describe()}" if holder else ""),
                        hint="wait for it to finish, retry with --lock-timeout DURATION, or if "
                        "the holder is dead run: pkiform force-unlock "
                        + (holder.id if holder else "<ID>"),
                    ) from None
                time.sleep(0.1)
        info = LockInfo(
            id=str(uuid.uuid4()),
            pid=os.getpid(),
            host=socket.gethostname(),
            user=getpass.getuser(),
            operation=operation,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(attrs.asdict(info)).encode(), 0)
        os.fsync(fd)
        try:
            yield info
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def force_unlock(self, lock_id: str) -> LockInfo:
        holder = self.read_lock_info()
        if holder is None or holder.id != lock_id:
            raise StateLockedError(
                f"{self.lock_path}: no lock with id {lock_id}"
                + (f" (current: {holder.describe()})" if holder else " (the state is not locked)")
            )
        os.unlink(self.lock_path)
        return holder
