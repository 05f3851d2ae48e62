"""The hard-way and five-ca examples, applied for real and checked with real tools.

Each example is copied to a temporary directory, validated, applied (local transport: files
land under target/<host>/...) and planned again; then every certificate is verified with
``openssl verify`` against the CA file that sits beside it on the same host, every kubeconfig is
read back with ``kubectl config view``, and the subjects/usages are compared with the seeds.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pkiform.cli import main
from pkiform.config import load_config
from pkiform.workspace import default_presets, default_registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OPENSSL = shutil.which("openssl")
KUBECTL = shutil.which("kubectl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

CONTROL = ("control0", "control1", "control2")
WORKERS = ("worker0", "worker1", "worker2")
CP = ("kube01", "kube02", "kube03")

# Seed 002 (docs/04_Bootstrapping_Kubernetes_Security.md): the *-csr.json files.
# CN and O of every certificate; C/L/OU/ST are not modelled (the seed calls them arbitrary).
HARD_WAY_SUBJECTS = {
    "ca": ("Kubernetes", "Kubernetes"),                       # ca-csr.json
    "kubernetes": ("kubernetes", "Kubernetes"),               # kubernetes-csr.json
    "admin": ("admin", "system:masters"),                     # admin-csr.json
    "node": ("system:node:{vm}", "system:nodes"),             # the controlX/workerX loop
    "kube-scheduler": ("system:kube-scheduler", "system:kube-scheduler"),
    "kube-controller-manager": ("system:kube-controller-manager",
                                "system:kube-controller-manager"),
    "kube-proxy": ("system:kube-proxy", "system:node-proxier"),
    "service-account": ("service-accounts", "Kubernetes"),   # service-account-csr.json
}
# kubernetes-csr.json "hosts", verbatim.
HARD_WAY_API_SANS = {
    "kubernetes", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster", "kubernetes.default.svc.cluster.local", "10.32.0.1",
    "kubernetes.kubenet", "192.168.1.21", "control0", "control0.kubenet", "192.168.1.11",
    "control1", "control1.kubenet", "192.168.1.12", "control2", "control2.kubenet",
    "192.168.1.13", "127.0.0.1",
}
HARD_WAY_IPS = dict(zip(CONTROL + WORKERS, (f"192.168.1.{10 + i}" for i in range(1, 7)),
                        strict=True))
# deployauth.sh's upload set, at the places chapters 05/06 of the same guide copy it to:
# path on the host → what it holds: a HARD_WAY_SUBJECTS key (for a kubeconfig, its client's),
# "key" or "encryption".
HARD_WAY_CONTROL_FILES = {
    "etc/etcd/ca.pem": "ca",
    "etc/etcd/kubernetes.pem": "kubernetes",
    "etc/etcd/kubernetes-key.pem": "key",
    "var/lib/kubernetes/ca.pem": "ca",
    "var/lib/kubernetes/ca-key.pem": "key",
    "var/lib/kubernetes/kubernetes.pem": "kubernetes",
    "var/lib/kubernetes/kubernetes-key.pem": "key",
    "var/lib/kubernetes/service-account.pem": "service-account",
    "var/lib/kubernetes/service-account-key.pem": "key",
    "var/lib/kubernetes/encryption-config.yaml": "encryption",
    "var/lib/kubernetes/kube-controller-manager.kubeconfig": "kube-controller-manager",
    "var/lib/kubernetes/kube-scheduler.kubeconfig": "kube-scheduler",
    "home/ubuntu/admin.kubeconfig": "admin",
}
HARD_WAY_NODE_FILES = {
    "var/lib/kubernetes/ca.pem": "ca",
    "var/lib/kubelet/{vm}.pem": "node",
    "var/lib/kubelet/{vm}-key.pem": "key",
    "var/lib/kubelet/kubeconfig": "node",
    "var/lib/kube-proxy/kubeconfig": "kube-proxy",
}

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
# Seed 000: the usages of each keypair (slides 18, 24, 30, 48), by the seed's file name.
FIVE_CA_USAGES = {
    "etcd_peer.pem": {SERVER, CLIENT},
    "etcd_server.pem": {SERVER},
    "etcd_client.pem": {CLIENT},
    "apiserver.pem": {SERVER},
    "controller_manager.pem": {SERVER},
    "scheduler.pem": {SERVER},
    "kubelet_client.pem": {CLIENT},
    "front_proxy_client.pem": {CLIENT},
}
# ... and which CA signs it (slides 18, 24, 30, 48), as the file the component trusts.
FIVE_CA_SIGNERS = {
    "etcd_peer.pem": "ca-etcd_peer.pem",
    "etcd_server.pem": "ca-etcd_server.pem",
    "etcd_client.pem": "ca-etcd_server.pem",
    "apiserver.pem": "ca-cluster_signing.pem",
    "controller_manager.pem": "ca-cluster_signing.pem",
    "scheduler.pem": "ca-cluster_signing.pem",
    "kubelet_client.pem": "ca-cluster_signing.pem",
    "front_proxy_client.pem": "ca-requestheader.pem",
}
FIVE_CA_CAS = ("ca-etcd_peer.pem", "ca-etcd_server.pem", "ca-cluster_signing.pem",
               "ca-requestheader.pem")


@attrs.frozen
class Run:
    code: int
    out: str
    err: str


@attrs.frozen
class Applied:
    directory: Path
    validate: Run
    apply: Run
    replan: Run

    def host(self, name: str) -> Path:
        return self.directory / "target" / name


def run(*argv: str) -> Run:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return Run(code, out.getvalue(), err.getvalue())


def _apply(name: str, tmp_path_factory: pytest.TempPathFactory) -> Applied:
    """Validate, apply and re-plan one example in a scratch copy."""
    base = tmp_path_factory.mktemp(name)
    directory = base / name
    shutil.copytree(EXAMPLES / name, directory,
                    ignore=shutil.ignore_patterns("state", "target", "*.pkiform-tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(base / "xdg"))
        mp.delenv("PKIFORM_DEBUG", raising=False)
        validate = run("-C", str(directory), "validate")
        apply = run("-C", str(directory), "apply", "--auto-approve")
        replan = run("-C", str(directory), "plan", "--detailed-exitcode")
    return Applied(directory, validate, apply, replan)


# Applied once per module: RSA-2048 key generation is most of the run time.
@pytest.fixture(scope="module")
def hard_way(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    return _apply("hard-way", tmp_path_factory)


@pytest.fixture(scope="module")
def five_ca(tmp_path_factory: pytest.TempPathFactory) -> Applied:
    return _apply("five-ca", tmp_path_factory)


@pytest.fixture(params=["hard_way", "five_ca"])
def applied(request: pytest.FixtureRequest) -> Applied:
    return request.getfixturevalue(request.param)


def example(applied: Applied) -> str:
    return applied.directory.name


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_bundle(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def subject(cert: x509.Certificate) -> tuple[str, str]:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (str(cns[0].value) if cns else "", ",".join(str(o.value) for o in orgs))


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def sans(cert: x509.Certificate) -> set[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def openssl_verify(cert: Path, ca_file: Path, purpose: str, *extra: str) -> None:
    assert OPENSSL is not None
    result = subprocess.run(
        [OPENSSL, "verify", "-purpose", purpose, *extra, "-CAfile", str(ca_file), str(cert)],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), (
        f"openssl verify -purpose {purpose} {' '.join(extra)} -CAfile {ca_file} {cert}:\n"
        f"{result.stdout}{result.stderr}")


def purposes(cert: x509.Certificate) -> list[str]:
    """openssl purposes matching the certificate's EKUs (none → both)."""
    ekus = usages(cert)
    chosen = [p for p, oid in (("sslserver", SERVER), ("sslclient", CLIENT))
              if not ekus or oid in ekus]
    assert chosen, f"{cert.subject.rfc4514_string()} has neither serverAuth nor clientAuth"
    return chosen


