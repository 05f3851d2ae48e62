"""``kubeconfig``: a client kubeconfig with the CA and the client cert+key embedded.

Everything needed to render it is kept in its state (CA bundle, client cert, key encrypted),
so a file can be (re)written from the state alone. The CA data is the CA's trust bundle: during
a CA rotation it holds old and new, which is what keeps clients connected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, ResourceSpec
from pkiform.pki.render import render_kubeconfig
from pkiform.provider import (
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

OUTPUT = frozenset({"kubeconfig"})


class KubeconfigProvider:
    kind: ClassVar[str] = "kubeconfig"
    per_host: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # CPU work in this process: the applier's own thread
    fields: ClassVar[Mapping[str, Field]] = {
        "cluster_name": Field("str", default="kubernetes", doc="cluster entry name"),
        "server": Field("str", required=True, doc="API server URL, https://host:port"),
        "ca": Field("ref", required=True, ref_kinds=("ca",), doc="CA whose bundle is embedded"),
        "client": Field("ref", required=True, ref_kinds=("cert",), doc="client certificate"),
        "user": Field("str", required=True, doc="user entry name"),
        "context": Field("str", doc="context name (default <user>@<cluster_name>)"),
        "namespace": Field("str", doc="default namespace of the context"),
        "handed_out": Field("bool", default=False,
                            doc="copies are given to people: list their re-distribution"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "kubeconfig": OutputInfo(secret=True, doc="kubeconfig YAML (holds the client key)"),
    }

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return [Ref(spec["ca"], "cert"), Ref(spec["client"], "cert"), Ref(spec["client"], "key")]

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        server = spec["server"]
        if not re.fullmatch(r"https://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(/\S*)?",
                            server):
            raise ConfigError(f"server {server!r} is not an https:// URL", file=spec.origin,
                              address=str(spec.address),
                              hint="write e.g. https://10.0.0.10:6443")

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        values = common.snapshot(spec, self.fields)
        values.setdefault("context", f"{spec['user']}@{spec['cluster_name']}")
        return values

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        if request.prior is not None:
            changes = common.describe_changes(request.prior.inputs, self.inputs(request.spec))
            if changes:
                decision = Decision(Action.UPDATE, tuple(changes), OUTPUT)
        if request.changed_dependencies:
            causes = sorted(set(request.changed_dependencies.values()))
            decision = decision.merge(Decision(Action.UPDATE, tuple(causes), OUTPUT))
        return decision

    def outside_notes(self, spec: ResourceSpec, decision: Decision) -> list[str]:
        if not spec.get("handed_out"):
            return []
        return [f"{spec.address} changed: give the new copy to everyone who holds one "
                "(copies handed out earlier stop working when the old CA or cert retires)"]

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("replace", "apply", Action.REPLACE, OUTPUT, "re-rendered")]

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        return []

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec, ctx = request.spec, request.context
        inputs = self.inputs(spec)
        outputs = {
            "cluster_name": inputs["cluster_name"],
            "server": inputs["server"],
            "user": inputs["user"],
            "context": inputs["context"],
            "namespace": inputs.get("namespace"),
            "ca_bundle": ctx.value(Ref(spec["ca"], "cert")).decode(),
            "client_cert": ctx.value(Ref(spec["client"], "cert")).decode(),
            "handed_out": inputs.get("handed_out", False),
        }
        secrets = {"client_key": ctx.value(Ref(spec["client"], "key")).decode()}
        digests = {"kubeconfig": common.digest(self.output_value(outputs, secrets, "kubeconfig"))}
        return ResourceResult({k: v for k, v in outputs.items() if v is not None}, secrets,
                              digests, f"server {inputs['server']}")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        if name != "kubeconfig":
            raise KeyError(name)
        return render_kubeconfig(
            cluster_name=outputs["cluster_name"],
            server=outputs["server"],
            ca_bundle_pem=outputs["ca_bundle"].encode(),
            user=outputs["user"],
            client_cert_pem=outputs["client_cert"].encode(),
            client_key_pem=secrets["client_key"].encode(),
            context=outputs["context"],
            namespace=outputs.get("namespace"),
        )

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten"
