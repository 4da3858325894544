"""The ``hparse`` command line.

Each command is a ``_cmd_<name>(args) -> int`` function and a block in :func:`build_parser`; heavy imports happen
inside the command so that ``hparse --help`` stays fast. Errors a user can fix (a missing folder, a bad flag value, a
corrupt dataset file, a checkpoint of another run, a results file of a longer run) are printed as one message on
stderr with exit status 2, without a traceback; ``--debug`` (or ``HPARSE_DEBUG=1``) shows the traceback instead.
Flag values are checked when they are parsed and the run's folder, device and memory before a model is built.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "UserError"]


class UserError(Exception):
    """An error the user can fix; printed without a traceback."""


# hparse's own exception classes that a user's input causes, by module; checked only once their module is loaded
# (an exception of a module that was never imported cannot have been raised).
_USER_ERRORS = {
    "hparse.data.io": ("DatasetError",),
    "hparse.engine.checkpoint": ("CheckpointError",),
    "hparse.engine.identity": ("RunMismatchError",),
    "hparse.engine.results": ("ResultConflictError",),
    "hparse.engine.rundir": ("RunLockedError",),
    "hparse.metrics.checks": ("MetricInputError",),
    "hparse.metrics.io": ("PredictionFormatError",),
    "hparse.models.inputs": ("ImageInputError",),
}


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, UserError):
        return True
    for module_name, names in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, tuple(getattr(module, n) for n in names)):
            return True
    return False


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UserError` (one line, exit 2, from :func:`main`)."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def _number(kind, minimum=None, above=None, what=""):
    """An argparse ``type``: ``kind`` (int or float), finite, and ``>= minimum`` / ``> above``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") \
                from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (minimum is not None and value < minimum) or (above is not None and value <= above):
            bound = f">= {minimum}" if minimum is not None else f"> {above}"
            raise argparse.ArgumentTypeError(f"must be {bound}{what}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


_positive_int = _number(int, minimum=1)
_nonnegative_int = _number(int, minimum=0)
_positive_float = _number(float, above=0)
_finite_float = _number(float)


def _profile(args):
    """The run profile of ``--profile`` / ``$HPARSE_PROFILE``, an unknown name being a user error."""
    from .engine import get_profile

    try:
        return get_profile(getattr(args, "profile", None))
    except ValueError as err:
        raise UserError(str(err)) from None


def _device(name):
    """``--device`` as a torch device; an unknown name or CUDA on a machine without it is a user error."""
    from .engine import get_device

    try:
        return get_device(name)
    except RuntimeError as err:
        message = str(err).splitlines()[0]
        raise UserError(f"--device {name}: {message}; pass --device cpu (or leave --device out)") from None


def _check_out_dir(out: Path) -> None:
    """``--out`` must be a folder this process can create and write to; checked before any model is built."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; pass a folder for the run (created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"--out {out} cannot be created or written to ({err.strerror or err}); choose another "
                        "--out") from None


#: A floor on the training memory of one input pixel of a ResNet-FPN top-down parser (float32 activations kept for the
#: backward pass): torchvision's Mask R-CNN R50-FPN takes 2-3 GB per 800x1333 image, over 2 KiB per pixel. Used only
#: to refuse a batch that cannot fit, so an underestimate errs on the side of trying.
_TRAIN_BYTES_PER_PIXEL = 1024


def _available_memory(device) -> tuple[int, str]:
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, torch.cuda.get_device_name(index)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
    except (ValueError, OSError, AttributeError):
        return 0, "this machine"


def _check_batch_memory(batch_size: int, height: int, width: int, device) -> None:
    """Refuse a batch whose estimated training memory exceeds the device's, naming the estimate."""
    need = batch_size * height * width * _TRAIN_BYTES_PER_PIXEL
    available, where = _available_memory(device)
    if available and need > available:
        raise UserError(f"--batch-size {batch_size} needs an estimated {need / 2**30:,.1f} GiB to train at "
                        f"{height}x{width} pixels (at least {_TRAIN_BYTES_PER_PIXEL // 1024} KiB per pixel per "
                        f"image), more than the {available / 2**30:,.1f} GiB of {where}; lower --batch-size")


def _add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None,
                        help="run size (default: $HPARSE_PROFILE, else gpu with CUDA, else cpu)")


def _add_debug(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show the traceback of an error instead of one line (also: HPARSE_DEBUG=1)")


def _add_record(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--record", "--result-name", dest="record", default=None, metavar="NAME",
                        help=f"also write {what} to results/<profile>/NAME.json (the run's own record is always "
                        "written to its run folder)")
    parser.add_argument("--force", action="store_true",
                        help="let --record replace a results file of another config or of a longer run")


def _add_synth_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="val", choices=("train", "val", "test"))
    parser.add_argument("--num", type=_positive_int, default=8, help="number of images")
    parser.add_argument("--image-size", type=_positive_int, default=256)
    parser.add_argument("--min-people", type=_nonnegative_int, default=1)
    parser.add_argument("--max-people", type=_nonnegative_int, default=6)
    parser.add_argument("--crowding", type=_finite_float, default=0.5, help="0 = people apart, 1 = heavily "
                        "overlapping")
    parser.add_argument("--seed", type=_nonnegative_int, default=0)


