"""One DP plan: the central run and the benchmark's site round plan as a site would.

The plan (noise, sample rate, steps, prior noise, delta) depends only on the run config and
the facts of the party (`common.privacy.plan.Party`): a federated site, the central run (one party
holding every user) and `simulations.bench`'s site round must all get the same plan for the
same users.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.site import get_site
from client.site_round import dp_plan
from common.config.parse import parse_config
from common.privacy.plan import DPPlan
from simulations import bench, centralized

ONE_SITE = {"partition-id": 0, "num-partitions": 1}  # a simulated site holding every user


def test_central_run_plans_like_a_site_holding_every_user(
    run_config: dict[str, Any], tmp_path: Path
) -> None:
    rc = {**run_config, "dp.mode": "local", "dp.epsilon": 8.0}
    # The central curator evaluates in the clear: like a site whose policy releases plain
    # evaluation, it plans no noised evaluation release.
    site = get_site(rc, {**ONE_SITE, "release-eval": "plain"})
    assert len(site.trainees) == site.corpus.data.n_users  # the site holds every user
    plan = dp_plan(site)
    assert plan is not None and plan.prior_sigma > 0 and plan.eval_sigma == 0
    res = centralized.run(parse_config(rc), tmp_path / "central")
    p = res.privacy.to_json()
    assert p["noise_multiplier"] == plan.sigma
    assert p["prior_noise_multiplier"] == plan.prior_sigma
    assert p["sample_rate"] == plan.sample_rate
    assert p["steps"] == plan.steps_per_round * parse_config(rc).fed.rounds
    assert p["delta"] == plan.delta


def test_bench_site_round_plans_like_a_site(
    run_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    site = get_site({**run_config, "dp.mode": "local"}, ONE_SITE)
    expected = dp_plan(site)
    assert expected is not None and expected.eval_sigma > 0  # a default site noises its eval
    used: list[DPPlan | None] = []
    real_train = bench.train

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append(kwargs["plan"])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(bench, "train", spy)
    row = bench.site_round(run_config, site.corpus.data.n_users)  # the same (every) user
    assert row["users"] == len(site.trainees)
    assert used == [expected]
