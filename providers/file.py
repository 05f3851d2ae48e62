"""``file``: one file on one host, its content taken from another resource's output.

The content is rendered from the state at apply time and written through the host's transport
atomically. Output ``content`` changes only when the bytes change (not on a mode/owner change),
so services restart exactly when what they read changed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.config.values import check_absolute_path, check_mode
from pkiform.errors import ConfigError, TransportError
from pkiform.model import Config, ResourceSpec
from pkiform.provider import (
    ALL_OUTPUTS,
    Action,
    ApplyRequest,
    Decision,
    Field,
    OutputInfo,
    PlanRequest,
    Registry,
    ReplaceStep,
    ResourceResult,
)
from pkiform.providers import _common as common

NAME_PATTERN = r"[a-z_][a-z0-9_.-]{0,31}"


class FileProvider:
    kind: ClassVar[str] = "file"
    per_host: ClassVar[bool] = True
    fields: ClassVar[Mapping[str, Field]] = {
        "path": Field("str", required=True, doc="absolute path on the host"),
        "source": Field("ref", required=True, doc="resource whose output is the content"),
        "content": Field("str", required=True,
                         doc="which output of the source: cert, key, chain, public_key, "
                         "kubeconfig, encryption_config, value"),
        "mode": Field("mode", doc='octal mode; default "0600" for secrets, "0644" otherwise'),
        "owner": Field("str", default="root", doc="owning user"),
        "group": Field("str", default="root", doc="owning group"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {"content": OutputInfo(doc="the file's bytes")}

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return [Ref(spec["source"], spec["content"])]

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        where = {"file": spec.origin, "address": str(spec.address)}
        check_absolute_path(spec["path"], field="path", **where)
        source: Address = spec["source"]
        outputs = registry[source.kind].outputs
        info = outputs.get(spec["content"])
        if info is None:
            raise ConfigError(
                f"content {spec['content']!r} is not an output of {source.kind} {source}",
                hint=f"{source.kind} outputs: {', '.join(sorted(outputs))}", **where)
        mode = self.mode_of(spec, registry)
        if spec.get("mode") is not None:
            check_mode(spec["mode"], field="mode", **where)
        if info.secret and mode & 0o007:
            raise ConfigError(
                f"mode {mode:04o} makes the {spec['content']} of {source} readable by anyone",
                hint='private keys need "0600" (or "0640" with a dedicated group)', **where)
        import re

        for key in ("owner", "group"):
            if not re.fullmatch(NAME_PATTERN, spec[key]):
                raise ConfigError(f"{key} {spec[key]!r} is not a valid name",
                                  hint="use a user/group name such as root or etcd", **where)

    @staticmethod
    def mode_of(spec: ResourceSpec, registry: Registry) -> int:
        if spec.get("mode") is not None:
            return int(spec["mode"], 8)
        source: Address = spec["source"]
        info = registry[source.kind].outputs.get(spec["content"])
        return 0o600 if info is not None and info.secret else 0o644

    @staticmethod
    def validate_all(config: Config) -> None:
        """Two file resources may not own one path on one host."""
        owners: dict[tuple[str, str], list[ResourceSpec]] = defaultdict(list)
        for spec in config.resources.values():
            if spec.kind == "file" and spec.host is not None:
                owners[(spec.host.name, spec["path"])].append(spec)
        for (host, path), specs in sorted(owners.items()):
            if len(specs) > 1:
                specs = sorted(specs, key=lambda s: s.address)
                names = [str(s.address) for s in specs]
                raise ConfigError(
                    f"{path} on host {host} is declared by {len(specs)} resources: "
                    + ", ".join(names),
                    file=specs[1].origin, address=names[1],
                    hint="give each file its own path, or drop one of the declarations")

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        values = common.snapshot(spec, self.fields)
        values["host"] = spec.host.name if spec.host else ""
        values["mode"] = values.get("mode") or ""
        return values

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if prior is not None:
            before, after = dict(prior.inputs), dict(self.inputs(request.spec))
            if before.get("path") != after.get("path") or before.get("host") != after.get("host"):
                decision = Decision(Action.REPLACE, (
                    f"moved from {before.get('path')} on {before.get('host')}",), ALL_OUTPUTS)
            changes = common.describe_changes(before, after)
            if changes and decision.action is Action.NOOP:
                content_keys = {"source", "content"}
                moved = any(before.get(k) != after.get(k) for k in content_keys)
                decision = Decision(Action.UPDATE, tuple(changes),
                                    frozenset({"content"}) if moved else frozenset())
            observed = request.observation
            if observed is not None:
                decision = decision.merge(self._drift(observed, prior.outputs))
        if request.changed_dependencies:
            causes = sorted(set(request.changed_dependencies.values()))
            decision = decision.merge(Decision(Action.UPDATE, tuple(causes),
                                               frozenset({"content"})))
        return decision

    @staticmethod
    def _drift(observed: Any, recorded: Mapping[str, Any]) -> Decision:
        """What refresh saw on the host against what the last apply wrote (no restart)."""
        if observed.is_symlink:
            return Decision(Action.UPDATE, ("a symlink on host (apply refuses to write through "
                                            "it: remove it)",))
        if observed.content_sha256 is None:
            return Decision(Action.UPDATE, ("missing on host",))
        reasons = []
        if observed.content_sha256 != recorded.get("content_sha256"):
            reasons.append("changed on host")
        declared = recorded.get("mode")
        if observed.mode is not None and declared and observed.mode != int(declared, 8):
            reasons.append(f"mode {observed.mode:04o} on host, declared {declared}")
        for key in ("owner", "group"):
            seen, wanted = getattr(observed, key), recorded.get(key)
            if seen is not None and wanted and seen != wanted:
                reasons.append(f"{key} {seen} on host, declared {wanted}")
        return Decision(Action.UPDATE, tuple(reasons)) if reasons else Decision.noop()

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("replace", "apply", Action.REPLACE, ALL_OUTPUTS, "rewritten")]

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        return []

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec, ctx = request.spec, request.context
        assert spec.host is not None
        source_ref = Ref(spec["source"], spec["content"])
        content = ctx.value(source_ref)
        secret = ctx.is_secret(source_ref)
        declared = spec.get("mode")  # what inputs() records, without building all of them
        mode = int(declared, 8) if declared else (0o600 if secret else 0o644)
        transport = ctx.host_transport(spec.host)
        prior = request.prior
        if prior is not None and (prior.outputs.get("path"), prior.outputs.get("host")) != (
            spec["path"], spec.host.name
        ):
            old_host = prior.outputs.get("host")
            if old_host == spec.host.name:
                transport.remove_file(prior.outputs["path"])
        transport.write_file(spec["path"], content, mode=mode, owner=spec["owner"],
                             group=spec["group"], backup=not secret)
        sha = hashlib.sha256(content).hexdigest()
        outputs = {
            "host": spec.host.name,
            "path": spec["path"],
            "mode": f"0{mode:03o}",
            "owner": spec["owner"],
            "group": spec["group"],
            "content_sha256": sha,
        }
        return ResourceResult(outputs, {}, {"content": sha}, f"{len(content)} bytes")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        raise KeyError(f"file content is not kept in state ({name})")

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        outputs = prior.outputs if prior is not None else {}
        host = context.hosts.get(outputs.get("host", ""))
        if host is None:
            raise TransportError(
                f"cannot remove {outputs.get('path')}: host {outputs.get('host')!r} is no "
                "longer in the configuration",
                hint="remove the file by hand, then drop it from state: pkiform state rm "
                f"{address}")
        removed = context.host_transport(host).remove_file(outputs["path"])
        return f"removed {outputs['path']}" if removed else f"{outputs['path']} was already gone"

