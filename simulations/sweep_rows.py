"""The sweep's results.jsonl: reading it (a torn last line skipped), appending, a point's row."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from common.config.parse import parse_config
from common.io import clean_json
from common.run_result import RunResult
from simulations.fairness import cold_start, fairness
from simulations.sweep_plan import Point

TOP10 = ("hr@10", "ndcg@10")  # the per-round figures a row keeps


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a bad line is an error naming it (a torn last line is skipped)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if n == len(lines):
                print(f"warning: {path} line {n} is incomplete; ignored", file=sys.stderr)
                continue
            raise ValueError(f"{path} line {n}: not JSON ({exc})") from exc
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(clean_json(row)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def make_row(pt: Point, results: RunResult, wall_s: float) -> dict[str, Any]:
    """The results.jsonl row of a finished point: config, metrics, privacy, fairness, timing."""
    from common.task import load_corpus

    cfg = parse_config(pt.overrides)
    corpus = load_corpus(cfg.data)
    per_client = results.last_eval().get("per_client")
    return {
        "id": pt.id,
        "kind": pt.kind,
        "setting": pt.settings[0] if pt.settings else pt.kind,
        "settings": pt.settings,
        "status": "completed" if results.completed else "stopped",
        "run_status": results.status,
        "dataset": cfg.data.dataset,
        "overrides": pt.overrides,
        "epsilon_target": cfg.dp.epsilon if cfg.dp.mode != "none" else math.inf,
        "metrics": results.metrics,
        "baselines": results.baselines,
        "privacy": results.privacy.summary(),
        "fairness": fairness(results, corpus),
        "evaluated": results.evaluated,
        "cold_start": cold_start(results, corpus, seed=cfg.train.seed, which=results.evaluated),
        "rounds": [
            {k: h.get(k) for k in ("round", "wall_s")} | {k: h["eval"].get(k) for k in TOP10}
            for h in results.evaluated_rounds()
        ],
        "per_client": {k: per_client[k] for k in TOP10} if per_client else None,
        "timing": {**results.timing, "sweep_wall_s": wall_s},
        "communication": results.communication,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
