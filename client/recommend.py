"""`fedrec recommend`: a site's top-K from an adapter folder, one user, a history or all users."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.recommender import Recommendation, Recommender, RequestError
from common.config.base import ConfigError
from common.config.data import DataConfig
from common.config.parse import load_defaults, parse_config, parse_overrides
from common.data.interactions import DataError
from common.io import clean_json
from common.model.adapter import AdapterInfo, read_info

CSV_COLUMNS = ("user", "rank", "item", "score", "similarity", "popularity",
               "popularity_share", "because", "text")  # fmt: skip
EXIT_BAD_INPUT = 2  # as every `fedrec` command


def batch_rows(results: Sequence[tuple[Any, list[Recommendation]]]) -> list[dict[str, Any]]:
    """One CSV row per (user, recommendation); ``because`` = driving item ids joined by ';'."""
    return [
        {
            "user": u,
            "rank": r.rank,
            "item": r.item,
            "score": r.score,
            "similarity": r.similarity,
            "popularity": r.popularity,
            "popularity_share": r.popularity_share,
            "because": ";".join(str(d.item) for d in r.because),
            "text": r.text,
        }  # fmt: skip
        for u, recs in results
        for r in recs
    ]


def write_batch(results: Sequence[tuple[Any, list[Recommendation]]], path: Path) -> None:
    """Write every user's recommendations to `path` (.csv or .json), atomically."""
    fmt = path.suffix.lower()
    if fmt == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(batch_rows(results))
        text = buf.getvalue()
    elif fmt == ".json":
        users = [{"user": u, "recommendations": [r.to_json() for r in recs]} for u, recs in results]
        text = json.dumps({"users": users}, indent=1) + "\n"
    else:
        raise ConfigError(f"--out {path}: the name must end in .csv or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def data_config(
    info: AdapterInfo, *, data_dir: str = "", dataset: str = "", overrides: str = ""
) -> DataConfig:
    """The site's data settings: the adapter's (no paths) < --dataset/--data-dir < overrides."""
    known = load_defaults()
    flat = {k: v for k, v in (info.data or {}).items() if k in known}
    if dataset:
        flat["data.dataset"] = dataset
    if data_dir:
        flat["data.dir"] = data_dir
    extra = parse_overrides(overrides) if overrides else {}
    bad = sorted(k for k in extra if not k.startswith("data."))
    if bad:
        raise ConfigError(f"--run-config takes only data.* keys here, got {bad}")
    return parse_config({**flat, **extra}).data


def add_source(ap: argparse.ArgumentParser) -> None:
    """The options naming the adapter and the site's data (shared with `fedrec serve`)."""
    ap.add_argument(
        "--adapter",
        required=True,
        type=Path,
        help="adapter folder (a run's adapter/ or a site's final adapter)",
    )
    ap.add_argument(
        "--data-dir",
        default="",
        help="folder of the site's data (as node config "
        "`data-dir`; default: the data set's usual place)",
    )
    ap.add_argument("--dataset", default="", help="data set name (default: the adapter's)")
    ap.add_argument("--run-config", default="", help='data overrides "data.key=value ..."')
    ap.add_argument(
        "--backbone",
        default=None,
        help="backbone folder (default: the one the "
        "adapter names; needed when it is not the bundled all-MiniLM-L6-v2)",
    )
    ap.add_argument("--cache-dir", default="", help="catalogue cache (default: $FEDREC_CACHE)")
    ap.add_argument(
        "--new-item-rank",
        type=int,
        default=None,
        help="where each user's best new item enters the list: right after this many other "
        "items (default: the adapter's model.new-item-rank; below --k to show new items)",
    )


def open_recommender(args: argparse.Namespace) -> Recommender:
    """The `Recommender` the source options describe."""
    info = read_info(args.adapter)
    data = data_config(info, data_dir=args.data_dir, dataset=args.dataset,
                       overrides=args.run_config)  # fmt: skip
    rec = Recommender.load(args.adapter, data, backbone=args.backbone, cache_dir=args.cache_dir)
    if args.new_item_rank is not None:
        if args.new_item_rank < 0:
            raise ValueError(f"--new-item-rank must be >= 0, got {args.new_item_rank}")
        rec.model.cfg = dataclasses.replace(rec.model.cfg, new_item_rank=args.new_item_rank)
    return rec


def split_ids(text: str) -> list[str]:
    """``"1,2, 3"`` -> ``["1", "2", "3"]`` (ids are matched as text)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parser() -> argparse.ArgumentParser:
    """The options of `fedrec recommend` (= `python -m client.recommend`)."""
    ap = argparse.ArgumentParser(prog="python -m client.recommend", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_source(ap)
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id of the site's data")
    who.add_argument("--history", help="item ids, oldest first, comma-separated")
    who.add_argument("--all", action="store_true", help="every user of the site's data")
    ap.add_argument("--exclude", default="", help="with --history: more item ids to leave out")
    ap.add_argument("--k", type=int, default=10, help="recommendations per user (default 10)")
    ap.add_argument(
        "--explain", type=int, default=3, help="history items named per recommendation (default 3)"
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write to this .csv or .json (atomically) instead of printing JSON",
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fedrec recommend`; exit 2 with ``error: ...`` on bad input."""
    args = parser().parse_args(argv)
    try:
        rec = open_recommender(args)
        if args.all:
            results = list(rec.for_all(args.k, explain=args.explain))
        elif args.user is not None:
            results = [(args.user, rec.for_user(args.user, args.k, explain=args.explain))]
        else:
            recs = rec.for_history(split_ids(args.history), args.k, explain=args.explain,
                                   exclude=split_ids(args.exclude))  # fmt: skip
            results = [(None, recs)]
        if args.out is not None:
            write_batch(results, args.out)
            print(f"{len(results)} user(s), top-{args.k} each -> {args.out}")
        else:
            users = [{"user": u, "recommendations": [r.to_json() for r in rs]} for u, rs in results]
            print(json.dumps(clean_json({"users": users}), indent=1))
    except (ConfigError, DataError, RequestError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
