"""The ``hard-way`` preset: one root CA for everything, "Kubernetes The Hard Way" style (cfssl).

What it is: the PKI of seed 002 (the "Bootstrapping Kubernetes Security" chapter of
ghik/kubernetes-the-harder-way, itself based on Kelsey Hightower's Kubernetes The Hard Way):
3 control VMs (``control0..2``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
and — "for technical reasons" — kubelet and kube-proxy too) and 3 worker VMs (``worker0..2``:
kubelet, kube-proxy), behind a load-balanced virtual IP (the ``gateway`` VM, 192.168.1.21,
``kubernetes`` / ``kubernetes.kubenet``).

Sources:
- seed 002 (docs/04_Bootstrapping_Kubernetes_Security.md): the CSRs (CN, O, hosts), the cfssl
  profile (usages "signing", "key encipherment", "server auth", "client auth"; expiry
  87600h), ``genkubeconfigs`` (cluster ``kubenet``, server ``https://kubernetes:6443``, user
  names, context ``default``), ``genenckey.sh`` (32 random bytes, aescbc, then identity) and
  ``deployauth.sh`` (which file goes to which VM);
- the same guide's next chapters (05_Installing_Kubernetes_Control_Plane.md,
  06_Spinning_up_Worker_Nodes.md) for where each component reads the files the scp loop
  uploaded (``sudo cp ... /etc/etcd/``, ``/var/lib/kubernetes/``, ``/var/lib/kubelet/``,
  ``/var/lib/kube-proxy/kubeconfig``) and for the systemd units that read them, and for the
  service CIDR (10.32.0.0/16).

Resources (names follow the seed's file names):
- ``ca.kubernetes`` — the seed's ``ca`` (CN "Kubernetes", O "Kubernetes"). Named
  ``ca.kubernetes`` rather than ``ca.ca`` for consistency with the kubeadm preset, so
  ``--replace ca.kubernetes`` means the cluster CA in both layouts.
- ``cert.kubernetes`` — ONE certificate shared by every control node (the seed's choice): the
  apiserver's serving cert, etcd's server *and* peer cert, and the apiserver's client cert
  towards etcd and towards kubelets (``--kubelet-client-certificate=kubernetes.pem``).
- ``cert.admin``, ``cert.kube-controller-manager``, ``cert.kube-scheduler``,
  ``cert.kube-proxy``, ``cert.service-account`` (a *certificate* in the seed: the apiserver reads
  its public key from ``service-account.pem``), and ``cert.node`` per node (``system:node:<vm>``;
  the kubelet's serving and client cert at once).
- ``kubeconfig.admin``, ``kubeconfig.kube-controller-manager``, ``kubeconfig.kube-scheduler``,
  ``kubeconfig.kube-proxy`` (one each, copied to the hosts that need it) and
  ``kubeconfig.node`` per node.
- ``secret.encryption-key`` rendered as ``encryption-config.yaml``.
- services: etcd, kube-apiserver (both ``max_unavailable = 1``), kube-controller-manager,
  kube-scheduler on control nodes; kubelet and kube-proxy on every node. Each restart is gated
  by the component's own health endpoint as the guide's units serve it (``*_HEALTH`` below).

Deviations from the seed, and why:
- Files are written where the components read them (chapters 05/06), not to ``~ubuntu`` as
  the scp loop does: a rotation must restart units that read the new file, and a staging copy in
  the home directory would silently go stale. ``admin.kubeconfig`` is only ever used from the
  home directory, so it stays there. Set ``stage_in_home = true`` to also write the scp loop's
  exact file set into ``/home/<user>``.
- Subjects carry CN and O only: pkiform does not model C/L/OU/ST ("PL", "Krakow", "kubenet",
  "Lesser Poland" — the seed itself calls them arbitrary).
- The CA lives 10 years (``ca_validity_days``): cfssl's ``initca`` default is 5 years, shorter
  than the 87600h leaves it then signs; pkiform refuses a leaf that outlives its CA. Its key
  usages are cfssl's initca ones (cert sign, CRL sign).
- The seed's node loop is buggy bash (``vmnames[$vmid]`` with vmid from 1, and ``for vmname in
  $vmnames`` iterating once); the preset does what it evidently means: one cert per VM with SANs
  ``<vm>``, ``<vm>.<domain>`` and the VM's IP.
- The encryption key is named ``key-1`` (``key-2`` after a rotation, …) instead of ``key1``; as
  in the seed the provider is aescbc followed by ``identity: {}``.
- Keys, certs and the encryption config are 0600/0644 as cfssljson/kubectl write them; the
  encryption config is a secret, so it is 0600 (the seed's ``cat >`` leaves it 0644).
- Rotating ``cert.service-account`` (a plain cert here, not a keypair with generations as in the
  kubeadm preset) invalidates every token signed with the old key at once: faithful to the
  seed's layout, noted in the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pkiform.model import Host
from pkiform.presets import Expansion
from pkiform.presets._params import Params, is_ip

ETCD_DIR = "/etc/etcd"
K8S_DIR = "/var/lib/kubernetes"
KUBELET_DIR = "/var/lib/kubelet"
PROXY_DIR = "/var/lib/kube-proxy"
DEFAULTS: Mapping[str, Any] = {
    "control_group": "control",
    "worker_group": "worker",
    "domain": "kubenet",
    "public_address": "",
    "api_server": "https://kubernetes:6443",
    "service_cidr": "10.32.0.0/16",
    "dns_domain": "cluster.local",
    "cluster_name": "kubenet",
    "context": "default",
    "key": "rsa-2048",
    "cert_sans": [],
    "validity_days": 3650,
    "ca_validity_days": 3650,
    "user": "ubuntu",
    "stage_in_home": False,
    "services": True,
    "units": {},
}
UNITS = {
    "etcd": "etcd.service",
    "kube-apiserver": "kube-apiserver.service",
    "kube-controller-manager": "kube-controller-manager.service",
    "kube-scheduler": "kube-scheduler.service",
    "kubelet": "kubelet.service",
    "kube-proxy": "kube-proxy.service",
}
# Health checks: a restart counts as done once the unit answers again (rolling restarts of etcd
# and the apiserver wait for it before the next control VM). Endpoints as the guide's units
# leave them (chapters 05/06 of ghik/kubernetes-the-harder-way):
# - etcd, kube-apiserver: the checks chapter 05 itself runs (etcdctl with the /etc/etcd files
#   against https://127.0.0.1:2379; curl --cacert ca.pem https://127.0.0.1:6443/healthz, the
#   same /healthz ldirectord polls for the virtual IP);
# - kube-controller-manager (--bind-address=0.0.0.0, no --secure-port) and kube-scheduler
#   (--config without a bind address): their default secure ports 10257 / 10259 with a
#   self-signed in-memory cert (no --tls-cert-file is given), hence -k; /healthz is one of
#   their --authorization-always-allow-paths;
# - kubelet: kubelet-config.yaml sets no healthzBindAddress/healthzPort, so the kubelet's
#   defaults 127.0.0.1:10248 (plain HTTP);
# - kube-proxy: kube-proxy-config.yaml sets no healthzBindAddress, so 0.0.0.0:10256 (plain
#   HTTP, pkg/cluster/ports ProxyHealthzPort).
ETCD_HEALTH = (
    "ETCDCTL_API=3 etcdctl endpoint health --endpoints=https://127.0.0.1:2379 "
    f"--cacert={ETCD_DIR}/ca.pem --cert={ETCD_DIR}/kubernetes.pem "
    f"--key={ETCD_DIR}/kubernetes-key.pem")
APISERVER_HEALTH = (f"curl -fsS --max-time 5 --cacert {K8S_DIR}/ca.pem "
                    "https://127.0.0.1:6443/healthz")
CONTROLLER_MANAGER_HEALTH = "curl -fsSk --max-time 5 https://127.0.0.1:10257/healthz"
SCHEDULER_HEALTH = "curl -fsSk --max-time 5 https://127.0.0.1:10259/healthz"
KUBELET_HEALTH = "curl -fsS --max-time 5 http://127.0.0.1:10248/healthz"
PROXY_HEALTH = "curl -fsS --max-time 5 http://127.0.0.1:10256/healthz"
# The seed's cfssl "kubernetes" profile: every leaf may serve and authenticate.
EKU = ["server_auth", "client_auth"]
CA_NOTES = {
    "trust-both": [
        "ca.kubernetes: add the new CA to the gateway's system trust "
        "(/usr/local/share/ca-certificates/kubernetes-ca.crt, update-ca-certificates) so "
        "ldirectord's https health checks keep passing; restart pods that read "
        "kube-root-ca.crt",
    ],
    "retire": [
        "ca.kubernetes: re-run setuplocalkubeconfig.sh (or re-distribute admin.kubeconfig) "
        "for every local ~/.kube/config that embeds the old CA",
    ],
}
# A CA rotation re-issues every leaf with a new key (phase "reissue"), this one included.
SA_NOTES = {
    "reissue": [
        "cert.service-account: its new key invalidates every token signed with the old one at "
        "once: delete legacy token Secrets and restart pods that mount service-account tokens",
    ],
}
ENCRYPTION_NOTES = {
    "reissue": [
        "secret.encryption-key: re-encrypt every Secret with the new key before the old one is "
        "dropped: kubectl get secrets -A -o json | kubectl replace -f -",
    ],
}


def _domain_prefixes(domain: str) -> list[str]:
    """cluster.local → [cluster, cluster.local] (the seed lists both svc names)."""
    labels = domain.split(".")
    return [".".join(labels[: i + 1]) for i in range(len(labels))]


def expand(raw: Mapping[str, Any], hosts: Mapping[str, Host], *, file: str) -> Expansion:
    params = Params("hard-way", raw, DEFAULTS, file)
    control_group, worker_group = params["control_group"], params["worker_group"]
    control = sorted((h for h in hosts.values() if control_group in h.groups),
                     key=lambda h: h.name)
    if not control:
        raise params.error(f"no host is in group {control_group!r}",
                           f"add groups = [\"{control_group}\"] to the control VMs")
    nodes = [h for h in hosts.values() if control_group in h.groups or worker_group in h.groups]
    if len(nodes) != len(hosts):
        strays = sorted(h.name for h in hosts.values() if h not in nodes)
        raise params.error(f"hosts {', '.join(strays)} are in neither {control_group!r} nor "
                           f"{worker_group!r}", "every VM of this layout is a node (control "
                           "VMs run kubelet and kube-proxy too)")
    if not all(is_ip(h.address) for h in nodes):
        raise params.error("each node's IP goes into its certificate's IP SANs",
                           "give every host an IP address")
    if not all(isinstance(n, str) for n in params["cert_sans"]):
        raise params.error("cert_sans must be strings", 'e.g. cert_sans = ["api.example.com"]')
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in params["units"].items()):
        raise params.error("units maps component names to unit names",
                           'e.g. units = { etcd = "etcd-member.service" }')
    unknown = sorted(set(params["units"]) - set(UNITS))
    if unknown:
        raise params.error(f"units: unknown component {unknown[0]!r}",
                           f"components: {', '.join(UNITS)}")
    api = urlsplit(params["api_server"])
    if api.scheme != "https" or not api.hostname:
        raise params.error(f"api_server {params['api_server']!r} is not an https:// URL",
                           "e.g. https://kubernetes:6443")
    api_host = api.hostname
    service_vip = params.first_service_ip()
    key, days, ca_days = params["key"], params["validity_days"], params["ca_validity_days"]
    domain, user = params["domain"], params["user"]
    home = "/root" if user == "root" else f"/home/{user}"
    units = {**UNITS, **params["units"]}
    cp = {"for_each": control_group}
    everyone = {"for_each": "*"}

    def fqdn(name: str) -> list[str]:
        return [name, f"{name}.{domain}"] if domain else [name]

    # kubernetes-csr.json "hosts", in the seed's order (DNS and IP SANs kept apart).
    api_dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
               *(f"kubernetes.default.svc.{p}" for p in _domain_prefixes(params["dns_domain"]))]
    api_ips = [service_vip]
    if domain:
        api_dns.append(f"kubernetes.{domain}")

    def add_san(name: str) -> None:
        target = api_ips if is_ip(name) else api_dns
        if name not in target:
            target.append(name)

    if params["public_address"]:
        add_san(params["public_address"])
    for host in control:
        for name in (*fqdn(host.name), host.address):
            add_san(name)
    for name in ("127.0.0.1", api_host, *params["cert_sans"]):
        add_san(name)

    def leaf(cn: str, org: str, *, where: Mapping[str, str] | None = None,
             dns: list[str] | None = None, ips: list[str] | None = None) -> dict[str, Any]:
        table: dict[str, Any] = {
            **(where or {}), "signer": "ca.kubernetes", "common_name": cn,
            "organizations": [org], "extended_key_usages": list(EKU), "key": key,
            "validity_days": days,
        }
        if dns:
            table["dns_names"] = dns
        if ips:
            table["ip_addresses"] = ips
        return table

    resources: dict[str, dict[str, dict[str, Any]]] = {
        "ca": {"kubernetes": {
            "common_name": "Kubernetes", "organizations": ["Kubernetes"], "key": key,
            "validity_days": ca_days, "key_usages": ["cert_sign", "crl_sign"],
            "outside": {k: list(v) for k, v in CA_NOTES.items()},
        }},
        "cert": {
            "kubernetes": leaf("kubernetes", "Kubernetes", dns=api_dns, ips=api_ips),
            "admin": leaf("admin", "system:masters"),
            "node": leaf("system:node:{host.name}", "system:nodes", where=everyone,
                         dns=fqdn("{host.name}"), ips=["{host.address}"]),
            "kube-scheduler": leaf("system:kube-scheduler", "system:kube-scheduler"),
            "kube-controller-manager": leaf("system:kube-controller-manager",
                                            "system:kube-controller-manager"),
            "kube-proxy": leaf("system:kube-proxy", "system:node-proxier"),
            "service-account": {**leaf("service-accounts", "Kubernetes"),
                                "outside": {k: list(v) for k, v in SA_NOTES.items()}},
        },
        "kubeconfig": {},
        "secret": {"encryption-key": {
            "bytes": 32, "encryption_provider": "aescbc", "resources": ["secrets"],
            "outside": {k: list(v) for k, v in ENCRYPTION_NOTES.items()},
        }},
        "file": {},
    }

    # genkubeconfig <cert> <user>: one kubeconfig per API client, all to https://kubernetes:6443.
    clients = (
        ("admin", "admin", None),
        ("kube-scheduler", "system:kube-scheduler", None),
        ("kube-controller-manager", "system:kube-controller-manager", None),
        ("kube-proxy", "system:kube-proxy", None),
        ("node", "system:node:{host.name}", everyone),
    )
    for name, kube_user, where in clients:
        resources["kubeconfig"][name] = {
            **(where or {}), "cluster_name": params["cluster_name"],
            "server": params["api_server"], "ca": "ca.kubernetes", "client": f"cert.{name}",
            "user": kube_user, "context": params["context"],
        }
    resources["kubeconfig"]["admin"]["handed_out"] = True

    files = resources["file"]

    def put(name: str, where: Mapping[str, str], path: str, source: str, content: str,
            **extra_fields: Any) -> None:
        table = {**where, "path": path, "source": source, "content": content, **extra_fields}
        if content in ("key", "kubeconfig", "encryption_config"):
            table["mode"] = "0600"
        files[name] = table

    # etcd: sudo cp ca.pem kubernetes-key.pem kubernetes.pem /etc/etcd/
    put("etcd-ca", cp, f"{ETCD_DIR}/ca.pem", "ca.kubernetes", "cert")
    put("etcd-cert", cp, f"{ETCD_DIR}/kubernetes.pem", "cert.kubernetes", "cert")
    put("etcd-key", cp, f"{ETCD_DIR}/kubernetes-key.pem", "cert.kubernetes", "key")
    # kube-apiserver / kube-controller-manager / kube-scheduler: /var/lib/kubernetes/
    # (ca.pem is there on every node: the kubelet's clientCAFile).
    put("ca", everyone, f"{K8S_DIR}/ca.pem", "ca.kubernetes", "cert")
    put("ca-key", cp, f"{K8S_DIR}/ca-key.pem", "ca.kubernetes", "key")
    put("kubernetes", cp, f"{K8S_DIR}/kubernetes.pem", "cert.kubernetes", "cert")
    put("kubernetes-key", cp, f"{K8S_DIR}/kubernetes-key.pem", "cert.kubernetes", "key")
    put("service-account", cp, f"{K8S_DIR}/service-account.pem", "cert.service-account",
        "cert")
    put("service-account-key", cp, f"{K8S_DIR}/service-account-key.pem",
        "cert.service-account", "key")
    put("encryption-config", cp, f"{K8S_DIR}/encryption-config.yaml", "secret.encryption-key",
        "encryption_config")
    put("kube-controller-manager-kubeconfig", cp,
        f"{K8S_DIR}/kube-controller-manager.kubeconfig", "kubeconfig.kube-controller-manager",
        "kubeconfig")
    put("kube-scheduler-kubeconfig", cp, f"{K8S_DIR}/kube-scheduler.kubeconfig",
        "kubeconfig.kube-scheduler", "kubeconfig")
    # kubelet (every node): /var/lib/kubelet/<vm>.pem, <vm>-key.pem, kubeconfig
    put("node", everyone, f"{KUBELET_DIR}/{{host.name}}.pem", "cert.node", "cert")
    put("node-key", everyone, f"{KUBELET_DIR}/{{host.name}}-key.pem", "cert.node", "key")
    put("node-kubeconfig", everyone, f"{KUBELET_DIR}/kubeconfig", "kubeconfig.node",
        "kubeconfig")
    # kube-proxy (every node)
    put("kube-proxy-kubeconfig", everyone, f"{PROXY_DIR}/kubeconfig", "kubeconfig.kube-proxy",
        "kubeconfig")
    # admin.kubeconfig is used from the login user's home on control VMs (deployauth.sh).
    owner = {"owner": user, "group": user}
    put("admin-kubeconfig", cp, f"{home}/admin.kubeconfig", "kubeconfig.admin", "kubeconfig",
        **owner)
    if params["stage_in_home"]:
        # deployauth.sh's exact upload set, under the seed's names.
        staged = [
            ("ca.pem", "ca.kubernetes", "cert", everyone),
            ("ca-key.pem", "ca.kubernetes", "key", cp),
            ("kubernetes.pem", "cert.kubernetes", "cert", cp),
            ("kubernetes-key.pem", "cert.kubernetes", "key", cp),
            ("service-account.pem", "cert.service-account", "cert", cp),
            ("service-account-key.pem", "cert.service-account", "key", cp),
            ("kube-controller-manager.kubeconfig", "kubeconfig.kube-controller-manager",
             "kubeconfig", cp),
            ("kube-scheduler.kubeconfig", "kubeconfig.kube-scheduler", "kubeconfig", cp),
            ("encryption-config.yaml", "secret.encryption-key", "encryption_config", cp),
            ("{host.name}.pem", "cert.node", "cert", everyone),
            ("{host.name}-key.pem", "cert.node", "key", everyone),
            ("{host.name}.kubeconfig", "kubeconfig.node", "kubeconfig", everyone),
            ("kube-proxy.kubeconfig", "kubeconfig.kube-proxy", "kubeconfig", everyone),
        ]
        for filename, source, content, where in staged:
            stem = filename.replace("{host.name}", "node").rsplit(".", 1)[0]
            put(f"home-{stem}-{filename.rsplit('.', 1)[1]}", where, f"{home}/{filename}",
                source, content, **owner)

    if params["services"]:
        resources["service"] = {
            "etcd": {**cp, "unit": units["etcd"], "max_unavailable": 1,
                     "health_command": ETCD_HEALTH,
                     "uses": ["file.etcd-ca", "file.etcd-cert", "file.etcd-key"]},
            "kube-apiserver": {
                **cp, "unit": units["kube-apiserver"], "max_unavailable": 1,
                "health_command": APISERVER_HEALTH,
                "uses": ["file.ca", "file.kubernetes", "file.kubernetes-key",
                         "file.service-account", "file.service-account-key",
                         "file.encryption-config"]},
            "kube-controller-manager": {
                **cp, "unit": units["kube-controller-manager"],
                "health_command": CONTROLLER_MANAGER_HEALTH,
                "uses": ["file.kube-controller-manager-kubeconfig", "file.ca", "file.ca-key",
                         "file.service-account-key"]},
            "kube-scheduler": {**cp, "unit": units["kube-scheduler"],
                               "health_command": SCHEDULER_HEALTH,
                               "uses": ["file.kube-scheduler-kubeconfig"]},
            "kubelet": {**everyone, "unit": units["kubelet"], "health_command": KUBELET_HEALTH,
                        "uses": ["file.ca", "file.node", "file.node-key",
                                 "file.node-kubeconfig"]},
            "kube-proxy": {**everyone, "unit": units["kube-proxy"],
                           "health_command": PROXY_HEALTH,
                           "uses": ["file.kube-proxy-kubeconfig"]},
        }

    # TLS edges. cert.kubernetes is one cert for all control VMs, so "{server.address}" has
    # no host to expand to: the etcd edges are declared once per member with its address.
    shared = {"client_cert": "cert.kubernetes", "client_trust": "ca.kubernetes",
              "server_cert": "cert.kubernetes", "server_client_ca": "ca.kubernetes"}
    tls: list[dict[str, Any]] = []
    for host in control:
        tls.append({"name": f"etcd peer ↔ peer ({host.name})", "client": "etcd",
                    "server": "etcd", **shared, "server_name": host.address})
        tls.append({"name": f"kube-apiserver → etcd ({host.name})", "client": "kube-apiserver",
                    "server": "etcd", **shared, "server_name": host.address})
    tls.append({"name": "kube-apiserver → kubelet", "client": "kube-apiserver",
                "server": "kubelet", "client_cert": "cert.kubernetes",
                "client_trust": "ca.kubernetes", "server_cert": "cert.node",
                "server_client_ca": "ca.kubernetes", "server_name": "{server.address}"})
    for name, _, _ in clients:
        client = {"node": "kubelet"}.get(name, name)
        tls.append({
            "name": f"{name}.kubeconfig → kube-apiserver", "client": client,
            "server": "kube-apiserver", "client_cert": f"cert.{name}",
            "client_trust": f"kubeconfig.{name}", "server_cert": "cert.kubernetes",
            "server_client_ca": "ca.kubernetes", "server_name": api_host,
        })
    return Expansion(resources=resources, tls=tuple(tls))
