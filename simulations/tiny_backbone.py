"""`fedrec tiny-backbone OUT_DIR`: write a tiny random BERT for smoke runs and tests.

    python -m simulations.tiny_backbone OUT_DIR
    fedrec tiny-backbone OUT_DIR --hidden 32 --layers 2

The folder gets a randomly initialised BERT (`config.json`, `model.safetensors`) with the
bundled all-MiniLM-L6-v2 tokenizer; pass it as `model.backbone` (the same absolute path on
every host that runs the app). It learns nothing useful: it exists to make runs fast (the
`tiny` preset, the deployment walk-through of docs/deploy.md). The same `--seed` gives the
same weights, so hosts that each make their own copy hold the same backbone.
"""

from __future__ import annotations

from pathlib import Path

from simulations import cli


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the backbone, print its folder."""
    ap = cli.command_parser("simulations.tiny_backbone", __doc__)
    ap.add_argument("out", type=Path, help="folder to write (created; existing files replaced)")
    ap.add_argument("--hidden", type=int, default=32, help="hidden size (default 32)")
    ap.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    ap.add_argument("--heads", type=int, default=2, help="attention heads (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    args = ap.parse_args(argv)
    if min(args.hidden, args.layers, args.heads) < 1:
        return cli.bad_input(ValueError("--hidden, --layers and --heads must be >= 1"))
    if args.hidden % args.heads:
        return cli.bad_input(
            ValueError(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
        )
    if args.out.exists() and not args.out.is_dir():
        return cli.bad_input(ValueError(f"{args.out} exists and is not a folder"))
    from common.model.backbone import make_tiny_backbone

    folder = make_tiny_backbone(
        args.out, hidden=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed
    )
    print(folder.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
