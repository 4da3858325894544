"""Table 6 of Parsing R-CNN on SynthCrowd: the component ladder, each rung one flag more, with several seeds.

The paper's ladder (Yang et al., CVPR 2019, Table 6) adds its components one at a time to a Mask R-CNN-style parsing
baseline: +PSS (Sec. 3.1), +ERR (Sec. 3.2: 32x32 RoIs *and* the decoupled parsing batch), +GCE (Sec. 3.3), +IPBC
(Sec. 3.4). :func:`ladder` trains every rung with the same recipe (:func:`hparse.recipes.recipe`), data, schedule and
seeds through :func:`hparse.experiments.runner.run_variants`, and writes one record per rung,
``results/<profile>/parsing_rcnn/ladder_<rung>.json``, holding each seed's metrics, their mean and spread::

    python -m hparse.experiments.parsing_rcnn_ladder --profile cpu              # seeds 0, 1, 2
    python -m hparse.experiments.parsing_rcnn_ladder --profile cpu --seeds 0 1 2 3 --rungs baseline pss

Finished runs in ``--out-root`` are reused, interrupted ones resume, so the command can be rerun at any time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.profiles import Profile, get_profile
from .runner import SEEDS, add_run_arguments, run_variants, select_variants

__all__ = ["LADDER", "ladder", "RECORD_PREFIX"]

RECORD_PREFIX = "parsing_rcnn/ladder_"

#: The rungs of Table 6, in order; each adds one component to the one before.
LADDER: tuple[tuple[str, dict], ...] = (
    ("baseline", dict(pss=False, roi_size=14, gce=False, ipbc=False, parsing_batch=None)),
    ("pss", dict(pss=True, roi_size=14, gce=False, ipbc=False, parsing_batch=None)),
    ("err", dict(pss=True, roi_size=32, gce=False, ipbc=False)),
    ("gce", dict(pss=True, roi_size=32, gce=True, ipbc=False)),
    ("ipbc", dict(pss=True, roi_size=32, gce=True, ipbc=True)),
)


def ladder(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
           iterations: int | None = None, rungs: Sequence[str] | None = None, out_root: str | Path = "runs/ladder",
           write: bool = True, force: bool = False, verbose: bool = False) -> dict[str, dict]:
    """Train and evaluate the ladder's rungs with ``seeds`` (reusing finished runs); one record per rung.

    The rungs before ERR train the parsing branch on every positive RoI (``parsing_batch=None``); ERR brings the
    decoupled parsing batch of the recipe together with the 32x32 RoIs, as Sec. 3.2 does.

    Returns:
        ``{rung: metrics}`` as :func:`~hparse.experiments.runner.run_variants` writes them.
    """
    variants = select_variants(LADDER, rungs, "ladder rungs")
    report = (lambda name, seed, m: print(f"{name} seed {seed}: mIoU {m.get('mIoU', 0):.4f} APp50 "
                                          f"{m.get('APp50', 0):.4f}", flush=True)) if verbose else None
    return run_variants("parsing_rcnn", variants, seeds, profile, record_prefix=RECORD_PREFIX, out_root=out_root,
                        iterations=iterations, device=device, write=write, force=force, on_run=report,
                        notes="Parsing R-CNN Table 6 ladder")


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "runs/ladder")
    names = [n for n, _ in LADDER]
    parser.add_argument("--rungs", nargs="*", default=None, choices=names, metavar="NAME",
                        help=f"subset of {names}")
    args = parser.parse_args(argv)
    for rung, record in ladder(get_profile(args.profile), args.device, seeds=args.seeds, iterations=args.iterations,
                               rungs=args.rungs, out_root=args.out_root, force=args.force, verbose=True).items():
        print(rung, {k: f"{record['mean'][k]:.4f} ± {record['std'][k]:.4f}" for k in ("mIoU", "APp50", "APpvol")
                     if k in record["mean"]})


if __name__ == "__main__":
    _main()
