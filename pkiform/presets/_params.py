"""Checking a preset's parameters (same error style as the rest of the config)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pkiform.errors import ConfigError


class Params:
    def __init__(self, preset: str, raw: Mapping[str, Any], defaults: Mapping[str, Any],
                 file: str) -> None:
        self.preset = preset
        self.file = file
        unknown = sorted(set(raw) - set(defaults))
        if unknown:
            raise ConfigError(f"unknown parameter {unknown[0]!r}", file=file,
                              address=f"preset.{preset}",
                              hint=f"{preset} accepts: {', '.join(sorted(defaults))}")
        self.values: dict[str, Any] = dict(defaults)
        for key, value in raw.items():
            default = defaults[key]
            wrong = default is not None and (
                not isinstance(value, type(default))
                # bool is an int in Python, never in a config
                or (isinstance(value, bool) and not isinstance(default, bool)))
            if wrong:
                raise ConfigError(
                    f"{key} must be {_type_word(default)}, not {_type_word(value)}",
                    file=file, address=f"preset.{preset}", hint=f"fix {key}")
            if isinstance(value, list) and not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} must be an array of strings", file=file,
                                  address=f"preset.{preset}", hint=f"fix {key}")
            if isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
                raise ConfigError(f"{key} must be a table of strings", file=file,
                                  address=f"preset.{preset}", hint=f"fix {key}")
            self.values[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def error(self, message: str, hint: str) -> ConfigError:
        return ConfigError(message, file=self.file, address=f"preset.{self.preset}", hint=hint)

    def first_service_ip(self, key: str = "service_cidr") -> str:
        try:
            network = ipaddress.ip_network(self[key], strict=False)
            if network.num_addresses < 4:
                raise ValueError("too small")
            return str(network.network_address + 1)
        except ValueError:
            raise self.error(f"{key} {self[key]!r} is not a usable service CIDR",
                             "e.g. 10.96.0.0/12") from None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _type_word(value: Any) -> str:
    return {bool: "true or false", int: "an integer", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)
