"""``cert``: a leaf certificate and its private key, signed by a ``ca``.

Outputs: ``cert`` (the leaf), ``key`` (its private key), ``chain`` (leaf plus intermediates).
A changed signer re-issues the leaf with a new key (what the rotation procedures of seed 000
do: "issue new keypairs"); a subject/SAN/usage change or an expiry renewal re-signs it with
the key it already has, like ``kubeadm certs renew``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pkiform.address import Address, Ref
from pkiform.errors import ConfigError
from pkiform.model import Config, ResourceSpec
from pkiform.pki import certs as x509
from pkiform.pki.keys import key_algorithm_of
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

LEAF_KEY_USAGES = ("digital_signature", "key_encipherment")
CHANGES_CERT = frozenset({"cert", "chain"})


class CertProvider:
    kind: ClassVar[str] = "cert"
    per_host: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # CPU work in this process: the applier's own thread
    fields: ClassVar[Mapping[str, Field]] = {
        **common.SUBJECT_FIELDS,
        "common_name": Field("str", required=True, doc="subject CN (the identity)"),
        "validity_days": Field("int", default=365, doc="lifetime in days (kubeadm: 1 year)"),
        "signer": Field("ref", required=True, ref_kinds=("ca",), doc="the CA that signs it"),
        "key": common.key_field(),
        "key_usages": Field("list[str]", default=LEAF_KEY_USAGES, doc="key usages"),
        "extended_key_usages": Field("list[str]", default=(), doc="server_auth/client_auth"),
        "dns_names": Field("list[str]", default=(), doc="DNS subject alternative names"),
        "ip_addresses": Field("list[str]", default=(), doc="IP subject alternative names"),
    }
    outputs: ClassVar[Mapping[str, OutputInfo]] = {
        "cert": OutputInfo(doc="the certificate"),
        "key": OutputInfo(secret=True, doc="its private key"),
        "chain": OutputInfo(doc="certificate followed by intermediates"),
    }

    def dependencies(self, spec: ResourceSpec) -> Sequence[Ref]:
        return [Ref(spec["signer"], "signing"), Ref(spec["signer"], "chain")]

    def validate(self, spec: ResourceSpec, config: Config, registry: Registry) -> None:
        common.check_x509_fields(spec, leaf=True)
        common.check_signer_validity(spec, config)
        if "cert_sign" in (spec.get("key_usages") or ()):
            raise ConfigError("a leaf certificate must not have key usage cert_sign",
                              file=spec.origin, address=str(spec.address),
                              hint="declare a [ca.<name>] for a signing certificate")

    def inputs(self, spec: ResourceSpec) -> Mapping[str, Any]:
        return common.snapshot(spec, self.fields, skip=("renew_before_days",))

    def plan(self, request: PlanRequest) -> Decision:
        decision = Decision.noop()
        prior = request.prior
        if prior is not None:
            before, after = dict(prior.inputs), dict(self.inputs(request.spec))
            if before.get("key") != after.get("key"):
                decision = decision.merge(Decision(
                    Action.REPLACE, (f"key {before.get('key')} → {after.get('key')}",),
                    ALL_OUTPUTS))
            before.pop("key", None)
            after.pop("key", None)
            changes = common.describe_changes(before, after)
            if changes:
                decision = decision.merge(Decision(Action.UPDATE, tuple(changes), CHANGES_CERT))
            expiry = common.expiry_reason(prior.outputs.get("not_after"), request.now,
                                          request.renew_before_days)
            if expiry:
                decision = decision.merge(Decision(Action.UPDATE, (expiry,), CHANGES_CERT))
        if request.changed_dependencies:
            causes = sorted(set(request.changed_dependencies.values()))
            decision = decision.merge(Decision(
                Action.REPLACE, tuple(f"signer {c} → re-issued with a new key" for c in causes),
                ALL_OUTPUTS))
        return decision

    def replace_steps(self, spec: ResourceSpec, mode: str) -> Sequence[ReplaceStep]:
        return [ReplaceStep("replace", "apply", Action.REPLACE, ALL_OUTPUTS,
                            "new key and certificate")]

    def keys_needed(self, spec: ResourceSpec, action: Action, step: str | None) -> Sequence[str]:
        return [spec["key"]] if action in (Action.CREATE, Action.REPLACE) else []

    def apply(self, request: ApplyRequest) -> ResourceResult:
        spec, ctx = request.spec, request.context
        if request.action in (Action.CREATE, Action.REPLACE) or not request.prior_secrets:
            key_pem = ctx.private_key(spec.address, spec["key"])
        else:
            key_pem = request.prior_secrets["key"].encode()
            if key_algorithm_of(key_pem) != spec["key"]:
                key_pem = ctx.private_key(spec.address, spec["key"])
        signer: Address = spec["signer"]
        issuer_cert = ctx.value(Ref(signer, "signing"))
        cert_request = x509.CertificateRequest(
            common_name=spec["common_name"],
            organizations=tuple(spec.get("organizations") or ()),
            key_usages=tuple(spec.get("key_usages") or LEAF_KEY_USAGES),
            extended_key_usages=tuple(spec.get("extended_key_usages") or ()),
            dns_names=tuple(spec.get("dns_names") or ()),
            ip_addresses=tuple(spec.get("ip_addresses") or ()),
            validity_days=common.clamp_validity(
                spec["validity_days"], issuer_cert, ctx.now, str(signer)),
        )
        issuer_key = ctx.value(Ref(signer, "key"))
        # The signer's facts come with the certificate: no parse of what was just built.
        issued = x509.sign_certificate(cert_request, key_pem, issuer_cert, issuer_key, ctx.now)
        outputs = {
            "cert": issued.pem.decode(),
            "intermediates": list(_intermediates(ctx.value(Ref(signer, "chain")))),
            "not_after": common.format_time(issued.not_after),
            "fingerprint": issued.fingerprint_sha256,
            "serial": format(issued.serial_number, "x"),
            "signer": str(signer),
            "signer_fingerprint": x509.describe_certificate(issuer_cert).fingerprint_sha256,
        }
        secrets = {"key": key_pem.decode()}
        digests = {name: common.digest(self.output_value(outputs, secrets, name))
                   for name in self.outputs}
        return ResourceResult(outputs, secrets, digests,
                              f"expires {issued.not_after:%Y-%m-%d}")

    def output_value(self, outputs: Mapping[str, Any], secrets: Mapping[str, str],
                     name: str) -> bytes:
        if name == "cert":
            return outputs["cert"].encode()
        if name == "key":
            return secrets["key"].encode()
        if name == "chain":
            return x509.join_pem_bundle(
                [outputs["cert"].encode()] + [c.encode() for c in outputs.get("intermediates", [])])
        raise KeyError(name)

    def delete(self, address: Address, prior: Any, context: Any) -> str:
        return "forgotten (key removed from state)"


@functools.lru_cache(maxsize=64)
def _intermediates(signer_chain: bytes) -> tuple[str, ...]:
    """The certificates of a signer's chain that are not roots (what a leaf's chain adds).

    Memoized on the chain's bytes: every leaf of a CA has the same one (1,000 kubelet
    certificates at 1,000 nodes), and splitting parses each certificate."""
    return tuple(c.decode() for c in x509.split_pem_bundle(signer_chain) if not common.is_root(c))
