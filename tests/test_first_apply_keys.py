"""A first apply (no state, no journal) asks for its keys from the config, before the plan
exists: exactly the keys the plan then wants, per address, with the keys of resources that
depend on nothing (root CAs, keypairs) first."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pkiform.apply import first_apply_key_requests, key_requests
from pkiform.workspace import Workspace
from tests.conftest import copy_example


@pytest.mark.parametrize("example", ["kubeadm", "hard-way", "five-ca"])
def test_the_config_names_exactly_the_keys_of_the_first_plan(example: str,
                                                             tmp_path: Path) -> None:
    ws = Workspace(copy_example(example, tmp_path))
    early = first_apply_key_requests(ws.config, ws.registry)
    planned = key_requests(ws.plan(), ws.registry)
    assert planned, "the example generates keys"
    assert {a: Counter(k) for a, k in early.items()} == {
        a: Counter(k) for a, k in planned.items()}
    roots = [a for a in early if not ws.registry[a.kind].dependencies(ws.config.resources[a])]
    assert roots and list(early)[:len(roots)] == roots