def kubectl_view(path: Path) -> dict:
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "config", "view", "--kubeconfig", str(path), "-o", "json",
                             "--raw"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"kubectl config view {path}: {result.stderr}"
    return json.loads(result.stdout)


def host_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not _engine_file(p)}


def _engine_file(path: Path) -> bool:
    """The local transport's rollback copies and temporary files."""
    return path.name.endswith((".pkiform-backup", ".pkiform-tmp"))


# -- the run itself -------------------------------------------------------------------------


def test_validate_apply_and_no_changes_on_replan(applied: Applied) -> None:
    expected = {"hard-way": "(114 resources, 6 hosts, 12 tls edges)",
                "five-ca": "(108 resources, 5 hosts, 5 tls edges)"}[example(applied)]
    assert applied.validate.code == 0, applied.validate.err
    assert f"The configuration is valid {expected}" in applied.validate.out
    assert applied.apply.code == 0, applied.apply.err + applied.apply.out[-2000:]
    assert "Apply complete!" in applied.apply.out
    assert " 0 failed" in applied.apply.out
    assert "trust:" in applied.apply.out and "verified" in applied.apply.out
    assert applied.replan.code == 0, applied.replan.err + applied.replan.out
    assert "No changes." in applied.replan.out


# -- every certificate verifies with openssl against the CA beside it ------------------------


