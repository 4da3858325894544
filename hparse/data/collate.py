"""Batching for detection-style models (torchvision's convention): a list of images and a list of target dicts."""

from __future__ import annotations

import torch

__all__ = ["collate_detection", "targets_to"]


def collate_detection(batch: list[dict]) -> tuple[list[torch.Tensor], list[dict]]:
    """``[sample, ...]`` -> ``(images, targets)``: images of different sizes stay separate tensors."""
    images = [sample["image"] for sample in batch]
    targets = [{k: v for k, v in sample.items() if k != "image"} for sample in batch]
    return images, targets


def targets_to(targets: list[dict], device: torch.device, non_blocking: bool = True) -> list[dict]:
    """Move every tensor of every target to ``device`` (the other values, such as ``meta``, stay as they are)."""
    return [
        {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
