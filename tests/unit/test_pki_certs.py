"""Keys and certificates: issue real chains for every algorithm and check them with openssl."""

from __future__ import annotations

import pickle
import subprocess
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pkiform.errors import PkiError
from pkiform.pki import (
    KEY_ALGORITHMS,
    CertificateRequest,
    certificate_matches_key,
    describe_certificate,
    generate_private_key_pem,
    issue_certificate,
    join_pem_bundle,
    key_algorithm_of,
    load_private_key,
    public_key_pem,
    sign_certificate,
    split_pem_bundle,
)
from pkiform.pki.certs import DEFAULT_CA_KEY_USAGES

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

ROOT_REQ = CertificateRequest(
    "test-root-ca", organizations=("pkiform",), is_ca=True, validity_days=3650
)
INTER_REQ = CertificateRequest(
    "test-intermediate-ca",
    organizations=("pkiform",),
    organizational_units=("tests",),
    is_ca=True,
    path_length=0,
    key_usages=("digital_signature", "cert_sign", "crl_sign"),
    validity_days=1825,
)
LEAF_REQ = CertificateRequest(
    "kube-apiserver",
    organizations=("system:masters", "kubeadm:cluster-admins"),
    key_usages=("digital_signature", "key_encipherment"),
    extended_key_usages=("server_auth", "client_auth"),
    dns_names=("kubernetes", "kubernetes.default.svc.cluster.local", "*.apps.example.com"),
    ip_addresses=("10.96.0.1", "192.168.1.10", "fd00::1"),
    validity_days=365,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, list[bytes]]:
    """Three keys (root, intermediate, leaf) per algorithm, made in a process pool.

    Doing it once per module keeps RSA-4096 keygen off every test, and going through
    ProcessPoolExecutor proves generate_private_key_pem works there (picklable, top-level).
    """
    algorithms = [alg for alg in KEY_ALGORITHMS for _ in range(3)]
    with ProcessPoolExecutor() as pool:
        pems = list(pool.map(generate_private_key_pem, algorithms))
    return {alg: pems[i * 3 : i * 3 + 3] for i, alg in enumerate(KEY_ALGORITHMS)}


@attrs.frozen
class Chain:
    root: bytes
    inter: bytes
    leaf: bytes
    root_key: bytes
    inter_key: bytes
    leaf_key: bytes


@pytest.fixture(scope="module")
def chains(keys: dict[str, list[bytes]]) -> dict[str, Chain]:
    out = {}
    for alg, (rk, ik, lk) in keys.items():
        root = issue_certificate(ROOT_REQ, rk, None, rk, NOW)
        inter = issue_certificate(INTER_REQ, ik, root, rk, NOW)
        leaf = issue_certificate(LEAF_REQ, lk, inter, ik, NOW, serial_number=4242)
        out[alg] = Chain(root, inter, leaf, rk, ik, lk)
    return out


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


# ------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_generated_key_round_trips(keys: dict[str, list[bytes]], algorithm: str) -> None:
    pem = keys[algorithm][0]
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert key_algorithm_of(pem) == algorithm
    pub = public_key_pem(pem)
    assert pub.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    loaded = serialization.load_pem_public_key(pub)
    key = load_private_key(pem)
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.public_key().public_numbers().e == 65537
        assert f"rsa-{key.key_size}" == algorithm
    assert loaded.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_keys_are_fresh(keys: dict[str, list[bytes]]) -> None:
    assert len({pem for pems in keys.values() for pem in pems}) == 3 * len(KEY_ALGORITHMS)


def test_keygen_is_picklable() -> None:
    assert pickle.loads(pickle.dumps(generate_private_key_pem)) is generate_private_key_pem


