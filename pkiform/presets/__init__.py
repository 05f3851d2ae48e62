"""Presets: a short inventory expanded into a full standard PKI layout.

A preset is a function ``(params, hosts, *, file) -> Expansion`` returning raw resource tables
(exactly what a user could have written in TOML) and TLS edges. The loader then treats them like
user tables, and a user table with the same address overrides a preset's field by field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from pkiform.model import Host


@attrs.frozen
class Expansion:
    resources: Mapping[str, Mapping[str, dict[str, Any]]]
    tls: tuple[dict[str, Any], ...] = ()


Preset = Callable[..., Expansion]


def builtin_presets() -> dict[str, Preset]:
    from pkiform.presets.hardway import expand as hard_way
    from pkiform.presets.kubeadm import expand as kubeadm

    return {"kubeadm": kubeadm, "hard-way": hard_way}


__all__ = ["Expansion", "Host", "Preset", "builtin_presets"]
