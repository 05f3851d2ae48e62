"""The real ``kubectl`` with pkiform's kubeconfigs against the apiserver cert on a lab host.

pkiform deploys the kubeadm PKI (RSA keys) over SSH to one lab host whose address is the
control-plane endpoint. On that host a small HTTPS server stands in for kube-apiserver: it
presents the deployed ``apiserver.crt``/``apiserver.key`` and requires a client certificate
signed by the deployed ``ca.crt`` (like ``--client-ca-file``); it answers ``/healthz`` with
``ok`` and ``/whoami`` with the client certificate's subject. Then the kubeconfigs pkiform
wrote are fetched from the host and used by the real kubectl (Go's TLS stack):

* admin.conf completes the mutual TLS handshake and authenticates as kubernetes-admin;
* with another CA in the kubeconfig, kubectl refuses the server (unknown authority);
* with a client certificate from another CA, the server refuses kubectl.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pkiform.cli import main

from .hosts import Lab, LabHost, _port_open, lab_supported

_REASON = lab_supported() or (None if shutil.which("kubectl") else "kubectl is not installed")

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

PORT = 6443
UNIT = "pkiform-fake-apiserver"
SERVER = r'''
import http.server, json, socket, ssl, sys

address, port = sys.argv[1], int(sys.argv[2])
PKI = "/etc/kubernetes/pki"
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{PKI}/apiserver.crt", f"{PKI}/apiserver.key")
context.load_verify_locations(f"{PKI}/ca.crt")  # kube-apiserver --client-ca-file
context.verify_mode = ssl.CERT_REQUIRED


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        subject = {k: v for rdn in self.connection.getpeercert()["subject"] for k, v in rdn}
        path = self.path.partition("?")[0]  # kubectl adds ?timeout=...
        if path == "/healthz":
            body = b"ok"
        elif path == "/whoami":
            body = json.dumps(subject, sort_keys=True).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request:", fmt % args, flush=True)


class Server(http.server.ThreadingHTTPServer):
    def get_request(self):
        sock, peer = self.socket.accept()
        try:
            return context.wrap_socket(sock, server_side=True), peer
        except OSError as exc:
            print(f"handshake refused: {exc}", flush=True)
            # The alert is sent; closing now with the client's request unread would reset
            # the connection (RST) and could destroy the alert before the client reads it.
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(2)
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            sock.close()
            raise


print("serving", flush=True)
Server((address, port), Handler).serve_forever()
'''


@dataclass(frozen=True)
class Endpoint:
    lab: Lab
    host: LabHost
    directory: Path  # the pkiform config
    files: Path  # kubeconfigs and certificates fetched or made for kubectl

    @property
    def address(self) -> str:
        return f"{self.host.address}:{PORT}"


def cli(directory: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["-C", str(directory), "--no-color", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def kubectl(endpoint: Endpoint, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HOME=str(endpoint.files), NO_PROXY="*")
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "--request-timeout=15s",
         "--cache-dir", str(endpoint.files / "cache"), *args],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        check=False,
    )


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)


def make_other_ca(directory: Path) -> None:
    """Another CA, and a kubernetes-admin client cert it signed (what an attacker or a stale
    PKI would hold): other-ca.crt/.key, other-admin.crt/.key."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "other-ca.key", "-out", "other-ca.crt",
            "-subj", "/CN=kubernetes", "-days", "1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    openssl("req", "-new", *ec, "-keyout", "other-admin.key", "-out", "other-admin.csr",
            "-subj", "/O=kubeadm:cluster-admins/CN=kubernetes-admin", cwd=directory)
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n"
                                          "keyUsage=critical,digitalSignature\n")
    openssl("x509", "-req", "-in", "other-admin.csr", "-CA", "other-ca.crt", "-CAkey",
            "other-ca.key", "-CAcreateserial", "-out", "other-admin.crt", "-days", "1",
            "-extfile", "client.ext", cwd=directory)


