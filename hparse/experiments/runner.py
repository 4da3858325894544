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

**Artefacts the book draws.** After a variant's first seed (seed 0 by default) :func:`save_artefacts` keeps, beside the
records, what the chapters plot from a real run (small enough to commit; nothing over 5 MB is ever written):

- ``results/<profile>/<method>/logs/<variant>.jsonl``: the run's ``train_log.jsonl`` (thinned to every k-th training
  step when it is over 1 MB; evaluation records are all kept);
- ``results/<profile>/<method>/predictions/<variant>.pt.gz``: the model's eval outputs (prediction contract, at most a
  few persons each) on the first :data:`ARTEFACT_IMAGES` val images, and for models with ``roi_maps`` the attention
  and part maps of the ground-truth boxes; gzip-compressed ``torch.save`` (part maps are mostly zeros), read back with
  :func:`load_predictions`. :func:`saved_artefacts` finds both for a page.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..data import RECIPE_SEED, SynthCrowd
from ..engine.checkpoint import CHECKPOINT_NAME, load_model
from ..engine.finetune import load_weights
from ..engine.profiles import Profile, get_device, seed_everything
from ..engine.results import RUN_RECORD_NAME, atomic_write_text, config_differences, results_dir, write_result
from ..engine.trainer import LOG_NAME, train
from ..models import build_model
from ..recipes import recipe as method_recipe
from ..recipes import with_iterations

__all__ = ["add_run_arguments", "SEEDS", "run_variants", "train_seed", "summarise", "exceeds_spread", "synth_splits",
           "SUMMARY_KEYS", "run_folder", "ARTEFACT_IMAGES", "save_artefacts", "saved_artefacts", "load_predictions",
           "artefact_paths", "record_spread", "spread_verdict", "VERDICTS"]

#: The seeds of every ablation unless asked otherwise.
SEEDS = (0, 1, 2)
#: The metrics summarised over seeds (every other number stays in ``per_seed``).
SUMMARY_KEYS = ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol", "train_images_per_s")


def synth_splits(data: dict, crowding: float = 0.5, val_crowding: float | None = None,
                 val_images: int | None = None) -> tuple[SynthCrowd, SynthCrowd]:
    """SynthCrowd train and val at a recipe's ``data`` sizes (:data:`hparse.data.synth.RECIPE_SEED` for both: the
    same images for every run)."""
    common = dict(image_size=data["image_size"], min_people=1, max_people=data["max_people"], seed=RECIPE_SEED)
    return (SynthCrowd("train", num_images=data["train_images"], crowding=crowding, **common),
            SynthCrowd("val", num_images=val_images or data["val_images"],
                       crowding=crowding if val_crowding is None else val_crowding, **common))


