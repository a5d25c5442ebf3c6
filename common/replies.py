"""A site's replies as types: training reply, evaluation reply, a refusal; to and from records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from common import records as R

Metrics = dict[str, float | int | list[float]]


class ReplyError(ValueError):
    """A reply record that does not hold what its kind must hold (names the missing key)."""


@dataclass(frozen=True)
class SpentPrivacy:
    """What a site says about its privacy after a release (`client.spending.privacy_metrics`)."""

    epsilon: float  # the run's epsilon at `delta`
    delta: float
    epsilon_strict: float  # the run's epsilon at the report delta (1e-6)
    ledger_epsilon: float  # every run's epsilon on this site's data

    def metrics(self) -> Metrics:
        """The figures under their record keys."""
        return {
            R.EPSILON: self.epsilon,
            R.DELTA: self.delta,
            R.EPSILON_STRICT: self.epsilon_strict,
            R.LEDGER_EPSILON: self.ledger_epsilon,
        }

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> SpentPrivacy | None:
        """The figures in `m` (None when `m` carries no epsilon: no local DP)."""
        if R.EPSILON not in m:
            return None
        return cls(
            float(m[R.EPSILON]),
            float(_need(m, R.DELTA)),
            float(_need(m, R.EPSILON_STRICT)),
            float(_need(m, R.LEDGER_EPSILON)),
        )


@dataclass(frozen=True)
class TrainStats:
    """A training reply's exact diagnostics (only without DP or when the policy releases them)."""

    num_examples: int
    train_loss: float
    steps: int
    users_trained: int
    train_s: float

    def metrics(self) -> Metrics:
        """The diagnostics under their record keys."""
        return {
            R.NUM_EXAMPLES: self.num_examples,
            R.TRAIN_LOSS: self.train_loss,
            R.TRAIN_STEPS: self.steps,
            R.USERS_TRAINED: self.users_trained,
            R.TRAIN_S: self.train_s,
        }

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> TrainStats | None:
        """The diagnostics in `m` (None when it carries none: local DP)."""
        if R.NUM_EXAMPLES not in m:
            return None
        return cls(
            int(m[R.NUM_EXAMPLES]),
            float(_need(m, R.TRAIN_LOSS)),
            int(_need(m, R.TRAIN_STEPS)),
            int(_need(m, R.USERS_TRAINED)),
            float(_need(m, R.TRAIN_S)),
        )


