"""Chain verification: verdicts agree with `openssl verify`, reasons name the actual problem."""

from __future__ import annotations

import ipaddress
import subprocess
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pkiform.errors import PkiError
from pkiform.pki import (
    KEY_ALGORITHMS,
    CertificateRequest,
    generate_private_key_pem,
    issue_certificate,
    load_private_key,
    split_pem_bundle,
    verify_client_chain,
    verify_server_chain,
)

AT = datetime.now(UTC).replace(microsecond=0)
NOW = AT - timedelta(days=1)

ROOT_REQ = CertificateRequest("test-root-ca", is_ca=True, validity_days=3650)
INTER_REQ = CertificateRequest("test-intermediate-ca", is_ca=True, validity_days=1825)
LEAF_REQ = CertificateRequest(
    "etcd-server",
    key_usages=("digital_signature", "key_encipherment"),
    extended_key_usages=("server_auth", "client_auth"),
    dns_names=("etcd.example", "*.etcd.example", "localhost"),
    ip_addresses=("127.0.0.1", "10.0.0.10", "fd00::10"),
    validity_days=365,
)
# The algorithms the failure-reason tests run on: one the cryptography verifier handles, one it
# refuses (Ed25519, verified by our fallback) and RSA.
NEGATIVE = ("ecdsa-p256", "ed25519", "rsa-2048")


@attrs.frozen
class Pki:
    root: bytes
    inter: bytes
    leaf: bytes
    root_key: bytes
    inter_key: bytes
    leaf_key: bytes

    def issue_leaf(self, request: CertificateRequest, not_before: datetime = NOW) -> bytes:
        return issue_certificate(request, self.leaf_key, self.inter, self.inter_key, not_before)

    def other_root(self) -> bytes:
        # Same name as the real root, different key: the classic "CA was regenerated" mistake.
        return issue_certificate(ROOT_REQ, self.leaf_key, None, self.leaf_key, NOW)


@pytest.fixture(scope="module")
def pkis() -> dict[str, Pki]:
    algorithms = [alg for alg in KEY_ALGORITHMS for _ in range(3)]
    with ProcessPoolExecutor() as pool:
        pems = list(pool.map(generate_private_key_pem, algorithms))
    out = {}
    for i, alg in enumerate(KEY_ALGORITHMS):
        rk, ik, lk = pems[i * 3 : i * 3 + 3]
        root = issue_certificate(ROOT_REQ, rk, None, rk, NOW)
        inter = issue_certificate(INTER_REQ, ik, root, rk, NOW)
        leaf = issue_certificate(LEAF_REQ, lk, inter, ik, NOW)
        out[alg] = Pki(root, inter, leaf, rk, ik, lk)
    return out


def openssl_ok(
    tmp_path: Path,
    purpose: str,
    *,
    trust: bytes,
    chain: bytes,
    name: str | None = None,
    at: datetime | None = None,
) -> bool:
    """`openssl verify` on the same inputs as verify_*_chain (leaf first, then untrusted)."""
    certs = split_pem_bundle(chain)
    (tmp_path / "trust.pem").write_bytes(trust)
    (tmp_path / "leaf.pem").write_bytes(certs[0])
    (tmp_path / "untrusted.pem").write_bytes(b"".join(certs[1:]))
    args = ["openssl", "verify", "-x509_strict", "-purpose", purpose]
    args += ["-CAfile", str(tmp_path / "trust.pem")]
    if len(certs) > 1:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    if name is not None:
        try:
            ipaddress.ip_address(name)
            args += ["-verify_ip", name]
        except ValueError:
            args += ["-verify_hostname", name]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    result = subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, check=False)
    return result.returncode == 0


# -------------------------------------------------------------------------------- good chains


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
@pytest.mark.parametrize(
    "name",
    ["etcd.example", "ETCD.example", "etcd-0.etcd.example", "localhost", "10.0.0.10", "fd00::10"],
)
def test_good_server_chain(pkis: dict[str, Pki], tmp_path: Path, algorithm: str, name: str) -> None:
    pki = pkis[algorithm]
    chain = pki.leaf + pki.inter
    assert verify_server_chain(chain_pem=chain, trust_pem=pki.root, server_name=name, at=AT) is None
    assert openssl_ok(tmp_path, "sslserver", trust=pki.root, chain=chain, name=name, at=AT)


