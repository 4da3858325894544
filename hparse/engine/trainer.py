"""Training and evaluation loops shared by every hparse model.

:func:`train` runs a fixed number of optimiser steps of a model that follows torchvision's calling convention
(``model(images, targets) -> dict of losses``); :func:`evaluate` runs ``model(images)`` over a dataset and scores the
prediction-contract dicts with :class:`hparse.metrics.ParsingEvaluator`.

What the loop guarantees:

- **Exact resume.** Checkpoints (see :mod:`hparse.engine.checkpoint`) hold the model, optimiser, schedule, scaler,
  step, data position and RNG states. The data order is a pure function of ``(seed, position)``: sample ``p`` of the
  run is image ``perm_epoch[p % n]`` of a permutation seeded by ``(seed, epoch)``, and every sample's augmentation
  (e.g. the random horizontal flip) runs under RNGs seeded by ``(seed, p)``. So neither DataLoader workers nor a
  restart change what a step sees, and a killed run resumed from its checkpoint reproduces the uninterrupted run's
  losses exactly (on a CPU; CUDA kernels may add their own nondeterminism).
- **Seeded determinism**: the same seed gives the same run.
- **Fail loudly**: a NaN or infinite loss stops training with an error naming the step and the loss term.
- **One run per folder** (:mod:`hparse.engine.identity`, :mod:`hparse.engine.rundir`): a checkpoint records the
  run's identity and is resumed only by the same run (:class:`~hparse.engine.identity.RunMismatchError` lists each
  difference otherwise); a lock file keeps a second run out of a folder in use; temporary files of an interrupted
  write are removed at the next start; a fresh start moves an earlier log aside instead of deleting it.
- **Bad files**: a dataset file that cannot be read mid-run (a :class:`~hparse.data.io.DatasetError`) stops the run
  with a checkpoint at that step and a :class:`BadSampleError` naming the file, or, with ``skip_bad=True``, is
  replaced by the next readable image and listed in the log (``"kind": "skip"``) and the summary.
- **GPU path**: AMP (bfloat16 where supported, else float16 with a gradient scaler), ``channels_last``, pinned
  memory and worker processes; multi-GPU / multi-node with DDP through torchrun (:mod:`hparse.engine.distributed`);
  the same code runs DDP on CPU with gloo.
- **Records**: a JSON-lines log (``train_log.jsonl``: one line per step with every loss term, learning rate, gradient
  norm and images/s, plus one line per evaluation), a tqdm progress bar, the run's own record ``result.json`` in the
  run folder and, only when named, a results file with provenance (:func:`hparse.engine.results.write_result`, which
  refuses to replace another or a longer run's record unless forced).

Schedule defaults follow Parsing R-CNN's (Detectron-style) recipe: SGD, momentum 0.9, weight decay 1e-4, biases at
twice the learning rate without weight decay, linear warm-up from 1 % of the learning rate, steps x0.1 at 2/3 and 8/9
of training (30k and 40k of 45k iterations).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.collate import collate_detection, targets_to
from ..data.io import DatasetError
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .distributed import (
    all_gather_object,
    all_reduce_mean,
    barrier,
    init_distributed,
    unwrap_model,
)
from .identity import check_same_run, run_identity
from .profiles import get_device, get_profile, seed_everything
from .results import (
    RUN_RECORD_NAME,
    atomic_write_text,
    check_replace,
    result_path,
    write_result,
    write_run_record,
)
from .rundir import RunLock, move_aside, remove_orphaned_tmp

__all__ = ["train", "evaluate", "StepSampler", "PositionedDataset", "build_optimizer", "LRSchedule",
           "LOG_NAME", "read_log", "BadSampleError"]

LOG_NAME = "train_log.jsonl"


# ------------------------------------------------------------------------------------------------------- data


class StepSampler(Sampler):
    """Endless, resumable, rank-sharded sample order: position ``p`` -> ``(global position, dataset index)``.

    Global position ``g = p * world_size + rank`` lies in epoch ``g // n`` at offset ``g % n`` of a permutation of
    ``range(n)`` seeded by ``(seed, epoch)``. Starting at ``start`` (the samples this process already consumed)
    continues a run exactly where its checkpoint left it.
    """

    def __init__(self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if size <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.size, self.seed, self.start = size, seed, start
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle

    def _permutation(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position, epoch, perm = self.start, -1, None
        while True:
            global_position = position * self.world_size + self.rank
            e, offset = divmod(global_position, self.size)
            if e != epoch:
                epoch, perm = e, self._permutation(e)
            yield global_position, int(perm[offset])
            position += 1


class BadSampleError(DatasetError):
    """A training image could not be read mid-run; the run stopped with a checkpoint at ``step``."""

    def __init__(self, path, message: str, step: int, checkpoint: Path | None):
        super().__init__(path, message)
        self.step, self.checkpoint = step, checkpoint


def _bad(index: int, err: DatasetError) -> dict:
    return {"index": int(index), "file": str(err.path), "error": err.message}


class PositionedDataset(Dataset):
    """Reads ``(position, index)`` keys: sample ``index`` with its augmentation seeded by ``(seed, position)``.

    Python's, NumPy's and torch's global RNGs are seeded for the duration of the read and restored afterwards, so the
    random transforms (``RandomHorizontalFlip`` uses ``random``) give the same result for the same position in any
    worker, in any run.

    A sample that raises :class:`~hparse.data.io.DatasetError` (a corrupt file) is not raised from here, because a
    DataLoader worker would turn it into a bare ``RuntimeError`` holding a traceback: it comes back as
    ``{"bad_sample": {...}}`` for the trainer to stop on, or, with ``skip_bad``, is replaced by the next readable
    image (``index + 1``, ``index + 2``, ..., deterministic, so resume stays exact) whose ``meta["replaced_bad"]``
    lists what was skipped.
    """

    def __init__(self, dataset: Dataset, seed: int, transform: Callable[[dict], dict] | None = None,
                 skip_bad: bool = False):
        self.dataset, self.seed, self.transform, self.skip_bad = dataset, seed, transform, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, index = key
        with _seeded((self.seed * 7_919 + position) % (2**63)):
            try:
                sample = self.dataset[index]
            except DatasetError as err:
                bad = [_bad(index, err)]
                if not self.skip_bad:
                    return {"bad_sample": bad}
                sample = self._replacement(index, bad)
                if sample is None:
                    return {"bad_sample": bad}
            return self.transform(sample) if self.transform is not None else sample

    def _replacement(self, index: int, bad: list[dict]) -> dict | None:
        size = len(self.dataset)
        for offset in range(1, size):
            other = (index + offset) % size
            try:
                sample = self.dataset[other]
            except DatasetError as err:
                bad.append(_bad(other, err))
                continue
            return {**sample, "meta": {**sample["meta"], "replaced_bad": bad}}
        return None  # every image is bad


def _collate_or_bad(batch: list[dict]):
    """:func:`collate_detection`, or the ``bad_sample`` records of the batch when it has any."""
    bad = [record for sample in batch for record in sample.get("bad_sample", ())]
    return {"bad_sample": bad} if bad else collate_detection(batch)


@contextlib.contextmanager
def _seeded(seed: int):
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)


def _flip_transform(dataset: Dataset, hflip: float) -> Callable[[dict], dict] | None:
    if not hflip:
        return None
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError(f"hflip={hflip} needs dataset.labels (a LabelSet with flip pairs) to swap left/right parts; "
                         f"{type(dataset).__name__} has none. Pass hflip=0 or give the dataset a labels attribute.")
    from ..data.transforms import RandomHorizontalFlip

    return RandomHorizontalFlip(labels, p=float(hflip))


# ----------------------------------------------------------------------------------------- optimiser, schedule


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9,
                    bias_lr_factor: float = 2.0) -> torch.optim.Optimizer:
    """SGD (Detectron recipe: biases at ``bias_lr_factor`` x lr, no weight decay on biases and norms) or AdamW."""
    decay, no_decay, biases = [], [], []
    for name_, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name_.endswith(".bias"):
            biases.append(param)
        elif param.ndim <= 1:  # normalisation scales
            no_decay.append(param)
        else:
            decay.append(param)
    name = name.lower()
    if name == "sgd":
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
                  {"params": biases, "weight_decay": 0.0, "lr": lr * bias_lr_factor}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, foreach=True)
    if name == "adamw":
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay + biases, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, foreach=True)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


class LRSchedule:
    """Learning-rate multiplier at a step: linear warm-up, then ``step`` decay or ``cosine`` annealing.

    A small class rather than a lambda so that the schedule is plain data (picklable, printable).
    """

    def __init__(self, iterations: int, warmup: int = 500, warmup_factor: float = 0.01, schedule: str = "step",
                 milestones: Sequence[float] = (2 / 3, 8 / 9), gamma: float = 0.1, min_factor: float = 0.0):
        if schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {schedule!r}")
        self.iterations, self.warmup, self.warmup_factor = iterations, min(warmup, iterations), warmup_factor
        self.schedule, self.gamma, self.min_factor = schedule, gamma, min_factor
        # Milestones below 1 are fractions of the run; larger ones are step numbers.
        self.milestones = sorted(int(round(m * iterations)) if m < 1 else int(m) for m in milestones)

    def __call__(self, step: int) -> float:
        if self.schedule == "step":
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        else:
            progress = min(step / max(self.iterations, 1), 1.0)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        if step < self.warmup:
            alpha = step / self.warmup
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


# ------------------------------------------------------------------------------------------------------ train


def _amp_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def read_log(out_dir: str | Path, kind: str = "train") -> list[dict]:
    """Records of ``out_dir/train_log.jsonl`` of one kind (``"train"`` steps or ``"eval"`` results)."""
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == kind]


def _truncate_log(path: Path, step: int) -> None:
    """Drop records written after ``step`` (a run that crashed after its last checkpoint logged them)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> dict[str, float]:
    values = {name: float(value.detach()) for name, value in losses.items()}
    for name, value in values.items():
        if not math.isfinite(value):
            raise FloatingPointError(
                f"step {step}: loss term {name!r} is {value} (all terms: "
                f"{', '.join(f'{k}={v:.4g}' for k, v in values.items())}). Lower the learning rate, enable "
                f"clip_grad, or check the targets of this batch.")
    return values


