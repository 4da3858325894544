"""Atomic checkpoints that resume training exactly.

A checkpoint holds everything a run's future depends on: model, optimiser, learning-rate schedule and gradient
scaler states, the step, the data position (how many samples each process has consumed), and the random-number
states of every process (Python, NumPy, torch CPU and CUDA). Restoring all of them makes "train 6 steps" and "train
3 steps, crash, resume to 6" produce the same losses (tested in ``tests/test_engine.py``).

Files are written through a temporary file in the same folder and an ``os.replace`` rename, so a crash while saving
leaves the previous checkpoint intact, never half a file. Only plain containers and tensors are stored (NumPy RNG
arrays are converted to tensors), so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "CHECKPOINT_NAME",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "CheckpointError",
]

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


def rng_state() -> dict[str, Any]:
    """Random-number states of this process: Python, NumPy, torch CPU and (when present) all CUDA devices."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, flush, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only, ``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was not written by hparse.engine (whose "
                              "writes are atomic) or its disk filled up. Delete it, or start the run over "
                              "(--no-resume)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"could not read checkpoint {path} ({type(err).__name__}: {first}); the file is "
                              f"truncated, corrupt or not a checkpoint. Delete it, or start the run over "
                              f"(--no-resume)") from err


def load_model(path: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint alone.

    The checkpoint stores how the model was built (``model_config``: the ``build_model`` name, ``num_classes`` and
    flags), so no other file is needed.

    Returns:
        ``(model, checkpoint)``: the model in eval mode on ``device`` (default: CUDA when available) and the whole
        checkpoint dict (``step``, ``config``, ...).
    """
    from ..models import build_model
    from .profiles import get_device

    device = get_device(device)
    checkpoint = load_checkpoint(path)
    config = checkpoint.get("model_config")
    if not config or "name" not in config:
        raise CheckpointError(f"checkpoint {path} has no model_config; it was not written by hparse.engine.train")
    build_config = dict(config)
    config = dict(config)
    if config.get("backbone_weights") is not None:
        # The starting point's weights (ImageNet: a download; hparse's: the shipped file) are replaced by the trained
        # ones below, so the model is built without them (offline too). The normalisation they imply is kept.
        config["backbone_weights"] = None
        if config.get("backbone_norm") is None:
            config["backbone_norm"] = "frozen_bn"
    model = build_model(config.pop("name"), config.pop("num_classes"), **config)
    model.build_config = build_config  # how it was built for training, as the checkpoint says
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model it describes: {err}") from err
    return model.to(device).eval(), checkpoint