@pytest.mark.parametrize("algorithm", KEY_ALGORITHMS)
def test_good_client_chain(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    chain = pki.leaf + pki.inter
    assert verify_client_chain(chain_pem=chain, trust_pem=pki.root, at=AT) is None
    assert openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=chain, at=AT)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_kubernetes_client_cert_without_san(
    pkis: dict[str, Pki], tmp_path: Path, algorithm: str
) -> None:
    # kubeadm's admin.conf client cert: O=system:masters, clientAuth, no SAN at all.
    pki = pkis[algorithm]
    admin = CertificateRequest(
        "kubernetes-admin",
        organizations=("system:masters",),
        key_usages=("digital_signature", "key_encipherment"),
        extended_key_usages=("client_auth",),
        validity_days=365,
    )
    chain = pki.issue_leaf(admin) + pki.inter
    assert verify_client_chain(chain_pem=chain, trust_pem=pki.root, at=AT) is None
    assert openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=chain, at=AT)


def test_leaf_without_eku_is_accepted_for_both(pkis: dict[str, Pki]) -> None:
    # No EKU means "any purpose" in RFC 5280, Go and OpenSSL alike.
    pki = pkis["ecdsa-p256"]
    chain = pki.issue_leaf(attrs.evolve(LEAF_REQ, extended_key_usages=())) + pki.inter
    assert verify_client_chain(chain_pem=chain, trust_pem=pki.root, at=AT) is None
    assert (
        verify_server_chain(chain_pem=chain, trust_pem=pki.root, server_name="localhost", at=AT)
        is None
    )


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_extra_roots_and_root_in_chain_are_fine(pkis: dict[str, Pki], algorithm: str) -> None:
    pki = pkis[algorithm]
    trust = pki.other_root() + pkis["ecdsa-p384"].root + pki.root
    for chain in (
        pki.leaf + pki.inter,
        pki.leaf + pki.inter + pki.root,
        pki.leaf + pki.root + pki.inter,
    ):
        assert verify_client_chain(chain_pem=chain, trust_pem=trust, at=AT) is None
        assert (
            verify_server_chain(chain_pem=chain, trust_pem=trust, server_name="fd00::10", at=AT)
            is None
        )


def test_intermediate_as_trust_anchor(pkis: dict[str, Pki]) -> None:
    pki = pkis["ed25519"]
    assert verify_client_chain(chain_pem=pki.leaf, trust_pem=pki.inter, at=AT) is None


