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

from common.config.base import ConfigError
from common.config.parse import parse_config, parse_overrides
from common.io import write_json_atomic
from common.privacy import audit as A
from common.privacy.accounting import epsilon_of
from common.privacy.ledger import site_ledger_dir
from common.run_result import RunResult, load_run
from common.task import load_corpus
from simulations import cli, federated
from simulations.audit_attacks import ATTACKS, Scorer, attack_real_users, audit_canaries
from simulations.audit_report import markdown, plot_roc, verdict


def resolve_preset(name: str) -> dict[str, Any]:
    """`audit-<name>.toml` if it exists, else `<name>.toml` ('' = none)."""
    if name and (federated.PRESETS / f"audit-{name}.toml").exists():
        name = f"audit-{name}"
    return federated.load_preset(name)


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
        run = federated.run(overrides, run_dir)
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