@pytest.fixture(scope="module")
def endpoint(lab_hosts: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    lab = lab_hosts(1)
    host = lab.hosts[0]
    directory = tmp_path_factory.mktemp("kubeadm-kubectl")
    (directory / "pkiform.toml").write_text(
        '[settings]\nstate_dir = "state"\n\n'
        "[preset.kubeadm]\n"
        'key = "rsa-2048"\n'  # kubeadm's default; the other lab tests use ECDSA
        f'control_plane_endpoint = "{host.address}:{PORT}"\n'
        "services = false\n\n"
        f'[hosts.{host.name}]\naddress = "{host.address}"\ngroups = ["control-plane"]\n'
        f'transport = "ssh"\nuser = "root"\nidentity_file = "{lab.key_path}"\n'
        f'known_hosts = "{lab.known_hosts_path}"\n'
    )
    code, out, err = cli(directory, "apply", "--auto-approve")
    assert code == 0, out + err

    files = tmp_path_factory.mktemp("kubectl-files")
    for name in ("admin.conf", "super-admin.conf"):
        target = files / name
        target.write_bytes(host.file_path(f"/etc/kubernetes/{name}").read_bytes())
        target.chmod(0o600)
    make_other_ca(files)

    host.run("cat > /root/fake-apiserver.py", input=SERVER)
    host.run(f"systemd-run --unit={UNIT} --property=Restart=no "
             f"/usr/bin/python3 -u /root/fake-apiserver.py {host.address} {PORT}")
    try:
        deadline = time.monotonic() + 20
        while not _port_open(host.address, PORT):
            state = host.run(f"systemctl is-active {UNIT}", check=False).stdout.strip()
            assert state in ("active", "activating") and time.monotonic() < deadline, \
                host.run(f"journalctl -u {UNIT} --no-pager -n 30", check=False).stdout
            time.sleep(0.1)
        yield Endpoint(lab, host, directory, files)
    finally:
        host.run(f"systemctl stop {UNIT}", check=False)


def server_log(endpoint: Endpoint) -> str:
    return endpoint.host.run(f"journalctl -u {UNIT} --no-pager -o cat").stdout


def variant(endpoint: Endpoint, name: str, *config_args: str) -> Path:
    """A copy of admin.conf changed with ``kubectl config`` (the real tool edits it)."""
    path = endpoint.files / name
    shutil.copyfile(endpoint.files / "admin.conf", path)
    res = kubectl(endpoint, path, "config", *config_args)
    assert res.returncode == 0, res.stderr
    return path


def test_admin_conf_completes_mutual_tls_with_the_apiserver_cert(endpoint: Endpoint) -> None:
    admin = endpoint.files / "admin.conf"
    server = kubectl(endpoint, admin, "config", "view", "-o",
                     "jsonpath={.clusters[0].cluster.server}")
    assert server.stdout == f"https://{endpoint.address}"

    res = kubectl(endpoint, admin, "get", "--raw", "/healthz")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
    # the server saw admin.conf's client certificate
    who = kubectl(endpoint, admin, "get", "--raw", "/whoami")
    assert who.returncode == 0, who.stderr
    assert json.loads(who.stdout) == {"commonName": "kubernetes-admin",
                                      "organizationName": "kubeadm:cluster-admins"}
    super_admin = kubectl(endpoint, endpoint.files / "super-admin.conf", "get", "--raw",
                          "/whoami")
    assert super_admin.returncode == 0, super_admin.stderr
    assert json.loads(super_admin.stdout) == {"commonName": "kubernetes-super-admin",
                                              "organizationName": "system:masters"}
    assert "GET /healthz" in server_log(endpoint)


def test_the_served_certificate_is_the_deployed_one(endpoint: Endpoint) -> None:
    res = subprocess.run(
        ["openssl", "s_client", "-connect", endpoint.address, "-showcerts"],
        input="", capture_output=True, text=True, timeout=30, check=False)
    served = res.stdout[res.stdout.index("-----BEGIN CERTIFICATE-----"):]
    served = served[:served.index("-----END CERTIFICATE-----") + 25]
    deployed = endpoint.host.file_path("/etc/kubernetes/pki/apiserver.crt").read_text()
    assert served.strip() == deployed.strip()
    # RSA, as configured, and the endpoint's address is in its SANs
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=deployed,
                          capture_output=True, text=True, check=True).stdout
    assert "rsaEncryption" in text and "Public-Key: (2048 bit)" in text
    assert f"IP Address:{endpoint.host.address}" in text


def test_a_kubeconfig_with_another_ca_refuses_the_server(endpoint: Endpoint) -> None:
    wrong_ca = variant(endpoint, "wrong-ca.conf", "set-cluster", "kubernetes",
                       f"--certificate-authority={endpoint.files / 'other-ca.crt'}",
                       "--embed-certs=true")
    res = kubectl(endpoint, wrong_ca, "get", "--raw", "/healthz")
    assert res.returncode != 0
    assert "x509: certificate signed by unknown authority" in res.stderr, res.stderr
    assert res.stdout == ""


def test_a_client_cert_from_another_ca_is_refused_by_the_server(endpoint: Endpoint) -> None:
    before = server_log(endpoint).count("handshake refused")
    wrong_client = variant(endpoint, "wrong-client.conf", "set-credentials", "kubernetes-admin",
                           f"--client-certificate={endpoint.files / 'other-admin.crt'}",
                           f"--client-key={endpoint.files / 'other-admin.key'}",
                           "--embed-certs=true")
    res = kubectl(endpoint, wrong_client, "get", "--raw", "/healthz")
    assert res.returncode != 0
    # TLS 1.3: the server judges the client cert after the client's side of the handshake is
    # done, so kubectl may already be writing its request when the alert arrives and see the
    # reset instead. The server's log below says why it refused, whichever the client saw.
    assert ("remote error: tls: unknown certificate authority" in res.stderr
            or "connection reset by peer" in res.stderr), res.stderr
    assert "x509" not in res.stderr  # kubectl itself trusted the server
    log = server_log(endpoint)
    assert log.count("handshake refused") > before  # (client-go may retry)
    assert "certificate verify failed" in log
