"""The local target: files land under ``<root>/<host>/<absolute path>``; no service manager.

Used for the README example, for tests and to stage a PKI for another tool to ship. Writes
are as careful as on a real host (temp file beside the target, fsync, rename, never through
a symlink) because the same code path is what the crash-safety tests exercise.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import os
import pwd
import stat
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pkiform.errors import TransportError
from pkiform.model import Host
from pkiform.transport.base import FileStat, HealthCheck, RestartOutcome

BACKUP_SUFFIX = ".pkiform-backup"


@functools.lru_cache(maxsize=256)
def _name_of(uid: int, lookup: Callable[[int], Any]) -> str:
    # Cached: a refresh asks for the same few owners once per file (20,000 at 5,000 nodes).
    try:
        return str(lookup(uid)[0])
    except KeyError:
        return str(uid)


@functools.lru_cache(maxsize=16)
def _resolved(root: str) -> str:
    return os.path.realpath(root)


def _read_all(fd: int, size_hint: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, max(size_hint, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class LocalTransport:
    def __init__(self, host: Host, root: Path) -> None:
        self.host = host
        # The root is resolved once per process; a host directory is resolved only when it is
        # itself a symlink (one lstat instead of a realpath per host: 5,000 hosts per plan).
        base = os.path.join(_resolved(str(root)), host.name)
        self.base = Path(os.path.realpath(base) if os.path.islink(base) else base)
        self._base_text = str(self.base)

    def local_path(self, path: str) -> Path:
        return Path(self._local_text(path))

    def _local_text(self, path: str) -> str:
        if not path.startswith("/") or os.path.normpath(path) != path:
            raise TransportError(f"refusing non-normalized path {path!r}", host=self.host.name)
        return os.path.join(self._base_text, path.lstrip("/"))

    def _check_no_symlink(self, target: Path) -> None:
        # Every component between the target root and the file must be a real directory:
        # a symlink anywhere would let a write escape the host's directory.
        current = self.base
        for part in target.relative_to(self.base).parts:
            current = current / part
            if current.is_symlink():
                raise TransportError(
                    f"refusing to write through symlink {current}",
                    host=self.host.name,
                    hint="remove the symlink; pkiform only writes regular files",
                )

    def read_files(self, paths: Sequence[str]) -> Mapping[str, FileStat | None]:
        result: dict[str, FileStat | None] = {}
        for path in paths:
            local = self._local_text(path)
            try:
                info = os.lstat(local)
            except FileNotFoundError:
                result[path] = None
                continue
            if stat.S_ISLNK(info.st_mode):
                result[path] = FileStat("", 0, "", "", is_symlink=True)
                continue
            # O_NOFOLLOW: a symlink swapped in after the lstat is reported, never followed.
            try:
                fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                result[path] = None
                continue
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                result[path] = FileStat("", 0, "", "", is_symlink=True)
                continue
            try:
                digest = hashlib.sha256(_read_all(fd, info.st_size)).hexdigest()
            finally:
                os.close(fd)
            result[path] = FileStat(
                digest,
                stat.S_IMODE(info.st_mode),
                _name_of(info.st_uid, pwd.getpwuid),
                _name_of(info.st_gid, grp.getgrgid),
            )
        return result

    def write_file(
        self, path: str, content: bytes, *, mode: int, owner: str | None, group: str | None,
        backup: bool = True,
    ) -> None:
        target = self.local_path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            self._check_no_symlink(target)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.pkiform-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, mode)
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            backup_path = target.with_name(target.name + BACKUP_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup_path)
            if backup and target.exists():
                # One generation kept beside the file for manual rollback (never for private
                # keys: a rotation after a leak must not leave the leaked key behind).
                os.link(target, backup_path)
            os.replace(tmp, target)
            dirfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except TransportError:
            raise
        except OSError as exc:
            with contextlib.suppress(Exception):
                os.unlink(tmp)  # type: ignore[possibly-undefined]
            raise TransportError(f"cannot write {path}: {exc.strerror or exc}",
                                 host=self.host.name) from None

    def remove_file(self, path: str) -> bool:
        target = self.local_path(path)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return False
        return True

    def restart_service(
        self, unit: str, *, reload: bool, health: HealthCheck | None, timeout: float,
        settle: float | None = None,
    ) -> RestartOutcome:
        return RestartOutcome(False, "skipped, local target")

    def serving_certificate(self, endpoint: str) -> bytes | None:
        return None

    def close(self) -> None:
        return None
