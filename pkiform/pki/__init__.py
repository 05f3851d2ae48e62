"""Pure key, certificate and config-file rendering library used by the providers.

No file or network I/O happens here: inputs and outputs are bytes, so results can be hashed,
diffed and stored in state, and keygen can run in a process pool.
"""

from pkiform.pki.certs import (
    CertificateInfo,
    CertificateRequest,
    IssuedCertificate,
    certificate_matches_key,
    describe_certificate,
    issue_certificate,
    join_pem_bundle,
    sign_certificate,
    split_pem_bundle,
)
from pkiform.pki.keys import (
    KEY_ALGORITHMS,
    generate_private_key_pem,
    key_algorithm_of,
    load_private_key,
    public_key_pem,
)
from pkiform.pki.render import render_encryption_config, render_kubeconfig
from pkiform.pki.verify import verify_client_chain, verify_server_chain

__all__ = [
    "KEY_ALGORITHMS",
    "CertificateInfo",
    "CertificateRequest",
    "IssuedCertificate",
    "certificate_matches_key",
    "describe_certificate",
    "generate_private_key_pem",
    "issue_certificate",
    "join_pem_bundle",
    "key_algorithm_of",
    "load_private_key",
    "public_key_pem",
    "render_encryption_config",
    "render_kubeconfig",
    "sign_certificate",
    "split_pem_bundle",
    "verify_client_chain",
    "verify_server_chain",
]
