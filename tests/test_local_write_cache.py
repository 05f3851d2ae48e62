"""The local target's write path: directories walked once per run, still never through a symlink.

`LocalTransport` remembers the directories it walked (or made) and reopens a known one by path,
trusting it only if it is still the very directory the walk found; anything else is walked
again from the host's directory, one component at a time with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from pkiform.errors import TransportError
from pkiform.model import Host
from pkiform.transport.local import LocalTransport


def transport(root: Path) -> LocalTransport:
    return LocalTransport(Host("h", "10.0.0.1"), root)


def test_a_known_directory_swapped_for_a_symlink_is_refused(tmp_path: Path) -> None:
    local = transport(tmp_path)
    local.write_file("/etc/kubernetes/pki/ca.crt", b"CA", mode=0o644, owner=None, group=None)
    # The directory pkiform walked is moved away and a symlink to a look-alike takes its place.
    decoy = tmp_path / "decoy"
    (decoy / "pki").mkdir(parents=True)
    os.rename(tmp_path / "h/etc/kubernetes", tmp_path / "moved")
    (tmp_path / "h/etc/kubernetes").symlink_to(decoy)
    with pytest.raises(TransportError, match=r"symlink \S*/h/etc/kubernetes\n"):
        local.write_file("/etc/kubernetes/pki/ca.key", b"KEY", mode=0o600, owner=None,
                         group=None, backup=False)
    assert list((decoy / "pki").iterdir()) == []
    assert sorted(os.listdir(tmp_path / "moved/pki")) == ["ca.crt"]


def test_a_known_directory_made_anew_is_walked_again(tmp_path: Path) -> None:
    local = transport(tmp_path)
    local.write_file("/etc/kubernetes/pki/ca.crt", b"one", mode=0o644, owner=None, group=None)
    shutil.rmtree(tmp_path / "h/etc")
    (tmp_path / "h/etc/kubernetes/pki").mkdir(parents=True)  # same path, another directory
    local.write_file("/etc/kubernetes/pki/ca.crt", b"two", mode=0o644, owner=None, group=None)
    assert (tmp_path / "h/etc/kubernetes/pki/ca.crt").read_bytes() == b"two"
    shutil.rmtree(tmp_path / "h")  # the host's directory too: made again
    local.write_file("/etc/kubernetes/pki/ca.crt", b"three", mode=0o644, owner=None, group=None)
    assert (tmp_path / "h/etc/kubernetes/pki/ca.crt").read_bytes() == b"three"


def test_a_second_file_in_a_known_directory_makes_and_walks_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = transport(tmp_path)
    local.write_file("/etc/kubernetes/pki/ca.crt", b"CA", mode=0o644, owner=None, group=None)
    opened: list[str] = []
    made: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def counting_open(path: str, *args: object, **kwargs: object) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    def counting_mkdir(path: str, *args: object, **kwargs: object) -> None:
        made.append(str(path))
        real_mkdir(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "mkdir", counting_mkdir)
    local.write_file("/etc/kubernetes/pki/ca.key", b"KEY", mode=0o600, owner=None, group=None,
                     backup=False)
    assert made == []
    assert len(opened) == 2, opened  # the directory, then the temp file in it
    local.write_file("/etc/kubernetes/admin.conf", b"CONF", mode=0o600, owner=None, group=None)
    assert made == []
    assert len(opened) == 4, opened  # the parent is known as well


def test_final_modes_hold_whatever_the_umask(tmp_path: Path) -> None:
    local = transport(tmp_path)
    old = os.umask(0o077)
    try:
        local.write_file("/etc/ca.crt", b"CA", mode=0o644, owner=None, group=None)
        local.write_file("/etc/ca.key", b"KEY", mode=0o600, owner=None, group=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "h/etc/ca.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "h/etc/ca.key").stat().st_mode) == 0o600


def test_what_is_not_a_regular_file_is_not_replaced(tmp_path: Path) -> None:
    local = transport(tmp_path)
    (tmp_path / "h/etc/ca.crt").mkdir(parents=True)
    with pytest.raises(TransportError, match="not a regular file"):
        local.write_file("/etc/ca.crt", b"CA", mode=0o644, owner=None, group=None)
    (tmp_path / "h/var").mkdir()
    (tmp_path / "h/var/lib").write_text("a file where a directory should be")
    with pytest.raises(TransportError, match=re.escape("cannot write /var/lib/x.crt")):
        local.write_file("/var/lib/x.crt", b"C", mode=0o644, owner=None, group=None)
    assert sorted(os.listdir(tmp_path / "h/etc")) == ["ca.crt"]
    assert os.listdir(tmp_path / "h/etc/ca.crt") == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = transport(tmp_path)
    local.write_file("/etc/ca.crt", b"old", mode=0o644, owner=None, group=None)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    failure = re.escape("cannot write /etc/ca.crt: Input/output error")
    with pytest.raises(TransportError, match=failure):
        local.write_file("/etc/ca.crt", b"new", mode=0o644, owner=None, group=None)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "h/etc")) == ["ca.crt"]
    assert (tmp_path / "h/etc/ca.crt").read_bytes() == b"old"


def test_a_symlinked_host_directory_made_after_the_transport_is_refused(tmp_path: Path) -> None:
    local = transport(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "h").symlink_to(elsewhere)
    with pytest.raises(TransportError, match="symlink"):
        local.write_file("/etc/ca.crt", b"CA", mode=0o644, owner=None, group=None)
    assert list(elsewhere.iterdir()) == []