def _synth_from_args(args):
    from .data import SynthCrowd

    try:
        return SynthCrowd(split=args.split, num_images=args.num, image_size=args.image_size,
                          min_people=args.min_people, max_people=args.max_people, crowding=args.crowding,
                          seed=args.seed)
    except ValueError as err:  # SynthCrowd names the argument and its range
        raise UserError(str(err).replace("SynthCrowd: ", "SynthCrowd (--num, --image-size, --min-people, "
                                         "--max-people, --crowding, --seed): ")) from None


# ---------------------------------------------------------------------------------------------------- data


def _cmd_data_preview(args) -> int:
    """Render a grid of samples (image with boxes and keypoints, parts, persons) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from .viz import sample_grid, save_figure

    if args.dataset != "synth":
        raise UserError(f"data preview supports --dataset synth (got {args.dataset!r})")
    dataset = _synth_from_args(args)
    samples = [dataset[i] for i in range(len(dataset))]
    fig = sample_grid(samples[: args.num], dataset.labels, panel="all" if args.num <= 4 else args.panel)
    path = save_figure(fig, args.out)
    people = sum(len(s["boxes"]) for s in samples)
    print(f"wrote {path} ({len(samples)} SynthCrowd {args.split} images, {people} people)")
    return 0


def _cmd_data_verify(args) -> int:
    """Load every image of a real dataset with all checks; list every problem; exit 1 if there is any."""
    from .data.io import DatasetNotFoundError
    from .data.verify import DEFAULT_SPLITS, dataset_key, verify_split

    try:
        key = dataset_key(args.dataset)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    splits = args.split or list(DEFAULT_SPLITS[key])
    reports = []
    for split in splits:
        try:
            report = verify_split(key, args.root, split, limit=args.limit, workers=args.workers,
                                  on_problem=lambda line: print(f"  {line}", flush=True))
        except DatasetNotFoundError as err:
            raise UserError(str(err)) from None
        print(report.summary(), flush=True)
        reports.append(report)
    problems = sum(len(r.problems) for r in reports)
    checked = sum(r.checked for r in reports)
    empty = [r.split for r in reports if r.checked == 0 and not r.problems]
    if empty:  # a check of nothing must not read as a pass
        print(f"FAILED: nothing checked in split(s) {', '.join(empty)} of {args.root}: the image list is empty")
        return 1
    print(f"{'OK' if not problems else 'FAILED'}: {checked} images checked in {len(reports)} split(s) of "
          f"{args.root}, {problems} problem{'s' * (problems != 1)}")
    return 1 if problems else 0


_EXPORT_FORMATS = ("cihp", "mhp", "ppp", "densepose")


def _cmd_data_export(args) -> int:
    """Write SynthCrowd images in a real dataset's official on-disk layout (readable by that dataset's loader)."""
    from .data.verify import open_dataset

    if args.split not in ("train", "val"):
        raise UserError(f"--split must be train or val for an export (the real datasets' test splits have no "
                        f"labels), got {args.split!r}")
    dataset = _synth_from_args(args)
    if args.format == "cihp":
        from .data.cihp import write_cihp

        write_cihp((dataset[i] for i in range(len(dataset))), args.out, args.split)
    elif args.format == "mhp":
        from .data.mhp import write_mhp

        write_mhp((dataset[i] for i in range(len(dataset))), args.out, args.split)
    elif args.format == "ppp":
        from .data.pascal_person_part import synth_to_pascal_person_part, write_pascal_person_part

        write_pascal_person_part((synth_to_pascal_person_part(dataset, i) for i in range(len(dataset))), args.out,
                                 args.split)
    else:
        from .data.densepose_coco import synth_to_densepose, write_densepose_coco

        write_densepose_coco((synth_to_densepose(dataset, i) for i in range(len(dataset))), args.out, args.split)
    written = open_dataset(args.format, args.out, args.split)
    people = sum(len(written[i]["boxes"]) for i in range(len(written)))
    print(f"wrote {len(written)} SynthCrowd {args.split} images ({people} people) to {args.out} in the "
          f"{written.name} layout; read them with {type(written).__name__}({str(args.out)!r}, {args.split!r})")
    return 0


# ------------------------------------------------------------------------------------------------ evaluate

_EVALUATE_HELP = """Score predictions stored as PNG files against a dataset's ground truth: mIoU, AP^p (APp10..APp90,
APpvol), PCP and AP^r (APr10..APr90, APrvol), with the official evaluation scripts' semantics (fractions in [0, 1]).

