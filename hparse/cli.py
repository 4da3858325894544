"""The ``hparse`` command line.

Each command is a ``_cmd_<name>(args) -> int`` function and a block in :func:`build_parser`; heavy imports happen
inside the command so that ``hparse --help`` stays fast. Errors a user can fix (a missing folder, a bad flag value)
are printed as one line on stderr with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None,
                        help="run size (default: $HPARSE_PROFILE, else gpu with CUDA, else cpu)")


def _add_synth_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--num", type=int, default=8, help="number of images")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--min-people", type=int, default=1)
    parser.add_argument("--max-people", type=int, default=6)
    parser.add_argument("--crowding", type=float, default=0.5, help="0 = people apart, 1 = heavily overlapping")
    parser.add_argument("--seed", type=int, default=0)


def _synth_from_args(args):
    from .data import SynthCrowd

    return SynthCrowd(split=args.split, num_images=args.num, image_size=args.image_size,
                      min_people=args.min_people, max_people=args.max_people, crowding=args.crowding, seed=args.seed)


# ---------------------------------------------------------------------------------------------------- data


def _cmd_data_preview(args) -> int:
    """Render a grid of samples (image with boxes and keypoints, parts, persons) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from .viz import sample_grid, save_figure

    if args.dataset != "synth":
        raise UserError(f"data preview supports --dataset synth (got {args.dataset!r})")
    dataset = _synth_from_args(args)
    samples = [dataset[i] for i in range(len(dataset))]
    fig = sample_grid(samples[: args.num], dataset.labels, panel="all" if args.num <= 4 else args.panel)
    path = save_figure(fig, args.out)
    people = sum(len(s["boxes"]) for s in samples)
    print(f"wrote {path} ({len(samples)} SynthCrowd {args.split} images, {people} people)")
    return 0


# --------------------------------------------------------------------------------------------------- bench


def _cmd_bench(args) -> int:
    """Run a benchmark and write its numbers to results/<profile>/bench/<name>.json."""
    import json

    from .benchmarks import BENCHMARKS, run_benchmark
    from .engine import get_device, get_profile

    names = sorted(BENCHMARKS) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    profile, device = get_profile(args.profile), get_device(args.device)
    for name in names:
        numbers = run_benchmark(name, profile, device)
        print(f"== {name} ({profile.name}, {device})")
        print(json.dumps(numbers, indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hparse", description="Instance-level human parsing: data, training, "
                                     "evaluation and benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="preview, export and verify datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser("preview", help="render a grid of samples to a PNG")
    preview.add_argument("--dataset", default="synth")
    preview.add_argument("--out", type=Path, default=Path("grid.png"))
    preview.add_argument("--panel", default="parts", choices=("image", "parts", "persons", "all"))
    _add_synth_options(preview)
    preview.set_defaults(func=_cmd_data_preview)

    bench = sub.add_parser("bench", help="run a benchmark (writes results/<profile>/bench/<name>.json)")
    bench.add_argument("name", help="benchmark name, or 'all'")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_profile(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"hparse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
