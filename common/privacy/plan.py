"""A party's DP plan: noise and sampling calibrated to its budget, built in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.config.dp import MAX_DELTA, DPConfig
from common.config.model import TrainConfig
from common.config.run import RunConfig
from common.privacy.accounting import (
    Event,
    calibrate_noise,
    check_delta,
    default_delta,
    gaussian_sigma_for,
)
from common.privacy.policy import SitePolicy

if TYPE_CHECKING:  # the plan only names the type; train imports the plan
    from common.model.train import LocalData


@dataclass
class DPPlan:
    """Noise and sampling for one party's DP releases over the whole run."""

    sigma: float
    sample_rate: float
    steps_per_round: int
    prior_sigma: float
    delta: float
    eval_sigma: float = 0.0  # noise of each evaluation release (0: evaluation not noised)
    cooc_sigma: float = 0.0  # noise of the co-occurrence release (0: none planned)

    def round_events(self) -> list[Event]:
        """Accountant events of one training round."""
        return [(self.sigma, self.sample_rate, self.steps_per_round)]

    def prior_events(self) -> list[Event]:
        """Accountant event of the one-off DP popularity histogram."""
        return [(self.prior_sigma, 1.0, 1)] if self.prior_sigma > 0 else []

    def cooc_events(self) -> list[Event]:
        """Accountant event of the one-off DP co-occurrence (Gram) release."""
        return [(self.cooc_sigma, 1.0, 1)] if self.cooc_sigma > 0 else []

    def eval_events(self) -> list[Event]:
        """Accountant event of one noised evaluation release (sensitivity: one user)."""
        return [(self.eval_sigma, 1.0, 1)] if self.eval_sigma > 0 else []


def plan_dp(
    dp: DPConfig,
    train: TrainConfig,
    *,
    n_users: int,
    rounds: int,
    use_prior: bool,
    protected_users: int | None = None,
    eval_releases: int = 0,
    max_delta: float = MAX_DELTA,
    use_cooc: bool = False,
) -> DPPlan:
    """Calibrate noise so that prior [+ co-occurrence] + evaluations + rounds end at epsilon.

    `n_users` users can be sampled for DP-SGD (sample rate ``batch_users / n_users``);
    `protected_users` (default `n_users`) is everyone whose data the party uses (the
    popularity histogram also counts users too short to train on). delta is `dp.delta`, or
    min(`max_delta`, 1/(10 x protected users)) rounded down to a power of ten; a delta above
    1/(10 x protected users) raises `PrivacyError`. The prior gets `dp.prior-share` of epsilon,
    the evaluation releases `dp.eval-share` (split over `eval_releases`), the co-occurrence
    release (`use_cooc`) `dp.cooc-share`, training the rest.
    """
    if n_users < 1:
        raise ValueError("cannot plan DP-SGD for a client with no trainable users")
    protected = max(protected_users or n_users, n_users)
    delta = dp.delta or default_delta(protected, max_delta)
    check_delta(delta, protected)
    q = min(1.0, train.batch_users / n_users)
    steps = max(1, math.ceil(train.epochs / q))
    prior_sigma = eval_sigma = cooc_sigma = 0.0
    if math.isinf(dp.epsilon):  # fixed noise, no budget: the same noise for every release
        prior_sigma = dp.noise_multiplier if use_prior else 0.0
        eval_sigma = dp.noise_multiplier if eval_releases else 0.0
        cooc_sigma = dp.noise_multiplier if use_cooc else 0.0
    else:
        if use_prior:
            prior_sigma = gaussian_sigma_for(
                dp.prior_share * dp.epsilon, delta=delta, accountant=dp.accountant
            )
        if use_cooc:
            cooc_sigma = gaussian_sigma_for(
                dp.cooc_share * dp.epsilon, delta=delta, accountant=dp.accountant
            )
        if eval_releases and dp.eval_share > 0:
            eval_sigma = calibrate_noise(
                target_epsilon=dp.eval_share * dp.epsilon,
                delta=delta,
                sample_rate=1.0,
                steps=eval_releases,
                accountant=dp.accountant,
            )
    fixed = [(prior_sigma, 1.0, 1)] if prior_sigma else []
    if cooc_sigma:
        fixed.append((cooc_sigma, 1.0, 1))
    if eval_sigma:
        fixed.append((eval_sigma, 1.0, eval_releases))
    if dp.noise_multiplier > 0:
        sigma = dp.noise_multiplier
    else:
        sigma = calibrate_noise(
            target_epsilon=dp.epsilon,
            delta=delta,
            sample_rate=q,
            steps=steps * rounds,
            prior_events=fixed,
            accountant=dp.accountant,
        )
    return DPPlan(sigma, q, steps, prior_sigma, delta, eval_sigma, cooc_sigma)


@dataclass(frozen=True)
class Party:
    """The facts about one training party that its DP plan depends on (besides the config)."""

    trainable_users: int  # users DP-SGD samples from (two or more training interactions)
    protected_users: int  # everyone whose data the party uses (the prior counts them all)
    use_prior: bool  # whether the party releases a DP popularity histogram (round 0)
    eval_releases: int = 0  # noised evaluation releases planned for the run
    max_delta: float = MAX_DELTA  # the party's own cap on delta
    use_cooc: bool = False  # whether it releases the DP co-occurrence matrix (round 0)

    @classmethod
    def of(cls, cfg: RunConfig, trainees: LocalData, policy: SitePolicy) -> Party:
        """The party that trains `trainees` under `cfg` with the site policy `policy`."""
        return cls(
            trainable_users=len(trainees.trainable()),
            protected_users=len(trainees),
            use_prior=cfg.model.prior,
            eval_releases=policy.eval_releases(cfg),
            max_delta=policy.max_delta,
            use_cooc=cfg.model.prior and cfg.model.cooc_items > 0,
        )


def party_plan(cfg: RunConfig, party: Party) -> DPPlan | None:
    """The DP plan of `party` for a run of `cfg` (None without local DP).

    The one place a party's plan is made: a federated site, the central run (one party
    holding every user) and the benchmark's site round all call it. Raises `PrivacyError`
    for a delta above 1/(10 x protected users).
    """
    if not cfg.dp.local:
        return None
    return plan_dp(
        cfg.dp,
        cfg.train,
        n_users=party.trainable_users,
        rounds=cfg.fed.rounds,
        use_prior=party.use_prior,
        protected_users=party.protected_users,
        eval_releases=party.eval_releases,
        max_delta=party.max_delta,
        use_cooc=party.use_cooc,
    )
