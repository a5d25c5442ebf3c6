"""Benchmark measurements: the machine, its GEMM FLOP/s, one variant's training throughput."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.config.parse import parse_config
from common.config.run import RunConfig
from common.evaluation.evaluate import evaluate_scores, model_score_fn
from common.model.towers import RecModel, trainable_state
from common.model.train import make_batch, per_user_loss, train
from common.privacy.plan import DPPlan
from common.records import state_bytes
from common.task import Corpus, setup


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
    }


def gemm_flops(n: int = 1024, reps: int = 10) -> float:
    """Measured dense float32 matmul FLOP/s of this machine (torch GEMM)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_flops(cfg: RunConfig, model: Any, cat: Any, local: Any) -> float:
    """FLOPs of one non-DP training step (forward + backward) counted by torch."""
    rng = np.random.default_rng(0)
    rows = local.trainable()[: cfg.train.batch_users]
    batch = make_batch(
        local,
        rows,
        history_len=cfg.data.history_len,
        targets=cfg.train.targets_per_user,
        negatives=cfg.train.negatives,
        n_items=cat.n_items,
        rng=rng,
    )
    with FlopCounterMode(display=False) as counter:
        scores = model(batch.hist, batch.hist_mask, batch.cands, cat, batch.prefix)
        per_user_loss(scores, batch.target_mask).mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(base: dict[str, Any], name: str, over: dict[str, Any], steps: int) -> dict[str, Any]:
    """Train `steps` steps of one variant; users/s, step FLOPs, bytes, eval time."""
    cfg = parse_config({**base, **over})
    corpus, cat, model = setup(cfg)
    local = corpus.everyone()
    n = len(local.trainable())
    q = min(1.0, cfg.train.batch_users / n)
    plan = DPPlan(1.0, q, steps, 0.0, 1.0 / n) if cfg.dp.local else None
    warm = DPPlan(1.0, q, 1, 0.0, 1.0 / n) if plan else None
    one = parse_config({**base, **over, "train.epochs": cfg.train.batch_users / n})
    train(
        model, cat, local, one.train, history_len=cfg.data.history_len, plan=warm, clip=1.0, seed=1
    )  # warm-up
    many = parse_config({**base, **over, "train.epochs": steps * cfg.train.batch_users / n})
    stats = train(
        model, cat, local, many.train, history_len=cfg.data.history_len, plan=plan, clip=1.0, seed=2
    )
    flops = step_flops(cfg, model, cat, local)
    backbone_bytes = sum(
        p.numel() * p.element_size() for p in model.bert.get_base_model().parameters()
    )
    state = trainable_state(model)
    up = state_bytes({k: v for k, v in state.items() if k != "prior"})
    return {
        "variant": name,
        "users_per_s": stats.users_seen / stats.wall_s,
        "step_s": stats.wall_s / stats.steps,
        "users_per_step": stats.users_seen / stats.steps,
        "step_flops": flops,
        "achieved_flops": flops / (stats.wall_s / stats.steps),
        "bytes_up_trainable": up,
        "bytes_prior": int(state["prior"].nbytes),
        "backbone_bytes": backbone_bytes,
        "backbone_over_up": backbone_bytes / up,
        "_model": (cfg, model, cat, corpus),
    }


def full_catalogue_time(
    cfg: RunConfig, model: RecModel, cat: Any, corpus: Corpus
) -> tuple[float, int]:
    """(seconds, users) of one full-catalogue test evaluation of every user."""
    t0 = time.perf_counter()
    ev = evaluate_scores(
        model_score_fn(model, cat, history_len=cfg.data.history_len),
        corpus.everyone(),
        corpus.data.n_items,
        which="test",
    )
    return time.perf_counter() - t0, int(ev.result()["n_users"])
