"""Deterministic renderers for the text files that carry PKI material.

Output is hashed to detect drift, so the same inputs must always give byte-identical output:
the YAML is written by hand in a fixed key order (the order kubeadm/clientcmd writes, i.e.
sorted), with no timestamps, and without a YAML library whose formatting could change.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from pkiform.errors import PkiError
from pkiform.pki.certs import (
    certificate_matches_key,
    exact_bytes,
    load_certificates,
    split_pem_bundle,
)

ENCRYPTION_PROVIDERS: tuple[str, ...] = ("aescbc", "secretbox", "aesgcm")
# kube-apiserver's accepted key lengths per provider (apiserver config validation).
_KEY_SIZES: dict[str, tuple[int, ...]] = {
    "aescbc": (16, 24, 32),
    "aesgcm": (16, 24, 32),
    "secretbox": (32,),
}

# A plain (unquoted) scalar must start with a letter and use only characters that can never
# start a YAML indicator mid-string; everything else is double-quoted.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._/@:+=-]*")
# Words YAML 1.1 (go-yaml v2, which kubectl uses) would read as bool/null, in any case.
_YAML11_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\0": "\\0",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
    "\x1b": "\\e",
}
_RESOURCE = re.compile(r"[a-z0-9*][a-z0-9.*-]*")


def yaml_scalar(value: str) -> str:
    """A YAML scalar that every YAML 1.1/1.2 parser reads back as exactly ``value``."""
    if not isinstance(value, str):
        raise PkiError(f"expected a string for YAML, got {value!r}")
    if (
        _PLAIN.fullmatch(value)
        and value.lower() not in _YAML11_WORDS
        # "key: foo:" would make the value look like a nested mapping key.
        and not value.endswith(":")
    ):
        return value
    out = []
    for char in value:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0xD800 <= code <= 0xDFFF:
            raise PkiError(f"string {value!r} contains a lone surrogate")
        elif code < 0x20 or code == 0x7F or code in (0x85, 0xFEFF, 0x2028, 0x2029):
            # Control and line-break characters YAML would fold or reject.
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _require_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PkiError(f"{what} must be a non-empty string, got {value!r}")
    return value


def render_kubeconfig(
    *,
    cluster_name: str,
    server: str,
    ca_bundle_pem: bytes,
    user: str,
    client_cert_pem: bytes,
    client_key_pem: bytes,
    context: str,
    namespace: str | None = None,
) -> bytes:
    """A kubeconfig with one cluster, user and context, embedded data as kubeadm writes it.

    The PEMs are embedded verbatim (base64 of the given bytes). Inputs are validated: the CA
    bundle must hold certificates and the client key must match the client certificate (the
    first one, if a chain is given), because a kubeconfig that fails only at connect time is
    much harder to debug.
    """
    for value, what in (
        (cluster_name, "cluster_name"),
        (user, "user"),
        (context, "context"),
        (server, "server"),
    ):
        _require_name(value, what)
    parts = urlsplit(server)
    if parts.scheme not in ("https", "http") or not parts.netloc or re.search(r"\s", server):
        raise PkiError(f"server must be an http(s) URL like https://10.0.0.1:6443, got {server!r}")
    if namespace is not None:
        _require_name(namespace, "namespace")
    if not _holds_certificates(exact_bytes(ca_bundle_pem)):
        raise PkiError("ca_bundle_pem contains no certificate")
    client_pair = _client_pair(exact_bytes(client_cert_pem), exact_bytes(client_key_pem))
    if client_pair is None:
        raise PkiError("client_cert_pem contains no certificate")
    if not client_pair:
        raise PkiError(f"client key does not match the client certificate of user {user!r}")

    q = yaml_scalar
    lines = [
        "apiVersion: v1",
        "clusters:",
        "- cluster:",
        f"    certificate-authority-data: {_b64(ca_bundle_pem)}",
        f"    server: {q(server)}",
        f"  name: {q(cluster_name)}",
        "contexts:",
        "- context:",
        f"    cluster: {q(cluster_name)}",
    ]
    if namespace is not None:
        lines.append(f"    namespace: {q(namespace)}")
    lines += [
        f"    user: {q(user)}",
        f"  name: {q(context)}",
        f"current-context: {q(context)}",
        "kind: Config",
        "preferences: {}",
        "users:",
        f"- name: {q(user)}",
        "  user:",
        f"    client-certificate-data: {_b64(client_cert_pem)}",
        f"    client-key-data: {_b64(client_key_pem)}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


# The checks are memoized on the exact bytes: an apply renders each kubeconfig twice (its
# digest, then its file) and checks the same CA bundle in every one (1,000 at 1,000 nodes).
@functools.lru_cache(maxsize=64)
def _holds_certificates(bundle_pem: bytes) -> bool:
    return bool(load_certificates(bundle_pem))


@functools.lru_cache(maxsize=1024)
def _client_pair(cert_pem: bytes, key_pem: bytes) -> bool | None:
    """Whether the key belongs to the first certificate; None when there is no certificate.
    (Errors are not cached: a malformed PEM raises again the next time.)"""
    chain = split_pem_bundle(cert_pem)
    if not chain:
        return None
    return certificate_matches_key(chain[0], key_pem)


def render_encryption_config(
    *,
    key_name: str | None = None,
    secret_b64: str | None = None,
    keys: Sequence[tuple[str, str]] = (),
    resources: Sequence[str] = ("secrets",),
    provider: str = "aescbc",
) -> bytes:
    """kube-apiserver's EncryptionConfiguration ("Kubernetes the hard way" layout).

    One provider with its keys — ``keys`` as (name, base64 secret) pairs, the first one
    encrypts and all of them decrypt, which is what a key rotation needs; or the single
    ``key_name``/``secret_b64`` — followed by ``identity: {}`` so data written before
    encryption was enabled stays readable. Secret lengths are checked against what
    kube-apiserver accepts for the provider, because a wrong one only shows up as an apiserver
    crash-loop.
    """
    if provider not in ENCRYPTION_PROVIDERS:
        raise PkiError(
            f"unknown encryption provider {provider!r}",
            hint=f"use one of: {', '.join(ENCRYPTION_PROVIDERS)}",
        )
    pairs = list(keys)
    if key_name is not None or secret_b64 is not None:
        pairs.insert(0, (key_name or "", secret_b64))  # type: ignore[arg-type]
    if not pairs:
        raise PkiError("an encryption config needs at least one key")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise PkiError(f"duplicate encryption key name in {names}")
    for name, secret_text in pairs:
        _check_encryption_key(name, secret_text, provider)
    if isinstance(resources, str) or not resources:
        raise PkiError(f"resources must be a non-empty list, got {resources!r}")
    for resource in resources:
        if not isinstance(resource, str) or not _RESOURCE.fullmatch(resource):
            raise PkiError(f"invalid resource name {resource!r} (e.g. secrets, configmaps)")
    if len(set(resources)) != len(resources):
        raise PkiError(f"duplicate resource in {list(resources)}")

    q = yaml_scalar
    lines = [
        "apiVersion: apiserver.config.k8s.io/v1",
        "kind: EncryptionConfiguration",
        "resources:",
        "  - resources:",
        *(f"      - {q(resource)}" for resource in resources),
        "    providers:",
        f"      - {provider}:",
        "          keys:",
    ]
    for name, secret_text in pairs:
        lines += [f"            - name: {q(name)}", f"              secret: {q(secret_text)}"]
    lines.append("      - identity: {}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _check_encryption_key(key_name: str, secret_b64: str, provider: str) -> None:
    _require_name(key_name, "key_name")
    if ":" in key_name:
        # The apiserver prefixes ciphertexts with "k8s:enc:<provider>:v1:<key name>:".
        raise PkiError(f"encryption key name {key_name!r} must not contain ':'")
    if not isinstance(secret_b64, str):
        raise PkiError("secret_b64 must be a base64 string")
    try:
        secret = base64.b64decode(secret_b64, validate=True)
    except (binascii.Error, ValueError):
        raise PkiError("encryption secret is not valid base64") from None
    if len(secret) not in _KEY_SIZES[provider]:
        sizes = " or ".join(str(n) for n in _KEY_SIZES[provider])
        raise PkiError(
            f"{provider} needs a {sizes}-byte key, secret decodes to {len(secret)} bytes",
            hint="generate one with: head -c 32 /dev/urandom | base64",
        )
