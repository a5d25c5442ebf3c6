"""Reliability tests: the `reliability` marker for this folder, and shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity

import client.site
from common.config import load_defaults

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder `reliability` (CI selects them with ``-m reliability``)."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def run_config(tiny_backbone: Path, cache_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The pyproject defaults on small synthetic data with the tiny backbone; out in tmp."""
    return {
        **load_defaults(),
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(cache_dir),
        "fed.out-dir": str(tmp_path / "out"),
        "fed.rounds": 2,
    }


def clear_site_caches() -> None:
    """Forget every process-cached site, model and corpus (a fresh client process)."""
    for obj in vars(client.site).values():
        if callable(getattr(obj, "cache_clear", None)):
            obj.cache_clear()


@pytest.fixture(autouse=True)
def fresh_sites() -> Iterator[None]:
    clear_site_caches()
    yield
    clear_site_caches()


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity Flower's ServerApp runtime sets before strategies build Messages."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