def select_variants(table: Sequence[tuple[str, dict]], names: Sequence[str] | None,
                    what: str) -> list[tuple[str, dict]]:
    """The ``(name, flags)`` rows of ``table`` named in ``names`` (all when none are), in the table's order; an
    unknown name is refused with the known ones (``what`` names the table in the message)."""
    known = [name for name, _ in table]
    unknown = [n for n in (names or ()) if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {known}")
    return [(name, flags) for name, flags in table if not names or name in names]


def add_run_arguments(parser, out_root: str) -> None:
    """The command-line flags every variants x seeds experiment takes (profile, device, iterations, seeds, run
    folders, ``--force``), so each experiment's ``_main`` adds only its own."""
    parser.add_argument("--profile", default=None, choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--iterations", type=int, default=None, help="override the recipe's steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out-root", default=out_root, help="run folders (checkpoints, logs)")
    parser.add_argument("--force", action="store_true", help="replace records of another config or a longer run")


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

    A recipe with an ``"init"`` entry (a fine-tuning step, e.g. the bottom-up parser's ``stage=2``) starts from that
    checkpoint's weights (:func:`hparse.engine.finetune.load_weights`), ``{seed}`` in it replaced by ``seed``, so
    that one variant fine-tunes each seed's own earlier run.

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
    if plan.get("init"):  # a fine-tuning recipe starts from another run's weights; "{seed}" is this run's seed
        load_weights(model, str(plan["init"]).format(seed=seed))
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


#: What the book prints for a difference: :func:`exceeds_spread`'s answer, or ``None`` for one seed (a standard
#: deviation of 0 over one seed says nothing).
VERDICTS = {True: "exceeds the spread", False: "within the spread", None: "one seed: no spread"}


def spread_verdict(a: dict, b: dict, key: str) -> str:
    """The :data:`VERDICTS` text for the difference of ``key`` between two variant records: ``"one seed: no
    spread"`` when either has fewer than two seeds, else whether it exceeds the spread (:func:`exceeds_spread`)."""
    if min(len(a.get("seeds") or ()), len(b.get("seeds") or ())) < 2:
        return VERDICTS[None]
    return VERDICTS[exceeds_spread(a, b, key)]


# ------------------------------------------------------------------------------------------------- artefacts

#: Val images whose predictions are kept beside a variant's record (the first ones of the fixed val split).
ARTEFACT_IMAGES = 4
#: A copied training log larger than this is thinned to every k-th training step.
LOG_BYTES = 1_000_000
#: Target size of a predictions file; persons of lowest score are dropped until it fits.
PREDICTION_BYTES = 400_000
#: Nothing larger is ever written under results/.
MAX_BYTES = 5_000_000


def artefact_paths(method: str, variant: str, profile: str, root: str | Path | None = None) -> dict[str, Path]:
    """``{"log": results/<profile>/<method>/logs/<variant>.jsonl, "predictions": .../predictions/<variant>.pt.gz}``."""
    base = Path(root or results_dir()) / profile / method
    return {"log": base / "logs" / f"{variant}.jsonl", "predictions": base / "predictions" / f"{variant}.pt.gz"}


def _write_bytes(path: Path, data: bytes) -> None:
    if len(data) > MAX_BYTES:
        raise ValueError(f"refusing to write {path}: {len(data):,} bytes is over the {MAX_BYTES:,}-byte limit of "
                         "files under results/")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _thinned_log(source: Path, max_bytes: int = LOG_BYTES) -> str:
    """The lines of a training log, every k-th training step kept (and the last) when it is over ``max_bytes``;
    evaluation and other records are all kept."""
    text = source.read_text()
    if len(text.encode()) < max_bytes:
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    train_lines = [i for i, r in enumerate(records) if r.get("kind") == "train"]
    train_bytes = sum(len(lines[i]) + 1 for i in train_lines)
    other_bytes = sum(len(line) + 1 for line in lines) - train_bytes
    k = max(1, math.ceil(train_bytes / max(1, 0.9 * max_bytes - other_bytes)))
    keep = set(train_lines[::k]) | set(train_lines[-1:])
    return "".join(line + "\n" for i, line in enumerate(lines) if i in keep or records[i].get("kind") != "train")


def _jpeg(image: torch.Tensor, quality: int = 90) -> torch.Tensor:
    """A float (3, H, W) image in [0, 1] as JPEG bytes in a uint8 tensor."""
    from PIL import Image

    pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)


def _unjpeg(data: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) from the JPEG bytes of :func:`_jpeg`."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def _compact(pred: dict, persons: int) -> dict:
    """A prediction-contract dict on the CPU with its ``persons`` highest-scoring persons, maps as uint8."""
    order = torch.argsort(pred["person_scores"].float(), descending=True)[:persons].cpu()
    out = {}
    for key, value in pred.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu()
        if key == "semantic":
            out[key] = value.to(torch.uint8)
        elif key in ("person_parts",):
            out[key] = value[order].to(torch.uint8)
        elif key in ("person_masks",):
            out[key] = value[order].bool()
        elif value.ndim >= 1 and len(value) == len(pred["person_scores"]):
            out[key] = value[order].float() if value.is_floating_point() else value[order]
        else:
            out[key] = value
    out["num_predicted"] = int(len(pred["person_scores"]))
    return out


@torch.no_grad()
def save_artefacts(model: torch.nn.Module, dataset, run_dir: str | Path, *, method: str, variant: str, profile: str,
                   seed: int, images: int = ARTEFACT_IMAGES, persons: int = 16, root: str | Path | None = None,
                   max_bytes: int = PREDICTION_BYTES) -> dict[str, Path]:
    """Keep what the book draws from one trained run: its training log and predictions on a few val images.

    Args:
        model: the trained model (any device).
        dataset: the val split it was evaluated on; its first ``images`` samples are predicted.
        run_dir: the run folder (``train_log.jsonl`` and ``result.json``).
        method, variant, profile: where the files go (:func:`artefact_paths`).
        seed: the run's seed (recorded).
        images: how many val images.
        persons: at most this many persons (highest scores) kept per image; fewer when the file would exceed
            ``max_bytes``.
        root: results folder (default :func:`hparse.engine.results.results_dir`).

    Returns:
        The paths written (``{"log", "predictions"}``; ``log`` is absent when the run folder has no log).
    """
    run_dir = Path(run_dir)
    paths = artefact_paths(method, variant, profile, root)
    written = {}
    log = run_dir / LOG_NAME
    if log.exists():
        paths["log"].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths["log"], _thinned_log(log))
        written["log"] = paths["log"]
    run_record = {}
    if (run_dir / RUN_RECORD_NAME).exists():
        run_record = json.loads((run_dir / RUN_RECORD_NAME).read_text())
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    samples = [dataset[i] for i in range(min(images, len(dataset)))]
    try:
        preds = model([s["image"].to(device) for s in samples])
        roi_maps = None
        if hasattr(model, "roi_maps") and all(len(s["boxes"]) for s in samples):
            roi_maps = []
            for s, maps in zip(samples, model.roi_maps([s["image"].to(device) for s in samples],
                                                       [s["boxes"].to(device) for s in samples])):
                entry = {"boxes": s["boxes"].float().cpu(), "labels": maps["labels"].to(torch.uint8).cpu()}
                if "attention" in maps:
                    entry["attention"] = maps["attention"].to(torch.float16).cpu()
                roi_maps.append(entry)
    finally:
        model.train(was_training)
    base = {
        "format": 1, "method": method, "variant": variant, "profile": profile, "seed": seed,
        "iterations": (run_record.get("metrics") or {}).get("iterations"),
        "run_config": json.loads(json.dumps(run_record.get("config") or {}, default=str)),
        "image_ids": [str(s["meta"]["id"]) for s in samples],
        # the images for display only: JPEG at quality 90 (a tenth of the raw bytes)
        "images_jpeg": [_jpeg(s["image"]) for s in samples],
        "targets": [{"semantic": s["semantic"].to(torch.uint8), "instances": s["instances"].to(torch.uint8),
                     "boxes": s["boxes"].float()} for s in samples],
        "roi_maps": roi_maps,
    }
    while True:
        blob = io.BytesIO()
        torch.save({**base, "predictions": [_compact(p, persons) for p in preds], "persons_kept": persons}, blob)
        data = gzip.compress(blob.getvalue(), compresslevel=6)
        if len(data) <= max_bytes or persons <= 1:
            break
        persons = max(1, persons // 2)
    _write_bytes(paths["predictions"], data)
    written["predictions"] = paths["predictions"]
    return written


def load_predictions(path: str | Path) -> dict:
    """A predictions file of :func:`save_artefacts`, on the CPU.

    Returns:
        ``{"predictions": [prediction-contract dicts, plus "num_predicted"], "images": [uint8 (3, H, W), decoded
        from JPEG: for display], "targets": [{"semantic", "instances", "boxes"}], "image_ids", "roi_maps": per image
        {"boxes", "labels" (R, 56, 56), "attention" (R, 28, 28) float16} or None, "seed", "iterations", "profile",
        "method", "variant", "run_config"}``.
    """
    saved = torch.load(io.BytesIO(gzip.decompress(Path(path).read_bytes())), map_location="cpu", weights_only=True)
    saved["images"] = [_unjpeg(data) for data in saved.pop("images_jpeg", [])]
    return saved


def _artefact_current(path: Path, run_dir: Path) -> bool:
    """Whether the predictions file at ``path`` was made from the run now in ``run_dir`` (same config, iterations)."""
    if not path.exists() or not (run_dir / RUN_RECORD_NAME).exists():
        return False
    try:
        saved = load_predictions(path)
        record = json.loads((run_dir / RUN_RECORD_NAME).read_text())
    except Exception:  # an unreadable artefact is remade
        return False
    return (saved.get("iterations") == (record.get("metrics") or {}).get("iterations")
            and saved.get("run_config") == json.loads(json.dumps(record.get("config") or {}, default=str)))


def saved_artefacts(method: str, variant: str, profiles: Sequence[str] = ("gpu", "cpu"),
                    root: str | Path | None = None) -> dict | None:
    """The artefacts of ``method``'s ``variant`` in the first of ``profiles`` that has its predictions or its log.

    Returns:
        ``{"profile", "log": path or None, "predictions": path or None}``, or ``None`` when no profile has either.
    """
    for profile in profiles:
        paths = artefact_paths(method, variant, profile, root)
        found = {key: path if path.exists() else None for key, path in paths.items()}
        if any(found.values()):
            return {"profile": profile, **found}
    return None


def record_spread(metrics: dict, seed: int | None = None) -> dict:
    """A record's ``metrics`` as :func:`run_variants` writes them (``mean``, ``std``, ``per_seed``, ``seeds``).

    A record of the older one-seed format (plain metrics, no ``per_seed``) is read as one seed: its values are the
    mean, the spread is 0, and ``seeds`` is ``[seed]`` (the record config's seed, ``None`` when unknown).
    """
    if "per_seed" in metrics and "mean" in metrics:
        return metrics
    plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"mean": dict(plain), "std": {k: 0.0 for k in plain}, "min": dict(plain), "max": dict(plain),
            "per_seed": {str(seed): dict(metrics)}, "seeds": [seed], "iterations": metrics.get("iterations"),
            "one_seed_record": True}


def _recorded_seeds(name: str, profile: str, config: dict, iterations: int) -> dict[int, dict]:
    """Per-seed metrics of the variant record ``name`` when it holds this config (any seeds) at ``iterations``
    or more: runs measured before, which need no run folder to be reused (run folders are not kept with results)."""
    from ..engine.results import load_result

    try:
        record = load_result(name, profile)
    except ValueError:
        return {}
    if record is None or "per_seed" not in (record.get("metrics") or {}):
        return {}
    saved = {k: v for k, v in (record.get("config") or {}).items() if k != "seeds"}
    if config_differences(saved, json.loads(json.dumps(config, default=str))):
        return {}
    return {int(seed): m for seed, m in record["metrics"]["per_seed"].items()
            if (m.get("iterations") or 0) >= iterations and "mIoU" in m}


def run_variants(method: str, variants: Sequence[tuple[str, dict]], seeds: Sequence[int], profile: Profile, *,
                 record_prefix: str, out_root: str | Path, iterations: int | None = None,
                 device: torch.device | str | None = None, val_images: int | None = None, write: bool = True,
                 force: bool = False, notes: str = "", on_run: Callable[[str, int, dict], None] | None = None,
                 artefacts: bool | None = None) -> dict[str, dict]:
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
        artefacts: after each variant's record, keep the first seed's log and predictions with
            :func:`save_artefacts` (default: when ``write``); a reused run's are remade only when missing or of
            another run.

    A variant's record is rewritten after every seed it did not hold and holds every seed ever measured for that
    exact config (earlier calls' included), so the records alone carry an ablation forward: a seed already in the
    record is not retrained, even when its run folder is gone, and a call that only reuses seeds leaves the record
    (and its provenance) untouched.

    Returns:
        ``{variant: metrics}`` with ``metrics`` as written (``per_seed``, ``mean``, ``std``, ``min``, ``max``,
        ``seeds``, ``iterations``).
    """
    device = get_device(device)
    artefacts = write if artefacts is None else artefacts
    results = {}
    for name, flags in variants:
        plan = method_recipe(method, profile, **flags)
        if iterations is not None:
            plan = with_iterations(plan, iterations)
        config = {"variant": name, "flags": flags, "model": {"name": method, **plan["model"]}, "train": plan["train"],
                  "data": plan["data"], "val_images": val_images or plan["data"]["val_images"]}
        recorded = _recorded_seeds(f"{record_prefix}{name}", profile.name, config, plan["train"]["iterations"])
        ours = bool(recorded)  # the record holds this variant's earlier seeds: adding seeds to it is no conflict
        per_seed = {}
        kept = None  # the first seed's model, for the artefacts
        for seed in seeds:
            folder = run_folder(out_root, profile, name, seed)
            predictions = artefact_paths(method, name, profile.name)["predictions"]
            keep = artefacts and seed == seeds[0] and not _artefact_current(predictions, folder)
            fresh = not (seed in recorded and not (keep and not predictions.exists()))
            if not fresh:
                metrics, model, keep = recorded[seed], None, False  # measured by an earlier call: kept in the record
            else:
                metrics, model = train_seed(method, profile, flags, seed, folder, iterations=iterations,
                                            device=device, val_images=val_images, variant=name, keep_model=keep)
            if keep:
                kept = model
            del model
            per_seed[seed] = metrics
            if on_run is not None:
                on_run(name, seed, metrics)
            if write:  # another process may have added seeds of this config meanwhile: keep them too
                recorded = {**recorded, **_recorded_seeds(f"{record_prefix}{name}", profile.name, config,
                                                          plan["train"]["iterations"])}
            measured = {**recorded, **per_seed}  # every seed measured for this config, earlier calls' included
            measured = {s: measured[s] for s in sorted(measured)}
            record = {**summarise(measured), "per_seed": {str(s): m for s, m in measured.items()},
                      "seeds": list(measured), "iterations": min(int(m.get("iterations") or 0)
                                                                 for m in measured.values())}
            # After every seed, so an interrupted ablation keeps every run it finished; a record that already holds
            # every seed measured is left as written (its provenance names the run that measured them).
            if write and fresh:
                wall = sum(float(m.get("wall_time_s") or 0.0) for m in measured.values())
                write_result(f"{record_prefix}{name}", record, profile=profile.name,
                             config={**config, "seeds": list(measured)}, wall_time_s=wall, device=device,
                             force=force or ours or bool(recorded),
                             notes=(notes or f"{method} variant {name!r}") + f", seeds {list(measured)}, profile "
                             f"{profile.name}, device {device.type}" + ("" if device.type == "cuda" else
                                                                        " (CPU run: no GPU was used)"))
                ours = True
        if kept is not None:
            _, val_set = synth_splits(plan["data"], val_images=val_images)
            save_artefacts(kept, val_set, run_folder(out_root, profile, name, seeds[0]), method=method, variant=name,
                           profile=profile.name, seed=seeds[0])
            del kept
        results[name] = record
    return results
