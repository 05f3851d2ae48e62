"""Issuing, describing and (de)serialising X.509 certificates.

Certificates are issued in the shape kubeadm produces (subject O/OU/CN, critical BasicConstraints
and KeyUsage, SKI/AKI) and strict enough to pass cryptography's RFC 5280 / web-PKI verifier, which
`pkiform.pki.verify` uses: what passes there also passes Go's crypto/x509 in the cluster.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pkiform.errors import PkiError
from pkiform.pki.keys import PrivateKey, algorithm_of_key, load_private_key

# Order is the canonical order describe_certificate reports key usages in (RFC 5280 bit order).
KEY_USAGE_NAMES: tuple[str, ...] = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "cert_sign",
    "crl_sign",
)

EXTENDED_KEY_USAGE_OIDS: dict[str, x509.ObjectIdentifier] = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
EKU_NAME_BY_OID = {oid: name for name, oid in EXTENDED_KEY_USAGE_OIDS.items()}
EKU_NAME_BY_OID[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE] = "any"

# kubeadm's CA key usages (certutil.NewSelfSignedCACert): used when a CA request names none.
DEFAULT_CA_KEY_USAGES: tuple[str, ...] = ("digital_signature", "key_encipherment", "cert_sign")

# RFC 5280 caps serials at 20 octets; a positive 159-bit value always fits.
MAX_SERIAL_BITS = 159

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_PEM_BEGIN_MARK = b"-----BEGIN "
# One or more certificates exactly as `certificate_pem` writes them: full 64-column lines,
# then a last line of at most 64 columns whose final quad alone may carry padding, LF only.
_B64_QUAD = rb"[A-Za-z0-9+/]{4}"
_CANONICAL_CERTS = re.compile(
    rb"(?:-----BEGIN CERTIFICATE-----\n(?:[A-Za-z0-9+/]{64}\n)*"
    rb"(?:(?:" + _B64_QUAD + rb"){0,15}(?:" + _B64_QUAD
    + rb"|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2}==)\n)?-----END CERTIFICATE-----\n)+"
)


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    # Config layers hand us lists; a bare string would silently become a tuple of characters.
    if isinstance(value, (str, bytes)):
        raise PkiError(f"expected a list of strings, got the string {value!r}")
    return tuple(value)


def _canonical_ips(value: Any) -> tuple[str, ...]:
    # Canonical text ("FD00:0::1" -> "fd00::1") so a request compares equal to what
    # describe_certificate reads back from the issued certificate.
    return tuple(str(validate_ip_address(ip)) for ip in _tuple_of_str(value))


def _check_names(allowed: Sequence[str], what: str) -> Any:
    def check(_inst: object, _attr: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        for name in value:
            if name not in allowed:
                raise PkiError(f"unknown {what} {name!r}", hint=f"use: {', '.join(allowed)}")
        if len(set(value)) != len(value):
            raise PkiError(f"duplicate {what} in {list(value)}")

    return check


@attrs.frozen
class CertificateRequest:
    """What a certificate should say. Validated on construction, so a bad config fails at plan.

    ``validity_days`` is keyword-only because it has no default yet follows defaulted fields.
    For a CA with empty ``key_usages`` the issuer uses `DEFAULT_CA_KEY_USAGES` (kubeadm's);
    for a leaf with empty ``key_usages`` no KeyUsage extension is written. Sequences are
    turned into tuples (hashable, and safe from later mutation) and IP addresses into their
    canonical text, so a request equals what `describe_certificate` reads back.
    """

    common_name: str
    organizations: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    organizational_units: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    is_ca: bool = False
    path_length: int | None = None
    key_usages: tuple[str, ...] = attrs.field(
        default=(), converter=_tuple_of_str, validator=_check_names(KEY_USAGE_NAMES, "key usage")
    )
    extended_key_usages: tuple[str, ...] = attrs.field(
        default=(),
        converter=_tuple_of_str,
        validator=_check_names(tuple(EXTENDED_KEY_USAGE_OIDS), "extended key usage"),
    )
    dns_names: tuple[str, ...] = attrs.field(default=(), converter=_tuple_of_str)
    ip_addresses: tuple[str, ...] = attrs.field(default=(), converter=_canonical_ips)
    validity_days: int = attrs.field(kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not self.common_name or len(self.common_name) > 64:
            # X.520 ub-common-name is 64; cryptography refuses longer ones anyway.
            raise PkiError(f"common name must be 1..64 characters, got {self.common_name!r}")
        for value in (*self.organizations, *self.organizational_units):
            if not value or len(value) > 64:
                raise PkiError(f"organization (unit) must be 1..64 characters, got {value!r}")
        if isinstance(self.validity_days, bool) or not isinstance(self.validity_days, int):
            raise PkiError(f"validity_days must be an integer, got {self.validity_days!r}")
        if self.validity_days < 1:
            raise PkiError(f"validity_days must be at least 1, got {self.validity_days}")
        if self.path_length is not None:
            if not self.is_ca:
                raise PkiError("path_length is only allowed on a CA certificate")
            if self.path_length < 0:
                raise PkiError(f"path_length must be >= 0, got {self.path_length}")
        if self.is_ca and self.key_usages and "cert_sign" not in self.key_usages:
            # RFC 5280 4.2.1.3: a CA key that signs certificates must assert keyCertSign,
            # and every verifier (Go, OpenSSL, cryptography) rejects chains through it otherwise.
            raise PkiError(f"CA {self.common_name!r} needs key usage cert_sign")
        if not self.is_ca and "cert_sign" in self.key_usages:
            raise PkiError(f"non-CA {self.common_name!r} must not have key usage cert_sign")
        for name in self.dns_names:
            validate_dns_name(name)

    @property
    def effective_key_usages(self) -> tuple[str, ...]:
        """Key usages actually written (CA default applied)."""
        if self.is_ca and not self.key_usages:
            return DEFAULT_CA_KEY_USAGES
        return self.key_usages


def validate_dns_name(name: str) -> str:
    """Check a SAN DNS name: RFC 1123 labels, optional leading ``*.``, at most 253 chars."""
    if not isinstance(name, str):
        raise PkiError(f"DNS name must be a string, got {name!r}")
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    ok = (
        0 < len(name) <= 253
        and bool(labels)
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
    )
    if not ok:
        raise PkiError(
            f"invalid DNS name {name!r}",
            hint="use RFC 1123 labels (letters, digits, '-'), optionally a leading '*.'",
        )
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    # An IP in a DNS SAN is never matched by TLS clients checking an IP; it is always a mistake.
    raise PkiError(f"DNS name {name!r} is an IP address", hint="put it in ip_addresses")


def validate_ip_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse a SAN IP literal (v4 or v6, no zone id)."""
    if not isinstance(value, str):
        raise PkiError(f"IP address must be a string, got {value!r}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise PkiError(f"invalid IP address {value!r}") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise PkiError(f"invalid IP address {value!r}: zone ids cannot go in a certificate")
    return ip


# --------------------------------------------------------------------------- parsing helpers


def load_certificate(cert_pem: bytes) -> x509.Certificate:
    """Parse exactly one PEM certificate."""
    certs = load_certificates(cert_pem)
    if len(certs) != 1:
        raise PkiError(f"expected exactly one certificate, found {len(certs)}")
    return certs[0]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM bundle into certificate objects (order kept)."""
    if not isinstance(data, (bytes, bytearray)):
        raise PkiError(f"certificate PEM must be bytes, got {type(data).__name__}")
    blocks = list(_PEM_BLOCK.finditer(data))
    if len(blocks) != data.count(_PEM_BEGIN_MARK):
        raise PkiError("truncated or malformed PEM block in certificate data")
    if not blocks and data.strip():
        raise PkiError("no PEM certificate found in data")
    certs: list[x509.Certificate] = []
    for match in blocks:
        label = match.group(1).decode()
        if label != "CERTIFICATE":
            raise PkiError(f"expected CERTIFICATE PEM blocks, found {label!r}")
        try:
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
        except ValueError as exc:
            raise PkiError(f"cannot parse certificate #{len(certs) + 1}: {exc}") from None
    return certs


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def split_pem_bundle(data: bytes) -> list[bytes]:
    """Split a bundle into normalized single-certificate PEMs.

    Re-encoding from DER gives canonical PEM (64-column base64, LF, one trailing newline),
    so equal certificates always produce equal bytes whatever the input's line endings or
    surrounding comments were. Empty input gives an empty list; non-certificate blocks raise.
    """
    return [certificate_pem(cert) for cert in load_certificates(data)]


def join_pem_bundle(certs: Sequence[bytes]) -> bytes:
    """Concatenate certificates (each may itself be a bundle) into one normalized bundle.

    Order is kept and duplicates are not removed: order is meaningful in a chain file.
    """
    if isinstance(certs, (bytes, bytearray)):
        raise PkiError("join_pem_bundle takes a sequence of PEMs, not one bytes value")
    # Already canonical text (every certificate pkiform stored) is kept as it is: parsing and
    # re-encoding it would give the same bytes, at 20 µs a certificate (5,000 kubelet chains).
    return b"".join(item if _CANONICAL_CERTS.fullmatch(item) else b"".join(split_pem_bundle(item))
                    for item in certs)


def _spki_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def certificate_matches_key(cert_pem: bytes, private_key_pem: bytes) -> bool:
    """True when the certificate's public key is the public half of the private key."""
    cert = load_certificate(cert_pem)
    key = load_private_key(private_key_pem)
    return _spki_der(cert.public_key()) == _spki_der(key.public_key())


# --------------------------------------------------------------------------------- issuing


def _signature_hash(signer: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 has its hash built in and cryptography insists on None for it.
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return None
    return hashes.SHA256()


def _subject(request: CertificateRequest) -> x509.Name:
    # Go's pkix.Name order (O, OU, CN), i.e. what kubeadm writes: "O=system:masters, CN=...".
    rdns = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in request.organizations]
    rdns += [
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou)
        for ou in request.organizational_units
    ]
    rdns.append(x509.NameAttribute(NameOID.COMMON_NAME, request.common_name))
    return x509.Name([x509.RelativeDistinguishedName([attr]) for attr in rdns])


def _key_usage(names: Sequence[str]) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature="digital_signature" in names,
        content_commitment="content_commitment" in names,
        key_encipherment="key_encipherment" in names,
        data_encipherment="data_encipherment" in names,
        key_agreement="key_agreement" in names,
        key_cert_sign="cert_sign" in names,
        crl_sign="crl_sign" in names,
        encipher_only=False,
        decipher_only=False,
    )