# ------------------------------------------------------------------------------- bad chains


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_wrong_ca(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    other = pki.other_root()
    chain = pki.leaf + pki.inter
    reason = verify_server_chain(
        chain_pem=chain, trust_pem=other, server_name="etcd.example", at=AT
    )
    assert reason is not None
    assert reason.startswith("certificate signed by an untrusted CA")
    assert "CN=test-intermediate-ca issued by CN=test-root-ca" in reason
    assert "client trusts: CN=test-root-ca" in reason
    assert "same name but a different key" in reason
    client_reason = verify_client_chain(chain_pem=chain, trust_pem=other, at=AT)
    assert client_reason is not None and "server trusts: CN=test-root-ca" in client_reason
    assert not openssl_ok(tmp_path, "sslserver", trust=other, chain=chain, at=AT)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_missing_intermediate(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    reason = verify_client_chain(chain_pem=pki.leaf, trust_pem=pki.root, at=AT)
    assert reason is not None
    assert "untrusted CA (CN=etcd-server issued by CN=test-intermediate-ca" in reason
    assert "same name" not in reason
    assert not openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=pki.leaf, at=AT)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_untrusted_self_signed_root_in_chain(pkis: dict[str, Pki], algorithm: str) -> None:
    pki = pkis[algorithm]
    foreign = pkis["ecdsa-p384"].root
    reason = verify_client_chain(
        chain_pem=pki.leaf + pki.inter + pki.root, trust_pem=foreign, at=AT
    )
    assert reason is not None
    assert "chain ends at self-signed CN=test-root-ca" in reason


@pytest.mark.parametrize("algorithm", NEGATIVE)
@pytest.mark.parametrize(
    "name", ["10.0.0.5", "fd00::11", "other.example", "a.b.etcd.example", "etcd.example.org"]
)
def test_wrong_name(pkis: dict[str, Pki], tmp_path: Path, algorithm: str, name: str) -> None:
    pki = pkis[algorithm]
    chain = pki.leaf + pki.inter
    reason = verify_server_chain(chain_pem=chain, trust_pem=pki.root, server_name=name, at=AT)
    assert reason == (
        f"name {name} not in SANs [DNS:etcd.example, DNS:*.etcd.example, DNS:localhost, "
        "IP:127.0.0.1, IP:10.0.0.10, IP:fd00::10] of CN=etcd-server"
    )
    assert not openssl_ok(tmp_path, "sslserver", trust=pki.root, chain=chain, name=name, at=AT)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_server_leaf_without_san(pkis: dict[str, Pki], algorithm: str) -> None:
    pki = pkis[algorithm]
    chain = pki.issue_leaf(attrs.evolve(LEAF_REQ, dns_names=(), ip_addresses=())) + pki.inter
    reason = verify_server_chain(chain_pem=chain, trust_pem=pki.root, server_name="etcd", at=AT)
    assert reason is not None and "has no subjectAltName" in reason


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_wrong_eku(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    client_only = pki.issue_leaf(attrs.evolve(LEAF_REQ, extended_key_usages=("client_auth",)))
    server_only = pki.issue_leaf(attrs.evolve(LEAF_REQ, extended_key_usages=("server_auth",)))
    reason = verify_server_chain(
        chain_pem=client_only + pki.inter, trust_pem=pki.root, server_name="localhost", at=AT
    )
    assert reason == "missing serverAuth EKU: certificate CN=etcd-server has [client_auth]"
    reason = verify_client_chain(chain_pem=server_only + pki.inter, trust_pem=pki.root, at=AT)
    assert reason == "missing clientAuth EKU: certificate CN=etcd-server has [server_auth]"
    assert not openssl_ok(tmp_path, "sslserver", trust=pki.root, chain=client_only + pki.inter)
    assert not openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=server_only + pki.inter)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_intermediate_eku_restricts_chain(
    pkis: dict[str, Pki], tmp_path: Path, algorithm: str
) -> None:
    pki = pkis[algorithm]
    inter = issue_certificate(
        attrs.evolve(INTER_REQ, extended_key_usages=("client_auth",)),
        pki.inter_key,
        pki.root,
        pki.root_key,
        NOW,
    )
    leaf = issue_certificate(LEAF_REQ, pki.leaf_key, inter, pki.inter_key, NOW)
    reason = verify_server_chain(
        chain_pem=leaf + inter, trust_pem=pki.root, server_name="localhost", at=AT
    )
    assert reason == "missing serverAuth EKU: issuer CN=test-intermediate-ca has [client_auth]"
    assert verify_client_chain(chain_pem=leaf + inter, trust_pem=pki.root, at=AT) is None
    assert not openssl_ok(tmp_path, "sslserver", trust=pki.root, chain=leaf + inter)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_expired_and_not_yet_valid(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    chain = pki.leaf + pki.inter
    later = NOW + timedelta(days=366)
    reason = verify_client_chain(chain_pem=chain, trust_pem=pki.root, at=later)
    expiry = (NOW + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert reason == (
        f"CN=etcd-server expired at {expiry} (checked at {later.strftime('%Y-%m-%dT%H:%M:%SZ')})"
    )
    assert not openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=chain, at=later)

    earlier = NOW - timedelta(hours=1)
    reason = verify_server_chain(
        chain_pem=chain, trust_pem=pki.root, server_name="localhost", at=earlier
    )
    assert reason is not None
    # Every certificate of the chain starts at NOW; each one is reported.
    assert reason.count("is not valid before") == 3
    assert not openssl_ok(tmp_path, "sslserver", trust=pki.root, chain=chain, at=earlier)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_ca_as_leaf(pkis: dict[str, Pki], algorithm: str) -> None:
    pki = pkis[algorithm]
    ca_leaf = pki.issue_leaf(
        CertificateRequest("sneaky-ca", is_ca=True, dns_names=("localhost",), validity_days=30)
    )
    reason = verify_server_chain(
        chain_pem=ca_leaf + pki.inter, trust_pem=pki.root, server_name="localhost", at=AT
    )
    assert reason == "leaf CN=sneaky-ca is a CA certificate, not an end entity"


def _sign_raw_ca(pki: Pki, name: str) -> tuple[bytes, bytes]:
    """A CA under the path_length=0 intermediate: our issuer refuses to make it, so build it."""
    inter0_req = attrs.evolve(INTER_REQ, path_length=0)
    inter0 = issue_certificate(inter0_req, pki.inter_key, pki.root, pki.root_key, NOW)
    issuer_cert = x509.load_pem_x509_certificate(inter0)
    issuer_key = load_private_key(pki.inter_key)
    subject_key = load_private_key(pki.leaf_key)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, algorithm)
    )
    return inter0, cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("algorithm", NEGATIVE)