def train(
    model: nn.Module,
    dataset: Dataset,
    *,
    iterations: int,
    batch_size: int = 2,
    optimizer: str = "sgd",
    lr: float = 0.02,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    warmup: int = 500,
    warmup_factor: float = 0.01,
    schedule: str = "step",
    milestones: Sequence[float] = (2 / 3, 8 / 9),
    clip_grad: float | None = None,
    hflip: float = 0.5,
    eval_dataset: Dataset | None = None,
    eval_every: int = 0,
    eval_batch_size: int | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = True,
    checkpoint_every: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    num_workers: int = 0,
    progress: bool = True,
    result_name: str | None = None,
    profile: str | None = None,
    config: dict[str, Any] | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    find_unused_parameters: bool = False,
    skip_bad: bool = False,
    force_record: bool = False,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` for ``iterations`` optimiser steps.

    Args:
        model: a module following torchvision's convention; ``model.build_config`` (set by ``build_model``) is
            stored in checkpoints so :func:`hparse.engine.checkpoint.load_model` can rebuild it.
        dataset: data-contract samples.
        iterations: total optimiser steps of the run (a resumed run continues up to this number).
        batch_size: images per step and process.
        optimizer: ``"sgd"`` or ``"adamw"``; ``lr``, ``weight_decay``, ``momentum`` configure it.
        warmup, warmup_factor: linear warm-up steps and starting factor.
        schedule, milestones: ``"step"`` (x0.1 at each milestone; fractions of the run or step numbers) or
            ``"cosine"``.
        clip_grad: max gradient norm (``None``: no clipping; the norm is still logged).
        hflip: probability of the horizontal flip that swaps left/right parts (needs ``dataset.labels``);
            0 disables it (e.g. when the dataset's own transform already flips).
        eval_dataset, eval_every, eval_batch_size: evaluate every ``eval_every`` steps (0: only at the end) and
            at the end, on the main process.
        out_dir: the run folder: ``checkpoint.pt``, ``train_log.jsonl`` and the run's record ``result.json``.
            One run at a time may use it (a lock file, ``.lock``).
        resume: continue from ``out_dir/checkpoint.pt`` when it exists, which must be a checkpoint of the same run
            (same model, hyper-parameters, dataset and ``config``; :mod:`hparse.engine.identity`). A fresh start
            moves an earlier log and record aside (``train_log.<time>.jsonl``) instead of deleting them.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        seed: seeds the model's randomness, the data order and the augmentations.
        device: default CUDA when available (in DDP: ``cuda:LOCAL_RANK``).
        amp: mixed precision (default: on with CUDA; bfloat16 where supported, else float16 + gradient scaler).
        channels_last: NHWC memory format (default: on with CUDA).
        num_workers: DataLoader worker processes.
        progress: show a tqdm bar (main process only).
        result_name, profile, config: the final metrics and training summary are written with provenance and
            ``config`` to ``out_dir/result.json`` and, when ``result_name`` is given, to
            ``results/<profile>/<result_name>.json``, which is checked before training: an existing record of
            another config or of more iterations is not replaced unless ``force_record``.
        on_step: called as ``on_step(step, record)`` after each step (and its checkpoint); raising stops training.
        find_unused_parameters: passed to DDP.
        skip_bad: replace a training image whose file cannot be read by the next readable one and list it (log
            records ``"kind": "skip"``, summary ``skipped``) instead of stopping.
        force_record: replace an existing ``results/`` record even if it holds another or a longer run.

    Returns:
        dict with ``step`` (last step), ``history`` (per-step records of the whole run, including the part before a
        resume), ``metrics`` (last evaluation or ``None``), ``checkpoint`` (path), ``wall_time_s``,
        ``images_per_s`` (this process's training throughput) and ``skipped`` (bad images replaced, with
        ``skip_bad``).

    Raises:
        FloatingPointError: a loss term became NaN or infinite (the message names the step and the term).
        RunMismatchError: ``out_dir`` holds a checkpoint of another run (the message lists each difference).
        BadSampleError: a training file could not be read (the run's checkpoint is saved at that step first).
        RunLockedError: another run is using ``out_dir``.
        ResultConflictError: ``result_name``'s record holds another or a longer run.
        CheckpointError: the checkpoint to resume cannot be read.
    """
    for name, value in (("iterations", iterations), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    started = time.perf_counter()
    info = init_distributed()
    device = torch.device(f"cuda:{info.local_rank}") if info.world_size > 1 and torch.cuda.is_available() \
        and device is None else get_device(device)
    out_dir = Path(out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    log_path = out_dir / LOG_NAME
    main = info.is_main
    amp_dtype = _amp_dtype(device, amp)
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    config = _plain(config or {})
    profile_name = profile or (get_profile().name if result_name else None)
    if result_name and main and not force_record:  # refuse now, not after hours of training
        check_replace(result_path(result_name, profile_name), config, iterations)

    base = unwrap_model(model)
    hyper = dict(iterations=iterations, batch_size=batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                 momentum=momentum, warmup=warmup, warmup_factor=warmup_factor, schedule=schedule,
                 milestones=milestones, clip_grad=clip_grad, hflip=hflip, seed=seed)
    identity = run_identity(base, dataset, config, hyper)
    lock = RunLock(out_dir).acquire() if main else None
    try:
        return _train_locked(
            model, base, dataset, identity=identity, lock=lock, info=info, device=device, out_dir=out_dir,
            ckpt_path=ckpt_path, log_path=log_path, amp_dtype=amp_dtype, channels_last=channels_last,
            config=config, profile_name=profile_name, started=started, resume=resume, hyper=hyper,
            eval_dataset=eval_dataset, eval_every=eval_every, eval_batch_size=eval_batch_size,
            checkpoint_every=checkpoint_every, num_workers=num_workers, progress=progress, result_name=result_name,
            on_step=on_step, find_unused_parameters=find_unused_parameters, skip_bad=skip_bad,
            force_record=force_record)
    finally:
        if lock is not None:
            lock.release()


def _load_for_resume(ckpt_path: Path) -> dict:
    try:
        return load_checkpoint(ckpt_path, map_location="cpu")
    except CheckpointError as err:
        raise CheckpointError(f"{err} (this run cannot resume from it: start over with --no-resume "
                              f"(resume=False), or use another --out (out_dir))") from err


def _train_locked(model, base, dataset, *, identity, lock, info, device, out_dir, ckpt_path, log_path, amp_dtype,
                  channels_last, config, profile_name, started, resume, hyper, eval_dataset, eval_every,
                  eval_batch_size, checkpoint_every, num_workers, progress, result_name, on_step,
                  find_unused_parameters, skip_bad, force_record) -> dict[str, Any]:
    """:func:`train` once the run folder is locked (``lock`` is ``None`` on processes other than the main one)."""
    main = info.is_main
    iterations, batch_size, seed = hyper["iterations"], hyper["batch_size"], hyper["seed"]
    lr_schedule = LRSchedule(iterations, hyper["warmup"], hyper["warmup_factor"], hyper["schedule"],
                             hyper["milestones"])
    checkpoint = None
    if main:
        remove_orphaned_tmp(out_dir)  # left by a process killed while writing; we hold the lock
    if resume and ckpt_path.exists():
        checkpoint = _load_for_resume(ckpt_path)
        check_same_run(ckpt_path, checkpoint, identity, vars(lr_schedule))

    base.to(device)
    if channels_last:
        base.to(memory_format=torch.channels_last)
        if hasattr(base, "channels_last"):
            base.channels_last = True
    opt = build_optimizer(base, hyper["optimizer"], hyper["lr"], hyper["weight_decay"], hyper["momentum"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    step = 0
    if checkpoint is not None:
        base.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        step = int(checkpoint["step"])
        states = checkpoint["rng"]
        if len(states) != info.world_size:
            raise ValueError(f"checkpoint {ckpt_path} was written by {len(states)} processes, this run has "
                             f"{info.world_size}; resume with the same number of processes or start a new out_dir")
        set_rng_state(states[info.rank])
        if main:
            _truncate_log(log_path, step)
    else:
        seed_everything(seed + info.rank)  # distinct RoI sampling per process; DDP broadcasts rank 0's weights
        if main:  # an earlier run's log and record are kept beside, never deleted
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            move_aside(log_path, stamp)
            move_aside(out_dir / RUN_RECORD_NAME, stamp)
    barrier()

    model_for_step: nn.Module = base
    if info.world_size > 1:
        model_for_step = nn.parallel.DistributedDataParallel(
            base, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)

    sampler = StepSampler(len(dataset), seed, start=step * batch_size, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(
        PositionedDataset(dataset, seed, _flip_transform(dataset, hyper["hflip"]), skip_bad=skip_bad),
        batch_size=batch_size, sampler=sampler, collate_fn=_collate_or_bad, num_workers=num_workers,
        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # keeps the loader off the global RNG (exact resume)
    )
    batches = iter(loader)
    history = read_log(out_dir) if (main and step > 0) else []
    skipped = read_log(out_dir, "skip") if (main and step > 0) else []
    metrics = None
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, initial=step, desc="train", dynamic_ncols=True)

    def save() -> None:
        states = all_gather_object(rng_state())
        if main:
            save_checkpoint(ckpt_path, {
                "model": base.state_dict(), "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "samples_per_process": step * batch_size,
                "world_size": info.world_size, "rng": states,
                "model_config": getattr(base, "build_config", None), "config": config, "identity": identity,
            })
        barrier()

    def run_eval() -> dict | None:
        result = None
        if main:
            state = rng_state()  # evaluation must not shift the training run's random streams
            result = evaluate(base, eval_dataset, batch_size=eval_batch_size or batch_size, device=device,
                              amp=amp_dtype is not None)
            set_rng_state(state)
            base.train()
            _append(log_path, {"kind": "eval", "step": step, "metrics": _plain(result)})
        barrier()
        return result

    def stop_on_bad(bad: list[dict]) -> None:
        """A file could not be read: keep what was trained (a checkpoint at this step), then say which file."""
        saved = None
        if info.world_size == 1:  # in DDP the other processes are not at this point: keep the last checkpoint
            save()
            saved = ckpt_path
        first = bad[0]
        where = f"a checkpoint at step {step} is saved in {ckpt_path}" if saved else \
            f"the last checkpoint is {ckpt_path}"
        raise BadSampleError(first["file"], f"{first['error']} (image {first['index']} of the training set). "
                             f"Training stopped before step {step + 1}; {where}. Replace or remove the file (`hparse "
                             f"data verify` lists every bad file) and rerun the same command to resume, or pass "
                             f"--skip-bad (skip_bad=True) to train on without it", step, saved)

    base.train()
    train_images, train_time = 0, 0.0
    try:
        while step < iterations:
            tick = time.perf_counter()
            batch = next(batches)
            if isinstance(batch, dict):
                stop_on_bad(batch["bad_sample"])
            images, targets = batch
            for target in targets:
                for record in target["meta"].pop("replaced_bad", ()):
                    record = {"kind": "skip", "step": step + 1, **record}
                    skipped.append(record)
                    if main:
                        _append(log_path, record)
                    if bar is not None:
                        bar.write(f"skipped {record['file']}: {record['error']}")
            images = [img.to(device, non_blocking=True) for img in images]
            targets = targets_to(targets, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = model_for_step(images, targets)
            total = sum(losses.values())
            values = _check_finite({**losses, "loss": total}, step + 1)
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            params = [p for p in base.parameters() if p.grad is not None]
            max_norm = hyper["clip_grad"] if hyper["clip_grad"] is not None else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
            scaler.step(opt)
            scaler.update()
            current_lr = opt.param_groups[0]["lr"]
            scheduler.step()
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - tick
            train_images += len(images)
            train_time += elapsed
            values = all_reduce_mean(values, device=device if info.backend == "nccl" else "cpu")
            record = {"kind": "train", "step": step, **values, "lr": current_lr, "grad_norm": grad_norm,
                      "images_per_s": len(images) * info.world_size / max(elapsed, 1e-9)}
            if main:
                history.append(record)
                _append(log_path, record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}", parsing=_short(values),
                                ips=f"{record['images_per_s']:.1f}")
            if eval_dataset is not None and eval_every and step % eval_every == 0 and step < iterations:
                metrics = run_eval()
            if step % checkpoint_every == 0 or step == iterations:
                save()
            if on_step is not None:
                on_step(step, record)
        if eval_dataset is not None:
            metrics = run_eval()
    finally:
        if bar is not None:
            bar.close()

    wall = time.perf_counter() - started
    summary = {
        "step": step, "history": history, "metrics": metrics, "checkpoint": str(ckpt_path), "wall_time_s": wall,
        "images_per_s": train_images / max(train_time, 1e-9), "skipped": skipped,
    }
    if main:
        final = history[-1] if history else {}
        numbers = {**(metrics or {}), "train_final_loss": final.get("loss"),
                   "train_images_per_s": summary["images_per_s"], "iterations": step,
                   "skipped_bad_images": len(skipped)}
        record_profile = profile_name or get_profile().name
        summary["record"] = str(write_run_record(out_dir, numbers, profile=record_profile, name=result_name,
                                                 config=config, wall_time_s=wall, device=device))
        if result_name:
            summary["result"] = str(write_result(result_name, numbers, profile=record_profile, config=config,
                                                 wall_time_s=wall, device=device, force=force_record))
    return summary


