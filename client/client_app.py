"""Flower ClientApp: wires Messages to `client.site_round` (DP training) and `client.evaluation`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.evaluation import evaluate_round
from client.final_adapter import keep_final_adapter
from client.site import get_site, initial_state
from client.site_round import train_round
from common import records as R
from common.config.base import ConfigError
from common.privacy.accounting import PrivacyError
from common.replies import Decline, EvalReply, KeptReply, TrainReply

app = ClientApp()
log = logging.getLogger("flwr.fedrec")
# Opacus calls `logging.basicConfig` on import: a root handler that printed every Flower line
# (ours included) a second time; Flower's logger has its own console handler.
logging.getLogger("flwr").propagate = False


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get(R.CONFIG, ConfigRecord())


class SiteError(RuntimeError):
    """What the server is told about a site's failure (the details stay in the site's log)."""


def withhold_details(handler: Callable[[Message, Context], Message]) -> Callable[..., Message]:
    """Send the server only the kind of a failure: data errors can name users and counts.

    Configuration and privacy errors (about the run's settings and the site's ledger, not its
    users) keep their message; any other error reaches the server as its type alone, and is
    logged in full at the site.
    """

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (ConfigError, PrivacyError):
            raise
        except Exception as exc:
            log.exception("[fedrec] %s failed", handler.__name__)
            raise SiteError(
                f"{type(exc).__name__} in the site's {handler.__name__} (details in the "
                "site's log; withheld from the server because they may name users)"
            ) from None

    return wrapped


def _reply(
    reply: TrainReply | EvalReply | Decline, msg: Message, context: Context, label: str
) -> Message:
    """The reply message: its records (`common.replies`); a refusal is also logged and kept."""
    if isinstance(reply, Decline):
        log.warning("[fedrec] declining %s: %s", msg.metadata.message_type, reply.reason)
        context.state[R.DECLINED] = ConfigRecord({R.REASON: reply.reason})
    return Message(reply.to_record(label), reply_to=msg)


@app.train()
@withhold_details
def train(msg: Message, context: Context) -> Message:
    """Train on local users from the received adapter; reply with trainable arrays + metrics."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    cfg = _config(msg)
    state = R.from_record(msg.content.array_records[R.ARRAYS])
    reply = train_round(
        site,
        state,
        server_round=int(cfg.get(R.ROUND, 0)),  # type: ignore[arg-type]
        collect_prior=bool(cfg.get(R.COLLECT_PRIOR, False)),
        collect_cooc=bool(cfg.get(R.COLLECT_COOC, False)),
        proximal_mu=float(cfg.get(R.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        run_key=str(cfg.get(R.RUN_KEY, "")),
    )
    if isinstance(reply, TrainReply) and reply.privacy is not None:
        context.state["privacy"] = ConfigRecord(
            {R.EPSILON: reply.privacy.epsilon, R.DELTA: reply.privacy.delta}
        )
    return _reply(reply, msg, context, site.policy.label)


@app.query()
@withhold_details
def query(msg: Message, context: Context) -> Message:
    """The seeded initial trainable state (for a server that holds no data)."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    state = initial_state(site)
    return Message(RecordDict({R.ARRAYS: R.to_record(state)}), reply_to=msg)


@app.evaluate()
@withhold_details
def evaluate(msg: Message, context: Context) -> Message:
    """Full-catalogue ranking metrics of the received adapter on this site's held-out items."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    cfg = _config(msg)
    state = R.from_record(msg.content.array_records[R.ARRAYS])
    reply = evaluate_round(
        site,
        state,
        which=str(cfg.get(R.EVAL_SPLIT, "test")),
        per_user=bool(cfg.get(R.PER_USER, False)),
        server_round=int(cfg.get(R.ROUND, 0)),  # type: ignore[arg-type]
        run_key=str(cfg.get(R.RUN_KEY, "")),
    )
    return _reply(reply, msg, context, site.policy.label)


@app.query(R.FINAL_ACTION)
@withhold_details
def final_adapter(msg: Message, context: Context) -> Message:
    """Keep the run's final global adapter in the site's folder (`client.final_adapter`)."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    cfg = _config(msg)
    keep_final_adapter(
        site,
        R.from_record(msg.content.array_records[R.ARRAYS]),
        run_key=str(cfg.get(R.RUN_KEY, "")),
        server_round=int(cfg.get(R.ROUND, 0)),  # type: ignore[arg-type]
    )
    return Message(KeptReply(saved=True).to_record(site.policy.label), reply_to=msg)

