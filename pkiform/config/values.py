"""Checks and conversions of single config values, each failing with a `ConfigError`."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pkiform.errors import ConfigError

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MAX_STRING = 4096
MAX_LIST = 1000


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_ip(text: str, *, file: str, address: str, field: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(
            f"{field}: {text!r} is not an IP address",
            file=file,
            address=address,
            hint="write an IPv4 or IPv6 literal, e.g. 10.0.0.11; put host names in dns_names",
        ) from None


def check_dns_name(text: str, *, file: str, address: str, field: str) -> str:
    name = text[2:] if text.startswith("*.") else text
    labels = name.rstrip(".").split(".")
    if (
        not name
        or len(text) > 253
        or is_ip(text)
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or (len(labels) > 1 and labels[-1].isdigit())  # "10.0.0.300": a bad IP, not a name
    ):
        raise ConfigError(
            f"{field}: {text!r} is not a valid DNS name",
            file=file,
            address=address,
            hint="use letters, digits and '-' in dot-separated labels of at most 63 characters"
            " (IP addresses go in ip_addresses)",
        )
    return text.lower()


def check_mode(value: Any, *, file: str, address: str, field: str) -> str:
    text = value if isinstance(value, str) else None
    if text is None or not re.fullmatch(r"0?[0-7]{3,4}", text):
        raise ConfigError(
            f"{field}: {value!r} is not a file mode",
            file=file,
            address=address,
            hint='write an octal string such as "0600" or "0644"',
        )
    mode = int(text, 8)
    if mode & 0o7000:
        raise ConfigError(f"{field}: setuid/setgid/sticky bits are not allowed", file=file,
                          address=address, hint='use a plain mode such as "0600"')
    if mode & 0o002:
        raise ConfigError(f"{field}: {value!r} lets anyone overwrite the file", file=file,
                          address=address, hint='drop the write bit for others, e.g. "0644"')
    return f"0{mode:03o}"


def check_absolute_path(value: str, *, file: str, address: str, field: str) -> str:
    import posixpath

    if not value.startswith("/"):
        raise ConfigError(
            f"{field}: {value!r} is not an absolute path",
            file=file,
            address=address,
            hint="write the full path on the host, e.g. /etc/kubernetes/pki/ca.crt",
        )
    if "\0" in value or "\n" in value:
        raise ConfigError(f"{field}: the path contains a control character", file=file,
                          address=address, hint="remove it")
    if value.endswith("/"):
        raise ConfigError(f"{field}: {value!r} names a directory, not a file", file=file,
                          address=address, hint="write the file's full path (no trailing '/')")
    normal = posixpath.normpath(value)
    if normal != value or "/../" in value or value.endswith("/..") or value == "/":
        raise ConfigError(
            f"{field}: {value!r} is not in normalized form",
            file=file,
            address=address,
            hint=f"write {normal!r} (no '..', '.', '//' or trailing '/')",
        )
    return value
