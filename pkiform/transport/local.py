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
import itertools
import os
import pwd
import stat
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


# Directories are opened one component at a time, never following a symlink (O_NOFOLLOW on
# each step), and files are created and renamed relative to the directory's descriptor, so a
# symlink anywhere between the host's directory and the file is refused, not followed.
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]


class LocalTransport:
    # Its steps are a few local system calls each, short and CPU-bound under the GIL: the
    # applier runs them in its own thread (see pkiform.apply), not on worker threads.
    inline_steps = True

    def __init__(self, host: Host, root: Path) -> None:
        self.host = host
        # The root is resolved once per process; a host directory is resolved only when it is
        # itself a symlink (one lstat instead of a realpath per host: 5,000 hosts per plan).
        base = os.path.join(_resolved(str(root)), host.name)
        self.base = Path(os.path.realpath(base) if os.path.islink(base) else base)
        self._base_text = str(self.base)
        # Directories this transport already walked (or created) without meeting a symlink,
        # by path below the host's directory ("" is the host's directory itself), with the
        # identity (st_dev, st_ino) they had then. Writing a host's second file into a known
        # directory is one open and one fstat instead of a walk from the host's directory:
        # a write is on the critical path of apply, ~2,000 of them at 1,000 nodes.
        self._known_directories: dict[str, tuple[int, int]] = {}
        # Temp names: a random prefix per transport and a counter (O_EXCL refuses a clash
        # anyway), rather than fresh randomness, a system call, per file.
        self._temp_prefix = os.urandom(8).hex()
        self._temp_counter = itertools.count()

    def local_path(self, path: str) -> Path:
        return Path(self._local_text(path))

    def _local_text(self, path: str) -> str:
        if not path.startswith("/") or os.path.normpath(path) != path:
            raise TransportError(f"refusing non-normalized path {path!r}", host=self.host.name)
        return os.path.join(self._base_text, path.lstrip("/"))

    def _symlink_refused(self, below_base: str) -> TransportError:
        return TransportError(
            f"refusing to write through symlink {os.path.join(self._base_text, below_base)}",
            host=self.host.name,
            hint="remove the symlink; pkiform only writes regular files",
        )

    def _open_directory(self, directory: str) -> int:
        """A descriptor of ``directory`` (below the host's directory, "" for itself), made
        0755 where missing, reached without following any symlink below the host's directory.
        """
        known = self._known_directories.get(directory)
        if known is not None:
            fd = self._reopen_known(directory, known)
            if fd is not None:
                return fd
        # Walk down from the deepest directory already known (usually the parent), else from
        # the host's directory.
        parts = directory.split("/") if directory else []
        start = 0
        fd = None
        for depth in range(len(parts) - 1, 0, -1):
            ancestor = "/".join(parts[:depth])
            identity = self._known_directories.get(ancestor)
            if identity is not None:
                fd = self._reopen_known(ancestor, identity)
                if fd is not None:
                    start = depth
                    break
        if fd is None:
            fd = self._open_host_directory()
        try:
            for depth in range(start, len(parts)):
                child = self._open_child(fd, parts[depth], "/".join(parts[: depth + 1]))
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _remember(self, directory: str, fd: int) -> None:
        info = os.fstat(fd)
        self._known_directories[directory] = (info.st_dev, info.st_ino)

    def _reopen_known(self, directory: str, identity: tuple[int, int]) -> int | None:
        # By path, so a component above the last one could have been swapped for a symlink
        # since the walk: the descriptor counts only if it is the very directory the walk
        # found (same device and inode). That directory was inside the host's directory when
        # it was walked; whoever moved it since could as well move the files written into it.
        try:
            fd = os.open(os.path.join(self._base_text, directory), _DIRECTORY_FLAGS)
        except OSError:
            self._known_directories.pop(directory, None)
            return None
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == identity:
            return fd
        os.close(fd)
        self._known_directories.pop(directory, None)
        return None

    def _open_host_directory(self) -> int:
        try:
            fd = os.open(self._base_text, _DIRECTORY_FLAGS)
        except FileNotFoundError:
            os.makedirs(self._base_text, mode=0o755, exist_ok=True)
            fd = os.open(self._base_text, _DIRECTORY_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self._base_text):
                raise self._symlink_refused("") from None
            raise
        self._remember("", fd)
        return fd

    def _open_child(self, parent_fd: int, name: str, below_base: str) -> int:
        try:
            fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # or another thread just made it
                os.mkdir(name, 0o755, dir_fd=parent_fd)
            fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            # O_NOFOLLOW on a symlink: ELOOP (or ENOTDIR with O_DIRECTORY on some kernels).
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                    os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
                raise self._symlink_refused(below_base) from None
            raise
        self._remember(below_base, fd)
        return fd

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
        self._local_text(path)  # refuses a relative or non-normalized path
        directory, _, name = path.lstrip("/").rpartition("/")
        if not name:
            raise TransportError(f"refusing to write the directory {path!r} as a file",
                                 host=self.host.name)
        tmp_name = f".{name}.{self._temp_prefix}{next(self._temp_counter)}.pkiform-tmp"
        backup_name = name + BACKUP_SUFFIX
        dir_fd = -1
        tmp_made = False
        try:
            dir_fd = self._open_directory(directory)
            try:
                existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                existing = None
            if existing is not None and stat.S_ISLNK(existing):
                raise self._symlink_refused(path.lstrip("/"))
            if existing is not None and not stat.S_ISREG(existing):
                raise TransportError(
                    f"cannot write {path}: it exists and is not a regular file",
                    host=self.host.name, hint="remove it; pkiform only writes regular files")
            # Created 0600, so a private key is never readable by others, even for a moment.
            fd = os.open(tmp_name, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
            tmp_made = True
            try:
                os.fchmod(fd, mode)
                _write_all(fd, content)
                os.fsync(fd)  # the content is on disk before the rename can be
            finally:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup_name, dir_fd=dir_fd)
            if backup and existing is not None:
                # One generation kept beside the file for manual rollback (never for private
                # keys: a rotation after a leak must not leave the leaked key behind).
                os.link(name, backup_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False)
            os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            tmp_made = False
            os.fsync(dir_fd)  # and the rename is, before the step is reported done
        except (TransportError, OSError) as exc:
            if tmp_made:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name, dir_fd=dir_fd)
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"cannot write {path}: {exc.strerror or exc}",
                                 host=self.host.name) from None
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

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
