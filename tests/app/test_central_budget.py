"""server.central_budget: central epsilon over runs and restarts, the cap checked up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config.parse import parse_config
from common.privacy.accounting import PrivacyError
from common.privacy.central import central_epsilon, round_release
from server.central_budget import CENTRAL_LEDGER_NAME, CentralBudget, central_ledger_path

N, DELTA, SIGMA = 20, 1e-5, 1.5


def budget(tmp_path: Path, run_key: str, **over: object) -> CentralBudget:
    cfg = parse_config({"dp.mode": "central", "fed.out-dir": str(tmp_path), **over})
    return CentralBudget.open(cfg, tmp_path, run_key=run_key, n_clients=N, delta=DELTA)


def full() -> tuple[float, int]:
    rel = round_release(SIGMA, sampled=N, aggregated=N)
    assert rel is not None
    return rel


def test_ledger_path_default_and_config(tmp_path: Path) -> None:
    cfg = parse_config({"fed.out-dir": str(tmp_path)})
    assert central_ledger_path(cfg, tmp_path) == tmp_path / CENTRAL_LEDGER_NAME
    other = tmp_path / "shared" / "c.json"
    cfg = parse_config({"dp.central-ledger": str(other)})
    assert central_ledger_path(cfg, tmp_path) == other


def test_a_round_redone_after_a_restart_counts_twice(tmp_path: Path) -> None:
    # A server that crashed after releasing round 2 re-does it with fresh noise: two releases.
    first = budget(tmp_path, "run")
    first.record(1, full())
    first.record(2, full())
    again = budget(tmp_path, "run")  # a new server process: a new session, same run key
    assert again.session != first.session
    again.record(2, full())
    want = central_epsilon([full()] * 3, n_clients=N, delta=DELTA)
    assert again.run_epsilon() == pytest.approx(want)
    assert again.run_epsilon() > central_epsilon([full()] * 2, n_clients=N, delta=DELTA)


def test_runs_compose_and_the_cap_is_checked_before_anything_is_released(
    tmp_path: Path,
) -> None:
    a = budget(tmp_path, "a")
    a.record(1, full())
    b = budget(tmp_path, "b")
    b.record(1, full())
    one = central_epsilon([full()], n_clients=N, delta=DELTA)
    assert b.run_epsilon() == pytest.approx(one)
    assert b.total_epsilon() == pytest.approx(
        central_epsilon([full()] * 2, n_clients=N, delta=DELTA)
    )
    three = central_epsilon([full()] * 3, n_clients=N, delta=DELTA)
    capped = budget(tmp_path, "c", **{"dp.central-max-epsilon": three * 0.99})
    with pytest.raises(PrivacyError, match=r"dp.central-max-epsilon .*already spent"):
        capped.check_plan(SIGMA, per_round=N, rounds=1)
    budget(tmp_path, "c", **{"dp.central-max-epsilon": three * 1.01}).check_plan(
        SIGMA, per_round=N, rounds=1
    )


def test_a_bad_cap_is_a_config_error() -> None:
    from common.config.base import ConfigError

    with pytest.raises(ConfigError, match="dp.central-max-epsilon"):
        parse_config({"dp.central-max-epsilon": 0.0})