def test_unknown_algorithm_names_the_valid_ones() -> None:
    with pytest.raises(PkiError) as info:
        generate_private_key_pem("rsa-1024")
    text = str(info.value)
    assert "rsa-1024" in text
    assert all(alg in text for alg in KEY_ALGORITHMS)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    ],
)
def test_load_private_key_rejects_garbage(pem: bytes) -> None:
    with pytest.raises(PkiError):
        load_private_key(pem)


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_load_private_key_rejects_unsupported_keys() -> None:
    with pytest.raises(PkiError, match="secp521r1"):
        load_private_key(_pkcs8(ec.generate_private_key(ec.SECP521R1())))
    with pytest.raises(PkiError, match="1024"):
        load_private_key(_pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=1024)))


def test_load_private_key_accepts_traditional_formats() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert key_algorithm_of(sec1) == "ecdsa-p256"


def test_encrypted_key_is_refused() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(PkiError):
        load_private_key(pem)


# --------------------------------------------------------------------------- chains / openssl


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
@pytest.mark.parametrize("purpose", ["sslserver", "sslclient"])
def test_openssl_verifies_chain(
    chains: dict[str, Chain], tmp_path: Path, algorithm: str, purpose: str
) -> None:
    chain = chains[algorithm]
    result = _openssl(
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        _write(tmp_path, "root.pem", chain.root),
        "-untrusted",
        _write(tmp_path, "inter.pem", chain.inter),
        _write(tmp_path, "leaf.pem", chain.leaf),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_openssl_rejects_leaf_without_intermediate(
    chains: dict[str, Chain], tmp_path: Path, algorithm: str
) -> None:
    chain = chains[algorithm]
    result = _openssl(
        "verify",
        "-CAfile",
        _write(tmp_path, "root.pem", chain.root),
        _write(tmp_path, "leaf.pem", chain.leaf),
    )
    assert result.returncode != 0


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_describe_round_trips_every_field(chains: dict[str, Chain], algorithm: str) -> None:
    chain = chains[algorithm]
    root, inter, leaf = (describe_certificate(c) for c in (chain.root, chain.inter, chain.leaf))

    assert leaf.subject_common_name == "kube-apiserver"
    assert leaf.subject_organizations == ("system:masters", "kubeadm:cluster-admins")
    assert leaf.subject_organizational_units == ()
    assert leaf.issuer_common_name == "test-intermediate-ca"
    assert leaf.serial_number == 4242
    assert leaf.not_before == NOW
    assert leaf.not_after == NOW + timedelta(days=365)
    assert leaf.not_before.tzinfo is not None and leaf.not_before.utcoffset() == timedelta(0)
    assert leaf.is_ca is False
    assert leaf.path_length is None
    assert leaf.key_usages == ("digital_signature", "key_encipherment")
    assert leaf.extended_key_usages == ("server_auth", "client_auth")
    assert leaf.dns_names == LEAF_REQ.dns_names
    assert leaf.ip_addresses == LEAF_REQ.ip_addresses
    assert leaf.key_algorithm == algorithm
    assert leaf.subject == "CN=kube-apiserver,O=kubeadm:cluster-admins,O=system:masters"

    assert inter.subject_organizational_units == ("tests",)
    assert inter.is_ca is True
    assert inter.path_length == 0
    assert inter.key_usages == ("digital_signature", "cert_sign", "crl_sign")
    assert inter.extended_key_usages == ()
    assert inter.not_after == NOW + timedelta(days=1825)

    assert root.is_ca is True
    assert root.path_length is None
    assert root.issuer_common_name == root.subject_common_name == "test-root-ca"
    assert root.key_usages == DEFAULT_CA_KEY_USAGES  # kubeadm's CA default
    assert root.dns_names == root.ip_addresses == ()
    assert root.serial_number.bit_length() == 159

    # Key identifiers link each certificate to its issuer; a root points at itself.
    assert root.authority_key_id_hex == root.subject_key_id_hex
    assert inter.authority_key_id_hex == root.subject_key_id_hex
    assert leaf.authority_key_id_hex == inter.subject_key_id_hex
    assert len({root.subject_key_id_hex, inter.subject_key_id_hex, leaf.subject_key_id_hex}) == 3


@pytest.mark.parametrize("algorithm", ["rsa-2048", "ecdsa-p384", "ed25519"])
def test_describe_agrees_with_openssl(
    chains: dict[str, Chain], tmp_path: Path, algorithm: str
) -> None:
    leaf = chains[algorithm].leaf
    info = describe_certificate(leaf)
    out = _openssl(
        "x509",
        "-in",
        _write(tmp_path, "leaf.pem", leaf),
        "-noout",
        "-serial",
        "-fingerprint",
        "-sha256",
        "-ext",
        "subjectKeyIdentifier,authorityKeyIdentifier",
    ).stdout
    compact = out.replace(":", "").replace(" ", "").lower()
    assert f"serial={info.serial_number:x}" in compact
    assert f"fingerprint={info.fingerprint_sha256}" in compact
    assert info.subject_key_id_hex is not None and info.authority_key_id_hex is not None
    assert info.subject_key_id_hex in compact
    assert info.authority_key_id_hex in compact


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_extension_criticality_and_hash(chains: dict[str, Chain], algorithm: str) -> None:
    cert = x509.load_pem_x509_certificate(chains[algorithm].leaf)
    critical = {ext.oid: ext.critical for ext in cert.extensions}
    assert critical == {
        x509.BasicConstraints.oid: True,
        x509.KeyUsage.oid: True,
        x509.ExtendedKeyUsage.oid: False,
        x509.SubjectAlternativeName.oid: False,
        x509.SubjectKeyIdentifier.oid: False,
        x509.AuthorityKeyIdentifier.oid: False,
    }
    if algorithm == "ed25519":
        assert cert.signature_hash_algorithm is None
    else:
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_certificate_matches_key(chains: dict[str, Chain]) -> None:
    chain = chains["ecdsa-p256"]
    assert certificate_matches_key(chain.leaf, chain.leaf_key)
    assert certificate_matches_key(chain.root, chain.root_key)
    assert not certificate_matches_key(chain.leaf, chain.inter_key)
    assert not certificate_matches_key(chain.leaf, chains["ed25519"].leaf_key)


def test_random_serials_are_159_bits_and_distinct(keys: dict[str, list[bytes]]) -> None:
    key = keys["ed25519"][0]
    serials = {
        describe_certificate(issue_certificate(ROOT_REQ, key, None, key, NOW)).serial_number
        for _ in range(20)
    }
    assert len(serials) == 20
    assert {s.bit_length() for s in serials} == {159}


def test_leaf_without_key_usages_has_no_key_usage_extension(chains: dict[str, Chain]) -> None:
    chain = chains["ecdsa-p256"]
    req = CertificateRequest("admin", extended_key_usages=("client_auth",), validity_days=1)
    info = describe_certificate(
        issue_certificate(req, chain.leaf_key, chain.root, chain.root_key, NOW)
    )
    assert info.key_usages == ()
    assert info.dns_names == info.ip_addresses == ()
    cert = x509.load_pem_x509_certificate(
        issue_certificate(req, chain.leaf_key, chain.root, chain.root_key, NOW)
    )
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.KeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_not_before_is_converted_to_utc(chains: dict[str, Chain]) -> None:
    chain = chains["ed25519"]
    plus2 = NOW.astimezone(timezone(timedelta(hours=2)))
    info = describe_certificate(
        issue_certificate(LEAF_REQ, chain.leaf_key, chain.inter, chain.inter_key, plus2)
    )
    assert info.not_before == NOW


# ----------------------------------------------------------------------------- refusals


@pytest.fixture
def p256(chains: dict[str, Chain]) -> Chain:
    return chains["ecdsa-p256"]


def test_validity_exceeding_signer_is_refused(p256: Chain) -> None:
    req = attrs.evolve(LEAF_REQ, validity_days=1826)
    with pytest.raises(PkiError, match="exceeds signer's"):
        issue_certificate(req, p256.leaf_key, p256.inter, p256.inter_key, NOW)
    # Starting later also pushes the end past the signer's.
    with pytest.raises(PkiError, match="exceeds signer's"):
        issue_certificate(
            LEAF_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW + timedelta(days=1500)
        )


def test_self_signed_needs_own_key_and_ca(p256: Chain) -> None:
    with pytest.raises(PkiError, match="issuer key must be the subject key"):
        issue_certificate(ROOT_REQ, p256.leaf_key, None, p256.root_key, NOW)
    with pytest.raises(PkiError, match="must be a CA"):
        issue_certificate(LEAF_REQ, p256.leaf_key, None, p256.leaf_key, NOW)


def test_issuer_must_be_a_matching_ca(p256: Chain) -> None:
    with pytest.raises(PkiError, match="does not match issuer certificate"):
        issue_certificate(LEAF_REQ, p256.leaf_key, p256.inter, p256.root_key, NOW)
    with pytest.raises(PkiError, match="not a CA"):
        issue_certificate(LEAF_REQ, p256.inter_key, p256.leaf, p256.leaf_key, NOW)
    with pytest.raises(PkiError, match="path_length 0"):
        issue_certificate(INTER_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW)


def test_signed_facts_are_the_certificates_own(p256: Chain) -> None:
    """sign_certificate's serial, end and fingerprint (what the cert provider records instead
    of parsing the new certificate back) are exactly what the certificate says."""
    issued = sign_certificate(LEAF_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW)
    info = describe_certificate(issued.pem)
    parsed = x509.load_pem_x509_certificate(issued.pem)
    assert issued.serial_number == info.serial_number == parsed.serial_number
    assert issued.not_after == info.not_after == parsed.not_valid_after_utc
    assert issued.fingerprint_sha256 == parsed.fingerprint(hashes.SHA256()).hex()
    again = issue_certificate(
        LEAF_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW, issued.serial_number)
    # The same certificate but for the (randomized ECDSA) signature.
    assert x509.load_pem_x509_certificate(again).tbs_certificate_bytes == \
        parsed.tbs_certificate_bytes


def test_issuer_checked_once_still_refuses_per_request(p256: Chain) -> None:
    """The issuer's own checks are remembered per CA; what depends on the request (validity,
    a CA under path_length 0) is checked on every signature, after a success too."""
    issue_certificate(LEAF_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW)
    with pytest.raises(PkiError, match="exceeds signer's"):
        issue_certificate(attrs.evolve(LEAF_REQ, validity_days=1826), p256.leaf_key,
                          p256.inter, p256.inter_key, NOW)
    with pytest.raises(PkiError, match="path_length 0"):
        issue_certificate(INTER_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW)
    with pytest.raises(PkiError, match="does not match issuer certificate"):
        issue_certificate(LEAF_REQ, p256.leaf_key, p256.inter, p256.root_key, NOW)
    with pytest.raises(PkiError, match="certificate PEM must be bytes"):
        issue_certificate(LEAF_REQ, p256.leaf_key, p256.inter.decode(),  # type: ignore[arg-type]
                          p256.inter_key, NOW)


def test_naive_not_before_is_refused(p256: Chain) -> None:
    with pytest.raises(PkiError, match="timezone-aware"):
        issue_certificate(ROOT_REQ, p256.root_key, None, p256.root_key, NOW.replace(tzinfo=None))


@pytest.mark.parametrize("serial", [0, -1, 1 << 159, True, "7"])
def test_bad_serial_is_refused(p256: Chain, serial: object) -> None:
    with pytest.raises(PkiError, match="serial"):
        issue_certificate(ROOT_REQ, p256.root_key, None, p256.root_key, NOW, serial)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "bad_name",
        "-leading.example",
        "trailing-.example",
        "a..b",
        "",
        ".",
        "example.com.",
        "exa mple.com",
        "*",
        "*.*.example",
        "foo.*.example",
        "f*o.example",
        "x" * 64 + ".example",
        ".".join(["abcdefg"] * 32) + ".ab",  # 258 characters
        "10.0.0.1",
        "ünïcode.example",
    ],
)
def test_invalid_dns_names_are_rejected(name: str) -> None:
    with pytest.raises(PkiError) as info:
        attrs.evolve(LEAF_REQ, dns_names=("ok.example", name))
    assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "kubernetes.default.svc.cluster.local",
        "*.example.com",
        "x" * 63 + ".example",
        "ETCD-0.Example.COM",
        "1.example",
        ".".join(["abcdefg"] * 31) + ".abcd",  # 252 characters
    ],
)
def test_valid_dns_names_are_accepted(name: str) -> None:
    assert attrs.evolve(LEAF_REQ, dns_names=(name,)).dns_names == (name,)


