"""Privacy accounting: Opacus parity, pinned epsilons, calibration, the ledger, the DP prior."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from common.config.run import RunConfig
from common.privacy.accounting import Event, PrivacyError, calibrate_noise, epsilon_of
from common.privacy.ledger import Ledger
from common.privacy.plan import plan_dp
from common.privacy.prior import prior_scores, user_histogram

OPACUS = {"prv": PRVAccountant, "rdp": RDPAccountant}
DELTA = 1e-5


def opacus_epsilon(events: list[Event], delta: float, accountant: str) -> float:
    """Reference: Opacus' accountant used directly, as its own docs do."""
    acc = OPACUS[accountant]()
    acc.history = list(events)
    return float(acc.get_epsilon(delta=delta))


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than `seconds`."""

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- epsilon_of

EVENTS: list[tuple[list[Event], float, str]] = [
    ([(0.8, 0.2, 50)], 1e-5, "prv"),
    ([(1.1, 0.05, 300)], 1e-5, "prv"),
    ([(2.0, 1.0, 1)], 1e-5, "prv"),
    ([(0.8, 0.2, 50)], 1e-5, "rdp"),
    ([(1.1, 0.05, 300)], 1e-5, "rdp"),
    ([(2.0, 1.0, 1)], 1e-3, "rdp"),
    ([(1.5, 1.0, 1), (0.9, 0.1, 40), (0.9, 0.1, 40)], 1 / 610, "prv"),
    ([(1.5, 1.0, 1), (0.9, 0.1, 40), (0.9, 0.1, 40)], 1 / 610, "rdp"),
]


@pytest.mark.parametrize(("events", "delta", "accountant"), EVENTS)
def test_epsilon_of_equals_opacus_accountant(
    events: list[Event], delta: float, accountant: str
) -> None:
    assert epsilon_of(events, delta=delta, accountant=accountant) == pytest.approx(
        opacus_epsilon(events, delta, accountant), rel=1e-12
    )


# Pinned once (opacus 1.6); a change means the accounting changed.
PINNED = [
    ((0.8, 0.2, 50), "prv", 15.172597),
    ((1.1, 0.05, 300), "prv", 4.843663),
    ((2.0, 1.0, 1), "prv", 2.003218),
    ((0.8, 0.2, 50), "rdp", 16.921099),
    ((1.1, 0.05, 300), "rdp", 5.368526),
]


@pytest.mark.parametrize(("event", "accountant", "expected"), PINNED)
def test_pinned_epsilons(event: Event, accountant: str, expected: float) -> None:
    assert epsilon_of([event], delta=DELTA, accountant=accountant) == pytest.approx(
        expected, abs=1e-6
    )


def test_prv_is_tighter_than_rdp() -> None:
    for events, delta, _ in EVENTS[:3]:
        assert epsilon_of(events, delta=delta) < epsilon_of(events, delta=delta, accountant="rdp")


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], 0.0),
        ([(1.0, 0.1, 0)], 0.0),  # no step taken
        ([(1.0, 0.0, 10)], 0.0),  # nobody sampled
        ([(0.0, 0.1, 10)], math.inf),  # no noise
        ([(1.0, 0.1, 10), (0.0, 0.1, 1)], math.inf),
    ],
)
def test_epsilon_of_edge_cases(events: list[Event], expected: float) -> None:
    assert epsilon_of(events, delta=DELTA, accountant="rdp") == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"delta": 1e-5, "accountant": "gdp"}, "accountant"),
    ],
)
def test_epsilon_of_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        epsilon_of([(1.0, 0.1, 10)], **kwargs)  # type: ignore[arg-type]


def test_epsilon_of_rejects_nan_noise() -> None:
    with deadline(1), pytest.raises(ValueError):
        epsilon_of([(math.nan, 0.1, 10)], delta=DELTA, accountant="rdp")


# --------------------------------------------------------------------------- calibrate_noise

CALIBRATIONS = [
    # target, delta, q, steps, prior events, accountant
    (3.0, 1e-3, 0.1, 100, [], "prv"),
    (8.0, 1 / 40, 0.2, 15, [(1.4, 1.0, 1)], "rdp"),
    (1.0, 1e-5, 1.0, 4, [], "prv"),
    (2.0, 1e-3, 1.0, 1, [(6.0, 1.0, 1)], "prv"),
    (0.5, 1e-3, 1.0, 10, [(20.0, 1.0, 1)], "rdp"),
]


@pytest.mark.parametrize(("target", "delta", "q", "steps", "prior", "accountant"), CALIBRATIONS)
def test_calibrated_noise_is_safe_and_tight(
    target: float, delta: float, q: float, steps: int, prior: list[Event], accountant: str
) -> None:
    sigma = calibrate_noise(
        target_epsilon=target,
        delta=delta,
        sample_rate=q,
        steps=steps,
        prior_events=prior,
        accountant=accountant,
    )

    def eps(s: float) -> float:
        return epsilon_of([*prior, (s, q, steps)], delta=delta, accountant=accountant)

    assert target - 0.05 <= eps(sigma) <= target
    assert eps(0.95 * sigma) > target


def test_prior_events_leave_less_budget_so_more_noise() -> None:
    alone = calibrate_noise(
        target_epsilon=4.0, delta=1e-3, sample_rate=1.0, steps=5, accountant="rdp"
    )
    after = calibrate_noise(
        target_epsilon=4.0,
        delta=1e-3,
        sample_rate=1.0,
        steps=5,
        prior_events=[(2.0, 1.0, 1)],
        accountant="rdp",
    )
    assert after > alone


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"target_epsilon": math.inf}, ValueError),
        ({"target_epsilon": 0.0}, ValueError),
        ({"sample_rate": 0.0}, ValueError),
        ({"sample_rate": 1.5}, ValueError),
        ({"steps": 0}, ValueError),
        ({"prior_events": [(0.5, 1.0, 1)]}, PrivacyError),
    ],
)
def test_calibrate_noise_rejects(kwargs: dict[str, object], error: type[Exception]) -> None:
    args: dict[str, object] = {
        "target_epsilon": 1.0,
        "delta": 1e-3,
        "sample_rate": 0.1,
        "steps": 10,
        "accountant": "rdp",
        **kwargs,
    }
    with pytest.raises(error):
        calibrate_noise(**args)  # type: ignore[arg-type]


def test_memoised_epsilon_matches_a_fresh_accountant_for_every_key() -> None:
    # epsilon_of is cached on (events, delta, accountant): asking for histories that differ in
    # one key at a time, interleaved and repeated, must each give a fresh Opacus accountant's value.
    cases = [
        ([(1.0, 0.1, 5)], 1e-5, "rdp"),
        ([(1.0, 0.1, 5)], 1e-6, "rdp"),
        ([(1.0, 0.1, 5)], 1e-5, "prv"),
        ([(1.0, 0.1, 6)], 1e-5, "rdp"),
        ([(1.0, 0.1, 5), (2.0, 1.0, 1)], 1e-5, "rdp"),
    ]
    for events, delta, name in cases + cases[::-1]:
        fresh = RDPAccountant() if name == "rdp" else PRVAccountant()
        fresh.history = list(events)
        assert epsilon_of(events, delta=delta, accountant=name) == pytest.approx(
            fresh.get_epsilon(delta=delta), rel=1e-9
        )


# --------------------------------------------------------------------------- plan_dp


@pytest.mark.parametrize(
    ("delta", "n_users", "expected"),
    [
        (0.0, 40, 1e-5),  # min(1e-5, 1/400)
        (0.0, 610, 1e-5),
        (0.0, 10_000, 1e-5),  # 1/(10 n) = 1e-5 exactly
        (0.0, 20_000, 1e-6),  # 5e-6, rounded down to a power of ten
        (1e-6, 40, 1e-6),
    ],
)
def test_plan_delta_defaults_to_at_most_1e5_and_a_tenth_of_one_over_users(
    delta: float, n_users: int, expected: float, make_cfg: Callable[..., RunConfig]
) -> None:
    cfg = make_cfg(**{"dp.delta": delta, "dp.noise-multiplier": 1.3})
    plan = plan_dp(cfg.dp, cfg.train, n_users=n_users, rounds=3, use_prior=False)
    assert plan.delta == pytest.approx(expected, rel=1e-12)
    assert plan.delta <= min(1e-5, 1 / (10 * n_users))


def test_plan_refuses_a_delta_above_a_tenth_of_one_over_users(
    make_cfg: Callable[..., RunConfig],
) -> None:
    cfg = make_cfg(**{"dp.delta": 1e-5, "dp.noise-multiplier": 1.3})
    with pytest.raises(PrivacyError, match="1/\\(10 x users protected\\)"):
        plan_dp(cfg.dp, cfg.train, n_users=20_000, rounds=3, use_prior=False)


def test_plan_delta_counts_every_protected_user_not_only_trainable_ones(
    make_cfg: Callable[..., RunConfig],
) -> None:
    # 40 users can train, 20,000 fed the popularity histogram: delta from 20,000, q = batch/40.
    cfg = make_cfg(**{"dp.noise-multiplier": 1.3, "train.batch-users": 8})
    plan = plan_dp(
        cfg.dp, cfg.train, n_users=40, rounds=3, use_prior=False, protected_users=20_000
    )
    assert plan.delta == pytest.approx(1e-6) and plan.sample_rate == pytest.approx(8 / 40)


@pytest.mark.parametrize(
    ("batch", "epochs", "n_users", "q", "steps"),
    [(8, 1.0, 40, 0.2, 5), (8, 0.5, 40, 0.2, 3), (64, 1.0, 40, 1.0, 1), (10, 2.0, 1000, 0.01, 200)],
)
def test_plan_uses_explicit_noise_verbatim(
    batch: int,
    epochs: float,
    n_users: int,
    q: float,
    steps: int,
    make_cfg: Callable[..., RunConfig],
) -> None:
    cfg = make_cfg(
        **{"dp.noise-multiplier": 1.7, "train.batch-users": batch, "train.epochs": epochs}
    )
    plan = plan_dp(cfg.dp, cfg.train, n_users=n_users, rounds=4, use_prior=False)
    assert (plan.sigma, plan.prior_sigma) == (1.7, 0.0)
    assert plan.sample_rate == pytest.approx(q) and plan.steps_per_round == steps
    assert plan.round_events() == [(1.7, plan.sample_rate, steps)] and plan.prior_events() == []


def test_planned_run_stays_within_budget_round_by_round(
    make_cfg: Callable[..., RunConfig],
) -> None:
    epsilon, rounds = 8.0, 3
    cfg = make_cfg(**{"dp.accountant": "prv", "dp.epsilon": epsilon})
    plan = plan_dp(cfg.dp, cfg.train, n_users=40, rounds=rounds, use_prior=True)
    assert plan.delta == 1e-5 and plan.prior_sigma > 0
    assert (plan.sample_rate, plan.steps_per_round) == (0.2, 5)
    prior_eps = epsilon_of(plan.prior_events(), delta=plan.delta)
    assert cfg.dp.prior_share * epsilon - 0.05 <= prior_eps <= cfg.dp.prior_share * epsilon
    # the client's ledger composes the rounds one by one (not as one merged event): the last
    # planned round must still be allowed, and one more must not
    spent: list[dict[str, float | int | str]] = [
        {"round": r, "kind": "train", "sigma": s, "q": q, "steps": n}
        for r in range(1, rounds)
        for s, q, n in plan.round_events()
    ]
    prior: list[dict[str, float | int | str]] = [
        {"round": 0, "kind": "prior", "sigma": s, "q": q, "steps": n}
        for s, q, n in plan.prior_events()
    ]
    ledger = Ledger(epsilon, plan.delta, "prv", [*prior, *spent])
    assert not ledger.would_exceed(plan.round_events()), "the last planned round is refused"
    # with noised evaluations planned, prior + evaluations + every round still fit
    with_eval = plan_dp(cfg.dp, cfg.train, n_users=40, rounds=rounds, use_prior=True,
                        eval_releases=rounds)  # fmt: skip
    events = [*with_eval.prior_events(), *with_eval.eval_events() * rounds,
              *with_eval.round_events() * rounds]  # fmt: skip
    assert with_eval.eval_sigma > 0 and with_eval.sigma > plan.sigma
    assert epsilon - 0.05 <= epsilon_of(events, delta=with_eval.delta) <= epsilon
    assert epsilon - 0.1 <= ledger.epsilon(plan.round_events()) <= epsilon
    assert ledger.would_exceed(plan.round_events() * 2)


def test_plan_rejects_a_client_without_users(cfg: RunConfig) -> None:
    with pytest.raises(ValueError):
        plan_dp(cfg.dp, cfg.train, n_users=0, rounds=1, use_prior=False)


# --------------------------------------------------------------------------- Ledger

ROUND: list[Event] = [(3.0, 1.0, 2)]  # q = 1: cheap to account


def test_ledger_composes_rounds_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger.open(path, budget_epsilon=20.0, delta=0.01, accountant="rdp")
    spent = [ledger.record(r, "train", ROUND) for r in (1, 2, 3)]
    assert spent == sorted(spent) and spent[0] < spent[-1]
    assert spent[0] == epsilon_of(ROUND, delta=0.01, accountant="rdp")
    assert spent[-1] == pytest.approx(epsilon_of(ROUND * 3, delta=0.01, accountant="rdp"))
    assert spent[-1] == pytest.approx(epsilon_of([(3.0, 1.0, 6)], delta=0.01, accountant="rdp"))
    stored = json.loads(path.read_text())
    assert stored["unit"] == "user" and stored["epsilon"] == pytest.approx(spent[-1])
    again = Ledger.open(path, budget_epsilon=20.0, delta=0.01, accountant="rdp")
    assert again.events == ledger.events and again.epsilon() == pytest.approx(spent[-1])
    assert again.has_round(2, "train") and not again.has_round(4, "train")


def test_ledger_refuses_the_same_round_twice(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.json", budget_epsilon=20.0, delta=0.01, accountant="rdp")
    ledger.record(1, "train", ROUND)
    with pytest.raises(PrivacyError, match="already"):
        ledger.record(1, "train", ROUND)
    ledger.record(1, "prior", [(3.0, 1.0, 1)])  # another kind in the same round is fine
    assert len(ledger.events) == 2


def test_a_second_run_spends_its_own_rounds_and_the_budget_accumulates(tmp_path: Path) -> None:
    # A site's ledger spans every federated training it joins; round numbers restart per run,
    # so round 1 of a new run is a new spend (not a redelivery), and epsilon keeps adding up.
    path = tmp_path / "l.json"
    ledger = Ledger.open(path, budget_epsilon=20.0, delta=0.01, accountant="rdp")
    first = ledger.record(1, "train", ROUND, run="run-a")
    assert ledger.has_round(1, "train", run="run-a") and not ledger.has_round(1, "train")
    second = ledger.record(1, "train", ROUND, run="run-b")
    assert second > first
    assert second == pytest.approx(epsilon_of(ROUND * 2, delta=0.01, accountant="rdp"))
    with pytest.raises(PrivacyError, match="run run-b is already"):
        ledger.record(1, "train", ROUND, run="run-b")
    again = Ledger.open(path, budget_epsilon=20.0, delta=0.01, accountant="rdp")
    assert [r.get("run") for r in again.rounds] == ["run-a", "run-b"]


def test_would_exceed_turns_true_at_the_budget() -> None:
    budget = epsilon_of(ROUND * 2, delta=0.01, accountant="rdp")
    ledger = Ledger(budget, 0.01, "rdp")
    assert not ledger.would_exceed(ROUND * 2)  # exactly the budget is allowed
    assert ledger.would_exceed(ROUND * 3)
    ledger.record(1, "train", ROUND)
    ledger.record(2, "train", ROUND)
    assert not ledger.would_exceed([])
    assert ledger.would_exceed(ROUND)
    assert ledger.would_exceed([(20.0, 1.0, 1)])  # any further spend


def write_ledger(path: Path, budget: float = 8.0, delta: float = 0.01) -> None:
    ledger = Ledger.open(path, budget_epsilon=budget, delta=delta, accountant="rdp")
    ledger.record(1, "train", ROUND)


@pytest.mark.parametrize(("budget", "delta"), [(8.0, 0.02), (8.0, 1e-5), (9.0, 0.01)])
def test_ledger_refuses_a_file_written_for_other_settings(
    budget: float, delta: float, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.json"
    write_ledger(path)
    with pytest.raises(PrivacyError, match="written for"):
        Ledger.open(path, budget_epsilon=budget, delta=delta, accountant="rdp")
    # a stricter budget is fine
    assert Ledger.open(path, budget_epsilon=4.0, delta=0.01, accountant="rdp").events == ROUND


def _edit(change: Callable[[dict[str, Any]], object]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        raw = json.loads(text)
        change(raw)
        return json.dumps(raw)

    return edit


def _set_round(key: str, value: object) -> Callable[[str], str]:
    return _edit(lambda raw: raw["rounds"][0].__setitem__(key, value))  # type: ignore[index]


def _drop_round_key(key: str) -> Callable[[str], str]:
    return _edit(lambda raw: raw["rounds"][0].pop(key))  # type: ignore[index]


BUG_SEMANTIC = (
    "BUG: Ledger.open only checks that round fields parse as numbers, not that they "
    "are valid; such a round is later dropped or breaks the accountant"
)
CORRUPTIONS = [
    pytest.param(lambda text: "", id="empty"),
    pytest.param(lambda text: text[: len(text) // 2], id="truncated"),
    pytest.param(lambda text: "not json at all", id="garbage"),
    pytest.param(lambda text: "[]", id="list"),
    pytest.param(_edit(lambda raw: raw.pop("rounds")), id="no-rounds"),
    pytest.param(_edit(lambda raw: raw.pop("delta")), id="no-delta"),
    pytest.param(_set_round("sigma", "abc"), id="sigma-text"),
    pytest.param(_drop_round_key("steps"), id="no-steps"),
    pytest.param(
        _set_round("steps", -5),
        id="negative-steps",
    ),
    pytest.param(
        _set_round("sigma", math.nan),
        id="nan-sigma",
    ),
    pytest.param(
        _drop_round_key("kind"),
        id="no-kind",
    ),
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_ledger_refuses_a_corrupt_file_instead_of_resetting(
    corrupt: Callable[[str], str], tmp_path: Path
) -> None:
    path = tmp_path / "ledger.json"
    write_ledger(path)
    path.write_text(corrupt(path.read_text()))
    damaged = path.read_text()
    with pytest.raises(PrivacyError):
        Ledger.open(path, budget_epsilon=8.0, delta=0.01, accountant="rdp")
    assert path.read_text() == damaged  # left for a human to inspect


def test_a_missing_ledger_starts_empty(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "new" / "l.json", budget_epsilon=1.0, delta=0.01)
    assert ledger.events == [] and ledger.epsilon() == 0.0
    assert not (tmp_path / "new" / "l.json").exists()


# --------------------------------------------------------------------------- DP popularity prior

histories = st.lists(st.lists(st.integers(0, 19), max_size=12), max_size=8)


def slow_histogram(hists: list[list[int]], n_items: int, recent: int) -> np.ndarray:
    out = np.zeros(n_items)
    for items in hists:
        last = items[max(0, len(items) - recent) :]
        distinct = set(last)
        for item in distinct:
            out[item] += 1.0 / math.sqrt(len(distinct))
    return out


@settings(max_examples=60, deadline=None)
@given(hists=histories, user=st.lists(st.integers(0, 19), max_size=12), recent=st.integers(1, 15))
def test_user_histogram_matches_reference_and_has_sensitivity_one(
    hists: list[list[int]], user: list[int], recent: int
) -> None:
    arrays = [np.array(h, dtype=np.int64) for h in hists]
    without = user_histogram(arrays, 20, recent=recent)
    np.testing.assert_allclose(without, slow_histogram(hists, 20, recent), atol=1e-12)
    with_user = user_histogram([*arrays, np.array(user, dtype=np.int64)], 20, recent=recent)
    expected = 1.0 if user else 0.0
    assert np.linalg.norm(with_user - without) == pytest.approx(expected, abs=1e-12)


def test_user_histogram_rejects_recent_zero() -> None:
    # `items[-0:]` would silently count the whole history
    with pytest.raises(ValueError, match="recent"):
        user_histogram([np.array([1, 2, 3])], 5, recent=0)


@settings(max_examples=60, deadline=None)
@given(hist=st.lists(st.floats(-5.0, 500.0), min_size=2, max_size=30), scale=st.floats(0.01, 100.0))
def test_prior_scores_are_invariant_to_scaling(hist: list[float], scale: float) -> None:
    h = np.array(hist)
    assume(h.max() > 1e-3)
    floor = max(np.quantile(h, 0.5), h.max() * 1e-3)  # head_share 0.5: the tail is clamped
    log_pop = np.log(np.maximum(h, floor))
    assume(log_pop.std() > 1e-3)
    base = prior_scores(h, head_share=0.5)
    assert base.mean() == pytest.approx(0.0, abs=1e-5) and base.std() == pytest.approx(1.0, 1e-4)
    np.testing.assert_allclose(prior_scores(scale * h, head_share=0.5), base, atol=1e-4)
    # order-preserving above the floor, and the clamped tail is flat
    above = h > floor
    order = np.argsort(h[above], kind="stable")
    assert np.all(np.diff(base[above][order]) >= -1e-6)
    assert np.ptp(base[~above]) <= 1e-6 if (~above).any() else True