def as_utc(moment: datetime, what: str) -> datetime:
    """``moment`` in UTC; naive datetimes are refused."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        # A naive time is ambiguous and a silent local-vs-UTC shift breaks validity windows.
        raise PkiError(f"{what} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC)


def get_extension(cert: x509.Certificate, ext_type: type[Any]) -> Any:
    """The value of an extension of the given class, or None when absent."""
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None


def exact_bytes(pem: bytes) -> bytes:
    """``pem`` as a cache key (bytearray is not hashable); anything else not bytes is passed
    on, to be refused with a clear error by whatever parses it."""
    return bytes(pem) if isinstance(pem, bytearray) else pem


@attrs.frozen
class IssuedCertificate:
    """A certificate just signed, with the facts its issuer already knows (so the caller need
    not parse it back: an RSA apply signs one per node)."""

    pem: bytes
    serial_number: int
    not_after: datetime
    fingerprint_sha256: str


@attrs.frozen(eq=False)
class _Issuer:
    """What signing with one CA needs, checked once per (certificate, key) pair."""

    key: PrivateKey
    common_name: str
    name: x509.Name
    authority_key_id: x509.AuthorityKeyIdentifier
    path_length: int | None
    not_after: datetime


def issue_certificate(
    request: CertificateRequest,
    subject_private_key_pem: bytes,
    issuer_cert_pem: bytes | None,
    issuer_private_key_pem: bytes,
    not_before: datetime,
    serial_number: int | None = None,
) -> bytes:
    """Sign a certificate for ``request`` and return its PEM (see `sign_certificate`)."""
    return sign_certificate(request, subject_private_key_pem, issuer_cert_pem,
                            issuer_private_key_pem, not_before, serial_number).pem


def sign_certificate(
    request: CertificateRequest,
    subject_private_key_pem: bytes,
    issuer_cert_pem: bytes | None,
    issuer_private_key_pem: bytes,
    not_before: datetime,
    serial_number: int | None = None,
) -> IssuedCertificate:
    """Sign a certificate for ``request``: its PEM, serial, end and SHA-256 fingerprint.

    ``issuer_cert_pem`` None makes a self-signed root; the issuer key must then be the subject
    key. The validity never extends past the issuer's (raises rather than clamping: callers
    validate lifetimes at plan time and a silently shorter cert would surprise them).
    """
    subject_key = load_private_key(subject_private_key_pem)
    subject_public = subject_key.public_key()
    # X.509 times have whole seconds; truncating here keeps not_after exactly validity_days later.
    start = as_utc(not_before, "not_before").replace(microsecond=0)
    end = start + timedelta(days=request.validity_days)

    if serial_number is None:
        # Force the top bit so every serial is exactly 159 bits (20 DER octets, positive).
        serial_number = secrets.randbits(MAX_SERIAL_BITS) | (1 << (MAX_SERIAL_BITS - 1))
    elif (
        isinstance(serial_number, bool)
        or not isinstance(serial_number, int)
        or not 0 < serial_number < (1 << MAX_SERIAL_BITS)
    ):
        raise PkiError(f"serial number must be an integer in 1..2**159-1, got {serial_number!r}")

    issuer_name: x509.Name
    aki: x509.AuthorityKeyIdentifier
    if issuer_cert_pem is None:
        issuer_key = load_private_key(issuer_private_key_pem)
        if _spki_der(issuer_key.public_key()) != _spki_der(subject_public):
            raise PkiError(
                f"self-signed {request.common_name!r}: issuer key must be the subject key"
            )
        if not request.is_ca:
            # Our verifier (and RFC 5280) only accept CA certificates as trust anchors.
            raise PkiError(f"self-signed {request.common_name!r} must be a CA (is_ca=True)")
        issuer_name = _subject(request)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(subject_public)
    else:
        issuer = _issuer(exact_bytes(issuer_cert_pem), exact_bytes(issuer_private_key_pem))
        _check_request_against(issuer, request, end)
        issuer_key, issuer_name, aki = issuer.key, issuer.name, issuer.authority_key_id

    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(request))
        .issuer_name(issuer_name)
        .public_key(subject_public)
        .serial_number(serial_number)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.BasicConstraints(ca=request.is_ca, path_length=request.path_length),
            critical=True,
        )
    )
    usages = request.effective_key_usages
    if usages:
        builder = builder.add_extension(_key_usage(usages), critical=True)
    if request.extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [EXTENDED_KEY_USAGE_OIDS[name] for name in request.extended_key_usages]
            ),
            critical=False,
        )
    if request.dns_names or request.ip_addresses:
        general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in request.dns_names]
        general_names += [x509.IPAddress(validate_ip_address(ip)) for ip in request.ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(general_names), critical=False)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(subject_public), critical=False
    ).add_extension(aki, critical=False)
    cert = builder.sign(issuer_key, _signature_hash(issuer_key))
    return IssuedCertificate(certificate_pem(cert), serial_number, end,
                             cert.fingerprint(hashes.SHA256()).hex())


@functools.lru_cache(maxsize=64)
def _issuer(issuer_cert_pem: bytes, issuer_private_key_pem: bytes) -> _Issuer:
    """The issuer's checks that do not depend on what it signs, once per CA (an apply signs
    thousands of leaves with the same few; a failed check is raised, never cached)."""
    issuer_cert = load_certificate(issuer_cert_pem)
    issuer_key = load_private_key(issuer_private_key_pem)
    issuer_cn = _common_name(issuer_cert.subject)
    if _spki_der(issuer_cert.public_key()) != _spki_der(issuer_key.public_key()):
        raise PkiError(f"issuer key does not match issuer certificate {issuer_cn!r}")
    constraints = get_extension(issuer_cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise PkiError(f"issuer {issuer_cn!r} is not a CA certificate")
    usage = get_extension(issuer_cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise PkiError(f"issuer {issuer_cn!r} lacks key usage cert_sign")
    issuer_ski = get_extension(issuer_cert, x509.SubjectKeyIdentifier)
    # Reuse the issuer's own SKI so AKI matches it byte for byte even if the issuer was
    # made by another tool with a different key-id method.
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski)
        if issuer_ski is not None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    )
    return _Issuer(issuer_key, issuer_cn, issuer_cert.subject, aki,
                   constraints.path_length, issuer_cert.not_valid_after_utc)


def _check_request_against(issuer: _Issuer, request: CertificateRequest, end: datetime) -> None:
    if request.is_ca and issuer.path_length == 0:
        raise PkiError(
            f"issuer {issuer.common_name!r} has path_length 0 and cannot sign CA "
            f"{request.common_name!r}"
        )
    if end > issuer.not_after:
        raise PkiError(
            f"validity of {request.common_name!r} exceeds signer's: ends {end.isoformat()}, "
            f"signer {issuer.common_name!r} ends {issuer.not_after.isoformat()}",
            hint="shorten validity_days or renew the CA first",
        )


# ------------------------------------------------------------------------------- describing


@attrs.frozen
class CertificateInfo:
    """Plain-data view of a certificate for plans, diffs and diagnostics.

    ``key_usages`` are in RFC 5280 bit order; ``extended_key_usages`` in extension order with
    unknown OIDs as dotted strings; key ids are lowercase hex or None when the extension is
    absent (certificates made by other tools).
    """

    subject_common_name: str
    subject_organizations: tuple[str, ...]
    issuer_common_name: str
    serial_number: int
    not_before: datetime
    not_after: datetime
    is_ca: bool
    key_usages: tuple[str, ...]
    extended_key_usages: tuple[str, ...]
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    fingerprint_sha256: str
    key_algorithm: str
    subject_key_id_hex: str | None
    authority_key_id_hex: str | None
    # Extras beyond the original brief, defaulted so the core fields stay positional.
    subject_organizational_units: tuple[str, ...] = ()
    path_length: int | None = None
    subject: str = ""
    issuer: str = ""


def _common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else ""


def _attr_values(name: x509.Name, oid: x509.ObjectIdentifier) -> tuple[str, ...]:
    return tuple(str(attr.value) for attr in name.get_attributes_for_oid(oid))


def public_key_algorithm(key: Any) -> str:
    """KEY_ALGORITHMS name of a certificate's key, or a descriptive name for foreign keys."""
    try:
        return algorithm_of_key(key)
    except PkiError:
        pass
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ecdsa-{key.curve.name}"
    return type(key).__name__