@pytest.mark.parametrize(
    "ip",
    ["10.0.0.256", "10.0.0", "::g", "fe80::1%eth0", "10.0.0.0/24", "", "localhost", " 10.0.0.1"],
)
def test_invalid_ip_addresses_are_rejected(ip: str) -> None:
    with pytest.raises(PkiError) as info:
        attrs.evolve(LEAF_REQ, ip_addresses=(ip,))
    assert repr(ip) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key_usages": ("digital_signature", "signing")}, "unknown key usage 'signing'"),
        ({"extended_key_usages": ("serverAuth",)}, "unknown extended key usage 'serverAuth'"),
        ({"key_usages": ("cert_sign",)}, "must not have key usage cert_sign"),
        ({"path_length": 1}, "only allowed on a CA"),
        ({"validity_days": 0}, "at least 1"),
        ({"dns_names": "kubernetes"}, "list of strings"),
        ({"common_name": ""}, "common name"),
        ({"common_name": "x" * 65}, "common name"),
        ({"key_usages": ("digital_signature", "digital_signature")}, "duplicate"),
    ],
)
def test_invalid_requests_are_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(PkiError, match=message):
        attrs.evolve(LEAF_REQ, **changes)  # type: ignore[arg-type]


def test_ca_request_needs_cert_sign() -> None:
    with pytest.raises(PkiError, match="needs key usage cert_sign"):
        attrs.evolve(ROOT_REQ, key_usages=("digital_signature",))
    with pytest.raises(PkiError, match=">= 0"):
        attrs.evolve(ROOT_REQ, path_length=-1)


