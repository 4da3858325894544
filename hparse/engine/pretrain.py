"""``hparse pretrain``: make the backbone's starting point (:mod:`hparse.models.pretrain`) and ship it.

Trains :class:`~hparse.models.pretrain.SemanticPretrainer` with :func:`hparse.engine.train` (checkpoints, exact
resume, log) at :func:`hparse.recipes.pretrain_recipe`'s size, scores its part mIoU on SynthCrowd val, and writes the
ResNet-FPN in float16 with its provenance. ``install=True`` writes it where ``backbone_weights="synthcrowd"`` reads
it (``hparse/weights/``), which is how the shipped file was made.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import SynthCrowd
from .profiles import Profile, get_device, seed_everything
from .results import provenance, write_result
from .trainer import evaluate, train

__all__ = ["pretrain_backbone"]


def pretrain_backbone(profile: Profile, out_dir: str | Path, *, iterations: int | None = None, seed: int = 0,
                      device: str | torch.device | None = None, install: bool = False, record: str | None = None,
                      force: bool = False, progress: bool = True) -> dict:
    """Pretrain the ResNet-FPN on SynthCrowd part segmentation; returns ``{"metrics", "weights", "summary"}``.

    Args:
        profile: run size (:func:`hparse.recipes.pretrain_recipe`).
        out_dir: run folder (checkpoint, log, ``backbone.pt``); an interrupted run resumes from it.
        iterations: override the recipe's steps.
        seed: model init and data order (the images come from the recipe's own SynthCrowd seed).
        install: also write the weights to ``hparse/weights/`` (what ``backbone_weights="synthcrowd"`` loads).
        record: also write ``results/<profile>/<record>.json``.
    """
    from ..models.pretrain import SemanticPretrainer, pretrained_path, save_pretrained
    from ..recipes import pretrain_recipe, with_iterations

    plan = pretrain_recipe(profile)
    if iterations is not None:
        plan = with_iterations(plan, iterations)
    data, train_cfg, model_cfg = plan["data"], plan["train"], plan["model"]
    architecture = {k: v for k, v in model_cfg.items() if k != "supervision"}  # what the weights file fixes
    device = get_device(device)
    common = dict(image_size=data["image_size"], min_people=1, max_people=data["max_people"], seed=data["seed"])
    train_set = SynthCrowd("train", data["train_images"], **common)
    val_set = SynthCrowd("val", data["val_images"], **common)
    seed_everything(seed)
    model = SemanticPretrainer(train_set.labels.num_classes, **model_cfg)
    config = {"model": {"name": "semantic_pretrainer", **model_cfg}, "train": train_cfg, "data": data,
              "seed": seed}
    summary = train(model, train_set, out_dir=out_dir, seed=seed, device=device, progress=progress, config=config,
                    **train_cfg)
    metrics = evaluate(model, val_set, batch_size=8, evaluator_kwargs={"metrics": ("miou",)})
    metrics = {k: v for k, v in metrics.items() if k in ("mIoU", "pixel_acc", "per_class_iou", "num_images")}
    weights_meta = {**provenance(), "profile": profile.name, "config": config, "val_mIoU": metrics["mIoU"],
                    "command": f"hparse pretrain --profile {profile.name}"}
    paths = [save_pretrained(model, Path(out_dir) / "backbone.pt", architecture, weights_meta)]
    if install:
        paths.append(save_pretrained(model, pretrained_path("synthcrowd"), architecture, weights_meta))
    if record:
        write_result(record, {**metrics, "iterations": summary["step"]}, profile=profile.name, config=config,
                     wall_time_s=summary["wall_time_s"], device=device, force=force,
                     notes="the backbone's SynthCrowd starting point (hparse.models.pretrain)")
    return {"metrics": metrics, "weights": [str(p) for p in paths], "summary": summary}
