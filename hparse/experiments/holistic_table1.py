"""Table 1 of the holistic parser (Li, Arnab & Torr, BMVC 2017) on SynthCrowd, and its AP^r against crowding.

The paper's Table 1 ablates the Instance CRF's training on PASCAL-Person-Part, AP^r of instance-level part
segmentation at IoU 0.5 / 0.6 / 0.7 and AP^r_vol (§4.2):

- *piecewise, box term only* (the box term and the pairwise term, no global term: the paper's reimplementation of
  Arnab & Torr [1]); *piecewise* (box + global + pairwise); *end-to-end*;
- each again with OHEM (K hardest pixels of the mini-batch).

"Piecewise": the part segmentation is trained first and then frozen while the CRF's weights train; "end-to-end":
after the same pre-training, the matched loss trains everything (§3.3). :func:`table1` trains every row with the
same recipe (:func:`hparse.recipes.recipe`, ``holistic_crf``), data, schedule and seeds through
:func:`hparse.experiments.runner.run_variants` and writes one record per row,
``results/<profile>/holistic_crf/table1_<row>.json``, holding each seed's metrics, their mean and spread. The test
detections come from the person detector the recipe trains in the same run (``detections="detector"``); the CRF
trains given jittered ground-truth boxes. :func:`table` reads the records back as rows beside the paper's numbers,
with the mean and spread of AP^r at 0.5, 0.6, 0.7 and vol computed from the per-seed values.

:func:`crowding_sweep` evaluates one row's seed-0 model (reused from its run folder) on SynthCrowd val at several
``crowding`` levels and writes ``results/<profile>/holistic_crf/table1_crowding.json``::

    python -m hparse.experiments.holistic_table1 --profile cpu --seeds 0 1          # the six rows, two seeds
    python -m hparse.experiments.holistic_table1 --profile cpu --seeds 0 1 --crowding
    python -m hparse.experiments.holistic_table1 --profile cpu --rows piecewise end_to_end

Finished runs in ``--out-root`` are reused and interrupted ones resume, so the command can be rerun at any time.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.profiles import Profile, get_device, get_profile
from ..engine.results import load_result, write_result
from .runner import add_run_arguments, run_folder, run_variants, select_variants, synth_splits, train_seed

__all__ = ["ROWS", "PAPER_TABLE1", "RECORD_PREFIX", "TABLE_KEYS", "table1", "table", "crowding_sweep"]

RECORD_PREFIX = "holistic_crf/table1_"
#: Seeds of the table unless asked otherwise (at least two, for a spread).
TABLE_SEEDS = (0, 1)
#: AP^r columns of Table 1.
TABLE_KEYS = ("APr50", "APr60", "APr70", "APrvol")

#: The rows of Table 1, in the paper's order; each is a set of ``holistic_crf`` flags.
ROWS: tuple[tuple[str, dict], ...] = (
    ("box_only", dict(training="piecewise", global_term=False, ohem=False)),
    ("piecewise", dict(training="piecewise", ohem=False)),
    ("end_to_end", dict(training="end_to_end", ohem=False)),
    ("box_only_ohem", dict(training="piecewise", global_term=False, ohem=True)),
    ("piecewise_ohem", dict(training="piecewise", ohem=True)),
    ("end_to_end_ohem", dict(training="end_to_end", ohem=True)),
)

#: Paper numbers, Table 1 (PASCAL-Person-Part, AP^r in %, R-FCN detections), keyed like :data:`ROWS`.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "box_only": {"APr50": 38.0, "APr60": 27.4, "APr70": 16.7, "APrvol": 36.6},
    "piecewise": {"APr50": 38.8, "APr60": 28.5, "APr70": 17.6, "APrvol": 37.3},
    "end_to_end": {"APr50": 39.0, "APr60": 28.6, "APr70": 17.4, "APrvol": 37.7},
    "box_only_ohem": {"APr50": 38.7, "APr60": 28.9, "APr70": 17.5, "APrvol": 36.7},
    "piecewise_ohem": {"APr50": 39.7, "APr60": 29.7, "APr70": 18.7, "APrvol": 37.4},
    "end_to_end_ohem": {"APr50": 40.6, "APr60": 30.4, "APr70": 19.1, "APrvol": 38.4},
}

#: Crowding levels of :func:`crowding_sweep` (SynthCrowd: 0 = people on the emptiest spots, 1 = on each other).
CROWDING = (0.0, 0.25, 0.5, 0.75, 1.0)


def _rows(names: Sequence[str] | None) -> list[tuple[str, dict]]:
    return select_variants(ROWS, names, "Table 1 rows")


def table1(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = TABLE_SEEDS,
           iterations: int | None = None, rows: Sequence[str] | None = None,
           out_root: str | Path = "runs/holistic_table1", write: bool = True, force: bool = False,
           verbose: bool = False) -> dict[str, dict]:
    """Train and evaluate the rows of Table 1 with ``seeds`` (reusing finished runs); one record per row.

    Returns:
        ``{row: metrics}`` as :func:`~hparse.experiments.runner.run_variants` writes them.
    """
    report = (lambda name, seed, m: print(f"{name} seed {seed}: " + " ".join(
        f"{k} {m.get(k, float('nan')):.4f}" for k in ("mIoU", *TABLE_KEYS)), flush=True)) if verbose else None
    return run_variants("holistic_crf", _rows(rows), seeds, profile, record_prefix=RECORD_PREFIX, out_root=out_root,
                        iterations=iterations, device=device, write=write, force=force, on_run=report,
                        notes="Holistic parsing Table 1 row")


def _spread(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def table(profile: str = "cpu", records: dict[str, dict] | None = None) -> list[dict]:
    """Table 1 rows from the records (or from ``records`` as :func:`table1` returns them), the paper's beside.

    Returns:
        One dict per row that has a record: ``{"row", "seeds", "ours": {key: (mean, std)}, "paper": {key: %}}``,
        ours as fractions, the paper's in percent (as printed in its Table 1).
    """
    out = []
    for name, _ in ROWS:
        metrics = (records or {}).get(name)
        if metrics is None:
            record = load_result(f"{RECORD_PREFIX}{name}", profile)
            metrics = record["metrics"] if record else None
        if not metrics or "per_seed" not in metrics:
            continue
        per_seed = list(metrics["per_seed"].values())
        ours = {}
        for key in (*TABLE_KEYS, "mIoU"):
            values = [m[key] for m in per_seed if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
            if values:
                ours[key] = _spread(values)
        out.append({"row": name, "seeds": list(metrics["per_seed"]), "ours": ours, "paper": PAPER_TABLE1[name]})
    return out


def crowding_sweep(profile: Profile, device: torch.device | str | None = None, *, row: str = "end_to_end_ohem",
                   seed: int = 0, levels: Sequence[float] = CROWDING, val_images: int | None = None,
                   out_root: str | Path = "runs/holistic_table1", write: bool = True, force: bool = False) -> dict:
    """AP^r of one Table 1 row's model (trained once, at the recipe's crowding 0.5) on val images at each level.

    The model is reused from its run folder (trained there first if it is missing). Writes
    ``results/<profile>/holistic_crf/table1_crowding.json`` with ``{"levels": [...], "per_level": {level:
    metrics}}``.
    """
    from ..engine.trainer import evaluate

    device = get_device(device)
    flags = dict(_rows([row])[0][1])
    folder = run_folder(out_root, profile, row, seed)
    _, model = train_seed("holistic_crf", profile, flags, seed, folder, device=device, variant=row, keep_model=True)
    from ..recipes import recipe

    data = recipe("holistic_crf", profile, **flags)["data"]
    per_level = {}
    for level in levels:
        _, val_set = synth_splits(data, val_crowding=level, val_images=val_images)
        per_level[str(level)] = evaluate(model, val_set, device=device)
    metrics = {"levels": list(levels), "row": row, "seed": seed, "per_level": per_level}
    if write:
        write_result(f"{RECORD_PREFIX}crowding", metrics, profile=profile.name, device=device, force=force,
                     config={"row": row, "flags": flags, "seed": seed, "levels": list(levels),
                             "val_images": val_images or data["val_images"]},
                     notes=f"AP^r against crowding of Table 1 row {row!r}, seed {seed}")
    return metrics


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "runs/holistic_table1")
    parser.set_defaults(seeds=list(TABLE_SEEDS))
    names = [n for n, _ in ROWS]
    parser.add_argument("--rows", nargs="*", default=None, choices=names, metavar="NAME",
                        help=f"subset of {names}")
    parser.add_argument("--crowding", action="store_true", help="also evaluate AP^r against crowding")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    records = table1(profile, args.device, seeds=args.seeds, iterations=args.iterations, rows=args.rows,
                     out_root=args.out_root, force=args.force, verbose=True)
    for line in table(profile.name, records):
        ours = "  ".join(f"{k} {100 * m:.1f} ± {100 * s:.1f}" for k, (m, s) in line["ours"].items())
        paper = "  ".join(f"{k} {v:.1f}" for k, v in line["paper"].items())
        print(f"{line['row']:>16}  ours: {ours}\n{'':>16}  paper: {paper}")
    if args.crowding:
        sweep = crowding_sweep(profile, args.device, seed=args.seeds[0], out_root=args.out_root, force=args.force)
        for level, m in sweep["per_level"].items():
            print(f"crowding {level}: " + " ".join(f"{k} {m[k]:.4f}" for k in TABLE_KEYS))


if __name__ == "__main__":
    _main()
