"""A site's spending: its ledger file, the run's and the site's budget checks, replayed releases."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.privacy.accounting import REPORT_DELTA
from common.privacy.ledger import Ledger
from common.privacy.plan import DPPlan
from common.records import state_digest
from common.replies import EvalReply, SpentPrivacy, TrainReply

if TYPE_CHECKING:
    from client.site import Site


def ledger_file(site: Site) -> Path | None:
    """The ledger for this site's data: a run on other data never spends or locks it.

    The configured file belongs to the first data set that wrote it; a run on other data
    uses ``<stem>.<data key><suffix>`` beside it, unless the site's policy sets
    ``ledger-any-dataset`` (then every data set spends the one file).
    """
    base = site.ledger_path
    if base is None or site.policy.ledger_any_dataset or not base.exists():
        return base
    try:
        owner = json.loads(base.read_text()).get("data_key", site.data_key)
    except (OSError, ValueError, AttributeError):
        return base  # a corrupt file: Ledger.open refuses it with the full story
    if owner == site.data_key:
        return base
    return base.with_name(f"{base.stem}.{site.data_key}{base.suffix}")


def open_ledger(site: Site, plan: DPPlan) -> Ledger:
    """The site's persistent ledger for its data (raises `PrivacyError` if corrupt).

    Its budget is the site's own `max-epsilon` (over every run on this data); each run is
    also held to its own `dp.epsilon` (`Ledger.run_epsilon`).
    """
    ledger = Ledger.open(
        ledger_file(site),
        budget_epsilon=site.policy.max_epsilon,
        delta=plan.delta,
        accountant=site.cfg.dp.accountant,
    )
    ledger.data_key = site.data_key
    return ledger


def spend(
    site: Site, plan: DPPlan, ledger: Ledger, *, server_round: int, kind: str,
    events: list[tuple[float, float, int]], run_key: str,
) -> tuple[float | None, str | None]:  # fmt: skip
    """Record `events` if both the run's and the site's budgets allow: (run epsilon, refusal)."""
    run_eps = ledger.run_epsilon(run_key, events)
    if run_eps > site.cfg.dp.epsilon * (1 + 1e-6):
        return None, (
            f"round {server_round} ({kind}) would exceed this run's budget dp.epsilon "
            f"{site.cfg.dp.epsilon:g} (epsilon {run_eps:.4g})"
        )
    if ledger.would_exceed(events):
        return None, (
            f"round {server_round} ({kind}) would exceed the site's max-epsilon "
            f"{site.policy.max_epsilon:g} (spent {ledger.epsilon():.4g} over all runs)"
        )
    # Spend first: a crash mid-round must never leave spent budget unrecorded.
    ledger.record(server_round, kind, events, run=run_key)
    return ledger.run_epsilon(run_key), None


def privacy_metrics(site: Site, plan: DPPlan, ledger: Ledger, run_key: str) -> SpentPrivacy:
    """What a site says about its privacy: the run's epsilon (at delta and 1e-6), all runs'."""
    return SpentPrivacy(
        epsilon=ledger.run_epsilon(run_key),
        delta=plan.delta,
        epsilon_strict=epsilon_strict(ledger, run_key),
        ledger_epsilon=ledger.epsilon(),
    )


def epsilon_strict(ledger: Ledger, run_key: str) -> float:
    """The run's epsilon at the report delta (1e-6)."""
    strict = Ledger(ledger.budget_epsilon, REPORT_DELTA, ledger.accountant, ledger.rounds)
    return strict.run_epsilon(run_key)


def reply_path(site: Site, server_round: int, kind: str, run_key: str) -> Path | None:
    """Where a round's released output is kept beside the ledger (None without a ledger)."""
    if site.ledger_path is None:
        return None
    run = f".{run_key}" if run_key else ""
    return site.ledger_path.with_name(
        f"{site.ledger_path.stem}{run}.round-{server_round}-{kind}.npz"
    )


def save_reply(
    site: Site,
    server_round: int,
    kind: str,
    received: dict[str, np.ndarray],
    reply: TrainReply | EvalReply,
    run_key: str = "",
) -> TrainReply | EvalReply:
    """Keep this round's released output (atomically) so a redelivery can re-send it."""
    path = reply_path(site, server_round, kind, run_key)
    if path is not None:
        state = reply.state if isinstance(reply, TrainReply) else {}
        meta = {"digest": state_digest(received), "metrics": reply.metrics()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                **{f"a/{k}": v for k, v in state.items()},  # type: ignore[arg-type]
                meta=np.array(json.dumps(meta)),
            )
        os.replace(tmp, path)
    return reply


def load_reply(
    site: Site, server_round: int, kind: str, received: dict[str, np.ndarray], run_key: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The output released for `received` in this round: (arrays, metrics), or None."""
    path = reply_path(site, server_round, kind, run_key)
    if path is None or not path.exists():
        return None
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        if meta["digest"] != state_digest(received):
            return None
        return {k[2:]: z[k] for k in z.files if k.startswith("a/")}, meta["metrics"]