def _short(values: dict[str, float]) -> str:
    return f"{values['loss_parsing']:.3f}" if "loss_parsing" in values else "-"


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(_plain(record)) + "\n")


def _plain(value: Any) -> Any:
    """JSON- and ``weights_only``-safe copy: tensors and NumPy scalars to Python numbers, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 2,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    max_images: int | None = None,
    amp: bool | None = None,
    num_classes: int | None = None,
    evaluator_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` with :class:`hparse.metrics.ParsingEvaluator` (mIoU, AP^p, PCP, AP^r).

    Args:
        model: eval-mode output must be prediction-contract dicts.
        dataset: data-contract samples (no augmentation is applied).
        batch_size, num_workers: loader settings.
        device: default: the model's device.
        max_images: score only the first ``max_images`` images.
        amp: mixed-precision inference (default: on with CUDA).
        num_classes: default ``dataset.labels.num_classes``, else ``model.num_classes``.
        evaluator_kwargs: passed to ``ParsingEvaluator`` (e.g. ``metrics=("miou", "app")``).
        progress: tqdm bar.

    Returns:
        The evaluator's metrics dict (fractions in [0, 1]) plus ``eval_images_per_s``.
    """
    from ..metrics import ParsingEvaluator

    base = unwrap_model(model)
    if device is None:
        device = next(base.parameters()).device
    device = torch.device(device)
    labels = getattr(dataset, "labels", None)
    num_classes = num_classes or (labels.num_classes if labels is not None else getattr(base, "num_classes", None))
    if num_classes is None:
        raise ValueError("evaluate needs num_classes: the dataset has no labels and the model no num_classes")
    evaluator = ParsingEvaluator(num_classes, **(evaluator_kwargs or {}))
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    subset = torch.utils.data.Subset(dataset, range(count))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    amp_dtype = _amp_dtype(device, amp)
    was_training = base.training
    base.eval()
    seconds, images_seen = 0.0, 0
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc="evaluate", dynamic_ncols=True)
    try:
        for images, targets in iterator:
            tick = time.perf_counter()
            images = [img.to(device, non_blocking=True) for img in images]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                predictions = base(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - tick
            images_seen += len(images)
            for pred, target in zip(predictions, targets):
                evaluator.update({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in pred.items()}, target)
    finally:
        base.train(was_training)
    result = evaluator.compute()
    result["eval_images_per_s"] = images_seen / max(seconds, 1e-9)
    return result
