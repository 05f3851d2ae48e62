"""Reference: exactly what kubeadm generates for a cluster's PKI (certs, keys, kubeconfigs),
who consumes each file, and who talks TLS to whom.  Plain data, for tests.

SOURCES (read from the kubernetes/kubernetes Go sources through the code index; the index
returns one stored version of a file at a time, so the exact version is given by commit where
the index named one and otherwise by the content markers that date it):

  cmd/kubeadm/app/constants/constants.go
      @ 00886ac01fec1c8432967e8bb597828f46a9ba8b  (release-1.32 line: SupportedEtcdVersion
      keys 29..32, DefaultEtcdVersion "3.5.16-0", CoreDNS v1.11.3, PauseVersion "3.10";
      has SuperAdminKubeConfigFileName and ClusterAdminsGroupAndClusterRoleBinding).
  cmd/kubeadm/app/phases/certs/certlist.go
      v1.31+ version (KubeadmCert* are constructor funcs; GetConfig applies
      CertificateBackdate, ClusterConfiguration.CertificateValidityPeriod /
      CACertificateValidityPeriod and EncryptionAlgorithm; apiserver-kubelet-client
      O=kubeadm:cluster-admins).  History cross-checked against the v1.12-1.14 versions
      @ 03a145de8ad282764828f43821433001974718e9 and @ 3510e45d9707ac09d884598ec2a6178b4fe370f9
      (O=system:masters on apiserver-kubelet-client, healthcheck-client, apiserver-etcd-client).
  cmd/kubeadm/app/util/pkiutil/pki_helpers.go
      v1.31+ version (CertConfig{NotAfter time.Time, EncryptionAlgorithm}; own
      NewSelfSignedCACert; GetAPIServerAltNames, GetEtcdAltNames, GetEtcdPeerAltNames,
      getAltNames, NewSignedCert, RemoveDuplicateAltNames, GeneratePrivateKey), and the
      v1.29/v1.30 version @ 025f2834a128798cef30018a5e6a6ae82b5ad885 (PublicKeyAlgorithm;
      CA via client-go certutil.NewSelfSignedCACert; leaf NotBefore = CA NotBefore).
  cmd/kubeadm/app/phases/certs/certs.go           (v1.31+: CreatePKIAssets,
      CreateServiceAccountKeyAndPublicKeyFiles, SharedCertificateExists, UsingExternalCA)
  cmd/kubeadm/app/phases/kubeconfig/kubeconfig.go (v1.29/v1.30 line with super-admin.conf:
      getKubeConfigSpecsBase, CreateJoinControlPlaneKubeConfigFiles,
      EnsureAdminClusterRoleBindingImpl, ValidateKubeconfigsForExternalCA)
  cmd/kubeadm/app/cmd/phases/init/kubeconfig.go   (version with the "super-admin" sub-phase)
  cmd/kubeadm/app/cmd/phases/init/kubeletfinalize.go @ 04791b4906602ffda5ccf9bc4c84d3329f1d7080
  cmd/kubeadm/app/util/kubeconfig/kubeconfig.go   (CreateBasic: context "<user>@<cluster>";
      WriteToDisk -> client-go clientcmd.WriteToFile, mode 0600)
  cmd/kubeadm/app/phases/controlplane/manifests.go (v1.30+ []kubeadmapi.Arg form:
      getAPIServerCommand, getControllerManagerCommand, getSchedulerCommand)
  cmd/kubeadm/app/phases/etcd/local.go            (v1.30/1.31: getEtcdCommand, GetEtcdPodSpec;
      probes on http://127.0.0.1:2381 /livez,/readyz)
  cmd/kubeadm/app/util/etcd/etcd.go               (NewFromCluster uses etcd/healthcheck-client)
  cmd/kubeadm/app/componentconfigs/kubelet.go     (defaults: authentication.x509.clientCAFile
      = /etc/kubernetes/pki/ca.crt, anonymous off, authorization Webhook) -- read from a
      verbatim vendored copy, not from kubernetes/kubernetes itself.
  client-go util/cert.WriteCert (0644, dirs 0755), util/keyutil.WriteKey (0600, dirs 0755),
      tools/clientcmd.WriteToFile (0600).
  Version behaviour that could not be read from a stored file was taken from the merged
  upstream PRs (GitHub threads): #121305/#121837 (v1.29: super-admin.conf,
  kubeadm:cluster-admins, apiserver-kubelet-client O), #119859 and #120521 (v1.29:
  system:masters removed from etcd/healthcheck-client and apiserver-etcd-client),
  #125582/#125780 (v1.31: ControlPlaneKubeletLocalMode, alpha, default off), #129956
  (v1.33: ControlPlaneKubeletLocalMode beta, default ON), kubernetes/kubeadm#3243 (v1.33 user
  report: kubelet.conf server = advertise address even with controlPlaneEndpoint),
  kubernetes/kubeadm#3072 (kubeconfig client keys were always RSA before v1.31),
  #142037 (OPEN, not merged: would set KeyEncipherment only for RSA keys).

  Docs compared: kubernetes.io "PKI certificates and requirements"
  (content/en/docs/setup/best-practices/certificates.md; the older EN version
  @ 061144c8a21463a12796f6f6f5e4a43d12087133 and the current EN text as embedded in the
  zh-cn translation), plus the generated kubeadm reference pages for
  "kubeadm init phase certs etcd-server/etcd-peer".

TARGET VERSION: kubeadm v1.29+ (super-admin.conf exists).  Everything below is the v1.31+
behaviour unless a field says otherwise; per-version differences are spelled out where they
exist (O fields, validity start, kubelet.conf server URL, kubeconfig key algorithm).

DOCS-vs-CODE DISAGREEMENTS (the code wins; each is also in DOCS_VS_CODE below):
  1. CA CNs: docs "kubernetes-ca" and "kubernetes-front-proxy-ca"; kubeadm writes CN
     "kubernetes" (ca) and "front-proxy-ca" (front-proxy-ca).  etcd-ca agrees ("etcd-ca").
  2. etcd server/peer CN: docs "kube-etcd" / "kube-etcd-peer"; kubeadm sets CN = node name
     (setCommonNameToNodeName) for both.
  3. etcd server/peer SANs: current docs "<hostname>, <Host_IP>, localhost, 127.0.0.1"
     (older docs: server only "localhost, 127.0.0.1"); kubeadm: DNS {node_name}, localhost;
     IP {node_ip}, 127.0.0.1 and ::1 (the IPv6 loopback is always added), plus
     etcd.local.serverCertSANs / peerCertSANs.
  4. apiserver SANs: docs include "kubernetes.default.svc.cluster" - kubeadm does NOT;
     docs omit the service VIP (first IP of the service CIDR, 10.96.0.1 by default) which
     kubeadm always includes; docs list <Host_IP> and <advertise_IP> separately - kubeadm
     only adds the advertise address (+ controlPlaneEndpoint host + apiServer.certSANs);
     kubeadm uses the configured node name (nodeRegistration.name), not necessarily the
     hostname.
  5. apiserver-kubelet-client O: docs table "system:masters" (with a note that kubeadm
     uses kubeadm:cluster-admins); kubeadm v1.29+ writes O=kubeadm:cluster-admins.
  6. apiserver-etcd-client O: older docs "system:masters"; kubeadm v1.29+ writes no O
     (current docs were fixed to match).
  7. admin.conf O: older docs "system:masters", current docs "<admin-group>"; kubeadm
     v1.29+ writes O=kubeadm:cluster-admins (system:masters moved to super-admin.conf).
  8. kubeconfig naming: docs use credential names default-admin / default-auth /
     default-controller-manager / default-scheduler, cluster "default-cluster", context
     "default-system"; kubeadm uses cluster = clusterName ("kubernetes"), user = the client
     CN, context "<CN>@<clusterName>" (e.g. kubernetes-admin@kubernetes).
  9. Service-account keys: docs give sa.key only to kube-controller-manager
     (--service-account-private-key-file); kubeadm also gives sa.key to kube-apiserver
     (--service-account-signing-key-file) with --service-account-issuer.
 10. Docs list etcd/healthcheck-client as an "etcdctl --cert" credential (historically the
     etcd liveness probe); in kubeadm no static pod references it - etcd probes are plain
     HTTP on 127.0.0.1:2381 - and it is used by kubeadm's own etcd client
     (join/reset/upgrade member operations).
 11. Docs: kubelet.conf "one required for each node" made by hand; kubeadm writes
     kubelet.conf itself only on the `kubeadm init` node (and then repoints it to
     /var/lib/kubelet/pki/kubelet-client-current.pem); every other node's kubelet.conf is
     written by the kubelet during TLS bootstrap with a CSR-issued certificate.
 12. Docs are silent on CA key usages and CA SANs; kubeadm CAs carry
     digitalSignature+keyEncipherment+certSign (no cRLSign) and a DNS SAN equal to their CN.
 13. Docs: front-proxy certs "required only if you run kube-proxy to support an extension
     API server"; kubeadm always generates front-proxy-ca/front-proxy-client and always
     wires them into kube-apiserver and kube-controller-manager.
 14. Generated kubeadm reference pages say etcd-server/etcd-peer "Default SANs are
     localhost, 127.0.0.1, 127.0.0.1, ::1"; the code also adds {node_name} and {node_ip}.
 15. Docs "kind" table (digital signature, key encipherment, server/client auth) matches
     kubeadm leaves - note kubeadm sets keyEncipherment for ECDSA keys too (unconditional in
     every released version read; only the open PR #142037 would make it RSA-only).

SEED 001 ("TLS in Kubernetes", /work/shared/seeds/001_*) vs kubeadm code: see SEED_001_VS_CODE.

PLACEHOLDERS used in values (see PLACEHOLDERS for how to compute each):
  {node_name} {node_ip} {service_vip} {dns_domain} {cluster_name} {bind_port}
  {control_plane_endpoint_host} {control_plane_endpoint_port}
  {control_plane_endpoint_url} {local_api_endpoint_url}
"""

