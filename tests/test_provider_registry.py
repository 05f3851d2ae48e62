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


def test_a_config_can_use_a_third_party_kind(vendor_site: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n")
    import pkiform.workspace as workspace

    monkeypatch.setattr(workspace, "_registry", None)  # a fresh default registry
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    (cluster / "pkiform.toml").write_text('[vendor-keypair.signing]\nkey = "ecdsa-p256"\n')
    result = run_cli("-C", str(cluster), "validate")
    assert result.code == 0, result.err
    assert "1 resources" in result.out
    monkeypatch.setattr(workspace, "_registry", None)


def test_an_unknown_kind_names_every_kind_there_is(vendor_site: Path) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n")
    registry = Registry.with_entry_points(builtin_providers)
    with pytest.raises(ConfigError) as caught:
        registry["certificate"]
    assert "unknown resource kind 'certificate'" in str(caught.value)
    assert "vendor-keypair" in (caught.value.hint or "") and "cert" in (caught.value.hint or "")


def test_an_entry_point_named_after_another_kind_is_refused(vendor_site: Path) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:Misnamed\n")
    registry = Registry.with_entry_points(builtin_providers)
    with pytest.raises(ConfigError) as caught:
        registry["vendor-keypair"]
    assert "gives a provider of kind 'something-else'" in str(caught.value)


def test_loading_a_config_of_built_in_kinds_reads_no_entry_points(
        vendor_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _vendor_distribution(vendor_site, "vendor-keypair = vendor_kinds:VendorKeypair\n")
    import pkiform.workspace as workspace
    from tests.conftest import EXAMPLES

    monkeypatch.setattr(workspace, "_registry", None)
    ws = workspace.Workspace(EXAMPLES / "kubeadm")
    assert len(ws.config.resources) > 100
    assert ws.registry._discover is not None  # never needed
    assert "vendor_kinds" not in sys.modules
    monkeypatch.setattr(workspace, "_registry", None)
