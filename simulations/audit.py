"""Privacy audit of a federated run: canary epsilon lower bounds, membership attack, ledgers.

Example::

    python -m simulations.audit --preset quick --out runs/audit-quick
    python -m simulations.audit --preset nodp --out runs/audit-nodp --require-power

``--preset X`` reads ``simulations/presets/audit-X.toml`` (else ``X.toml``). The run goes
through the real Flower simulation (`simulations.federated.run`) into ``OUT/run``; the audit
then loads the final adapter and writes ``OUT/audit.json``, ``OUT/audit.md`` and
``OUT/roc.png``. Exit 0 = every empirical lower bound is at most the accounted epsilon and
the ledgers agree; 1 = FAIL (a violation); 2 = bad input; 3 = ``--require-power`` and the
canary bound is 0. See docs/audit.md.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from common.config.run import RunConfig
from common.evaluation.evaluate import ScoreFn, model_score_fn
from common.io import write_json_atomic
from common.model.towers import RecModel, load_adapter
from common.privacy import audit as A
from common.privacy import audit_bounds as B
from common.privacy.accounting import epsilon_of
from common.privacy.canary import make_canaries
from common.privacy.ledger import site_ledger_dir
from common.run_result import RunResult, load_run
from common.task import device, heldout_users, load_catalogue, load_corpus
from simulations import cli, federated
from simulations.audit_report import markdown, plot_roc, verdict

# The attack family: each gives one score per (history, item); the bounds take the best attack
# with a correction for having chosen it (Bonferroni for the one-run bound, a held-out half
# for Clopper-Pearson).
ATTACKS = ("model", "prior")


def resolve_preset(name: str) -> dict[str, Any]:
    """`audit-<name>.toml` if it exists, else `<name>.toml` ('' = none)."""
    if name and (federated.PRESETS / f"audit-{name}.toml").exists():
        name = f"audit-{name}"
    return federated.load_preset(name)


def target_scores(score: ScoreFn, known: list[np.ndarray], items: np.ndarray) -> np.ndarray:
    """Score of ``items[j]`` for a user whose known history is ``known[j]``."""
    out = np.empty(len(items), dtype=np.float64)
    for s in range(0, len(items), 256):
        block = score(np.arange(s, min(s + 256, len(items))), known[s : s + 256])
        out[s : s + len(block)] = block[np.arange(len(block)), items[s : s + 256]]
    return out


class Scorer:
    """The attacks' scores of (history, item) pairs under the audited model.

    ``model`` (black-box): the final model's score of the item given the history minus the
    score under the public, seeded initial model, which isolates what training changed.
    ``prior`` (white-box): the smallest released popularity-prior value among the item and
    the history items; a user's own interactions raise each of them.
    """

    def __init__(self, cfg: RunConfig, adapter: Path, attacks: tuple[str, ...]) -> None:
        unknown = sorted(set(attacks) - set(ATTACKS))
        if unknown or not attacks:
            raise ValueError(f"attacks must be a non-empty subset of {ATTACKS}, got {attacks}")
        self.attacks = attacks
        corpus = load_corpus(cfg.data)
        n_items, hl = corpus.data.n_items, cfg.data.history_len
        torch.manual_seed(cfg.train.seed)
        final = load_adapter(cfg.model, adapter, n_items=n_items, history_len=hl, device=device())
        cat = load_catalogue(
            cfg.model, corpus.data.item_texts, final.n_lower + cfg.model.lora.layers
        )
        self.prior = final.prior.detach().cpu().numpy().astype(np.float64)
        ref = RecModel(cfg.model, n_items=n_items, history_len=hl, device=device())
        self.final = model_score_fn(final.eval(), cat, history_len=hl)
        self.ref = model_score_fn(ref.eval(), cat, history_len=hl)

    def __call__(
        self, known: list[np.ndarray], items: np.ndarray, *, prior_of_history: bool = True
    ) -> dict[str, np.ndarray]:
        """{attack: scores of `items` given `known`}; higher means "member".

        With ``prior_of_history=False`` the prior attack looks at the item alone (for a real
        user, the history items are members either way).
        """
        out = {}
        if "model" in self.attacks:
            out["model"] = target_scores(self.final, known, items) - target_scores(
                self.ref, known, items
            )
        if "prior" in self.attacks:
            out["prior"] = np.array(
                [
                    min(self.prior[i], self.prior[k].min())
                    if prior_of_history and len(k)
                    else self.prior[i]
                    for k, i in zip(known, items, strict=True)
                ]
            )
        return out


def audit_canaries(
    cfg: RunConfig,
    scorer: Scorer,
    *,
    delta_run: float,
    delta_audit: float,
    confidence: float,
    seed: int,
) -> dict[str, Any]:
    """Score every canary (the auditor knows them all, not `included`) and bound epsilon."""
    can = make_canaries(
        load_corpus(cfg.data).data.n_items,
        cfg.audit.canaries,
        history=cfg.audit.canary_history,
        n_sites=cfg.data.num_sites,
        seed=cfg.audit.seed,
    )
    scores = scorer(list(can.histories), can.targets)
    inc = can.included
    family = len(B.guess_grid(len(inc))) * len(scores)
    out: dict[str, Any] = {"m": len(inc), "n_included": int(inc.sum()), "attacks": {}}
    for key, d in (("run_delta", delta_run), ("audit_delta", delta_audit)):
        ones = {
            a: B.best_one_run_bound(s, inc, delta=d, confidence=confidence, family_size=family)
            for a, s in scores.items()
        }
        cps = {
            a: B.tpr_fpr_epsilon_lower_bound(s[inc], s[~inc], d, confidence, seed=seed)
            for a, s in scores.items()
        }
        one_a = max(ones, key=lambda a: ones[a]["epsilon_lb"])
        cp_a = max(cps, key=lambda a: cps[a]["selection_epsilon_lb"])  # chosen on half A
        out[key] = {
            "delta": d,
            "one_run": {**ones[one_a], "attack": one_a},
            "clopper_pearson": {**cps[cp_a], "attack": cp_a},
            "per_attack": {
                a: {"one_run": ones[a]["epsilon_lb"], "clopper_pearson": cps[a]["epsilon_lb"]}
                for a in ones
            },
        }
    out["attacks"] = {a: A.membership_attack(s[inc], s[~inc]) for a, s in scores.items()}
    return out


def attack_real_users(cfg: RunConfig, scorer: Scorer) -> dict[str, Any]:
    """Attacks on real users: per interaction always, per user when users were held out.

    Per interaction: each user's last training item (member) vs its test item (never trained).
    Per user (``audit.holdout-users > 0``): trained users vs users whose data reached no
    client, on the same statistic (last training item given the earlier ones; the prior
    attack also looks at the history, since a user's own items all fed the histogram).
    """
    split = load_corpus(cfg.data).split
    everyone = [u for u, t in enumerate(split.train) if len(t) >= 2]
    held = set(heldout_users(len(split.train), cfg.audit.holdout_users, cfg.audit.seed).tolist())
    trained = [u for u in everyone if u not in held]  # a held-out user's items are not members
    member = scorer(
        [split.train[u][:-1] for u in trained],
        np.array([split.train[u][-1] for u in trained]),
        prior_of_history=False,
    )
    non = scorer(
        [np.append(split.train[u], split.valid[u]) for u in trained],
        split.test[trained],
        prior_of_history=False,
    )
    out = {a: {**A.membership_attack(member[a], non[a]), "unit": "interaction"} for a in member}
    if held:
        last = scorer(
            [split.train[u][:-1] for u in everyone],
            np.array([split.train[u][-1] for u in everyone]),
        )
        out_mask = np.array([u in held for u in everyone])
        for a, s in last.items():
            out[f"{a}, held-out users"] = {
                **A.membership_attack(s[~out_mask], s[out_mask]),
                "unit": "user",
            }
    return out


def accounted(run: RunResult, ledgers: dict[str, Any], delta_audit: float) -> dict[str, Any]:
    """The run's epsilon (upper bound) at its delta, and recomputed at the audit delta."""
    p = run.privacy
    if not p.is_dp:
        return {"epsilon_run": math.inf, "epsilon_audit": math.inf, "delta_run": None}
    if p.mode != "local":
        raise ConfigError("the canary audit needs dp.mode 'local' or 'none' (user-level DP)")
    at = [epsilon_of(A.ledger_events(led["rounds"]), delta=delta_audit) for led in ledgers.values()]
    return {
        "epsilon_run": p.epsilon,
        "delta_run": p.delta,
        "epsilon_audit": max(at) if at else math.nan,
    }


def ledger_report(run: RunResult, ledgers: dict[str, Any]) -> dict[str, Any] | None:
    """The sites' ledgers re-accounted against the epsilons the run reported (local DP)."""
    if run.privacy.mode != "local":
        return None
    reported, unmatched = A.pair_reports(ledgers, run.history)
    out = A.ledger_check(ledgers, reported_epsilons=reported)
    if unmatched:
        out["ok"] = False
        flags = [f"no ledger matches node(s) {unmatched}"]
        figures = dict.fromkeys(("epsilon_prv", "epsilon_rdp", "budget", "delta"), math.nan)
        out["clients"]["(unmatched)"] = {**figures, "flags": flags}
    return out


def audit(
    out: Path,
    overrides: dict[str, Any],
    *,
    reuse: bool,
    confidence: float,
    delta_audit: float,
    attacks: tuple[str, ...],
    seed: int,
) -> dict[str, Any]:
    """Run (or reuse) the federated run in `out/run`, audit it, write the report files."""
    run_dir = out / "run"
    t0 = time.time()
    if reuse and (run_dir / "results.json").exists():
        run = load_run(run_dir / "results.json")
    else:
        if parse_config(overrides).audit.canaries == 0:
            raise ConfigError("the audit needs canaries: set audit.canaries > 0")
        run = RunResult.of(federated.run(overrides, run_dir), str(run_dir / "results.json"))
    run_s, t1 = time.time() - t0, time.time()
    cfg = parse_config(run.run_config())
    folder = site_ledger_dir(cfg)
    ledgers = {f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))}
    acc = accounted(run, ledgers, delta_audit)
    delta_run = acc["delta_run"] or 1.0 / load_corpus(cfg.data).data.n_users  # no DP: nominal
    scorer = Scorer(cfg, run_dir / "adapter", attacks)
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "dataset": cfg.data.dataset,
        "confidence": confidence,
        "privacy": run.privacy.to_json(),
        "accounted": acc,
        "canaries": audit_canaries(
            cfg,
            scorer,
            delta_run=delta_run,
            delta_audit=delta_audit,
            confidence=confidence,
            seed=seed,
        ),
        "real_users": attack_real_users(cfg, scorer),
        "ledger": ledger_report(run, ledgers),
    }
    ok, lines = verdict(report)
    report.update(
        verdict="PASS" if ok else "FAIL",
        verdict_lines=lines,
        timing={
            "run_s": run_s,
            "audit_s": time.time() - t1,
            "flwr_run_s": run.timing.get("flwr_run_s"),
        },
    )
    plot_roc(report, out / "roc.png")
    write_json_atomic(out / "audit.json", report)
    (out / "audit.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = cli.command_parser("simulations.audit", __doc__)
    cli.add_preset(ap, "quick", "audit-<name>.toml or <name>.toml")
    cli.add_out(ap)
    cli.add_run_config(ap)
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument(
        "--audit-delta",
        type=float,
        default=1e-5,
        help="second delta at which bounds and accounted epsilon are compared",
    )
    ap.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"comma-separated subset of {ATTACKS} (the family the bounds are corrected for)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the Clopper-Pearson split")
    ap.add_argument("--reuse", action="store_true", help="audit OUT/run if it already exists")
    ap.add_argument(
        "--require-power",
        action="store_true",
        help="exit 3 when the canary one-run bound at the audit delta is 0",
    )
    args = ap.parse_args(argv)
    try:
        over = {**resolve_preset(args.preset), **parse_overrides(args.run_config)}
        rep = audit(
            args.out.resolve(),
            over,
            reuse=args.reuse,
            confidence=args.confidence,
            delta_audit=args.audit_delta,
            seed=args.seed,
            attacks=tuple(a.strip() for a in args.attacks.split(",") if a.strip()),
        )
    except (ConfigError, RuntimeError, ValueError) as exc:
        return cli.bad_input(exc)
    print("\n".join([*rep["verdict_lines"], f"-> {args.out / 'audit.md'}"]))
    if rep["verdict"] != "PASS":
        print(
            "!" * 60 + "\nAUDIT FAILED: an empirical lower bound exceeds the accounted "
            "epsilon, or the ledgers disagree\n" + "!" * 60,
            file=sys.stderr,
        )
        return 1
    if args.require_power and rep["canaries"]["audit_delta"]["one_run"]["epsilon_lb"] <= 0:
        print("NO POWER: the canary lower bound is 0", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
