"""Flower ServerApp: builds the initial adapter and runs `server.federation` over the grid."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from common import records as R
from common.config.parse import parse_config
from common.config.run import RunConfig
from common.evaluation.baseline_runs import dp_baselines_for, run_baselines
from common.model.adapter import catalogue_digest, write_adapter
from common.model.towers import PRIOR_KEY, RecModel, load_trainable_state, trainable_state
from common.task import Corpus, device, load_corpus
from server.evaluation import EvaluateFn, server_evaluator
from server.federation import run_federation, wait_for_nodes

app = ServerApp()
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("flwr.fedrec")
# Opacus calls `logging.basicConfig` on import: a root handler that printed every Flower line
# (ours included) a second time; Flower's logger has its own console handler.
logging.getLogger("flwr").propagate = False


def initial_from_node(grid: Grid, cfg: RunConfig) -> dict[str, np.ndarray]:
    """Ask the nodes, one at a time, for the (deterministic, seeded) initial trainable state.

    Used when the server holds no data (`fed.server-data = false`, deployment): the model's
    shape depends on the catalogue, which only the sites have. A node that fails, does not
    answer within `fed.round-timeout` or sends no usable state is logged and the next one is
    asked (nodes that connect meanwhile included); only when every node failed does the run
    stop, naming each node and its reason.
    """
    wait_for_nodes(grid, 1, cfg.fed.node_wait)
    tried: dict[int, str] = {}
    while untried := sorted(set(grid.get_node_ids()) - set(tried)):
        node = untried[0]
        msg = Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
        replies = list(grid.send_and_receive([msg], timeout=cfg.fed.round_timeout))
        state, tried[node] = _initial_state_of(replies)
        if state is not None:
            return state
        log.warning("[fedrec] node %d gave no initial state (%s); next", node, tried[node])
    reasons = "; ".join(f"node {n}: {why}" for n, why in tried.items())
    raise RuntimeError(f"no node returned the initial state ({reasons})")


def _initial_state_of(replies: list[Message]) -> tuple[dict[str, np.ndarray] | None, str]:
    """(state, "") from a usable query reply, else (None, why not)."""
    if not replies:
        return None, "no reply"
    if replies[0].has_error():
        return None, str(replies[0].error.reason)
    if R.ARRAYS not in replies[0].content.array_records:
        return None, "reply has no arrays"
    state = R.from_record(replies[0].content.array_records[R.ARRAYS])
    if PRIOR_KEY not in state or state[PRIOR_KEY].ndim != 1 or len(state[PRIOR_KEY]) < 1:
        return None, f"reply has no 1-d `{PRIOR_KEY}` array (the catalogue size)"
    return state, ""


def baseline_fns(
    corpus: Corpus, cfg: RunConfig
) -> tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]] | None]:
    """The run's baselines on its `fed.eval-split` item, and its DP baselines (test runs only).

    The DP baselines choose their settings on the validation item and report the test item,
    so a run evaluated on the validation item leaves them out (None).
    """

    def baselines() -> dict[str, Any]:
        return run_baselines(corpus, seed=cfg.train.seed, which=cfg.fed.eval_split)

    if cfg.fed.eval_split != "test":
        return baselines, None
    return baselines, functools.partial(dp_baselines_for, corpus, cfg, label="server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation configured by the run config; results go to `fed.out-dir`."""
    cfg = parse_config(dict(context.run_config))
    out = Path(cfg.fed.out_dir)
    torch.manual_seed(cfg.train.seed)
    baselines: Callable[[], dict[str, Any]] | None = None
    dp_baselines: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    evaluate: Callable[[int], EvaluateFn] | None = None
    catalogue = ""  # unknown without server data: the sites' own adapters record theirs
    if cfg.fed.server_data:
        corpus = load_corpus(cfg.data)
        catalogue = catalogue_digest(corpus.data.item_ids, corpus.data.item_texts)

        baselines, dp_baselines = baseline_fns(corpus, cfg)

        n_items = corpus.data.n_items
        model = RecModel(
            cfg.model, n_items=n_items, history_len=cfg.data.history_len, device=device()
        )
        initial = trainable_state(model)
        evaluate = functools.partial(server_evaluator, cfg)  # built once the nodes are known
    else:
        initial = initial_from_node(grid, cfg)
        model = RecModel(
            cfg.model,
            n_items=len(initial[PRIOR_KEY]),
            history_len=cfg.data.history_len,
            device=device(),
        )
        log.info(
            "[fedrec] initial state from a node (%d items); no baselines without server data",
            len(initial[PRIOR_KEY]),
        )

    def save(state: dict[str, np.ndarray], folder: Path) -> None:
        load_trainable_state(model, state)
        write_adapter(model, folder, data=cfg.data, catalogue=catalogue)

    results = run_federation(
        grid,
        cfg,
        initial,
        out,
        save_adapter_fn=save,
        baselines_fn=baselines,
        dp_baselines_fn=dp_baselines,
        evaluate_fn=evaluate,
    )
    if results["status"] != "completed":  # Flower then marks the run failed (flwr ls)
        raise IncompleteRunError(
            f"the run ended without its planned {cfg.fed.rounds} rounds: {results['status']} "
            f"(results so far in {out / 'results.json'})"
        )


class IncompleteRunError(RuntimeError):
    """A run that stopped before its planned rounds (results.json is still written)."""
