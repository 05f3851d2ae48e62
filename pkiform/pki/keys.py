"""Private key generation and inspection.

Everything here works on PEM bytes rather than key objects so values can cross process
boundaries (keygen runs in a ProcessPoolExecutor) and be hashed/stored as-is.
"""

from __future__ import annotations

import functools
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pkiform.errors import PkiError

KEY_ALGORITHMS: tuple[str, ...] = (
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
    "ecdsa-p256",
    "ecdsa-p384",
    "ed25519",
)

# The key types pkiform can produce; anything else loaded from disk is rejected early so the
# rest of the library never has to handle DSA, X25519, etc.
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_RSA_PUBLIC_EXPONENT = 65537
_RSA_SIZES = {"rsa-2048": 2048, "rsa-3072": 3072, "rsa-4096": 4096}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ecdsa-p256": ec.SECP256R1,
    "ecdsa-p384": ec.SECP384R1,
}


def _unknown_algorithm(algorithm: object) -> PkiError:
    return PkiError(
        f"unknown key algorithm {algorithm!r}",
        hint=f"use one of: {', '.join(KEY_ALGORITHMS)}",
    )


def generate_private_key_pem(algorithm: str) -> bytes:
    """Generate a fresh key and return it as unencrypted PKCS#8 PEM.

    Top-level and argument-only on purpose: it must pickle for ProcessPoolExecutor.
    """
    key: PrivateKey
    if algorithm in _RSA_SIZES:
        key = rsa.generate_private_key(
            public_exponent=_RSA_PUBLIC_EXPONENT, key_size=_RSA_SIZES[algorithm]
        )
    elif algorithm in _EC_CURVES:
        key = ec.generate_private_key(_EC_CURVES[algorithm]())
    elif algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise _unknown_algorithm(algorithm)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    """Parse an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1) of a supported type.

    Results are cached per process: OpenSSL 3 re-checks RSA keys on every load (primality
    tests: ~35 ms for RSA-2048, ~250 ms for RSA-4096, as long as generating one), and one
    apply loads the same CA key for every certificate it signs. Key objects are immutable,
    so sharing them is safe.
    """
    if not isinstance(pem, (bytes, bytearray)):
        raise PkiError(f"private key PEM must be bytes, got {type(pem).__name__}")
    return _load_private_key(bytes(pem))


@functools.lru_cache(maxsize=8192)
def _load_private_key(pem: bytes) -> PrivateKey:
    try:
        # Every key pkiform loads is one it generated itself or decrypted from its own state
        # (AES-GCM authenticated), so OpenSSL's RSA consistency check — 50 ms per RSA-2048
        # load, as long as generating the key, and 60% of an RSA apply — proves nothing new.
        # pkiform has no key import; one would have to load with the check on.
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # TypeError is what cryptography raises for encrypted keys without a password.
        raise PkiError(f"cannot parse private key PEM: {exc}") from None
    if not isinstance(
        key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)
    ):
        raise PkiError(f"unsupported private key type {type(key).__name__}")
    # Reject keys we could load but never produce (e.g. P-521, RSA-1024) so that
    # key_algorithm_of is total over everything load_private_key accepts.
    algorithm_of_key(key)
    return key


def algorithm_of_key(key: PrivateKey | PublicKey) -> str:
    """Name (one of KEY_ALGORITHMS) of a private or public key object."""
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        name = f"rsa-{key.key_size}"
        if name in _RSA_SIZES:
            return name
        raise PkiError(f"unsupported RSA key size {key.key_size}", hint="use 2048, 3072 or 4096")
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        for name, curve in _EC_CURVES.items():
            if isinstance(key.curve, curve):
                return name
        raise PkiError(f"unsupported elliptic curve {key.curve.name}", hint="use P-256 or P-384")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    raise PkiError(f"unsupported key type {type(key).__name__}")


def public_key_pem(private_key_pem: bytes) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half of a private key."""
    return (
        load_private_key(private_key_pem)
        .public_key()
        .public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def key_algorithm_of(private_key_pem: bytes) -> str:
    """Which of KEY_ALGORITHMS a private key PEM is."""
    return algorithm_of_key(load_private_key(private_key_pem))
