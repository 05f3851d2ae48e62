"""`StateStore.with_secrets`: the secrets of a state read without them, from the same parse.

It must give exactly what a full decrypting load gives, and fall back to that load whenever
the parse it would reuse is not the one of the state it is handed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pkiform.errors import SecretKeyError
from pkiform.state.model import ResourceState, State
from pkiform.state.store import StateStore


def _state() -> State:
    state = State.empty()
    for index in range(3):
        record = ResourceState(kind="cert", outputs={"cert": f"c{index}"},
                               digests={"cert": f"d{index}"})
        state = state.with_resource(f"cert.x[h-{index}]", record,
                                    {"key": f"-----BEGIN PRIVATE KEY-----\n{index}"})
    return state


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state", key_file=tmp_path / "keys" / "state.key")
    store.save(_state())
    return StateStore(store.directory, store.key_file)


def test_the_secrets_of_the_plain_load_are_those_of_a_full_load(store: StateStore) -> None:
    plain = store.load(decrypt=False)
    assert plain.secrets == {}
    assert store.with_secrets(plain) == StateStore(store.directory, store.key_file).load()
    assert store.with_secrets(plain).secrets["cert.x[h-1]"]["key"].endswith("1")


def test_another_state_or_a_journal_takes_a_full_load(store: StateStore) -> None:
    plain = store.load(decrypt=False)
    other = State(lineage=plain.lineage, serial=plain.serial, resources=dict(plain.resources))
    assert store.with_secrets(other) == store.load()  # not the parsed one: loaded again

    plain = store.load(decrypt=False)
    record = ResourceState(kind="cert", outputs={"cert": "new"}, digests={"cert": "n"})
    store.journal_append(plain, "cert.x[h-9]", record, {"key": "journal secret"})
    decrypted = store.with_secrets(plain)  # the journal has a step the parse does not
    assert decrypted.secrets["cert.x[h-9]"] == {"key": "journal secret"}
    assert decrypted == StateStore(store.directory, store.key_file).load()


def test_a_save_forgets_the_parse(store: StateStore) -> None:
    plain = store.load(decrypt=False)
    changed = _state().with_resource("cert.x[h-0]", ResourceState(kind="cert"), {"key": "z"})
    changed = State(lineage=plain.lineage, serial=plain.serial + 1,
                    resources=changed.resources, secrets=changed.secrets)
    store.save(changed)
    # The old plain state is no longer what the file holds: a full load, the new secrets.
    assert store.with_secrets(plain).secrets["cert.x[h-0]"] == {"key": "z"}


def test_a_wrong_key_is_refused_as_by_load(store: StateStore, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    StateStore(tmp_path / "other", key_file=wrong).save(_state())  # makes another key file
    stranger = StateStore(store.directory, wrong)
    plain = stranger.load(decrypt=False)
    with pytest.raises(SecretKeyError):
        stranger.with_secrets(plain)
