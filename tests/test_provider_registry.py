"""Third-party resource kinds through the entry point group ``pkiform.providers``: found when
a config names a kind that is not built in (and only then: reading every distribution's
metadata costs ~30 ms a command), never shadowing a built-in, and a misnamed entry point is
a clear error."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkiform.errors import ConfigError
from pkiform.provider import ENTRY_POINT_GROUP, Registry
from pkiform.providers import builtin_providers
from tests.conftest import run_cli

VENDOR_MODULE = '''
from pkiform.providers.keypair import KeypairProvider

LOADED = []


class VendorKeypair(KeypairProvider):
    kind = "vendor-keypair"

    def __init__(self):
        LOADED.append(self)


class Misnamed(KeypairProvider):
    kind = "something-else"


class ShadowCa(KeypairProvider):
    kind = "ca"
'''


def _vendor_distribution(site: Path, entries: str) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "vendor_kinds.py").write_text(VENDOR_MODULE)
    info = site / "vendor_pkiform-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-pkiform\n"
                                   "Version: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entries}")


@pytest.fixture
def vendor_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("vendor_kinds", None)


@pytest.fixture
def fresh_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    import pkiform.workspace as workspace

    monkeypatch.setattr(workspace, "_registry", None)  # built again, seeing vendor_site


def test_a_third_party_kind_is_found_only_when_asked_for(vendor_site: Path) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n"
                                      "ca = vendor_kinds:ShadowCa\n")
    registry = Registry.with_entry_points(builtin_providers)
    assert "keypair" in registry and registry["ca"].kind == "ca"
    assert "vendor_kinds" not in sys.modules  # built-in kinds never read the entry points
    provider = registry["vendor-keypair"]
    assert provider.kind == "vendor-keypair"
    assert type(registry["ca"]).__name__ == "CaProvider"  # the built-in wins
    assert "vendor-keypair" in registry.kinds()
    assert len(sys.modules["vendor_kinds"].LOADED) == 1  # discovered once


@pytest.mark.usefixtures("fresh_default_registry")
def test_a_config_can_use_a_third_party_kind(vendor_site: Path, tmp_path: Path) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n")
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "pkiform.toml").write_text('[vendor-keypair.signing]\nkey = "ecdsa-p256"\n')
    result = run_cli("-C", str(cluster), "validate")
    assert result.code == 0, result.err
    assert "1 resources" in result.out


@pytest.mark.parametrize(("provider", "asked", "message", "hint_names"), [
    # an unknown kind: the hint names every kind there is, third-party ones too
    ("VendorKeypair", "certificate", "unknown resource kind 'certificate'",
     ("vendor-keypair", "cert")),
    # an entry point named after a kind its provider does not implement
    ("Misnamed", "vendor-keypair", "gives a provider of kind 'something-else'", ()),
])
def test_a_kind_the_registry_cannot_give_is_a_clear_error(
        vendor_site: Path, provider: str, asked: str, message: str,
        hint_names: tuple[str, ...]) -> None:
    _vendor_distribution(vendor_site, f"vendor-keypair = vendor_kinds:{provider}\n")
    registry = Registry.with_entry_points(builtin_providers)
    with pytest.raises(ConfigError) as caught:
        registry[asked]
    assert message in str(caught.value)
    assert all(name in (caught.value.hint or "") for name in hint_names)


@pytest.mark.usefixtures("fresh_default_registry")
def test_loading_a_config_of_built_in_kinds_reads_no_entry_points(vendor_site: Path) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n")
    import pkiform.workspace as workspace
    from tests.conftest import EXAMPLES

    ws = workspace.Workspace(EXAMPLES / "kubeadm")
    assert len(ws.config.resources) > 100
    assert ws.registry._discover is not None  # never needed
    assert "vendor_kinds" not in sys.modules
