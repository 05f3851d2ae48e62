"""render_kubeconfig memoizes its checks on the exact bytes: a cached verdict is never reused
for another certificate/key pair, and a refused input is refused every time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pkiform.errors import PkiError
from pkiform.pki import (
    CertificateRequest,
    generate_private_key_pem,
    issue_certificate,
    render_kubeconfig,
)

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def render(ca: bytes, cert: bytes, key: bytes) -> bytes:
    return render_kubeconfig(cluster_name="kubernetes", server="https://10.0.0.1:6443",
                             ca_bundle_pem=ca, user="admin", client_cert_pem=cert,
                             client_key_pem=key, context="admin@kubernetes")


def test_a_verdict_belongs_to_its_own_pair_and_refusals_repeat() -> None:
    ca_key = generate_private_key_pem("ecdsa-p256")
    ca = issue_certificate(CertificateRequest("ca", is_ca=True, validity_days=10), ca_key,
                           None, ca_key, NOW)
    key, other_key = generate_private_key_pem("ecdsa-p256"), generate_private_key_pem("ed25519")
    cert = issue_certificate(CertificateRequest("admin", validity_days=5), key, ca, ca_key, NOW)
    assert render(ca, cert, key) == render(ca, cert, key)
    for _ in range(2):
        with pytest.raises(PkiError, match="does not match"):
            render(ca, cert, other_key)
        with pytest.raises(PkiError, match="ca_bundle_pem contains no certificate"):
            render(b"", cert, key)
        with pytest.raises(PkiError, match="client_cert_pem contains no certificate"):
            render(ca, b"", key)
        with pytest.raises(PkiError, match="truncated or malformed"):
            render(ca, cert[:-30], key)
        with pytest.raises(PkiError, match="cannot parse private key"):
            render(ca, cert, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    # The same bytes as a bytearray: same verdict, same output.
    assert render(bytearray(ca), bytearray(cert), bytearray(key)) == render(ca, cert, key)
