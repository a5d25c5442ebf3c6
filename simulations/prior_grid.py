"""The untrained model (frozen text + DP popularity prior) over a grid of prior settings.

Reproduces the table in BENCHMARKS.md that chose the defaults `model.prior-head-share` and
`model.prior-weight`::

    python -m simulations.prior_grid            # the embedded data/ml-latest-small

No training happens: LoRA B is zero at initialisation, so the scores are the frozen backbone's
cosine similarity between the history and the item plus ``w * prior``, with the histogram
released under Gaussian noise ``sigma`` (sensitivity 1 per user).
"""

from __future__ import annotations

import dataclasses

import torch

from common.config.parse import parse_config
from common.evaluation.evaluate import evaluate_scores, item_matrix, model_score_fn
from common.task import local_histogram, set_prior, setup
from simulations import cli


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.prior_grid", __doc__)
    ap.add_argument(
        "--data-dir", default="", help="ml-latest-small folder (default: the embedded data/)"
    )
    ap.add_argument("--sigmas", default="0,1.66,3.3")
    ap.add_argument("--head-shares", default="0.05,0.2,0.5,1.0")
    ap.add_argument("--weights", default="3,6")
    args = ap.parse_args(argv)
    cfg = parse_config({"data.dir": args.data_dir})
    corpus, cat, model = setup(cfg)
    local = corpus.everyone()
    items = item_matrix(model, cat)  # untrained: the same for every grid point
    print("| sigma | head share | weight | valid HR@10 | test HR@10 |\n|---|---|---|---|---|")
    for sigma in (float(s) for s in args.sigmas.split(",")):
        hist = local_histogram(
            local, corpus.data.n_items, recent=cfg.data.history_len, sigma=sigma, seed=0
        )
        set_prior(model, hist)
        for hs in (float(h) for h in args.head_shares.split(",")):
            model.cfg = dataclasses.replace(model.cfg, prior_head_share=hs)
            for w in (float(x) for x in args.weights.split(",")):
                with torch.no_grad():
                    model.prior_weight.weight.fill_(w)
                hr = []
                for which in ("valid", "test"):
                    fn = model_score_fn(model, cat, history_len=cfg.data.history_len, items=items)
                    ev = evaluate_scores(fn, local, corpus.data.n_items, which=which)
                    hr.append(ev.result()["hr@10"])
                print(f"| {sigma} | {hs} | {w} | {hr[0]:.4f} | {hr[1]:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
