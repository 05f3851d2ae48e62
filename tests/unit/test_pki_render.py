"""Renderers: byte-exact, deterministic, and read back correctly by the real kubectl."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest

from pkiform.errors import PkiError
from pkiform.pki import (
    CertificateRequest,
    generate_private_key_pem,
    issue_certificate,
    render_encryption_config,
    render_kubeconfig,
)
from pkiform.pki.render import yaml_scalar

KUBECTL = "/usr/bin/kubectl"
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
SECRET_32 = base64.b64encode(bytes(range(32))).decode()

needs_kubectl = pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl not installed")


@attrs.frozen
class Material:
    ca: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


@pytest.fixture(scope="module")
def material() -> Material:
    ca_key = generate_private_key_pem("ecdsa-p256")
    key = generate_private_key_pem("ecdsa-p256")
    ca = issue_certificate(
        CertificateRequest("kubernetes", is_ca=True, validity_days=3650), ca_key, None, ca_key, NOW
    )
    admin = CertificateRequest(
        "kubernetes-admin",
        organizations=("system:masters",),
        key_usages=("digital_signature", "key_encipherment"),
        extended_key_usages=("client_auth",),
        validity_days=365,
    )
    cert = issue_certificate(admin, key, ca, ca_key, NOW)
    return Material(ca, ca_key, cert, key)


def _kubeconfig(material: Material, **overrides: object) -> bytes:
    args: dict[str, object] = {
        "cluster_name": "kubernetes",
        "server": "https://10.0.0.1:6443",
        "ca_bundle_pem": material.ca,
        "user": "kubernetes-admin",
        "client_cert_pem": material.cert,
        "client_key_pem": material.key,
        "context": "kubernetes-admin@kubernetes",
    }
    args.update(overrides)
    return render_kubeconfig(**args)  # type: ignore[arg-type]


def _kubectl(tmp_path: Path, *args: str) -> str:
    # A clean environment so no ~/.kube/config or $KUBECONFIG can leak into the result.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [KUBECTL, *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _yaml_to_json(tmp_path: Path, document: bytes) -> dict[str, object]:
    """Parse YAML with kubectl's own YAML reader (sigs.k8s.io/yaml), offline."""
    path = tmp_path / "doc.yaml"
    path.write_bytes(document)
    out = _kubectl(
        tmp_path, "patch", "--local", "-f", str(path), "--type", "merge", "-p", "{}", "-o", "json"
    )
    parsed = json.loads(out)
    assert isinstance(parsed, dict)
    return parsed


# ------------------------------------------------------------------------------- kubeconfig


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _expected_kubeconfig(material: Material, namespace_line: str = "") -> bytes:
    return (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        f"    certificate-authority-data: {b64(material.ca)}\n"
        "    server: https://10.0.0.1:6443\n"
        "  name: kubernetes\n"
        "contexts:\n"
        "- context:\n"
        "    cluster: kubernetes\n"
        f"{namespace_line}"
        "    user: kubernetes-admin\n"
        "  name: kubernetes-admin@kubernetes\n"
        "current-context: kubernetes-admin@kubernetes\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        "- name: kubernetes-admin\n"
        "  user:\n"
        f"    client-certificate-data: {b64(material.cert)}\n"
        f"    client-key-data: {b64(material.key)}\n"
    ).encode()


def test_kubeconfig_exact_text(material: Material) -> None:
    assert _kubeconfig(material) == _expected_kubeconfig(material)
    assert _kubeconfig(material, namespace="kube-system") == _expected_kubeconfig(
        material, "    namespace: kube-system\n"
    )


def test_kubeconfig_is_deterministic(material: Material) -> None:
    assert _kubeconfig(material) == _kubeconfig(material)


def test_kubeconfig_is_deterministic_across_processes(material: Material, tmp_path: Path) -> None:
    # A fresh interpreter with another hash seed must produce the same bytes.
    script = (
        "import sys, pickle; from pkiform.pki import render_kubeconfig; "
        "kw = pickle.loads(sys.stdin.buffer.read()); "
        "sys.stdout.buffer.write(render_kubeconfig(**kw))"
    )
    kwargs = {
        "cluster_name": "kubernetes",
        "server": "https://10.0.0.1:6443",
        "ca_bundle_pem": material.ca,
        "user": "kubernetes-admin",
        "client_cert_pem": material.cert,
        "client_key_pem": material.key,
        "context": "kubernetes-admin@kubernetes",
        "namespace": "default",
    }
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=pickle.dumps(kwargs),
        capture_output=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout
    assert out == render_kubeconfig(**kwargs)  # type: ignore[arg-type]