def test_ip_addresses_are_canonicalized(p256: Chain) -> None:
    req = attrs.evolve(LEAF_REQ, ip_addresses=("FD00:0:0::0:1", "10.0.0.1"))
    assert req.ip_addresses == ("fd00::1", "10.0.0.1")
    info = describe_certificate(
        issue_certificate(req, p256.leaf_key, p256.inter, p256.inter_key, NOW)
    )
    assert info.ip_addresses == req.ip_addresses


def test_not_before_microseconds_are_dropped(p256: Chain) -> None:
    info = describe_certificate(
        issue_certificate(
            LEAF_REQ, p256.leaf_key, p256.inter, p256.inter_key, NOW.replace(microsecond=999999)
        )
    )
    assert info.not_before == NOW
    assert info.not_after == NOW + timedelta(days=365)


def test_request_accepts_lists() -> None:
    req = CertificateRequest("x", dns_names=["a.example"], validity_days=1)
    assert req.dns_names == ("a.example",)
    assert hash(req) == hash(CertificateRequest("x", dns_names=("a.example",), validity_days=1))


# ------------------------------------------------------------------------------ PEM bundles


@pytest.fixture
def three(chains: dict[str, Chain]) -> list[bytes]:
    chain = chains["rsa-2048"]
    return [chain.leaf, chain.inter, chain.root]


