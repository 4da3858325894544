"""What a training run *is*, recorded in its checkpoint so that resuming can only continue the same run.

Resuming restores the weights, optimiser and schedule of the checkpoint and then trains with the *requested*
settings. If those differ from the run's own, the result is a run that never happened: a 32x32-RoI model continued
as a 14x14 one from step 101, a learning rate silently ignored (the optimiser state holds the old one), another seed
that changes the data order halfway, a CIHP run folder "continued" on SynthCrowd, a 150-step run "resumed" to 600
steps under its own 150-step schedule (the scheduler's state holds the schedule, so its last 450 steps would run at
the decayed learning rate). Each was possible before, and each rewrote the run's record as if nothing had changed.

:func:`run_identity` collects everything that determines the run's trajectory: the model's build config (name, number
of classes, every flag), the training hyper-parameters (iterations and schedule, batch size, optimiser, learning rate,
seed, clipping, flip probability), the dataset (type, size, root, split) and the caller's ``config`` (dataset name,
recipe, image sizes, ...). :func:`check_same_run` compares a checkpoint's identity with the requested one and raises
:class:`RunMismatchError` listing every difference as ``key: saved -> requested``. What may change on resume without
changing the run (worker processes, progress bar, device, evaluation and checkpoint frequency: the
:data:`~hparse.engine.results.ENVIRONMENT_KEYS`) is left out.

Checkpoints written before identities were recorded hold the model config, the caller's config and the schedule; those
are compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import ENVIRONMENT_KEYS, config_differences

__all__ = ["RunMismatchError", "run_identity", "check_same_run"]

#: ``train()`` arguments that determine what a run computes (the rest say how it is executed)
HYPER_PARAMETERS = ("iterations", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "warmup",
                    "warmup_factor", "schedule", "milestones", "clip_grad", "hflip", "seed")


class RunMismatchError(ValueError):
    """A checkpoint was asked to resume under other settings than its run's; the message lists each difference."""


def run_identity(model, dataset, config: dict[str, Any] | None, hyper: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run: ``{"model", "train", "data", "config"}`` (plain JSON-like values).

    Args:
        model: the (unwrapped) model; its ``build_config`` (set by ``build_model``) names it and its flags.
        dataset: the training dataset (its type, length and, when it has them, ``root`` and ``split``).
        config: the caller's run description (the CLI's: model, train settings, dataset name, sizes, seed); its
            ``model`` and ``train`` parts repeat the other fields and are left out.
        hyper: the :data:`HYPER_PARAMETERS` ``train()`` was called with.
    """
    from .trainer import _plain

    build = getattr(model, "build_config", None) or {"class": type(model).__name__}
    root = getattr(dataset, "root", None)  # resolved: "data/CIHP" and its absolute path are one dataset
    data = {"type": type(dataset).__name__, "size": len(dataset),
            "root": str(Path(root).resolve()) if root is not None else None, "split": getattr(dataset, "split", None)}
    extra = {k: v for k, v in (config or {}).items() if k not in ("model", "train") and k not in hyper}
    return _plain({"model": build, "train": {k: hyper[k] for k in HYPER_PARAMETERS if k in hyper}, "data": data,
                   "config": extra})


def _legacy_identity(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint from before recorded identities still tells about its run."""
    config = checkpoint.get("config") or {}
    saved: dict[str, Any] = {}
    if checkpoint.get("model_config"):
        saved["model"] = checkpoint["model_config"]
    schedule = ((checkpoint.get("scheduler") or {}).get("lr_lambdas") or [None])[0]
    if isinstance(schedule, dict):
        saved["schedule"] = schedule
    if config:
        saved["config"] = {k: v for k, v in config.items() if k not in ("model", "train")}
    return saved


def check_same_run(path: Path, checkpoint: dict[str, Any], requested: dict[str, Any],
                   schedule: dict[str, Any] | None = None) -> None:
    """Raise :class:`RunMismatchError` if ``checkpoint`` (read from ``path``) belongs to another run than
    ``requested`` (a :func:`run_identity`).

    Args:
        schedule: ``vars()`` of the requested :class:`~hparse.engine.trainer.LRSchedule`, compared with the saved
            schedule of a checkpoint without an identity.
    """
    saved = checkpoint.get("identity")
    if saved is None:  # written before identities: compare what it holds
        saved = _legacy_identity(checkpoint)
        legacy_config = {k: v for k, v in requested.get("config", {}).items()}
        legacy_config.update({k: v for k, v in requested.get("train", {}).items() if k == "seed"})
        view = {"model": requested.get("model"), "schedule": schedule or {}, "config": legacy_config}
        requested = {key: view[key] for key in saved}
    differences = config_differences(saved, requested, ENVIRONMENT_KEYS)
    if differences:
        listed = "\n  ".join(differences)
        raise RunMismatchError(
            f"checkpoint {path} belongs to another run than the one requested (saved -> requested):\n  {listed}\n"
            f"Resuming would continue that run with these settings and mix the two. Rerun with the run's own "
            f"settings to continue it, or start over: --no-resume (resume=False) retrains in this folder, another "
            f"--out (out_dir) keeps it.")