Prediction folder layouts (--layout auto picks by the folders present; label maps are single-channel PNGs of
label values, 8-bit or 16-bit, named by the ground truth's image id):

  hparse (hparse.metrics.io.write_predictions; every metric):
    global_parsing/<id>.png            semantic map, part label 0..n-1 per pixel
    person_parsing/<id>.txt            one line per person: "<KK> <score>" [+ n per-part scores]
    person_parsing/<id>_<NN>_<KK>.png  part map of person KK of NN (0 = not this person); persons may overlap
  cihp (the CIHP challenge submission; mIoU and AP^r):
    global_parsing/<id>.png            semantic map
    instance_parsing/<id>.png          part-instance map, pixel value k = instance k (0 = none)
    instance_parsing/<id>.txt          line k: "<class_id> <score>"
  mhp (the MHP v2 submission; every metric):
    results.txt                        lines "<id> <pid> <score> <pid> <score> ..."
    global_seg/<id>.png, global_tag/<id>.png   part labels and person ids; person = (tag == pid) * seg

Ground truth (--gt): the dataset's official layout, read by hparse.data.CIHP / MHPv2 (for cihp, the
instance-level_human_parsing folder; for mhp, LV-MHP-v2); for synth, a SynthCrowd export written by
`hparse data export --format cihp` (read as CIHP)."""


def _check_score_thresh(args) -> None:
    if not args.allow_raw_scores and not 0.0 <= args.score_thresh <= 1.0:
        raise UserError(f"--score-thresh {args.score_thresh} is outside [0, 1], where scores lie; pass "
                        "--allow-raw-scores to score raw, unbounded scores")


def _cmd_evaluate(args) -> int:
    """Score a prediction folder against a dataset split; print the metrics and optionally write them as JSON."""
    _check_score_thresh(args)
    if args.checkpoint is not None:
        return _evaluate_checkpoint(args)
    if args.pred is None or args.gt is None or args.dataset is None:
        raise UserError("evaluate needs --pred, --gt and --dataset (prediction folder mode) or --checkpoint "
                        "(model mode)")
    import json
    import math

    import torch

    from .data.io import DatasetError
    from .metrics import MetricInputError, ParsingEvaluator
    from .metrics.io import PredictionFormatError, PredictionReader

    loader = {"cihp": "cihp", "synth": "cihp", "mhp": "mhp"}[args.dataset]
    try:
        from .data.verify import open_dataset

        dataset = open_dataset(loader, args.gt, args.split)
    except ImportError as err:
        raise UserError(f"reading {args.dataset} ground truth needs the {loader} loader of hparse.data ({err})") \
            from None
    except (DatasetError, ValueError, FileNotFoundError) as err:
        raise UserError(f"cannot read the {args.dataset} {args.split} ground truth in {args.gt}: {err}") from None
    if len(dataset) == 0:
        raise UserError(f"the {args.dataset} {args.split} ground truth in {args.gt} lists no images; nothing to score")
    labels = dataset.labels
    try:
        reader = PredictionReader(args.pred, labels.num_classes, args.layout, allow_raw_scores=args.allow_raw_scores)
        unmatched = sorted(reader.image_ids() - set(dataset.ids))
    except PredictionFormatError as err:
        raise UserError(str(err)) from None
    if unmatched:  # not scored; usually the wrong split or renamed files, so say so before the numbers
        print(f"note: {len(unmatched)} predictions in {args.pred} are for images not in the {args.dataset} "
              f"{args.split} ground truth and are not scored, e.g. {', '.join(unmatched[:3])}", file=sys.stderr)

    missing = [i for i in dataset.ids if not reader.has(i)]
    if missing and args.missing == "error":
        raise UserError(f"{len(missing)} of {len(dataset)} {args.split} images have no prediction in {args.pred} "
                        f"({reader.layout} layout), e.g. {', '.join(missing[:3])}; pass --missing skip or "
                        f"--missing empty to score them anyway")
    evaluator = ParsingEvaluator(
        labels.num_classes, class_names=labels.names, absent_class=args.absent_class, score_thresh=args.score_thresh,
        skip_empty_gt=args.skip_empty_gt, ap_style=args.ap_style, class_mean=args.class_mean,
        ignore_void=args.ignore_void, metrics=reader.metrics)
    skipped = set(missing) if args.missing == "skip" else set()
    for index, image_id in enumerate(dataset.ids):
        if image_id in skipped:
            continue
        target = dataset[index]
        shape = tuple(target["semantic"].shape)
        try:
            if image_id in missing:  # --missing empty: no person, everything background
                pred = {"semantic": torch.zeros(shape, dtype=torch.int64),
                        "person_parts": torch.zeros((0, *shape), dtype=torch.int64), "person_scores": torch.zeros(0)}
            else:
                pred = reader.read(image_id, shape)
            evaluator.update(pred, target)
        except (PredictionFormatError, MetricInputError) as err:
            raise UserError(f"{args.pred}: {err}") from None

    metrics = evaluator.compute()
    headline = [k for k in ("mIoU", "pixel_acc", "APp50", "APpvol", "PCP50", "APr50", "APr60", "APr70", "APrvol")
                if k in metrics]
    print(f"{args.dataset} {args.split}: {metrics['num_images']} images, {metrics['num_gt_persons']} GT persons, "
          f"{metrics['num_pred_persons']} predicted persons ({reader.layout} layout"
          f"{f', {len(skipped)} skipped' if skipped else ''})")
    for key in headline:
        print(f"  {key:<10} {metrics[key]:.4f}")
    if args.json is not None:
        from .engine.results import atomic_write_text

        def finite(value):  # JSON has no NaN: an undefined metric is null
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return [finite(v) for v in value] if isinstance(value, list) else value

        record = {"metrics": {k: finite(v) for k, v in metrics.items()}, "evaluator": evaluator.config(),
                  "dataset": args.dataset, "split": args.split, "pred": str(args.pred), "gt": str(args.gt),
                  "layout": reader.layout, "skipped": sorted(skipped), "unmatched_predictions": unmatched}
        atomic_write_text(Path(args.json), json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------------------------- train, demo

_MODEL_FLAGS = ("backbone", "pss", "roi_size", "gce", "ipbc", "parsing_batch")
_SWITCH = {"on": True, "off": False}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Parsing R-CNN components (default: the paper's full model)")
    group.add_argument("--backbone", default=None, help="resnet18, resnet50, resnet101 (default: the profile's)")
    group.add_argument("--backbone-weights", default=None,
                       help="torchvision ImageNet weights, e.g. DEFAULT (needs a network; default: none)")
    group.add_argument("--pss", default=None, choices=("on", "off", "p2_only"),
                       help="proposals separation sampling, Sec. 3.1 (on: parsing RoIs from P2 only)")
    group.add_argument("--no-pss", dest="pss", action="store_const", const="off", help="same as --pss off")
    group.add_argument("--roi-size", type=_positive_int, default=None, help="parsing RoIAlign size, Sec. 3.2 (14 "
                       "baseline, 32 ERR, 64)")
    group.add_argument("--gce", default=None, choices=("on", "off", "aspp", "nonlocal"),
                       help="geometric and context encoding, Sec. 3.3 (off: the eight-conv baseline)")
    group.add_argument("--no-gce", dest="gce", action="store_const", const="off", help="same as --gce off")
    group.add_argument("--ipbc", default=None, choices=("on", "off", "after", "before", "both"),
                       help="four 3x3 512-d convs around the GCE, Sec. 3.4 (on = after)")
    group.add_argument("--no-ipbc", dest="ipbc", action="store_const", const="off", help="same as --ipbc off")
    group.add_argument("--parsing-batch", type=_positive_int, default=None, help="parsing RoIs per image in training")


def _mg_parser_config(args, profile) -> dict:
    """The profile's mg_parser recipe (its flags are build_model keywords; the command line sets only the backbone)."""
    from .recipes import recipe as method_recipe

    given = [f"--{flag.replace('_', '-')}" for flag in _MODEL_FLAGS if getattr(args, flag, None) is not None
             and flag != "backbone"] + (["--attention"] if getattr(args, "attention", None) is not None else [])
    if given:
        raise UserError(f"{', '.join(given)}: top-down component flags do not apply to mg_parser")
    try:
        recipe = method_recipe("mg_parser", profile, args.dataset)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.backbone is not None:
        recipe["model"]["backbone"] = args.backbone
    if getattr(args, "backbone_weights", None):
        recipe["model"]["backbone_weights"] = args.backbone_weights
    return recipe