def test_path_length_violation(pkis: dict[str, Pki], tmp_path: Path, algorithm: str) -> None:
    pki = pkis[algorithm]
    inter0, sub_ca = _sign_raw_ca(pki, "sub-ca")
    leaf = issue_certificate(LEAF_REQ, pki.root_key, sub_ca, pki.leaf_key, NOW)
    chain = leaf + sub_ca + inter0
    reason = verify_client_chain(chain_pem=chain, trust_pem=pki.root, at=AT)
    assert reason == (
        "issuer CN=test-intermediate-ca allows 0 intermediate(s) below it, chain has 1"
    )
    assert not openssl_ok(tmp_path, "sslclient", trust=pki.root, chain=chain, at=AT)


def test_ed25519_fallback_rejects_a_tampered_signature(pkis: dict[str, Pki]) -> None:
    pki = pkis["ed25519"]
    der = bytearray(
        x509.load_pem_x509_certificate(pki.leaf).public_bytes(serialization.Encoding.DER)
    )
    der[-1] ^= 0x01  # last byte of the signature
    tampered = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    reason = verify_client_chain(chain_pem=tampered + pki.inter, trust_pem=pki.root, at=AT)
    assert reason is not None and "untrusted CA" in reason


def test_mixed_algorithm_chain(pkis: dict[str, Pki], tmp_path: Path) -> None:
    # RSA root signing an Ed25519 intermediate signing a P-256 leaf.
    rsa_pki, ed, ec = pkis["rsa-2048"], pkis["ed25519"], pkis["ecdsa-p256"]
    inter = issue_certificate(INTER_REQ, ed.inter_key, rsa_pki.root, rsa_pki.root_key, NOW)
    leaf = issue_certificate(LEAF_REQ, ec.leaf_key, inter, ed.inter_key, NOW)
    chain = leaf + inter
    assert verify_client_chain(chain_pem=chain, trust_pem=rsa_pki.root, at=AT) is None
    assert openssl_ok(tmp_path, "sslclient", trust=rsa_pki.root, chain=chain, at=AT)
    reason = verify_client_chain(
        chain_pem=chain, trust_pem=rsa_pki.root, at=AT + timedelta(days=400)
    )
    assert reason is not None and "CN=etcd-server expired at" in reason


