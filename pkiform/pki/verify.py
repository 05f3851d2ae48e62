"""TLS chain verification with human-readable reasons.

The verdict comes from cryptography's RFC 5280 / web-PKI verifier (`cryptography.x509.verification`)
so it matches what strict TLS stacks do. When it rejects a chain we re-walk the chain ourselves
only to explain *why* in words an operator can act on ("signed by an untrusted CA", "name not in
SANs", "expired at ..."), since its own messages name neither the CA nor the SANs.

Two deliberate departures from cryptography's defaults, both to match Go's crypto/x509 (what the
apiserver, kubelet and etcd actually run):

* Client certificates may lack a subjectAltName. cryptography 48's ClientVerifier requires one,
  but Kubernetes client certs (``CN=kubernetes-admin, O=system:masters``, kubelet clients) have
  none, so the end-entity policy is relaxed for that single extension.
* Ed25519: cryptography's web-PKI profile forbids Ed25519 keys and signatures outright, while Go
  accepts them. For a chain whose path involves Ed25519 we fall back to our own path validation
  (`_check_path`: signatures, validity, CA constraints, path length, EKU, SAN), which is the
  same code that produces the reasons for every other chain.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pkiform.errors import PkiError
from pkiform.pki.certs import (
    EKU_NAME_BY_OID,
    as_utc,
    describe_cert,
    get_extension,
    is_directly_issued_by,
    load_certificates,
    validate_dns_name,
)

Purpose = Literal["server", "client"]
Subject = x509.DNSName | x509.IPAddress

# cryptography's default; mirrored by the fallback so both accept the same chain lengths.
MAX_CHAIN_DEPTH = 8
_MIN_RSA_BITS = 2048
_SHA256 = hashes.SHA256()
_EKU_FOR: dict[Purpose, x509.ObjectIdentifier] = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}
_EKU_LABEL: dict[Purpose, str] = {"server": "serverAuth", "client": "clientAuth"}
# Extensions the fallback understands; a critical extension outside this set fails the chain,
# as RFC 5280 6.1.4 requires.
_UNDERSTOOD_CRITICAL = {
    x509.BasicConstraints.oid,
    x509.KeyUsage.oid,
    x509.ExtendedKeyUsage.oid,
    x509.SubjectAlternativeName.oid,
}


def verify_server_chain(
    *, chain_pem: bytes, trust_pem: bytes, server_name: str, at: datetime
) -> str | None:
    """None when ``chain_pem`` (leaf first) is a valid serverAuth chain for ``server_name`` to
    one of the roots in ``trust_pem`` at time ``at``; otherwise a short reason.

    ``server_name`` is a DNS name or an IP literal (IPv6 optionally in brackets).
    Raises PkiError only when an input cannot be parsed.
    """
    subject = _subject_for(server_name)
    return _verify("server", chain_pem, trust_pem, at, subject)


def verify_client_chain(*, chain_pem: bytes, trust_pem: bytes, at: datetime) -> str | None:
    """None when ``chain_pem`` (leaf first) is a valid clientAuth chain to ``trust_pem`` at
    ``at``; otherwise a short reason. Raises PkiError only for unparseable input."""
    return _verify("client", chain_pem, trust_pem, at, None)


def _subject_for(server_name: str) -> Subject:
    if not isinstance(server_name, str) or not server_name:
        raise PkiError(f"server name must be a non-empty string, got {server_name!r}")
    literal = server_name[1:-1] if server_name.startswith("[") else server_name
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if server_name.startswith("*"):
        raise PkiError(f"server name {server_name!r} cannot be a wildcard")
    validate_dns_name(server_name)
    return x509.DNSName(server_name)


def _verify(
    purpose: Purpose,
    chain_pem: bytes,
    trust_pem: bytes,
    at: datetime,
    subject: Subject | None,
) -> str | None:
    chain = load_certificates(chain_pem)
    roots = _roots(bytes(trust_pem))
    when = as_utc(at, "at")
    if not chain:
        raise PkiError("certificate chain is empty")
    if not roots:
        return "nothing is trusted: the trust bundle has no certificates"
    leaf, intermediates = chain[0], chain[1:]

    error = _cryptography_verdict(purpose, leaf, intermediates, bytes(trust_pem), when, subject)
    if error is None:
        return None
    path, problems = _best_path(purpose, leaf, intermediates, list(roots), when, subject)
    if path is not None and not problems and _involves_ed25519(path):
        # The only thing cryptography objected to is the algorithm it refuses on principle.
        return None
    if problems:
        return "; ".join(problems)
    return f"chain rejected: {_clean_message(error)}"


@functools.lru_cache(maxsize=64)
def _roots(trust_pem: bytes) -> tuple[x509.Certificate, ...]:
    # Thousands of leaves are checked against the same few bundles (one per CA generation).
    return tuple(load_certificates(trust_pem))


@functools.lru_cache(maxsize=256)
def _verifier(purpose: Purpose, trust_pem: bytes, when: datetime,
              subject: Subject | None) -> Any:
    """A built verifier, reused for every leaf checked with the same trust, time and name
    (building one costs about a third of a verification)."""
    builder = (PolicyBuilder().store(Store(list(_roots(trust_pem)))).time(when)
               .max_chain_depth(MAX_CHAIN_DEPTH))
    if subject is not None:
        return builder.build_server_verifier(subject)
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return builder.extension_policies(
        ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
    ).build_client_verifier()


def _cryptography_verdict(
    purpose: Purpose,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    trust_pem: bytes,
    when: datetime,
    subject: Subject | None,
) -> str | None:
    try:
        _verifier(purpose, trust_pem, when, subject).verify(leaf, intermediates)
    except (VerificationError, ValueError) as exc:
        # ValueError: a certificate the parser accepted but the verifier finds malformed
        # (e.g. a broken extension) - still a verification failure, never a crash.
        return str(exc) or type(exc).__name__
    return None


def _clean_message(message: str) -> str:
    message = re.sub(r"\s*\(encountered processing <Certificate\(.*?\)>\)", "", message)
    for prefix in ("validation failed: ", "candidates exhausted: "):
        message = message.removeprefix(prefix)
    return message


# ----------------------------------------------------------------------- our own path walk


def _label(cert: x509.Certificate) -> str:
    info = describe_cert(cert)
    return f"CN={info.subject_common_name}" if info.subject_common_name else info.subject


def _short(hex_value: str | None) -> str:
    if not hex_value:
        return "none"
    return hex_value[:16] + "…" if len(hex_value) > 16 else hex_value


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(_SHA256)


def _paths(
    cert: x509.Certificate,
    candidates: Sequence[x509.Certificate],
    anchors: set[bytes],
    seen: tuple[bytes, ...],
) -> Iterator[list[x509.Certificate]]:
    """Every path from ``cert`` up to a trust anchor (depth-first, candidates in order)."""
    if len(seen) > MAX_CHAIN_DEPTH + 1:
        return
    for issuer in candidates:
        fp = _fingerprint(issuer)
        if fp in seen or issuer.subject != cert.issuer or not is_directly_issued_by(cert, issuer):
            continue
        if fp in anchors:
            yield [cert, issuer]
            continue
        for rest in _paths(issuer, candidates, anchors, (*seen, fp)):
            yield [cert, *rest]


def _best_path(
    purpose: Purpose,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
    when: datetime,
    subject: Subject | None,
) -> tuple[list[x509.Certificate] | None, list[str]]:
    """The first path to a root that passes our checks, else the first path and its problems,
    else (None, [why nothing is trusted])."""
    anchors = {_fingerprint(root) for root in roots}
    # Roots first so a trusted copy of an intermediate ends the path as early as possible.
    candidates = [*roots, *(c for c in intermediates if _fingerprint(c) not in anchors)]
    first: tuple[list[x509.Certificate], list[str]] | None = None
    for path in _paths(leaf, candidates, anchors, (_fingerprint(leaf),)):
        problems = _check_path(purpose, path, when, subject)
        if not problems:
            return path, []
        if first is None:
            first = (path, problems)
    if first is not None:
        return first
    return None, [_untrusted_reason(purpose, leaf, intermediates, roots)]


def _untrusted_reason(
    purpose: Purpose,
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    roots: list[x509.Certificate],
) -> str:
    # Climb as far as the supplied intermediates allow, then name the issuer we could not find.
    top, seen = leaf, {_fingerprint(leaf)}
    while True:
        parent = next(
            (
                c
                for c in intermediates
                if _fingerprint(c) not in seen and is_directly_issued_by(top, c)
            ),
            None,
        )
        if parent is None:
            break
        seen.add(_fingerprint(parent))
        top = parent
    info = describe_cert(top)
    if top is not leaf and top.subject == top.issuer:
        issuer = (
            f"certificate signed by an untrusted CA (chain ends at self-signed {_label(top)}, "
            f"fingerprint {_short(info.fingerprint_sha256)})"
        )
    else:
        issuer = (
            f"certificate signed by an untrusted CA ({_label(top)} issued by "
            f"{_issuer_label(top)}, key id {_short(info.authority_key_id_hex)})"
        )
    trusted = []
    for root in roots:
        root_info = describe_cert(root)
        note = ""
        if root.subject == top.issuer:
            if root_info.subject_key_id_hex and root_info.subject_key_id_hex == (
                info.authority_key_id_hex
            ):
                # Right CA, but its signature cannot be checked: e.g. SHA-1, which neither
                # cryptography nor Go verify any more.
                note = (
                    f", same name and key id, but its signature on {_label(top)} does not "
                    f"verify ({_signature_name(top)})"
                )
            else:
                note = ", same name but a different key"
        trusted.append(
            f"{_label(root)} (key id {_short(root_info.subject_key_id_hex)}, "
            f"fingerprint {_short(root_info.fingerprint_sha256)}{note})"
        )
    who = "client" if purpose == "server" else "server"
    return f"{issuer}; {who} trusts: {', '.join(trusted)}"


def _issuer_label(cert: x509.Certificate) -> str:
    cns = cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return f"CN={cns[0].value!s}" if cns else cert.issuer.rfc4514_string()


def _check_path(
    purpose: Purpose,
    path: list[x509.Certificate],
    when: datetime,
    subject: Subject | None,
) -> list[str]:
    """Why this leaf→root path is not acceptable (empty when it is)."""
    problems: list[str] = []
    leaf = path[0]
    for cert in path:
        if when < cert.not_valid_before_utc:
            problems.append(
                f"{_label(cert)} is not valid before {_stamp(cert.not_valid_before_utc)} "
                f"(checked at {_stamp(when)})"
            )
        elif when > cert.not_valid_after_utc:
            problems.append(
                f"{_label(cert)} expired at {_stamp(cert.not_valid_after_utc)} "
                f"(checked at {_stamp(when)})"
            )
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            problems.append(f"{_label(cert)} has a {key.key_size}-bit RSA key (minimum 2048)")
        if cert is not path[-1] and not _strong_signature(cert):
            # The anchor's self-signature is never checked; every other one must be modern,
            # as Go (no SHA-1 since 1.18) and cryptography's profile require.
            problems.append(f"{_label(cert)} has a weak signature ({cert.signature_algorithm_oid})")
        for ext in cert.extensions:
            if ext.critical and ext.oid not in _UNDERSTOOD_CRITICAL:
                problems.append(f"{_label(cert)} has unsupported critical extension {ext.oid}")

    leaf_constraints = get_extension(leaf, x509.BasicConstraints)
    if leaf_constraints is not None and leaf_constraints.ca:
        problems.append(f"leaf {_label(leaf)} is a CA certificate, not an end entity")
    for depth, ca in enumerate(path[1:]):
        constraints = get_extension(ca, x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            problems.append(f"issuer {_label(ca)} is not a CA certificate")
            continue
        usage = get_extension(ca, x509.KeyUsage)
        if usage is not None and not usage.key_cert_sign:
            problems.append(f"issuer {_label(ca)} lacks key usage cert_sign")
        # ``depth`` = number of CA certificates below this one in the path.
        if constraints.path_length is not None and depth > constraints.path_length:
            problems.append(
                f"issuer {_label(ca)} allows {constraints.path_length} intermediate(s) "
                f"below it, chain has {depth}"
            )

    wanted = _EKU_FOR[purpose]
    for cert in path:
        eku = get_extension(cert, x509.ExtendedKeyUsage)
        if eku is None or wanted in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
            continue
        names = ", ".join(EKU_NAME_BY_OID.get(oid, oid.dotted_string) for oid in eku)
        role = "certificate" if cert is leaf else "issuer"
        problems.append(f"missing {_EKU_LABEL[purpose]} EKU: {role} {_label(cert)} has [{names}]")

    if subject is not None:
        problems += _name_problems(leaf, subject)
    return problems


def _name_problems(leaf: x509.Certificate, subject: Subject) -> list[str]:
    san = get_extension(leaf, x509.SubjectAlternativeName)
    shown = _san_summary(san)
    name = str(subject.value)
    if san is None:
        return [f"{_label(leaf)} has no subjectAltName, so it matches no server name ({name})"]
    if isinstance(subject, x509.IPAddress):
        if subject.value in san.get_values_for_type(x509.IPAddress):
            return []
    elif any(_dns_matches(pattern, name) for pattern in san.get_values_for_type(x509.DNSName)):
        return []
    return [f"name {name} not in SANs [{shown}] of {_label(leaf)}"]


def _san_summary(san: x509.SubjectAlternativeName | None) -> str:
    if san is None:
        return ""
    parts = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
    parts += [f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(parts)


def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower(), name.lower()
    if pattern.startswith("*."):
        # RFC 6125 6.4.3: the wildcard covers exactly one whole leftmost label.
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _signature_name(cert: x509.Certificate) -> str:
    oid = cert.signature_algorithm_oid
    return getattr(oid, "_name", None) or oid.dotted_string


def _strong_signature(cert: x509.Certificate) -> bool:
    if cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519:
        return True
    try:
        digest = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return False
    return isinstance(digest, (hashes.SHA256, hashes.SHA384, hashes.SHA512))


def _involves_ed25519(path: list[x509.Certificate]) -> bool:
    return any(
        isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
        or cert.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
        for cert in path
    )
