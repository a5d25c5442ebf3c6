"""A site's own privacy policy (node config): limits no run config can loosen, what it releases."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.config.base import ConfigError
from common.config.dp import MAX_DELTA
from common.config.run import RunConfig

POLICY_ENV = "FEDREC_SITE_POLICY"  # a TOML file of policy keys (how simulated sites get one)
POLICY_FILE_KEY = "policy-file"  # node-config key naming the same kind of file
EVAL_RELEASES = ("noised", "plain", "none")
DP_MODES = ("local", "central", "none")
# A deployed site accepts only local DP unless its policy says otherwise; a simulated site
# (one researcher owns server and sites) accepts every mode.
DEPLOYED_MODES = ("local",)


@dataclass(frozen=True)
class SitePolicy:
    """What a site allows a round to spend and what it lets leave the site.

    Every field is a node-config key (``max-epsilon``, ``max-delta``, ...); see
    docs/privacy.md for the table. A run config can only *ask*: a round asking for more is
    declined with a reason.
    """

    max_epsilon: float = 10.0  # cumulative over every run on the same data (the ledger)
    max_delta: float = MAX_DELTA
    min_noise_multiplier: float = 0.0
    max_clip: float = math.inf
    dp_modes: tuple[str, ...] = DEPLOYED_MODES
    ledger_any_dataset: bool = False  # False: one ledger per data set (a smoke test can't spend it)
    release_eval: str = "noised"  # noised | plain | none
    release_per_user: bool = False  # per-user metric vectors (simulation only)
    release_diagnostics: bool = False  # exact train loss, steps, users trained, wall time
    label: str = ""  # a public name sent with every reply ("": none; simulation: the site name)

    def __post_init__(self) -> None:
        _need(self.max_epsilon > 0, "max-epsilon", self.max_epsilon, "must be > 0")
        _need(
            0 < self.max_delta <= MAX_DELTA,
            "max-delta",
            self.max_delta,
            f"must be in (0, {MAX_DELTA:g}]",
        )
        _need(
            self.min_noise_multiplier >= 0,
            "min-noise-multiplier",
            self.min_noise_multiplier,
            "must be >= 0",
        )
        _need(self.max_clip > 0, "max-clip", self.max_clip, "must be > 0")
        _need(
            bool(self.dp_modes) and all(m in DP_MODES for m in self.dp_modes),
            "dp-modes",
            ",".join(self.dp_modes),
            f"must be a comma-separated subset of {DP_MODES}",
        )
        _need(
            self.release_eval in EVAL_RELEASES,
            "release-eval",
            self.release_eval,
            f"must be one of {EVAL_RELEASES}",
        )

    def decline_reason(
        self, cfg: RunConfig, *, simulated: bool, sigma: float | None = None
    ) -> str | None:
        """Why this site refuses a round of `cfg` (None: allowed). `sigma`: the planned noise."""
        dp = cfg.dp
        if dp.mode not in self.dp_modes:
            return f"the site's policy accepts dp.mode in {self.dp_modes}, not {dp.mode!r}"
        if dp.reproducible_noise and not simulated:
            return "dp.reproducible-noise makes the noise predictable; a deployed site refuses it"
        if dp.mode != "local":
            return None
        asks = "the run asks for"
        fixed_noise = dp.noise_multiplier > 0  # each round is then held to the ledger's cap
        if dp.epsilon > self.max_epsilon and not fixed_noise:
            return f"{asks} dp.epsilon = {dp.epsilon:g} > max-epsilon {self.max_epsilon:g}"
        if dp.delta > self.max_delta:
            return f"{asks} dp.delta = {dp.delta:g} > max-delta {self.max_delta:g}"
        if dp.clip > self.max_clip:
            return f"{asks} dp.clip = {dp.clip:g} > max-clip {self.max_clip:g}"
        if sigma is not None and sigma < self.min_noise_multiplier:
            return (
                f"the run's noise multiplier {sigma:.4g} < the site's min-noise-multiplier "
                f"{self.min_noise_multiplier:g}"
            )
        return None

    def eval_releases(self, cfg: RunConfig) -> int:
        """Noised evaluation releases planned for a run: one per round (+ one after round 0)."""
        if self.release_eval != "noised":
            return 0
        return cfg.fed.rounds + (1 if cfg.model.prior else 0)


_KEYS = {f.name.replace("_", "-"): f.name for f in fields(SitePolicy)}


def _need(ok: bool, key: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"site policy `{key}` {why}, got {value!r}.")


def _coerce(key: str, value: Any, where: str) -> Any:
    name = _KEYS[key]
    proto = getattr(SitePolicy, name)
    try:
        if isinstance(proto, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(proto, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(proto, tuple):
            items = value if isinstance(value, list | tuple) else str(value).split(",")
            return tuple(str(v).strip() for v in items if str(v).strip())
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"site policy `{key}` ({where}) must be of type {type(proto).__name__}, got {value!r}"
        ) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return dict(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError(f"site policy file {path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"site policy file {path}: {exc}") from None


def load_policy(node_config: dict[str, Any], *, simulated: bool) -> SitePolicy:
    """The site's policy: defaults < policy file (node config or $FEDREC_SITE_POLICY) < node keys.

    Unknown keys in the file are errors (naming file and key); node-config keys that are not
    policy keys are left alone (they belong to the data and ledger settings).
    """
    values: dict[str, Any] = {}
    if not simulated:
        values["dp_modes"] = DEPLOYED_MODES
    else:
        values["dp_modes"] = DP_MODES
    source = node_config.get(POLICY_FILE_KEY) or os.environ.get(POLICY_ENV, "")
    if source:
        path = Path(str(source))
        raw = _read_file(path)
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise ConfigError(
                f"site policy file {path}: unknown key(s) {unknown}; known keys: {sorted(_KEYS)}"
            )
        for key, value in raw.items():
            values[_KEYS[key]] = _coerce(key, value, str(path))
    for key, value in node_config.items():
        if key in _KEYS:
            values[_KEYS[key]] = _coerce(key, value, "node config")
    if "max-epsilon" in node_config and "dp-modes" not in node_config:
        values["dp_modes"] = DEPLOYED_MODES  # a site that states a budget wants DP
    return SitePolicy(**values)