from typing import Any

# ---------------------------------------------------------------------------------------
# Constants (cmd/kubeadm/app/constants/constants.go)
# ---------------------------------------------------------------------------------------

KUBERNETES_DIR = "/etc/kubernetes"            # constants.KubernetesDir
PKI_DIR = "/etc/kubernetes/pki"               # KubernetesDir + DefaultCertificateDir ("pki")
MANIFESTS_DIR = "/etc/kubernetes/manifests"
KUBELET_PKI_DIR = "/var/lib/kubelet/pki"      # kubelet --cert-dir default (kubelet-finalize)

CONSTANTS: dict[str, Any] = {
    "CertificateBackdate_minutes": 5,                  # time.Minute * 5
    "CertificateValidityPeriod_hours": 24 * 365,        # 8760h  (leaves)
    "CACertificateValidityPeriod_hours": 24 * 365 * 10,  # 87600h (CAs)
    "CACertAndKeyBaseName": "ca",
    "APIServerCertAndKeyBaseName": "apiserver",
    "APIServerCertCommonName": "kube-apiserver",
    "APIServerKubeletClientCertAndKeyBaseName": "apiserver-kubelet-client",
    "APIServerKubeletClientCertCommonName": "kube-apiserver-kubelet-client",
    "EtcdCACertAndKeyBaseName": "etcd/ca",
    "EtcdServerCertAndKeyBaseName": "etcd/server",
    "EtcdPeerCertAndKeyBaseName": "etcd/peer",
    "EtcdHealthcheckClientCertAndKeyBaseName": "etcd/healthcheck-client",
    "EtcdHealthcheckClientCertCommonName": "kube-etcd-healthcheck-client",
    "APIServerEtcdClientCertAndKeyBaseName": "apiserver-etcd-client",
    "APIServerEtcdClientCertCommonName": "kube-apiserver-etcd-client",
    "ServiceAccountKeyBaseName": "sa",
    "ServiceAccountPublicKeyName": "sa.pub",
    "ServiceAccountPrivateKeyName": "sa.key",
    "FrontProxyCACertAndKeyBaseName": "front-proxy-ca",
    "FrontProxyClientCertAndKeyBaseName": "front-proxy-client",
    "FrontProxyClientCertCommonName": "front-proxy-client",
    "AdminKubeConfigFileName": "admin.conf",
    "SuperAdminKubeConfigFileName": "super-admin.conf",
    "KubeletBootstrapKubeConfigFileName": "bootstrap-kubelet.conf",
    "KubeletKubeConfigFileName": "kubelet.conf",
    "ControllerManagerKubeConfigFileName": "controller-manager.conf",
    "SchedulerKubeConfigFileName": "scheduler.conf",
    "ControllerManagerUser": "system:kube-controller-manager",
    "SchedulerUser": "system:kube-scheduler",
    "NodesUserPrefix": "system:node:",
    "SystemPrivilegedGroup": "system:masters",   # named MastersGroup in older kubeadm
    "NodesGroup": "system:nodes",
    "ClusterAdminsGroupAndClusterRoleBinding": "kubeadm:cluster-admins",
    "NodeBootstrapTokenAuthGroup": "system:bootstrappers:kubeadm:default-node-token",
    "EtcdListenClientPort": 2379,
    "EtcdListenPeerPort": 2380,
    "EtcdMetricsPort": 2381,
    "KubeletPort": 10250,
    "KubeSchedulerPort": 10259,
    "KubeControllerManagerPort": 10257,
    "KubeAPIServerPort": 6443,
    "EtcdAdvertiseClientUrlsAnnotationKey": "kubeadm.kubernetes.io/etcd.advertise-client-urls",
    "KubeadmCertsSecret": "kubeadm-certs",
}

CA_VALIDITY_DAYS = 3650    # 87600h exactly (no leap days)
LEAF_VALIDITY_DAYS = 365   # 8760h exactly

# Defaults applied by kubeadm's API defaulting (v1beta3/v1beta4).
DEFAULTS: dict[str, Any] = {
    "cluster_name": "kubernetes",           # ClusterConfiguration.clusterName
    "dns_domain": "cluster.local",          # networking.dnsDomain
    "service_subnet": "10.96.0.0/12",       # networking.serviceSubnet
    "service_vip": "10.96.0.1",             # first IP of the first service CIDR
    "bind_port": 6443,                      # localAPIEndpoint.bindPort
    "certificates_dir": PKI_DIR,
    "encryption_algorithm": "RSA-2048",     # v1beta4 encryptionAlgorithm default
    "encryption_algorithms_allowed_v1beta4": ["RSA-2048", "RSA-3072", "RSA-4096", "ECDSA-P256"],
    "certificate_validity_period": "8760h",      # v1beta4 certificateValidityPeriod default
    "ca_certificate_validity_period": "87600h",  # v1beta4 caCertificateValidityPeriod default
    "etcd_data_dir": "/var/lib/etcd",
}

PLACEHOLDERS: dict[str, str] = {
    "{node_name}": "InitConfiguration/JoinConfiguration nodeRegistration.name (defaults to the "
                   "host name, lower-cased). Per control-plane node.",
    "{node_ip}": "localAPIEndpoint.advertiseAddress of the control-plane node (the node's "
                 "advertise IP). Per control-plane node.",
    "{service_vip}": "first usable IP (index 1) of the FIRST CIDR in networking.serviceSubnet "
                     "(GetAPIServerVirtualIP); 10.96.0.1 by default.",
    "{dns_domain}": "networking.dnsDomain, default 'cluster.local'.",
    "{cluster_name}": "ClusterConfiguration.clusterName, default 'kubernetes'.",
    "{bind_port}": "localAPIEndpoint.bindPort, default 6443.",
    "{control_plane_endpoint_host}": "host part of ClusterConfiguration.controlPlaneEndpoint "
                                     "(a DNS name or an IP); absent when not configured.",
    "{control_plane_endpoint_port}": "port part of controlPlaneEndpoint; if omitted, {bind_port}.",
    "{control_plane_endpoint_url}": "GetControlPlaneEndpoint(): 'https://{control_plane_endpoint_host}:"
                                    "{control_plane_endpoint_port}' when controlPlaneEndpoint is set, "
                                    "else 'https://{node_ip}:{bind_port}' (IPv6 bracketed).",
    "{local_api_endpoint_url}": "GetLocalAPIEndpoint(): 'https://{node_ip}:{bind_port}' (IPv6 bracketed).",
    "{apiserver_cert_sans}": "each entry of ClusterConfiguration.apiServer.certSANs",
    "{etcd_server_cert_sans}": "each entry of ClusterConfiguration.etcd.local.serverCertSANs",
    "{etcd_peer_cert_sans}": "each entry of ClusterConfiguration.etcd.local.peerCertSANs",
    "{peer_node_ip}": "{node_ip} of the other etcd member (TLS_EDGES only)",
    "{member_node_ip}": "{node_ip} of any etcd member (TLS_EDGES only)",
    "{node_internal_ip}": "the Node object's InternalIP (any node, incl. workers; TLS_EDGES only)",
    "{service}/{namespace}/{port}": "the Service behind an APIService (TLS_EDGES only)",
}

# Key usage bit names used in this file (x509 KeyUsage / ExtKeyUsage).
KEY_USAGE_LEAF = ["digital_signature", "key_encipherment"]
KEY_USAGE_CA = ["digital_signature", "key_encipherment", "cert_sign"]

KEY_USAGE_NOTE = (
    "pki_helpers.go: NewSignedCert sets KeyUsageKeyEncipherment|KeyUsageDigitalSignature for "
    "every leaf (|CertSign when isCA); NewSelfSignedCACert (v1.31+) and client-go "
    "certutil.NewSelfSignedCACert (v1.29/1.30) set KeyEncipherment|DigitalSignature|CertSign. "
    "This is UNCONDITIONAL on key type: ECDSA keys (encryptionAlgorithm ECDSA-P256) also get "
    "key_encipherment in every released version read. Only the open, unmerged PR "
    "kubernetes/kubernetes#142037 would restrict key_encipherment to RSA keys. No cRLSign, no "
    "other bits. The KeyUsage extension is marked critical by Go's x509."
)

