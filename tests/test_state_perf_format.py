"""The fast state codec writes exactly what the plain one did, and reuses ciphertexts safely.

The store encodes records with one reusable C encoder instead of ``json.dumps(_drop_none(...))``
per record, adopts parsed dicts instead of copying them, pauses the cyclic GC while parsing,
and writes an unchanged secret's ciphertext again instead of re-encrypting it. These tests pin
the behaviour that must not change with that: the bytes on disk, what loads back, and that an
AES-GCM nonce never meets a second plaintext.
"""

from __future__ import annotations

import base64
import gc
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pkiform.errors import StateError
from pkiform.state import secrets as secret_box
from pkiform.state.model import ResourceState, State
from pkiform.state.store import StateStore, _compact_json, _drop_none

# -- the record encoder -----------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(), st.sampled_from(["null", ":null", "é✓", "\n\"\\", "-----BEGIN\n"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4).map(MappingProxyType),
    ),
    max_leaves=20,
)


def reference_json(value: Any) -> str:
    """What the store wrote per record before the fast path (and must still write)."""
    return json.dumps(_drop_none(value), separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=400, deadline=None)
@given(values)
def test_compact_json_writes_exactly_what_drop_none_and_dumps_wrote(value: Any) -> None:
    assert _compact_json(value) == reference_json(value)


def test_compact_json_takes_the_slow_way_only_when_it_must() -> None:
    class Key:
        def __str__(self) -> str:
            return "custom"

    odd: dict[Any, Any] = {Key(): 1, 2: "two", "nested": {"x": None}}
    assert _compact_json(odd) == '{"custom":1,"2":"two","nested":{}}'
    with pytest.raises(TypeError):
        _compact_json({"not json": object()})


# -- the whole file ---------------------------------------------------------------------------


def reference_serialize(store: StateStore, state: State, key: Any) -> bytes:
    """The serializer as it was before the fast path (tokens and time aside, bytes must match)."""
    document: dict[str, Any] = {"format": "pkiform-state", "version": 1,
                                "lineage": state.lineage, "serial": state.serial, "written": "T"}
    if store._raw and store._raw.get("kdf_salt"):
        document["kdf_salt"] = store._raw["kdf_salt"]
    if key is not None:
        document["key_id"] = key.key_id
    secrets = secret_box.encrypt_section(key, state.secrets) if state.secrets else {}
    compact: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}

    def section(values: Mapping[str, Any]) -> str:
        if not values:
            return "{}"
        lines = [f"{json.dumps(k)}:{json.dumps(v, **compact)}" for k, v in sorted(values.items())]
        return "{\n" + ",\n".join(lines) + "\n}"

    head = json.dumps(document, **compact)[:-1]
    resources = {a: _drop_none(dict(r.to_dict())) for a, r in state.resources.items()}
    return (f'{head},\n"resources":{section(resources)},\n'
            f'"secrets":{section(secrets)}}}\n').encode()


def comparable(data: bytes) -> bytes:
    data = re.sub(rb'"written":"[^"]*"', b'"written":"T"', data)
    return re.sub(rb"aes256gcm:[A-Za-z0-9+/=]+", b"aes256gcm:TOKEN", data)


def awkward_state() -> State:
    state = State.empty()
    records = {
        "cert.a[h-1]": ResourceState(
            kind="cert",
            inputs={"common_name": "ä", "dns_names": ("a", None, "b"), "optional": None,
                    "nested": MappingProxyType({"k": [1, 2.5, True, None]})},
            deps={"ca.k:signing": "abc"}, digests={"cert": "d1"},
            outputs={"cert": "-----BEGIN CERTIFICATE-----\nnull\n", "n": 3}),
        "file.b[h-ü]": ResourceState(kind="file", outputs={"path": "/etc/x", "mode": "0600"}),
        "ca.z": ResourceState(kind="ca"),
    }
    for address, record in records.items():
        secrets = {"key": f"-----BEGIN PRIVATE KEY-----\n{address}"} if "file" not in address \
            else {}
        state = state.with_resource(address, record, secrets)
    return state


def test_the_file_layout_is_byte_for_byte_the_plain_serializers(store: StateStore) -> None:
    state = awkward_state()
    store.save(state)
    key = store.key_for(state.lineage, create=False)
    assert comparable(store.path.read_bytes()) == comparable(
        reference_serialize(store, state, key))
    assert len(store.path.read_bytes().splitlines()) == 3 + 3 + 2 + 2  # one resource a line


def test_saving_a_loaded_state_rewrites_the_same_bytes(store: StateStore) -> None:
    """Unchanged secrets keep their ciphertexts: a state in git diffs only where it changed."""
    store.load()  # as apply does (a first load also makes the scrypt salt)
    store.save(awkward_state())
    before = store.path.read_bytes()
    reader = StateStore(store.directory, store.key_file)
    reader.save(reader.load())
    after = store.path.read_bytes()
    same_time = re.sub(rb'"written":"[^"]*"', b"", after)
    assert same_time == re.sub(rb'"written":"[^"]*"', b"", before)
    assert store.backup_path.read_bytes() == before


