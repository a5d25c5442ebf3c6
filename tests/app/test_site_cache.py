"""client.site.get_site: a node's data is built once per process, its policy read every call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import client.site
from client.site import get_site

NODE = {"partition-id": 0, "num-partitions": 2}


def test_a_site_is_fingerprinted_once_per_node_and_config(
    run_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = client.site.data_fingerprint

    def counting(cfg: Any, data: Any) -> str:
        calls.append(len(data))
        return real(cfg, data)

    monkeypatch.setattr(client.site, "data_fingerprint", counting)
    first, again = get_site(run_config, NODE), get_site(run_config, NODE)
    assert len(calls) == 1 and first.data_key == again.data_key
    assert first is not again and first.trainees is again.trainees  # a new Site, shared data
    other = get_site(run_config, {**NODE, "partition-id": 1})
    assert len(calls) == 2 and other.data_key != first.data_key
    get_site({**run_config, "train.seed": 7}, NODE)  # another config: built again
    assert len(calls) == 3


def test_a_changed_policy_file_applies_at_the_next_message(
    run_config: dict[str, Any], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("max-epsilon = 5.0\n")
    node = {**NODE, "policy-file": str(policy)}
    assert get_site(run_config, node).policy.max_epsilon == 5.0
    policy.write_text("max-epsilon = 3.0\n")  # the site tightens its budget: no restart
    assert get_site(run_config, node).policy.max_epsilon == 3.0


def test_changing_one_returned_site_does_not_change_the_next(run_config: dict[str, Any]) -> None:
    site = get_site(run_config, NODE)
    label = site.policy.label
    site.policy = type(site.policy)(label="changed")
    assert get_site(run_config, NODE).policy.label == label


def test_an_unknown_node_key_is_refused_by_the_app_naming_the_closest_key(
    run_config: dict[str, Any],
) -> None:
    from common.config.base import ConfigError

    with pytest.raises(ConfigError, match=r"'max-epsilom' \(did you mean 'max-epsilon'\?\)"):
        get_site(run_config, {**NODE, "max-epsilom": 1.0})  # else the default budget applies
