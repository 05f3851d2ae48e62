"""Every unit a preset restarts is gated by that component's own health endpoint.

The expected endpoints come from the sources, not from the presets' constants: kubeadm's from
tests/reference/kubeadm_reference.py (HEALTH_ENDPOINTS, read from kubeadm's code), the hard
way's from chapters 05/06 of ghik/kubernetes-the-harder-way (HARD_WAY_HEALTH below). Each
check is read from the loaded config (every instance on every host), and the curl commands are
run for real against a local server that answers on the expected path: 200 passes, 503 and
a refused connection fail.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shlex
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pkiform.config import load_config
from pkiform.model import ResourceSpec
from pkiform.presets import hardway, kubeadm
from pkiform.workspace import default_presets, default_registry
from tests.conftest import EXAMPLES
from tests.reference import kubeadm_reference as ref

CURL = "/usr/bin/curl"
needs_curl = pytest.mark.skipif(not Path(CURL).exists(), reason="curl is not installed")

# Kubernetes the Hard Way as ghik/kubernetes-the-harder-way's units leave each component:
# 05_Installing_Kubernetes_Control_Plane.md: the apiserver's own check (curl --cacert
# /var/lib/kubernetes/ca.pem https://127.0.0.1:6443/healthz, also ldirectord's request);
# kube-controller-manager --bind-address=0.0.0.0 and kube-scheduler --config with no bind
# address: default secure ports 10257 / 10259, self-signed (no --tls-cert-file).
# 06_Spinning_up_Worker_Nodes.md: kubelet-config.yaml and kube-proxy-config.yaml set no healthz
# address, so the kubelet's 127.0.0.1:10248 and kube-proxy's 0.0.0.0:10256 (plain HTTP).
HARD_WAY_HEALTH = {
    "kube-apiserver": "https://127.0.0.1:6443/healthz",
    "kube-controller-manager": "https://127.0.0.1:10257/healthz",
    "kube-scheduler": "https://127.0.0.1:10259/healthz",
    "kubelet": "http://127.0.0.1:10248/healthz",
    "kube-proxy": "http://127.0.0.1:10256/healthz",
}
URL_RE = re.compile(r"https?://\S+")


def _config_dir(tmp_path: Path, example: str, preset_lines: str = "") -> Path:
    """The example's pkiform.toml with extra lines in its [preset.*] table."""
    text = (EXAMPLES / example / "pkiform.toml").read_text()
    if preset_lines:
        head, sep, rest = text.partition(f"[preset.{example}]\n")
        assert sep, example
        text = f"{head}{sep}{preset_lines}\n{rest}"
    (tmp_path / "pkiform.toml").write_text(text)
    return tmp_path


def _services(directory: Path) -> tuple[list[ResourceSpec], dict[tuple[str, str], ResourceSpec]]:
    """(every service instance, declared files by (host, path))."""
    config = load_config(directory, default_registry(), default_presets())
    specs = list(config.resources.values())
    services = [s for s in specs if s.kind == "service"]
    files = {(s.host.name, s["path"]): s for s in specs if s.kind == "file"}
    return services, files


def _component(spec: ResourceSpec) -> str:
    return spec.address.name


def _curl_url(command: str) -> str:
    """The one URL a curl check asks; it must fail on HTTP errors and not hang."""
    argv = shlex.split(command)
    assert argv[0] == "curl", command
    flags = "".join(a[1:] for a in argv if re.fullmatch(r"-[a-zA-Z]+", a))
    assert "f" in flags, f"without -f curl exits 0 on a 5xx: {command}"
    assert "--max-time" in argv, command
    urls = URL_RE.findall(command)
    assert len(urls) == 1, command
    return urls[0]


def _option(command: str, name: str) -> str:
    argv = shlex.split(command)
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(f"{name}="):
            return arg.partition("=")[2]
    raise AssertionError(f"{name} not in {command}")


# -- kubeadm -------------------------------------------------------------------------------


def test_kubeadm_every_restarted_unit_has_kubeadms_health_check(tmp_path: Path) -> None:
    services, _ = _services(_config_dir(tmp_path, "kubeadm"))
    components = {_component(s) for s in services}
    assert components == set(ref.HEALTH_ENDPOINTS)  # a new unit needs an entry (and a check)
    for spec in services:
        command = spec.get("health_command")
        assert command, f"{spec.address} has no health check"
        assert not spec.get("health_url")
        name = _component(spec)
        if name in ref.HEALTH_CHECK_DEVIATIONS:
            continue
        assert _curl_url(command) == ref.HEALTH_ENDPOINTS[name].format(bind_port=6443), (
            spec.address)
        # -k exactly where the endpoint is HTTPS (self-signed for kcm/scheduler)
        assert ("k" in shlex.split(command)[1]) == ref.HEALTH_ENDPOINTS[name].startswith("https")


def test_kubeadm_etcd_check_uses_the_healthcheck_client_files_of_its_host(
        tmp_path: Path) -> None:
    services, files = _services(_config_dir(tmp_path, "kubeadm"))
    etcd = [s for s in services if _component(s) == "etcd"]
    assert len(etcd) == 3
    for spec in etcd:
        command = spec["health_command"]
        assert " endpoint health" in command
        assert _option(command, "--endpoints") == "https://127.0.0.1:2379"
        client = f"cert.etcd-healthcheck-client[{spec.host.name}]"  # this host's own
        for option, source, content in (("--cacert", "ca.etcd", "cert"),
                                        ("--cert", client, "cert"), ("--key", client, "key")):
            declared = files.get((spec.host.name, _option(command, option)))
            assert declared is not None, f"{spec.address}: {option} is no file on its host"
            assert (str(declared["source"]), declared["content"]) == (source, content)


