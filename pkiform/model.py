"""The configuration as data: hosts, resource specs and TLS edges, after presets and for_each.

Everything here is frozen. A `ResourceSpec` is one resource instance (``cert.apiserver[c-1]``)
with its attributes already validated, defaulted and interpolated; references inside its
attributes are already resolved to `Address` values by the config loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from pkiform.address import Address


@attrs.frozen
class Host:
    name: str
    address: str
    groups: tuple[str, ...] = ()
    transport: str = "local"
    user: str = "root"
    port: int = 22
    identity_file: str | None = None
    sudo: bool = False
    known_hosts: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = attrs.asdict(self)
        values["groups"] = list(self.groups)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Host:
        values = dict(data)
        values["groups"] = tuple(values.get("groups", ()))
        return cls(**values)


@attrs.frozen(eq=False)
class ResourceSpec:
    address: Address
    attributes: Mapping[str, Any]
    host: Host | None = None
    origin: str = ""

    @property
    def kind(self) -> str:
        return self.address.kind

    def get(self, name: str, default: Any = None) -> Any:
        return self.attributes.get(name, default)

    def __getitem__(self, name: str) -> Any:
        return self.attributes[name]


@attrs.frozen
class TlsEdge:
    """A declared TLS connection: who connects to whom, with which certificates and trust.

    Server authentication is checked when ``server_cert`` and ``client_trust`` are given (the
    client's trust is a CA's ``cert`` bundle or a kubeconfig's embedded CA); client
    authentication when ``client_cert`` and ``server_client_ca`` are. One declared edge
    expands to every (client instance, server instance) pair, or only pairs on the same host
    with ``pairs = "same-host"``. ``server_name`` may use ``{server.address}``/``{server.name}``.
    """

    name: str
    client: str
    server: str
    server_name: str
    server_cert: Address | None = None
    client_trust: Address | None = None
    client_cert: Address | None = None
    server_client_ca: Address | None = None
    pairs: str = "all"
    origin: str = ""


@attrs.frozen
class Settings:
    state_dir: str = "state"
    target_root: str = "target"
    key_file: str | None = None
    renew_before_days: int = 30
    rotation: str = "zero-downtime"
    parallelism: int = 10


@attrs.frozen(eq=False)
class Config:
    path: str
    settings: Settings
    hosts: Mapping[str, Host]
    resources: Mapping[Address, ResourceSpec]
    tls_edges: tuple[TlsEdge, ...] = ()

    @property
    def directory(self) -> str:
        import os

        return os.path.dirname(os.path.abspath(self.path))
