"""``ca``: a certificate authority — a self-signed root, or an intermediate signed by a CA.

Outputs: ``cert`` (trust bundle: every live generation, the active one first), ``key`` (active
private key), ``signing`` (the active certificate alone: what leaves are signed with) and
``chain`` (active cert plus the intermediates above it, roots excluded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, ResourceSpec
from pkiform.pki import certs as x509
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
from pkiform.providers._rotation import (
    STEP_ADD,
    STEP_REPLACE,
    Generations,
    rotation_steps,
)

CA_KEY_USAGES = ("digital_signature", "key_encipherment", "cert_sign")


class CaProvider:
    kind: ClassVar[str] = "ca"
    per_host: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # CPU work in this process: the applier's own thread
    fields: ClassVar[Mapping[str, Field]] = {
        **common.SUBJECT_FIELDS,
        "validity_days": Field("int", default=3650, doc="lifetime in days (kubeadm: 10 years)"),
        "key": common.key_field(),
        "signer": Field("ref", ref_kinds=("ca",), doc="parent CA: makes this an intermediate"),
        "path_length": Field("int", doc="BasicConstraints pathLen"),
        "key_usages": Field("list[str]", default=CA_KEY_USAGES, doc="key usages"),
        "dns_names": Field("list[str]", default=(), doc="DNS SANs (kubeadm: the CN)"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "cert": OutputInfo(doc="trust bundle, active CA first"),
        "key": OutputInfo(secret=True, doc="active CA private key"),
        "signing": OutputInfo(doc="active CA certificate alone"),
        "chain": OutputInfo(doc="active CA certificate and its intermediates"),
    }
    trust_outputs = frozenset({"cert"})
    signing_outputs = frozenset({"key", "signing", "chain"})

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        signer = spec.get("signer")
        return [Ref(signer, "signing"), Ref(signer, "chain")] if signer else []

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        common.check_x509_fields(spec, leaf=False)
        common.check_signer_validity(spec, config)
        path_length = spec.get("path_length")
        if path_length is not None and not 0 <= path_length <= 10:
            raise ConfigError("path_length must be between 0 and 10", file=spec.origin,
                              address=str(spec.address), hint="use 0 for a CA that signs leaves")

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        values = common.snapshot(spec, self.fields, skip=("renew_before_days",))
        values.setdefault("common_name", spec.address.name)
        return values

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if prior is not None:
            changes = common.describe_changes(prior.inputs, self.inputs(request.spec))
            if changes:
                decision = decision.merge(Decision(
                    Action.REPLACE, (*tuple(changes), "a changed CA is a new CA"), ALL_OUTPUTS))
            expiry = common.expiry_reason(prior.outputs.get("not_after"), request.now,
                                          request.renew_before_days)
            if expiry:
                decision = decision.merge(Decision(Action.REPLACE, (expiry,), ALL_OUTPUTS))
        if request.changed_dependencies:
            causes = sorted(set(request.changed_dependencies.values()))
            decision = decision.merge(Decision(
                Action.UPDATE, tuple(f"signer {c} → re-signed" for c in causes),
                frozenset({"cert", "signing", "chain"})))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return rotation_steps(mode, trust_outputs=self.trust_outputs,
                              signing_outputs=self.signing_outputs, what="CA")

    def rotation_notes(self, spec: ResourceSpec) -> list[str]:
        # Kubernetes' "Manual Rotation of CA Certificates": some consumers cannot take a bundle
        # for a signing pair (kube-controller-manager --cluster-signing-cert-file/-key-file).
        return [
            f"{spec.address}: in every phase the first certificate of its bundle is the active "
            "CA and matches its key file, so consumers that need one cert/key pair (the "
            "controller-manager's --cluster-signing-cert-file/--cluster-signing-key-file) keep "
            "a matching pair: they sign with the old CA until reissue, then with the new one"
        ]

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        if action is Action.CREATE or step in (STEP_ADD, STEP_REPLACE) or (
            action is Action.REPLACE and step is None
        ):
            return [spec["key"]]
        return []

    def _issue(self, request: ApplyRequest, key_pem: bytes) -> tuple[dict[str, Any], bytes]:
        spec = request.spec
        ctx = request.context
        cert_request = x509.CertificateRequest(
            common_name=spec.get("common_name") or spec.address.name,
            organizations=tuple(spec.get("organizations") or ()),
            is_ca=True,
            path_length=spec.get("path_length"),
            key_usages=tuple(spec.get("key_usages") or CA_KEY_USAGES),
            dns_names=tuple(spec.get("dns_names") or ()),
            validity_days=spec["validity_days"],
        )
        signer: Address | None = spec.get("signer")
        if signer is None:
            cert = x509.issue_certificate(cert_request, key_pem, None, key_pem, ctx.now)
            parents: list[str] = []
        else:
            issuer_cert = ctx.value(Ref(signer, "signing"))
            issuer_key = ctx.value(Ref(signer, "key"))
            cert_request = attrs.evolve(cert_request, validity_days=common.clamp_validity(
                cert_request.validity_days, issuer_cert, ctx.now, str(signer)))
            cert = x509.issue_certificate(cert_request, key_pem, issuer_cert, issuer_key, ctx.now)
            parent_chain = x509.split_pem_bundle(ctx.value(Ref(signer, "chain")))
            parents = [p.decode() for p in parent_chain if not common.is_root(p)]
        info = x509.describe_certificate(cert)
        public = {
            "cert": cert.decode(),
            "fingerprint": info.fingerprint_sha256,
            "not_after": common.format_time(info.not_after),
            "issuer_chain": parents,
        }
        return public, cert

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec, ctx = request.spec, request.context
        prior_outputs = request.prior.outputs if request.prior is not None else {}
        generations = Generations(prior_outputs, request.prior_secrets)
        new: tuple[dict[str, Any], str] | None = None
        step = request.step
        if request.action is Action.CREATE or step in (STEP_ADD, STEP_REPLACE) or (
            request.action is Action.REPLACE and step is None
        ):
            key_pem = ctx.private_key(spec.address, spec["key"])
            public, _ = self._issue(request, key_pem)
            new = (public, key_pem.decode())
            generations = generations.step(step, request.action, new)
        elif step is not None:
            generations = generations.step(step, request.action, None)
        else:
            # Re-sign the active generation with its own key (intermediate whose parent
            # changed, or a config change that keeps the key).
            key_pem = generations.active_key.encode()
            public, _ = self._issue(request, key_pem)
            generations.items[generations.active] = public
        if spec.get("signer") is not None:
            generations = self._resign_under_current_parent(request, generations)
        return self._result(spec, generations)

    def _resign_under_current_parent(
        self, request: ApplyRequest, generations: Generations
    ) -> Generations:
        """An intermediate's generations must chain to its parent's active CA.

        When the parent was rotated in this same phase (or an earlier one), re-sign every
        generation with its own key under the parent's current signing cert.
        """
        parent = x509.describe_certificate(
            request.context.value(Ref(request.spec["signer"], "signing")))
        for index, item in enumerate(generations.items):
            info = x509.describe_certificate(item["cert"].encode())
            if info.authority_key_id_hex != parent.subject_key_id_hex:
                public, _ = self._issue(request, generations.keys[index].encode())
                generations.items[index] = public
        return generations

    def _result(self, spec: ResourceSpec, generations: Generations) -> ResourceResult:
        active = generations.active_item
        outputs = {
            **generations.to_outputs(),
            "not_after": active["not_after"],
            "fingerprint": active["fingerprint"],
            "signer": str(spec.get("signer") or ""),
        }
        secrets = generations.to_secrets()
        digests = {name: common.digest(self.output_value(outputs, secrets, name))
                   for name in self.outputs}
        return ResourceResult(outputs, secrets, digests,
                              f"{len(generations.items)} generation(s) trusted")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        generations = Generations(outputs, secrets)
        if name == "cert":
            return x509.join_pem_bundle([g["cert"].encode() for g in generations.trust_order()])
        if name == "key":
            return generations.active_key.encode()
        if name == "signing":
            return generations.active_item["cert"].encode()
        if name == "chain":
            active = generations.active_item
            return x509.join_pem_bundle(
                [active["cert"].encode()] + [p.encode() for p in active.get("issuer_chain", [])])
        raise KeyError(name)

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten (keys removed from state)"
