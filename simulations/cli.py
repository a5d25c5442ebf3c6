"""The command line: shared option and error handling of every entry point, and `fedrec <cmd>`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

# `fedrec <command>` -> the module whose `main(argv)` runs it (also `python -m <module>`).
COMMANDS = {
    "run": ("simulations.federated", "one federated simulation (`flwr run .`) into --out"),
    "central": ("simulations.centralized", "the same model trained centrally (one party)"),
    "sweep": ("simulations.sweep", "accuracy / privacy / fairness sweep of real runs"),
    "report": ("simulations.report", "the study report of a sweep folder"),
    "audit": ("simulations.audit", "empirical privacy audit (canaries, membership attacks)"),
    "bench": ("simulations.bench", "throughput, memory and communication benchmark"),
    "dp-baselines": ("simulations.dp_baselines", "DP popularity and DP-EASE at given epsilons"),
    "users-needed": ("simulations.users_needed", "how many users DP needs: DP vs no DP by size"),
    "new-items": ("simulations.new_items", "choose how a run scores new items (validation item)"),
    "recommend": ("client.recommend", "a site's top-K from an adapter folder (user, history, all)"),
    "serve": ("client.serve", "the recommender as an HTTP JSON endpoint behind a bearer token"),
    "tiny-backbone": ("simulations.tiny_backbone", "write a tiny random BERT (smoke runs, tests)"),
}
EXIT_BAD_INPUT = 2  # every command: a config, data or privacy error (the message names it)


def command_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`: its docstring as description, kept as written."""
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_out(ap: argparse.ArgumentParser, help: str = "output folder") -> None:
    """``--out DIR`` (required)."""
    ap.add_argument("--out", required=True, type=Path, help=help)


def add_preset(ap: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--preset NAME``."""
    ap.add_argument("--preset", default=default, help=help)


def add_run_config(
    ap: argparse.ArgumentParser, help: str = 'extra overrides "key=value ..."'
) -> None:
    """``--run-config "key=value ..."`` (applied over the preset)."""
    ap.add_argument("--run-config", default="", help=help)


def bad_input(exc: BaseException) -> int:
    """Print ``error: <message>`` to stderr; the exit code of bad input."""
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    """``fedrec <command> [options]``: the same commands as ``python -m simulations.<module>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items())
    usage = f"usage: fedrec <command> [options]   (fedrec <command> --help)\n\ncommands:\n{listing}"
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else EXIT_BAD_INPUT
    if args[0] not in COMMANDS:
        print(f"error: unknown command {args[0]!r}\n\n{usage}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