def test_fallback_rejects_sha1_signed_issuer(pkis: dict[str, Pki], tmp_path: Path) -> None:
    # Ed25519 leaf under an RSA intermediate whose own certificate is signed with SHA-1: the
    # fallback must not wave through what cryptography (and Go) refuse. cryptography cannot
    # even produce SHA-1 signatures any more, so openssl signs the intermediate.
    rsa_pki, ed = pkis["rsa-2048"], pkis["ed25519"]
    (tmp_path / "root.pem").write_bytes(rsa_pki.root)
    (tmp_path / "root.key").write_bytes(rsa_pki.root_key)
    (tmp_path / "inter.key").write_bytes(rsa_pki.inter_key)
    (tmp_path / "ext.cnf").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for args in (
        ["req", "-new", "-key", "inter.key", "-subj", "/CN=sha1-ca", "-out", "inter.csr"],
        [
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-sha1",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            "inter.pem",
        ],
    ):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)
    inter = (tmp_path / "inter.pem").read_bytes()
    assert x509.load_pem_x509_certificate(inter).signature_hash_algorithm.name == "sha1"  # type: ignore[union-attr]
    leaf_req = attrs.evolve(LEAF_REQ, validity_days=10)
    leaf = issue_certificate(leaf_req, ed.leaf_key, inter, rsa_pki.inter_key, NOW)
    at = AT + timedelta(minutes=5)
    reason = verify_client_chain(chain_pem=leaf + inter, trust_pem=rsa_pki.root, at=at)
    assert reason is not None and reason.startswith("certificate signed by an untrusted CA")
    assert "same name and key id, but its signature on CN=sha1-ca does not verify" in reason
    assert "sha1WithRSAEncryption" in reason
    # Control: the same chain with a SHA-256 intermediate passes through the fallback.
    good_inter = issue_certificate(
        INTER_REQ, rsa_pki.inter_key, rsa_pki.root, rsa_pki.root_key, NOW
    )
    good_leaf = issue_certificate(leaf_req, ed.leaf_key, good_inter, rsa_pki.inter_key, NOW)
    assert (
        verify_client_chain(chain_pem=good_leaf + good_inter, trust_pem=rsa_pki.root, at=at) is None
    )


# ---------------------------------------------------------------------------------- inputs


def test_empty_trust_is_a_reason_not_an_error(pkis: dict[str, Pki]) -> None:
    pki = pkis["ecdsa-p256"]
    reason = verify_client_chain(chain_pem=pki.leaf, trust_pem=b"", at=AT)
    assert reason == "nothing is trusted: the trust bundle has no certificates"


@pytest.mark.parametrize(
    ("chain", "trust"),
    [(b"garbage", None), (None, b"garbage"), (b"", None), (None, b"-----BEGIN CERTIFICATE-----\n")],
)
def test_unparseable_input_raises(
    pkis: dict[str, Pki], chain: bytes | None, trust: bytes | None
) -> None:
    pki = pkis["ecdsa-p256"]
    with pytest.raises(PkiError):
        verify_client_chain(
            chain_pem=pki.leaf if chain is None else chain,
            trust_pem=pki.root if trust is None else trust,
            at=AT,
        )


@pytest.mark.parametrize("name", ["", "bad_name", "*.etcd.example", "10.0.0.1/32"])
def test_bad_server_name_raises(pkis: dict[str, Pki], name: str) -> None:
    pki = pkis["ecdsa-p256"]
    with pytest.raises(PkiError):
        verify_server_chain(chain_pem=pki.leaf, trust_pem=pki.root, server_name=name, at=AT)


def test_naive_time_raises(pkis: dict[str, Pki]) -> None:
    pki = pkis["ecdsa-p256"]
    with pytest.raises(PkiError, match="timezone-aware"):
        verify_client_chain(chain_pem=pki.leaf, trust_pem=pki.root, at=AT.replace(tzinfo=None))


def test_bracketed_ipv6_server_name(pkis: dict[str, Pki]) -> None:
    pki = pkis["ecdsa-p256"]
    chain = pki.leaf + pki.inter
    assert (
        verify_server_chain(chain_pem=chain, trust_pem=pki.root, server_name="[fd00::10]", at=AT)
        is None
    )
