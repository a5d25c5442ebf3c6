"""`python -m client.check_data`: load a site's data with its node config before it starts.

Example::

    python -m client.check_data --node-config 'data-dir="/srv/shop" dataset="generic"
        item-id-column="sku" text-columns="title,category" min-interactions=5'

Reads the files exactly as the site's ClientApp will (node config merged over the run config,
`client.node.node_setup`), prints one summary line (the users, items and interactions the site
trains and evaluates on), plus one line naming the users set aside for having fewer than
``max(min-interactions, 3)`` interactions if there are any (`common.data.short_users`: kept
for `fedrec recommend`, never trained on), and exits 2 with ``error: <file> line <n>: ...``
on the first problem (an unknown node-config key too, such as ``max-epsilom``: the
ClientApp refuses it as well, but only once the federation has started). It writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from client.node import node_setup
from common.config.base import ConfigError
from common.config.parse import parse_overrides
from common.data.interactions import DataError
from common.task import load_corpus


def parse_node_config(text: str) -> dict[str, Any]:
    """A ``--node-config`` value as Flower reads it: ``key=value`` pairs (TOML) or a .toml file."""
    from flwr.common.config import parse_config_args

    try:
        return dict(parse_config_args([text])) if text.strip() else {}
    except Exception as exc:  # Flower raises ValueError / TOMLDecodeError kinds
        raise ConfigError(f"--node-config {text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 when the data loads, 2 with one ``error:`` line otherwise."""
    ap = argparse.ArgumentParser(prog="python -m client.check_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--node-config", default="", help="the SuperNode's --node-config value")
    ap.add_argument(
        "--run-config", default="", help="run-config overrides the run will use (key=value ...)"
    )
    args = ap.parse_args(argv)
    try:
        node = parse_node_config(args.node_config)
        cfg, name, _ = node_setup(parse_overrides(args.run_config), node)
        if cfg.data.dataset == "synthetic":
            print(f"site {name}: synthetic data (no files to check)", file=sys.stderr)
            return 0
        corpus = load_corpus(cfg.data)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = Path(cfg.data.dir).resolve() if cfg.data.dir else "the default location"
    data, aside = corpus.every_user, corpus.set_aside
    short = aside is not None and len(aside) > 0
    kept = f" ({corpus.data.n_users} trained and evaluated)" if short else ""
    print(
        f"site {name}: {cfg.data.dataset} data in {where}: {data.n_users} users{kept}, "
        f"{data.n_items} items, {len(data.users)} interactions: ok",
        file=sys.stderr,
    )
    if short and aside is not None:
        print(f"site {name}: {aside.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
