"""Table 5 of the RoI attention paper on SynthCrowd with several seeds, and how attention fares as crowds get denser.

:func:`ablation` trains the framework without attention and with each of the paper's four fusions
(``dot_after_conv3_sum``, ``dot_after_conv4_sum``, ``concat_after_conv4_trans``, ``concat_after_conv4``; Table 5 of
Qin et al., BMVC 2019, plus "w/o attention" of Table 1) with the same recipe (:func:`hparse.recipes.recipe`), data and
schedule, each with several seeds, through :func:`hparse.experiments.runner.run_variants`; it writes one record per
variant, ``results/<profile>/attention_rcnn/ablation_<variant>.json``, with each seed's metrics, their mean and spread
(and the first seed's training log and predictions beside it, :func:`~hparse.experiments.runner.save_artefacts`).

:func:`crowding_sweep` evaluates every seed's model of each variant (by default with and without attention) on
SynthCrowd val rendered at several ``crowding`` values -- the same people moved closer together -- and writes AP^p and
AP^r against crowding, per seed and as mean and spread over seeds, to
``results/<profile>/attention_rcnn/crowding.json``. The models are the ablation's runs (reused from their run
folders; a missing one is trained), so running the ablation first makes the sweep cheap.

:func:`roi_noise_sweep` asks the attention branch's own question without the detector in the way: every ground-truth
person's box is parsed (oracle RoIs), and the 56x56 labels are scored against that person only -- how many cells of
*other* people inside the box get a part label (``other_leakage``, the "noise from other instances" of Sec. 3.1), how
many of the person's own cells do (``own_recall``), and the part mIoU inside the boxes (``roi_mIoU``). It writes
``results/<profile>/attention_rcnn/roi_noise.json`` in the sweep's format. Detection AP needs a trained detector; this
measure needs only a trained parsing branch, so it can tell the variants apart earlier in training.

Run folders (checkpoints, logs) are ``<out_root>/<profile>/<variant>/seed<k>``; finished runs are reused::

    python -m hparse.experiments.attention_ablation --profile cpu                 # Table 5, seeds 0 1 2
    python -m hparse.experiments.attention_ablation --profile cpu --crowding      # then the crowding sweep
    python -m hparse.experiments.attention_ablation --profile cpu --roi-noise     # and the oracle-box RoI measure
    python -m hparse.experiments.attention_ablation --profile cpu --seeds 0 1 2 3 --variants none concat_after_conv4
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data import SynthCrowd
from ..data.contract import IGNORE_INDEX
from ..engine.profiles import Profile, get_device, get_profile
from ..engine.results import find_results, write_result
from ..engine.trainer import evaluate
from ..metrics.semantic import SemanticIoU
from ..models.attention_rcnn import ATTENTION_VARIANTS
from ..models.targets import parsing_targets, sample_label_maps
from ..recipes import recipe as method_recipe
from ..recipes import with_iterations
from . import runner
from .runner import SEEDS, add_run_arguments, run_folder, run_variants, train_seed

__all__ = ["VARIANTS", "CROWDINGS", "HEADLINE", "SEEDS", "RECORD_PREFIX", "OUT_ROOT", "variant_key", "synth_splits",
           "seed_model", "ablation", "saved_ablation", "crowding_sweep", "other_person_fraction", "roi_noise",
           "roi_noise_sweep", "ROI_NOISE_KEYS", "saved_sweep", "sweep_spread"]

VARIANTS = ATTENTION_VARIANTS
CROWDINGS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRAIN_CROWDING = 0.5  # SynthCrowd's default: the models train on moderately crowded scenes
#: The metrics recorded per crowding (Table 5 reports AP^r; AP^p measures each person's parsing).
HEADLINE = ("APp50", "APpvol", "APr50", "APrvol", "mIoU", "PCP50")
RECORD_PREFIX = "attention_rcnn/ablation_"
OUT_ROOT = "runs/attention_ablation"


def variant_key(attention: str | None) -> str:
    """File-name key of a variant: its Table 5 name, or ``"none"`` for the model without attention."""
    return "none" if attention is None else attention


def _attention(key: str) -> str | None:
    return None if key == "none" else key


def synth_splits(profile: Profile, crowding: float = TRAIN_CROWDING,
                 val_images: int | None = None) -> tuple[SynthCrowd, SynthCrowd]:
    """SynthCrowd train and val at the attention recipe's data sizes (val at ``crowding``; train at the default).

    The same images for every seed and variant (:func:`hparse.experiments.runner.synth_splits`); ``val_images``
    (default: the recipe's) takes the first images of the val split.
    """
    data = method_recipe("attention_rcnn", profile)["data"]
    return runner.synth_splits(data, crowding=TRAIN_CROWDING, val_crowding=crowding, val_images=val_images)


def seed_model(profile: Profile, attention: str | None, seed: int = 0, device: torch.device | str | None = None, *,
               iterations: int | None = None, out_root: str | Path = OUT_ROOT, val_images: int | None = None
               ) -> tuple[torch.nn.Module, dict]:
    """The trained model of one ``(variant, seed)`` run of the ablation (reused from its run folder, else trained).

    Returns:
        ``(model in eval mode, metrics)``.
    """
    key = variant_key(attention)
    metrics, model = train_seed("attention_rcnn", profile, {"attention": attention}, seed,
                                run_folder(out_root, profile, key, seed), iterations=iterations, device=device,
                                val_images=val_images, variant=key, keep_model=True)
    return model, metrics


def _notes(what: str, profile: Profile, device: torch.device) -> str:
    return (f"{what} on SynthCrowd, profile {profile.name}, device {device.type}"
            + ("" if device.type == "cuda" else " (CPU run: no GPU was used)"))


def _check(variants: Sequence[str | None]) -> list[str | None]:
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; Table 5 has {list(VARIANTS)}")
    return variants


def ablation(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
             variants: Sequence[str | None] | None = None, iterations: int | None = None,
             out_root: str | Path = OUT_ROOT, write: bool = True, force: bool = False,
             val_images: int | None = None, verbose: bool = False) -> dict[str, dict]:
    """Table 5 (+ "w/o attention") on SynthCrowd: train and evaluate each variant with ``seeds``, one record each.

    Args:
        profile: run sizes.
        device: default CUDA when available.
        seeds: the seeds of every variant (model init, data order, augmentation).
        variants: subset of :data:`VARIANTS` (default: all five).
        iterations: override the recipe's iterations (the record holds the value used).
        out_root: run folders; finished runs are reused, interrupted ones resume.
        write: write ``results/<profile>/attention_rcnn/ablation_<variant>.json`` (and the first seed's artefacts).
        force: let a record replace one of another config or of a longer run.
        val_images: val images to evaluate on (default: the recipe's).
        verbose: print each run's headline numbers.

    Returns:
        ``{variant key: metrics}`` with ``per_seed``, ``mean``, ``std``, ``min``, ``max``, ``seeds``, ``iterations``.
    """
    variants = _check(VARIANTS if variants is None else variants)
    report = (lambda name, seed, m: print(f"{name} seed {seed}: mIoU {m.get('mIoU', 0):.4f} APp50 "
                                          f"{m.get('APp50', 0):.4f} APr50 {m.get('APr50', 0):.4f}", flush=True)
              ) if verbose else None
    return run_variants("attention_rcnn", [(variant_key(v), {"attention": v}) for v in variants], seeds, profile,
                        record_prefix=RECORD_PREFIX, out_root=out_root, iterations=iterations, device=device,
                        val_images=val_images, write=write, force=force, on_run=report,
                        notes="RoI attention Table 5 ablation")


def saved_ablation(prefer: Sequence[str] = ("gpu", "cpu")) -> dict | None:
    """Saved ablation records: the first profile of ``prefer`` holding a results file for *every* variant.

    A table never mixes profiles, so a profile with some variants missing is skipped. Records of the older one-seed
    format (no ``per_seed``) are returned as they are; read them with
    :func:`hparse.experiments.runner.record_spread`.

    Returns:
        ``{"profile": name, "records": {variant key: record}}`` (records as written by
        :func:`hparse.engine.write_result`: metrics, config, provenance), or ``None`` when no profile has them all.
    """
    for profile in prefer:
        records = {variant_key(v): find_results(f"{RECORD_PREFIX}{variant_key(v)}", profiles=(profile,))
                   for v in VARIANTS}
        if all(record is not None for record in records.values()):
            return {"profile": profile, "records": records}
    return None


def other_person_fraction(sample: dict) -> torch.Tensor:
    """For each person of a data-contract sample, the fraction of its box's pixels that show *other* people.

    This is the "noise from other instances" inside a proposal that the attention branch is meant to suppress
    (Sec. 1, Sec. 3.1); it grows with SynthCrowd's ``crowding``.

    Returns:
        float32 (N,) fractions in [0, 1] (0 for a box without pixels).
    """
    instances, boxes = sample["instances"], sample["boxes"]
    height, width = instances.shape
    if len(boxes) == 0:
        return torch.zeros(0)
    ys = torch.arange(height, dtype=torch.float32)[None, :, None] + 0.5  # pixel centres
    xs = torch.arange(width, dtype=torch.float32)[None, None, :] + 0.5
    b = boxes.float()[:, :, None, None]
    inside = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])  # (N, H, W)
    ids = torch.arange(1, len(boxes) + 1)[:, None, None]
    others = inside & (instances[None] > 0) & (instances[None] != ids)
    area = inside.flatten(1).sum(1).clamp(min=1)
    return others.flatten(1).sum(1).float() / area


def _crowded_val_sets(profile: Profile, crowdings: Sequence[float], val_images: int | None
                      ) -> tuple[list[SynthCrowd], list[float]]:
    """The val split rendered at each crowding, and the mean share of a person's box showing other people in each."""
    val_sets = [synth_splits(profile, crowding, val_images)[1] for crowding in crowdings]
    noise = []
    for val_set in val_sets:
        fractions = torch.cat([other_person_fraction(val_set[i]) for i in range(len(val_set))])
        noise.append(float(fractions.mean()) if len(fractions) else 0.0)
    return val_sets, noise


def _mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the finite values (``None`` when there are none; std 0 for one)."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _sweep(profile: Profile, device: torch.device | str | None, variants: Sequence[str | None],
           crowdings: Sequence[float], seeds: Sequence[int], iterations: int | None, out_root: str | Path,
           val_images: int | None, names: Sequence[str],
           score: Callable[[torch.nn.Module, SynthCrowd], dict]) -> tuple[dict, dict]:
    """Score every seed's model of each variant on the val split at each crowding.

    Returns:
        ``(result, models)``: ``result = {"crowding", "other_person_fraction", "seeds", "variants": {key: {name:
        [mean per crowding]}}, "std": {key: {name: [std per crowding]}}, "per_seed": {key: {seed: {name: [...]}}}}``
        and ``models``, the config of each variant's runs (for the record).
    """
    device = get_device(device)
    crowdings = [float(c) for c in crowdings]
    variants = _check(variants)
    val_sets, noise = _crowded_val_sets(profile, crowdings, val_images)
    per_seed: dict[str, dict[str, dict]] = {}
    models: dict[str, dict] = {}
    for attention in variants:
        key = variant_key(attention)
        per_seed[key] = {}
        trained = []
        for seed in seeds:
            model, metrics = seed_model(profile, attention, seed, device, iterations=iterations, out_root=out_root,
                                        val_images=val_images)
            trained.append(int(metrics.get("iterations") or 0))
            rows: dict[str, list] = {name: [] for name in names}
            for val_set in val_sets:
                scores = score(model, val_set)
                for name in names:
                    rows[name].append(scores.get(name))
            per_seed[key][str(seed)] = rows
            del model
        plan = method_recipe("attention_rcnn", profile, attention=attention)
        if iterations is not None:
            plan = with_iterations(plan, iterations)
        models[key] = {"model": plan["model"], "train": {**plan["train"], "iterations": min(trained)},
                       "data": plan["data"], "seeds": list(seeds)}
    means: dict[str, dict[str, list]] = {}
    stds: dict[str, dict[str, list]] = {}
    for key, by_seed in per_seed.items():
        means[key], stds[key] = {}, {}
        for name in names:
            pairs = [_mean_std([rows[name][i] for rows in by_seed.values()]) for i in range(len(crowdings))]
            means[key][name] = [m for m, _ in pairs]
            stds[key][name] = [s for _, s in pairs]
    result = {"crowding": crowdings, "other_person_fraction": noise, "seeds": list(seeds), "variants": means,
              "std": stds, "per_seed": per_seed}
    return result, models


def saved_sweep(name: str, prefer: Sequence[str] = ("gpu", "cpu")) -> dict | None:
    """A saved sweep record (``"crowding"`` or ``"roi_noise"``) of the first profile in ``prefer`` that has one.

    Returns:
        ``{"sweep": its metrics, "profile", "device", "iterations": the fewest training iterations of its models,
        "seeds": its seeds, "source": a sentence naming the file and run}``, or ``None``. A record of the older
        one-seed format has no ``std``/``per_seed``; :func:`sweep_spread` reads both.
    """
    for profile in prefer:
        record = find_results(f"attention_rcnn/{name}", profiles=(profile,))
        if record is None:
            continue
        trained = {key: cfg["train"]["iterations"] for key, cfg in record["config"].get("models", {}).items()}
        device = record["provenance"]["device"]
        seeds = record["metrics"].get("seeds") or [record["config"].get("seed")]
        source = (f"results/{profile}/attention_rcnn/{name}.json ({record['config']['val_images']} val images per "
                  f"crowding, models of {sorted(set(trained.values())) or '?'} iterations, seeds {seeds}, {device})")
        return {"sweep": record["metrics"], "profile": profile, "device": device, "seeds": seeds,
                "iterations": min(trained.values()) if trained else "?", "source": source}
    return None


def sweep_spread(sweep: dict, key: str, name: str) -> tuple[list, list]:
    """Mean and spread over seeds of ``name`` for variant ``key`` at each crowding of a sweep's metrics; a record of
    the older one-seed format has spread 0."""
    means = sweep["variants"][key][name]
    stds = (sweep.get("std") or {}).get(key, {}).get(name) or [0.0 if m is not None else None for m in means]
    return list(means), list(stds)


def crowding_sweep(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
                   variants: Sequence[str | None] = (None, "concat_after_conv4"),
                   crowdings: Sequence[float] = CROWDINGS, iterations: int | None = None,
                   out_root: str | Path = OUT_ROOT, write: bool = True, force: bool = False,
                   val_images: int | None = None) -> dict:
    """AP^p and AP^r against SynthCrowd's ``crowding``, with and without attention, over seeds.

    Every seed's model of each variant is the ablation's run (trained at the default crowding 0.5, reused from its run
    folder in ``out_root``, trained there if missing) and is evaluated on the val split rendered at every
    ``crowding``; the val images show the same people at the same sizes, moved closer together as ``crowding`` grows.

    Args:
        profile: run sizes.
        device: default CUDA when available.
        seeds: the seeds whose models are evaluated (the ablation's).
        variants: the variants to compare (default: without attention and the paper's final choice).
        crowdings: SynthCrowd crowding values of the val split.
        iterations: the runs' training iterations (as given to :func:`ablation`).
        out_root: run folders shared with :func:`ablation`.
        write: write ``results/<profile>/attention_rcnn/crowding.json``.
        force: let the record replace one of another config or of a longer run.
        val_images: val images per crowding, and of the reused runs (as given to :func:`ablation`).

    Returns:
        ``{"crowding": [...], "other_person_fraction": [...], "seeds": [...], "variants": {key: {metric: [mean per
        crowding]}}, "std": {key: {metric: [std per crowding]}}, "per_seed": {key: {seed: {metric: [...]}}}}``.
    """
    device = get_device(device)
    batch = profile.batch_size
    result, models = _sweep(profile, device, variants, crowdings, seeds, iterations, out_root, val_images, HEADLINE,
                            lambda model, val_set: evaluate(model, val_set, batch_size=batch, device=device))
    if write:
        write_result("attention_rcnn/crowding", result, profile=profile.name, force=force,
                     config={"variants": [variant_key(v) for v in variants], "seeds": list(seeds),
                             "val_images": len(synth_splits(profile, val_images=val_images)[1]),
                             "train_crowding": TRAIN_CROWDING, "models": models},
                     device=device, notes=_notes(f"AP vs crowding, seeds {list(seeds)}", profile, device))
    return result


#: What :func:`roi_noise` reports (fractions).
ROI_NOISE_KEYS = ("other_leakage", "own_recall", "roi_mIoU", "roi_pixel_acc")


@torch.no_grad()
def roi_noise(model: torch.nn.Module, dataset, batch_size: int = 4, device: torch.device | str | None = None) -> dict:
    """Parse every ground-truth person's box and score the labels against that person alone (oracle RoIs).

    For person k with box b the target is :func:`hparse.models.targets.parsing_targets` at the model's output size
    (k's parts, everything else background, ignore kept); the cells of *other* people are those whose instance id is
    neither 0 nor k. Counts are summed over all boxes of ``dataset`` before dividing.

    Returns:
        ``{"other_leakage": share of other-people cells given a part label (lower is better), "own_recall": share
        of k's labelled part cells given a part label, "roi_mIoU": mIoU over all RoI cells with the rule of
        :mod:`hparse.metrics.semantic` (background included, classes absent from targets and labels skipped),
        "roi_pixel_acc": share of labelled cells with the right label, "num_rois",
        "other_cells": how many other-people cells were scored}``.
    """
    device = get_device(device)
    model = model.to(device).eval()
    semantic_iou = None  # the split-wide confusion matrix of hparse.metrics' mIoU, over RoI cells instead of pixels
    leaked = others = recalled = own = rois = 0
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        samples = [s for s in samples if len(s["boxes"])]
        if not samples:
            continue
        boxes = [s["boxes"].to(device) for s in samples]
        maps = model.roi_maps([s["image"].to(device) for s in samples], boxes)
        labels = torch.cat([m["labels"] for m in maps])  # (R, M, M) predicted part labels
        if semantic_iou is None:
            semantic_iou = SemanticIoU(maps[0]["parsing"].shape[1], ignore_index=IGNORE_INDEX)
        ids = [torch.arange(1, len(b) + 1, device=device) for b in boxes]
        instances = [s["instances"].to(device) for s in samples]
        target = parsing_targets([s["semantic"].to(device) for s in samples], instances, boxes, ids,
                                 labels.shape[-1])
        owner = sample_label_maps([i[None] for i in instances], boxes, labels.shape[-1])[:, 0]  # person id per cell
        other = (owner > 0) & (owner != torch.cat(ids).view(-1, 1, 1)) & (target != IGNORE_INDEX)
        mine = (target > 0) & (target != IGNORE_INDEX)
        part = labels > 0
        leaked += int((part & other).sum())
        others += int(other.sum())
        recalled += int((part & mine).sum())
        own += int(mine.sum())
        rois += len(labels)
        semantic_iou.update_checked(labels, target)
    if semantic_iou is None:
        return {key: None for key in ROI_NOISE_KEYS} | {"num_rois": 0, "other_cells": 0}
    inside = semantic_iou.compute()
    return {"other_leakage": leaked / others if others else None, "own_recall": recalled / own if own else None,
            "roi_mIoU": inside["mIoU"], "roi_pixel_acc": inside["pixel_acc"], "num_rois": rois, "other_cells": others}


def roi_noise_sweep(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
                    variants: Sequence[str | None] = (None, "concat_after_conv4"),
                    crowdings: Sequence[float] = CROWDINGS, iterations: int | None = None,
                    out_root: str | Path = OUT_ROOT, write: bool = True, force: bool = False,
                    val_images: int | None = None) -> dict:
    """:func:`roi_noise` of every seed's model of each variant on SynthCrowd val at every ``crowding`` (oracle boxes,
    no detector). Models and arguments as in :func:`crowding_sweep`.

    Returns:
        :func:`crowding_sweep`'s format with the metrics of :data:`ROI_NOISE_KEYS` plus ``num_rois``.
    """
    device = get_device(device)
    batch = profile.batch_size
    result, models = _sweep(profile, device, variants, crowdings, seeds, iterations, out_root, val_images,
                            (*ROI_NOISE_KEYS, "num_rois"),
                            lambda model, val_set: roi_noise(model, val_set, batch, device))
    if write:
        write_result("attention_rcnn/roi_noise", result, profile=profile.name, force=force,
                     config={"variants": [variant_key(v) for v in variants], "seeds": list(seeds),
                             "val_images": len(synth_splits(profile, val_images=val_images)[1]),
                             "train_crowding": TRAIN_CROWDING, "models": models},
                     device=device, notes=_notes(f"Oracle-box RoI parsing against crowding, seeds {list(seeds)}",
                                                 profile, device))
    return result


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, OUT_ROOT)
    parser.add_argument("--variants", nargs="*", default=None,
                        help=f"subset of {[variant_key(v) for v in VARIANTS]} (default: all; the sweeps: none and "
                        "concat_after_conv4)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--crowding", action="store_true", help="run the crowding sweep instead of the ablation")
    what.add_argument("--roi-noise", action="store_true",
                      help="run the oracle-box RoI measure against crowding instead of the ablation")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    keys = {variant_key(v): v for v in VARIANTS}
    if args.variants:
        unknown = [v for v in args.variants if v not in keys]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {list(keys)}")
    chosen = [keys[v] for v in args.variants] if args.variants else None
    common = dict(seeds=args.seeds, iterations=args.iterations, out_root=args.out_root, force=args.force)
    if args.roi_noise or args.crowding:
        run, names = ((roi_noise_sweep, ("other_leakage", "own_recall", "roi_mIoU")) if args.roi_noise
                      else (crowding_sweep, ("APp50", "APr50")))
        result = run(profile, args.device, variants=chosen or (None, "concat_after_conv4"), **common)
        print("crowding", result["crowding"], "seeds", result["seeds"])
        for key, rows in result["variants"].items():
            print(key, {name: [None if m is None else f"{m:.4f} ± {s:.4f}"
                               for m, s in zip(rows[name], result["std"][key][name])] for name in names})
        return
    for key, record in ablation(profile, args.device, variants=chosen, verbose=True, **common).items():
        print(key, {k: f"{record['mean'][k]:.4f} ± {record['std'][k]:.4f}" for k in ("mIoU", "APp50", "APr50", "APrvol")
                    if k in record["mean"]})


if __name__ == "__main__":
    _main()
