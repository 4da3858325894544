"""``hparse pretrain``: make the backbone's starting point (:mod:`hparse.models.pretrain`) and ship it.

Trains :class:`~hparse.models.pretrain.SemanticPretrainer` with :func:`hparse.engine.train` (checkpoints, exact
resume, log) in the stages of :func:`hparse.recipes.pretrain_recipe`, each starting from the one before, scores its
part mIoU on SynthCrowd val, and writes the ResNet-FPN in float16 with its provenance (the stages included).
``install=True`` writes it where ``backbone_weights="synthcrowd"`` reads it (``hparse/weights/``), which is how the
shipped file was made.
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
                      force: bool = False, progress: bool = True, stages: tuple[int, ...] = (1, 2),
                      init: str | Path | None = None) -> dict:
    """Pretrain the ResNet-FPN on SynthCrowd part segmentation; returns ``{"metrics", "weights", "summary"}``.

    Each stage of :func:`hparse.recipes.pretrain_recipe` trains in ``out_dir/stage<k>`` (checkpoint, log,
    ``backbone.pt``; an interrupted stage resumes, a finished one is kept) and starts from the previous stage's
    ``backbone.pt``; the weights written at the end are the last stage's.

    Args:
        profile: run size (:func:`hparse.recipes.pretrain_recipe`).
        out_dir: run folder, one sub-folder per stage.
        iterations: override the steps of every stage run (tests, quick checks).
        seed: model init and data order (the images come from the recipe's own SynthCrowd seed).
        stages: the stages to run, in order (default both).
        init: a ``backbone.pt`` to start the first stage run from (for example ``--stages 2`` from an earlier stage
            1's file); by default stage 1 starts from random weights and stage 2 from ``out_dir/stage1``.
        install: also write the weights to ``hparse/weights/`` (what ``backbone_weights="synthcrowd"`` loads).
        record: also write ``results/<profile>/<record>.json``.
    """
    from ..models.pretrain import pretrained_path, save_pretrained
    from ..recipes import pretrain_recipe, with_iterations

    out_dir = Path(out_dir)
    device = get_device(device)
    start = Path(init) if init is not None else None
    if start is None and stages[0] != 1:
        start = out_dir / f"stage{stages[0] - 1}" / "backbone.pt"
    if start is not None and not start.exists():
        raise FileNotFoundError(f"{start} does not exist: pretraining stage {stages[0]} starts from the backbone.pt "
                                f"of the stage before it (run that stage first, or pass init=)")
    walls, parents = [], _earlier_stages(start) if init is not None else []
    command = (f"hparse pretrain --profile {profile.name} --stages {' '.join(map(str, stages))}"
               + (f" --init {init}" if init is not None else "")
               + (f" --iterations {iterations}" if iterations is not None else ""))
    for stage in stages:
        plan = pretrain_recipe(profile, stage)
        if iterations is not None:
            plan = with_iterations(plan, iterations)
        model, summary, metrics, config = _pretrain_stage(plan, out_dir / f"stage{stage}", start, seed, device,
                                                          progress)
        walls.append(summary["wall_time_s"])
        parents.append({"stage": stage, "iterations": summary["step"], "init": str(start) if start else None,
                        "val_mIoU": metrics["mIoU"]})
        start = out_dir / f"stage{stage}" / "backbone.pt"
        architecture = {k: v for k, v in plan["model"].items() if k != "supervision"}  # what the weights file fixes
        weights_meta = {**provenance(), "profile": profile.name, "config": config, "val_mIoU": metrics["mIoU"],
                        "stages": parents, "command": command}
        save_pretrained(model, start, architecture, weights_meta)
    paths = [start]
    if install:
        paths.append(save_pretrained(model, pretrained_path("synthcrowd"), architecture, weights_meta))
    if record:
        write_result(record, {**metrics, "iterations": summary["step"], "stages": parents}, profile=profile.name,
                     config=config, wall_time_s=sum(walls), device=device, force=force,
                     notes="the backbone's SynthCrowd starting point (hparse.models.pretrain); wall time of the "
                           "stages run by this command")
    return {"metrics": metrics, "weights": [str(p) for p in paths], "summary": summary}


def _earlier_stages(path: Path) -> list[dict]:
    """The stages recorded in the provenance of the weights file ``path`` (a file made by this command, such as the
    shipped one), so that a run continuing from it keeps the whole chain; ``[]`` for a file without them."""
    provenance = torch.load(path, map_location="cpu", weights_only=True).get("provenance", {})
    return [{"command": provenance.get("command"), **stage} for stage in provenance.get("stages", [])]


def _pretrain_stage(plan: dict, out_dir: Path, init: Path | None, seed: int, device, progress: bool):
    """Train one stage of the pretraining; returns ``(model, summary, val metrics, config)``."""
    from ..models.pretrain import SemanticPretrainer

    data, train_cfg, model_cfg = plan["data"], plan["train"], plan["model"]
    common = dict(image_size=data["image_size"], min_people=1, max_people=data["max_people"], seed=data["seed"])
    train_set = SynthCrowd("train", data["train_images"], **common)
    val_set = SynthCrowd("val", data["val_images"], **common)
    seed_everything(seed + plan["stage"] - 1)  # another data order per stage
    model = SemanticPretrainer(train_set.labels.num_classes, **model_cfg)
    if init is not None:
        blob = torch.load(init, map_location="cpu", weights_only=True)
        model.body.load_state_dict({k: v.float() if v.is_floating_point() else v
                                    for k, v in blob["state_dict"].items()})
    config = {"model": {"name": "semantic_pretrainer", **model_cfg}, "train": train_cfg, "data": data,
              "seed": seed, "stage": plan["stage"], "init": str(init) if init is not None else None}
    summary = train(model, train_set, out_dir=out_dir, seed=seed + plan["stage"] - 1, device=device,
                    progress=progress, config=config, **train_cfg)
    metrics = evaluate(model, val_set, batch_size=8, evaluator_kwargs={"metrics": ("miou",)})
    metrics = {k: v for k, v in metrics.items() if k in ("mIoU", "pixel_acc", "per_class_iou", "num_images")}
    return model, summary, metrics, config