@dataclass(frozen=True)
class Decline:
    """A refusal: no arrays; the reason goes to the server (its ``decline`` ConfigRecord)."""

    reason: str
    epsilon: float | None = None  # a budget refusal says the run's epsilon so far

    def metrics(self) -> Metrics:
        """``declined = 1`` (and the run's epsilon when known); the reason is not a metric."""
        out: Metrics = {R.DECLINED: 1}
        if self.epsilon is not None:
            out[R.EPSILON] = self.epsilon
        return out

    def to_record(self, label: str = "") -> RecordDict:
        """The reply's RecordDict (with the site's public `label`, if any)."""
        content = _content(self.metrics(), label)
        content[R.DECLINE] = ConfigRecord({R.REASON: self.reason})
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> Decline | None:
        """The refusal in `content` (None if the reply does not say it declined)."""
        metrics = content.metric_records.get(R.METRICS)
        if metrics is None or not metrics.get(R.DECLINED, 0):
            return None
        rec = content.config_records.get(R.DECLINE)
        reason = str(rec.get(R.REASON, "no reason given")) if rec is not None else "no reason given"
        eps = metrics.get(R.EPSILON)
        return cls(reason, float(eps) if isinstance(eps, int | float) else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainReply:
    """A training (or prior) round's output: the new trainable state and what may be said."""

    state: dict[str, np.ndarray]
    privacy: SpentPrivacy | None = None  # under local DP
    stats: TrainStats | None = None
    reproducible_noise: bool = False  # the noise was seeded (dp.reproducible-noise)

    def metrics(self) -> Metrics:
        """The reply's MetricRecord: equal weight (`unit-weight`), privacy, then diagnostics."""
        out: Metrics = {R.UNIT_WEIGHT: 1, R.DECLINED: 0}
        if self.privacy is not None:
            out.update(self.privacy.metrics())
            if self.reproducible_noise:
                out[R.REPRODUCIBLE_NOISE] = 1
        if self.stats is not None:
            out.update(self.stats.metrics())
        return out

    def to_record(self, label: str = "") -> RecordDict:
        """The reply's RecordDict (with the site's public `label`, if any)."""
        content = _content(self.metrics(), label)
        content[R.ARRAYS] = R.to_record(self.state)
        return content

    @classmethod
    def from_metrics(cls, state: dict[str, np.ndarray], m: Mapping[str, Any]) -> TrainReply:
        """The reply of `state` and its MetricRecord `m` (a replayed release, a received one)."""
        return cls(
            state,
            SpentPrivacy.from_metrics(m),
            TrainStats.from_metrics(m),
            bool(m.get(R.REPRODUCIBLE_NOISE, 0)),
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        """The training reply in `content` (`ReplyError` naming a missing record)."""
        if R.ARRAYS not in content.array_records:
            raise ReplyError(f"a training reply needs its `{R.ARRAYS}` ArrayRecord")
        return cls.from_metrics(R.from_record(content.array_records[R.ARRAYS]), _metrics(content))


@dataclass(frozen=True)
class EvalReply:
    """A site's evaluation: ranking metrics over `num_examples` users (noised or exact)."""

    scores: dict[str, float]  # hr@10, ndcg@10, ... (the server weighs them by num_examples)
    num_examples: float | int
    per_user: dict[str, list[float]] = field(default_factory=dict)  # simulation only
    exposure_counts: list[float] | None = None  # per-item top-10 counts (summed by the server)
    privacy: SpentPrivacy | None = None  # a noised release's accounting
    noised: bool = False

    def metrics(self) -> Metrics:
        """The reply's MetricRecord: scores, user count, per-user vectors, counts, privacy."""
        out: Metrics = {**self.scores, R.NUM_EXAMPLES: self.num_examples}
        out.update({f"{R.PER_USER_PREFIX}{k}": list(v) for k, v in self.per_user.items()})
        if self.exposure_counts is not None:
            out[R.EXPOSURE_COUNTS] = list(self.exposure_counts)
        if self.privacy is not None:
            out.update(self.privacy.metrics())
        if self.noised:
            out[R.NOISED] = 1
        return out

    def to_record(self, label: str = "") -> RecordDict:
        """The reply's RecordDict (with the site's public `label`, if any)."""
        return _content(self.metrics(), label)

    @classmethod
    def from_metrics(cls, m: Mapping[str, Any]) -> EvalReply:
        """The evaluation reply whose MetricRecord is `m`."""
        known = {R.NUM_EXAMPLES, R.EXPOSURE_COUNTS, R.NOISED, R.DECLINED, *_PRIVACY}
        scores = {
            k: float(v)
            for k, v in m.items()
            if k not in known and not k.startswith(R.PER_USER_PREFIX)
        }
        per_user = {
            k[len(R.PER_USER_PREFIX) :]: [float(x) for x in v]
            for k, v in m.items()
            if k.startswith(R.PER_USER_PREFIX)
        }
        counts = m.get(R.EXPOSURE_COUNTS)
        return cls(
            scores,
            _need(m, R.NUM_EXAMPLES),
            per_user,
            None if counts is None else [float(x) for x in counts],
            SpentPrivacy.from_metrics(m),
            bool(m.get(R.NOISED, 0)),
        )

    @classmethod
    def from_record(cls, content: RecordDict) -> EvalReply:
        """The evaluation reply in `content` (`ReplyError` naming a missing record or key)."""
        return cls.from_metrics(_metrics(content))


@dataclass(frozen=True)
class KeptReply:
    """A site's answer to the final-adapter message: whether it kept the adapter."""

    saved: bool

    def to_record(self, label: str = "") -> RecordDict:
        """The reply's RecordDict (with the site's public `label`, if any)."""
        return _content({R.SAVED: int(self.saved)}, label)

    @classmethod
    def from_record(cls, content: RecordDict) -> KeptReply:
        """Read a final-adapter reply (``saved`` missing reads as not kept)."""
        return cls(bool(_metrics(content).get(R.SAVED, 0)))


_PRIVACY = (R.EPSILON, R.DELTA, R.EPSILON_STRICT, R.LEDGER_EPSILON)


def site_label(content: RecordDict) -> str:
    """The public label a site sends with its replies ("" when it publishes none)."""
    rec = content.config_records.get(R.SITE)
    return str(rec.get(R.LABEL, "")) if rec is not None else ""


def _content(metrics: Metrics, label: str) -> RecordDict:
    content = RecordDict({R.METRICS: R.metric_record(metrics)})
    if label:
        content[R.SITE] = ConfigRecord({R.LABEL: label})
    return content


def _metrics(content: RecordDict) -> dict[str, Any]:
    if R.METRICS not in content.metric_records:
        raise ReplyError(f"a reply needs its `{R.METRICS}` MetricRecord")
    return dict(content.metric_records[R.METRICS])


def _need(m: Mapping[str, Any], key: str) -> Any:
    if key not in m:
        raise ReplyError(f"reply metrics lack `{key}` (have {sorted(m)})")
    return m[key]