def _model_config(args, profile) -> dict:
    """The profile's recipe for the model and dataset with the command line's component flags on top."""
    from .recipes import recipe as method_recipe

    if getattr(args, "model", None) == "mg_parser":
        return _mg_parser_config(args, profile)

    if getattr(args, "model", "parsing_rcnn") == "attention_rcnn":
        given = [f"--{flag.replace('_', '-')}" for flag in _MODEL_FLAGS if getattr(args, flag, None) is not None
                 and flag != "backbone"]
        if given:
            raise UserError(f"{', '.join(given)}: Parsing R-CNN component flags do not apply to attention_rcnn "
                            f"(its component is --attention)")
        if args.dataset != "synth":
            raise UserError("attention_rcnn has a training recipe for SynthCrowd only (--dataset synth); for a real "
                            "dataset build it with hparse.models.build_model and train with hparse.engine.train")
        attention = None if args.attention == "none" else (args.attention or "concat_after_conv4")
        recipe = method_recipe("attention_rcnn", profile, args.dataset, attention=attention)
        if args.backbone is not None:
            recipe["model"]["backbone"] = args.backbone
    else:
        if getattr(args, "attention", None) is not None:
            raise UserError("--attention applies to --model attention_rcnn only")
        recipe = method_recipe("parsing_rcnn", profile, args.dataset)
        for flag in _MODEL_FLAGS:
            value = getattr(args, flag, None)
            if value is not None:
                recipe["model"][flag] = _SWITCH.get(value, value) if isinstance(value, str) else value
    model = recipe["model"]
    if getattr(args, "backbone_weights", None):
        model["backbone_weights"] = args.backbone_weights
    return recipe


def _train_dataset(args, profile, split: str, num: int):
    """SynthCrowd at the profile's size, or a real dataset read from ``--root``; an empty split is a user error."""
    if args.dataset == "synth":
        from .data import SynthCrowd

        try:
            return SynthCrowd(split=split, num_images=num, image_size=profile.image_size, min_people=1,
                              max_people=profile.max_people, seed=args.seed)
        except ValueError as err:
            raise UserError(str(err)) from None
    if args.root is None:
        raise UserError(f"--dataset {args.dataset} needs --root (the dataset folder; see data_scripts/README.md)")
    from .data.io import DatasetError
    from .data.verify import open_dataset

    try:
        dataset = open_dataset(args.dataset, args.root, split)
    except (DatasetError, ValueError, FileNotFoundError, KeyError) as err:
        raise UserError(f"cannot read the {args.dataset} {split} split in {args.root}: {err}") from None
    if len(dataset) == 0:
        raise UserError(f"the {args.dataset} {split} split in {args.root} lists no images (its image list is "
                        "empty); nothing to train or evaluate on")
    return dataset