@needs_openssl
def test_every_certificate_verifies_with_openssl(applied: Applied) -> None:
    checked = 0
    for host_dir in sorted((applied.directory / "target").iterdir()):
        pems = [p for p in sorted(host_dir.rglob("*.pem")) if b"CERTIFICATE" in p.read_bytes()]
        cas = [p for p in pems if is_ca(load_cert(p))]
        for pem in pems:
            if pem in cas:
                continue
            cert = load_cert(pem)
            issuers = [ca for ca in cas if load_bundle(ca.read_bytes())[0].subject == cert.issuer]
            assert issuers, f"{pem}: no file on {host_dir.name} holds its CA ({cert.issuer})"
            if example(applied) == "five-ca":
                assert {ca.name for ca in issuers} == {FIVE_CA_SIGNERS[pem.name]}, pem
            for purpose in purposes(cert):
                openssl_verify(pem, issuers[0], purpose)
            checked += 1
    # hard-way: kubernetes.pem twice + service-account.pem + node cert on each control VM,
    # node cert on each worker; five-ca: 8 keypairs on each control-plane host.
    assert checked == {"hard-way": 3 * 4 + 3, "five-ca": 3 * 8}[example(applied)]


@needs_openssl
def test_servers_verify_for_the_names_clients_dial(applied: Applied) -> None:
    if example(applied) == "hard-way":
        ca = applied.host("control0") / "var/lib/kubernetes/ca.pem"
        api = applied.host("control0") / "var/lib/kubernetes/kubernetes.pem"
        for name in ("kubernetes", "kubernetes.kubenet", "kubernetes.default.svc"):
            openssl_verify(api, ca, "sslserver", "-verify_hostname", name)
        for ip in ("192.168.1.21", "192.168.1.11", "10.32.0.1", "127.0.0.1"):
            openssl_verify(api, ca, "sslserver", "-verify_ip", ip)
        for vm, ip in HARD_WAY_IPS.items():  # kube-apiserver → kubelet dials the node's IP
            openssl_verify(applied.host(vm) / f"var/lib/kubelet/{vm}.pem", ca, "sslserver",
                           "-verify_ip", ip)
    else:
        for i, host in enumerate(CP, start=1):
            ssl = applied.host(host) / "etc/kubernetes/ssl"
            for cert, ca in (("etcd_server.pem", "ca-etcd_server.pem"),
                             ("etcd_peer.pem", "ca-etcd_peer.pem"),
                             ("apiserver.pem", "ca-cluster_signing.pem")):
                openssl_verify(ssl / cert, ssl / ca, "sslserver", "-verify_ip", f"192.168.0.{i}")
            openssl_verify(ssl / "apiserver.pem", ssl / "ca-cluster_signing.pem", "sslserver",
                           "-verify_hostname", "kubernetes.default.svc")


