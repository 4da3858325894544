"""The bottom-up parser's second step on SynthCrowd: fine-tuning through the differentiable matching, with seeds.

The paper (Zhou et al., CVPR 2021, §3.4 and Table 5) trains without the matching first, then fine-tunes "the whole
model for another 50 epochs with a fixed learning rate" with the matching loss, and reports that back-propagating
grouping errors raises AP^p_50 from 37.6-37.9 (greedy matchings) to 39.0 on MHP v2 val. Here, with
:func:`hparse.experiments.runner.run_variants` and one record per variant,
``results/<profile>/mg_parser/stage2_<variant>.json``:

- ``baseline``: stage 1 only (:func:`hparse.recipes.mg_parser_recipe`, ``stage=1``);
- ``finetuned``: stage 1 + 2, each seed's stage-1 run fine-tuned with the matching loss (``stage=2``, from
  ``<out_root>/<profile>/baseline/seed<k>/checkpoint.pt``);
- ``finetuned_no_matching``: the same fine-tuning without the matching loss (``stage=2, matching_loss=False``), the
  control that separates "trained longer at a low rate" from "trained through the matching".

Every record holds AP^p_50, AP^p_vol, PCP_50 (the evaluator's) and the **limb assignment accuracy**
(:func:`hparse.models.mg_parser.limb_assignment_accuracy`: of the ground-truth limbs whose two joints were detected,
the fraction the matching paired; and its precision) per seed, with their mean and spread over seeds. A summary,
``stage2_summary.json``, puts the variants beside the paper's Table 5 and says, by the runner's one rule
(:func:`~hparse.experiments.runner.exceeds_spread`), whether each difference exceeds the seeds' spread.

Choices written down:

- The cpu profile starts both arms from the shipped SynthCrowd backbone (its recipe's ``backbone_weights``, as the
  top-down methods'; :data:`PROFILE_FLAGS` adds nothing): from random weights the cpu stage 1 detects no keypoint
  above the paper's 0.7 and predicts no person (``results/cpu/mg_parser/train_synth.json``: 0 people on 100 val
  images; its Hough scores peak near 0.4), leaving nothing to group. Whether the pretrained backbone is enough
  within the recipe's 1500 steps is for the run to show: the records keep ``num_pred_persons``, and a stage 1 that
  predicts nobody makes the comparison empty.
- Stage 2 needs each seed's stage-1 checkpoint: the baseline variant runs first, and its run folders must still be
  there (a baseline seed reused from its record alone has no checkpoint; the command then says so).

Run (the cpu profile takes about 13 minutes per stage-1 seed and 5 per fine-tuning, on one CPU thread)::

    python -m hparse.experiments.mg_stage2 --profile cpu              # seeds 0, 1, 2
    python -m hparse.experiments.mg_stage2 --profile smoke --seeds 0  # seconds: the plumbing

Finished runs in ``--out-root`` are reused, so the command can be rerun at any time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.checkpoint import CHECKPOINT_NAME, load_model
from ..engine.finetune import load_weights
from ..engine.profiles import Profile, get_device, get_profile
from ..engine.results import write_result
from ..engine.trainer import train
from ..models import build_model
from ..models.mg_parser import limb_assignment_accuracy
from ..recipes import mg_parser_recipe, with_iterations
from .runner import SEEDS, add_run_arguments, exceeds_spread, run_folder, run_variants, synth_splits

__all__ = ["RECORD_PREFIX", "VARIANTS", "PROFILE_FLAGS", "PAPER_TABLE5", "KEYS", "variants", "stage2_ablation",
           "train_stage2"]

RECORD_PREFIX = "mg_parser/stage2_"
#: Flags both arms get at a profile (module docstring).
PROFILE_FLAGS: dict[str, dict] = {}
#: The variants, in order; ``init`` is filled in by :func:`variants` (each seed's baseline run).
VARIANTS: tuple[tuple[str, dict], ...] = (
    ("baseline", {}),
    ("finetuned", {"stage": 2}),
    ("finetuned_no_matching", {"stage": 2, "matching_loss": False}),
)
#: The metrics compared (the summary keeps each one's mean, spread and per-seed values).
KEYS = ("APp50", "APpvol", "PCP50", "mIoU", "limb_accuracy", "limb_precision", "num_pred_persons")
#: The paper's Table 5 (MHP v2 val, as fractions): the two greedy matchings of its references [39] and [4], and the
#: differentiable matching trained end to end (its mAP^pose column, 63.9 / 64.3 / 65.8, is not measured here).
PAPER_TABLE5 = {
    "greedy matching [39]": {"APp50": 0.376, "APpvol": 0.431, "PCP50": 0.408, "mIoU": 0.408},
    "greedy matching [4]": {"APp50": 0.379, "APpvol": 0.432, "PCP50": 0.406, "mIoU": 0.410},
    "differentiable matching": {"APp50": 0.390, "APpvol": 0.443, "PCP50": 0.423, "mIoU": 0.414},
}


def variants(profile: Profile, out_root: str | Path, names: Sequence[str] | None = None) -> list[tuple[str, dict]]:
    """The ``(name, flags)`` of :data:`VARIANTS` at ``profile``: :data:`PROFILE_FLAGS` added to each, and the
    fine-tuning ones started from ``<out_root>/<profile>/baseline/seed{seed}/checkpoint.pt``."""
    init = str(Path(out_root) / profile.name / "baseline" / "seed{seed}" / CHECKPOINT_NAME)  # as runner.run_folder
    out = []
    for name, flags in VARIANTS:
        if names is not None and name not in names:
            continue
        flags = {**PROFILE_FLAGS.get(profile.name, {}), **flags}
        if flags.get("stage") == 2:
            flags["init"] = init
        out.append((name, flags))
    return out


def _add_limb_accuracy(profile: Profile, out_root: Path, val_images: int | None, device: torch.device):
    """An ``on_run`` callback: add the limb assignment accuracy of the run just finished to its metrics (in place,
    before the runner writes the record). Seeds recorded earlier already hold it."""

    def on_run(variant: str, seed: int, metrics: dict) -> None:
        if "limb_accuracy" in metrics:
            return
        folder = run_folder(out_root, profile, variant, seed)
        model, _ = load_model(folder / CHECKPOINT_NAME, device=device)
        plan = mg_parser_recipe(profile)
        _, val_set = synth_splits(plan["data"], val_images=val_images)
        metrics.update(limb_assignment_accuracy(model, val_set, device=device))
        print(f"{variant} seed {seed}: APp50 {metrics.get('APp50', 0):.4f} APpvol {metrics.get('APpvol', 0):.4f} "
              f"PCP50 {metrics.get('PCP50', 0):.4f} limb accuracy {metrics['limb_accuracy']:.4f}", flush=True)

    return on_run


def _spread(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    return {"mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}


def stage2_ablation(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
                    iterations: int | None = None, names: Sequence[str] | None = None,
                    out_root: str | Path = "runs/mg_stage2", val_images: int | None = None, write: bool = True,
                    force: bool = False) -> dict:
    """Train and evaluate the variants with ``seeds`` (reusing finished runs); one record per variant and a summary.

    ``iterations`` overrides stage 1's steps (stage 2 keeps a third of them, as the recipe does).

    Returns:
        ``{"variants": {name: record metrics}, "summary": {...}}`` (the summary as written to
        ``results/<profile>/mg_parser/stage2_summary.json``: per key, each variant's mean, spread and per-seed
        values, and for each fine-tuned variant whether its difference from the baseline exceeds the spread).
    """
    device = get_device(device)
    out_root = Path(out_root)
    chosen = variants(profile, out_root, names)
    started = time.perf_counter()
    on_run = _add_limb_accuracy(profile, out_root, val_images, device)
    records = {}
    for name, flags in chosen:
        steps = None
        if iterations is not None:
            steps = max(1, iterations // 3) if flags.get("stage") == 2 else iterations
        if flags.get("stage") == 2:
            for seed in seeds:
                path = Path(flags["init"].format(seed=seed))
                if not path.exists():
                    raise FileNotFoundError(
                        f"{name} seed {seed} fine-tunes {path}, which does not exist: run the baseline variant with "
                        f"this seed and --out-root first (a baseline seed reused from its record alone has no "
                        f"checkpoint; retrain it with a fresh --out-root)")
        records.update(run_variants("mg_parser", [(name, flags)], seeds, profile, record_prefix=RECORD_PREFIX,
                                    out_root=out_root, iterations=steps, device=device, val_images=val_images,
                                    write=write, force=force, on_run=on_run,
                                    notes=f"bottom-up parser, two-step schedule (§3.4), variant {name!r}"))
    summary = _summary(records)
    if write and len(records) > 1:
        config = {"variants": {name: flags for name, flags in chosen}, "seeds": list(seeds), "iterations": iterations,
                  "val_images": val_images, "keys": list(KEYS), "rule": "a difference is real when the gap between "
                  "the means exceeds the sum of the two standard deviations over seeds (runner.exceeds_spread)"}
        write_result(f"{RECORD_PREFIX}summary", summary, profile=profile.name, config=config,
                     wall_time_s=time.perf_counter() - started, device=device, force=True,
                     notes="stage 1 only against stage 1 + 2 (with and without the matching loss); the paper's "
                           "Table 5 (MHP v2 val) beside")
    return {"variants": records, "summary": summary}


def _summary(records: dict[str, dict]) -> dict:
    """Per key: each variant's mean, spread and per-seed values; each fine-tuned variant against the baseline."""
    table = {}
    for key in KEYS:
        row = {}
        for name, record in records.items():
            values = [m[key] for m in record["per_seed"].values() if isinstance(m.get(key), (int, float))]
            if values:
                row[name] = _spread(values)
        table[key] = row
    verdicts = {}
    if "baseline" in records:
        for name in records:
            if name == "baseline":
                continue
            verdicts[name] = {}
            for key, row in table.items():
                if name in row and "baseline" in row:
                    a = {"mean": {key: row[name]["mean"]}, "std": {key: row[name]["std"]}}
                    b = {"mean": {key: row["baseline"]["mean"]}, "std": {key: row["baseline"]["std"]}}
                    verdicts[name][key] = {"difference": row[name]["mean"] - row["baseline"]["mean"],
                                           "exceeds_spread": exceeds_spread(a, b, key)}
    return {"table": table, "against_baseline": verdicts, "paper_table5": PAPER_TABLE5}


