"""The privacy section of results.json: one builder (both settings) and its typed reader."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import records as R
from common.config.run import RunConfig
from common.privacy.accounting import epsilon_of
from common.privacy.central import RELATION, SAMPLING
from common.privacy.plan import DPPlan

SETTINGS = ("federated", "central")

# Who is trusted with what, under local DP, per setting.
LOCAL_TRUST = {
    "federated": "each site is trusted with its own users; the server and other "
    "sites see only DP outputs (DP-SGD updates, the noised prior and noised "
    "evaluation aggregates; user-level DP per site, noise from OS entropy)",
    "central": "central curator (trusted); DP protects each user "
    "against anyone who sees the trained adapter",
}


def privacy_report(
    cfg: RunConfig,
    releases: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    setting: str,
    declines: Sequence[Mapping[str, Any]] = (),
    central: Mapping[str, Any] | None = None,
    plan: DPPlan | None = None,
) -> dict[str, Any]:
    """The ``privacy`` dict of a run's results.

    `releases` are ``(party, figures)`` pairs in the order the parties released them, each
    with what a party's reply says about its privacy (`client.spending.privacy_metrics`:
    ``epsilon``, ``delta``, ``epsilon-at-1e-6``, ``ledger-epsilon``); a party's last
    release counts, and the run's epsilon is the largest party's. `setting` is
    ``"federated"`` (sites and a server) or ``"central"`` (one party holding every user,
    whose `plan` is added: noise, sample rate, steps, and the epsilon under RDP).
    `central` carries a server's central-DP figures (``epsilon``, ``ledger_epsilon``,
    ``ledger``, ``delta``, ``sigma``, ``q``) for ``dp.mode = "central"``.
    """
    if setting not in SETTINGS:
        raise ValueError(f"`setting` must be one of {SETTINGS}, got {setting!r}.")
    mode = cfg.dp.mode
    if setting == "central" and mode == "central":
        raise ValueError("a run with one party has no server to add central DP noise")
    out: dict[str, Any]
    if mode == "local":
        out = _local(cfg, releases, setting=setting)
    elif mode == "central":
        if central is None:
            raise ValueError("dp.mode = 'central' needs the server's central-DP figures")
        out = _central(cfg, central)
    else:
        out = {
            "unit": "user",
            "mode": "none",
            "trust_model": "no formal privacy",
            "private_against_server": False,
            "epsilon": math.inf,
            "target_epsilon": math.inf,
            "delta": None,
            "accountant": None,
        }
    out["declines"] = [dict(d) for d in declines]
    if setting == "central":
        out.update(_one_party(cfg, plan))
    return out


def _local(
    cfg: RunConfig, releases: Iterable[tuple[str, Mapping[str, Any]]], *, setting: str
) -> dict[str, Any]:
    per_party: dict[str, float] = {}
    strict: dict[str, float] = {}
    ledger: dict[str, float] = {}
    deltas: list[float] = []
    for party, c in releases:  # a reply's `common.replies.SpentPrivacy` figures
        if R.EPSILON in c:
            per_party[party] = float(c[R.EPSILON])
        if R.EPSILON_STRICT in c:
            strict[party] = float(c[R.EPSILON_STRICT])
        if R.LEDGER_EPSILON in c:
            ledger[party] = float(c[R.LEDGER_EPSILON])
        if R.DELTA in c:
            deltas.append(float(c[R.DELTA]))
    reproducible = cfg.dp.reproducible_noise
    out: dict[str, Any] = {
        "unit": "user",
        "mode": "local",
        "trust_model": LOCAL_TRUST[setting],
    }
    if setting == "federated":
        out["private_against_server"] = not reproducible
    out |= {
        "reproducible_noise": reproducible,
        "epsilon": max(per_party.values()) if per_party else 0.0,
        "target_epsilon": cfg.dp.epsilon,
        "delta": max(deltas) if deltas else None,
        "epsilon_at_delta_1e-6": max(strict.values()) if strict else None,
        "accountant": cfg.dp.accountant,
        "per_client_epsilon": per_party,
        "per_client_epsilon_at_1e-6": strict,
        "per_client_ledger_epsilon": ledger,
    }
    return out


def _central(cfg: RunConfig, central: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "unit": "client (= user with data.partitioning = user)",
        "mode": "central",
        "trust_model": "trusted server adds the noise (DP-FedAvg); protects each client "
        "against anyone who sees the global model, not against the server",
        "epsilon": central["epsilon"],
        "target_epsilon": cfg.dp.epsilon,
        "ledger_epsilon": central["ledger_epsilon"],  # every run in the server's ledger
        "ledger": central.get("ledger"),
        "max_epsilon": cfg.dp.central_max_epsilon,
        "delta": central["delta"],
        "accountant": "rdp (Flower's RdpAccountant / dp-accounting)",
        "neighbouring": RELATION,
        "sampling": SAMPLING,
        "private_against_server": False,
        "reproducible_noise": False,
        "noise_multiplier": central["sigma"],
        "sample_rate": central["q"],
        "clip": cfg.fed.central_clip,
    }


def _one_party(cfg: RunConfig, plan: DPPlan | None) -> dict[str, Any]:
    """The plan of a run with one party (the central run, no noised evaluation release)."""
    if plan is None:
        return {
            "epsilon_rdp": math.inf,
            "noise_multiplier": 0.0,
            "prior_noise_multiplier": 0.0,
            "sample_rate": None,
            "steps": None,
            "clip": cfg.dp.clip,
        }
    rounds = cfg.fed.rounds
    events = [*plan.prior_events(), *plan.cooc_events(), *plan.round_events() * rounds]
    out = {
        "epsilon_rdp": epsilon_of(events, delta=plan.delta, accountant="rdp"),
        "noise_multiplier": plan.sigma,
        "prior_noise_multiplier": plan.prior_sigma,
        "sample_rate": plan.sample_rate,
        "steps": plan.steps_per_round * rounds,
        "clip": cfg.dp.clip,
    }
    if plan.cooc_sigma > 0:
        out["cooc_noise_multiplier"] = plan.cooc_sigma
    return out


# The figures every privacy section has, in every mode and setting (a sweep row keeps these).
SUMMARY_KEYS = ("unit", "mode", "trust_model", "epsilon", "target_epsilon", "delta", "accountant")


@dataclass(frozen=True)
class PrivacyReport:
    """The ``privacy`` section of a results.json, read back (`privacy_report` writes it).

    The mode-specific figures (per-site epsilons, declines, central-DP noise, the one-party
    plan) stay in `details` under their results.json keys.
    """

    mode: str  # "local", "central" or "none"
    epsilon: float  # the run's epsilon (inf without DP)
    unit: str | None = None
    trust_model: str | None = None
    target_epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def is_dp(self) -> bool:
        """Whether the run has a formal guarantee (dp.mode is not "none")."""
        return self.mode != "none"

    def summary(self) -> dict[str, Any]:
        """The figures every mode has (`SUMMARY_KEYS`): what a sweep row records."""
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    def to_json(self) -> dict[str, Any]:
        """The section as results.json holds it (summary figures first, then the details)."""
        return {**self.summary(), **self.details}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> PrivacyReport:
        """Read a privacy section; `source` names it in the error for a missing figure."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: the privacy section is not an object ({data!r})")
        for key in ("mode", "epsilon"):
            if key not in data:
                raise ValueError(f"{source}: missing key `{key}`")
        return cls(
            mode=str(data["mode"]),
            epsilon=_number(data["epsilon"], f"{source}: `epsilon`"),
            unit=data.get("unit"),
            trust_model=data.get("trust_model"),
            target_epsilon=_maybe_number(data.get("target_epsilon"), f"{source}: `target_epsilon`"),
            delta=_maybe_number(data.get("delta"), f"{source}: `delta`"),
            accountant=data.get("accountant"),
            details={k: v for k, v in data.items() if k not in SUMMARY_KEYS},
        )


def _number(value: Any, where: str) -> float:
    """A JSON number, or the "inf" / "nan" strings strict JSON writes for them."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} is not a number ({value!r})") from None


def _maybe_number(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)
