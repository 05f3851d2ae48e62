"""``pkiform state rekey``: re-encrypt every secret in the state under a new state key.

Crash-safe order: the new key is written to ``<key>.new`` first, then the state is saved
encrypted under it (atomic rename), then the key files are rotated (``<key>`` → ``<key>.previous``,
``<key>.new`` → ``<key>``). A kill at any point leaves a state and a key file that match: the
store finds the key by the id the state records. The previous key stays as ``<key>.previous``
because the state's backup file is still encrypted under it.
"""

from __future__ import annotations

import contextlib
import os

import attrs

from pkiform.errors import SecretKeyError, StateError
from pkiform.state import secrets as secret_box
from pkiform.state.store import StateStore


def rekey(store: StateStore) -> str:
    with store.lock("rekey"):
        if store.has_journal():
            raise StateError("an interrupted apply left a journal; finish it first",
                             hint="run pkiform apply, then rekey")
        if not store.exists():
            raise StateError(f"{store.path}: no state to rekey yet", hint="run pkiform apply")
        state = store.load(decrypt=True)
        old_key = store.key_for(state.lineage, create=False)
        if os.environ.get(secret_box.ENV_KEY) or os.environ.get(secret_box.ENV_PASSPHRASE):
            new_text = os.environ.get("PKIFORM_NEW_STATE_KEY")
            if not new_text:
                raise SecretKeyError(
                    "the state key comes from the environment; say what the new one is",
                    hint="set PKIFORM_NEW_STATE_KEY (base64 of 32 bytes), rekey, then use it "
                    "as PKIFORM_STATE_KEY")
            saved = os.environ.get(secret_box.ENV_KEY)
            os.environ[secret_box.ENV_KEY] = new_text
            try:
                new_key = secret_box.key_from_environment(None)
            finally:
                if saved is None:
                    os.environ.pop(secret_box.ENV_KEY, None)
                else:
                    os.environ[secret_box.ENV_KEY] = saved
            assert new_key is not None
            store._key = new_key
            store.save(attrs.evolve(state, serial=state.serial + 1))
            return (f"Re-encrypted {sum(len(v) for v in state.secrets.values())} secrets under "
                    f"the key from PKIFORM_NEW_STATE_KEY (id {new_key.key_id}); use it as "
                    "PKIFORM_STATE_KEY from now on.")
        path = store.default_key_path(state.lineage)
        fresh = path.with_name(path.name + ".new")
        previous = path.with_name(path.name + ".previous")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fresh)
        new_key = secret_box.create_key_file(fresh)
        store._key = new_key
        store.save(attrs.evolve(state, serial=state.serial + 1))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(previous)
        os.link(path, previous)
        os.replace(fresh, path)
        count = sum(len(v) for v in state.secrets.values())
        return (f"Re-encrypted {count} secrets under a new key in {path} (id {new_key.key_id}, "
                f"was {old_key.key_id}). The old key is kept as {previous}: the state backup "
                "is still encrypted with it. Back up the new key.")
