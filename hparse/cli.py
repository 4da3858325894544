"""The ``hparse`` command line: argument parsing and dispatch only.

Each command is a ``_cmd_<name>(args) -> int`` function and a block in :func:`build_parser`; it turns its flags
into a call of the function that does the work, beside what it runs, and prints what came back:

=========================  ============================================================================
``data preview``           :func:`hparse.viz.overlay.write_sample_grid`
``data verify``            :func:`hparse.data.verify.verify_split`
``data export``            :func:`hparse.data.export.export_synth`
``evaluate --pred``        :func:`hparse.metrics.io.score_folder` (ground truth: :func:`hparse.data.verify.open_split`)
``evaluate --checkpoint``  :func:`hparse.engine.runs.evaluate_checkpoint`
``train``                  :func:`hparse.engine.runs.method_recipe`, :func:`hparse.engine.runs.train_from_recipe`
``demo``                   :func:`hparse.engine.runs.run_demo`
``predict``                :func:`hparse.engine.predict.parse_files`
``pretrain``               :func:`hparse.engine.pretrain.pretrain_backbone`
``bench``                  :func:`hparse.benchmarks.run_benchmark`
=========================  ============================================================================

Heavy imports happen inside the command so that ``hparse --help`` stays fast (``train --model``'s choices, the
methods of :data:`hparse.recipes.METHODS`, are read only when needed). Errors a user can fix (a missing folder, a bad
flag value, a corrupt dataset file, a checkpoint of another run, a results file of a longer run) are printed as one
message on stderr with exit status 2, without a traceback; ``--debug`` (or ``HPARSE_DEBUG=1``) shows the traceback
instead. Flag values are checked when they are parsed and the run's folder, device and memory before a model is
built. ``hparse predict`` exits with 1 when it skipped a file it could not read (and 0 when it parsed them all).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
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
    "hparse.engine.predict": ("PredictSetupError", "ImageReadError"),
    "hparse.engine.results": ("ResultConflictError",),
    "hparse.engine.rundir": ("RunLockedError",),
    "hparse.engine.runs": ("RunSetupError",),
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


class _Choices(Sequence):
    """Choices of a flag read from a module when first needed: ``train --model`` takes the methods of
    :data:`hparse.recipes.METHODS`, so a method added there is a choice here. Reading them imports torch, which
    ``hparse --help`` and the OpenMP setting of :func:`_passive_cpu_threads` must not."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def _names(self) -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(self.module), self.name))

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value) -> bool:
        return value in self._names()


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


def _scale_factors(text: str) -> tuple[float, ...]:
    """An argparse ``type``: comma-separated positive scale factors, e.g. ``0.75,1.25``."""
    return tuple(_positive_float(part) for part in text.split(",") if part.strip())


def _fraction(text: str) -> float:
    """An argparse ``type``: a number in [0, 1]."""
    value = _finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (a score), got {text!r}")
    return value


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