@needs_kubectl
@pytest.mark.parametrize("namespace", [None, "kube-system"])
def test_kubectl_reads_kubeconfig_back_unchanged(
    material: Material, tmp_path: Path, namespace: str | None
) -> None:
    path = tmp_path / "admin.conf"
    data = _kubeconfig(material, namespace=namespace)
    path.write_bytes(data)
    # kubectl re-serialises what it parsed; getting our exact bytes back means the layout is
    # exactly clientcmd's own (i.e. what kubeadm writes).
    assert _kubectl(tmp_path, "config", "view", "--kubeconfig", str(path), "--raw").encode() == data


@needs_kubectl
def test_kubectl_jsonpath_returns_the_values(material: Material, tmp_path: Path) -> None:
    path = tmp_path / "admin.conf"
    path.write_bytes(_kubeconfig(material, namespace="ns1"))

    def get(expr: str) -> str:
        return _kubectl(
            tmp_path, "config", "view", "--kubeconfig", str(path), "--raw", "-o", f"jsonpath={expr}"
        )

    assert base64.b64decode(get("{.clusters[0].cluster.certificate-authority-data}")) == material.ca
    assert base64.b64decode(get("{.users[0].user.client-certificate-data}")) == material.cert
    assert base64.b64decode(get("{.users[0].user.client-key-data}")) == material.key
    assert get("{.clusters[0].cluster.server}") == "https://10.0.0.1:6443"
    assert get("{.clusters[0].name}") == "kubernetes"
    assert get("{.users[0].name}") == "kubernetes-admin"
    assert get("{.contexts[0].name}") == "kubernetes-admin@kubernetes"
    assert get("{.contexts[0].context.cluster}") == "kubernetes"
    assert get("{.contexts[0].context.user}") == "kubernetes-admin"
    assert get("{.contexts[0].context.namespace}") == "ns1"
    assert get("{.current-context}") == "kubernetes-admin@kubernetes"


TRICKY_NAMES = [
    "system:node:worker-1",
    "yes",
    "No",
    "on",
    "OFF",
    "null",
    "~",
    "true",
    "123",
    "0x1F",
    "0777",
    "1:20",
    "1e3",
    ".inf",
    "-dash",
    "a: b",
    "#hash",
    "trailing:",
    "[list]",
    "{map}",
    "*alias",
    "&anchor",
    "!tag",
    "%percent",
    "@at",
    "`tick",
    "'single'",
    '"double"',
    " leading space",
    "trailing space ",
    "tab\tinside",
    "new\nline",
    "back\\slash",
    "émoji ☃ 🚀",
    "2001-12-14",
    "<<",
    "=",
    "|",
    ">",
    "?",
    "a #comment",
]


@needs_kubectl
def test_kubectl_reads_tricky_names(material: Material, tmp_path: Path) -> None:
    path = tmp_path / "tricky.conf"
    for i in range(0, len(TRICKY_NAMES), 4):
        cluster, user, context, namespace = (TRICKY_NAMES + TRICKY_NAMES)[i : i + 4]
        path.write_bytes(
            _kubeconfig(
                material,
                cluster_name=cluster,
                user=user,
                context=context,
                namespace=namespace,
                server=f"https://k8s.example:6443/path?{i}#x",
            )
        )
        config = json.loads(
            _kubectl(tmp_path, "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json")
        )
        assert config["clusters"][0]["name"] == cluster
        assert config["clusters"][0]["cluster"]["server"] == f"https://k8s.example:6443/path?{i}#x"
        assert config["users"][0]["name"] == user
        assert config["contexts"][0]["name"] == context
        assert config["contexts"][0]["context"] == {
            "cluster": cluster,
            "user": user,
            "namespace": namespace,
        }
        assert config["current-context"] == context


@needs_kubectl
def test_yaml_scalar_round_trips_through_kubectl(tmp_path: Path) -> None:
    values = [*TRICKY_NAMES, "plain", "a/b.c@d:e+f=g-h_i", "\x00\x07\x1b\x7f\x85\u2028\ufeff"]
    doc = "apiVersion: v1\nkind: Fake\n" + "".join(
        f"k{i}: {yaml_scalar(v)}\n" for i, v in enumerate(values)
    )
    parsed = _yaml_to_json(tmp_path, doc.encode())
    assert [parsed[f"k{i}"] for i in range(len(values))] == values


