"""Hypothesis strategies: random fake DAGs (engine laws) and small real PKIs (rotation laws).

Configs are built as `Config`/`ResourceSpec` values directly (what the loader would produce
after presets, for_each and defaults), never through TOML.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from hypothesis import strategies as st

from pkiform.address import Address, Ref
from pkiform.model import Config, Host, ResourceSpec, TlsEdge
from pkiform.provider import Registry

from .fakes import make_config

HOST_NAMES = ("h0", "h1", "h2", "h3")


def _hosts(count: int) -> dict[str, Host]:
    return {name: Host(name, f"10.0.0.{i + 11}") for i, name in enumerate(HOST_NAMES[:count])}


# -- A: random DAGs of fake resources --------------------------------------------------------


@st.composite
def fake_configs(draw: st.DrawFn, min_resources: int = 5, max_resources: int = 40,
                 rolling: bool | None = None) -> Config:
    """A random DAG of ``node``/``file``/``service`` resources (5–40 instances).

    Nodes read ``out`` or ``stable`` of earlier nodes or ``content`` of earlier files (random
    fan-in) and sometimes carry ``depends_on`` (ordering only); files are per-host instances
    of one declaration reading a node; services are per-host instances using files on their
    own host, sometimes a rolling group (``max_unavailable = 1``). ``rolling=True`` forces at
    least one rolling group of two or more members.
    """
    hosts = _hosts(draw(st.integers(2 if rolling else 1, 4)))
    host_names = sorted(hosts)
    target = draw(st.integers(min_resources, max_resources))
    specs: dict[Address, ResourceSpec] = {}
    nodes: list[Address] = []
    files: dict[str, list[Address]] = {h: [] for h in host_names}
    index = 0

    def add(address: Address, attributes: dict[str, Any], host: str | None = None) -> None:
        specs[address] = ResourceSpec(address, attributes, hosts[host] if host else None)

    def add_service(name: str, on: Sequence[str], max_unavailable: int | None) -> None:
        for host in on:
            uses = draw(st.lists(st.sampled_from(files[host]), min_size=1,
                                 max_size=min(3, len(files[host])), unique=True))
            add(Address("service", name, host),
                {"unit": f"{name}.service", "uses": uses, "max_unavailable": max_unavailable,
                 "depends_on": []}, host)

    while len(specs) < target:
        room = target - len(specs)
        kinds = ["node"]
        if nodes:
            kinds.append("file")
        if any(files.values()):
            kinds.append("service")
        kind = draw(st.sampled_from(kinds))
        index += 1
        if kind == "node":
            candidates = [Ref(a, o) for a in nodes for o in ("out", "stable")] + [
                Ref(f, "content") for h in host_names for f in files[h]]
            deps = draw(st.lists(st.sampled_from(candidates), max_size=min(4, len(candidates)),
                                 unique=True)) if candidates else []
            order: list[Address] = []
            if specs and draw(st.integers(0, 3)) == 0:
                order = draw(st.lists(st.sampled_from(sorted(specs)), min_size=1, max_size=2,
                                      unique=True))
            address = Address("node", f"n{index}")
            add(address, {"value": draw(st.sampled_from(["a", "b", "c", "d"])), "deps": deps,
                          "phased": draw(st.integers(0, 4)) == 0, "depends_on": order})
            nodes.append(address)
        elif kind == "file":
            source = draw(st.sampled_from(nodes))
            output = draw(st.sampled_from(["out", "out", "stable"]))
            on = draw(st.lists(st.sampled_from(host_names), min_size=1,
                               max_size=min(room, len(host_names)), unique=True))
            for host in sorted(on):
                address = Address("file", f"f{index}", host)
                add(address, {"path": f"/etc/pki/f{index}", "source": source,
                              "content": output, "depends_on": []}, host)
                files[host].append(address)
        else:
            usable = [h for h in host_names if files[h]]
            on = draw(st.lists(st.sampled_from(usable), min_size=1,
                               max_size=min(room, len(usable)), unique=True))
            max_unavailable = 1 if draw(st.booleans()) else None
            add_service(f"s{index}", sorted(on), max_unavailable)
    if rolling:
        # A rolling group on every host (files on each first), beyond the random target.
        source = nodes[0] if nodes else None
        if source is None:
            source = Address("node", "n0")
            add(source, {"value": "r", "deps": [], "phased": False, "depends_on": []})
        for host in host_names:
            if not files[host]:
                address = Address("file", "frolling", host)
                add(address, {"path": "/etc/pki/rolling", "source": source, "content": "out",
                              "depends_on": []}, host)
                files[host].append(address)
        add_service("rolling", host_names, 1)
    return make_config(hosts, specs)


def data_edges(config: Config) -> list[tuple[Address, Address, str]]:
    """(dependency, dependent, output) read from the fake specs' attributes directly."""
    edges: list[tuple[Address, Address, str]] = []
    for address, spec in config.resources.items():
        if address.kind == "node":
            edges += [(ref.address, address, ref.output) for ref in spec["deps"]]
        elif address.kind == "file":
            edges.append((spec["source"], address, spec["content"]))
        elif address.kind == "service":
            edges += [(f, address, "content") for f in spec["uses"]]
    return edges