VALIDITY_NOTE = (
    "v1.31+: KubeadmCert.GetConfig sets NotBefore = start - CertificateBackdate (5 min) for CAs "
    "and leaves, and NotAfter = start + CertificateValidityPeriod (leaf, default 8760h) or "
    "start + CACertificateValidityPeriod (CA, default 87600h), where start = kubeadm start time "
    "(UTC). So NotAfter - NotBefore = period + 5 minutes. v1.29/v1.30: CA NotBefore = now - 5 min, "
    "NotAfter = now + 10*365d (client-go certutil); leaf NotBefore = the signing CA's NotBefore "
    "(!), NotAfter = now + 365d. Tests should check NotAfter - now ~= period (tolerance of a few "
    "minutes) rather than NotAfter - NotBefore exactly."
)

SAN_ORDER_NOTE = (
    "RemoveDuplicateAltNames runs before signing: DNS names are de-duplicated AND sorted "
    "(sets.List), IPs are de-duplicated keeping first-seen order. Compare SANs as sets."
)

KEY_ENCODING = {
    "rsa_private_key_pem_type": "RSA PRIVATE KEY",   # keyutil.MarshalPrivateKeyToPEM, PKCS#1
    "ecdsa_private_key_pem_type": "EC PRIVATE KEY",  # SEC1
    "public_key_pem_type": "PUBLIC KEY",             # sa.pub, PKIX (pkiutil.EncodePublicKeyPEM)
    "certificate_pem_type": "CERTIFICATE",
    "default_key": "RSA 2048 (GeneratePrivateKey; rsaKeySizeFromAlgorithmType('')==2048)",
    "serial": "random integer in [1, 2^63-1) (cryptorand.Int(MaxInt64-1) + 1)",
    "subject_fields": "only CN and O are ever set (pkix.Name{CommonName, Organization})",
    "basic_constraints": "BasicConstraintsValid=true on every cert; IsCA true only for the 3 CAs; "
                         "no MaxPathLen set",
}

FILE_MODES = {
    "cert": 0o644,          # client-go certutil.WriteCert
    "key": 0o600,           # client-go keyutil.WriteKey
    "public_key": 0o600,    # pkiutil.WritePublicKey -> keyutil.WriteKey (sa.pub is 0600!)
    "csr": 0o600,           # pkiutil.WriteCSR (external-CA / `kubeadm certs generate-csr`)
    "kubeconfig": 0o600,    # kubeconfigutil.WriteToDisk -> clientcmd.WriteToFile
    "created_dirs": 0o755,  # MkdirAll in WriteCert/WriteKey/WriteToFile
    "note": "Modes are what Go passes to os.WriteFile: applied on creation only (an existing "
            "file keeps its mode when overwritten) and subject to the process umask.",
}

# ---------------------------------------------------------------------------------------
# CERTS: one entry per kubeadm cert/key (certlist.go GetDefaultCertList order) + sa keypair
# ---------------------------------------------------------------------------------------

_CA_COMMON: dict[str, Any] = {
    "kind": "ca",
    "signer": None,
    "self_signed": True,
    "is_ca": True,
    "ext_key_usage": [],
    "key_usage": list(KEY_USAGE_CA),
    "validity_days": CA_VALIDITY_DAYS,
    "validity_constant": "CACertificateValidityPeriod = time.Hour * 24 * 365 * 10 (87600h); "
                         "overridable by ClusterConfiguration.caCertificateValidityPeriod (v1beta4)",
    "scope": "cluster",
    "shared_across_control_plane_nodes": True,
    "cert_mode": FILE_MODES["cert"],
    "key_mode": FILE_MODES["key"],
    "renewed_by_kubeadm_certs_renew": False,
}

_LEAF_COMMON: dict[str, Any] = {
    "kind": "leaf",
    "self_signed": False,
    "is_ca": False,
    "key_usage": list(KEY_USAGE_LEAF),
    "validity_days": LEAF_VALIDITY_DAYS,
    "validity_constant": "CertificateValidityPeriod = time.Hour * 24 * 365 (8760h); "
                         "overridable by ClusterConfiguration.certificateValidityPeriod (v1beta4)",
    "scope": "control_plane_node",
    "shared_across_control_plane_nodes": False,
    "cert_mode": FILE_MODES["cert"],
    "key_mode": FILE_MODES["key"],
    "renewed_by_kubeadm_certs_renew": True,
}


