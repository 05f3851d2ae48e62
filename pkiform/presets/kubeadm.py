"""The ``kubeadm`` preset: exactly kubeadm's certificates, kubeconfigs and paths.

Source of truth: kubeadm's code (cmd/kubeadm/app/phases/certs/certlist.go, util/pkiutil,
phases/kubeconfig, constants) — see tests/reference/kubeadm_reference.py, which the tests
compare the generated PKI against. Where the kubernetes.io docs disagree, the code wins
(e.g. the cluster CA's CN is "kubernetes", etcd member certs are named after the node, and
apiserver-kubelet-client / admin are in "kubeadm:cluster-admins", not "system:masters").

Services are declared as systemd units (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubelet); a cluster that runs the control plane as static pods maps these
names to units that restart the pods (``units`` parameter).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pkiform.model import Host
from pkiform.presets import Expansion
from pkiform.presets._params import Params, is_ip

PKI = "/etc/kubernetes/pki"
DEFAULTS: Mapping[str, Any] = {
    "cluster_name": "kubernetes",
    "control_plane_group": "control-plane",
    "worker_group": "worker",
    "control_plane_endpoint": "",
    "bind_port": 6443,
    "service_cidr": "10.96.0.0/12",
    "dns_domain": "cluster.local",
    "key": "rsa-2048",
    "cert_sans": [],
    "validity_days": 365,
    "ca_validity_days": 3650,
    "services": True,
    "units": {},
    "health_checks": True,
}
# Health checks (``health_checks = false`` drops them all): a restart counts as done once the
# unit passes its check, and rolling restarts wait for it before touching the next host (etcd:
# quorum; apiserver: the load balancer must have a healthy backend).
ETCD_HEALTH = (
    "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/"
    "ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/"
    "etcd/healthcheck-client.key endpoint health"
)
APISERVER_HEALTH = "curl -fsSk --max-time 5 https://127.0.0.1:{port}/livez"
# Every other unit is gated by the endpoint kubeadm itself checks the component with:
# - kube-controller-manager / kube-scheduler: their static pods' liveness probes
#   (cmd/kubeadm/app/phases/controlplane/manifests.go: HTTPS GET /healthz on
#   constants.KubeControllerManagerPort = 10257 / KubeSchedulerPort = 10259, at the
#   --bind-address kubeadm gives them, 127.0.0.1). They serve a self-signed in-memory cert
#   (kubeadm passes no --tls-cert-file), hence -k; /healthz is an always-allowed path.
# - kubelet: kubeadm's kubelet-check (util/apiclient/wait.go WaitForKubelet: plain HTTP GET
#   /healthz) on the healthzBindAddress / healthzPort kubeadm defaults in the kubelet's
#   config (componentconfigs/kubelet.go: 127.0.0.1, constants.KubeletHealthzPort = 10248).
CONTROLLER_MANAGER_HEALTH = "curl -fsSk --max-time 5 https://127.0.0.1:10257/healthz"
SCHEDULER_HEALTH = "curl -fsSk --max-time 5 https://127.0.0.1:10259/healthz"
KUBELET_HEALTH = "curl -fsS --max-time 5 http://127.0.0.1:10248/healthz"
UNITS = {
    "etcd": "etcd.service",
    "kube-apiserver": "kube-apiserver.service",
    "kube-controller-manager": "kube-controller-manager.service",
    "kube-scheduler": "kube-scheduler.service",
    "kubelet": "kubelet.service",
}
SA_NOTES = {
    "reissue": [
        "keypair.sa: delete every legacy token Secret (type kubernetes.io/service-account-token)"
        " so the token controller re-creates it signed with the new key, then restart the pods "
        "that mount them",
    ],
    "retire": [
        "keypair.sa: tokens signed by the old key are now rejected: restart any pod still "
        "holding one (bound tokens refresh within their expiry, 1h by default)",
    ],
}
CLUSTER_CA_NOTES = {
    "trust-both": [
        "ca.kubernetes: the controller-manager now publishes old+new CA in every namespace's "
        "kube-root-ca.crt ConfigMap: restart pods that talk to the API server so they load it",
    ],
    "reissue": [
        "ca.kubernetes: kubelets that rotate their own client cert "
        "(/var/lib/kubelet/pki/kubelet-client-current.pem) get it re-signed by the new CA on "
        "renewal: approve pending CSRs (kubectl get csr; kubectl certificate approve <name>)",
    ],
    "retire": [
        "ca.kubernetes: re-distribute handed-out kubeconfigs and update the cluster-info "
        "ConfigMap in kube-public (kubeadm join discovery) with the new CA",
    ],
}
FRONT_PROXY_NOTES = {
    "retire": [
        "ca.front-proxy: restart aggregated API servers (metrics-server, …) so they reload "
        "requestheader-client-ca from extension-apiserver-authentication",
    ],
}


def _endpoint(params: Params, control: list[Host]) -> tuple[str, str]:
    """(URL, host part) of the control-plane endpoint."""
    endpoint = params["control_plane_endpoint"] or f"{control[0].address}:{params['bind_port']}"
    host, _, port = endpoint.rpartition(":") if ":" in endpoint else (endpoint, "", "")
    host = host.strip("[]") or endpoint
    if not port:
        endpoint = f"{endpoint}:{params['bind_port']}"
    url_host = f"[{host}]" if ":" in host else host
    return f"https://{url_host}:{endpoint.rpartition(':')[2]}", host


def expand(raw: Mapping[str, Any], hosts: Mapping[str, Host], *, file: str) -> Expansion:
    params = Params("kubeadm", raw, DEFAULTS, file)
    cp_group = params["control_plane_group"]
    control = sorted((h for h in hosts.values() if cp_group in h.groups), key=lambda h: h.name)
    if not control:
        raise params.error(f"no host is in group {cp_group!r}",
                           f"add groups = [\"{cp_group}\"] to the control-plane hosts")
    if not all(is_ip(h.address) for h in control):
        raise params.error("kubeadm puts each control-plane node's address in IP SANs",
                           "give control-plane hosts IP addresses")
    worker_group = params["worker_group"]
    nodes = [h for h in hosts.values() if cp_group in h.groups or worker_group in h.groups]
    if len(nodes) != len(hosts):
        strays = sorted(h.name for h in hosts.values() if h not in nodes)
        raise params.error(f"hosts {', '.join(strays)} are in neither {cp_group!r} nor "
                           f"{worker_group!r}", "every host of a kubeadm cluster is a node")
    url, endpoint_host = _endpoint(params, control)
    key, days, ca_days = params["key"], params["validity_days"], params["ca_validity_days"]
    service_vip = params.first_service_ip()
    domain = params["dns_domain"]
    units = {**UNITS, **params["units"]}
    cp = {"for_each": cp_group}
    everyone = {"for_each": "*"}
    first_cp = {"host": control[0].name}

    def ca(cn: str, notes: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        table: dict[str, Any] = {"common_name": cn, "dns_names": [cn], "key": key,
                                 "validity_days": ca_days}
        if notes:
            table["outside"] = {k: list(v) for k, v in notes.items()}
        return table

    def leaf(signer: str, cn: str, eku: list[str], where: Mapping[str, str], *,
             orgs: list[str] | None = None, dns: list[str] | None = None,
             ips: list[str] | None = None) -> dict[str, Any]:
        table: dict[str, Any] = {
            **where, "signer": f"ca.{signer}", "common_name": cn, "extended_key_usages": eku,
            "key": key, "validity_days": days,
        }
        if orgs:
            table["organizations"] = orgs
        if dns:
            table["dns_names"] = dns
        if ips:
            table["ip_addresses"] = ips
        return table

    apiserver_dns = ["{host.name}", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                     f"kubernetes.default.svc.{domain}"]
    apiserver_ips = [service_vip, "{host.address}"]
    extra = [endpoint_host, *params["cert_sans"]]
    for name in extra:
        target = apiserver_ips if is_ip(name) else apiserver_dns
        if name not in target:
            target.append(name)
    member_dns = ["{host.name}", "localhost"]
    member_ips = ["{host.address}", "127.0.0.1", "::1"]

    resources: dict[str, dict[str, dict[str, Any]]] = {
        "ca": {
            "kubernetes": ca("kubernetes", CLUSTER_CA_NOTES),
            "front-proxy": ca("front-proxy-ca", FRONT_PROXY_NOTES),
            "etcd": ca("etcd-ca"),
        },
        "keypair": {"sa": {"key": key, "outside": {k: list(v) for k, v in SA_NOTES.items()}}},
        "cert": {
            "apiserver": leaf("kubernetes", "kube-apiserver", ["server_auth"], cp,
                              dns=apiserver_dns, ips=apiserver_ips),
            "apiserver-kubelet-client": leaf("kubernetes", "kube-apiserver-kubelet-client",
                                             ["client_auth"], cp,
                                             orgs=["kubeadm:cluster-admins"]),
            "front-proxy-client": leaf("front-proxy", "front-proxy-client", ["client_auth"], cp),
            "etcd-server": leaf("etcd", "{host.name}", ["server_auth", "client_auth"], cp,
                                dns=member_dns, ips=member_ips),
            "etcd-peer": leaf("etcd", "{host.name}", ["server_auth", "client_auth"], cp,
                              dns=member_dns, ips=member_ips),
            "etcd-healthcheck-client": leaf("etcd", "kube-etcd-healthcheck-client",
                                            ["client_auth"], cp),
            "apiserver-etcd-client": leaf("etcd", "kube-apiserver-etcd-client",
                                          ["client_auth"], cp),
            # Client certs embedded in kubeconfigs (kubeadm phases/kubeconfig).
            "admin": leaf("kubernetes", "kubernetes-admin", ["client_auth"], cp,
                          orgs=["kubeadm:cluster-admins"]),
            "super-admin": leaf("kubernetes", "kubernetes-super-admin", ["client_auth"],
                                first_cp, orgs=["system:masters"]),
            "controller-manager": leaf("kubernetes", "system:kube-controller-manager",
                                       ["client_auth"], cp),
            "scheduler": leaf("kubernetes", "system:kube-scheduler", ["client_auth"], cp),
            "kubelet": leaf("kubernetes", "system:node:{host.name}", ["client_auth"], everyone,
                            orgs=["system:nodes"]),
        },
        "kubeconfig": {},
        "file": {},
    }
    cluster = params["cluster_name"]
    local_url = "https://{host.address}:" + str(params["bind_port"])
    for name, user, server, where in (
        ("admin", "kubernetes-admin", url, cp),
        ("super-admin", "kubernetes-super-admin", url, first_cp),
        ("controller-manager", "system:kube-controller-manager", local_url, cp),
        ("scheduler", "system:kube-scheduler", local_url, cp),
        ("kubelet", "system:node:{host.name}", url, everyone),
    ):
        resources["kubeconfig"][name] = {
            **where, "cluster_name": cluster, "server": server, "ca": "ca.kubernetes",
            "client": f"cert.{name}", "user": user, "context": f"{user}@{cluster}",
        }
        if name in ("admin", "super-admin"):
            resources["kubeconfig"][name]["handed_out"] = True

    files = resources["file"]

    def pair(prefix: str, source: str, path: str, where: Mapping[str, str]) -> None:
        files[f"{prefix}-crt"] = {**where, "path": f"{path}.crt", "source": source,
                                  "content": "cert"}
        files[f"{prefix}-key"] = {**where, "path": f"{path}.key", "source": source,
                                  "content": "key", "mode": "0600"}

    pair("ca", "ca.kubernetes", f"{PKI}/ca", cp)
    # Workers need the cluster CA too (kubelet --client-ca-file), but never its key.
    files["ca-crt"] = {**everyone, "path": f"{PKI}/ca.crt", "source": "ca.kubernetes",
                       "content": "cert"}
    pair("front-proxy-ca", "ca.front-proxy", f"{PKI}/front-proxy-ca", cp)
    pair("etcd-ca", "ca.etcd", f"{PKI}/etcd/ca", cp)
    for cert, path in (
        ("apiserver", "apiserver"),
        ("apiserver-kubelet-client", "apiserver-kubelet-client"),
        ("front-proxy-client", "front-proxy-client"),
        ("etcd-server", "etcd/server"),
        ("etcd-peer", "etcd/peer"),
        ("etcd-healthcheck-client", "etcd/healthcheck-client"),
        ("apiserver-etcd-client", "apiserver-etcd-client"),
    ):
        pair(cert, f"cert.{cert}", f"{PKI}/{path}", cp)
    files["sa-key"] = {**cp, "path": f"{PKI}/sa.key", "source": "keypair.sa",
                       "content": "key", "mode": "0600"}
    # kubeadm writes sa.pub with its key writer, hence 0600 (see the reference table).
    files["sa-pub"] = {**cp, "path": f"{PKI}/sa.pub", "source": "keypair.sa",
                       "content": "public_key", "mode": "0600"}
    for name, where in (("admin", cp), ("super-admin", first_cp),
                        ("controller-manager", cp), ("scheduler", cp), ("kubelet", everyone)):
        files[f"{name}-conf"] = {**where, "path": f"/etc/kubernetes/{name}.conf",
                                 "source": f"kubeconfig.{name}", "content": "kubeconfig",
                                 "mode": "0600"}

    def health(command: str) -> dict[str, str]:
        return {"health_command": command} if params["health_checks"] else {}

    if params["services"]:
        resources["service"] = {
            "etcd": {**cp, "unit": units["etcd"], "max_unavailable": 1, **health(ETCD_HEALTH),
                     "uses": [
                "file.etcd-ca-crt", "file.etcd-server-crt", "file.etcd-server-key",
                "file.etcd-peer-crt", "file.etcd-peer-key"]},
            "kube-apiserver": {**cp, "unit": units["kube-apiserver"], "max_unavailable": 1,
                               **health(APISERVER_HEALTH.format(port=params["bind_port"])),
                               "uses": [
                "file.ca-crt", "file.apiserver-crt", "file.apiserver-key",
                "file.apiserver-kubelet-client-crt", "file.apiserver-kubelet-client-key",
                "file.front-proxy-ca-crt", "file.front-proxy-client-crt",
                "file.front-proxy-client-key", "file.etcd-ca-crt",
                "file.apiserver-etcd-client-crt", "file.apiserver-etcd-client-key",
                "file.sa-pub", "file.sa-key"]},
            "kube-controller-manager": {**cp, "unit": units["kube-controller-manager"],
                                        **health(CONTROLLER_MANAGER_HEALTH), "uses": [
                "file.controller-manager-conf", "file.ca-crt", "file.ca-key",
                "file.front-proxy-ca-crt", "file.sa-key"]},
            "kube-scheduler": {**cp, "unit": units["kube-scheduler"],
                               **health(SCHEDULER_HEALTH), "uses": ["file.scheduler-conf"]},
            "kubelet": {**everyone, "unit": units["kubelet"], **health(KUBELET_HEALTH),
                        "uses": ["file.kubelet-conf", "file.ca-crt"]},
        }

    server_name = endpoint_host
    tls: list[dict[str, Any]] = [
        {"name": "etcd peer ↔ peer", "client": "etcd", "server": "etcd",
         "client_cert": "cert.etcd-peer", "client_trust": "ca.etcd",
         "server_cert": "cert.etcd-peer", "server_client_ca": "ca.etcd",
         "server_name": "{server.address}"},
        {"name": "kube-apiserver → etcd", "client": "kube-apiserver", "server": "etcd",
         "client_cert": "cert.apiserver-etcd-client", "client_trust": "ca.etcd",
         "server_cert": "cert.etcd-server", "server_client_ca": "ca.etcd",
         "server_name": "127.0.0.1", "pairs": "same-host"},
        {"name": "etcd healthcheck → etcd", "client": "etcd-healthcheck", "server": "etcd",
         "client_cert": "cert.etcd-healthcheck-client", "client_trust": "ca.etcd",
         "server_cert": "cert.etcd-server", "server_client_ca": "ca.etcd",
         "server_name": "127.0.0.1", "pairs": "same-host"},
        {"name": "kube-apiserver → kubelet", "client": "kube-apiserver", "server": "kubelet",
         "client_cert": "cert.apiserver-kubelet-client", "server_client_ca": "ca.kubernetes",
         "server_name": "{server.address}"},
        {"name": "front-proxy → aggregated API", "client": "kube-apiserver",
         "server": "aggregated-apiserver", "client_cert": "cert.front-proxy-client",
         "server_client_ca": "ca.front-proxy", "server_name": "{server.address}"},
    ]
    for name in ("admin", "super-admin", "controller-manager", "scheduler", "kubelet"):
        local = name in ("controller-manager", "scheduler")
        tls.append({
            "name": f"{name}.conf → kube-apiserver", "client": name, "server": "kube-apiserver",
            "client_cert": f"cert.{name}", "client_trust": f"kubeconfig.{name}",
            "server_cert": "cert.apiserver", "server_client_ca": "ca.kubernetes",
            "server_name": "{server.address}" if local else server_name,
            **({"pairs": "same-host"} if local else {}),
        })
    return Expansion(resources=resources, tls=tuple(tls))