def test_kubeadm_apiserver_check_follows_bind_port(tmp_path: Path) -> None:
    services, _ = _services(_config_dir(tmp_path, "kubeadm", "bind_port = 7443"))
    urls = {_component(s): _curl_url(s["health_command"]) for s in services
            if _component(s) not in ref.HEALTH_CHECK_DEVIATIONS}
    assert urls == {name: url.format(bind_port=7443) for name, url in ref.HEALTH_ENDPOINTS.items()
                    if name not in ref.HEALTH_CHECK_DEVIATIONS}


def test_kubeadm_health_checks_false_drops_every_check(tmp_path: Path) -> None:
    services, _ = _services(_config_dir(tmp_path, "kubeadm", "health_checks = false"))
    assert len(services) == 3 * 4 + 6
    assert [str(s.address) for s in services
            if s.get("health_command") or s.get("health_url")] == []


def test_kubeadm_units_parameter_keeps_the_checks(tmp_path: Path) -> None:
    services, _ = _services(_config_dir(
        tmp_path, "kubeadm", 'units = { kube-scheduler = "scheduler-pod.service" }'))
    scheduler = [s for s in services if _component(s) == "kube-scheduler"]
    assert {s["unit"] for s in scheduler} == {"scheduler-pod.service"}
    assert {_curl_url(s["health_command"]) for s in scheduler} == {
        ref.HEALTH_ENDPOINTS["kube-scheduler"]}


# -- hard way ------------------------------------------------------------------------------


def test_hard_way_every_restarted_unit_has_its_health_check(tmp_path: Path) -> None:
    services, files = _services(_config_dir(tmp_path, "hard-way"))
    assert {_component(s) for s in services} == {"etcd", *HARD_WAY_HEALTH}
    for spec in services:
        command = spec.get("health_command")
        assert command, f"{spec.address} has no health check"
        name = _component(spec)
        if name == "etcd":
            assert " endpoint health" in command
            assert _option(command, "--endpoints") == "https://127.0.0.1:2379"
            for option in ("--cacert", "--cert", "--key"):
                assert (spec.host.name, _option(command, option)) in files, spec.address
            continue
        assert _curl_url(command) == HARD_WAY_HEALTH[name], spec.address
        if name == "kube-apiserver":
            # verified against the CA the apiserver's cert (127.0.0.1 in its SANs) chains to
            cacert = files[(spec.host.name, _option(command, "--cacert"))]
            assert (str(cacert["source"]), cacert["content"]) == ("ca.kubernetes", "cert")
            assert "k" not in shlex.split(command)[1]
        else:
            assert ("k" in shlex.split(command)[1]) == HARD_WAY_HEALTH[name].startswith("https")


# -- the commands, run ---------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Endpoint:
    """A local stand-in for a component's health endpoint: 200 "ok" on ``path`` while
    healthy, 503 otherwise; 404 on any other path."""

    def __init__(self, path: str, tls: tuple[Path, Path] | None) -> None:
        self.healthy = True
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = (200 if endpoint.healthy else 503) if self.path == path else 404
                body = b"ok" if status == 200 else b"[-]something failed"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()


def _curl_checks() -> list[tuple[str, str, str]]:
    """(id, command, expected URL) of every curl check of both presets."""
    checks = [(f"kubeadm-{name}", getattr(kubeadm, const).format(port=6443),
               ref.HEALTH_ENDPOINTS[name].format(bind_port=6443))
              for name, const in (("kube-apiserver", "APISERVER_HEALTH"),
                                  ("kube-controller-manager", "CONTROLLER_MANAGER_HEALTH"),
                                  ("kube-scheduler", "SCHEDULER_HEALTH"),
                                  ("kubelet", "KUBELET_HEALTH"))]
    checks += [(f"hard-way-{name}", getattr(hardway, const), HARD_WAY_HEALTH[name])
               for name, const in (("kube-apiserver", "APISERVER_HEALTH"),
                                   ("kube-controller-manager", "CONTROLLER_MANAGER_HEALTH"),
                                   ("kube-scheduler", "SCHEDULER_HEALTH"),
                                   ("kubelet", "KUBELET_HEALTH"),
                                   ("kube-proxy", "PROXY_HEALTH"))]
    return checks


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("health-tls"))


Check = Callable[[], int]
RunCheck = Callable[[str, str], tuple[_Endpoint, Check]]


@pytest.fixture
def run_check(tls_files: tuple[Path, Path]) -> Iterator[RunCheck]:
    started: list[_Endpoint] = []

    def run(command: str, url: str) -> tuple[_Endpoint, Check]:
        parts = urlsplit(url)
        endpoint = _Endpoint(parts.path, tls_files if parts.scheme == "https" else None)
        started.append(endpoint)
        # the same command, pointed at the stand-in's port (and CA file, for --cacert)
        local = command.replace(f"127.0.0.1:{parts.port}", f"127.0.0.1:{endpoint.port}")
        if "--cacert" in local:
            local = local.replace(_option(local, "--cacert"), str(tls_files[0]))

        def check() -> int:
            return subprocess.run(["sh", "-c", local], capture_output=True, timeout=30,
                                  check=False).returncode
        return endpoint, check

    yield run
    for endpoint in started:
        endpoint.close()


@needs_curl
@pytest.mark.parametrize(("command", "url"), [c[1:] for c in _curl_checks()],
                         ids=[c[0] for c in _curl_checks()])
def test_check_passes_only_while_the_endpoint_is_healthy(run_check: RunCheck, command: str,
                                                         url: str) -> None:
    assert _curl_url(command) == url
    endpoint, check = run_check(command, url)
    assert check() == 0
    endpoint.healthy = False
    assert check() != 0  # 503: -f makes curl fail
    endpoint.close()
    assert check() != 0  # nothing listening
