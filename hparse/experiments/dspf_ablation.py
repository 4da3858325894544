"""Table 4 of the multi-granularity parser on SynthCrowd: the DSPF variants, each one component more, with seeds.

The paper (Zhang et al., CVPR 2021, Table 4) builds its Dense-to-Sparse Projection Field up from a single stride-4
prediction: coarse-to-fine over the pyramid (Eq. 2), the residual refinement (Eq. 3), the learnable warping (Eqs.
4-6). :func:`dspf_ablation` trains each row with the same recipe (:func:`hparse.recipes.recipe`), data, schedule and
seeds through :func:`hparse.experiments.runner.run_variants` and writes one record per row,
``results/<profile>/mg_parser/dspf_<dspf>_<warp|bilinear>.json``, with each seed's metrics, their mean and spread
(chapter 08 reads them)::

    python -m hparse.experiments.dspf_ablation --profile cpu                 # seeds 0, 1, 2
    python -m hparse.experiments.dspf_ablation --profile cpu --rows single_bilinear residual_warp

The last row is the recipe's own model (every paper component on). Finished runs in ``--out-root`` are reused and
interrupted ones resume, so the command can be rerun at any time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.profiles import Profile, get_profile
from .runner import SEEDS, add_run_arguments, run_variants, select_variants

__all__ = ["ROWS", "dspf_ablation", "RECORD_PREFIX", "record_name"]

RECORD_PREFIX = "mg_parser/dspf_"

#: The rows of Table 4, in order: (record suffix, flags).
ROWS: tuple[tuple[str, dict], ...] = (
    ("single_bilinear", dict(dspf="single", warp=False)),
    ("incremental_bilinear", dict(dspf="incremental", warp=False)),
    ("residual_bilinear", dict(dspf="residual", warp=False)),
    ("residual_warp", dict(dspf="residual", warp=True)),
)


def record_name(dspf: str, warp: bool) -> str:
    """The record of a row: ``mg_parser/dspf_<dspf>_<warp|bilinear>``."""
    return f"{RECORD_PREFIX}{dspf}_{'warp' if warp else 'bilinear'}"


def dspf_ablation(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
                  iterations: int | None = None, rows: Sequence[str] | None = None,
                  out_root: str | Path = "runs/dspf_ablation", write: bool = True, force: bool = False,
                  verbose: bool = False) -> dict[str, dict]:
    """Train and evaluate the rows with ``seeds`` (reusing finished runs); one record per row.

    Returns:
        ``{row: metrics}`` as :func:`~hparse.experiments.runner.run_variants` writes them.
    """
    variants = select_variants(ROWS, rows, "DSPF rows")
    report = (lambda name, seed, m: print(f"{name} seed {seed}: mIoU {m.get('mIoU', 0):.4f} APp50 "
                                          f"{m.get('APp50', 0):.4f} APpvol {m.get('APpvol', 0):.4f}", flush=True)
              ) if verbose else None
    return run_variants("mg_parser", variants, seeds, profile, record_prefix=RECORD_PREFIX, out_root=out_root,
                        iterations=iterations, device=device, write=write, force=force, on_run=report,
                        notes="multi-granularity parser, Table 4 (DSPF variants)")


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "runs/dspf_ablation")
    names = [n for n, _ in ROWS]
    parser.add_argument("--rows", nargs="*", default=None, choices=names, metavar="NAME",
                        help=f"subset of {names}")
    args = parser.parse_args(argv)
    for row, record in dspf_ablation(get_profile(args.profile), args.device, seeds=args.seeds,
                                     iterations=args.iterations, rows=args.rows, out_root=args.out_root,
                                     force=args.force, verbose=True).items():
        print(row, {k: f"{record['mean'][k]:.4f} ± {record['std'][k]:.4f}" for k in ("mIoU", "APp50", "APpvol")
                    if k in record["mean"]})


if __name__ == "__main__":
    _main()
