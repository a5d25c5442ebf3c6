"""Flower ClientApp: wires Messages to `client.site` (DP training) and `client.evaluation`."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client.evaluation import evaluate_round
from client.site import get_site, initial_state, train_round
from common import records as R

app = ClientApp()
log = logging.getLogger("flwr.fedrec")


def _config(msg: Message) -> ConfigRecord:
    return msg.content.config_records.get(R.CONFIG, ConfigRecord())


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on local users from the received adapter; reply with trainable arrays + metrics."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    cfg = _config(msg)
    state = R.from_record(msg.content.array_records[R.ARRAYS])
    new_state, metrics = train_round(
        site,
        state,
        server_round=int(cfg.get(R.ROUND, 0)),  # type: ignore[arg-type]
        collect_prior=bool(cfg.get(R.COLLECT_PRIOR, False)),
        proximal_mu=float(cfg.get(R.PROXIMAL_MU, 0.0)),  # type: ignore[arg-type]
        run_key=str(cfg.get(R.RUN_KEY, "")),
    )
    reason = metrics.pop("reason", None)
    if new_state is None:
        log.warning("[fedrec] %s declines round %s: %s", site.name, cfg.get(R.ROUND), reason)
        context.state[R.DECLINED] = ConfigRecord({"reason": str(reason)})
        return Message(RecordDict({R.METRICS: R.metric_record(metrics)}), reply_to=msg)
    if "epsilon" in metrics:
        context.state["privacy"] = ConfigRecord(
            {"epsilon": float(metrics["epsilon"]), "delta": float(metrics["delta"])}
        )
    content = RecordDict({R.ARRAYS: R.to_record(new_state), R.METRICS: R.metric_record(metrics)})
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The seeded initial trainable state (for a server that holds no data)."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    state = initial_state(site)
    return Message(RecordDict({R.ARRAYS: R.to_record(state)}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Full-catalogue ranking metrics of the received adapter on this site's held-out items."""
    site = get_site(dict(context.run_config), dict(context.node_config))
    cfg = _config(msg)
    state = R.from_record(msg.content.array_records[R.ARRAYS])
    metrics = evaluate_round(
        site,
        state,
        which=str(cfg.get(R.EVAL_SPLIT, "test")),
        per_user=bool(cfg.get(R.PER_USER, False)),
    )
    return Message(RecordDict({R.METRICS: R.metric_record(metrics)}), reply_to=msg)
