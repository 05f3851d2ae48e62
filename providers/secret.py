"""``secret``: random bytes that are not a key pair (the encryption-config key of seed 002).

Outputs: ``value`` (base64 of the active bytes) and ``encryption_config`` (the apiserver's
EncryptionConfiguration listing every live key, the active one first: the apiserver encrypts
with the first and decrypts with any, so a rotation adds the new key, then makes it first,
then — after secrets were rewritten outside pkiform — drops the old one).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, ResourceSpec
from pkiform.pki.render import render_encryption_config
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


class SecretProvider:
    kind: ClassVar[str] = "secret"
    per_host: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # CPU work in this process: the applier's own thread
    fields: ClassVar[Mapping[str, Field]] = {
        "bytes": Field("int", default=32, doc="random bytes (32 for AES-256)"),
        "encryption_provider": Field("str", default="aescbc",
                                     choices=("aescbc", "aesgcm", "secretbox"),
                                     doc="provider in the rendered EncryptionConfiguration"),
        "resources": Field("list[str]", default=("secrets",), doc="API resources to encrypt"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "value": OutputInfo(secret=True, doc="base64 of the active random bytes"),
        "encryption_config": OutputInfo(secret=True, doc="EncryptionConfiguration YAML"),
    }

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return []

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        if not 16 <= spec["bytes"] <= 1024:
            raise ConfigError("bytes must be between 16 and 1024", file=spec.origin,
                              address=str(spec.address), hint="use 32 for an AES-256 key")
        if spec["encryption_provider"] in ("aescbc", "aesgcm", "secretbox") and spec["bytes"] != 32:
            raise ConfigError(f"{spec['encryption_provider']} needs a 32-byte key",
                              file=spec.origin, address=str(spec.address), hint="set bytes = 32")

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return common.snapshot(spec, self.fields)

    def plan(self, request: PlanRequest) -> Decision:
        if request.prior is not None:
            before, after = dict(request.prior.inputs), dict(self.inputs(request.spec))
            changes = common.describe_changes(before, after)
            if before.get("bytes") != after.get("bytes"):
                return Decision(Action.REPLACE, tuple(changes), ALL_OUTPUTS)
            if changes:
                return Decision(Action.UPDATE, tuple(changes), frozenset({"encryption_config"}))
        return Decision.noop()

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return rotation_steps(mode, trust_outputs=frozenset({"encryption_config"}),
                              signing_outputs=frozenset({"value"}), what="encryption key")

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        return []

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec = request.spec
        prior_outputs = request.prior.outputs if request.prior is not None else {}
        generations = Generations(prior_outputs, request.prior_secrets)
        new = None
        if request.action is Action.CREATE or request.step in (STEP_ADD, STEP_REPLACE) or (
            request.action is Action.REPLACE and request.step is None
        ):
            value = base64.b64encode(os.urandom(spec["bytes"])).decode()
            new = ({"name": f"key-{len(generations.items) + 1}"}, value)
        generations = generations.step(request.step, request.action, new)
        outputs = {
            **generations.to_outputs(),
            "encryption_provider": spec["encryption_provider"],
            "resources": list(spec["resources"]),
        }
        secrets = generations.to_secrets()
        digests = {n: common.digest(self.output_value(outputs, secrets, n)) for n in self.outputs}
        return ResourceResult(outputs, secrets, digests, f"{len(generations.items)} key(s) live")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        generations = Generations(outputs, secrets)
        if name == "value":
            return generations.active_key.encode()
        if name == "encryption_config":
            order = [generations.active] + [
                i for i in range(len(generations.items)) if i != generations.active]
            return render_encryption_config(
                keys=[(generations.items[i]["name"], generations.keys[i]) for i in order],
                resources=outputs.get("resources", ["secrets"]),
                provider=outputs.get("encryption_provider", "aescbc"),
            )
        raise KeyError(name)

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten (value removed from state)"
