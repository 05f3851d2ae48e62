"""The state file: atomic, backed up, locked, encrypted, and loud about damage."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from pkiform.errors import SecretKeyError, StateError, StateLockedError
from pkiform.state.model import ResourceState, State
from pkiform.state.store import StateStore


def sample_state() -> State:
    state = State.empty()
    record = ResourceState(kind="cert", inputs={"common_name": "x", "dns_names": ["a", "b"]},
                           deps={"ca.k:signing": "abc"}, digests={"cert": "d1"},
                           outputs={"cert": "-----BEGIN CERTIFICATE-----\n", "n": 3})
    return state.with_resource("cert.x[h-1]", record, {"key": "-----BEGIN PRIVATE KEY-----\nzz"})


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state", key_file=tmp_path / "keys" / "state.key")


def test_round_trip_with_secrets_encrypted_at_rest(store: StateStore) -> None:
    state = sample_state()
    store.save(state)
    raw = store.path.read_bytes()
    assert b"PRIVATE KEY" not in raw and b"aes256gcm:" in raw
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.key_file.stat().st_mode) == 0o600  # type: ignore[union-attr]
    loaded = StateStore(store.directory, store.key_file).load()
    assert loaded == state
    assert StateStore(store.directory, store.key_file).load(decrypt=False).secrets == {}


def test_changed_secrets_get_fresh_nonces_and_each_save_keeps_a_backup(
        store: StateStore) -> None:
    state = sample_state()
    store.save(state)
    first = json.loads(store.path.read_bytes())["secrets"]["cert.x[h-1]"]["key"]
    changed = state.with_resource("cert.x[h-1]", state.resources["cert.x[h-1]"],
                                  {"key": "-----BEGIN PRIVATE KEY-----\nyy"})
    store.save(changed)
    second = json.loads(store.path.read_bytes())["secrets"]["cert.x[h-1]"]["key"]
    assert second != first and second[:26] != first[:26]  # prefix + base64 of the nonce
    assert json.loads(store.backup_path.read_bytes())["secrets"]["cert.x[h-1]"]["key"] == first
    assert StateStore(store.directory, store.key_file).load() == changed


def test_ciphertext_swapped_between_resources_is_refused(store: StateStore) -> None:
    state = sample_state()
    other = state.secrets["cert.x[h-1]"]
    state = state.with_resource("cert.y[h-1]", state.resources["cert.x[h-1]"], dict(other))
    store.save(state)
    document = json.loads(store.path.read_text())
    # Swap the two ciphertexts: the address is bound as associated data.
    x, y = document["secrets"]["cert.x[h-1]"], document["secrets"]["cert.y[h-1]"]
    document["secrets"]["cert.x[h-1]"], document["secrets"]["cert.y[h-1]"] = y, x
    store.path.write_text(json.dumps(document))
    with pytest.raises(SecretKeyError, match="does not decrypt"):
        StateStore(store.directory, store.key_file).load()


def test_wrong_key_is_a_clear_error_that_touches_nothing(store: StateStore, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store.save(sample_state())
    before = store.path.read_bytes()
    monkeypatch.setenv("PKIFORM_STATE_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SecretKeyError, match="not the key this state was encrypted with"):
        StateStore(store.directory, store.key_file).load()
    assert store.path.read_bytes() == before


def test_missing_key_file_names_it(store: StateStore) -> None:
    store.save(sample_state())
    store.key_file.unlink()  # type: ignore[union-attr]
    with pytest.raises(SecretKeyError, match="does not exist"):
        StateStore(store.directory, store.key_file).load()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "version", "no-lineage"])
def test_damaged_state_is_refused_and_backup_offered(store: StateStore, damage: str) -> None:
    store.save(sample_state())
    store.save(sample_state())  # now a backup exists
    text = store.path.read_text()
    corrupted = {
        "truncate": text[: len(text) // 3],
        "garbage": "\x00\x01not toml at all [[[",
        "version": text.replace('"version":1', '"version":99'),
        "no-lineage": json.dumps({k: v for k, v in json.loads(text).items()
                                  if k != "lineage"}),
    }[damage]
    store.path.write_text(corrupted)
    with pytest.raises(StateError) as info:
        StateStore(store.directory, store.key_file).load()
    message = str(info.value)
    assert str(store.path) in message
    assert str(store.backup_path) in message or "version" in message
    assert store.path.read_text() == corrupted  # nothing overwritten


def test_journal_replays_completed_steps_and_tolerates_a_torn_tail(store: StateStore) -> None:
    base = sample_state()
    store.save(base)
    record = ResourceState(kind="file", outputs={"path": "/x", "host": "h-1"})
    store.journal_append(base, "file.x[h-1]", record, {})
    store.journal_append(base, "cert.x[h-1]", None, {})
    with open(store.journal_path, "ab") as handle:
        handle.write(b'{"lineage": "torn')  # a write cut short by a crash
    loaded = StateStore(store.directory, store.key_file).load()
    assert loaded.get("file.x[h-1]") == record
    assert loaded.get("cert.x[h-1]") is None
    committed = store.commit(loaded)
    assert committed.serial == base.serial + 1
    assert not store.journal_path.exists()


def test_a_journal_line_is_one_json_entry_without_nulls(store: StateStore) -> None:
    base = sample_state()
    store.save(base)
    record = ResourceState(
        kind="kubeconfig",
        inputs={"user": "système:admin", "namespace": None, "groups": ["a", None, "b"]},
        deps={"cert.x:cert": "d"}, digests={"kubeconfig": "e"},
        outputs={"server": "https://10.0.0.1:6443", "nested": {"gone": None, "kept": 1}},
    )
    store.journal_append(base, "kubeconfig.ädmin", record, {"client_key": "KEY"})
    store.journal_append(base, "file.x[h-1]", None, {})
    lines = store.journal_path.read_bytes().splitlines()
    assert len(lines) == 2
    entry, removal = (json.loads(line) for line in lines)
    assert set(entry) == {"address", "lineage", "record", "secrets", "serial"}
    assert (entry["address"], entry["lineage"], entry["serial"]) == (
        "kubeconfig.ädmin", base.lineage, base.serial)
    assert entry["record"] == {
        "kind": "kubeconfig",
        "inputs": {"user": "système:admin", "groups": ["a", "b"]},
        "deps": {"cert.x:cert": "d"}, "digests": {"kubeconfig": "e"},
        "outputs": {"server": "https://10.0.0.1:6443", "nested": {"kept": 1}},
    }
    assert entry["secrets"]["client_key"].startswith("aes256gcm:")
    assert b"KEY" not in lines[0]
    assert removal == {"address": "file.x[h-1]", "lineage": base.lineage, "record": None,
                       "secrets": {}, "serial": base.serial}
    loaded = StateStore(store.directory, store.key_file).load()
    assert loaded.get("kubeconfig.ädmin") == ResourceState(kind="kubeconfig", **{
        field: entry["record"][field] for field in ("inputs", "deps", "digests", "outputs")})
    assert loaded.secrets_of("kubeconfig.ädmin") == {"client_key": "KEY"}


def test_second_locker_fails_fast_naming_the_holder(store: StateStore) -> None:
    with store.lock("apply") as info:
        other = StateStore(store.directory, store.key_file)
        with pytest.raises(StateLockedError) as error:
            with other.lock("apply"):
                pass
        assert info.id in str(error.value) and "force-unlock" in str(error.value)


def test_lock_timeout_waits_for_the_holder(store: StateStore) -> None:
    released = threading.Event()

    def hold() -> None:
        with store.lock("apply"):
            released.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.2)
    threading.Timer(0.3, released.set).start()
    started = time.monotonic()
    with StateStore(store.directory, store.key_file).lock("apply", timeout=5):
        waited = time.monotonic() - started
    thread.join()
    assert 0.1 < waited < 5


def test_force_unlock_needs_the_right_id(store: StateStore) -> None:
    with store.lock("apply") as info:
        with pytest.raises(StateLockedError):
            store.force_unlock("not-the-id")
        assert store.force_unlock(info.id).id == info.id


def test_rekey_reencrypts_everything_and_survives_a_kill_midway(tmp_path: Path) -> None:
    from pkiform.rekey import rekey

    store = StateStore(tmp_path / "state", key_file=tmp_path / "keys" / "state.key")
    state = sample_state()
    store.save(state)
    old_material = store.key_file.read_bytes()  # type: ignore[union-attr]
    message = rekey(StateStore(store.directory, store.key_file))
    assert "Re-encrypted 1 secrets" in message
    assert store.key_file.read_bytes() != old_material  # type: ignore[union-attr]
    reloaded = StateStore(store.directory, store.key_file).load()
    assert reloaded.secrets == state.secrets
    # The old key is kept for the backup, which is still encrypted under it.
    previous = store.key_file.with_name("state.key.previous")  # type: ignore[union-attr]
    assert previous.read_bytes() == old_material
    # A rekey killed after saving the state but before renaming the key files: the store
    # finds the new key by the id the state records.
    current = store.key_file.read_bytes()  # type: ignore[union-attr]
    store.key_file.with_name("state.key.new").write_bytes(current)  # type: ignore[union-attr]
    store.key_file.write_bytes(old_material)  # type: ignore[union-attr]
    assert StateStore(store.directory, store.key_file).load().secrets == state.secrets


def test_passphrase_key_is_stretched_with_the_state_salt(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PKIFORM_STATE_PASSPHRASE", "correct horse battery staple")
    store = StateStore(tmp_path / "state")
    store.load()  # a new state: the salt is made now
    state = sample_state()
    store.save(state)
    raw = store.path.read_text()
    assert "kdf_salt" in raw and "correct horse" not in raw
    assert StateStore(tmp_path / "state").load().secrets == state.secrets
    monkeypatch.setenv("PKIFORM_STATE_PASSPHRASE", "wrong")
    with pytest.raises(SecretKeyError):
        StateStore(tmp_path / "state").load()