def test_split_normalizes_messy_bundles(three: list[bytes]) -> None:
    messy = (
        b"# leaf\r\n"
        + three[0].replace(b"\n", b"\r\n")
        + b"\n\n\nsubject=CN = test-intermediate-ca\n"
        + three[1]
        + b"   \n"
        + three[2].rstrip(b"\n")
    )
    parts = split_pem_bundle(messy)
    assert parts == three
    for part in parts:
        assert part.endswith(b"-----END CERTIFICATE-----\n")
        assert b"\r" not in part and b"\n\n" not in part


def test_join_is_normalized_and_deterministic(three: list[bytes]) -> None:
    joined = join_pem_bundle([b"\n" + three[0] + b"\n\n", three[1] + three[2]])
    assert joined == b"".join(three)
    assert b"\n\n" not in joined and joined.endswith(b"-----\n")
    assert join_pem_bundle(split_pem_bundle(joined)) == joined
    assert split_pem_bundle(joined) == three
    assert join_pem_bundle([]) == b""
    assert split_pem_bundle(b"") == split_pem_bundle(b"  \n") == []


@pytest.mark.parametrize(
    "data",
    [
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ],
)
def test_split_rejects_bad_data(data: bytes) -> None:
    with pytest.raises(PkiError):
        split_pem_bundle(data)


