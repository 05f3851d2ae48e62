"""``keypair``: a private key without a certificate (the service-account key sa.key/sa.pub).

Outputs: ``key`` (the active private key) and ``public_key`` (every live public key, active
first). The apiserver accepts several keys in --service-account-key-file, so a rotation
publishes old+new public keys first, then switches the signing key, then drops the old one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.model import Config, ResourceSpec
from pkiform.pki.keys import public_key_pem
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
from pkiform.providers._rotation import STEP_ADD, STEP_REPLACE, Generations, rotation_steps


class KeypairProvider:
    kind: ClassVar[str] = "keypair"
    per_host: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # CPU work in this process: the applier's own thread
    fields: ClassVar[Mapping[str, Field]] = {"key": common.key_field()}
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "key": OutputInfo(secret=True, doc="active private key (PKCS#8 PEM)"),
        "public_key": OutputInfo(doc="public keys, active first (PEM)"),
    }

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return []

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        return None

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return common.snapshot(spec, self.fields)

    def plan(self, request: PlanRequest) -> Decision:
        if request.prior is not None:
            changes = common.describe_changes(request.prior.inputs, self.inputs(request.spec))
            if changes:
                return Decision(Action.REPLACE, tuple(changes), ALL_OUTPUTS)
        return Decision.noop()

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return rotation_steps(mode, trust_outputs=frozenset({"public_key"}),
                              signing_outputs=frozenset({"key"}), what="key")

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        if action is Action.CREATE or step in (STEP_ADD, STEP_REPLACE) or (
            action is Action.REPLACE and step is None
        ):
            return [spec["key"]]
        return []

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec = request.spec
        prior_outputs = request.prior.outputs if request.prior is not None else {}
        generations = Generations(prior_outputs, request.prior_secrets)
        new = None
        if self.keys_needed(spec, request.action, request.step):
            key_pem = request.context.private_key(spec.address, spec["key"])
            new = ({"public_key": public_key_pem(key_pem).decode()}, key_pem.decode())
        generations = generations.step(request.step, request.action, new)
        outputs = generations.to_outputs()
        secrets = generations.to_secrets()
        digests = {n: common.digest(self.output_value(outputs, secrets, n)) for n in self.outputs}
        return ResourceResult(outputs, secrets, digests,
                              f"{len(generations.items)} public key(s) published")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        generations = Generations(outputs, secrets)
        if name == "key":
            return generations.active_key.encode()
        if name == "public_key":
            return "".join(g["public_key"] for g in generations.trust_order()).encode()
        raise KeyError(name)

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten (key removed from state)"
