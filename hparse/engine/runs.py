"""Runs from recipes: the work behind ``hparse train``, ``hparse demo`` and ``hparse evaluate --checkpoint``.

:mod:`hparse.recipes` says how big a run of each method is; :func:`hparse.engine.train` trains any model on any
dataset. This module joins the two the way the command line does, and checks what a user can get wrong *before* a
model is built or a step is trained, raising :class:`RunSetupError` with the fix:

- :func:`method_recipe`: a method's recipe at a profile, with the command line's component flags on top (a flag of
  another method is refused, not ignored);
- :func:`check_out_dir`, :func:`check_batch_memory`: a run folder this process can write, a batch the device can
  hold;
- :func:`train_from_recipe`: the datasets, the model, the record check, training and the final evaluation of a run;
- :func:`run_demo`: ``hparse demo`` (the demo recipe, its figures, the artefacts the book draws);
- :func:`evaluate_checkpoint`: a trained model rebuilt from its checkpoint and scored on a split.

Any method of :data:`hparse.recipes.METHODS` trains through here; Parsing R-CNN's component flags (``--pss``, ...)
and the RoI attention variant (``--attention``) are the only method-specific flags.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .profiles import Profile

__all__ = [
    "RunSetupError",
    "PARSING_RCNN_FLAGS",
    "method_recipe",
    "check_out_dir",
    "check_batch_memory",
    "train_dataset",
    "TrainedRun",
    "train_from_recipe",
    "DemoRun",
    "DEMO_PREDICT_IMAGES",
    "run_demo",
    "evaluate_checkpoint",
]

#: Parsing R-CNN's component flags (``build_model("parsing_rcnn", ...)`` keywords) that ``hparse train`` sets.
PARSING_RCNN_FLAGS = ("pss", "roi_size", "gce", "ipbc", "parsing_batch")

#: A floor on the training memory of one input pixel of a ResNet-FPN top-down parser (float32 activations kept for the
#: backward pass): torchvision's Mask R-CNN R50-FPN takes 2-3 GB per 800x1333 image, over 2 KiB per pixel. Used only
#: to refuse a batch that cannot fit, so an underestimate errs on the side of trying.
TRAIN_BYTES_PER_PIXEL = 1024


class RunSetupError(ValueError):
    """A run cannot start as asked (a flag of another method, a folder, memory, a record); the message says the fix."""


# ------------------------------------------------------------------------------------------------- recipes


def method_recipe(method: str, profile: Profile, dataset: str = "synth", *, flags: dict[str, Any] | None = None,
                  attention: str | None = None, backbone: str | None = None,
                  backbone_weights: str | None = None) -> dict[str, dict]:
    """The profile's recipe of ``method`` on ``dataset`` with command-line settings on top.

    Args:
        method: a key of :data:`hparse.recipes.METHODS`.
        flags: Parsing R-CNN component values by :data:`PARSING_RCNN_FLAGS` name (``None`` values are not given);
            any given to another method is refused.
        attention: the RoI attention variant (``"none"``: without attention); attention_rcnn only.
        backbone, backbone_weights: set for any method when given.

    Raises:
        RunSetupError: a flag that does not apply to ``method``, or no recipe for ``method`` on ``dataset``.
    """
    from ..recipes import recipe

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    given = [f"--{name.replace('_', '-')}" for name in flags]
    if given and method != "parsing_rcnn":
        hint = " (its component is --attention)" if method == "attention_rcnn" else ""
        raise RunSetupError(f"{', '.join(given)}: Parsing R-CNN component flags do not apply to {method}{hint}")
    if attention is not None and method != "attention_rcnn":
        raise RunSetupError("--attention applies to --model attention_rcnn only")
    variant = {}
    if method == "attention_rcnn":
        variant["attention"] = None if attention == "none" else (attention or "concat_after_conv4")
    try:
        out = recipe(method, profile, dataset, **variant)
    except ValueError as err:
        raise RunSetupError(str(err)) from None
    out["model"].update(flags)
    if backbone is not None:
        out["model"]["backbone"] = backbone
    if backbone_weights:
        out["model"]["backbone_weights"] = backbone_weights
    return out


# -------------------------------------------------------------------------------------------------- checks


def check_out_dir(out: str | os.PathLike) -> None:
    """``out`` must be a folder this process can create and write to; checked before any model is built."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunSetupError(f"--out {out} is a file, not a folder; pass a folder for the run (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise RunSetupError(f"--out {out} cannot be created or written to ({err.strerror or err}); choose another "
                            "--out") from None


def _available_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, torch.cuda.get_device_name(index)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return 0, "this machine"


def check_batch_memory(batch_size: int, height: int, width: int, device: torch.device) -> None:
    """Refuse a batch whose estimated training memory exceeds the device's, naming the estimate."""
    need = batch_size * height * width * TRAIN_BYTES_PER_PIXEL
    available, where = _available_memory(device)
    if available and need > available:
        raise RunSetupError(f"--batch-size {batch_size} needs an estimated {need / 2**30:,.1f} GiB to train at "
                            f"{height}x{width} pixels (at least {TRAIN_BYTES_PER_PIXEL // 1024} KiB per pixel per "
                            f"image), more than the {available / 2**30:,.1f} GiB of {where}; lower --batch-size")


def train_dataset(dataset: str, root: str | os.PathLike | None, profile: Profile, split: str, num: int):
    """SynthCrowd at the profile's size, or a real dataset's split read from ``root`` (a missing root, a broken
    or empty split: :class:`hparse.data.verify.SplitError`).

    SynthCrowd images are those of :data:`hparse.data.synth.RECIPE_SEED` whatever the run's seed, so that every
    seed of a recipe trains on the same images and is scored on the same validation images."""
    if dataset == "synth":
        from ..data import RECIPE_SEED, SynthCrowd

        try:
            return SynthCrowd(split=split, num_images=num, image_size=profile.image_size, min_people=1,
                              max_people=profile.max_people, seed=RECIPE_SEED)
        except ValueError as err:
            raise RunSetupError(str(err)) from None
    from ..data.verify import open_split

    return open_split(dataset, root, split, purpose="nothing to train or evaluate on")


# ------------------------------------------------------------------------------------------------ training


@dataclass
class TrainedRun:
    """What :func:`train_from_recipe` leaves: the trained model, the trainer's summary, the recipe and the val set."""

    model: torch.nn.Module
    summary: dict
    recipe: dict
    val_set: Any
    out_dir: Path


def train_from_recipe(method: str, recipe: dict, profile: Profile, *, out_dir: str | os.PathLike,
                      device: torch.device, dataset: str = "synth", root: str | os.PathLike | None = None,
                      iterations: int | None = None, batch_size: int | None = None, lr: float | None = None,
                      workers: int | None = None, seed: int = 0, resume: bool = True, record: str | None = None,
                      force: bool = False, skip_bad: bool = False, progress: bool = True,
                      announce: Callable[[str], None] | None = None) -> TrainedRun:
    """Check everything, build the model of ``recipe``, train it and evaluate it.

    SynthCrowd is drawn at the recipe's ``data`` sizes; ``iterations``, ``batch_size``, ``lr`` and ``workers``
    override the recipe's training settings (the warm-up shrinks with a shorter run). ``record`` names the
    ``results/`` file to write besides the run folder's own ``result.json``; a record of another config or of a
    longer run is refused before anything is built unless ``force``. ``announce`` receives one line before training.
    """
    from ..models import build_model
    from ..recipes import warmup_steps
    from .results import check_replace, result_path
    from .trainer import train

    check_out_dir(out_dir)
    model_cfg, train_cfg = recipe["model"], recipe["train"]
    profile = profile.override(**recipe.get("data", {}))
    train_set = train_dataset(dataset, root, profile, "train", profile.train_images)
    val_set = train_dataset(dataset, root, profile, "val", profile.val_images)
    if iterations is not None:
        train_cfg["iterations"] = iterations
        train_cfg["warmup"] = min(train_cfg["warmup"], warmup_steps(iterations))
    for key, value in (("batch_size", batch_size), ("lr", lr), ("num_workers", workers)):
        if value is not None:
            train_cfg[key] = value
    sizes = model_cfg.get("train_sizes") or [model_cfg.get("test_size") or profile.image_size]
    height = max(sizes) if isinstance(sizes, (list, tuple)) else sizes
    check_batch_memory(train_cfg["batch_size"], height, model_cfg.get("max_size") or height, device)
    config = {"model": {"name": method, **model_cfg}, "train": train_cfg, "dataset": dataset,
              "train_images": len(train_set), "val_images": len(val_set), "seed": seed}
    if dataset == "synth":
        config.update(image_size=profile.image_size, max_people=profile.max_people)
    if record is not None and not force:  # refuse before building anything
        try:
            path = result_path(record, profile.name)
        except ValueError as err:
            raise RunSetupError(f"--record {record}: {err}") from None
        check_replace(path, config, train_cfg["iterations"])
    torch.manual_seed(seed)
    try:
        model = build_model(method, num_classes=train_set.labels.num_classes, **model_cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as err:  # FileNotFoundError: a missing starting point
        raise RunSetupError(str(err)) from None
    if announce is not None:
        announce(f"training {method} on {dataset} ({len(train_set)} train / {len(val_set)} val images, profile "
                 f"{profile.name}, {device}) -> {out_dir}")
    summary = train(model, train_set, eval_dataset=val_set, out_dir=out_dir, resume=resume, seed=seed, device=device,
                    result_name=record, profile=profile.name, config=config, progress=progress, skip_bad=skip_bad,
                    force_record=force, **train_cfg)
    return TrainedRun(model, summary, recipe, val_set, Path(out_dir))


#: SynthCrowd validation images ``hparse demo`` parses with ``hparse predict``'s code at its end.
DEMO_PREDICT_IMAGES = 4


@dataclass
class DemoRun:
    """What :func:`run_demo` wrote: the training run, its figures and artefacts, and what it parsed."""

    run: TrainedRun
    written: dict[str, Path] = field(default_factory=dict)
    parsed: dict[str, Any] = field(default_factory=dict)  # "val" / "images" -> hparse.engine.predict.ParseSummary


def run_demo(profile: Profile, *, out_dir: str | os.PathLike, device: torch.device, iterations: int | None = None,
             seed: int = 0, resume: bool = True, record: str | None = None, force: bool = False,
             images: list[Path] | None = None, announce: Callable[[str], None] | None = None,
             on_skip: Callable[[Path, str], None] | None = None) -> DemoRun:
    """``hparse demo``: Parsing R-CNN at :func:`hparse.recipes.demo_recipe`'s sizes on SynthCrowd, trained and
    evaluated, its learning curves and predictions drawn into the run folder; with ``record``, the small artefacts
    the book draws are kept beside the record (:func:`hparse.experiments.runner.save_artefacts`).

    It ends as a user would go on: the trained checkpoint parses :data:`DEMO_PREDICT_IMAGES` SynthCrowd validation
    images, written as PNG files into ``<out>/synthcrowd_val/``, into ``<out>/predict_val/``, and the image files
    ``images`` (the user's) into ``<out>/predict_images/`` (:func:`hparse.engine.predict.parse_files`; a file that
    cannot be read is passed to ``on_skip`` and skipped).
    """
    from PIL import Image

    from ..recipes import demo_recipe
    from ..viz.overlay import to_numpy_image
    from ..viz.training import write_run_figures
    from .predict import Predictor, parse_files

    recipe = demo_recipe(profile)  # the demo's sizes live there, in one place
    data_profile = profile.override(**recipe["data"])
    run = train_from_recipe("parsing_rcnn", recipe, data_profile, out_dir=out_dir, device=device,
                            iterations=iterations, seed=seed, resume=resume, record=record, force=force,
                            announce=announce)
    what = f"Parsing R-CNN on SynthCrowd val ({profile.name} profile, {run.summary['step']} steps)"
    demo = DemoRun(run, write_run_figures(run.model, run.val_set, run.out_dir, what))
    if record:
        from ..experiments.runner import save_artefacts

        kept = save_artefacts(run.model, run.val_set, run.out_dir, method="parsing_rcnn", variant=Path(record).name,
                              profile=profile.name, seed=seed)
        demo.written.update({f"artefact {name}": path for name, path in kept.items()})

    inputs = run.out_dir / "synthcrowd_val"
    inputs.mkdir(exist_ok=True)
    val_files = []
    for index in range(min(DEMO_PREDICT_IMAGES, len(run.val_set))):
        sample = run.val_set[index]
        path = inputs / f"{sample['meta']['id']}.png"
        Image.fromarray(to_numpy_image(sample["image"])).save(path)
        val_files.append(path)
    predictor = Predictor.load(Path(run.summary["checkpoint"]), device=device)
    demo.parsed["val"] = parse_files(predictor, val_files, run.out_dir / "predict_val", on_skip=on_skip)
    if images:
        demo.parsed["images"] = parse_files(predictor, images, run.out_dir / "predict_images", on_skip=on_skip)
    return demo


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(checkpoint_path: str | os.PathLike, profile: Profile, *, device: torch.device,
                        dataset: str | None = None, gt: str | os.PathLike | None = None, split: str = "val",
                        num: int | None = None, seed: int = 0, record: str | None = None, force: bool = False,
                        json_path: str | os.PathLike | None = None,
                        evaluator_mode: dict | None = None, test_time: dict | None = None) -> dict[str, Any]:
    """Rebuild a trained model from its checkpoint and score it on a split.

    ``test_time`` (``{"test_flip": bool, "test_scales": (factor, ...)}``) scores it with Parsing R-CNN's test-time
    augmentation (:class:`hparse.models.parsing_rcnn.ParsingRCNN`, Table 8 †); the record's config says so.

    The dataset defaults to the run's own (``synth``: SynthCrowd at the run's image size and people per image, the
    profile's val images); a real dataset needs ``gt`` (its root). ``record`` also writes the metrics to
    ``results/<profile>/<record>.json`` (refused before scoring when it would replace another config or a longer run
    without ``force``); ``json_path`` writes them to a file of the caller's.

    Returns:
        ``{"metrics", "step", "dataset", "split", "record" (path or None), "json" (path or None)}``.
    """
    from .checkpoint import load_model
    from .results import atomic_write_text, check_replace, result_path, write_result
    from .trainer import _plain, evaluate

    model, checkpoint = load_model(checkpoint_path, device=device)
    config = checkpoint.get("config") or {}
    test_time = {k: v for k, v in (test_time or {}).items() if v}
    if test_time:
        if not hasattr(model, "set_test_views"):
            raise RunSetupError(f"{checkpoint_path}: test-time augmentation (--test-flip, --test-scales) is Parsing "
                                f"R-CNN's (its Table 8); this model ({type(model).__name__}) has none")
        try:
            model.set_test_views(bool(test_time.get("test_flip", False)), tuple(test_time.get("test_scales", ())))
        except ValueError as err:
            raise RunSetupError(f"{checkpoint_path}: {err}") from None
    dataset_name = dataset or config.get("dataset", "synth")
    if dataset_name == "synth":
        from ..data import SynthCrowd

        data = SynthCrowd(split=split, num_images=num or profile.val_images,
                          image_size=config.get("image_size", profile.image_size), min_people=1,
                          max_people=config.get("max_people", profile.max_people), seed=seed)
    else:
        if gt is None:
            raise RunSetupError(f"--checkpoint with --dataset {dataset_name} needs --gt (the dataset root)")
        from ..data.verify import open_split

        data = open_split(dataset_name, gt, split, purpose="nothing to score")
    record_config = {"checkpoint": str(checkpoint_path), "step": checkpoint.get("step"), "dataset": dataset_name,
                     "split": split, "model": checkpoint["model_config"]}
    if test_time:
        record_config["test_time"] = {"test_flip": model.test_flip, "test_scales": list(model.test_scales)}
    if record:
        try:
            path = result_path(record, profile.name)
        except ValueError as err:
            raise RunSetupError(f"--record {record}: {err}") from None
        check_replace(path, record_config, checkpoint.get("step"), force)
    mode = dict(evaluator_mode or {})
    metrics = evaluate(model, data, batch_size=2, max_images=num,
                       evaluator_kwargs={**mode, "class_names": data.labels.names})
    out = {"metrics": metrics, "step": checkpoint.get("step"), "dataset": dataset_name, "split": split,
           "record": None, "json": None}
    if record:
        out["record"] = write_result(record, metrics, profile=profile.name, config=record_config, device=device,
                                     force=force)
    if json_path is not None:
        atomic_write_text(Path(json_path), json.dumps({"metrics": _plain(metrics), "checkpoint": str(checkpoint_path),
                                                       "dataset": dataset_name, "split": split}, indent=2) + "\n")
        out["json"] = Path(json_path)
    return out