# -- subjects and usages from the seeds -------------------------------------------------------


def test_hard_way_files_subjects_and_sans_match_seed_002(hard_way: Applied) -> None:
    applied = hard_way
    for vm in CONTROL + WORKERS:
        root = applied.host(vm)
        expected = {k.format(vm=vm): v for k, v in HARD_WAY_NODE_FILES.items()}
        if vm in CONTROL:
            expected |= HARD_WAY_CONTROL_FILES
        assert host_files(root) == set(expected), vm
        for rel, what in expected.items():
            if not rel.endswith(".pem") or what == "key":
                continue
            cert = load_cert(root / rel)
            cn, org = HARD_WAY_SUBJECTS[what]
            assert subject(cert) == (cn.format(vm=vm), org), f"{vm}:{rel}"
            if what == "ca":
                continue
            # cfssl profile "kubernetes": signing, key encipherment, server auth, client auth.
            assert usages(cert) == {SERVER, CLIENT}, f"{vm}:{rel}"
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            assert ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign
        node = load_cert(root / f"var/lib/kubelet/{vm}.pem")
        assert sans(node) == {vm, f"{vm}.kubenet", HARD_WAY_IPS[vm]}
    api = load_cert(applied.host("control0") / "var/lib/kubernetes/kubernetes.pem")
    assert sans(api) == HARD_WAY_API_SANS
    # One kubernetes cert for etcd and the apiserver on every control VM (the seed's choice).
    pems = {(applied.host(vm) / p).read_bytes() for vm in CONTROL
            for p in ("etc/etcd/kubernetes.pem", "var/lib/kubernetes/kubernetes.pem")}
    assert len(pems) == 1


def test_five_ca_usages_match_seed_000(five_ca: Applied) -> None:
    applied = five_ca
    for host in CP:
        ssl = applied.host(host) / "etc/kubernetes/ssl"
        for name, wanted in FIVE_CA_USAGES.items():
            assert usages(load_cert(ssl / name)) == wanted, f"{host}:{name}"
        subjects = {subject(load_cert(ssl / ca))[0] for ca in FIVE_CA_CAS}
        assert len(subjects) == 4, "four distinct X.509 CAs"
        assert subject(load_cert(ssl / "front_proxy_client.pem"))[0] == "front-proxy-client"
        # The controller-manager signs with the first cert of its file: it must match the key.
        signing = load_bundle((ssl / "ca-cluster_signing.pem").read_bytes())[0]
        key = _private((ssl / "ca-cluster_signing-key.pem").read_bytes())
        assert _spki(signing.public_key()) == _spki(key.public_key())
        # --service-account-key-file holds the public half of the signing key.
        public = serialization.load_pem_public_key((ssl / "service_account_ca.pem").read_bytes())
        private = _private((ssl / "service_account_ca-key.pem").read_bytes())
        assert _spki(public) == _spki(private.public_key())
    for worker in ("kube04", "kube05"):
        assert host_files(applied.host(worker)) == {"etc/kubernetes/ssl/ca-cluster_signing.pem"}


def _private(data: bytes) -> Any:
    # Skipping RSA's slow consistency check: only the public half is compared.
    return serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)