def _passive_cpu_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning, before torch loads its OpenMP runtime.

    By default OpenMP worker threads busy-wait between parallel regions. On a machine whose cores are shared with
    other work (a laptop, CI, a shared server) they then fight for the cores with the other processes and every small
    operator waits for descheduled threads: a training step of the cpu demo measured 7-11 s with two spinning threads
    against 0.8 s with ``OMP_WAIT_POLICY=PASSIVE`` (2 cores, load average ~4). The number of torch threads is left
    at torch's default (all cores). A value the user already set wins; once torch is imported it is too late, so
    this runs first in the training commands.
    """
    import os

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train_run(args, profile, *, iterations, out_dir, record, quiet=False, recipe=None):
    """Check the arguments, build the model, train it, evaluate it; returns (model, summary, recipe, eval_dataset).

    ``recipe`` (``{"model", "train", "data"}``) replaces the profile's :func:`hparse.recipes.recipe` (``hparse demo``
    passes :func:`hparse.recipes.demo_recipe`'s); SynthCrowd is drawn at the recipe's sizes. ``record`` names the
    ``results/`` file to write besides the run folder's own ``result.json`` (``None``: none).
    """
    import torch

    from .engine import train
    from .models import build_model

    device = _device(args.device)
    _check_out_dir(Path(out_dir))
    from .recipes import warmup_steps

    recipe = _model_config(args, profile) if recipe is None else recipe
    model_cfg, train_cfg = recipe["model"], recipe["train"]
    profile = profile.override(**recipe.get("data", {}))
    train_set = _train_dataset(args, profile, "train", profile.train_images)
    val_set = _train_dataset(args, profile, "val", profile.val_images)
    if iterations is not None:
        train_cfg["iterations"] = iterations
        train_cfg["warmup"] = min(train_cfg["warmup"], warmup_steps(iterations))
    for key in ("batch_size", "lr"):
        if getattr(args, key, None) is not None:
            train_cfg[key] = getattr(args, key)
    if getattr(args, "workers", None) is not None:
        train_cfg["num_workers"] = args.workers
    sizes = model_cfg.get("train_sizes") or [model_cfg.get("test_size") or profile.image_size]
    height = max(sizes) if isinstance(sizes, (list, tuple)) else sizes
    _check_batch_memory(train_cfg["batch_size"], height, model_cfg.get("max_size") or height, device)
    config = {"model": {"name": args.model, **model_cfg}, "train": train_cfg, "dataset": args.dataset,
              "train_images": len(train_set), "val_images": len(val_set), "seed": args.seed}
    if args.dataset == "synth":
        config.update(image_size=profile.image_size, max_people=profile.max_people)
    if record is not None and not getattr(args, "force", False):  # refuse before building anything
        from .engine.results import check_replace, result_path

        try:
            path = result_path(record, profile.name)
        except ValueError as err:
            raise UserError(f"--record {record}: {err}") from None
        check_replace(path, config, train_cfg["iterations"])
    torch.manual_seed(args.seed)
    try:
        model = build_model(args.model, num_classes=train_set.labels.num_classes, **model_cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as err:  # FileNotFoundError: a missing starting point
        raise UserError(str(err)) from None
    if not quiet:
        print(f"training {args.model} on {args.dataset} ({len(train_set)} train / {len(val_set)} val images, "
              f"profile {profile.name}, {device}) -> {out_dir}")
    summary = train(model, train_set, eval_dataset=val_set, out_dir=out_dir, resume=not args.no_resume,
                    seed=args.seed, device=device, result_name=record, profile=profile.name, config=config,
                    progress=not quiet, skip_bad=getattr(args, "skip_bad", False),
                    force_record=getattr(args, "force", False), **train_cfg)
    return model, summary, recipe, val_set


def _print_metrics(metrics: dict) -> None:
    for key in ("mIoU", "APp50", "APpvol", "PCP50", "APr50"):
        if key in metrics:
            print(f"  {key:<8} {metrics[key]:.4f}")


def _print_records(summary: dict) -> None:
    skipped = summary.get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable training image{'s' * (len(skipped) != 1)} (--skip-bad):")
        for item in skipped[:10]:
            print(f"  step {item['step']}: {item['file']}: {item['error']}")
    for key in ("record", "result"):
        if summary.get(key):
            print(f"wrote {summary[key]}")


def _cmd_train(args) -> int:
    """Train a top-down model with the profile's recipe; checkpoint, log and the run's record with provenance."""
    _passive_cpu_threads()
    profile = _profile(args)
    out_dir = args.out or Path("runs") / f"{args.model}_{args.dataset}_{profile.name}"
    _, summary, _, _ = _train_run(args, profile, iterations=args.iterations, out_dir=out_dir, record=args.record)
    print(f"trained {summary['step']} steps in {summary['wall_time_s']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s); checkpoint {summary['checkpoint']}")
    if summary["metrics"]:
        _print_metrics(summary["metrics"])
    _print_records(summary)
    return 0


def _cmd_demo(args) -> int:
    """Train a small Parsing R-CNN on SynthCrowd, evaluate it, write its metrics, learning curves and an overlay."""
    _passive_cpu_threads()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .engine.trainer import read_log
    from .recipes import demo_recipe
    from .viz import save_figure
    from .viz.training import learning_curves, prediction_panels

    profile = _profile(args)
    args.dataset, args.root, args.model, args.batch_size, args.lr, args.workers = "synth", None, "parsing_rcnn", \
        None, None, None
    recipe = demo_recipe(profile)  # the demo's sizes live there, in one place
    data_profile = profile.override(**recipe["data"])
    out_dir = Path(args.out or Path("runs") / f"demo_{profile.name}")
    model, summary, _, val_set = _train_run(args, data_profile, iterations=args.iterations, out_dir=out_dir,
                                            record=args.record, recipe=recipe)
    print(f"trained {summary['step']} steps in {summary['wall_time_s']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s)")
    _print_metrics(summary["metrics"] or {})
    _print_records(summary)

    what = f"Parsing R-CNN on SynthCrowd val ({profile.name} profile, {summary['step']} steps)"
    fig = learning_curves(read_log(out_dir, "train"), read_log(out_dir, "eval"), title=what)
    print(f"wrote {save_figure(fig, out_dir / 'learning_curves.png')}")
    plt.close(fig)
    samples = [val_set[i] for i in range(min(4, len(val_set)))]
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        predictions = model([s["image"].to(device) for s in samples])
    fig = prediction_panels(samples, predictions, val_set.labels, model.semantic_score_thresh, title=what)
    print(f"wrote {save_figure(fig, out_dir / 'overlay.png')}")
    plt.close(fig)
    if args.record:  # the book draws the recorded demo's curves and predictions from these small files
        from .experiments.runner import save_artefacts

        kept = save_artefacts(model, val_set, out_dir, method="parsing_rcnn", variant=Path(args.record).name,
                              profile=profile.name, seed=args.seed)
        for path in kept.values():
            print(f"wrote {path}")
    return 0


def _cmd_pretrain(args) -> int:
    """Pretrain the backbone's starting point on SynthCrowd (hparse.engine.pretrain) and write its weights."""
    _passive_cpu_threads()
    from .engine.pretrain import pretrain_backbone

    profile = _profile(args)
    out_dir = args.out or Path("runs") / f"pretrain_{profile.name}"
    _check_out_dir(out_dir)
    try:
        result = pretrain_backbone(profile, out_dir, iterations=args.iterations, seed=args.seed,
                                   device=_device(args.device), install=args.install, record=args.record,
                                   force=args.force, stages=tuple(args.stages), init=args.init)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    summary = result["summary"]
    print(f"pretrained {summary['step']} steps in {summary['wall_time_s']:.0f} s; SynthCrowd val part mIoU "
          f"{result['metrics']['mIoU']:.4f}")
    for path in result["weights"]:
        print(f"wrote {path}")
    return 0


