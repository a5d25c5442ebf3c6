"""Choose how a finished run scores new items, on the validation item (cold-start items).

The catalogue's new items (`common.model.new_items`; in the simulations the split's cold
items, `data.cold-start-share`) are scored by text similarity plus ``w * c``, where ``c`` =
`model.new-item-prior`. Scoring only: the trained adapter does not depend on ``c``, so one
run's adapter is re-scored for every ``c`` of a grid. For each, the validation item's HR@10 and
NDCG@10 over all users and HR@10 / HR@100 over the users whose validation item is new; the
blend switched off (`model.new-items = false`) is the first row. The chosen ``c`` is the
largest whose HR@10 over all users stays within `--tolerance` (default 5%) of the blend-off
HR@10: the most credit new items get without costing the other items' users more than that.
``--test`` then reads the test item once, at the chosen ``c``. Writes ``new-items.json`` and
``new-items.md`` into the run folder (or `--out`).

``--ranks [K,...]`` grids the rank-anchored form instead (``model.new-item-rank`` K x
``model.new-item-text-weight`` a, `--text-weights`): a user's most similar new item enters
right after their K-th best other unseen item. No new item enters the top K (for K >= 10 the
new-item users' HR@10 is 0), so the rule there is on HR@100: the highest new-item users'
HR@100 whose all-user HR@100 stays within the tolerance of the blend-off HR@100.

Example::

    python -m simulations.new_items --run runs/cold-nodp-s0
    python -m simulations.new_items --run runs/cold-nodp-s0 --ranks --test
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.base import ConfigError
from common.config.parse import parse_recorded
from common.evaluation.baseline_runs import evaluator_for
from common.evaluation.evaluate import evaluate_scores, item_matrix, model_score_fn
from common.io import write_json_atomic
from common.model.adapter import load_adapter
from common.model.new_items import set_new_items
from common.run_result import RunResultError, load_run
from common.task import Corpus, device, load_catalogue, load_corpus
from simulations import cli

DEFAULT_PRIORS = tuple(round(0.2 * i, 1) for i in range(16))  # 0.0 .. 3.0
DEFAULT_RANKS = (10, 20, 30, 40, 60, 80)  # model.new-item-rank grid of --ranks
DEFAULT_TEXT_WEIGHTS = (0.25, 0.5, 1.0, 2.0)  # model.new-item-text-weight grid of --ranks


def score_grid(
    run: Path,
    priors: list[float],
    *,
    which: str = "valid",
    ranks: list[tuple[int, float]] | None = None,
    text_weight: float | None = None,
) -> tuple[list[dict[str, Any]], Corpus]:
    """One row per setting (blend off, then each prior): all-user and new-item-user metrics.

    With `ranks`, the settings are (``model.new-item-rank``, ``model.new-item-text-weight``)
    pairs instead of priors. Priors use `text_weight`, else the run's own text weight.
    """
    res = load_run(run / "results.json")
    cfg = parse_recorded(res.config)
    corpus = load_corpus(cfg.data)
    if not len(corpus.new_items):
        raise ConfigError(
            f"{run / 'results.json'}: the run's data marks no item new "
            "(data.cold-start-share = 0): nothing to choose"
        )
    hl, n = cfg.data.history_len, corpus.data.n_items
    model = load_adapter(cfg.model, run / "adapter", n_items=n, history_len=hl, device=device())
    model.eval()
    set_new_items(model, corpus.new_items)
    cat = load_catalogue(cfg.model, corpus.data.item_texts, model.n_lower + cfg.model.lora.layers)
    with torch.no_grad():
        items = item_matrix(model, cat)
    target = corpus.split.valid if which == "valid" else corpus.split.test
    settings: list[tuple[str, Any]] = [("off", None)]
    settings += [("rank", r) for r in ranks] if ranks else [("on", c) for c in priors]
    rows = []
    for blend, c in settings:
        if blend == "rank":
            model.cfg = dataclasses.replace(
                cfg.model, new_items=True, new_item_rank=c[0], new_item_text_weight=c[1]
            )
        else:
            model.cfg = dataclasses.replace(
                cfg.model, new_items=c is not None, new_item_prior=c if c is not None else 0.0,
                new_item_rank=0, new_item_text_weight=cfg.model.new_item_text_weight
                if text_weight is None else text_weight,
            )  # fmt: skip
        ev = evaluate_scores(
            model_score_fn(model, cat, history_len=hl, items=items),
            corpus.everyone(),
            n,
            which=which,
            evaluator=evaluator_for(corpus, cfg.train.seed),
        )
        pu, m = ev.per_user(), ev.result()
        rank = np.asarray(pu["rank"])
        new = np.isin(target[np.asarray(pu["user"], dtype=np.int64)], corpus.new_items)
        rows.append({
            "blend": blend,
            "new_item_prior": c if blend != "rank" else None,
            "new_item_rank": c[0] if blend == "rank" else 0,
            "new_item_text_weight": c[1] if blend == "rank" else model.cfg.new_item_text_weight,
            "hr@10": m["hr@10"],
            "ndcg@10": m["ndcg@10"],
            "hr@100": float((rank < 100).mean()),
            "new users": int(new.sum()),
            "new hr@10": float((rank[new] < 10).mean()) if new.any() else None,
            "new hr@100": float((rank[new] < 100).mean()) if new.any() else None,
        })  # fmt: skip
        print(f"[{which}] {blend} {c}: HR@10 {m['hr@10']:.4f}, new-item users' HR@100 "
              f"{rows[-1]['new hr@100']}", file=sys.stderr, flush=True)  # fmt: skip
    return rows, corpus


def choose(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The chosen row: the most credit new items get at a bounded cost to the other users.

    Priors: the largest prior whose all-user HR@10 is within `tolerance` of the blend-off
    row's. Rank settings (which keep new items out of the top K): the highest new-item
    users' HR@100 whose all-user HR@100 is within `tolerance` of the
    blend-off row's (ties: the larger rank, then the larger text weight).
    """
    off = rows[0]
    if any(r.get("blend") == "rank" for r in rows):
        ok = [r for r in rows[1:] if r["hr@100"] >= (1.0 - tolerance) * off["hr@100"]]
        key = lambda r: (r["new hr@100"] or 0.0, r["new_item_rank"], r["new_item_text_weight"])  # noqa: E731
        return max(ok, key=key) if ok else off
    ok = [r for r in rows[1:] if r["hr@10"] >= (1.0 - tolerance) * off["hr@10"]]
    if not ok:
        return off
    return max(ok, key=lambda r: r["new_item_prior"])


