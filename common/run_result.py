"""A run's results.json as a type (`RunResult`) and its one validating loader (`load_run`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.privacy.report import PrivacyReport

# What every run's results.json holds (the federated and the central run alike).
REQUIRED = ("metrics", "privacy", "history")


class RunResultError(ValueError):
    """A results.json that lacks what a run's results must hold (names the file and key)."""


@dataclass(frozen=True)
class RunResult:
    """A finished (or stopped) run: final metrics, baselines, privacy, per-round history.

    Written by `server.report.finish_run` (federated) and `simulations.centralized.run`;
    read by the sweep, the audit and the study report through `load_run` / `from_json`, and
    returned (read back from the file) by `simulations.federated.run` and
    `simulations.centralized.run`.
    """

    metrics: dict[str, Any]  # the final evaluation (the `evaluated` item, full ranking)
    privacy: PrivacyReport
    history: list[dict[str, Any]]  # one row per round (`server.rounds.RoundResult.to_json`)
    status: str = "completed"  # "completed" or "stopped ..." (a central run writes none)
    setting: str = ""  # "federated" or "central"
    evaluated: str = "test"  # the held-out item of `metrics` (runs before the key: test)
    dataset: str = ""
    baselines: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    communication: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # the flat run config ({} if absent)
    per_user: dict[str, list[float]] | None = None  # the central run's final per-user metrics
    flwr_status: dict[str, Any] | None = None  # `flwr ls`' entry of a federated run
    source: str = ""  # the file (or what) it was read from, for error messages

    def run_config(self) -> dict[str, Any]:
        """The flat run config the run was made with (`RunResultError` if it was not kept)."""
        if not self.config:
            raise RunResultError(f"{self.source or 'results'}: missing key `config`")
        return self.config

    @property
    def completed(self) -> bool:
        """Whether the run finished its planned rounds."""
        return self.status == "completed"

    def last_eval(self) -> dict[str, Any]:
        """The last round's evaluation ({} without rounds or evaluation)."""
        return dict(self.history[-1].get("eval") or {}) if self.history else {}

    def final_per_user(self) -> dict[str, Any] | None:
        """Per-user metrics of the final model: the central run's, else the last round's."""
        return self.per_user or self.last_eval().get("per_user")

    def evaluated_rounds(self) -> list[dict[str, Any]]:
        """The history rows that carry an evaluation."""
        return [h for h in self.history if "eval" in h]

    @classmethod
    def from_json(cls, data: Any, source: str) -> RunResult:
        """Validate and read a results.json object; `source` (its file) names every error."""
        if not isinstance(data, Mapping):
            raise RunResultError(f"{source}: not a JSON object")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise RunResultError(f"{source}: missing key(s) {missing} (a run's results hold "
                                 f"{list(REQUIRED)})")  # fmt: skip
        history = data["history"]
        if not isinstance(history, list) or not all(
            isinstance(h, Mapping) and "round" in h for h in history
        ):
            raise RunResultError(f"{source}: `history` must be a list of rows with a `round`")
        for key in ("metrics", "baselines", "timing", "communication", "config"):
            if not isinstance(data.get(key, {}), Mapping):
                raise RunResultError(f"{source}: `{key}` must be an object")
        try:
            privacy = PrivacyReport.from_json(data["privacy"], f"{source}: `privacy`")
        except ValueError as exc:
            raise RunResultError(str(exc)) from None
        return cls(
            metrics=dict(data["metrics"]),
            privacy=privacy,
            history=[dict(h) for h in history],
            status=str(data.get("status", "completed")),
            setting=str(data.get("setting", "")),
            evaluated=str(data.get("evaluated", "test")),
            dataset=str(data.get("dataset", "")),
            baselines=dict(data.get("baselines", {})),
            timing=dict(data.get("timing", {})),
            communication=dict(data.get("communication", {})),
            config=dict(data.get("config", {})),
            per_user=data.get("per_user"),
            flwr_status=data.get("flwr_status"),
            source=source,
        )

    @classmethod
    def of(cls, results: RunResult | Mapping[str, Any], source: str = "results") -> RunResult:
        """`results` as a `RunResult` (e.g. a results.json object already parsed)."""
        return results if isinstance(results, RunResult) else cls.from_json(results, source)


def load_run(path: Path) -> RunResult:
    """Read and validate `path` (a results.json); errors name the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunResultError(f"{path}: no such results file") from None
    except json.JSONDecodeError as exc:
        raise RunResultError(f"{path}: not JSON ({exc})") from None
    return RunResult.from_json(data, str(path))