def _evaluate_checkpoint(args) -> int:
    """``hparse evaluate --checkpoint``: rebuild the model from its checkpoint and score it on a dataset split."""
    import json

    from .engine import evaluate, write_result
    from .engine.checkpoint import CheckpointError, load_model
    from .engine.results import atomic_write_text, check_replace, result_path

    profile, device = _profile(args), _device(args.device)
    try:
        model, checkpoint = load_model(args.checkpoint, device=device)
    except CheckpointError as err:
        raise UserError(str(err)) from None
    config = checkpoint.get("config") or {}
    dataset_name = args.dataset or config.get("dataset", "synth")
    if dataset_name == "synth":
        from .data import SynthCrowd

        num = args.num or profile.val_images
        dataset = SynthCrowd(split=args.split, num_images=num, image_size=config.get("image_size", profile.image_size),
                             min_people=1, max_people=config.get("max_people", profile.max_people), seed=args.seed)
    else:
        if args.gt is None:
            raise UserError(f"--checkpoint with --dataset {dataset_name} needs --gt (the dataset root)")
        from .data.io import DatasetError
        from .data.verify import open_dataset

        try:
            dataset = open_dataset(dataset_name, args.gt, args.split)
        except (DatasetError, ValueError, FileNotFoundError, KeyError) as err:
            raise UserError(f"cannot read the {dataset_name} {args.split} split in {args.gt}: {err}") from None
    if len(dataset) == 0:
        raise UserError(f"the {dataset_name} {args.split} split has no images; nothing to score")
    record_config = {"checkpoint": str(args.checkpoint), "step": checkpoint.get("step"), "dataset": dataset_name,
                     "split": args.split, "model": checkpoint["model_config"]}
    if args.record:
        try:
            path = result_path(args.record, profile.name)
        except ValueError as err:
            raise UserError(f"--record {args.record}: {err}") from None
        check_replace(path, record_config, checkpoint.get("step"), args.force)
    mode = dict(absent_class=args.absent_class, score_thresh=args.score_thresh, skip_empty_gt=args.skip_empty_gt,
                ap_style=args.ap_style, class_mean=args.class_mean, ignore_void=args.ignore_void)
    metrics = evaluate(model, dataset, batch_size=2, max_images=args.num,
                       evaluator_kwargs={**mode, "class_names": dataset.labels.names})
    print(f"{args.checkpoint} (step {checkpoint.get('step')}) on {dataset_name} {args.split}: "
          f"{metrics['num_images']} images, {metrics['num_gt_persons']} GT persons, "
          f"{metrics['num_pred_persons']} predicted persons")
    _print_metrics(metrics)
    if args.record:
        path = write_result(args.record, metrics, profile=profile.name, config=record_config, device=device,
                            force=args.force)
        print(f"wrote {path}")
    if args.json is not None:
        from .engine.trainer import _plain

        atomic_write_text(Path(args.json), json.dumps({"metrics": _plain(metrics), "checkpoint": str(args.checkpoint),
                                                       "dataset": dataset_name, "split": args.split}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------------------------------- bench


def _cmd_bench(args) -> int:
    """Run a benchmark and write its numbers to results/<profile>/bench/<name>.json."""
    import json

    _passive_cpu_threads()
    from .benchmarks import BENCHMARKS, run_benchmark

    names = sorted(BENCHMARKS) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    profile, device = _profile(args), _device(args.device)
    for name in names:
        numbers = run_benchmark(name, profile, device)
        print(f"== {name} ({profile.name}, {device})")
        print(json.dumps(numbers, indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hparse", description="Instance-level human parsing: data, training, evaluation and "
                     "benchmarks.")
    _add_debug(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="preview, export and verify datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser("preview", help="render a grid of samples to a PNG")
    preview.add_argument("--dataset", default="synth")
    preview.add_argument("--out", type=Path, default=Path("grid.png"))
    preview.add_argument("--panel", default="parts", choices=("image", "parts", "persons", "all"))
    _add_synth_options(preview)
    _add_debug(preview)
    preview.set_defaults(func=_cmd_data_preview)
    verify = data_sub.add_parser("verify", help="check every file of a real dataset and list every problem")
    verify.add_argument("--dataset", required=True, help="cihp, mhp, ppp (PASCAL-Person-Part) or densepose")
    verify.add_argument("--root", type=Path, required=True, help="the dataset root the loader takes (see "
                        "data_scripts/README.md)")
    verify.add_argument("--split", action="append", default=None,
                        help="split to check (repeatable; default: every labelled split of the dataset)")
    verify.add_argument("--limit", type=_positive_int, default=None, help="check only the first N images of each "
                        "split")
    verify.add_argument("--workers", type=_nonnegative_int, default=0, help="processes to spread the checks over")
    _add_debug(verify)
    verify.set_defaults(func=_cmd_data_verify)
    export = data_sub.add_parser("export", help="write SynthCrowd in a real dataset's on-disk layout")
    export.add_argument("--format", required=True, choices=_EXPORT_FORMATS,
                        help="cihp, mhp (MHP v2.0), ppp (PASCAL-Person-Part) or densepose (DensePose-COCO)")
    export.add_argument("--out", type=Path, required=True, help="dataset root to write")
    _add_synth_options(export)
    _add_debug(export)
    export.set_defaults(func=_cmd_data_export)

    evaluate = sub.add_parser("evaluate", help="score predictions (PNG folders) against a dataset's ground truth",
                              description=_EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--pred", type=Path, default=None, help="prediction folder (layouts below)")
    evaluate.add_argument("--gt", type=Path, default=None, help="ground-truth dataset root")
    evaluate.add_argument("--dataset", default=None, choices=("cihp", "mhp", "synth"))
    evaluate.add_argument("--split", default="val", help="ground-truth split (default: val)")
    evaluate.add_argument("--layout", default="auto", choices=("auto", "hparse", "cihp", "mhp"))
    evaluate.add_argument("--missing", default="error", choices=("error", "skip", "empty"),
                          help="images without a prediction: stop (default), leave them out, or score them as "
                          "empty predictions")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the metrics and evaluator mode here")
    mode = evaluate.add_argument_group("evaluator mode (defaults reproduce the papers' official scripts)")
    mode.add_argument("--absent-class", default="nan", choices=("nan", "zero"),
                      help="mIoU of a class absent from the split: skipped (Parsing R-CNN, PGN) or 0 (MG, QANet)")
    mode.add_argument("--score-thresh", type=_finite_float, default=0.001,
                      help="AP^p/PCP skip persons scored below this (Parsing R-CNN: 0.001)")
    mode.add_argument("--allow-raw-scores", action="store_true",
                      help="accept scores outside [0, 1] (raw, unbounded model scores) instead of refusing them")
    mode.add_argument("--skip-empty-gt", action="store_true",
                      help="AP^p/PCP leave out GT persons without pixels (MHP v2 script) instead of counting them")
    mode.add_argument("--ap-style", default="voc", choices=("voc", "uninterpolated"),
                      help="AP^r integration: VOC all-point (CIHP/PGN) or uninterpolated (Oxford TVG)")
    mode.add_argument("--class-mean", default="mean", choices=("mean", "nanmean"),
                      help="AP^r mean over part classes: np.mean (PGN) or np.nanmean (MG, QANet)")
    mode.add_argument("--ignore-void", action="store_true",
                      help="AP^r: drop predicted pixels on ignore-label ground truth (Oxford TVG)")
    model_mode = evaluate.add_argument_group(
        "model mode: --checkpoint runs a trained model (hparse train / demo) over a split instead of --pred")
    model_mode.add_argument("--checkpoint", type=Path, default=None, help="checkpoint.pt (or its run folder)")
    model_mode.add_argument("--num", type=_positive_int, default=None, help="score only the first N images (synth: "
                            "the val split has the profile's val_images by default)")
    model_mode.add_argument("--seed", type=_nonnegative_int, default=0, help="SynthCrowd seed (synth only)")
    model_mode.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_record(model_mode, "the metrics")
    _add_profile(model_mode)
    _add_debug(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    train = sub.add_parser("train", help="train Parsing R-CNN or the RoI attention framework (checkpoints, log, "
                           "results file with provenance)")
    train.add_argument("--model", default="parsing_rcnn", choices=("parsing_rcnn", "attention_rcnn", "mg_parser"))
    train.add_argument("--attention", default=None,
                       choices=("concat_after_conv4", "concat_after_conv4_trans", "dot_after_conv3_sum",
                                "dot_after_conv4_sum", "none"),
                       help="attention_rcnn's fusion variant, BMVC 2019 Table 5 (none: w/o attention; default: "
                       "concat_after_conv4)")
    train.add_argument("--dataset", default="synth", choices=("synth", "cihp", "mhp", "ppp"),
                       help="synth (SynthCrowd at the profile's size) or a real dataset read from --root")
    train.add_argument("--root", type=Path, default=None, help="real dataset root (see data_scripts/README.md)")
    train.add_argument("--iterations", type=_positive_int, default=None, help="optimiser steps (default: the "
                       "profile's)")
    train.add_argument("--batch-size", type=_positive_int, default=None, help="images per step (default: the "
                       "profile's)")
    train.add_argument("--lr", type=_positive_float, default=None, help="base learning rate (default: 0.02 x "
                       "batch / 16)")
    train.add_argument("--workers", type=_nonnegative_int, default=None, help="data loader processes")
    train.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<model>_<dataset>_"
                       "<profile>)")
    train.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a "
                       "checkpoint (its earlier log is kept as train_log.<time>.jsonl)")
    train.add_argument("--seed", type=_nonnegative_int, default=0)
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--skip-bad", action="store_true", help="replace an unreadable training image by the next "
                       "one and list it, instead of stopping (with a checkpoint) at it")
    _add_record(train, "the run's metrics and config")
    _add_model_options(train)
    _add_profile(train)
    _add_debug(train)
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser("demo", help="train a small Parsing R-CNN on SynthCrowd, evaluate it, write an overlay")
    demo.add_argument("--iterations", type=_positive_int, default=None,
                      help="optimiser steps (default: the profile's, see hparse.recipes.demo_recipe)")
    demo.add_argument("--out", type=Path, default=None, help="run folder (default: runs/demo_<profile>)")
    demo.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    demo.add_argument("--seed", type=_nonnegative_int, default=0)
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_record(demo, "the demo's metrics (the book reads parsing_rcnn/demo)")
    _add_profile(demo)
    _add_debug(demo)
    demo.set_defaults(func=_cmd_demo)

    pretrain = sub.add_parser("pretrain", help="pretrain the backbone on SynthCrowd part segmentation (the starting "
                              "point of the cpu recipes, backbone_weights='synthcrowd')")
    pretrain.add_argument("--iterations", type=_positive_int, default=None,
                          help="optimiser steps (default: hparse.recipes.pretrain_recipe's)")
    pretrain.add_argument("--out", type=Path, default=None, help="run folder (default: runs/pretrain_<profile>)")
    pretrain.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=(1, 2),
                          help="pretraining stages to run (default: 1 2; see hparse.recipes.pretrain_recipe)")
    pretrain.add_argument("--init", type=Path, default=None,
                          help="backbone.pt the first stage run starts from (default: the stage before's, in --out)")
    pretrain.add_argument("--seed", type=_nonnegative_int, default=0)
    pretrain.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    pretrain.add_argument("--install", action="store_true",
                          help="also write the weights into the package (hparse/weights/), replacing the shipped file")
    _add_record(pretrain, "the pretraining's val mIoU")
    _add_profile(pretrain)
    _add_debug(pretrain)
    pretrain.set_defaults(func=_cmd_pretrain)

    bench = sub.add_parser("bench", help="run a benchmark (writes results/<profile>/bench/<name>.json)")
    bench.add_argument("name", help="benchmark name, or 'all'")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_profile(bench)
    _add_debug(bench)
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error prints one message and returns 2 (``--debug``/``HPARSE_DEBUG=1``: raise it)."""
    debug = os.environ.get("HPARSE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    debug = debug or "--debug" in (sys.argv[1:] if argv is None else argv)  # also for errors in the flags
    try:
        args = build_parser().parse_args(argv)
        debug = debug or bool(getattr(args, "debug", False))
        return int(args.func(args) or 0)
    except Exception as err:
        if debug or not _is_user_error(err):
            raise
        print(f"hparse: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