def test_a_nonce_never_meets_a_second_plaintext(store: StateStore) -> None:
    state = awkward_state()
    store.save(state)
    key = store.key_for(state.lineage, create=False)
    seen: dict[bytes, tuple[str, str]] = {}  # nonce → (associated data, plaintext)
    # cert.a's key changes, changes back, stays, changes; a fresh store (loaded) in between.
    for step, value in enumerate(["v1", "v2", "v1", "v1", "v3"]):
        if step == 3:
            store = StateStore(store.directory, store.key_file)
            state = store.load()
        state = state.with_resource("cert.a[h-1]", state.resources["cert.a[h-1]"],
                                    {"key": value})
        store.save(state)
        for address, names in json.loads(store.path.read_bytes())["secrets"].items():
            for name, token in names.items():
                associated = f"{address}#{name}"
                message = (associated, key.decrypt(token, associated))
                nonce = base64.b64decode(token[len("aes256gcm:"):])[:12]
                assert seen.setdefault(nonce, message) == message
    # ca.z's key once (never re-encrypted); cert.a's: v1, v2, v1 again (fresh nonce), v3.
    assert len(seen) == 1 + 4


def test_another_key_reencrypts_everything(store: StateStore) -> None:
    state = awkward_state()
    store.save(state)
    before = json.loads(store.path.read_bytes())["secrets"]
    store._key = secret_box.StateKey(b"\x01" * 32, "test")
    store.save(state)
    after = json.loads(store.path.read_bytes())["secrets"]
    assert all(after[a][n] != before[a][n] for a in before for n in before[a])
    assert secret_box.decrypt_section(store._key, after) == state.secrets


def test_save_encrypts_only_what_changed(store: StateStore, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    store.save(awkward_state())
    reader = StateStore(store.directory, store.key_file)
    state = reader.load()
    state = state.with_resource("cert.a[h-1]", state.resources["cert.a[h-1]"], {"key": "new"})
    calls: list[str] = []
    original = secret_box.StateKey.encrypt

    def counting(self: secret_box.StateKey, plaintext: str, associated: str) -> str:
        calls.append(associated)
        return original(self, plaintext, associated)

    monkeypatch.setattr(secret_box.StateKey, "encrypt", counting)
    reader.save(state)
    assert calls == ["cert.a[h-1]#key"]
    assert StateStore(store.directory, store.key_file).load() == state


def test_journal_ciphertexts_are_the_ones_committed(store: StateStore) -> None:
    base = awkward_state()
    store.save(base)
    record = ResourceState(kind="cert", outputs={"cert": "c2"})
    store.journal_append(base, "cert.j[h-1]", record, {"key": "journaled"})
    journaled = json.loads(store.journal_path.read_bytes())["secrets"]["key"]
    reader = StateStore(store.directory, store.key_file)
    loaded = reader.load()
    assert loaded.secrets_of("cert.j[h-1]") == {"key": "journaled"}
    reader.commit(loaded)
    assert json.loads(store.path.read_bytes())["secrets"]["cert.j[h-1]"]["key"] == journaled
    assert StateStore(store.directory, store.key_file).load().get("cert.j[h-1]") == record


# -- loading ----------------------------------------------------------------------------------


def test_loaded_records_own_their_dicts_and_gc_is_back_on(store: StateStore) -> None:
    store.save(awkward_state())
    reader = StateStore(store.directory, store.key_file)
    assert gc.isenabled()
    state = reader.load()
    assert gc.isenabled()
    assert "resources" not in (reader._raw or {})  # nothing else holds the adopted dicts
    assert set((reader._raw or {})["secrets"]) == set(state.secrets)  # `state show` reads it
    gc.disable()
    try:
        StateStore(store.directory, store.key_file).load(decrypt=False)
        assert not gc.isenabled()  # a caller's choice is left alone
    finally:
        gc.enable()


def test_a_malformed_record_is_refused_and_gc_is_back_on(store: StateStore) -> None:
    store.save(awkward_state())
    document = json.loads(store.path.read_text())
    document["resources"]["ca.z"]["inputs"] = None
    store.path.write_text(json.dumps(document))
    with pytest.raises(StateError, match="malformed"):
        StateStore(store.directory, store.key_file).load()
    assert gc.isenabled()


@pytest.mark.parametrize("data, expected", [
    ({"kind": "ca"}, ResourceState(kind="ca")),
    ({"kind": "ca", "inputs": [("a", 1)]}, ResourceState(kind="ca", inputs={"a": 1})),
    ({"kind": "ca", "outputs": MappingProxyType({"x": 1})},
     ResourceState(kind="ca", outputs={"x": 1})),
])
def test_from_dict_copies_what_is_not_a_plain_dict(data: dict[str, Any],
                                                   expected: ResourceState) -> None:
    record = ResourceState.from_dict(data)
    assert record == expected
    assert all(type(getattr(record, f)) is dict for f in ("inputs", "deps", "digests", "outputs"))


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state", key_file=tmp_path / "keys" / "state.key")