def _setting(r: dict[str, Any]) -> str:
    if r["blend"] == "off":
        return "blend off"
    if r["blend"] == "rank":
        return f"rank {r['new_item_rank']}, text weight {r['new_item_text_weight']:g}"
    return f"{r['new_item_prior']:g} (text weight {r['new_item_text_weight']:g})"


def table(rows: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    """Markdown table of `score_grid`'s rows, the chosen one marked."""
    out = ["| new-item setting | HR@10 | NDCG@10 | HR@100 | new-item users | their HR@10 | "
           "their HR@100 | |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        fmt = [f"{r[k]:.4f}" if r[k] is not None else "-" for k in ("new hr@10", "new hr@100")]
        out.append(f"| {_setting(r)} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
                   f"{r['hr@100']:.4f} | {r['new users']} | {fmt[0]} | {fmt[1]} | "
                   f"{'chosen' if r is chosen else ''} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.new_items", __doc__)
    ap.add_argument("--run", required=True, type=Path, help="a finished run's folder")
    ap.add_argument("--priors", default=",".join(map(str, DEFAULT_PRIORS)), help="grid of c")
    ap.add_argument("--ranks", nargs="?", const=",".join(map(str, DEFAULT_RANKS)), default=None,
                    help="grid of model.new-item-rank instead of priors (bare flag: "
                    f"{','.join(map(str, DEFAULT_RANKS))})")  # fmt: skip
    ap.add_argument("--text-weights", default=None,
                    help="grid of model.new-item-text-weight with --ranks (default "
                    f"{','.join(map(str, DEFAULT_TEXT_WEIGHTS))}); with priors one value "
                    "(default: the run's own)")  # fmt: skip
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="loss allowed: of HR@10 (priors), of HR@100 (ranks)")  # fmt: skip
    ap.add_argument("--test", action="store_true", help="then read the test item at the choice")
    ap.add_argument("--take", action="store_true",
                    help="choose nothing: the grid's one setting is the choice (defaults "
                    "chosen elsewhere); with --test the test item is read at it")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="folder (default: the run's)")
    args = ap.parse_args(argv)
    try:
        priors = [float(x) for x in args.priors.split(",") if x.strip()]
        if not priors:
            raise ValueError("--priors needs at least one value")
        if not 0 <= args.tolerance < 1:
            raise ValueError(f"--tolerance must be in [0, 1), got {args.tolerance}")
        ranks, weight = None, None
        ws = [float(x) for x in (args.text_weights or "").split(",") if x.strip()]
        if ws and min(ws) < 0:
            raise ValueError(f"--text-weights must be numbers >= 0, got {args.text_weights!r}")
        if args.ranks is not None:
            ks = [int(x) for x in args.ranks.split(",") if x.strip()]
            if not ks or min(ks) < 1:
                raise ValueError("--ranks needs integers >= 1")
            ranks = [(k, w) for k in ks for w in (ws or DEFAULT_TEXT_WEIGHTS)]
        elif ws:
            if len(ws) != 1:
                raise ValueError("with priors, --text-weights takes one value")
            weight = ws[0]
        n_settings = len(ranks) if ranks else len(priors)
        if args.take and n_settings != 1:
            raise ValueError(f"--take needs a grid of one setting, got {n_settings}")
        rows, _ = score_grid(args.run, priors, ranks=ranks, text_weight=weight)
        chosen = rows[1] if args.take else choose(rows, args.tolerance)
        result: dict[str, Any] = {"valid": rows, "chosen": chosen, "tolerance": args.tolerance}
        text = "Validation item:\n\n" + table(rows, chosen)
        if args.test and chosen["blend"] != "off":
            pick = chosen["new_item_rank"], chosen["new_item_text_weight"]
            test_rows, _ = score_grid(
                args.run, [chosen["new_item_prior"]], which="test",
                ranks=[pick] if chosen["blend"] == "rank" else None, text_weight=weight,
            )  # fmt: skip
            result["test"] = test_rows
            text += "\nTest item (read once, at the chosen c; blend off beside it):\n\n"
            text += table(test_rows, test_rows[1])
    except (ConfigError, RunResultError, ValueError, FileNotFoundError) as exc:
        return cli.bad_input(exc)
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "new-items.json", result)
    tmp = out / "new-items.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "new-items.md")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
