"""Variants x seeds: train each variant of a method with several seeds, one record per variant with its spread.

Every ablation of the book is "the same recipe, one flag changed, several seeds". :func:`run_variants` does that once
for every method (Parsing R-CNN's Table 6 ladder, the RoI attention Table 5, the methods still to come):

- each ``(variant, seed)`` is a run folder ``<out_root>/<profile>/<variant>/seed<k>`` trained with
  :func:`hparse.engine.train` from :func:`hparse.recipes.recipe` with the variant's flags;
- a run whose folder already holds its record (``result.json`` of the same config and at least the iterations asked
  for) is **reused**, not retrained; an interrupted one resumes from its checkpoint;
- each variant gets ``results/<profile>/<record_prefix><variant>.json`` with ``metrics = {"per_seed": {seed:
  metrics}, "mean": ..., "std": ..., "seeds": [...], "iterations": N}``;
- :func:`exceeds_spread` is the one rule by which the book calls a difference between two variants real: the gap
  between the means must exceed the sum of their standard deviations over seeds.

The seed sets the model's initialisation, the order of the training images and their augmentation; the training and
validation images themselves are the same for every seed and variant (SynthCrowd ``train`` and ``val`` at seed 0),
so seeds measure the spread of *training*, and the variants are compared on one validation set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data import SynthCrowd
from ..engine.checkpoint import CHECKPOINT_NAME, load_model
from ..engine.profiles import Profile, get_device, seed_everything
from ..engine.results import RUN_RECORD_NAME, config_differences, write_result
from ..engine.trainer import train
from ..models import build_model
from ..recipes import recipe as method_recipe
from ..recipes import with_iterations

__all__ = ["SEEDS", "run_variants", "train_seed", "summarise", "exceeds_spread", "synth_splits", "SUMMARY_KEYS",
           "run_folder"]

#: The seeds of every ablation unless asked otherwise.
SEEDS = (0, 1, 2)
#: The metrics summarised over seeds (every other number stays in ``per_seed``).
SUMMARY_KEYS = ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol", "train_images_per_s")


def synth_splits(data: dict, crowding: float = 0.5, val_crowding: float | None = None,
                 val_images: int | None = None) -> tuple[SynthCrowd, SynthCrowd]:
    """SynthCrowd train and val at a recipe's ``data`` sizes (seed 0 for both: the same images for every run)."""
    common = dict(image_size=data["image_size"], min_people=1, max_people=data["max_people"], seed=0)
    return (SynthCrowd("train", num_images=data["train_images"], crowding=crowding, **common),
            SynthCrowd("val", num_images=val_images or data["val_images"],
                       crowding=crowding if val_crowding is None else val_crowding, **common))


def run_folder(out_root: str | Path, profile: Profile, variant: str, seed: int) -> Path:
    """``<out_root>/<profile>/<variant>/seed<seed>``: where one run of an ablation lives."""
    return Path(out_root) / profile.name / variant / f"seed{seed}"


def _saved(out_dir: Path, config: dict, iterations: int) -> dict | None:
    """The metrics of a finished run in ``out_dir`` of the same config and at least ``iterations`` steps, else None."""
    path = out_dir / RUN_RECORD_NAME
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    metrics = record.get("metrics") or {}
    if config_differences(record.get("config") or {}, json.loads(json.dumps(config, default=str))):
        return None
    if (metrics.get("iterations") or 0) < iterations or "mIoU" not in metrics:
        return None
    return metrics


def train_seed(method: str, profile: Profile, flags: dict, seed: int, out_dir: str | Path, *,
               iterations: int | None = None, device: torch.device | str | None = None, val_images: int | None = None,
               variant: str | None = None, reuse: bool = True, keep_model: bool = False):
    """Train one ``(variant, seed)`` run of ``method`` with the profile's recipe and ``flags``; evaluate it on val.

    Returns ``(metrics, model)``; ``model`` is ``None`` when the run was reused from its record and ``keep_model`` is
    false (with ``keep_model`` a reused run's model is rebuilt from its checkpoint, in eval mode).
    """
    device = get_device(device)
    plan = method_recipe(method, profile, **flags)
    if iterations is not None:
        plan = with_iterations(plan, iterations)
    train_cfg, data = plan["train"], plan["data"]
    train_set, val_set = synth_splits(data, val_images=val_images)
    config = {"variant": variant, "flags": flags, "model": {"name": method, **plan["model"]}, "train": train_cfg,
              "dataset": "synth", "data": data, "val_images": len(val_set), "seed": seed}
    out_dir = Path(out_dir)
    saved = _saved(out_dir, config, train_cfg["iterations"]) if reuse else None
    if saved is not None:
        if not keep_model:
            return saved, None
        model, _ = load_model(out_dir / CHECKPOINT_NAME, device=device)
        return saved, model
    seed_everything(seed)
    model = build_model(method, num_classes=train_set.labels.num_classes, **plan["model"])
    summary = train(model, train_set, eval_dataset=val_set, out_dir=out_dir, seed=seed, device=device,
                    progress=False, config=config, profile=profile.name, **train_cfg)
    model.eval()
    metrics = {**(summary["metrics"] or {}), "train_images_per_s": summary["images_per_s"],
               "iterations": summary["step"], "wall_time_s": summary["wall_time_s"]}
    return metrics, model


