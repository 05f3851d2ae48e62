"""Layer rules, checked by walking the imports of every module in the engine.

The engine (graph, plan, apply, provider protocol, model, address, errors, state) must not
import the CLI, fabric/paramiko, the SSH transport, a concrete provider, a preset or the
application layer (workspace); only the SSH transport may import fabric.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = [
    "pkiform/graph.py",
    "pkiform/plan.py",
    "pkiform/apply.py",
    "pkiform/provider.py",
    "pkiform/model.py",
    "pkiform/address.py",
    "pkiform/errors.py",
    "pkiform/transport/base.py",
    "state/model.py",
    "state/store.py",
    "state/secrets.py",
]
FORBIDDEN_FOR_ENGINE = (
    "pkiform.cli",
    "pkiform.workspace",
    "pkiform.providers",
    "pkiform.presets",
    "pkiform.transport.ssh",
    "pkiform.transport.local",
    "pkiform.render",
    "fabric",
    "paramiko",
    "invoke",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def violates(module: str, forbidden: tuple[str, ...]) -> str | None:
    for prefix in forbidden:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


@pytest.mark.parametrize("relative", ENGINE)
def test_engine_module_stays_in_its_layer(relative: str) -> None:
    bad = {
        module: rule
        for module in imported_modules(ROOT / relative)
        if (rule := violates(module, FORBIDDEN_FOR_ENGINE))
    }
    # apply.py imports the keygen function lazily from pkiform.pki (pure crypto, not a
    # provider); anything listed above is a layer break.
    assert not bad, f"{relative} imports {bad}"


def test_only_the_ssh_transport_imports_fabric() -> None:
    offenders = []
    for path in sorted(ROOT.glob("pkiform/**/*.py")) + sorted(ROOT.glob("providers/*.py")) + \
            sorted(ROOT.glob("state/*.py")):
        if path.relative_to(ROOT).as_posix() == "pkiform/transport/ssh.py":
            continue
        if any(violates(m, ("fabric", "paramiko", "invoke")) for m in imported_modules(path)):
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_layer_check_would_catch_a_violation(tmp_path: Path) -> None:
    # The walker itself must see imports in every form, or the tests above prove nothing.
    sample = tmp_path / "sample.py"
    sample.write_text("import fabric\nfrom pkiform.providers.ca import CaProvider\n"
                      "def f():\n    from pkiform import cli\n")
    modules = imported_modules(sample)
    assert violates("fabric", FORBIDDEN_FOR_ENGINE)
    assert {"fabric", "pkiform.providers.ca", "pkiform.cli"} <= modules


def test_installed_names_stay_under_pkiform(tmp_path: Path) -> None:
    # Run outside the checkout, so only what is installed can be imported.
    import subprocess
    import sys

    probe = (
        "import importlib.util as u\n"
        "print(u.find_spec('providers') is None, u.find_spec('state') is None,\n"
        "      u.find_spec('pkiform.providers') is not None,\n"
        "      u.find_spec('pkiform.state.store') is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.split() == ["True", "True", "True", "True"]