def order_edges(config: Config) -> list[tuple[Address, Address]]:
    return [(dep, address) for address, spec in config.resources.items()
            for dep in spec.get("depends_on") or ()]


def reshuffled(config: Config, rnd: random.Random) -> Config:
    """The same configuration with every dict built in another insertion order."""

    def shuffled(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        items = list(mapping.items())
        rnd.shuffle(items)
        return dict(items)

    hosts = shuffled({name: Host.from_dict(h.to_dict()) for name, h in config.hosts.items()})
    resources = {}
    for address, spec in shuffled(config.resources).items():
        attributes = shuffled(copy.deepcopy(dict(spec.attributes)))
        resources[Address(address.kind, address.name, address.host)] = ResourceSpec(
            Address(address.kind, address.name, address.host), attributes,
            hosts[spec.host.name] if spec.host else None, spec.origin)
    return make_config(hosts, resources, config.tls_edges)


# -- B: small real PKIs -----------------------------------------------------------------------

KEY = "ecdsa-p256"
DOMAIN = "cluster.test"


@attrs.frozen
class Pki:
    config: Config
    cas: tuple[Address, ...]
    roots: Mapping[Address, Address]  # CA → its root (itself for a root)
    anchors: Mapping[str, tuple[Address, ...]]  # edge name → the CAs it anchors trust in


def spec_with_defaults(registry: Registry, address: Address, values: Mapping[str, Any],
                       host: Host | None = None) -> ResourceSpec:
    """What the loader produces: every field present, defaults filled in."""
    fields = registry[address.kind].fields
    attributes = {name: copy.deepcopy(f.default) for name, f in fields.items()
                  if not f.required}
    attributes["depends_on"] = ()
    attributes.update(values)
    return ResourceSpec(address, attributes, host)


@st.composite
def pki_configs(draw: st.DrawFn, registry: Registry, intermediate: bool | None = None) -> Pki:
    """1–3 CAs (sometimes an intermediate), 1–4 hosts, per-host certs signed by random CAs,
    kubeconfigs, files (every CA's bundle is on some host), services and TLS edges between
    random certs whose trust is the server's (client's) signer or that signer's root.
    ``intermediate=True``: the last CA is always an intermediate."""
    hosts = _hosts(draw(st.integers(1, 4)))
    host_names = sorted(hosts)
    specs: dict[Address, ResourceSpec] = {}

    def add(address: Address, values: dict[str, Any], host: str | None = None) -> None:
        specs[address] = spec_with_defaults(registry, address, values,
                                            hosts[host] if host else None)

    n_cas = draw(st.integers(2 if intermediate else 1, 3))
    if intermediate is None:
        intermediate = n_cas >= 2 and draw(st.booleans())
    cas: list[Address] = []
    roots: dict[Address, Address] = {}
    for i in range(n_cas):
        address = Address("ca", f"ca{i}")
        values: dict[str, Any] = {"key": KEY, "common_name": f"ca{i}-root"}
        if intermediate and i == n_cas - 1:
            parent = draw(st.sampled_from(cas))
            values.update(signer=parent, common_name=f"ca{i}-intermediate", path_length=0,
                          validity_days=1825)
            roots[address] = parent
        else:
            roots[address] = address
        add(address, values)
        cas.append(address)

    # Certificates: declarations with per-host instances, each declaration one signer.
    certs: dict[str, tuple[Address, list[str]]] = {}  # name → (signer, hosts)
    for j in range(draw(st.integers(1, 3))):
        name = f"c{j}"
        signer = draw(st.sampled_from(cas))
        on = sorted(draw(st.lists(st.sampled_from(host_names), min_size=1, unique=True)))
        certs[name] = (signer, on)
        for host in on:
            add(Address("cert", name, host), {
                "common_name": f"{name}-{host}", "signer": signer, "key": KEY,
                "extended_key_usages": ["server_auth", "client_auth"],
                "dns_names": [f"{host}.{DOMAIN}"], "ip_addresses": [hosts[host].address]})

    def anchor_of(signer: Address) -> Address:
        # The client trusts the signer itself or (for an intermediate) sometimes its root.
        return draw(st.sampled_from(sorted({signer, roots[signer]})))

    # Kubeconfigs: a CA bundle and a client cert instance.
    kubeconfigs: list[tuple[Address, Address, Address]] = []  # (address, ca, client)
    for m in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(certs)))
        signer, on = certs[name]
        client = Address("cert", name, draw(st.sampled_from(on)))
        ca = draw(st.sampled_from(cas))
        address = Address("kubeconfig", f"k{m}")
        add(address, {"server": "https://10.0.0.10:6443", "ca": ca, "client": client,
                      "user": f"user{m}"})
        kubeconfigs.append((address, ca, client))

    # Files: every CA bundle somewhere (so every rotation phase writes), then random extras.
    files: dict[str, list[Address]] = {h: [] for h in host_names}
    paths: set[tuple[str, str]] = set()

    def add_file(host: str, source: Address, content: str) -> None:
        path = f"/etc/pki/{source.kind}-{source.name}-{source.host or 'x'}.{content}"
        if (host, path) in paths:
            return
        paths.add((host, path))
        address = Address("file", f"f{len(paths)}", host)
        add(address, {"path": path, "source": source, "content": content}, host)
        files[host].append(address)

    for ca in cas:
        add_file(draw(st.sampled_from(host_names)), ca, "cert")
    sources: list[tuple[Address, str]] = [(ca, "cert") for ca in cas]
    sources += [(a, c) for a in specs if a.kind == "cert" for c in ("cert", "key", "chain")]
    sources += [(k, "kubeconfig") for k, _, _ in kubeconfigs]
    for _ in range(draw(st.integers(0, 6))):
        source, content = draw(st.sampled_from(sources))
        host = source.host if source.host else draw(st.sampled_from(host_names))
        add_file(host, source, content)

    # Services on hosts with files, sometimes a rolling group across hosts.
    for s in range(draw(st.integers(0, 2))):
        usable = [h for h in host_names if files[h]]
        on = sorted(draw(st.lists(st.sampled_from(usable), min_size=1, unique=True)))
        rolling = 1 if draw(st.booleans()) else None
        for host in on:
            uses = draw(st.lists(st.sampled_from(files[host]), min_size=1, max_size=3,
                                 unique=True))
            add(Address("service", f"s{s}", host),
                {"unit": f"s{s}.service", "uses": uses, "max_unavailable": rolling}, host)

    # TLS edges: mTLS between two cert declarations (or a kubeconfig as the client).
    edges: list[TlsEdge] = []
    anchors: dict[str, tuple[Address, ...]] = {}
    for e in range(draw(st.integers(1, 4))):
        server = draw(st.sampled_from(sorted(certs)))
        s_signer, s_hosts = certs[server]
        use_kubeconfig = [k for k in kubeconfigs
                          if k[1] in {s_signer, roots[s_signer]}]
        name = f"e{e}"
        if use_kubeconfig and draw(st.booleans()):
            kubeconfig, k_ca, client_cert = draw(st.sampled_from(use_kubeconfig))
            c_signer = specs[client_cert]["signer"]
            client_ca = anchor_of(c_signer)
            edges.append(TlsEdge(
                name=name, client=str(kubeconfig), server=server,
                server_name="{server.name}." + DOMAIN, server_cert=Address("cert", server),
                client_trust=kubeconfig, client_cert=client_cert, server_client_ca=client_ca))
            anchors[name] = (k_ca, client_ca)
            continue
        client = draw(st.sampled_from(sorted(certs)))
        c_signer, c_hosts = certs[client]
        pairs = "same-host" if set(s_hosts) & set(c_hosts) and draw(st.booleans()) else "all"
        server_trust, client_ca = anchor_of(s_signer), anchor_of(c_signer)
        mutual = draw(st.integers(0, 3)) > 0
        edges.append(TlsEdge(
            name=name, client=client, server=server,
            server_name="{server.name}." + DOMAIN, server_cert=Address("cert", server),
            client_trust=server_trust,
            client_cert=Address("cert", client) if mutual else None,
            server_client_ca=client_ca if mutual else None, pairs=pairs))
        anchors[name] = (server_trust, client_ca) if mutual else (server_trust,)

    config = make_config(hosts, specs, tuple(edges))
    for spec in specs.values():
        registry[spec.kind].validate(spec, config, registry)
    return Pki(config, tuple(cas), roots, anchors)
