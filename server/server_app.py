"""Flower ServerApp: builds the initial adapter and runs `server.federation` over the grid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import parse_config
from common.model import RecModel, load_trainable_state, save_adapter, trainable_state
from common.task import device, load_corpus
from server.federation import run_federation

app = ServerApp()
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation configured by the run config; results go to `fed.out-dir`."""
    cfg = parse_config(dict(context.run_config))
    out = Path(cfg.fed.out_dir)
    torch.manual_seed(cfg.train.seed)
    corpus = load_corpus(cfg.data)  # the public catalogue sizes the model
    model = RecModel(
        cfg.model, n_items=corpus.data.n_items, history_len=cfg.data.history_len, device=device()
    )

    def save(state: dict[str, np.ndarray], folder: Path) -> None:
        load_trainable_state(model, state)
        save_adapter(model, folder)

    def baselines() -> dict[str, Any]:
        from simulations.centralized import run_baselines

        return run_baselines(corpus, seed=cfg.train.seed)

    run_federation(
        grid, cfg, trainable_state(model), out, save_adapter_fn=save, baselines_fn=baselines
    )
