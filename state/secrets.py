"""Private material encrypted at rest: AES-256-GCM under a per-lineage state key.

Each new or changed value gets a fresh 96-bit nonce, and the resource address plus the secret's
name are bound as associated data, so a ciphertext copied onto another resource (or another
field) fails authentication instead of silently deploying the wrong key. A value that did not
change keeps the ciphertext it already has (`SealCache`): saving does not re-encrypt 10,000
unchanged keys, a state kept in git diffs only where a secret changed, and a nonce is still
never used with a second plaintext (reusing a ciphertext repeats the very same message).

Where the key comes from, first match wins:
1. ``PKIFORM_STATE_KEY`` — base64 of 32 bytes;
2. ``PKIFORM_STATE_PASSPHRASE`` — stretched with scrypt and the state's salt;
3. a key file: ``settings.key_file`` or, by default, outside the state directory under
   ``$XDG_CONFIG_HOME/pkiform/keys/<lineage>.key`` (created 0600 on first apply).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pkiform.errors import SecretKeyError

CIPHERTEXT_PREFIX = "aes256gcm:"
_PREFIX_LENGTH = len(CIPHERTEXT_PREFIX)
KEY_BYTES = 32
ENV_KEY = "PKIFORM_STATE_KEY"
ENV_PASSPHRASE = "PKIFORM_STATE_PASSPHRASE"


def default_key_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "pkiform" / "keys"


@attrs.frozen(repr=False)
class StateKey:
    """The symmetric key that protects a state's secrets. Its repr never shows the key."""

    material: bytes
    source: str  # where it came from, for messages ("key file /root/.config/...")
    # One cipher object per key, not one per secret (10,000 secrets at 5,000 nodes).
    _aead: AESGCM = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_aead", AESGCM(self.material))

    def __repr__(self) -> str:
        return f"StateKey(source={self.source!r})"

    @property
    def key_id(self) -> str:
        """A non-secret fingerprint, stored in state to tell a wrong key from a corrupt file."""
        return hashlib.sha256(b"pkiform-key-id:" + self.material).hexdigest()[:16]

    def encrypt(self, plaintext: str, associated: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), associated.encode())
        return CIPHERTEXT_PREFIX + binascii.b2a_base64(nonce + sealed, newline=False).decode()

    def decrypt(self, token: str, associated: str) -> str:
        if not token.startswith(CIPHERTEXT_PREFIX):
            raise SecretKeyError(
                f"secret {associated} is not encrypted in the expected format",
                hint="the state file was edited by hand; restore the backup",
            )
        try:
            raw = binascii.a2b_base64(token[_PREFIX_LENGTH:], strict_mode=True)
            plain = self._aead.decrypt(raw[:12], raw[12:], associated.encode())
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretKeyError(
                f"secret {associated} does not decrypt with the state key from {self.source}",
                hint="use the key this state was written with (PKIFORM_STATE_KEY or its key "
                "file); if the state was hand-edited, restore its backup",
            ) from None
        return plain.decode()

    def mac(self, data: bytes) -> str:
        """Authenticate a plan file (HMAC-SHA256 under a key derived for that purpose)."""
        sub = hmac.new(self.material, b"pkiform-plan-mac", hashlib.sha256).digest()
        return hmac.new(sub, data, hashlib.sha256).hexdigest()


class SealCache:
    """The ciphertext each secret has on disk, to write again while the secret is unchanged.

    Filled by every decryption (load, journal replay) and every encryption (save, journal) under
    one key; ``seal`` returns the known ciphertext when the plaintext is exactly the one it
    seals, and encrypts afresh (new nonce) otherwise. A ciphertext is only ever repeated with
    its own plaintext, associated data and key, so no nonce meets a second plaintext. Another
    key (``state rekey``) empties the cache.
    """

    def __init__(self) -> None:
        self._material: bytes | None = None
        # (address, name) → (plaintext, its ciphertext)
        self._tokens: dict[tuple[str, str], tuple[str, str]] = {}

    def _bind(self, key: StateKey) -> None:
        if key.material != self._material:
            self._tokens = {}
            self._material = key.material

    def seal(self, key: StateKey, address: str, name: str, plaintext: str) -> str:
        self._bind(key)
        known = self._tokens.get((address, name))
        if known is not None and known[0] == plaintext:
            return known[1]
        token = key.encrypt(plaintext, f"{address}#{name}")
        self._tokens[(address, name)] = (plaintext, token)
        return token

    def open(self, key: StateKey, address: str, name: str, token: str) -> str:
        self._bind(key)
        plaintext = key.decrypt(token, f"{address}#{name}")
        self._tokens[(address, name)] = (plaintext, token)
        return plaintext


def encrypt_section(
    key: StateKey, secrets: Mapping[str, Mapping[str, str]], cache: SealCache | None = None
) -> dict[str, dict[str, str]]:
    seal = (cache or SealCache()).seal
    return {
        address: {name: seal(key, address, name, value) for name, value in values.items()}
        for address, values in secrets.items()
    }


def decrypt_section(
    key: StateKey, section: Mapping[str, Mapping[str, str]], cache: SealCache | None = None
) -> dict[str, dict[str, str]]:
    unseal = (cache or SealCache()).open
    return {
        address: {name: unseal(key, address, name, token) for name, token in values.items()}
        for address, values in section.items()
    }


def key_from_passphrase(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=KEY_BYTES, n=2**15, r=8, p=1).derive(passphrase.encode())


def read_key_file(path: Path) -> StateKey:
    try:
        text = path.read_text().strip()
        material = base64.b64decode(text, validate=True)
    except FileNotFoundError:
        raise SecretKeyError(
            f"state key file {path} does not exist",
            hint=f"restore it from your backup, or set {ENV_KEY}",
        ) from None
    except (ValueError, binascii.Error, OSError) as exc:
        raise SecretKeyError(f"state key file {path} is unreadable: {exc}") from None
    if len(material) != KEY_BYTES:
        raise SecretKeyError(f"state key file {path} does not hold a 32-byte key")
    return StateKey(material, f"key file {path}")


def create_key_file(path: Path) -> StateKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    material = os.urandom(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(material).decode() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return StateKey(material, f"key file {path}")


def key_from_environment(salt: bytes | None) -> StateKey | None:
    encoded = os.environ.get(ENV_KEY)
    if encoded:
        try:
            material = base64.b64decode(encoded.strip(), validate=True)
        except (ValueError, binascii.Error):
            material = b""
        if len(material) != KEY_BYTES:
            raise SecretKeyError(
                f"{ENV_KEY} is not base64 of 32 bytes",
                hint="generate one with: head -c32 /dev/urandom | base64",
            )
        return StateKey(material, ENV_KEY)
    passphrase = os.environ.get(ENV_PASSPHRASE)
    if passphrase:
        if salt is None:
            raise SecretKeyError(f"{ENV_PASSPHRASE} is set but the state has no scrypt salt")
        return StateKey(key_from_passphrase(passphrase, salt), ENV_PASSPHRASE)
    return None