def _spki(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


# -- modes, key/cert pairs --------------------------------------------------------------------


def test_secrets_are_0600_and_keys_match_their_certs(applied: Applied) -> None:
    keys = 0
    for path in sorted((applied.directory / "target").rglob("*")):
        if not path.is_file() or _engine_file(path):
            continue
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
        secret = (b"PRIVATE KEY" in data or b"client-key-data" in data
                  or path.name == "encryption-config.yaml")
        assert mode == (0o600 if secret else 0o644), f"{path}: {mode:04o}"
        if b"PRIVATE KEY" in data:
            keys += 1
            cert_path = path.with_name(path.name.replace("-key.pem", ".pem"))
            assert cert_path != path and cert_path.exists(), path
            private = _private(data)
            cert_data = cert_path.read_bytes()
            public = (load_bundle(cert_data)[0].public_key() if b"CERTIFICATE" in cert_data
                      else serialization.load_pem_public_key(cert_data))
            assert _spki(public) == _spki(private.public_key()), path
    assert keys == {"hard-way": 3 * 5 + 3, "five-ca": 3 * 10}[example(applied)]


# -- kubeconfigs ------------------------------------------------------------------------------


@needs_kubectl
@needs_openssl
def test_hard_way_kubeconfigs_parse_and_trust_the_apiserver(hard_way: Applied,
                                                           tmp_path: Path) -> None:
    api = hard_way.host("control0") / "var/lib/kubernetes/kubernetes.pem"
    ca = hard_way.host("control0") / "var/lib/kubernetes/ca.pem"
    kubeconfigs = []
    for vm in CONTROL + WORKERS:
        files = dict(HARD_WAY_NODE_FILES) | (HARD_WAY_CONTROL_FILES if vm in CONTROL else {})
        kubeconfigs += [(vm, rel, what) for rel, what in files.items() if "kubeconfig" in rel]
    assert len(kubeconfigs) == 3 * 5 + 3 * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        views = list(pool.map(lambda k: kubectl_view(hard_way.host(k[0]) / k[1]), kubeconfigs))
    embedded_cas: set[bytes] = set()
    clients: set[bytes] = set()
    for (vm, rel, what), config in zip(kubeconfigs, views, strict=True):
        # genkubeconfig in seed 002: cluster kubenet, context default, one user.
        assert config["current-context"] == "default", rel
        (cluster,) = config["clusters"]
        (user,) = config["users"]
        (context,) = config["contexts"]
        assert cluster["name"] == "kubenet"
        assert cluster["cluster"]["server"] == "https://kubernetes:6443"
        assert context["context"] == {"cluster": "kubenet", "user": user["name"]}
        cn, org = HARD_WAY_SUBJECTS[what]
        assert user["name"] == cn.format(vm=vm), f"{vm}:{rel}"
        embedded_cas.add(base64.b64decode(cluster["cluster"]["certificate-authority-data"]))
        client_pem = base64.b64decode(user["user"]["client-certificate-data"])
        client = x509.load_pem_x509_certificate(client_pem)
        assert subject(client) == (cn.format(vm=vm), org), f"{vm}:{rel}"
        private = _private(base64.b64decode(user["user"]["client-key-data"]))
        assert _spki(private.public_key()) == _spki(client.public_key()), f"{vm}:{rel}"
        clients.add(client_pem)
    # Every kubeconfig embeds the cluster CA, which verifies the apiserver for the name in the
    # server URL; every client cert verifies against the apiserver's --client-ca-file.
    assert embedded_cas == {ca.read_bytes()}
    for i, pem in enumerate(sorted(embedded_cas)):
        ca_file = tmp_path / f"embedded-ca-{i}.pem"
        ca_file.write_bytes(pem)
        openssl_verify(api, ca_file, "sslserver", "-verify_hostname", "kubernetes")
    assert len(clients) == 4 + 6  # admin, scheduler, controller-manager, proxy; 6 nodes
    for i, pem in enumerate(sorted(clients)):
        client_file = tmp_path / f"client-{i}.pem"
        client_file.write_bytes(pem)
        openssl_verify(client_file, ca, "sslclient")


# -- the encryption config --------------------------------------------------------------------


def test_hard_way_encryption_config(hard_way: Applied) -> None:
    applied = hard_way
    contents = {(applied.host(vm) / "var/lib/kubernetes/encryption-config.yaml").read_text()
                for vm in CONTROL}
    assert len(contents) == 1, "the same key on every apiserver"
    (text,) = contents
    lines = text.splitlines()
    assert "kind: EncryptionConfiguration" in lines
    assert any(re.fullmatch(r"apiVersion: (apiserver\.config\.k8s\.io/)?v1", line)
               for line in lines)
    stripped = [line.strip() for line in lines]
    # genenckey.sh: resources [secrets], aescbc with one key, then identity.
    assert "- secrets" in stripped
    assert stripped.index("- aescbc:") < stripped.index("- identity: {}")
    secrets = [m.group(1) for line in lines
               if (m := re.fullmatch(r'\s*secret:\s*"?([A-Za-z0-9+/]+={0,2})"?\s*', line))]
    assert len(secrets) == 1
    assert len(base64.b64decode(secrets[0], validate=True)) == 32
    assert any(re.fullmatch(r"\s*- name: \S+", line) for line in lines)


# -- preset parameters (no key generation) ----------------------------------------------------


def _hard_way_dir(tmp_path: Path, preset: str, hosts: str | None = None) -> Path:
    """The hard-way example with its [preset.hard-way] table (and maybe its hosts) replaced."""
    text = (EXAMPLES / "hard-way" / "pkiform.toml").read_text()
    head, rest = text.split("[preset.hard-way]\n")
    example_hosts = rest[rest.index("[hosts."):]
    text = f"{head}[preset.hard-way]\n{preset}\n\n{example_hosts if hosts is None else hosts}"
    (tmp_path / "pkiform.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(("preset", "hosts", "message"), [
    ("bogus = 1", None, "unknown parameter 'bogus'"),
    ('service_cidr = "nope"', None, "is not a usable service CIDR"),
    ('api_server = "http://kubernetes:6443"', None, "is not an https:// URL"),
    ('units = { etcdx = "e.service" }', None, "unknown component 'etcdx'"),
    ("", '[hosts.w]\naddress = "10.0.0.1"\ngroups = ["worker"]\n', "no host is in group"),
    ("", '[hosts.c]\naddress = "10.0.0.1"\ngroups = ["control"]\n[hosts.x]\n'
         'address = "10.0.0.2"\n', "neither 'control' nor 'worker'"),
    ("", '[hosts.c]\naddress = "c.example"\ngroups = ["control"]\n', "IP SANs"),
])
def test_hard_way_parameter_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   preset: str, hosts: str | None, message: str) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    directory = _hard_way_dir(tmp_path, preset, hosts)
    result = run("-C", str(directory), "validate")
    assert result.code == 1
    assert message in result.err
    assert "preset.hard-way" in result.err


