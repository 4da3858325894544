"""Table 5 of the RoI attention paper on SynthCrowd, and how attention fares as crowds get denser.

:func:`ablation` trains the framework without attention and with each of the paper's four fusions
(``dot_after_conv3_sum``, ``dot_after_conv4_sum``, ``concat_after_conv4_trans``, ``concat_after_conv4``; Table 5 of
Qin et al., BMVC 2019, plus "w/o attention" of Table 1) with the same data, seed, schedule and detector, evaluates
each on SynthCrowd val, and writes ``results/<profile>/attention_rcnn/ablation_<variant>.json``.

:func:`crowding_sweep` evaluates trained models (by default with and without attention) on SynthCrowd val rendered at
several ``crowding`` values -- the same people moved closer together -- and writes AP^p50 and AP^r50 against crowding
to ``results/<profile>/attention_rcnn/crowding.json``. It reuses the ablation's checkpoints when they exist (the
trainer resumes a finished run without training again), so running the ablation first makes the sweep cheap.

:func:`roi_noise_sweep` asks the attention branch's own question without the detector in the way: every ground-truth
person's box is parsed (oracle RoIs), and the 56x56 labels are scored against that person only -- how many cells of
*other* people inside the box get a part label (``other_leakage``, the "noise from other instances" of Sec. 3.1), how
many of the person's own cells do (``own_recall``), and the part mIoU inside the boxes (``roi_mIoU``). It writes
``results/<profile>/attention_rcnn/roi_noise.json``. Detection AP needs a trained detector; this measure needs only a
trained parsing branch, so it can tell the variants apart earlier in training.

Run folders (checkpoints, logs) are ``<out_root>/<profile>/<variant>``::

    python -m hparse.experiments.attention_ablation --profile cpu             # Table 5 at the cpu profile's size
    python -m hparse.experiments.attention_ablation --profile cpu --crowding  # then the crowding sweep
    python -m hparse.experiments.attention_ablation --profile cpu --roi-noise # and the oracle-box RoI measure
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import SynthCrowd
from ..data.contract import IGNORE_INDEX
from ..engine.profiles import Profile, get_device, get_profile, seed_everything
from ..engine.results import find_results, write_result
from ..engine.trainer import evaluate, train
from ..metrics.semantic import SemanticIoU
from ..models import build_model
from ..models.attention_rcnn import ATTENTION_VARIANTS
from ..models.targets import parsing_targets, sample_label_maps
from ..recipes import recipe as method_recipe
from ..recipes import warmup_steps

__all__ = ["VARIANTS", "CROWDINGS", "HEADLINE", "variant_key", "synth_splits", "train_variant", "ablation",
           "saved_ablation", "crowding_sweep", "other_person_fraction", "roi_noise", "roi_noise_sweep",
           "ROI_NOISE_KEYS", "saved_sweep"]

VARIANTS = ATTENTION_VARIANTS
CROWDINGS = (0.0, 0.25, 0.5, 0.75, 1.0)
TRAIN_CROWDING = 0.5  # SynthCrowd's default: the models train on moderately crowded scenes
#: The metrics recorded per crowding (Table 5 reports AP^r; AP^p measures each person's parsing).
HEADLINE = ("APp50", "APpvol", "APr50", "APrvol", "mIoU", "PCP50")


def variant_key(attention: str | None) -> str:
    """File-name key of a variant: its Table 5 name, or ``"none"`` for the model without attention."""
    return "none" if attention is None else attention


def synth_splits(profile: Profile, seed: int = 0, crowding: float = TRAIN_CROWDING,
                 val_images: int | None = None) -> tuple[SynthCrowd, SynthCrowd]:
    """SynthCrowd train and val at the profile's size (val at ``crowding``; train always at the default).

    ``val_images`` (default: the profile's) takes the first images of the same val split.
    """
    common = dict(image_size=profile.image_size, min_people=1, max_people=profile.max_people, seed=seed)
    return (SynthCrowd("train", num_images=profile.train_images, crowding=TRAIN_CROWDING, **common),
            SynthCrowd("val", num_images=val_images or profile.val_images, crowding=crowding, **common))


def train_variant(profile: Profile, attention: str | None, device: torch.device | str | None = None, *,
                  iterations: int | None = None, out_root: str | Path = "runs/attention_ablation", seed: int = 0,
                  with_eval: bool = True, val_images: int | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """Train (or resume) one variant with the profile's SynthCrowd recipe.

    Args:
        profile: run sizes.
        attention: the fusion variant (``None``: w/o attention).
        device: default CUDA when available.
        iterations: override the profile's iterations.
        out_root: the run folder is ``out_root/<profile>/<variant>``; a finished run there is loaded, not retrained.
        seed: model init, data order and augmentation.
        with_eval: evaluate on SynthCrowd val at the end of training (``summary["metrics"]``).
        val_images: val images to evaluate on (default: the profile's).

    Returns:
        ``(model, summary, config)``: the trained model (on ``device``), :func:`hparse.engine.train`'s summary, and
        the run's config (model flags, schedule, data).
    """
    device = get_device(device)
    recipe = method_recipe("attention_rcnn", profile, attention=attention)
    train_cfg = dict(recipe["train"])
    if iterations is not None:
        train_cfg.update(iterations=iterations, warmup=min(train_cfg["warmup"], warmup_steps(iterations)))
    if not with_eval:
        train_cfg["eval_every"] = 0
    train_set, val_set = synth_splits(profile, seed, val_images=val_images)
    seed_everything(seed)
    model = build_model("attention_rcnn", num_classes=train_set.labels.num_classes, **recipe["model"])
    config = {"variant": variant_key(attention), "model": {"name": "attention_rcnn", **recipe["model"]},
              "train": train_cfg, "dataset": "synth", "train_images": len(train_set), "val_images": len(val_set),
              "image_size": profile.image_size, "max_people": profile.max_people, "train_crowding": TRAIN_CROWDING,
              "seed": seed}
    summary = train(model, train_set, eval_dataset=val_set if with_eval else None,
                    out_dir=Path(out_root) / profile.name / variant_key(attention), seed=seed, device=device,
                    progress=False, config=config, **train_cfg)
    model.eval()
    return model, summary, config


def _notes(what: str, profile: Profile, device: torch.device) -> str:
    return (f"{what} on SynthCrowd, profile {profile.name}, device {device.type}"
            + ("" if device.type == "cuda" else " (CPU run: no GPU was used)"))


def ablation(profile: Profile, device: torch.device | str | None = None, *,
             variants: Sequence[str | None] | None = None, iterations: int | None = None,
             out_root: str | Path = "runs/attention_ablation", seed: int = 0, write: bool = True,
             val_images: int | None = None) -> dict[str, dict]:
    """Table 5 (+ "w/o attention") on SynthCrowd: train and evaluate each variant, one results file each.

    Args:
        profile: run sizes.
        device: default CUDA when available.
        variants: subset of :data:`VARIANTS` (default: all five).
        iterations: override the profile's iterations (the results file records the value used).
        out_root: run folders; an interrupted ablation resumes each variant from its checkpoint.
        seed: model init, data order and augmentation (the same for every variant).
        write: write ``results/<profile>/attention_rcnn/ablation_<variant>.json``.
        val_images: val images to evaluate on (default: the profile's).

    Returns:
        ``{variant key: metrics}`` (metrics of :func:`hparse.engine.evaluate` plus throughput and iterations).
    """
    device = get_device(device)
    variants = list(VARIANTS if variants is None else variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; Table 5 has {list(VARIANTS)}")
    results = {}
    for attention in variants:
        _, summary, config = train_variant(profile, attention, device, iterations=iterations, out_root=out_root,
                                           seed=seed, val_images=val_images)
        history = summary["history"]
        metrics = {**(summary["metrics"] or {}), "train_images_per_s": summary["images_per_s"],
                   "iterations": summary["step"], "train_final_loss": history[-1]["loss"] if history else None}
        if write:
            write_result(f"attention_rcnn/ablation_{variant_key(attention)}", metrics, profile=profile.name,
                         config=config, wall_time_s=summary["wall_time_s"], device=device,
                         notes=_notes(f"Table 5 ablation, attention={attention}", profile, device))
        results[variant_key(attention)] = metrics
    return results


def saved_ablation(prefer: Sequence[str] = ("gpu", "cpu")) -> dict | None:
    """Saved ablation records: the first profile of ``prefer`` holding a results file for *every* variant.

    A table never mixes profiles, so a profile with some variants missing is skipped.

    Returns:
        ``{"profile": name, "records": {variant key: record}}`` (records as written by
        :func:`hparse.engine.write_result`: metrics, config, provenance), or ``None`` when no profile has them all.
    """
    for profile in prefer:
        records = {variant_key(v): find_results(f"attention_rcnn/ablation_{variant_key(v)}", profiles=(profile,))
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


def _crowded_val_sets(profile: Profile, seed: int, crowdings: Sequence[float], val_images: int | None
                      ) -> tuple[list[SynthCrowd], list[float]]:
    """The val split rendered at each crowding, and the mean share of a person's box showing other people in each."""
    val_sets = [synth_splits(profile, seed, crowding, val_images)[1] for crowding in crowdings]
    noise = []
    for val_set in val_sets:
        fractions = torch.cat([other_person_fraction(val_set[i]) for i in range(len(val_set))])
        noise.append(float(fractions.mean()) if len(fractions) else 0.0)
    return val_sets, noise


def _sweep_models(profile: Profile, variants: Sequence[str | None], device: torch.device,
                  models: dict[str, torch.nn.Module] | None, out_root: str | Path, seed: int,
                  iterations: int | None = None) -> tuple[dict[str, torch.nn.Module], dict[str, dict]]:
    """The models of a sweep by variant key, in ``variants`` order: given ones as they are, the others from their
    finished run in ``out_root`` (trained there when missing); and the configs of the loaded ones."""
    given = dict(models or {})
    chosen, configs = {}, {}
    for attention in variants:
        key = variant_key(attention)
        if key in given:
            chosen[key] = given[key].to(device)
        else:
            chosen[key], _, configs[key] = train_variant(profile, attention, device, iterations=iterations,
                                                         out_root=out_root, seed=seed, with_eval=False)
    return chosen, configs


def saved_sweep(name: str, prefer: Sequence[str] = ("gpu", "cpu")) -> dict | None:
    """A saved sweep record (``"crowding"`` or ``"roi_noise"``) of the first profile in ``prefer`` that has one.

    Returns:
        ``{"sweep": its metrics, "profile", "device", "iterations": the fewest training iterations of its models,
        "source": a sentence naming the file and run}``, or ``None``.
    """
    for profile in prefer:
        record = find_results(f"attention_rcnn/{name}", profiles=(profile,))
        if record is None:
            continue
        trained = {key: cfg["train"]["iterations"] for key, cfg in record["config"].get("models", {}).items()}
        device = record["provenance"]["device"]
        source = (f"results/{profile}/attention_rcnn/{name}.json ({record['config']['val_images']} val images per "
                  f"crowding, models of {sorted(set(trained.values())) or '?'} iterations, {device})")
        return {"sweep": record["metrics"], "profile": profile, "device": device,
                "iterations": min(trained.values()) if trained else "?", "source": source}
    return None


def crowding_sweep(profile: Profile, device: torch.device | str | None = None, *,
                   variants: Sequence[str | None] = (None, "concat_after_conv4"),
                   crowdings: Sequence[float] = CROWDINGS, iterations: int | None = None,
                   out_root: str | Path = "runs/attention_ablation", seed: int = 0, write: bool = True,
                   models: dict[str, torch.nn.Module] | None = None, val_images: int | None = None) -> dict:
    """AP^p50 and AP^r50 against SynthCrowd's ``crowding``, with and without attention.

    Each variant is trained once at the default crowding (0.5) -- or loaded from the ablation's finished run in
    ``out_root`` -- and evaluated on the val split rendered at every ``crowding``; the val images show the same people
    at the same sizes, moved closer together as ``crowding`` grows.

    Args:
        profile: run sizes.
        device: default CUDA when available.
        variants: the variants to compare (default: without attention and the paper's final choice).
        crowdings: SynthCrowd crowding values of the val split.
        iterations: training iterations when a variant has to be trained.
        out_root: run folders shared with :func:`ablation`.
        seed: as in :func:`ablation`.
        write: write ``results/<profile>/attention_rcnn/crowding.json``.
        models: already trained models by variant key (skips training those).
        val_images: val images per crowding (default: the profile's).

    Returns:
        ``{"crowding": [...], "other_person_fraction": [...], "variants": {key: {metric: [value per crowding]}}}``.
    """
    device = get_device(device)
    crowdings = [float(c) for c in crowdings]
    val_sets, noise = _crowded_val_sets(profile, seed, crowdings, val_images)
    models, configs = _sweep_models(profile, variants, device, models, out_root, seed, iterations)
    table: dict[str, dict[str, list]] = {}
    for key, model in models.items():
        rows = {name: [] for name in HEADLINE}
        for val_set in val_sets:
            metrics = evaluate(model, val_set, batch_size=profile.batch_size, device=device)
            for name in HEADLINE:
                rows[name].append(metrics.get(name))
        table[key] = rows
    result = {"crowding": crowdings, "other_person_fraction": noise, "variants": table}
    if write:
        write_result("attention_rcnn/crowding", result, profile=profile.name,
                     config={"variants": [variant_key(v) for v in variants],
                             "val_images": val_images or profile.val_images,
                             "train_crowding": TRAIN_CROWDING, "seed": seed, "models": configs},
                     device=device, notes=_notes("AP vs crowding", profile, device))
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


def roi_noise_sweep(profile: Profile, device: torch.device | str | None = None, *,
                    variants: Sequence[str | None] = (None, "concat_after_conv4"),
                    crowdings: Sequence[float] = CROWDINGS, out_root: str | Path = "runs/attention_ablation",
                    seed: int = 0, write: bool = True, models: dict[str, torch.nn.Module] | None = None,
                    val_images: int | None = None) -> dict:
    """:func:`roi_noise` of each variant on SynthCrowd val at every ``crowding`` (oracle boxes, no detector).

    Models come from ``models`` or from the ablation's finished runs in ``out_root`` (trained there if missing), as
    in :func:`crowding_sweep`.

    Returns:
        ``{"crowding": [...], "other_person_fraction": [...], "variants": {key: {metric: [value per crowding]}}}``
        with the metrics of :data:`ROI_NOISE_KEYS` plus ``num_rois``.
    """
    device = get_device(device)
    crowdings = [float(c) for c in crowdings]
    val_sets, noise = _crowded_val_sets(profile, seed, crowdings, val_images)
    models, configs = _sweep_models(profile, variants, device, models, out_root, seed)
    table: dict[str, dict[str, list]] = {}
    for key, model in models.items():
        rows: dict[str, list] = {name: [] for name in (*ROI_NOISE_KEYS, "num_rois")}
        for val_set in val_sets:
            scores = roi_noise(model, val_set, profile.batch_size, device)
            for name in rows:
                rows[name].append(scores[name])
        table[key] = rows
    result = {"crowding": crowdings, "other_person_fraction": noise, "variants": table}
    if write:
        write_result("attention_rcnn/roi_noise", result, profile=profile.name,
                     config={"variants": [variant_key(v) for v in variants],
                             "val_images": val_images or profile.val_images, "train_crowding": TRAIN_CROWDING,
                             "seed": seed, "models": configs},
                     device=device, notes=_notes("Oracle-box RoI parsing against crowding", profile, device))
    return result


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=None,
                        help=f"subset of {[variant_key(v) for v in VARIANTS]} (default: all)")
    parser.add_argument("--crowding", action="store_true", help="run the crowding sweep instead of the ablation")
    parser.add_argument("--roi-noise", action="store_true",
                        help="run the oracle-box RoI measure against crowding instead of the ablation")
    parser.add_argument("--out-root", default="runs/attention_ablation")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    keys = {variant_key(v): v for v in VARIANTS}
    if args.variants:
        unknown = [v for v in args.variants if v not in keys]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {list(keys)}")
    chosen = [keys[v] for v in args.variants] if args.variants else None
    if args.roi_noise:
        result = roi_noise_sweep(profile, args.device, variants=chosen or (None, "concat_after_conv4"),
                                 out_root=args.out_root)
        print("crowding", result["crowding"])
        for key, rows in result["variants"].items():
            print(key, {name: [round(v, 4) if v is not None else None for v in rows[name]]
                        for name in ("other_leakage", "own_recall", "roi_mIoU")})
        return
    if args.crowding:
        result = crowding_sweep(profile, args.device, variants=chosen or (None, "concat_after_conv4"),
                                iterations=args.iterations, out_root=args.out_root)
        print("crowding", result["crowding"])
        for key, rows in result["variants"].items():
            print(key, {name: [round(v, 4) if v is not None else None for v in rows[name]]
                        for name in ("APp50", "APr50")})
        return
    for key, metrics in ablation(profile, args.device, variants=chosen, iterations=args.iterations,
                                 out_root=args.out_root).items():
        print(key, {k: round(metrics[k], 4) for k in ("mIoU", "APp50", "APr50", "APrvol") if k in metrics})


if __name__ == "__main__":
    _main()