CERTS: list[dict[str, Any]] = [
    {
        **_CA_COMMON,
        "name": "ca",
        "go_symbol": "KubeadmCertRootCA",
        "long_name": "self-signed Kubernetes CA to provision identities for other Kubernetes components",
        "base_name": "ca",
        "cert_file": "ca.crt",
        "key_file": "ca.key",
        "subject_cn": "kubernetes",
        "subject_o": [],
        "san_description": "DNSNames = [CommonName] (NewSelfSignedCACert) -> DNS:kubernetes; no IPs.",
        "san_dns": ["kubernetes"],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": False,
        "created_on": "kubeadm init node; copied (kubeadm-certs Secret via --upload-certs/--certificate-key, "
                      "or by hand) to joining control-plane nodes; ca.crt only is written on worker "
                      "nodes by `kubeadm join` (JoinConfiguration caCertPath /etc/kubernetes/pki/ca.crt).",
        "signs": ["apiserver", "apiserver-kubelet-client", "admin.conf", "super-admin.conf",
                  "controller-manager.conf", "scheduler.conf", "kubelet.conf (init node)",
                  "CSR-issued kubelet client certs (via kube-controller-manager --cluster-signing-*)",
                  "CSR-issued kubelet serving certs (only with serverTLSBootstrap + manual approval)"],
    },
    {
        **_LEAF_COMMON,
        "name": "apiserver",
        "go_symbol": "KubeadmCertAPIServer",
        "long_name": "certificate for serving the Kubernetes API",
        "signer": "ca",
        "base_name": "apiserver",
        "cert_file": "apiserver.crt",
        "key_file": "apiserver.key",
        "subject_cn": "kube-apiserver",
        "subject_o": [],
        "ext_key_usage": ["server_auth"],
        "san_description": (
            "GetAPIServerAltNames: DNS {node_name}, kubernetes, kubernetes.default, "
            "kubernetes.default.svc, kubernetes.default.svc.{dns_domain}; IP {service_vip} "
            "(first IP of the first service CIDR), {node_ip} (advertise address). If "
            "controlPlaneEndpoint is set, its host is appended as an IP SAN if it parses as an IP, "
            "else as a DNS SAN (the port is dropped). Then apiServer.certSANs are appended (IP if "
            "parseable, else DNS if RFC-1123 subdomain or wildcard, else warned and dropped). "
            "NO localhost, NO 127.0.0.1, NO kubernetes.default.svc.cluster."),
        "san_dns": ["{node_name}", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.{dns_domain}"],
        "san_ip": ["{service_vip}", "{node_ip}"],
        "san_optional": [
            {"value": "{control_plane_endpoint_host}", "type": "ip_if_parseable_else_dns",
             "when": "ClusterConfiguration.controlPlaneEndpoint is set"},
            {"value": "{apiserver_cert_sans}", "type": "ip_if_parseable_else_dns",
             "when": "ClusterConfiguration.apiServer.certSANs"},
        ],
        "san_dns_with_defaults": ["{node_name}", "kubernetes", "kubernetes.default",
                                  "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
        "san_ip_with_defaults": ["10.96.0.1", "{node_ip}"],
        "only_with_local_etcd": False,
        "created_on": "every control-plane node (own SANs: own {node_name}/{node_ip})",
    },
    {
        **_LEAF_COMMON,
        "name": "apiserver-kubelet-client",
        "go_symbol": "KubeadmCertKubeletClient",
        "long_name": "certificate for the API server to connect to kubelet",
        "signer": "ca",
        "base_name": "apiserver-kubelet-client",
        "cert_file": "apiserver-kubelet-client.crt",
        "key_file": "apiserver-kubelet-client.key",
        "subject_cn": "kube-apiserver-kubelet-client",
        "subject_o": ["kubeadm:cluster-admins"],
        "subject_o_history": {"<=1.28": ["system:masters"], ">=1.29": ["kubeadm:cluster-admins"]},
        "ext_key_usage": ["client_auth"],
        "san_description": "none",
        "san_dns": [],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": False,
        "created_on": "every control-plane node (generated locally from the shared ca)",
    },
    {
        **_CA_COMMON,
        "name": "front-proxy-ca",
        "go_symbol": "KubeadmCertFrontProxyCA",
        "long_name": "self-signed CA to provision identities for front proxy",
        "base_name": "front-proxy-ca",
        "cert_file": "front-proxy-ca.crt",
        "key_file": "front-proxy-ca.key",
        "subject_cn": "front-proxy-ca",
        "subject_o": [],
        "san_description": "DNSNames = [CommonName] -> DNS:front-proxy-ca; no IPs.",
        "san_dns": ["front-proxy-ca"],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": False,
        "created_on": "kubeadm init node; copied to joining control-plane nodes",
        "signs": ["front-proxy-client"],
    },
    {
        **_LEAF_COMMON,
        "name": "front-proxy-client",
        "go_symbol": "KubeadmCertFrontProxyClient",
        "long_name": "certificate for the front proxy client",
        "signer": "front-proxy-ca",
        "base_name": "front-proxy-client",
        "cert_file": "front-proxy-client.crt",
        "key_file": "front-proxy-client.key",
        "subject_cn": "front-proxy-client",
        "subject_o": [],
        "ext_key_usage": ["client_auth"],
        "san_description": "none",
        "san_dns": [],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": False,
        "created_on": "every control-plane node",
        "note": "CN must equal kube-apiserver --requestheader-allowed-names=front-proxy-client.",
    },
    {
        **_CA_COMMON,
        "name": "etcd-ca",
        "go_symbol": "KubeadmCertEtcdCA",
        "long_name": "self-signed CA to provision identities for etcd",
        "base_name": "etcd/ca",
        "cert_file": "etcd/ca.crt",
        "key_file": "etcd/ca.key",
        "subject_cn": "etcd-ca",
        "subject_o": [],
        "san_description": "DNSNames = [CommonName] -> DNS:etcd-ca; no IPs.",
        "san_dns": ["etcd-ca"],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": True,
        "created_on": "kubeadm init node; copied to joining control-plane nodes (stacked etcd only)",
        "signs": ["etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client"],
    },
    {
        **_LEAF_COMMON,
        "name": "etcd-server",
        "go_symbol": "KubeadmCertEtcdServer",
        "long_name": "certificate for serving etcd",
        "signer": "etcd-ca",
        "base_name": "etcd/server",
        "cert_file": "etcd/server.crt",
        "key_file": "etcd/server.key",
        "subject_cn": "{node_name}",
        "subject_o": [],
        "ext_key_usage": ["server_auth", "client_auth"],
        "ext_key_usage_note": "client_auth kept because etcd 3.2+ also uses the serving cert as a "
                              "client (etcd-io/etcd#9785 TODO in certlist.go).",
        "san_description": (
            "getAltNames(cfg, EtcdServerCertName): DNS {node_name}, localhost; IP {node_ip}, "
            "127.0.0.1, ::1 (net.IPv6loopback is added even on IPv4-only clusters); then "
            "etcd.local.serverCertSANs."),
        "san_dns": ["{node_name}", "localhost"],
        "san_ip": ["{node_ip}", "127.0.0.1", "::1"],
        "san_optional": [
            {"value": "{etcd_server_cert_sans}", "type": "ip_if_parseable_else_dns",
             "when": "ClusterConfiguration.etcd.local.serverCertSANs"},
        ],
        "only_with_local_etcd": True,
        "created_on": "every control-plane node (stacked etcd)",
    },
    {
        **_LEAF_COMMON,
        "name": "etcd-peer",
        "go_symbol": "KubeadmCertEtcdPeer",
        "long_name": "certificate for etcd nodes to communicate with each other",
        "signer": "etcd-ca",
        "base_name": "etcd/peer",
        "cert_file": "etcd/peer.crt",
        "key_file": "etcd/peer.key",
        "subject_cn": "{node_name}",
        "subject_o": [],
        "ext_key_usage": ["server_auth", "client_auth"],
        "san_description": (
            "getAltNames(cfg, EtcdPeerCertName): DNS {node_name}, localhost; IP {node_ip}, "
            "127.0.0.1, ::1; then etcd.local.peerCertSANs."),
        "san_dns": ["{node_name}", "localhost"],
        "san_ip": ["{node_ip}", "127.0.0.1", "::1"],
        "san_optional": [
            {"value": "{etcd_peer_cert_sans}", "type": "ip_if_parseable_else_dns",
             "when": "ClusterConfiguration.etcd.local.peerCertSANs"},
        ],
        "only_with_local_etcd": True,
        "created_on": "every control-plane node (stacked etcd)",
        "note": "Used both as peer serving cert and as peer client cert; etcd >= 3.2 rejects a peer "
                "client cert whose IP SANs do not include the connecting remote IP, so {node_ip} "
                "must be the IP the member dials from.",
    },
    {
        **_LEAF_COMMON,
        "name": "etcd-healthcheck-client",
        "go_symbol": "KubeadmCertEtcdHealthcheck",
        "long_name": "certificate for liveness probes to healthcheck etcd",
        "signer": "etcd-ca",
        "base_name": "etcd/healthcheck-client",
        "cert_file": "etcd/healthcheck-client.crt",
        "key_file": "etcd/healthcheck-client.key",
        "subject_cn": "kube-etcd-healthcheck-client",
        "subject_o": [],
        "subject_o_history": {"<=1.28": ["system:masters"], ">=1.29": []},
        "ext_key_usage": ["client_auth"],
        "san_description": "none",
        "san_dns": [],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": True,
        "created_on": "every control-plane node (stacked etcd)",
        "note": "Not referenced by any static pod manifest (etcd probes are plain HTTP on "
                "127.0.0.1:2381). Used by kubeadm's own etcd client (util/etcd NewFromCluster) for "
                "member add/promote on join, member remove on reset, health checks on upgrade.",
    },
    {
        **_LEAF_COMMON,
        "name": "apiserver-etcd-client",
        "go_symbol": "KubeadmCertEtcdAPIClient",
        "long_name": "certificate the apiserver uses to access etcd",
        "signer": "etcd-ca",
        "base_name": "apiserver-etcd-client",
        "cert_file": "apiserver-etcd-client.crt",
        "key_file": "apiserver-etcd-client.key",
        "subject_cn": "kube-apiserver-etcd-client",
        "subject_o": [],
        "subject_o_history": {"<=1.28": ["system:masters"], ">=1.29": []},
        "ext_key_usage": ["client_auth"],
        "san_description": "none",
        "san_dns": [],
        "san_ip": [],
        "san_optional": [],
        "only_with_local_etcd": True,
        "created_on": "every control-plane node (stacked etcd); with external etcd the user supplies "
                      "etcd.external.certFile/keyFile/caFile instead",
    },
    {
        "name": "sa",
        "go_symbol": "CreateServiceAccountKeyAndPublicKeyFiles",
        "long_name": "service account token signing key pair (not an x509 certificate)",
        "kind": "keypair",
        "signer": None,
        "self_signed": None,
        "is_ca": False,
        "base_name": "sa",
        "cert_file": None,
        "key_file": "sa.key",
        "pub_file": "sa.pub",
        "subject_cn": None,
        "subject_o": [],
        "ext_key_usage": [],
        "key_usage": [],
        "san_description": "n/a (no certificate)",
        "san_dns": [],
        "san_ip": [],
        "san_optional": [],
        "key_algorithm": "ClusterConfiguration encryptionAlgorithm (RSA-2048 by default)",
        "key_pem_type": "RSA PRIVATE KEY (EC PRIVATE KEY for ECDSA-P256)",
        "pub_pem_type": "PUBLIC KEY",
        "validity_days": None,
        "validity_constant": None,
        "scope": "cluster",
        "shared_across_control_plane_nodes": True,
        "cert_mode": None,
        "key_mode": FILE_MODES["key"],
        "pub_mode": FILE_MODES["public_key"],   # 0600, written with keyutil.WriteKey
        "renewed_by_kubeadm_certs_renew": False,
        "only_with_local_etcd": False,
        "created_on": "kubeadm init node (reused if sa.key already exists); copied to joining "
                      "control-plane nodes",
    },
]

CERTS_BY_NAME: dict[str, dict[str, Any]] = {c["name"]: c for c in CERTS}

# Certificates generated when etcd is external (certlist.go GetCertsWithoutEtcd) + sa.
CERTS_WITHOUT_LOCAL_ETCD = ["ca", "apiserver", "apiserver-kubelet-client", "front-proxy-ca",
                            "front-proxy-client", "sa"]

# Files shared by all control-plane nodes (certs.go SharedCertificateExists; copycerts upload list).
SHARED_FILES = ["ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
                "etcd/ca.crt", "etcd/ca.key"]
# (With external etcd the etcd/* CA files are not part of the shared set checked by
# SharedCertificateExists; the user supplies etcd.external.caFile/certFile/keyFile.)

# ---------------------------------------------------------------------------------------
# KUBECONFIGS (phases/kubeconfig/kubeconfig.go getKubeConfigSpecsBase)
# ---------------------------------------------------------------------------------------

_KC_COMMON: dict[str, Any] = {
    "signer": "ca",
    "ext_key_usage": ["client_auth"],
    "key_usage": list(KEY_USAGE_LEAF),
    "san_dns": [],
    "san_ip": [],
    "validity_days": LEAF_VALIDITY_DAYS,
    "cluster_name": "{cluster_name}",
    "cluster_name_default": "kubernetes",
    "mode": FILE_MODES["kubeconfig"],
    "embeds": {
        "certificate-authority-data": "ca.crt PEM",
        "client-certificate-data": "client cert PEM (signed by ca)",
        "client-key-data": "client key PEM",
    },
    "key_algorithm": "encryptionAlgorithm (v1.31+); always RSA-2048 before v1.31 (kubeadm#3072)",
}

KUBECONFIGS: list[dict[str, Any]] = [
    {
        **_KC_COMMON,
        "file": "admin.conf",
        "path": "/etc/kubernetes/admin.conf",
        "client_cn": "kubernetes-admin",
        "client_o": ["kubeadm:cluster-admins"],
        "client_o_history": {"<=1.28": ["system:masters"], ">=1.29": ["kubeadm:cluster-admins"]},
        "user_name": "kubernetes-admin",
        "context_name": "kubernetes-admin@{cluster_name}",
        "context_name_default": "kubernetes-admin@kubernetes",
        "server": "{control_plane_endpoint_url}",
        "server_rule": "GetControlPlaneEndpoint: controlPlaneEndpoint if set (port defaults to bindPort), "
                       "else https://{node_ip}:{bind_port}. Same in all versions.",
        "nodes": "every control-plane node (init writes it; join --control-plane writes it via "
                 "CreateJoinControlPlaneKubeConfigFiles)",
        "rbac": "group kubeadm:cluster-admins is bound to ClusterRole cluster-admin by the "
                "ClusterRoleBinding 'kubeadm:cluster-admins' that kubeadm init creates "
                "(EnsureAdminClusterRoleBinding, using super-admin.conf if admin.conf is forbidden)",
        "renewed_by_kubeadm_certs_renew": True,
    },
    {
        **_KC_COMMON,
        "file": "super-admin.conf",
        "path": "/etc/kubernetes/super-admin.conf",
        "client_cn": "kubernetes-super-admin",
        "client_o": ["system:masters"],
        "user_name": "kubernetes-super-admin",
        "context_name": "kubernetes-super-admin@{cluster_name}",
        "context_name_default": "kubernetes-super-admin@kubernetes",
        "server": "{control_plane_endpoint_url}",
        "server_rule": "same as admin.conf",
        "nodes": "ONLY the node where `kubeadm init` ran (not written by join). Exists since v1.29.",
        "rbac": "system:masters bypasses RBAC (break-glass)",
        "renewed_by_kubeadm_certs_renew": True,
    },
    {
        **_KC_COMMON,
        "file": "controller-manager.conf",
        "path": "/etc/kubernetes/controller-manager.conf",
        "client_cn": "system:kube-controller-manager",
        "client_o": [],
        "user_name": "system:kube-controller-manager",
        "context_name": "system:kube-controller-manager@{cluster_name}",
        "context_name_default": "system:kube-controller-manager@kubernetes",
        "server": "{local_api_endpoint_url}",
        "server_rule": "GetLocalAPIEndpoint: always this node's https://{node_ip}:{bind_port}, never the "
                       "controlPlaneEndpoint. All versions.",
        "nodes": "every control-plane node",
        "renewed_by_kubeadm_certs_renew": True,
    },
    {
        **_KC_COMMON,
        "file": "scheduler.conf",
        "path": "/etc/kubernetes/scheduler.conf",
        "client_cn": "system:kube-scheduler",
        "client_o": [],
        "user_name": "system:kube-scheduler",
        "context_name": "system:kube-scheduler@{cluster_name}",
        "context_name_default": "system:kube-scheduler@kubernetes",
        "server": "{local_api_endpoint_url}",
        "server_rule": "same as controller-manager.conf (local API endpoint)",
        "nodes": "every control-plane node",
        "renewed_by_kubeadm_certs_renew": True,
    },
    {
        **_KC_COMMON,
        "file": "kubelet.conf",
        "path": "/etc/kubernetes/kubelet.conf",
        "client_cn": "system:node:{node_name}",
        "client_o": ["system:nodes"],
        "user_name": "system:node:{node_name}",
        "context_name": "system:node:{node_name}@{cluster_name}",
        "context_name_default": "system:node:{node_name}@kubernetes",
        "server": "version dependent, see server_by_version",
        "server_by_version": {
            "1.29-1.30": "{control_plane_endpoint_url} on every node",
            "1.31-1.32": "{control_plane_endpoint_url}; {local_api_endpoint_url} on control-plane "
                         "nodes only if featureGates.ControlPlaneKubeletLocalMode=true (alpha, off)",
            ">=1.33": "control-plane nodes: {local_api_endpoint_url} (ControlPlaneKubeletLocalMode "
                      "beta, ON by default; `kubeadm init phase kubeconfig kubelet` then ignores "
                      "controlPlaneEndpoint); worker nodes: {control_plane_endpoint_url} (the "
                      "endpoint from discovery/cluster-info)",
        },
        "server_rule": "init node written by kubeadm (getKubeConfigSpecsBase: controlPlaneEndpoint; "
                       "local endpoint when ControlPlaneKubeletLocalMode); joined nodes: written by the "
                       "kubelet from bootstrap-kubelet.conf (whose server kubeadm join sets to the "
                       "discovery endpoint, or to the local endpoint for control-plane joins under "
                       "ControlPlaneKubeletLocalMode).",
        "nodes": "EVERY node incl. workers. Only the `kubeadm init` node gets a kubeadm-signed, "
                 "embedded client cert; all others get it through kubelet TLS bootstrap "
                 "(bootstrap token -> CSR signer kubernetes.io/kube-apiserver-client-kubelet, "
                 "auto-approved, signed by kube-controller-manager with ca.crt/ca.key).",
        "post_init_rewrite": "kubelet-finalize phase: if /var/lib/kubelet/pki/kubelet-client-current.pem "
                             "exists, kubelet.conf's user is rewritten to client-certificate and "
                             "client-key = that path (embedded data removed) and the kubelet restarted. "
                             "Bootstrap-written kubelet.conf files use the same path form.",
        "client_cert_file_after_bootstrap": "/var/lib/kubelet/pki/kubelet-client-current.pem",
        "csr_issued_cert_validity": "kube-controller-manager --cluster-signing-duration (default 8760h)",
        "renewed_by_kubeadm_certs_renew": False,
        "rbac": "Node authorizer + NodeRestriction (kube-apiserver --authorization-mode=Node,RBAC, "
                "--enable-admission-plugins=NodeRestriction)",
    },
]

KUBECONFIGS_BY_FILE: dict[str, dict[str, Any]] = {k["file"]: k for k in KUBECONFIGS}

# Other kubeconfigs kubeadm touches but that hold no kubeadm-signed cert.
OTHER_KUBECONFIGS = [
    {"file": "bootstrap-kubelet.conf", "path": "/etc/kubernetes/bootstrap-kubelet.conf",
     "auth": "bootstrap token", "nodes": "joining nodes; removed after TLS bootstrap"},
    {"file": "kube-proxy kubeconfig", "path": "ConfigMap kube-system/kube-proxy key kubeconfig.conf",
     "auth": "service account token file", "server": "{control_plane_endpoint_url}"},
]

# ---------------------------------------------------------------------------------------
# SERVICES_USING: flags from the static pod manifests kubeadm writes
# (phases/controlplane/manifests.go, phases/etcd/local.go) + kubelet config
# ---------------------------------------------------------------------------------------

SERVICES_USING: list[dict[str, Any]] = [
    # --- kube-apiserver (getAPIServerCommand) ---
    {"component": "kube-apiserver", "flag": "--client-ca-file", "file": f"{PKI_DIR}/ca.crt", "cert": "ca",
     "purpose": "verify client certs of all API clients (kubeconfigs, kubelets)"},
    {"component": "kube-apiserver", "flag": "--tls-cert-file", "file": f"{PKI_DIR}/apiserver.crt", "cert": "apiserver",
     "purpose": "serving cert"},
    {"component": "kube-apiserver", "flag": "--tls-private-key-file", "file": f"{PKI_DIR}/apiserver.key", "cert": "apiserver",
     "purpose": "serving key"},
    {"component": "kube-apiserver", "flag": "--kubelet-client-certificate", "file": f"{PKI_DIR}/apiserver-kubelet-client.crt",
     "cert": "apiserver-kubelet-client", "purpose": "client cert towards kubelets"},
    {"component": "kube-apiserver", "flag": "--kubelet-client-key", "file": f"{PKI_DIR}/apiserver-kubelet-client.key",
     "cert": "apiserver-kubelet-client", "purpose": "client key towards kubelets"},
    {"component": "kube-apiserver", "flag": "--requestheader-client-ca-file", "file": f"{PKI_DIR}/front-proxy-ca.crt",
     "cert": "front-proxy-ca", "purpose": "verify front-proxy (requestheader) client certs"},
    {"component": "kube-apiserver", "flag": "--requestheader-allowed-names", "value": "front-proxy-client",
     "cert": "front-proxy-client", "purpose": "allowed CN of requestheader client cert"},
    {"component": "kube-apiserver", "flag": "--proxy-client-cert-file", "file": f"{PKI_DIR}/front-proxy-client.crt",
     "cert": "front-proxy-client", "purpose": "client cert towards aggregated API servers"},
    {"component": "kube-apiserver", "flag": "--proxy-client-key-file", "file": f"{PKI_DIR}/front-proxy-client.key",
     "cert": "front-proxy-client", "purpose": "client key towards aggregated API servers"},
    {"component": "kube-apiserver", "flag": "--etcd-cafile", "file": f"{PKI_DIR}/etcd/ca.crt", "cert": "etcd-ca",
     "purpose": "verify etcd serving cert (local etcd; external etcd: etcd.external.caFile)"},
    {"component": "kube-apiserver", "flag": "--etcd-certfile", "file": f"{PKI_DIR}/apiserver-etcd-client.crt",
     "cert": "apiserver-etcd-client", "purpose": "client cert towards etcd"},
    {"component": "kube-apiserver", "flag": "--etcd-keyfile", "file": f"{PKI_DIR}/apiserver-etcd-client.key",
     "cert": "apiserver-etcd-client", "purpose": "client key towards etcd"},
    {"component": "kube-apiserver", "flag": "--etcd-servers", "value": "https://127.0.0.1:2379",
     "cert": None, "purpose": "local etcd member only ([::1] if advertise address is IPv6; "
                              "overridden by etcd.local.extraArgs advertise-client-urls)"},
    {"component": "kube-apiserver", "flag": "--service-account-key-file", "file": f"{PKI_DIR}/sa.pub", "cert": "sa",
     "purpose": "verify service account tokens"},
    {"component": "kube-apiserver", "flag": "--service-account-signing-key-file", "file": f"{PKI_DIR}/sa.key", "cert": "sa",
     "purpose": "sign service account tokens (TokenRequest)"},
    {"component": "kube-apiserver", "flag": "--service-account-issuer", "value": "https://kubernetes.default.svc.{dns_domain}",
     "cert": None, "purpose": "token issuer"},
    {"component": "kube-apiserver", "flag": "--advertise-address", "value": "{node_ip}", "cert": None, "purpose": ""},
    {"component": "kube-apiserver", "flag": "--secure-port", "value": "{bind_port}", "cert": None, "purpose": ""},
    {"component": "kube-apiserver", "flag": "--kubelet-certificate-authority", "value": None, "cert": None,
     "purpose": "NOT SET by kubeadm: the apiserver does not verify kubelet serving certs"},
    # --- kube-controller-manager (getControllerManagerCommand) ---
    {"component": "kube-controller-manager", "flag": "--kubeconfig", "file": f"{KUBERNETES_DIR}/controller-manager.conf",
     "cert": "controller-manager.conf", "purpose": "API client identity"},
    {"component": "kube-controller-manager", "flag": "--authentication-kubeconfig", "file": f"{KUBERNETES_DIR}/controller-manager.conf",
     "cert": "controller-manager.conf", "purpose": "delegated authn for its own HTTPS port 10257"},
    {"component": "kube-controller-manager", "flag": "--authorization-kubeconfig", "file": f"{KUBERNETES_DIR}/controller-manager.conf",
     "cert": "controller-manager.conf", "purpose": "delegated authz"},
    {"component": "kube-controller-manager", "flag": "--client-ca-file", "file": f"{PKI_DIR}/ca.crt", "cert": "ca",
     "purpose": "verify client certs on its secure port"},
    {"component": "kube-controller-manager", "flag": "--requestheader-client-ca-file", "file": f"{PKI_DIR}/front-proxy-ca.crt",
     "cert": "front-proxy-ca", "purpose": "verify requestheader clients on its secure port"},
    {"component": "kube-controller-manager", "flag": "--root-ca-file", "file": f"{PKI_DIR}/ca.crt", "cert": "ca",
     "purpose": "published to pods as ConfigMap kube-root-ca.crt / SA token secrets"},
    {"component": "kube-controller-manager", "flag": "--service-account-private-key-file", "file": f"{PKI_DIR}/sa.key",
     "cert": "sa", "purpose": "sign legacy service account token secrets"},
    {"component": "kube-controller-manager", "flag": "--cluster-signing-cert-file", "file": f"{PKI_DIR}/ca.crt", "cert": "ca",
     "purpose": "CSR signer cert for all built-in signers (empty string when ca.key is absent = external CA)"},
    {"component": "kube-controller-manager", "flag": "--cluster-signing-key-file", "file": f"{PKI_DIR}/ca.key", "cert": "ca",
     "purpose": "CSR signer key (empty string when external CA)"},
    {"component": "kube-controller-manager", "flag": "--use-service-account-credentials", "value": "true", "cert": None,
     "purpose": ""},
    # --- kube-scheduler (getSchedulerCommand) ---
    {"component": "kube-scheduler", "flag": "--kubeconfig", "file": f"{KUBERNETES_DIR}/scheduler.conf",
     "cert": "scheduler.conf", "purpose": "API client identity"},
    {"component": "kube-scheduler", "flag": "--authentication-kubeconfig", "file": f"{KUBERNETES_DIR}/scheduler.conf",
     "cert": "scheduler.conf", "purpose": "delegated authn for its own HTTPS port 10259"},
    {"component": "kube-scheduler", "flag": "--authorization-kubeconfig", "file": f"{KUBERNETES_DIR}/scheduler.conf",
     "cert": "scheduler.conf", "purpose": "delegated authz"},
    # --- etcd (phases/etcd/local.go getEtcdCommand) ---
    {"component": "etcd", "flag": "--cert-file", "file": f"{PKI_DIR}/etcd/server.crt", "cert": "etcd-server",
     "purpose": "client-port serving cert"},
    {"component": "etcd", "flag": "--key-file", "file": f"{PKI_DIR}/etcd/server.key", "cert": "etcd-server",
     "purpose": "client-port serving key"},
    {"component": "etcd", "flag": "--trusted-ca-file", "file": f"{PKI_DIR}/etcd/ca.crt", "cert": "etcd-ca",
     "purpose": "verify client certs on 2379"},
    {"component": "etcd", "flag": "--client-cert-auth", "value": "true", "cert": None, "purpose": "require client certs"},
    {"component": "etcd", "flag": "--peer-cert-file", "file": f"{PKI_DIR}/etcd/peer.crt", "cert": "etcd-peer",
     "purpose": "peer serving AND peer client cert"},
    {"component": "etcd", "flag": "--peer-key-file", "file": f"{PKI_DIR}/etcd/peer.key", "cert": "etcd-peer", "purpose": ""},
    {"component": "etcd", "flag": "--peer-trusted-ca-file", "file": f"{PKI_DIR}/etcd/ca.crt", "cert": "etcd-ca",
     "purpose": "verify peers (both directions)"},
    {"component": "etcd", "flag": "--peer-client-cert-auth", "value": "true", "cert": None, "purpose": "require peer client certs"},
    {"component": "etcd", "flag": "--listen-client-urls", "value": "https://127.0.0.1:2379,https://{node_ip}:2379",
     "cert": None, "purpose": "([::1] instead of 127.0.0.1 when the advertise address is IPv6)"},
    {"component": "etcd", "flag": "--advertise-client-urls", "value": "https://{node_ip}:2379", "cert": None,
     "purpose": "also stored in pod annotation kubeadm.kubernetes.io/etcd.advertise-client-urls"},
    {"component": "etcd", "flag": "--listen-peer-urls", "value": "https://{node_ip}:2380", "cert": None, "purpose": ""},
    {"component": "etcd", "flag": "--initial-advertise-peer-urls", "value": "https://{node_ip}:2380", "cert": None, "purpose": ""},
    {"component": "etcd", "flag": "--listen-metrics-urls", "value": "http://127.0.0.1:2381", "cert": None,
     "purpose": "plain HTTP; liveness/readiness/startup probes (/livez, /readyz) use it, no cert"},
    {"component": "etcd", "flag": "--name", "value": "{node_name}", "cert": None, "purpose": ""},
    # --- kubelet (systemd drop-in 10-kubeadm.conf + /var/lib/kubelet/config.yaml from kubeadm) ---
    {"component": "kubelet", "flag": "--kubeconfig", "file": f"{KUBERNETES_DIR}/kubelet.conf", "cert": "kubelet.conf",
     "purpose": "API client identity (drop-in KUBELET_KUBECONFIG_ARGS)"},
    {"component": "kubelet", "flag": "--bootstrap-kubeconfig", "file": f"{KUBERNETES_DIR}/bootstrap-kubelet.conf",
     "cert": None, "purpose": "TLS bootstrap on join (token auth)"},
    {"component": "kubelet", "flag": "config: authentication.x509.clientCAFile", "file": f"{PKI_DIR}/ca.crt", "cert": "ca",
     "purpose": "verify client certs (e.g. apiserver-kubelet-client) on :10250; anonymous auth disabled, "
                "authorization mode Webhook"},
    {"component": "kubelet", "flag": "config: rotateCertificates", "value": "true", "cert": None,
     "purpose": "client cert in /var/lib/kubelet/pki/kubelet-client-current.pem rotated via CSR"},
    {"component": "kubelet", "flag": "config: tlsCertFile/tlsPrivateKeyFile", "value": None, "cert": None,
     "purpose": "NOT SET by kubeadm: kubelet self-signs /var/lib/kubelet/pki/kubelet.crt|.key unless "
                "serverTLSBootstrap: true"},
]

# Consumers that are not static pods.
OTHER_CONSUMERS = [
    {"consumer": "kubeadm (init/join/upgrade/reset)", "file": f"{KUBERNETES_DIR}/admin.conf",
     "purpose": "API operations; super-admin.conf only to create the kubeadm:cluster-admins CRB during init"},
    {"consumer": "kubeadm etcd client", "file": f"{PKI_DIR}/etcd/healthcheck-client.crt|.key + etcd/ca.crt",
     "purpose": "etcd member add/promote/remove/health against https://{member_ip}:2379"},
    {"consumer": "pods (in-cluster clients)", "file": "ConfigMap kube-root-ca.crt (= ca.crt via --root-ca-file)",
     "purpose": "trust the apiserver at kubernetes.default.svc / {service_vip}"},
]

# ---------------------------------------------------------------------------------------
# TLS_EDGES: who talks TLS to whom in a kubeadm cluster
# ---------------------------------------------------------------------------------------

TLS_EDGES: list[dict[str, Any]] = [
    {
        "id": "etcd-peer",
        "client": "etcd (member A)",
        "client_cert": "etcd-peer",
        "client_trusts": "etcd-ca (--peer-trusted-ca-file)",
        "server": "etcd (member B) peer port",
        "server_url": "https://{peer_node_ip}:2380",
        "server_cert": "etcd-peer",
        "server_client_ca": "etcd-ca (--peer-trusted-ca-file, --peer-client-cert-auth=true)",
        "name_used": "{peer_node_ip}",
        "server_san_required": ["{node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "Symmetric (every member dials every other). etcd >= 3.2 additionally requires the "
                 "peer CLIENT cert's IP SANs (if any) to include the connecting remote IP.",
    },
    {
        "id": "apiserver-etcd",
        "client": "kube-apiserver",
        "client_cert": "apiserver-etcd-client",
        "client_trusts": "etcd-ca (--etcd-cafile)",
        "server": "etcd client port (local member)",
        "server_url": "https://127.0.0.1:2379",
        "server_cert": "etcd-server",
        "server_client_ca": "etcd-ca (--trusted-ca-file, --client-cert-auth=true)",
        "name_used": "127.0.0.1 (::1 on IPv6)",
        "server_san_required": ["127.0.0.1"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "Stacked etcd: each apiserver only talks to the etcd on its own node.",
    },
    {
        "id": "kubeadm-etcd-healthcheck",
        "client": "kubeadm's etcd client (and any etcdctl an operator runs with these files)",
        "client_cert": "etcd-healthcheck-client",
        "client_trusts": "etcd-ca",
        "server": "etcd client port (every member)",
        "server_url": "https://{member_node_ip}:2379",
        "server_cert": "etcd-server",
        "server_client_ca": "etcd-ca",
        "name_used": "{member_node_ip} (from the etcd pods' advertise-client-urls annotation)",
        "server_san_required": ["{node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "Not used by probes: etcd liveness/readiness/startup probes are plain HTTP "
                 "http://127.0.0.1:2381/livez|/readyz.",
    },
    {
        "id": "admin-apiserver",
        "client": "kubectl / kubeadm with admin.conf",
        "client_cert": "admin.conf (CN kubernetes-admin, O kubeadm:cluster-admins)",
        "client_trusts": "ca (certificate-authority-data)",
        "server": "kube-apiserver",
        "server_url": "{control_plane_endpoint_url}",
        "server_cert": "apiserver",
        "server_client_ca": "ca (--client-ca-file)",
        "name_used": "{control_plane_endpoint_host} if set, else {node_ip}",
        "server_san_required": ["{control_plane_endpoint_host} or {node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "",
    },
    {
        "id": "super-admin-apiserver",
        "client": "kubectl / kubeadm with super-admin.conf",
        "client_cert": "super-admin.conf (CN kubernetes-super-admin, O system:masters)",
        "client_trusts": "ca",
        "server": "kube-apiserver",
        "server_url": "{control_plane_endpoint_url}",
        "server_cert": "apiserver",
        "server_client_ca": "ca (--client-ca-file)",
        "name_used": "{control_plane_endpoint_host} if set, else {node_ip}",
        "server_san_required": ["{control_plane_endpoint_host} or {node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "File exists only on the init node.",
    },
    {
        "id": "controller-manager-apiserver",
        "client": "kube-controller-manager",
        "client_cert": "controller-manager.conf (CN system:kube-controller-manager)",
        "client_trusts": "ca",
        "server": "kube-apiserver on the same node",
        "server_url": "{local_api_endpoint_url}",
        "server_cert": "apiserver",
        "server_client_ca": "ca (--client-ca-file)",
        "name_used": "{node_ip}",
        "server_san_required": ["{node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "",
    },
    {
        "id": "scheduler-apiserver",
        "client": "kube-scheduler",
        "client_cert": "scheduler.conf (CN system:kube-scheduler)",
        "client_trusts": "ca",
        "server": "kube-apiserver on the same node",
        "server_url": "{local_api_endpoint_url}",
        "server_cert": "apiserver",
        "server_client_ca": "ca (--client-ca-file)",
        "name_used": "{node_ip}",
        "server_san_required": ["{node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "",
    },
    {
        "id": "kubelet-apiserver",
        "client": "kubelet (every node)",
        "client_cert": "kubelet.conf (CN system:node:{node_name}, O system:nodes); init node: kubeadm-"
                       "signed, later kubelet-client-current.pem; other nodes: CSR-issued by "
                       "kube-controller-manager from ca",
        "client_trusts": "ca (certificate-authority-data in kubelet.conf)",
        "server": "kube-apiserver",
        "server_url": "see KUBECONFIGS kubelet.conf server_by_version",
        "server_cert": "apiserver",
        "server_client_ca": "ca (--client-ca-file)",
        "name_used": "workers: {control_plane_endpoint_host} or init node {node_ip}; control-plane nodes "
                     ">=1.33 (ControlPlaneKubeletLocalMode): own {node_ip}",
        "server_san_required": ["{control_plane_endpoint_host} or {node_ip}"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "Join-time bootstrap uses bootstrap-kubelet.conf (token) with the same server/CA.",
    },
    {
        "id": "apiserver-kubelet",
        "client": "kube-apiserver (logs/exec/port-forward/proxy)",
        "client_cert": "apiserver-kubelet-client (CN kube-apiserver-kubelet-client, O kubeadm:cluster-admins)",
        "client_trusts": "NOTHING: kubeadm sets no --kubelet-certificate-authority, so the kubelet "
                         "serving cert is not verified",
        "server": "kubelet :10250 (every node)",
        "server_url": "https://{node_internal_ip}:10250 (--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname)",
        "server_cert": "kubelet serving cert: SELF-SIGNED by the kubelet by default "
                       "(/var/lib/kubelet/pki/kubelet.crt, own '<hostname>-ca@<timestamp>' issuer, not "
                       "kubeadm-generated). Only with KubeletConfiguration serverTLSBootstrap: true is it "
                       "requested via CSR signer kubernetes.io/kubelet-serving and signed by ca "
                       "(kubelet-server-current.pem); kubeadm does NOT auto-approve those CSRs.",
        "server_client_ca": "ca (kubelet authentication.x509.clientCAFile=/etc/kubernetes/pki/ca.crt); "
                            "authorization via Webhook SubjectAccessReview -> RBAC (kubeadm:cluster-admins "
                            "-> cluster-admin)",
        "name_used": "{node_internal_ip}",
        "server_san_required": [],
        "mutual": True,
        "client_verifies_server": False,
        "notes": "",
    },
    {
        "id": "front-proxy",
        "client": "kube-apiserver (aggregator / front proxy)",
        "client_cert": "front-proxy-client (CN front-proxy-client)",
        "client_trusts": "APIService.spec.caBundle of the aggregated API (or insecureSkipTLSVerify)",
        "server": "aggregated API server (e.g. metrics-server)",
        "server_url": "https://{service}.{namespace}.svc:{port}",
        "server_cert": "the extension server's own cert (not generated by kubeadm)",
        "server_client_ca": "front-proxy-ca, read from ConfigMap kube-system/extension-apiserver-authentication "
                            "(requestheader-client-ca-file); CN must be in requestheader-allowed-names "
                            "[front-proxy-client]",
        "name_used": "{service}.{namespace}.svc",
        "server_san_required": ["{service}.{namespace}.svc"],
        "mutual": True,
        "client_verifies_server": True,
        "notes": "User identity is passed in X-Remote-User/X-Remote-Group/X-Remote-Extra- headers.",
    },
    {
        "id": "pod-apiserver",
        "client": "in-cluster pods (service accounts)",
        "client_cert": None,
        "client_trusts": "ca via ConfigMap kube-root-ca.crt (kube-controller-manager --root-ca-file)",
        "server": "kube-apiserver via Service 'kubernetes'",
        "server_url": "https://kubernetes.default.svc (= https://{service_vip}:443)",
        "server_cert": "apiserver",
        "server_client_ca": "none (bearer tokens signed with sa.key, verified with sa.pub)",
        "name_used": "kubernetes.default.svc / {service_vip}",
        "server_san_required": ["kubernetes.default.svc", "{service_vip}"],
        "mutual": False,
        "client_verifies_server": True,
        "notes": "kube-proxy (kubeadm addon) is in this class: SA token kubeconfig, server = "
                 "{control_plane_endpoint_url}.",
    },
    {
        "id": "probes",
        "client": "kubelet probes on control-plane static pods",
        "client_cert": None,
        "client_trusts": "nothing (HTTPS probes do not verify)",
        "server": "kube-apiserver {node_ip}:{bind_port} (HTTPS); kube-controller-manager 127.0.0.1:10257 "
                  "(HTTPS); kube-scheduler 127.0.0.1:10259 (HTTPS); etcd 127.0.0.1:2381 /livez,/readyz "
                  "(plain HTTP, local.go)",
        "server_url": "",
        "server_cert": "apiserver for the apiserver; kcm/scheduler serve self-signed in-memory certs "
                       "(kubeadm passes no --tls-cert-file to them); etcd metrics port has no TLS",
        "server_client_ca": "",
        "name_used": "",
        "server_san_required": [],
        "mutual": False,
        "client_verifies_server": False,
        "notes": "Informational; no kubeadm cert is needed for probes.",
    },
]

# ---------------------------------------------------------------------------------------
# Disagreements, machine-readable
# ---------------------------------------------------------------------------------------

DOCS_VS_CODE: list[dict[str, str]] = [
    {"topic": "CA CN (ca)", "docs": "kubernetes-ca", "code": "kubernetes"},
    {"topic": "CA CN (front-proxy-ca)", "docs": "kubernetes-front-proxy-ca", "code": "front-proxy-ca"},
    {"topic": "etcd-server CN", "docs": "kube-etcd", "code": "{node_name}"},
    {"topic": "etcd-peer CN", "docs": "kube-etcd-peer", "code": "{node_name}"},
    {"topic": "etcd-server/peer SANs",
     "docs": "<hostname>, <Host_IP>, localhost, 127.0.0.1 (older docs: server only localhost, 127.0.0.1)",
     "code": "DNS {node_name}, localhost; IP {node_ip}, 127.0.0.1, ::1 (+ etcd.local.server/peerCertSANs)"},
    {"topic": "apiserver SANs",
     "docs": "<hostname>, <Host_IP>, <advertise_IP>, LB IP/DNS, kubernetes, kubernetes.default, "
             "kubernetes.default.svc, kubernetes.default.svc.cluster, kubernetes.default.svc.cluster.local",
     "code": "DNS {node_name}, kubernetes, kubernetes.default, kubernetes.default.svc, "
             "kubernetes.default.svc.{dns_domain}; IP {service_vip}, {node_ip}; + controlPlaneEndpoint host; "
             "+ apiServer.certSANs. No 'kubernetes.default.svc.cluster', service VIP always present."},
    {"topic": "apiserver-kubelet-client O", "docs": "system:masters (note mentions kubeadm:cluster-admins)",
     "code": "kubeadm:cluster-admins (v1.29+)"},
    {"topic": "apiserver-etcd-client O", "docs": "system:masters (older docs; current docs: none)",
     "code": "none (v1.29+)"},
    {"topic": "admin.conf O", "docs": "system:masters (older) / <admin-group> (current)",
     "code": "kubeadm:cluster-admins (v1.29+); system:masters is in super-admin.conf"},
    {"topic": "kubeconfig cluster/user/context names",
     "docs": "default-cluster / default-admin|default-auth|default-controller-manager|default-scheduler / default-system",
     "code": "{cluster_name} / <client CN> / '<client CN>@{cluster_name}'"},
    {"topic": "sa.key consumers", "docs": "kube-controller-manager --service-account-private-key-file only",
     "code": "also kube-apiserver --service-account-signing-key-file (with --service-account-issuer)"},
    {"topic": "etcd/healthcheck-client consumer", "docs": "etcdctl --cert/--key (historically the liveness probe)",
     "code": "no manifest uses it; probes are HTTP :2381; kubeadm's own etcd client uses it"},
    {"topic": "kubelet.conf", "docs": "one per node, created by hand with CN system:node:<nodeName>",
     "code": "kubeadm signs it only on the init node; all other nodes get it via kubelet TLS bootstrap"},
    {"topic": "CA key usage / CA SAN", "docs": "not specified",
     "code": "digitalSignature, keyEncipherment, certSign; DNS SAN = CN"},
    {"topic": "front-proxy certs", "docs": "only needed with an extension API server",
     "code": "always generated and always wired into kube-apiserver and kube-controller-manager"},
    {"topic": "generated kubeadm reference (init phase certs etcd-server/peer)",
     "docs": "Default SANs are localhost, 127.0.0.1, 127.0.0.1, ::1",
     "code": "also {node_name} and {node_ip}"},
]

SEED_001_VS_CODE: list[dict[str, str]] = [
    {"topic": "admin client cert", "seed": "CN kube-admin, O 'system:master' (sic)",
     "code": "CN kubernetes-admin, O kubeadm:cluster-admins (admin.conf, v1.29+); "
             "O system:masters only in super-admin.conf (note the trailing 's')"},
    {"topic": "CA CN", "seed": "KUBERNETES-CA", "code": "kubernetes"},
    {"topic": "apiserver SANs", "seed": "kubernetes, kubernetes.default, kubernetes.default.svc, "
                                        "kubernetes.default.svc.cluster.local + 2 example IPs",
     "code": "also the node name and the control-plane endpoint host; IPs are exactly "
             "{service_vip} and {node_ip} (+ endpoint/certSANs)"},
    {"topic": "apiserver key usage", "seed": "openssl.cnf keyUsage = nonRepudiation (and typo 'sibjectAltName')",
     "code": "digitalSignature, keyEncipherment; extKeyUsage serverAuth"},
    {"topic": "apiserver flags", "seed": "no --service-account-signing-key-file/--service-account-issuer; "
                                         "--insecure-port=0; --disable-admission-plugins=PersistentVolumeLabel",
     "code": "kubeadm (v1.20+) sets --service-account-signing-key-file=sa.key and --service-account-issuer; "
             "--insecure-port was dropped; only --enable-admission-plugins=NodeRestriction"},
    {"topic": "validity", "seed": "openssl x509 -req without -days (30 days)",
     "code": "leaves 365 days, CAs 3650 days"},
]

# ---------------------------------------------------------------------------------------
# Health endpoints: where kubeadm itself asks whether each component is alive
# ---------------------------------------------------------------------------------------
# cmd/kubeadm/app/phases/controlplane/manifests.go @ ad7cb45bb24a21d7f391c10985d0af850471f426
# (GetStaticPodSpecs):
#   kube-apiserver           LivenessProbe(GetAPIServerProbeAddress(endpoint), "/livez",
#                                          endpoint.BindPort, HTTPS)
#   kube-controller-manager  LivenessProbe(GetControllerManagerProbeAddress(cfg), "/healthz",
#                                          constants.KubeControllerManagerPort, HTTPS)
#   kube-scheduler           LivenessProbe(GetSchedulerProbeAddress(cfg), "/healthz",
#                                          constants.KubeSchedulerPort, HTTPS)
#   The probe address is the advertise address for the apiserver (it binds 0.0.0.0, so
#   127.0.0.1 answers the same) and the --bind-address kubeadm sets for the other two
#   (127.0.0.1). Older kubeadm (v1.8-era manifests.go) probed 10252/10251 over plain HTTP:
#   the insecure ports were removed in v1.20+/v1.23.
# cmd/kubeadm/app/constants/constants.go @ 3301161c36ac9c27854a7b4636139d4ebde43e72:
#   KubeSchedulerPort = 10259, KubeControllerManagerPort = 10257, KubeletHealthzPort = 10248.
# cmd/kubeadm/app/componentconfigs/kubelet.go (Default): healthzBindAddress "127.0.0.1",
#   healthzPort constants.KubeletHealthzPort ("Serve a /healthz webserver on localhost:10248
#   that kubeadm can talk to"); util/apiclient/wait.go WaitForKubelet polls
#   "http://%s:%d/healthz" there (the kubelet is a systemd unit, not a static pod: this is
#   kubeadm's kubelet-check, not a liveness probe).
# cmd/kubeadm/app/phases/etcd/local.go: etcd's liveness probe is plain HTTP on the metrics
#   listener, http://127.0.0.1:2381/livez (--listen-metrics-urls). The preset checks etcd with
#   `etcdctl endpoint health` over TLS with etcd/healthcheck-client instead: stronger (it
#   needs the served cert to verify against the deployed etcd CA), see HEALTH_CHECK_DEVIATIONS.
HEALTH_ENDPOINTS: dict[str, str] = {
    "etcd": "http://127.0.0.1:2381/livez",
    "kube-apiserver": "https://127.0.0.1:{bind_port}/livez",
    "kube-controller-manager": "https://127.0.0.1:10257/healthz",
    "kube-scheduler": "https://127.0.0.1:10259/healthz",
    "kubelet": "http://127.0.0.1:10248/healthz",
}
HEALTH_CHECK_DEVIATIONS: dict[str, str] = {
    "etcd": "etcdctl endpoint health against https://127.0.0.1:2379 with etcd/ca.crt and "
            "etcd/healthcheck-client.{crt,key} (kubeadm's own etcd client credential)",
}