def describe_cert(cert: x509.Certificate) -> CertificateInfo:
    """`describe_certificate` for an already parsed certificate."""
    constraints = get_extension(cert, x509.BasicConstraints)
    usage = get_extension(cert, x509.KeyUsage)
    key_usages: list[str] = []
    if usage is not None:
        flags = {
            "digital_signature": usage.digital_signature,
            "content_commitment": usage.content_commitment,
            "key_encipherment": usage.key_encipherment,
            "data_encipherment": usage.data_encipherment,
            "key_agreement": usage.key_agreement,
            "cert_sign": usage.key_cert_sign,
            "crl_sign": usage.crl_sign,
        }
        key_usages = [name for name in KEY_USAGE_NAMES if flags[name]]
        if usage.key_agreement:
            # Only readable when key_agreement is set; never produced by issue_certificate.
            key_usages += [n for n in ("encipher_only", "decipher_only") if getattr(usage, n)]
    eku = get_extension(cert, x509.ExtendedKeyUsage)
    san = get_extension(cert, x509.SubjectAlternativeName)
    ski = get_extension(cert, x509.SubjectKeyIdentifier)
    aki = get_extension(cert, x509.AuthorityKeyIdentifier)
    return CertificateInfo(
        subject_common_name=_common_name(cert.subject),
        subject_organizations=_attr_values(cert.subject, NameOID.ORGANIZATION_NAME),
        issuer_common_name=_common_name(cert.issuer),
        serial_number=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        is_ca=bool(constraints is not None and constraints.ca),
        key_usages=tuple(key_usages),
        extended_key_usages=tuple(
            EKU_NAME_BY_OID.get(oid, oid.dotted_string) for oid in (eku or ())
        ),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)) if san is not None else (),
        ip_addresses=(
            tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
            if san is not None
            else ()
        ),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        key_algorithm=public_key_algorithm(cert.public_key()),
        subject_key_id_hex=ski.digest.hex() if ski is not None else None,
        authority_key_id_hex=(
            aki.key_identifier.hex() if aki is not None and aki.key_identifier else None
        ),
        subject_organizational_units=_attr_values(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        path_length=constraints.path_length if constraints is not None else None,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
    )


def describe_certificate(cert_pem: bytes) -> CertificateInfo:
    """Describe exactly one PEM certificate."""
    if isinstance(cert_pem, (bytes, bytearray)):
        return _describe_pem(bytes(cert_pem))
    return describe_cert(load_certificate(cert_pem))  # raises the clear PkiError


@functools.lru_cache(maxsize=4096)
def _describe_pem(cert_pem: bytes) -> CertificateInfo:
    # Memoized on the exact bytes (the result is frozen): an apply describes each new cert
    # and its CA's several times, 5,000 times over at fleet scale.
    return describe_cert(load_certificate(cert_pem))


def is_directly_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s name and key signed ``cert`` (signature checked)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
