"""Reliability tests: the `reliability` marker for this folder, and shared fixtures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity

import client.site
from common.config.parse import load_defaults

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


@contextlib.contextmanager
def task_identity() -> Iterator[None]:
    """The task identity Flower's ServerApp runtime sets before strategies build Messages."""
    with pytest.MonkeyPatch.context() as mp:
        for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
            mp.setattr(TaskIdentity, attr, value)
        yield


@pytest.fixture
def server_identity() -> Iterator[None]:
    with task_identity():
        yield


@contextlib.contextmanager
def server_log() -> Iterator[list[str]]:
    """Collect the messages of the round loop's logger (it need not propagate to the root)."""
    from server.federation import log

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(logging.INFO)
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


def training_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """History rows of training rounds (>= 1; a round 0 only collects the popularity prior)."""
    return [h for h in results["history"] if h["round"] >= 1]