def summarise(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max over seeds of each of :data:`SUMMARY_KEYS` present."""
    out: dict[str, dict[str, float]] = {"mean": {}, "std": {}, "min": {}, "max": {}}
    for key in SUMMARY_KEYS:
        values = [m[key] for m in per_seed.values() if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])]
        if not values:
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out["mean"][key], out["std"][key] = mean, math.sqrt(var)
        out["min"][key], out["max"][key] = min(values), max(values)
    return out


def exceeds_spread(a: dict, b: dict, key: str) -> bool:
    """Whether the means of ``key`` in two variant records (``metrics`` of :func:`run_variants`) differ by more than
    the sum of their standard deviations over seeds: the one rule by which the book calls a difference real."""
    gap = abs(a["mean"][key] - b["mean"][key])
    return gap > a["std"][key] + b["std"][key]


def run_variants(method: str, variants: Sequence[tuple[str, dict]], seeds: Sequence[int], profile: Profile, *,
                 record_prefix: str, out_root: str | Path, iterations: int | None = None,
                 device: torch.device | str | None = None, val_images: int | None = None, write: bool = True,
                 force: bool = False, notes: str = "", on_run: Callable[[str, int, dict], None] | None = None,
                 ) -> dict[str, dict]:
    """Train every ``(variant, seed)`` (reusing finished runs) and write one record per variant.

    Args:
        method: a ``build_model`` name with a recipe (``"parsing_rcnn"``, ``"attention_rcnn"``, ...).
        variants: ``(name, flags)`` pairs; ``flags`` go to :func:`hparse.recipes.recipe`.
        seeds: the seeds of every variant.
        profile: run sizes.
        record_prefix: the records are ``results/<profile>/<record_prefix><name>.json``.
        out_root: run folders, :func:`run_folder`.
        iterations: override the recipe's steps.
        write: write the records (a record is written after each variant, so an interrupted ablation keeps the
            variants it finished).
        force: let a record replace one of another config or of a longer run.
        on_run: called as ``on_run(variant, seed, metrics)`` after each run (progress reports).

    Returns:
        ``{variant: metrics}`` with ``metrics`` as written (``per_seed``, ``mean``, ``std``, ``min``, ``max``,
        ``seeds``, ``iterations``).
    """
    device = get_device(device)
    results = {}
    for name, flags in variants:
        per_seed = {}
        for seed in seeds:
            metrics, _ = train_seed(method, profile, flags, seed, run_folder(out_root, profile, name, seed),
                                    iterations=iterations, device=device, val_images=val_images, variant=name)
            per_seed[seed] = metrics
            if on_run is not None:
                on_run(name, seed, metrics)
        record = {**summarise(per_seed), "per_seed": {str(s): m for s, m in per_seed.items()}, "seeds": list(seeds),
                  "iterations": min(int(m.get("iterations") or 0) for m in per_seed.values())}
        plan = method_recipe(method, profile, **flags)
        if iterations is not None:
            plan = with_iterations(plan, iterations)
        config = {"variant": name, "flags": flags, "model": {"name": method, **plan["model"]}, "train": plan["train"],
                  "data": plan["data"], "val_images": val_images or plan["data"]["val_images"], "seeds": list(seeds)}
        if write:
            wall = sum(float(m.get("wall_time_s") or 0.0) for m in per_seed.values())
            write_result(f"{record_prefix}{name}", record, profile=profile.name, config=config, wall_time_s=wall,
                         device=device, force=force,
                         notes=(notes or f"{method} variant {name!r}") + f", seeds {list(seeds)}, profile "
                         f"{profile.name}, device {device.type}" + ("" if device.type == "cuda" else
                                                                    " (CPU run: no GPU was used)"))
        results[name] = record
    return results
