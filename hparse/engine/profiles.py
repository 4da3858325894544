"""Run profiles: one code path, three sizes (``smoke`` for CI, ``cpu`` for a laptop, ``gpu`` for real runs).

The profile is chosen by ``HPARSE_PROFILE`` (or a ``--profile`` flag); without it, ``gpu`` when CUDA is available,
else ``cpu``. Notebooks and the CLI read it; they never branch into different code, only into different sizes.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

__all__ = ["Profile", "PROFILES", "get_profile", "get_device", "seed_everything"]


@dataclass(frozen=True)
class Profile:
    """Sizes of a run. Fields are generic so that every method and chapter can read the same profile."""

    name: str
    image_size: int  # SynthCrowd side length, pixels
    train_images: int  # SynthCrowd training images (drawn on the fly)
    val_images: int  # SynthCrowd validation images (the fixed val split's first N)
    iterations: int  # optimiser steps of a training run
    batch_size: int
    eval_every: int  # evaluate every N steps (0: only at the end)
    backbone: str  # ResNet depth used by top-down models
    num_workers: int
    max_people: int  # upper bound of people per SynthCrowd image
    bench_repeats: int  # timing repeats of benchmarks

    def to_dict(self) -> dict:
        return asdict(self)

    def override(self, **changes) -> Profile:
        return replace(self, **changes)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", image_size=96, train_images=16, val_images=8, iterations=4, batch_size=2, eval_every=0,
        backbone="resnet18", num_workers=0, max_people=3, bench_repeats=1,
    ),
    "cpu": Profile(
        name="cpu", image_size=192, train_images=2000, val_images=100, iterations=600, batch_size=4,
        eval_every=200, backbone="resnet18", num_workers=2, max_people=5, bench_repeats=3,
    ),
    "gpu": Profile(
        name="gpu", image_size=384, train_images=20000, val_images=500, iterations=12000, batch_size=16,
        eval_every=2000, backbone="resnet50", num_workers=8, max_people=8, bench_repeats=10,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The profile named ``name``, else ``$HPARSE_PROFILE``, else ``gpu`` with CUDA and ``cpu`` without."""
    name = name or os.environ.get("HPARSE_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown profile {name!r} (HPARSE_PROFILE); choose one of {', '.join(PROFILES)}") from None


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU. The only place hparse picks a device."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} was requested but CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
