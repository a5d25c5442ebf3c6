"""Hostile clients (`client.hostile`): malformed updates are dropped by the server's checks,
and a robust strategy bounds what one scaled (x100) update does to the global model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import load_defaults

from .conftest import clear_site_caches
from .inproc import FIRST_NODE, federate

LOGGER = "fedrec.server"
# fault -> what the server's drop reason must say (server/checks.py)
MALFORMED = {
    "nan": "non-finite values",
    "inf": "non-finite values",
    "shape": "has shape",
    "extra": "array names differ",
    "scale100": "exceeds fed.update-norm-bound",
}
FAULTS = [*MALFORMED, "", ""]  # node i injects FAULTS[i]; the last two are honest


@pytest.fixture(scope="module")
def server_identity_module() -> Iterator[None]:
    from flwr.supercore.task_identity import TaskIdentity

    mp = pytest.MonkeyPatch()
    for attr, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        mp.setattr(TaskIdentity, attr, value)
    yield
    mp.undo()


def _config(tiny_backbone: Path, cache_dir: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        **load_defaults(),
        "data.dataset": "synthetic",
        "data.synthetic-users": 60,
        "data.synthetic-items": 80,
        "model.backbone": str(tiny_backbone),
        "model.cache-dir": str(cache_dir),
        "fed.out-dir": str(out),
        "dp.mode": "none",
        **extra,
    }


@pytest.fixture(scope="module")
def malformed_run(
    tiny_backbone: Path,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    server_identity_module: None,
) -> Iterator[tuple[dict[str, Any], str]]:
    """Two rounds, 7 nodes: one per malformed fault, two honest; (results, server log)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    out = tmp_path_factory.mktemp("malformed") / "out"
    clear_site_caches()
    try:
        cfg = _config(tiny_backbone, cache_dir, out, **{"fed.rounds": 2, "fed.min-clients": 2})
        results, _ = federate(cfg, FAULTS)
        yield results, "\n".join(records)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        clear_site_caches()


@pytest.mark.parametrize("fault", list(MALFORMED))
def test_a_malformed_update_is_dropped_with_a_log_line_naming_the_node(
    malformed_run: tuple[dict[str, Any], str], fault: str
) -> None:
    results, log = malformed_run
    node = FIRST_NODE + FAULTS.index(fault)
    for row in results["history"]:
        rnd = row["round"]
        mine = next(c for c in row["clients"] if c["node"] == node)
        assert MALFORMED[fault] in mine["dropped"], mine
        line = f"round {rnd}: dropping reply from node {node}: "
        assert any(text.startswith(line) and MALFORMED[fault] in text for text in log.splitlines())


def test_only_the_honest_updates_are_aggregated(malformed_run: tuple[dict[str, Any], str]) -> None:
    results, log = malformed_run
    assert results["status"] == "completed"
    honest = {FIRST_NODE + i for i, f in enumerate(FAULTS) if not f}
    for row in results["history"]:
        assert row["n_aggregated"] == len(honest) == 2
        assert {c["node"] for c in row["clients"] if "dropped" not in c} == honest
        assert np.isfinite(row["eval"]["hr@10"])
    assert f"aggregating 2 of {len(FAULTS)} replies" in log


# ---------------------------------------------------------------- robust aggregation

SCALED = 4  # partition of the attacker among 5
ROBUST = ("fedtrimmedavg", "krum")


@pytest.fixture(scope="module")
def hr_at_10(
    tiny_backbone: Path,
    cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    server_identity_module: None,
) -> dict[tuple[str, bool], float]:
    """Global HR@10 after 2 rounds of 5 clients, per (strategy, with a x100 attacker).

    ``fed.update-norm-bound`` is set high, so the scaled update passes the server's checks
    and only the aggregation rule stands between it and the global model.
    """
    out: dict[tuple[str, bool], float] = {}
    for strategy in ("fedavg", *ROBUST):
        for hostile in (False, True):
            clear_site_caches()
            folder = tmp_path_factory.mktemp(f"{strategy}-{hostile}") / "out"
            cfg = _config(
                tiny_backbone,
                cache_dir,
                folder,
                **{
                    "fed.rounds": 2,
                    "fed.min-clients": 5,
                    "fed.strategy": strategy,
                    "fed.trim-beta": 0.2,
                    "fed.update-norm-bound": 1e9,
                },
            )
            faults = ["scale100" if hostile and i == SCALED else "" for i in range(5)]
            results, _ = federate(cfg, faults)
            assert results["status"] == "completed"
            assert all(r["n_aggregated"] == 5 for r in results["history"])
            out[strategy, hostile] = float(results["metrics"]["hr@10"])
    clear_site_caches()
    return out


def _moved(hr: dict[tuple[str, bool], float], strategy: str) -> float:
    return abs(hr[strategy, True] - hr[strategy, False]) / hr[strategy, False]


@pytest.mark.parametrize("strategy", ROBUST)
def test_a_robust_strategy_keeps_one_scaled_attacker_under_ten_percent(
    hr_at_10: dict[tuple[str, bool], float], strategy: str
) -> None:
    assert hr_at_10[strategy, False] > 0
    assert _moved(hr_at_10, strategy) < 0.10, hr_at_10


def test_plain_fedavg_is_moved_more_than_the_robust_strategies(
    hr_at_10: dict[tuple[str, bool], float],
) -> None:
    fedavg = _moved(hr_at_10, "fedavg")
    assert fedavg >= 0.10, hr_at_10
    assert all(fedavg > _moved(hr_at_10, s) for s in ROBUST), hr_at_10