def test_yaml_scalar_plain_only_when_safe() -> None:
    assert yaml_scalar("kubernetes-admin@kubernetes") == "kubernetes-admin@kubernetes"
    assert yaml_scalar("https://10.0.0.1:6443") == "https://10.0.0.1:6443"
    assert yaml_scalar("yes") == '"yes"'
    assert yaml_scalar("") == '""'
    assert yaml_scalar('say "hi"\n') == '"say \\"hi\\"\\n"'
    with pytest.raises(PkiError):
        yaml_scalar("\ud800")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cluster_name": ""}, "cluster_name"),
        ({"user": "  "}, "user"),
        ({"context": ""}, "context"),
        ({"namespace": ""}, "namespace"),
        ({"server": "10.0.0.1:6443"}, "http"),
        ({"server": "https://"}, "http"),
        ({"server": "https://a b:6443"}, "http"),
        ({"ca_bundle_pem": b""}, "no certificate"),
        ({"client_cert_pem": b"junk"}, "PEM"),
        ({"client_key_pem": b"junk"}, "private key"),
    ],
)
def test_kubeconfig_rejects_bad_input(
    material: Material, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(PkiError, match=message):
        _kubeconfig(material, **overrides)


def test_kubeconfig_rejects_mismatched_key(material: Material) -> None:
    with pytest.raises(PkiError, match="does not match"):
        _kubeconfig(material, client_key_pem=material.ca_key)


def test_kubeconfig_accepts_client_chain(material: Material) -> None:
    # client-certificate-data may carry the chain; the key must match its first certificate.
    data = _kubeconfig(material, client_cert_pem=material.cert + material.ca)
    assert base64.b64encode(material.cert + material.ca) in data


# ------------------------------------------------------------------------- encryption config


def test_encryption_config_exact_text() -> None:
    assert (
        render_encryption_config(key_name="key1", secret_b64=SECRET_32)
        == (
            "apiVersion: apiserver.config.k8s.io/v1\n"
            "kind: EncryptionConfiguration\n"
            "resources:\n"
            "  - resources:\n"
            "      - secrets\n"
            "    providers:\n"
            "      - aescbc:\n"
            "          keys:\n"
            "            - name: key1\n"
            f"              secret: {SECRET_32}\n"
            "      - identity: {}\n"
        ).encode()
    )


@pytest.mark.parametrize("provider", ["aescbc", "secretbox", "aesgcm"])
def test_encryption_config_is_deterministic(provider: str) -> None:
    kwargs = {"key_name": "key1", "secret_b64": SECRET_32, "provider": provider}
    first = render_encryption_config(**kwargs)
    assert first == render_encryption_config(**kwargs)
    assert f"      - {provider}:\n".encode() in first


@needs_kubectl
@pytest.mark.parametrize("provider", ["aescbc", "secretbox", "aesgcm"])
def test_encryption_config_parses(tmp_path: Path, provider: str) -> None:
    data = render_encryption_config(
        key_name="key-2024",
        secret_b64=SECRET_32,
        resources=["secrets", "configmaps", "*.apps", "*.*"],
        provider=provider,
    )
    assert _yaml_to_json(tmp_path, data) == {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets", "configmaps", "*.apps", "*.*"],
                "providers": [
                    {provider: {"keys": [{"name": "key-2024", "secret": SECRET_32}]}},
                    {"identity": {}},
                ],
            }
        ],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"provider": "kms"}, "unknown encryption provider"),
        ({"secret_b64": "not base64!"}, "base64"),
        ({"secret_b64": base64.b64encode(b"x" * 31).decode()}, "31 bytes"),
        ({"secret_b64": base64.b64encode(b"x" * 16).decode(), "provider": "secretbox"}, "32-byte"),
        ({"key_name": ""}, "key_name"),
        ({"key_name": "a:b"}, "':'"),
        ({"resources": []}, "non-empty"),
        ({"resources": "secrets"}, "non-empty list"),
        ({"resources": ["Secrets"]}, "invalid resource"),
        ({"resources": ["secrets", "secrets"]}, "duplicate"),
    ],
)
def test_encryption_config_rejects_bad_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"key_name": "key1", "secret_b64": SECRET_32, **kwargs}
    with pytest.raises(PkiError, match=message):
        render_encryption_config(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_key_sizes(size: int) -> None:
    secret = base64.b64encode(b"k" * size).decode()
    for provider in ("aescbc", "aesgcm"):
        assert secret.encode() in render_encryption_config(
            key_name="key1", secret_b64=secret, provider=provider
        )