def test_split_rejects_non_certificate_blocks(three: list[bytes], p256: Chain) -> None:
    with pytest.raises(PkiError, match="PRIVATE KEY"):
        split_pem_bundle(three[0] + p256.leaf_key)


def test_describe_wants_exactly_one(three: list[bytes]) -> None:
    with pytest.raises(PkiError, match="exactly one"):
        describe_certificate(three[0] + three[1])


def test_issue_is_reproducible_except_for_signature_randomness(
    keys: dict[str, list[bytes]],
) -> None:
    # Ed25519 and RSA PKCS#1 v1.5 signatures are deterministic, so with a fixed serial the
    # whole certificate is: plans can rely on re-issuing not changing anything else.
    for alg in ("ed25519", "rsa-2048"):
        key = keys[alg][0]
        first = issue_certificate(ROOT_REQ, key, None, key, NOW, serial_number=7)
        assert issue_certificate(ROOT_REQ, key, None, key, NOW, serial_number=7) == first


def test_joining_canonical_certificates_keeps_them_and_equals_the_parsing_path() -> None:
    """join_pem_bundle keeps canonical PEM as it is (no parse): for every DER length modulo 48
    (every shape of the last base64 line, padding included) that must be byte-for-byte what
    parsing and re-encoding gives, and anything else still goes through the parser."""
    from pkiform.pki.certs import _CANONICAL_CERTS, join_pem_bundle, split_pem_bundle

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    residues: set[int] = set()
    for i in range(3000):  # ECDSA signatures vary in length: draw until all 48 are seen
        if len(residues) == 48:
            break
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x" * (1 + i % 60))])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(i + 1).not_valid_before(now)
                .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
        residues.add(len(cert.public_bytes(serialization.Encoding.DER)) % 48)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        parsed = b"".join(split_pem_bundle(pem))
        assert _CANONICAL_CERTS.fullmatch(pem) and _CANONICAL_CERTS.fullmatch(pem + pem)
        assert join_pem_bundle([pem, pem + pem]) == parsed * 3
        for variant in (pem.replace(b"\n", b"\r\n"), b"# comment\n" + pem, pem + b"\n"):
            assert not _CANONICAL_CERTS.fullmatch(variant)
            assert join_pem_bundle([variant]) == parsed
        assert not _CANONICAL_CERTS.fullmatch(pem.replace(b"\n", b"\n\n", 2))
        with pytest.raises(PkiError):
            join_pem_bundle([pem[:-40]])
    assert residues == set(range(48))
