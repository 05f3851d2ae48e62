"""Load ``pkiform.toml`` (plus any ``*.pkiform.toml`` beside it) into a `Config`.

Order of work, each step failing with one `ConfigError` that names the file, the resource
address and the fix:
1. parse TOML; split into settings, hosts, presets, tls edges and resource tables per kind;
2. expand presets into resource tables; user tables with the same address override field by
   field (``enabled = false`` drops a preset resource);
3. check every table against its kind's fields (unknown kind/field, types, required);
4. expand ``for_each`` into per-host instances, interpolating ``{host.name}``/``{host.address}``;
5. resolve references (a per-host instance referring to a per-host resource gets the instance
   on its own host), then let each kind validate itself (SANs, key sizes, validity);
6. check global rules: no cycle, one file per path per host.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pkiform.address import NAME_RE, Address
from pkiform.config import values as checks
from pkiform.errors import ConfigError
from pkiform.model import Config, Host, ResourceSpec, Settings, TlsEdge
from pkiform.plan import resource_graph
from pkiform.provider import PHASES, Field, Registry

CONFIG_FILE = "pkiform.toml"
EXTRA_GLOB = "*.pkiform.toml"
RESERVED_SECTIONS = ("settings", "hosts", "preset", "tls")
# Fields every resource accepts, handled here rather than by its kind.
COMMON_FIELDS: Mapping[str, Field] = {
    "for_each": Field("str", doc="a host group (or '*' for every host): one instance per host"),
    "host": Field("str", doc="the one host this resource lives on"),
    "depends_on": Field("list[ref]", default=(), doc="extra ordering dependencies"),
    "enabled": Field("bool", default=True, doc="false drops a preset's resource"),
    "outside": Field(
        "table", default=None, doc="per phase, what must be done outside pkiform afterwards",
        interpolate=False,  # free text for people: shell snippets with braces stay as written
    ),
}
# {host.name} / {host.address}; "{{" and "}}" stand for literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
SETTINGS_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "state_dir": str,
    "target_root": str,
    "key_file": str,
    "renew_before_days": int,
    "rotation": str,
    "parallelism": int,
}
HOST_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "address": str,
    "groups": list,
    "transport": str,
    "user": str,
    "port": int,
    "identity_file": str,
    "sudo": bool,
    "known_hosts": str,
}
TLS_FIELDS = (
    "name", "client", "server", "client_cert", "client_trust", "server_cert",
    "server_client_ca", "server_name", "pairs",
)


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", bool: "boolean", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "no such file",
            file=str(path),
            hint=f"create {CONFIG_FILE} in that directory, or point -C at one that has it",
        ) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path), hint="save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError("invalid TOML: arrays or tables nested too deeply", file=str(path),
                          hint="flatten the nesting") from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        hint = "fix the TOML syntax at that position"
        if "Cannot declare" in message or "Cannot overwrite" in message:
            hint = "each address (and each key in a table) may be declared once"
            message = f"duplicate address or key: {message}"
        raise ConfigError(f"invalid TOML: {message}", file=str(path), hint=hint) from None


class _Loader:
    def __init__(self, directory: Path, registry: Registry, presets: Mapping[str, Any]) -> None:
        self.directory = directory
        self.registry = registry
        self.presets = presets
        self.main_file = str(directory / CONFIG_FILE)
        self.origins: dict[tuple[str, str], str] = {}
        self._fields: dict[str, Mapping[str, Field]] = {}

    def file_of(self, section: str, name: str = "") -> str:
        """The file that declared a section (settings, preset) or a host."""
        return self.origins.get((section, name), self.main_file)

    # -- 1. files and sections -----------------------------------------------------------

    def read(self) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
        """Merge the config files; remember which file declared each resource."""
        paths = [self.directory / CONFIG_FILE, *sorted(self.directory.glob(EXTRA_GLOB))]
        merged: dict[str, Any] = {}
        origins: dict[tuple[str, str], str] = {}
        for path in paths:
            document = _read_toml(path)
            for section, body in document.items():
                if section in ("settings", "preset"):
                    if section in merged:
                        raise ConfigError(f"[{section}] is declared in two files", file=str(path),
                                          hint="keep it in one file")
                    merged[section] = body
                    origins[(section, "")] = str(path)
                elif section == "tls":
                    if not isinstance(body, list):
                        raise ConfigError("tls must be an array of tables ([[tls]])",
                                          file=str(path), hint="write [[tls]] sections")
                    merged.setdefault("tls", []).extend((str(path), e) for e in body)
                elif isinstance(body, dict):
                    target = merged.setdefault(section, {})
                    for name, table in body.items():
                        if name in target:
                            raise ConfigError(
                                f"duplicate address {section}.{name} (also declared in "
                                f"{origins.get((section, name), self.main_file)})",
                                file=str(path),
                                address=f"{section}.{name}",
                                hint="declare each resource once",
                            )
                        target[name] = table
                        origins[(section, name)] = str(path)
                else:
                    raise ConfigError(
                        f"top-level key {section!r} is not a section",
                        file=str(path),
                        hint="resources are tables: [<kind>.<name>]; settings go in [settings]",
                    )
        return merged, origins

    def settings(self, raw: Any) -> Settings:
        raw = raw or {}
        file = self.file_of("settings")
        if not isinstance(raw, dict):
            raise ConfigError("[settings] must be a table", file=file,
                              hint="write [settings] with key = value lines")
        for key, value in raw.items():
            expected = SETTINGS_FIELDS.get(key)
            if expected is None:
                raise ConfigError(
                    f"unknown setting {key!r}",
                    file=file,
                    address="settings",
                    hint=f"known settings: {', '.join(SETTINGS_FIELDS)}",
                )
            if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                raise ConfigError(f"{key} must be a {expected.__name__}, not {_type_name(value)}",
                                  file=file, address="settings", hint=f"fix {key}")
        settings = Settings(**raw)
        if settings.rotation not in ("zero-downtime", "immediate"):
            raise ConfigError(f"rotation {settings.rotation!r} is not a rotation mode",
                              file=file, address="settings",
                              hint='use "zero-downtime" or "immediate"')
        if not 0 <= settings.renew_before_days <= 3650:
            raise ConfigError("renew_before_days must be between 0 and 3650",
                              file=file, address="settings", hint="pick e.g. 30")
        if not 1 <= settings.parallelism <= 256:
            raise ConfigError("parallelism must be between 1 and 256", file=file,
                              address="settings", hint="pick e.g. 10")
        for key in ("state_dir", "target_root", "key_file"):
            value = raw.get(key)
            if value is None:
                continue
            if "\0" in value or "\n" in value:
                raise ConfigError(f"{key} contains a control character", file=file,
                                  address="settings", hint=f"fix the path in {key}")
            if key == "key_file" and value.startswith("~"):
                try:
                    Path(value).expanduser()
                except RuntimeError:
                    raise ConfigError(f"{key} {value!r}: cannot expand '~'", file=file,
                                      address="settings",
                                      hint="write an absolute path or ~/<path> for your home"
                                      ) from None
        return settings

    def hosts(self, raw: Any) -> dict[str, Host]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise ConfigError("hosts must be tables: [hosts.<name>]", file=self.main_file,
                              hint="write [hosts.control-1] with address = ...")
        hosts: dict[str, Host] = {}
        addresses: dict[tuple[str, int], str] = {}
        for name, table in raw.items():
            where = f"hosts.{name}"
            file = self.file_of("hosts", name)
            if not NAME_RE.fullmatch(name):
                raise ConfigError(f"host name {name!r} is not allowed", file=file,
                                  address=f"hosts.{name!r}",
                                  hint="use letters, digits, '-' and '_'")
            if not isinstance(table, dict):
                raise ConfigError("a host must be a table", file=file, address=where,
                                  hint=f"write [hosts.{name}] with address = ...")
            for key, value in table.items():
                expected = HOST_FIELDS.get(key)
                if expected is None:
                    raise ConfigError(f"unknown host field {key!r}", file=file,
                                      address=where,
                                      hint=f"known fields: {', '.join(HOST_FIELDS)}")
                if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
                    raise ConfigError(
                        f"{key} must be "
                        f"{expected.__name__ if isinstance(expected, type) else expected}"
                        f", not {_type_name(value)}",
                        file=file, address=where, hint=f"fix {key}")
            if "address" not in table:
                raise ConfigError("host has no address", file=file, address=where,
                                  hint="add address = \"<IP or DNS name>\"")
            address = table["address"]
            if not checks.is_ip(address):
                checks.check_dns_name(address, file=file, address=where, field="address")
            groups = table.get("groups", [])
            for group in groups:
                if not isinstance(group, str) or not NAME_RE.fullmatch(group):
                    raise ConfigError(f"group {group!r} is not a valid group name",
                                      file=file, address=where,
                                      hint="use letters, digits, '-' and '_'")
            transport = table.get("transport", "local")
            if transport not in ("local", "ssh"):
                raise ConfigError(f"transport {transport!r} is unknown", file=file,
                                  address=where, hint='use "local" or "ssh"')
            port = table.get("port", 22)
            if not 1 <= port <= 65535:
                raise ConfigError(f"port {port} is out of range", file=file,
                                  address=where, hint="use a TCP port between 1 and 65535")
            user = table.get("user", "root")
            if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", user):
                raise ConfigError(f"user {user!r} is not a valid login name",
                                  file=file, address=where, hint="e.g. root or ubuntu")
            if transport == "ssh" and "\0" in table.get("identity_file", ""):
                raise ConfigError("identity_file contains a NUL byte", file=file,
                                  address=where, hint="fix the path")
            key = (address, port)
            if transport == "ssh" and key in addresses:
                raise ConfigError(f"address {address}:{port} is also host {addresses[key]}",
                                  file=file, address=where,
                                  hint="each host needs its own address")
            addresses[key] = name
            hosts[name] = Host(
                name=name,
                address=address,
                groups=tuple(groups),
                transport=transport,
                user=user,
                port=port,
                identity_file=table.get("identity_file"),
                sudo=table.get("sudo", False),
                known_hosts=table.get("known_hosts"),
            )
        return hosts

    # -- 2. presets --------------------------------------------------------------------

    def apply_presets(
        self, raw: dict[str, Any], hosts: Mapping[str, Host], origins: dict[tuple[str, str], str]
    ) -> tuple[dict[str, dict[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        tables: dict[str, dict[str, dict[str, Any]]] = {}
        tls: list[tuple[str, dict[str, Any]]] = []
        presets = raw.get("preset") or {}
        preset_file = self.file_of("preset")
        if not isinstance(presets, dict):
            raise ConfigError("preset must be a table: [preset.<name>]", file=preset_file,
                              hint="write [preset.kubeadm]")
        for name, params in presets.items():
            expand = self.presets.get(name)
            if expand is None:
                raise ConfigError(f"unknown preset {name!r}", file=preset_file,
                                  address=f"preset.{name}",
                                  hint=f"known presets: {', '.join(sorted(self.presets))}")
            if not isinstance(params, dict):
                raise ConfigError("a preset's parameters must be a table", file=preset_file,
                                  address=f"preset.{name}", hint=f"write [preset.{name}]")
            expansion = expand(params, hosts, file=preset_file)
            origin = f"{preset_file} (preset {name})"
            for kind, resources in expansion.resources.items():
                for rname, table in resources.items():
                    if rname in tables.setdefault(kind, {}):
                        raise ConfigError(f"two presets declare {kind}.{rname}",
                                          file=preset_file, address=f"{kind}.{rname}",
                                          hint="use one preset per layout")
                    tables[kind][rname] = table
                    origins.setdefault((kind, rname), origin)
            tls.extend((origin, edge) for edge in expansion.tls)
        for kind, body in raw.items():
            if kind in RESERVED_SECTIONS:
                continue
            if kind not in self.registry:
                raise ConfigError(
                    f"unknown resource kind or section [{kind}]",
                    file=origins.get((kind, next(iter(body), "")), self.main_file),
                    hint="kinds: " + ", ".join(self.registry.kinds())
                    + "; sections: " + ", ".join(RESERVED_SECTIONS),
                )
            for rname, table in body.items():
                if not isinstance(table, dict):
                    raise ConfigError(
                        f"{kind}.{rname} must be a table, not {_type_name(table)}",
                        file=origins.get((kind, rname), self.main_file),
                        address=f"{kind}.{rname}",
                        hint=f"write [{kind}.{rname}] followed by its fields",
                    )
                preset_table = tables.setdefault(kind, {}).get(rname)
                tables[kind][rname] = {**preset_table, **table} if preset_table else dict(table)
        tls.extend(raw.get("tls", []))
        return tables, tls

    # -- 3. per-table checks -----------------------------------------------------------

    def check_table(self, kind: str, name: str, table: dict[str, Any], file: str) -> dict[str, Any]:
        address = f"{kind}.{name}"
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"resource name {name!r} is not allowed", file=file,
                              address=f"{kind}.{name!r}", hint="use letters, digits, '-' and '_'")
        provider = self.registry[kind]
        fields = {**COMMON_FIELDS, **provider.fields}
        result: dict[str, Any] = {}
        for key, value in table.items():
            field = fields.get(key)
            if field is None:
                raise ConfigError(
                    f"unknown field {key!r}",
                    file=file,
                    address=address,
                    hint=f"{kind} accepts: {', '.join(sorted(fields))}",
                )
            result[key] = self.check_type(field, value, file=file, address=address, key=key)
        for key, field in fields.items():
            if key not in result:
                if field.required:
                    raise ConfigError(f"missing required field {key!r} ({field.doc})",
                                      file=file, address=address, hint=f"add {key} = ...")
                result[key] = copy.deepcopy(field.default)
        for key in ("for_each", "host"):
            if result.get(key) == "":
                raise ConfigError(f"{key} is empty", file=file, address=address,
                                  hint=f"name a {'host group' if key == 'for_each' else 'host'}"
                                  f", or remove {key}")
        if result.get("for_each") and result.get("host"):
            raise ConfigError("for_each and host are exclusive", file=file, address=address,
                              hint="keep one of them")
        if provider.per_host and not (result.get("for_each") or result.get("host")):
            raise ConfigError(f"a {kind} lives on a host", file=file, address=address,
                              hint='add host = "<host>" or for_each = "<group>"')
        return result

    def check_type(self, field: Field, value: Any, *, file: str, address: str, key: str) -> Any:
        def fail(expected: str) -> ConfigError:
            return ConfigError(f"{key} must be {expected}, not {_type_name(value)} {value!r:.60}",
                               file=file, address=address, hint=f"fix {key}: {field.doc}")

        kind = field.type
        if kind in ("str", "ref", "mode"):
            if not isinstance(value, str):
                raise fail("a string")
            if len(value) > checks.MAX_STRING:
                raise fail(f"a string of at most {checks.MAX_STRING} characters")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool):
                raise fail("an integer")
            if abs(value) > 10**9:
                raise fail("an integer of sensible size")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise fail("true or false")
        elif kind in ("list[str]", "list[ref]"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail("an array of strings")
            if len(value) > checks.MAX_LIST:
                raise fail(f"an array of at most {checks.MAX_LIST} strings")
            value = list(value)
        elif kind == "table":
            if not isinstance(value, dict):
                raise fail("a table")
            if key == "outside":
                phases = ("apply", *PHASES)
                for phase, notes in value.items():
                    if phase not in phases:
                        raise ConfigError(f"outside: {phase!r} is not a phase", file=file,
                                          address=address, hint=f"phases: {', '.join(phases)}")
                    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
                        raise ConfigError(f"outside.{phase} must be an array of strings",
                                          file=file, address=address,
                                          hint=f'write {phase} = ["what to do", ...]')
        if kind == "mode":
            checks.check_mode(value, file=file, address=address, field=key)
        if field.choices is not None and value not in field.choices:
            raise ConfigError(f"{key} = {value!r} is not allowed", file=file, address=address,
                              hint=f"use one of: {', '.join(map(str, field.choices))}")
        return value

    # -- 4. for_each and interpolation -------------------------------------------------

    def instance_hosts(self, address: str, table: dict[str, Any], hosts: Mapping[str, Host],
                       file: str) -> list[Host | None]:
        group = table.get("for_each")
        if group:
            if group == "*":
                members = list(hosts.values())
                if not members:
                    raise ConfigError("for_each '*' but no host is declared", file=file,
                                      address=address, hint="declare [hosts.<name>] sections")
            else:
                members = [h for h in hosts.values() if group in h.groups]
                if not members:
                    known = sorted({g for h in hosts.values() for g in h.groups})
                    raise ConfigError(f"for_each group {group!r} has no hosts", file=file,
                                      address=address,
                                      hint=f"known groups: {', '.join(known) or '(none)'}")
            return sorted(members, key=lambda h: h.name)
        if table.get("host"):
            name = table["host"]
            if name not in hosts:
                raise ConfigError(f"host {name!r} is not declared", file=file, address=address,
                                  hint=f"declare [hosts.{name}] or use one of: "
                                  + ", ".join(sorted(hosts)))
            return [hosts[name]]
        return [None]

    def interpolate(self, value: Any, host: Host | None, *, file: str, address: str) -> Any:
        if isinstance(value, str):
            def substitute(match: re.Match[str]) -> str:
                if match.group(0) in ("{{", "}}"):
                    return match.group(0)[0]
                key = match.group(1)
                if host is not None and key == "host.name":
                    return host.name
                if host is not None and key == "host.address":
                    return host.address
                raise ConfigError(
                    f"unknown placeholder {{{key}}}",
                    file=file,
                    address=address,
                    hint="only {host.name} and {host.address} exist, and only in resources "
                    "that have for_each or host; write {{ and }} for literal braces",
                )

            return _PLACEHOLDER.sub(substitute, value)
        if isinstance(value, list):
            return [self.interpolate(v, host, file=file, address=address) for v in value]
        if isinstance(value, dict):
            return {k: self.interpolate(v, host, file=file, address=address)
                    for k, v in value.items()}
        return value

    # -- 5. references -----------------------------------------------------------------

    def resolve_ref(self, text: str, owner: Address, owner_host: Host | None,
                    declared: Mapping[Address, set[str | None]], field: Field,
                    *, file: str) -> Address:
        try:
            target = _parse_address(text)
        except ConfigError:
            raise ConfigError(f"{text!r} is not a resource address", file=file,
                              address=str(owner),
                              hint="write <kind>.<name> or <kind>.<name>[<host>]") from None
        if field.ref_kinds and target.kind not in field.ref_kinds:
            raise ConfigError(f"{text} is a {target.kind}, expected {' or '.join(field.ref_kinds)}",
                              file=file, address=str(owner), hint="point it at the right kind")
        base = target.base
        instances = declared.get(base)
        if instances is None:
            close = [str(a) for a in declared if a.name == base.name or a.kind == base.kind][:5]
            raise ConfigError(
                f"reference to undeclared resource {text}",
                file=file,
                address=str(owner),
                hint="declare it, or fix the name" + (f" (similar: {', '.join(close)})"
                                                      if close else ""),
            )
        if target.host == "*":
            raise ConfigError(f"{text}: [*] is not a single resource", file=file,
                              address=str(owner), hint="name one host")
        if target.host is not None:
            if None in instances:
                raise ConfigError(f"{base} is not per host: it has no instance [{target.host}]",
                                  file=file, address=str(owner), hint=f"write {base}")
            if target.host not in instances:
                raise ConfigError(f"{base} has no instance on host {target.host!r}", file=file,
                                  address=str(owner),
                                  hint=f"instances: {', '.join(sorted(map(str, instances)))}")
            return target
        if None in instances:
            return base
        if owner_host is not None and owner_host.name in instances:
            return base.on(owner_host.name)
        raise ConfigError(
            f"{base} is per host; say which instance",
            file=file,
            address=str(owner),
            hint=f"write {base}[<host>] (instances on: {', '.join(sorted(map(str, instances)))})",
        )

    def fields_of(self, kind: str) -> Mapping[str, Field]:
        fields = self._fields.get(kind)
        if fields is None:
            fields = self._fields[kind] = {**COMMON_FIELDS, **self.registry[kind].fields}
        return fields

    def build(self) -> Config:
        raw, origins = self.read()
        self.origins = origins
        settings = self.settings(raw.get("settings"))
        hosts = self.hosts(raw.get("hosts"))
        tables, tls = self.apply_presets(raw, hosts, origins)

        checked: dict[Address, tuple[dict[str, Any], str]] = {}
        disabled: set[Address] = set()
        for kind in sorted(tables):
            for name, table in sorted(tables[kind].items()):
                file = origins.get((kind, name), self.main_file)
                result = self.check_table(kind, name, table, file)
                if not result.get("enabled", True):
                    disabled.add(Address(kind, name))
                else:
                    checked[Address(kind, name)] = (result, file)

        declared: dict[Address, set[str | None]] = {}
        instances: list[tuple[Address, Host | None, dict[str, Any], str,
                              list[tuple[str, Field]]]] = []
        for base, (table, file) in checked.items():
            fields = self.fields_of(base.kind)
            # Values the second pass has to touch: references to resolve, lists to freeze.
            special = [(key, fields[key]) for key in table
                       if fields[key].type in ("ref", "list[ref]")
                       or isinstance(table[key], list)]
            # Values without braces are the same on every host: only the others are
            # interpolated per instance (5,000 kubelets share one table).
            constant: dict[str, Any] = {}
            templated: dict[str, Any] = {}
            for key, value in table.items():
                if fields[key].interpolate and _may_interpolate(value):
                    templated[key] = value
                else:
                    constant[key] = tuple(value) if isinstance(value, list) else value
            per_host = bool(table.get("for_each"))
            on_hosts = self.instance_hosts(str(base), table, hosts, file)
            instance_hosts = declared.setdefault(base, set()) if on_hosts else set()
            for host in on_hosts:
                address = base.on(host.name) if host and per_host else base
                values = dict(constant)
                if templated:
                    where = str(address)
                    for key, value in templated.items():
                        values[key] = self.interpolate(value, host, file=file, address=where)
                instances.append((address, host, values, file, special))
                instance_hosts.add(address.host)

        resources: dict[Address, ResourceSpec] = {}
        for address, host, values, file, special in instances:
            for key, field in special:
                value = values[key]
                if field.type == "ref" and value is not None:
                    values[key] = self.resolve_ref(value, address, host, declared, field,
                                                   file=file)
                elif field.type == "list[ref]" and value:
                    values[key] = tuple(self.resolve_ref(v, address, host, declared, field,
                                                         file=file) for v in value)
                elif isinstance(value, list):
                    values[key] = tuple(value)
            resources[address] = ResourceSpec(address, values, host, origin=file)

        config = Config(path=self.main_file, settings=settings, hosts=hosts,
                        resources=resources, tls_edges=())
        # A preset's edge that names a resource the user disabled goes with that resource.
        edges = tuple(
            self.tls_edge(origin, edge, declared) for origin, edge in tls
            if not ("(preset " in origin and isinstance(edge, dict) and any(
                isinstance(v, str) and _base_or_none(v) in disabled for v in edge.values()))
        )
        config = attrs.evolve(config, tls_edges=edges)
        self.validate(config)
        return config

    def tls_edge(
        self, file: str, edge: Any, declared: Mapping[Address, set[str | None]]
    ) -> TlsEdge:
        if not isinstance(edge, dict):
            raise ConfigError("each [[tls]] entry must be a table", file=file,
                              hint="write [[tls]] then its fields")
        name = edge.get("name", "?")
        where = f"tls.{name}"
        for key, value in edge.items():
            if key not in TLS_FIELDS:
                raise ConfigError(f"unknown tls field {key!r}", file=file, address=where,
                                  hint=f"known fields: {', '.join(TLS_FIELDS)}")
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a string", file=file, address=where,
                                  hint=f"write {key} = \"...\"")
        for key in ("name", "client", "server", "server_name"):
            if key not in edge:
                raise ConfigError(f"tls edge needs {key}", file=file, address=where,
                                  hint=f"add {key} = \"...\"")
        pairs = edge.get("pairs", "all")
        if pairs not in ("all", "same-host"):
            raise ConfigError(f"pairs {pairs!r} is unknown", file=file, address=where,
                              hint='use "all" or "same-host"')

        def ref(key: str, kinds: tuple[str, ...]) -> Address | None:
            text = edge.get(key)
            if text is None:
                return None
            try:
                target = Address.parse(text)
            except ConfigError:
                raise ConfigError(f"{key}: {text!r} is not a resource address", file=file,
                                  address=where, hint="write <kind>.<name>") from None
            instances = declared.get(target.base)
            if instances is None or (target.host is not None and target.host not in instances):
                raise ConfigError(f"{key}: reference to undeclared resource {text}", file=file,
                                  address=where, hint="declare it or fix the name")
            if target.kind not in kinds:
                raise ConfigError(f"{key}: {text} is a {target.kind}", file=file, address=where,
                                  hint=f"point it at a {' or '.join(kinds)}")
            return target

        result = TlsEdge(
            name=edge["name"], client=edge["client"], server=edge["server"],
            server_name=edge["server_name"],
            server_cert=ref("server_cert", ("cert",)),
            client_trust=ref("client_trust", ("ca", "kubeconfig")),
            client_cert=ref("client_cert", ("cert",)),
            server_client_ca=ref("server_client_ca", ("ca",)),
            pairs=pairs, origin=file,
        )
        # The name only matters where the server's certificate is checked against it.
        if "{server." in result.server_name and result.server_cert is not None:
            cert = result.server_cert
            if cert.host is None and None in declared.get(cert.base, {None}):
                raise ConfigError(
                    f"server_name {result.server_name!r} names the server's host, but "
                    f"server_cert {cert} is not a per-host resource",
                    file=file, address=where,
                    hint="use a literal name, or point server_cert at a for_each resource")
        server_half = result.server_cert is not None and result.client_trust is not None
        client_half = result.client_cert is not None and result.server_client_ca is not None
        if not server_half and not client_half:
            raise ConfigError("a tls edge checks nothing without server_cert + client_trust or "
                              "client_cert + server_client_ca", file=file, address=where,
                              hint="add the certificates and trust of at least one side")
        return result

    # -- 6. global checks ----------------------------------------------------------------

    def validate(self, config: Config) -> None:
        for address, spec in config.resources.items():
            self.registry[address.kind].validate(spec, config, self.registry)
        # Every kind the config uses is registered by now; an unused third-party kind has
        # nothing to check, and listing it would read every distribution's entry points.
        for kind in self.registry.registered():
            validate_all = getattr(self.registry[kind], "validate_all", None)
            if validate_all is not None:
                validate_all(config)
        # The planner reuses this analysis (memoized per config object): one graph per run.
        resource_graph(config, self.registry)


# 5,000 instances refer to the same few addresses ("ca.kubernetes"); addresses are immutable.
_parse_address = functools.lru_cache(maxsize=4096)(Address.parse)


def _may_interpolate(value: Any) -> bool:
    """Whether `interpolate` could change ``value`` (a placeholder or a {{ }} escape)."""
    if isinstance(value, str):
        return "{" in value or "}" in value
    if isinstance(value, list):
        return any(_may_interpolate(v) for v in value)
    return isinstance(value, dict)  # tables are rebuilt per instance, never shared


def _base_or_none(text: str) -> Address | None:
    try:
        return Address.parse(text).base
    except ConfigError:
        return None


def load_config(
    directory: str | os.PathLike[str], registry: Registry, presets: Mapping[str, Any]
) -> Config:
    """Load and check the config in ``directory``; every problem is one `ConfigError`."""
    return _Loader(Path(directory).resolve(), registry, presets).build()
