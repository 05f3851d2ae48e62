"""The kubeadm example, end to end on the local target, judged by real tools.

Every certificate is checked with `openssl verify -purpose` against its CA file, and its
subject, usages and SANs against tests/reference/kubeadm_reference.py (taken from kubeadm's
code); every kubeconfig is read back by the real `kubectl`, and its embedded CA must verify
the apiserver certificate.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
import subprocess
from pathlib import Path

import pytest

from pkiform.pki.certs import describe_certificate
from tests.conftest import copy_example, run_cli
from tests.reference import kubeadm_reference as ref

CONTROL = {"control-1": "10.0.0.11", "control-2": "10.0.0.12", "control-3": "10.0.0.13"}
WORKERS = {"worker-1": "10.0.0.21", "worker-2": "10.0.0.22", "worker-3": "10.0.0.23"}
ENDPOINT = "https://10.0.0.10:6443"
PKI = "etc/kubernetes/pki"


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    directory = copy_example("kubeadm", tmp_path_factory.mktemp("kubeadm"))
    first_plan = run_cli("-C", str(directory), "plan", "--detailed-exitcode")
    applied = run_cli("-C", str(directory), "apply", "--auto-approve")
    second_plan = run_cli("-C", str(directory), "plan", "--detailed-exitcode")
    return {"dir": directory, "first_plan": first_plan, "apply": applied,
            "second_plan": second_plan}


def target(applied: dict[str, object], host: str, path: str) -> Path:
    return Path(applied["dir"]) / "target" / host / path  # type: ignore[arg-type]


def substitute(value: str, host: str) -> str:
    return (value.replace("{node_name}", host).replace("{node_ip}", CONTROL.get(host, ""))
            .replace("{service_vip}", "10.96.0.1").replace("{dns_domain}", "cluster.local"))


def openssl_verify(ca: Path, cert: Path, purpose: str) -> None:
    result = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(ca), str(cert)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), (
        f"openssl verify {cert}: {result.stdout}{result.stderr}")


def test_plan_lists_everything_then_apply_then_no_changes(applied: dict) -> None:
    first = applied["first_plan"]
    assert first.code == 2, first.err
    for address in ("ca.kubernetes", "ca.front-proxy", "ca.etcd", "keypair.sa",
                    "cert.apiserver[control-1]", "cert.etcd-peer[control-2]",
                    "cert.apiserver-etcd-client[control-1]", "kubeconfig.kubelet[worker-3]",
                    "file.etcd-peer-key[control-3]", "service.etcd[control-1]"):
        assert address in first.out
    assert "Plan: 142 to create, 0 to update, 0 to replace, 0 to delete, 18 to restart." \
        in first.out
    assert "PRIVATE KEY" not in first.out
    apply = applied["apply"]
    assert apply.code == 0, apply.err
    assert "restart etcd.service on control-1: skipped, local target" in apply.out
    assert "PRIVATE KEY" not in apply.out + apply.err
    second = applied["second_plan"]
    assert second.code == 0, second.out + second.err
    assert "No changes." in second.out


@pytest.mark.parametrize("entry", [c for c in ref.CERTS if c["name"] != "sa"],
                         ids=lambda c: c["name"])
@pytest.mark.parametrize("host", sorted(CONTROL))
def test_certificate_matches_kubeadm(applied: dict, entry: dict, host: str) -> None:
    cert_path = target(applied, host, f"{PKI}/{entry['cert_file']}")
    key_path = target(applied, host, f"{PKI}/{entry['key_file']}")
    assert stat.S_IMODE(cert_path.stat().st_mode) == entry["cert_mode"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    info = describe_certificate(cert_path.read_bytes())
    assert info.subject_common_name == substitute(entry["subject_cn"], host)
    assert list(info.subject_organizations) == entry["subject_o"]
    assert set(info.extended_key_usages) == set(entry["ext_key_usage"])
    assert set(info.key_usages) == set(entry["key_usage"])
    assert info.is_ca == entry["is_ca"]
    expected_dns = {substitute(d, host) for d in entry["san_dns"]}
    expected_ip = {str(ipaddress.ip_address(substitute(i, host))) for i in entry["san_ip"]}
    if entry["name"] == "apiserver":
        expected_ip.add("10.0.0.10")  # the control-plane endpoint's host (an IP here)
    assert set(info.dns_names) == expected_dns
    assert {str(ipaddress.ip_address(i)) for i in info.ip_addresses} == expected_ip
    if entry["signer"] is None:
        openssl_verify(cert_path, cert_path, "any")
    else:
        signer = ref.CERTS_BY_NAME[entry["signer"]]
        ca_path = target(applied, host, f"{PKI}/{signer['cert_file']}")
        for purpose in {"server_auth": "sslserver", "client_auth": "sslclient"}.values():
            wanted = "server_auth" if purpose == "sslserver" else "client_auth"
            if wanted in entry["ext_key_usage"]:
                openssl_verify(ca_path, cert_path, purpose)


def test_shared_cas_are_identical_on_every_control_plane_node(applied: dict) -> None:
    for name in ("ca.crt", "ca.key", "front-proxy-ca.crt", "etcd/ca.crt", "sa.key", "sa.pub"):
        contents = {target(applied, h, f"{PKI}/{name}").read_bytes() for h in CONTROL}
        assert len(contents) == 1, name


def test_service_account_keypair(applied: dict) -> None:
    key = target(applied, "control-1", f"{PKI}/sa.key")
    pub = target(applied, "control-1", f"{PKI}/sa.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o600
    derived = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout"],
                             capture_output=True, check=True).stdout
    assert derived == pub.read_bytes()


def test_workers_get_ca_and_kubelet_conf_but_no_keys_of_the_control_plane(applied: dict) -> None:
    for worker in WORKERS:
        files = sorted(p.relative_to(target(applied, worker, "")).as_posix()
                       for p in target(applied, worker, "").rglob("*") if p.is_file())
        assert files == ["etc/kubernetes/kubelet.conf", "etc/kubernetes/pki/ca.crt"]


def kubectl_view(path: Path) -> dict:
    result = subprocess.run(["kubectl", "config", "view", "--kubeconfig", str(path), "--raw",
                             "-o", "json"], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize("entry", ref.KUBECONFIGS, ids=lambda k: k["file"])
def test_kubeconfigs_read_by_kubectl(applied: dict, entry: dict, tmp_path: Path) -> None:
    hosts = sorted(CONTROL)
    if entry["file"] == "super-admin.conf":
        hosts = ["control-1"]
    elif entry["file"] == "kubelet.conf":
        hosts = sorted(CONTROL) + sorted(WORKERS)
    for host in hosts:
        path = target(applied, host, f"etc/kubernetes/{entry['file']}")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        view = kubectl_view(path)
        user = substitute(entry["user_name"], host).replace("{node_name}", host)
        assert view["current-context"] == f"{user}@kubernetes"
        assert view["contexts"][0]["context"] == {"cluster": "kubernetes", "user": user}
        cluster = view["clusters"][0]["cluster"]
        local = f"https://{CONTROL.get(host)}:6443"
        expected_server = local if entry["file"] in ("controller-manager.conf",
                                                     "scheduler.conf") else ENDPOINT
        assert cluster["server"] == expected_server
        ca_file = tmp_path / f"{host}-ca.crt"
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        # The embedded CA must verify the apiserver certificate the client will be shown.
        openssl_verify(ca_file, target(applied, "control-1", f"{PKI}/apiserver.crt"),
                       "sslserver")
        client_pem = base64.b64decode(view["users"][0]["user"]["client-certificate-data"])
        info = describe_certificate(client_pem)
        assert info.subject_common_name == entry["client_cn"].replace("{node_name}", host)
        assert list(info.subject_organizations) == entry["client_o"]
        client_file = tmp_path / f"{host}-client.crt"
        client_file.write_bytes(client_pem)
        openssl_verify(ca_file, client_file, "sslclient")


def test_state_holds_no_plaintext_key_and_is_private(applied: dict) -> None:
    state_dir = Path(applied["dir"]) / "state"
    for path in state_dir.iterdir():
        if path.name.endswith(".lock"):
            continue
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"PRIVATE KEY" not in path.read_bytes(), path
        assert b"client-key-data" not in path.read_bytes(), path
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def test_plan_json_is_stable_and_names_every_change(applied: dict, tmp_path: Path) -> None:
    result = run_cli("-C", str(applied["dir"]), "plan", "--json", "--replace",
                     "cert.apiserver[control-2]")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["format_version"] == "1"
    changes = {c["address"]: c for c in document["changes"]}
    assert changes["cert.apiserver[control-2]"]["action"] == "replace"
    assert changes["file.apiserver-key[control-2]"]["action"] == "update"
    assert changes["service.kube-apiserver[control-2]"]["action"] == "restart"
    assert set(changes) == {"cert.apiserver[control-2]", "file.apiserver-crt[control-2]",
                            "file.apiserver-key[control-2]", "service.kube-apiserver[control-2]"}
    for change in document["changes"]:
        assert set(change) >= {"address", "action", "reason", "phase"}