def test_hard_way_stage_in_home_declares_the_seed_upload_set(tmp_path: Path) -> None:
    directory = _hard_way_dir(tmp_path, "stage_in_home = true")
    config = load_config(directory, default_registry(), default_presets())
    homes: dict[str, set[str]] = {}
    for spec in config.resources.values():
        if spec.kind == "file" and spec["path"].startswith("/home/ubuntu/"):
            homes.setdefault(spec.host.name, set()).add(spec["path"].rpartition("/")[2])
    # deployauth.sh in seed 002: what scp puts into ~ubuntu on each VM, verbatim.
    control = {"ca.pem", "ca-key.pem", "kubernetes-key.pem", "kubernetes.pem",
               "service-account-key.pem", "service-account.pem", "admin.kubeconfig",
               "kube-controller-manager.kubeconfig", "kube-scheduler.kubeconfig",
               "encryption-config.yaml", "{vm}.pem", "{vm}-key.pem", "{vm}.kubeconfig",
               "kube-proxy.kubeconfig"}
    worker = {"ca.pem", "{vm}.pem", "{vm}-key.pem", "{vm}.kubeconfig", "kube-proxy.kubeconfig"}
    assert homes == {vm: {f.format(vm=vm) for f in (control if vm in CONTROL else worker)}
                     for vm in CONTROL + WORKERS}