# ------------------------------------------------------------------------------------- the command's entry


def train_stage2(init: str | Path, train_set=None, eval_dataset=None, *, profile: Profile | str | None = None,
                 dataset: str = "synth", out_dir: str | Path = "runs/mg_parser_stage2", seed: int = 0,
                 device: torch.device | str | None = None, iterations: int | None = None, matching_loss: bool = True,
                 result_name: str | None = None, force_record: bool = False, resume: bool = True,
                 progress: bool = True, **train_overrides) -> dict:
    """Stage 2 of §3.4 from a stage-1 checkpoint: what ``hparse train --model mg_parser --stage 2 --init CKPT`` runs.

    The model is the checkpoint's own (its ``model_config``: same architecture and flags, so a stage 1 trained with
    any backbone or flag fine-tunes as it was built) with ``matching_loss`` switched on, its weights loaded by
    :func:`hparse.engine.finetune.load_weights`; the schedule is :func:`hparse.recipes.mg_parser_recipe` with
    ``stage=2`` (a third of stage 1's steps at a fixed low rate), ``train_overrides`` on top (``batch_size``, ``lr``,
    ``num_workers``...).

    Args:
        init: the stage-1 checkpoint file or run folder.
        train_set, eval_dataset: data-contract datasets; default SynthCrowd train and val at the recipe's sizes (for
            another dataset pass them).
        profile: run sizes (default ``$HPARSE_PROFILE``, else by device). dataset: the recipe's dataset name.
        out_dir: the stage-2 run folder. seed, device, resume, progress: as :func:`hparse.engine.train`.
        iterations: override the stage-2 steps. matching_loss: ``False`` fine-tunes without it (the control).
        result_name, force_record: also write ``results/<profile>/<result_name>.json``.

    Returns:
        :func:`hparse.engine.train`'s summary, plus ``"init"`` (what was loaded).
    """
    from ..engine.checkpoint import load_checkpoint

    profile = get_profile(profile) if not isinstance(profile, Profile) else profile
    device = get_device(device)
    plan = mg_parser_recipe(profile, dataset, stage=2, init=str(init), matching_loss=matching_loss)
    if iterations is not None:
        plan = with_iterations(plan, iterations)
    train_cfg = {**plan["train"], **train_overrides}
    source = Path(init)
    built = dict(load_checkpoint(source / CHECKPOINT_NAME if source.is_dir() else source).get("model_config") or {})
    if built and built.get("name") != "mg_parser":
        raise ValueError(f"{init} is a checkpoint of {built.get('name')!r}, not of mg_parser")
    if built:
        num_classes = built.pop("num_classes")
        built.pop("name")
        model_cfg = {**built, "matching_loss": matching_loss}
    else:
        model_cfg, num_classes = plan["model"], None
    if train_set is None:
        if dataset != "synth":
            raise ValueError(f"pass train_set (and eval_dataset) for dataset {dataset!r}; only SynthCrowd is drawn "
                             "here")
        train_set, eval_dataset = synth_splits(plan["data"])
    num_classes = num_classes or train_set.labels.num_classes
    model_cfg = {**model_cfg, "backbone_weights": None}  # the checkpoint's weights replace any starting point
    torch.manual_seed(seed)
    model = build_model("mg_parser", num_classes=num_classes, **model_cfg)
    loaded = load_weights(model, init)
    config = {"model": {"name": "mg_parser", **model_cfg}, "train": train_cfg, "dataset": dataset, "stage": 2,
              "init": {"checkpoint": loaded["checkpoint"], "step": loaded["step"]}, "seed": seed,
              "train_images": len(train_set), "val_images": len(eval_dataset) if eval_dataset is not None else 0}
    summary = train(model, train_set, eval_dataset=eval_dataset, out_dir=out_dir, seed=seed, device=device,
                    resume=resume, progress=progress, result_name=result_name, profile=profile.name, config=config,
                    force_record=force_record, **train_cfg)
    summary["init"] = loaded
    return summary


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, "runs/mg_stage2")
    parser.add_argument("--variants", nargs="*", default=None, help=f"subset of {[n for n, _ in VARIANTS]}")
    parser.add_argument("--val-images", type=int, default=None, help="override the profile's val images")
    args = parser.parse_args(argv)
    result = stage2_ablation(get_profile(args.profile), args.device, seeds=args.seeds, iterations=args.iterations,
                             names=args.variants, out_root=args.out_root, val_images=args.val_images,
                             force=args.force)
    for key, row in result["summary"]["table"].items():
        print(key, {name: f"{v['mean']:.4f} ± {v['std']:.4f}" for name, v in row.items()})
    for name, verdict in result["summary"]["against_baseline"].items():
        print(name, "vs baseline:", {k: f"{v['difference']:+.4f}" + (" (exceeds spread)" if v["exceeds_spread"]
                                                                   else "") for k, v in verdict.items()})


if __name__ == "__main__":
    _main()