def _passive_cpu_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning, before torch loads its OpenMP runtime.

    By default OpenMP worker threads busy-wait between parallel regions. On a machine whose cores are shared with
    other work (a laptop, CI, a shared server) they then fight for the cores with the other processes and every small
    operator waits for descheduled threads: a training step of the cpu demo measured 7-11 s with two spinning threads
    against 0.8 s with ``OMP_WAIT_POLICY=PASSIVE`` (2 cores, load average ~4). The number of torch threads is left
    at torch's default (all cores). A value the user already set wins; once torch is imported it is too late, so
    this runs first in the commands that run a model.
    """
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def _print_metrics(metrics: dict, keys=("mIoU", "APp50", "APpvol", "PCP50", "APr50"), width: int = 8) -> None:
    for key in keys:
        if key in metrics:
            print(f"  {key:<{width}} {metrics[key]:.4f}")


def _agg_backend() -> None:
    """Draw without a display (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")


# ---------------------------------------------------------------------------------------------------- data


def _cmd_data_preview(args) -> int:
    """Render a grid of samples (image with boxes and keypoints, parts, persons) to a PNG."""
    _agg_backend()
    from .viz import write_sample_grid

    if args.dataset != "synth":
        raise UserError(f"data preview supports --dataset synth (got {args.dataset!r})")
    dataset = _synth_from_args(args)
    samples = [dataset[i] for i in range(len(dataset))]
    path = write_sample_grid(samples[: args.num], dataset.labels, args.out, panel=args.panel)
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


def _cmd_data_export(args) -> int:
    """Write SynthCrowd images in a real dataset's official on-disk layout (readable by that dataset's loader)."""
    from .data.export import export_synth

    if args.split not in ("train", "val"):
        raise UserError(f"--split must be train or val for an export (the real datasets' test splits have no "
                        f"labels), got {args.split!r}")
    written = export_synth(_synth_from_args(args), args.format, args.out, args.split)
    people = sum(len(written[i]["boxes"]) for i in range(len(written)))
    print(f"wrote {len(written)} SynthCrowd {args.split} images ({people} people) to {args.out} in the "
          f"{written.name} layout; read them with {type(written).__name__}({str(args.out)!r}, {args.split!r})")
    return 0


# ------------------------------------------------------------------------------------------------ evaluate

_EVALUATE_HELP = """Score predictions stored as PNG files against a dataset's ground truth: mIoU, AP^p (APp10..APp90,
APpvol), PCP and AP^r (APr10..APr90, APrvol), with the official evaluation scripts' semantics (fractions in [0, 1]).

Prediction folder layouts (--layout auto picks by the folders present; label maps are single-channel PNGs of
label values, 8-bit or 16-bit, named by the ground truth's image id):

  hparse (hparse.metrics.io.write_predictions, hparse predict; every metric):
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


def _evaluator_mode(args) -> dict:
    return dict(absent_class=args.absent_class, score_thresh=args.score_thresh, skip_empty_gt=args.skip_empty_gt,
                ap_style=args.ap_style, class_mean=args.class_mean, ignore_void=args.ignore_void)


def _cmd_evaluate(args) -> int:
    """Score a prediction folder against a dataset split; print the metrics and optionally write them as JSON."""
    if not args.allow_raw_scores and not 0.0 <= args.score_thresh <= 1.0:
        raise UserError(f"--score-thresh {args.score_thresh} is outside [0, 1], where scores lie; pass "
                        "--allow-raw-scores to score raw, unbounded scores")
    if args.checkpoint is not None:
        return _evaluate_checkpoint(args)
    if args.test_flip or args.test_scales:
        raise UserError("--test-flip and --test-scales change how a model parses: use them with --checkpoint (a "
                        "prediction folder is scored as it is)")
    if args.pred is None or args.gt is None or args.dataset is None:
        raise UserError("evaluate needs --pred, --gt and --dataset (prediction folder mode) or --checkpoint "
                        "(model mode)")
    import json

    from .data.verify import open_split
    from .engine.results import atomic_write_text
    from .metrics.io import score_folder

    loader = {"cihp": "cihp", "synth": "cihp", "mhp": "mhp"}[args.dataset]
    dataset = open_split(loader, args.gt, args.split, label=args.dataset, purpose="nothing to score")

    def note(unmatched):  # not scored; usually the wrong split or renamed files, so say so before the numbers
        print(f"note: {len(unmatched)} predictions in {args.pred} are for images not in the {args.dataset} "
              f"{args.split} ground truth and are not scored, e.g. {', '.join(unmatched[:3])}", file=sys.stderr)

    score = score_folder(args.pred, dataset, layout=args.layout, missing=args.missing,
                         allow_raw_scores=args.allow_raw_scores, on_unmatched=note, **_evaluator_mode(args))
    metrics = score.metrics
    print(f"{args.dataset} {args.split}: {metrics['num_images']} images, {metrics['num_gt_persons']} GT persons, "
          f"{metrics['num_pred_persons']} predicted persons ({score.layout} layout"
          f"{f', {len(score.skipped)} skipped' if score.skipped else ''})")
    _print_metrics(metrics, ("mIoU", "pixel_acc", "APp50", "APpvol", "PCP50", "APr50", "APr60", "APr70", "APrvol"),
                   width=10)
    if args.json is not None:
        record = score.record(dataset=args.dataset, split=args.split, pred=str(args.pred), gt=str(args.gt))
        atomic_write_text(Path(args.json), json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _evaluate_checkpoint(args) -> int:
    """``hparse evaluate --checkpoint``: rebuild the model from its checkpoint and score it on a dataset split."""
    from .engine.runs import evaluate_checkpoint

    profile, device = _profile(args), _device(args.device)
    result = evaluate_checkpoint(args.checkpoint, profile, device=device, dataset=args.dataset, gt=args.gt,
                                 split=args.split, num=args.num, seed=args.seed, record=args.record, force=args.force,
                                 json_path=args.json, evaluator_mode=_evaluator_mode(args),
                                 test_time={"test_flip": args.test_flip, "test_scales": tuple(args.test_scales or ())})
    metrics = result["metrics"]
    print(f"{args.checkpoint} (step {result['step']}) on {result['dataset']} {args.split}: "
          f"{metrics['num_images']} images, {metrics['num_gt_persons']} GT persons, "
          f"{metrics['num_pred_persons']} predicted persons")
    _print_metrics(metrics)
    for key in ("record", "json"):
        if result[key] is not None:
            print(f"wrote {result[key]}")
    return 0


# --------------------------------------------------------------------------------------------- train, demo

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


def _recipe_from_args(args, profile) -> dict:
    """The profile's recipe of ``--model`` with the command line's component flags on top."""
    from .engine.runs import PARSING_RCNN_FLAGS, method_recipe

    flags = {name: _SWITCH.get(value, value) if isinstance(value, str) else value
             for name in PARSING_RCNN_FLAGS if (value := getattr(args, name, None)) is not None}
    return method_recipe(args.model, profile, args.dataset, flags=flags, attention=args.attention,
                         backbone=args.backbone, backbone_weights=args.backbone_weights)


def _print_run(summary: dict) -> None:
    """A finished run's metrics, the images it skipped and the records it wrote."""
    _print_metrics(summary["metrics"] or {})
    skipped = summary.get("skipped") or []
    if skipped:
        print(f"skipped {len(skipped)} unreadable training image{'s' * (len(skipped) != 1)} (--skip-bad):")
        for item in skipped[:10]:
            print(f"  step {item['step']}: {item['file']}: {item['error']}")
    for key in ("record", "result"):
        if summary.get(key):
            print(f"wrote {summary[key]}")


def _cmd_train(args) -> int:
    """Train a model with the profile's recipe; checkpoint, log and the run's record with provenance."""
    _passive_cpu_threads()
    from .engine.runs import train_from_recipe

    profile = _profile(args)
    device = _device(args.device)
    out_dir = args.out or Path("runs") / f"{args.model}_{args.dataset}_{profile.name}"
    if args.stage != 1 or args.init is not None:
        return _train_stage2(args, profile, device, out_dir)
    recipe = _recipe_from_args(args, profile)
    run = train_from_recipe(args.model, recipe, profile, out_dir=out_dir, device=device, dataset=args.dataset,
                            root=args.root, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                            workers=args.workers, seed=args.seed, resume=not args.no_resume, record=args.record,
                            force=args.force, skip_bad=args.skip_bad, announce=print)
    summary = run.summary
    print(f"trained {summary['step']} steps in {summary['wall_time_s']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s); checkpoint {summary['checkpoint']}")
    _print_run(summary)
    return 0


def _train_stage2(args, profile, device, out_dir: Path) -> int:
    """``hparse train --model mg_parser --stage 2 --init CHECKPOINT``: the bottom-up parser's matching fine-tuning."""
    if args.model != "mg_parser":
        raise UserError(f"--stage and --init are for --model mg_parser (its two-step schedule), not {args.model}")
    if args.stage != 2 or args.init is None:
        raise UserError("stage 2 fine-tunes a stage-1 run: pass both --stage 2 and --init CHECKPOINT_OR_RUN_FOLDER")
    if not Path(args.init).exists():
        raise UserError(f"--init {args.init}: no such checkpoint or run folder")
    from .engine.checkpoint import CheckpointError
    from .engine.runs import train_dataset
    from .experiments.mg_stage2 import train_stage2

    overrides = {key: value for key, value in (("batch_size", args.batch_size), ("lr", args.lr),
                                               ("num_workers", args.workers)) if value is not None}
    train_set = val_set = None
    if args.dataset != "synth":
        train_set = train_dataset(args.dataset, args.root, profile, "train", profile.train_images)
        val_set = train_dataset(args.dataset, args.root, profile, "val", profile.val_images)
    try:
        summary = train_stage2(args.init, train_set, val_set, profile=profile, dataset=args.dataset,
                               out_dir=out_dir, seed=args.seed, device=device, iterations=args.iterations,
                               result_name=args.record, force_record=args.force, resume=not args.no_resume,
                               **overrides)
    except (CheckpointError, ValueError) as err:
        raise UserError(str(err)) from None
    print(f"stage 2: trained {summary['step']} steps in {summary['wall_time_s']:.0f} s from {args.init}; "
          f"checkpoint {summary['checkpoint']}")
    _print_run(summary)
    return 0


def _image_files(inputs, flag: str) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of ``inputs`` (files and folders) and the inputs that do not exist; finding no file at all
    is a user error."""
    from .engine.predict import IMAGE_SUFFIXES, find_images

    files, missing = find_images(inputs)
    if missing and not files:
        raise UserError(f"{flag} {missing[0][0]}: {missing[0][1]}")
    if not files:
        raise UserError(f"{flag}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return files, missing


def _report_skip(path, message) -> None:
    print(f"hparse: skipped {path}: {message}", file=sys.stderr, flush=True)


def _print_parsed(summary, what: str) -> None:
    count = len(summary.parsed)
    skipped = len(summary.skipped)
    print(f"parsed {count} {what}{'s' * (count != 1)} ({summary.persons} person{'s' * (summary.persons != 1)}) "
          f"into {summary.out_dir} (overlays in {summary.out_dir / 'overlay'})"
          f"{f'; skipped {skipped} unreadable file' + 's' * (skipped != 1) if skipped else ''}")


def _cmd_demo(args) -> int:
    """Train a small Parsing R-CNN on SynthCrowd, evaluate it, draw it, and parse images with the trained model."""
    _passive_cpu_threads()
    _agg_backend()
    from .engine.runs import run_demo

    profile = _profile(args)
    device = _device(args.device)
    images = _image_files([args.images], "--images")[0] if args.images is not None else None
    out_dir = Path(args.out or Path("runs") / f"demo_{profile.name}")
    demo = run_demo(profile, out_dir=out_dir, device=device, iterations=args.iterations, seed=args.seed,
                    resume=not args.no_resume, record=args.record, force=args.force, images=images, announce=print,
                    on_skip=_report_skip)
    summary = demo.run.summary
    print(f"trained {summary['step']} steps in {summary['wall_time_s']:.0f} s "
          f"({summary['images_per_s']:.1f} images/s)")
    _print_run(summary)
    for path in demo.written.values():
        print(f"wrote {path}")
    _print_parsed(demo.parsed["val"], "SynthCrowd val image")
    if "images" in demo.parsed:
        _print_parsed(demo.parsed["images"], f"image of {args.images}")
    print(f"parse your own images: hparse predict --checkpoint {out_dir} --out {out_dir / 'predict_images'} "
          "IMAGE_OR_FOLDER ...")
    return 1 if "images" in demo.parsed and demo.parsed["images"].skipped else 0


def _cmd_pretrain(args) -> int:
    """Pretrain the backbone's starting point on SynthCrowd (hparse.engine.pretrain) and write its weights."""
    _passive_cpu_threads()
    from .engine.pretrain import pretrain_backbone
    from .engine.runs import check_out_dir

    profile = _profile(args)
    out_dir = args.out or Path("runs") / f"pretrain_{profile.name}"
    check_out_dir(out_dir)
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


# ------------------------------------------------------------------------------------------------- predict

_PREDICT_HELP = """Parse your own images with a trained model (any hparse model; its checkpoint says how it was built
and at what size it sees images). No ground truth is needed. Per image, under --out:

  overlay/<id>.png                   the image with each person's parts, outline, score (and keypoints)
  global_parsing/<id>.png            semantic map (part label per pixel)
  person_parsing/<id>_<NN>_<KK>.png  part map of person KK of NN, with person_parsing/<id>.txt (scores)
  instance_parsing/<id>.png, .txt    the same persons as CIHP challenge part instances
  predictions.jsonl                  one line per image: persons, scores, boxes, part areas, keypoints

<id> is the file name without its suffix. The folder is what `hparse evaluate --pred` reads, so predictions of
images that have ground truth can be scored. A file that cannot be read is reported and skipped; the exit status
is then 1."""


def _cmd_predict(args) -> int:
    """Parse image files and folders with a trained model; write overlays, part maps and JSON lines."""
    _passive_cpu_threads()
    from .engine.predict import Predictor, parse_files
    from .engine.runs import check_out_dir

    files, missing = _image_files(args.inputs, "predict")
    device = _device(args.device)
    check_out_dir(args.out)
    predictor = Predictor.load(args.checkpoint, size=args.size, device=device, batch_size=args.batch_size,
                               test_flip=args.test_flip, test_scales=tuple(args.test_scales or ()))
    seen = "its own size" if predictor.side is None else \
        f"shorter side {predictor.side}{f', longer at most {predictor.max_side}' if predictor.max_side else ''}"
    print(f"parsing {len(files)} image{'s' * (len(files) != 1)} with {predictor.name} ({predictor.source}; "
          f"{predictor.labels.name} labels; input {seen}; {device}) -> {args.out}")
    for path, message in missing:
        _report_skip(path, message)
    summary = parse_files(predictor, files, args.out, score_thresh=args.score_thresh, progress=True,
                          on_skip=_report_skip)
    summary.skipped[:0] = missing
    _print_parsed(summary, "image")
    print(f"wrote {Path(args.out) / 'predictions.jsonl'}")
    return 1 if summary.skipped else 0


# --------------------------------------------------------------------------------------------------- bench


def _cmd_bench(args) -> int:
    """Run a benchmark and write its numbers to results/<profile>/bench/<name>.json."""
    import json

    _passive_cpu_threads()
    from .benchmarks import BENCHMARKS, run_benchmark
    from .engine.results import replacing

    names = sorted(BENCHMARKS) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown[0]!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    profile, device = _profile(args), _device(args.device)
    for name in names:
        with replacing(args.force):
            numbers = run_benchmark(name, profile, device)
        print(f"== {name} ({profile.name}, {device})")
        print(json.dumps(numbers, indent=2, default=str))
    return 0


# -------------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hparse", description="Instance-level human parsing: data, training, evaluation, "
                     "prediction on your own images, and benchmarks.")
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
    export.add_argument("--format", required=True, choices=_Choices("hparse.data.export", "EXPORT_FORMATS"),
                        metavar="FORMAT",
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
    model_mode.add_argument("--test-flip", action="store_true", help="Parsing R-CNN: average the parsing with the "
                            "mirrored image's (test-time augmentation, the paper's Table 8 †)")
    model_mode.add_argument("--test-scales", type=_scale_factors, default=None, metavar="F1,F2",
                            help="Parsing R-CNN: also average the parsing of the image resized by each factor "
                            "(e.g. 0.75,1.25)")
    _add_record(model_mode, "the metrics")
    _add_profile(model_mode)
    _add_debug(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    train = sub.add_parser("train", help="train a model with its recipe (checkpoints, log, results file with "
                           "provenance)")
    train.add_argument("--model", default="parsing_rcnn", choices=_Choices("hparse.recipes", "METHODS"),
                       metavar="MODEL", help="the method, one of %(choices)s (default: %(default)s)")
    train.add_argument("--attention", default=None,
                       choices=("concat_after_conv4", "concat_after_conv4_trans", "dot_after_conv3_sum",
                                "dot_after_conv4_sum", "none"),
                       help="attention_rcnn's fusion variant, BMVC 2019 Table 5 (none: w/o attention; default: "
                       "concat_after_conv4)")
    train.add_argument("--dataset", default="synth", choices=("synth", "cihp", "mhp", "ppp", "densepose"),
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
    train.add_argument("--seed", type=_nonnegative_int, default=0, help="model initialisation, data order and "
                       "augmentation (SynthCrowd images are the same for every seed)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    train.add_argument("--stage", type=int, default=1, choices=(1, 2),
                       help="mg_parser's two-step schedule: 2 fine-tunes --init with the matching loss (Sec. 3.4)")
    train.add_argument("--init", type=Path, default=None, help="the stage-1 checkpoint or run folder of --stage 2")
    train.add_argument("--skip-bad", action="store_true", help="replace an unreadable training image by the next "
                       "one and list it, instead of stopping (with a checkpoint) at it")
    _add_record(train, "the run's metrics and config")
    _add_model_options(train)
    _add_profile(train)
    _add_debug(train)
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser("demo", help="train a small Parsing R-CNN on SynthCrowd, evaluate it, write an overlay, "
                          "parse a few images with it")
    demo.add_argument("--iterations", type=_positive_int, default=None,
                      help="optimiser steps (default: the profile's, see hparse.recipes.demo_recipe)")
    demo.add_argument("--out", type=Path, default=None, help="run folder (default: runs/demo_<profile>)")
    demo.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    demo.add_argument("--seed", type=_nonnegative_int, default=0, help="model initialisation, data order and "
                      "augmentation (SynthCrowd images are the same for every seed)")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--images", type=Path, default=None, metavar="DIR",
                      help="also parse the images of this folder with the trained model (into <out>/predict_images)")
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

    predict = sub.add_parser("predict", help="parse your own images with a trained model (overlays, part maps, "
                             "JSON lines)", description=_PREDICT_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER",
                         help="image files (JPEG, PNG) and folders (their image files, not recursive)")
    predict.add_argument("--checkpoint", type=Path, required=True, metavar="RUN_OR_FILE",
                         help="a run folder (hparse train / demo) or its checkpoint.pt")
    predict.add_argument("--out", type=Path, default=Path("predictions"), metavar="DIR",
                         help="output folder (default: predictions)")
    predict.add_argument("--score-thresh", type=_fraction, default=0.3, metavar="T",
                         help="persons scoring below T are left out of the person maps, overlay and JSON (default: "
                         "0.3, the painting threshold of Parsing R-CNN; 0 keeps every person, as for scoring)")
    predict.add_argument("--size", type=_positive_int, default=None, metavar="S",
                         help="shorter side of the image the model sees (default: the checkpoint's recipe)")
    predict.add_argument("--batch-size", type=_positive_int, default=2, help="images per forward pass (default: 2)")
    predict.add_argument("--test-flip", action="store_true", help="Parsing R-CNN: average the parsing with the "
                         "mirrored image's (test-time augmentation, the paper's Table 8 †)")
    predict.add_argument("--test-scales", type=_scale_factors, default=None, metavar="F1,F2",
                         help="Parsing R-CNN: also average the parsing of the image resized by each factor (e.g. "
                         "0.75,1.25)")
    predict.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_debug(predict)
    predict.set_defaults(func=_cmd_predict)

    bench = sub.add_parser("bench", help="run a benchmark (writes results/<profile>/bench/<name>.json)")
    bench.add_argument("name", help="benchmark name, or 'all'")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    bench.add_argument("--force", action="store_true",
                       help="replace a results file of another config (a benchmark whose settings changed)")
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
