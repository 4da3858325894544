"""Parsing R-CNN's test-time augmentation (Table 8, the rows marked †) on trained runs, seed by seed.

Table 8 reports Parsing R-CNN with "multi-scale testing and horizontal flipping" beside the plain model (59.8 ->
61.1 mIoU on CIHP val with ResNeXt-101). :class:`hparse.models.parsing_rcnn.ParsingRCNN` has both as flags
(``test_flip``, ``test_scales``); this experiment scores the *same* trained models three ways -- as they are, with
the mirrored view, with the mirrored view and two more scales -- on their own validation images (nothing is
trained), and writes one record with each seed's numbers, their mean and spread per setting, and the book's verdict
on each setting's difference from the plain model (:func:`hparse.experiments.runner.spread_verdict`)::

    python -m hparse.experiments.augmented_inference --runs runs/demo_cpu runs/demo_cpu_s1 runs/demo_cpu_s2 \\
        --profile cpu --record parsing_rcnn/demo_augmented_inference

Each run is the folder (or ``checkpoint.pt``) of one seed of one recipe; the evaluation images are those the run was
scored on in training (SynthCrowd val of :data:`hparse.data.synth.RECIPE_SEED` at its image size).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import RECIPE_SEED, SynthCrowd
from ..engine.checkpoint import load_model
from ..engine.profiles import get_device, get_profile
from ..engine.results import ResultConflictError, write_result
from ..engine.trainer import evaluate
from .runner import spread_verdict, summarise

__all__ = ["SETTINGS", "KEYS", "augmented_inference_table"]

#: The settings scored, in order: the plain model, Table 8's flipping, and flipping with multi-scale testing.
SETTINGS: dict[str, dict] = {
    "plain": {"test_flip": False, "test_scales": ()},
    "flip": {"test_flip": True, "test_scales": ()},
    "flip_multiscale": {"test_flip": True, "test_scales": (0.75, 1.25)},
}
#: The numbers kept per seed and setting.
KEYS = ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol")


def _checkpoint(run: str | Path) -> Path:
    path = Path(run)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: pass run folders (or their checkpoint.pt)")
    return path


@torch.no_grad()
def augmented_inference_table(runs: Sequence[str | Path], *, settings: dict[str, dict] | None = None,
                    val_images: int | None = None, device=None) -> dict:
    """Score every run under every setting; returns ``{"settings", "per_seed", <setting>: summary, "verdicts"}``.

    ``per_seed[seed][setting]`` holds :data:`KEYS`; each setting's summary is :func:`~.runner.summarise` over seeds
    (``mean``, ``std``, ``min``, ``max``, ``seeds``); ``verdicts[setting][key]`` compares it with ``"plain"``.
    Runs must be seeds of one recipe (the same model and data config but for the seed).
    """
    settings = SETTINGS if settings is None else settings
    device = get_device(device)
    per_seed: dict[int, dict] = {}
    reference = None
    for run in runs:
        path = _checkpoint(run)
        model, saved = load_model(path, device=device)
        if not hasattr(model, "set_test_views"):
            raise ValueError(f"{path}: test-time augmentation is Parsing R-CNN's; this run is "
                             f"{type(model).__name__}")
        config = dict(saved.get("config") or {})
        seed = int(config.get("seed", len(per_seed)))
        recipe = {k: v for k, v in config.items() if k not in ("seed", "out_dir", "checkpoint")}
        recipe["model_config"] = saved.get("model_config")
        if reference is None:
            reference = recipe
        elif recipe.get("model_config") != reference.get("model_config"):
            raise ValueError(f"{path}: not a seed of the first run's recipe (its model config differs)")
        if seed in per_seed:
            raise ValueError(f"{path}: seed {seed} is given twice")
        data = SynthCrowd("val", num_images=val_images or int(config.get("val_images") or 50),
                          image_size=int(config.get("image_size", 192)), min_people=1,
                          max_people=int(config.get("max_people", 5)), seed=RECIPE_SEED)
        per_seed[seed] = {}
        for name, views in settings.items():
            model.set_test_views(views["test_flip"], tuple(views["test_scales"]))
            metrics = evaluate(model, data, batch_size=2)
            per_seed[seed][name] = {key: metrics[key] for key in KEYS}
    out: dict = {"settings": {k: {**v, "test_scales": list(v["test_scales"])} for k, v in settings.items()},
                 "per_seed": per_seed, "verdicts": {}}
    for name in settings:
        out[name] = {**summarise({s: m[name] for s, m in per_seed.items()}), "seeds": sorted(per_seed)}
    for name in settings:
        if name != "plain" and "plain" in settings:
            out["verdicts"][name] = {key: spread_verdict(out[name], out["plain"], key) for key in KEYS
                                     if key in out[name]["mean"] and key in out["plain"]["mean"]}  # not NaN
    return out


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run folders (or checkpoint.pt), one per seed")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--record", default="parsing_rcnn/augmented_inference")
    parser.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--force", action="store_true", help="replace a record of another config")
    args = parser.parse_args(argv)
    try:
        table = augmented_inference_table(args.runs, val_images=args.val_images, device=args.device)
        profile = args.profile or get_profile().name
        write_result(args.record, table, profile=profile, force=args.force,
                     config={"runs": [str(_checkpoint(r)) for r in args.runs], "val_images": args.val_images},
                     notes="Parsing R-CNN Table 8 †: the same trained models scored with test-time augmentation "
                           "(hparse.experiments.augmented_inference)")
    except (FileNotFoundError, ValueError, ResultConflictError) as error:
        raise SystemExit(f"error: {error}") from None
    for name in table["settings"]:
        print(name, {k: f"{table[name]['mean'][k]:.4f} ± {table[name]['std'][k]:.4f}" for k in ("mIoU", "APp50",
                                                                                                  "APpvol")})


if __name__ == "__main__":
    _main()
