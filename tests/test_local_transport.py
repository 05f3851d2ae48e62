"""The local target writes like a careful remote one: atomic, never through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pkiform.errors import TransportError
from pkiform.model import Host
from pkiform.transport.local import LocalTransport
from tests.conftest import copy_example, run_cli


def test_refuses_symlinks_at_the_target_or_on_its_way(tmp_path: Path) -> None:
    transport = LocalTransport(Host("h", "10.0.0.1"), tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    link = tmp_path / "h/etc/kubernetes/pki/ca.key"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with pytest.raises(TransportError, match="symlink"):
        transport.write_file("/etc/kubernetes/pki/ca.key", b"KEY", mode=0o600, owner=None,
                             group=None)
    assert outside.read_text() == "precious\n"
    (tmp_path / "h/var").mkdir()
    (tmp_path / "h/var/lib").symlink_to(tmp_path)
    with pytest.raises(TransportError, match="symlink"):
        transport.write_file("/var/lib/x.crt", b"C", mode=0o644, owner=None, group=None)
    with pytest.raises(TransportError, match="non-normalized"):
        transport.write_file("/etc/../etc/x", b"C", mode=0o644, owner=None, group=None)


def test_overwrite_keeps_one_backup_and_no_temp_files(tmp_path: Path) -> None:
    transport = LocalTransport(Host("h", "10.0.0.1"), tmp_path)
    for content in (b"one", b"two", b"three"):
        transport.write_file("/etc/x.crt", content, mode=0o644, owner=None, group=None)
    directory = tmp_path / "h/etc"
    assert sorted(os.listdir(directory)) == ["x.crt", "x.crt.pkiform-backup"]
    assert (directory / "x.crt").read_bytes() == b"three"
    assert (directory / "x.crt.pkiform-backup").read_bytes() == b"two"


def test_apply_reports_a_symlinked_key_path_and_touches_nothing_through_it(tmp_path: Path
                                                                          ) -> None:
    example = copy_example("kubeadm", tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("do not overwrite\n")
    link = example / "target/control-2/etc/kubernetes/pki/apiserver.key"
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    result = run_cli("-C", str(example), "apply", "--auto-approve")
    assert result.code == 1
    assert "file.apiserver-key[control-2]" in result.err and "symlink" in result.err
    assert victim.read_text() == "do not overwrite\n"


def test_private_keys_keep_no_backup(tmp_path: Path) -> None:
    transport = LocalTransport(Host("h", "10.0.0.1"), tmp_path)
    transport.write_file("/etc/ca.key", b"old", mode=0o600, owner=None, group=None)
    transport.write_file("/etc/ca.key", b"new", mode=0o600, owner=None, group=None,
                         backup=False)
    assert sorted(os.listdir(tmp_path / "h/etc")) == ["ca.key"]


def test_a_rotation_leaves_no_old_key_behind(tmp_path: Path) -> None:
    example = copy_example("kubeadm", tmp_path)
    config = example / "pkiform.toml"
    config.write_text(config.read_text().replace(
        "[preset.kubeadm]", '[preset.kubeadm]\nkey = "ecdsa-p256"', 1))
    assert run_cli("-C", str(example), "apply", "--auto-approve").code == 0
    assert run_cli("-C", str(example), "apply", "--auto-approve", "--replace", "ca.etcd").code == 0
    etcd = example / "target/control-1/etc/kubernetes/pki/etcd"
    assert (etcd / "ca.crt.pkiform-backup").exists()  # public: kept for rollback
    assert not (etcd / "ca.key.pkiform-backup").exists()
    assert not list(etcd.glob("*.key.pkiform-backup"))


def test_mode_drift_on_the_target_is_planned_and_fixed(tmp_path: Path) -> None:
    import json

    example = copy_example("kubeadm", tmp_path)
    config = example / "pkiform.toml"
    config.write_text(config.read_text().replace(
        "[preset.kubeadm]", '[preset.kubeadm]\nkey = "ecdsa-p256"', 1))
    assert run_cli("-C", str(example), "apply", "--auto-approve").code == 0
    key = example / "target/control-2/etc/kubernetes/pki/apiserver.key"
    key.chmod(0o644)
    plan = json.loads(run_cli("-C", str(example), "plan", "--json").out)
    assert [(c["address"], c["reasons"]) for c in plan["changes"]] == [
        ("file.apiserver-key[control-2]", ["mode 0644 on host, declared 0600"])]
    assert run_cli("-C", str(example), "apply", "--auto-approve").code == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert run_cli("-C", str(example), "plan", "--detailed-exitcode").code == 0
