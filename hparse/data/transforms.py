"""Transforms on data-contract samples: every geometric transform moves image, labels, boxes and keypoints together.

Label maps are categorical, so they are resized with **nearest** interpolation, never bilinear. A horizontal flip
swaps left/right part labels (``LabelSet.flip_permutation``) and left/right keypoints
(``KeypointSet.flip_permutation``), as Parsing R-CNN's ``set_flip`` and PGN's ``reverse_label`` do.
Coordinates are continuous pixel coordinates (pixel ``i`` covers ``[i, i+1)``), so a flip maps ``x`` to ``W - x``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .labels import LabelSet

__all__ = [
    "Compose",
    "Resize",
    "RandomScale",
    "RandomHorizontalFlip",
    "ColorJitter",
    "Normalize",
    "hflip_sample",
    "resize_sample",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Sample = dict


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def resize_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Resize to ``size = (H, W)``: bilinear for the image, nearest for ``semantic`` and ``instances``.

    Label maps use ``nearest-exact`` (each output pixel takes the source pixel under its centre); legacy
    ``nearest`` takes the top-left pixel of each source block, which shifts labels by up to (s - 1) / 2 pixels
    against the antialiased image when downscaling by s.
    """
    out = dict(sample)
    height, width = sample["image"].shape[-2:]
    new_h, new_w = size
    if (new_h, new_w) == (height, width):
        return out
    out["image"] = F.interpolate(sample["image"][None], size=size, mode="bilinear", align_corners=False,
                                 antialias=True)[0].clamp_(0, 1)
    for key in ("semantic", "instances"):
        out[key] = F.interpolate(sample[key][None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    sx, sy = new_w / width, new_h / height
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    out["boxes"] = sample["boxes"] * scale
    kps = sample["keypoints"].clone()
    kps[..., 0] *= sx
    kps[..., 1] *= sy
    out["keypoints"] = kps
    return out


def _scaled_size(height: int, width: int, short_side: int, max_size: int | None) -> tuple[int, int]:
    scale = short_side / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Resize:
    """Resize so the short side is ``short_side`` and the long side at most ``max_size`` (detection convention)."""

    def __init__(self, short_side: int, max_size: int | None = None):
        self.short_side, self.max_size = short_side, max_size

    def __call__(self, sample: Sample) -> Sample:
        height, width = sample["image"].shape[-2:]
        return resize_sample(sample, _scaled_size(height, width, self.short_side, self.max_size))


class RandomScale:
    """Multi-scale training: pick the short side uniformly from ``short_sides`` (then cap at ``max_size``)."""

    def __init__(self, short_sides: Sequence[int], max_size: int | None = None):
        if not short_sides:
            raise ValueError("RandomScale needs at least one short side")
        self.short_sides, self.max_size = list(short_sides), max_size

    def __call__(self, sample: Sample) -> Sample:
        return Resize(random.choice(self.short_sides), self.max_size)(sample)


def hflip_sample(sample: Sample, labels: LabelSet) -> Sample:
    """Mirror a sample left-right, swapping left/right part labels and keypoints."""
    out = dict(sample)
    width = sample["image"].shape[-1]
    out["image"] = sample["image"].flip(-1)
    lut = torch.arange(256, dtype=torch.int64)
    lut[: labels.num_classes] = torch.tensor(labels.flip_permutation, dtype=torch.int64)
    out["semantic"] = lut[sample["semantic"].flip(-1)]
    out["instances"] = sample["instances"].flip(-1)
    boxes = sample["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - sample["boxes"][:, 2], width - sample["boxes"][:, 0]
    out["boxes"] = boxes
    kps = sample["keypoints"].clone()
    if kps.shape[1]:
        kps[..., 0] = torch.where(kps[..., 2] > 0, width - kps[..., 0], kps[..., 0])
        if labels.keypoints is None or kps.shape[1] != labels.keypoints.num_keypoints:
            expected = 0 if labels.keypoints is None else labels.keypoints.num_keypoints
            raise ValueError(f"hflip of sample {sample['meta'].get('id', '?')!r}: it has {kps.shape[1]} keypoints per "
                             f"person but label set {labels.name!r} defines {expected}, so left/right keypoints "
                             "cannot be swapped")
        kps = kps[:, list(labels.keypoints.flip_permutation)]
    out["keypoints"] = kps
    out["meta"] = {**sample["meta"], "hflip": not sample["meta"].get("hflip", False)}
    return out


class RandomHorizontalFlip:
    def __init__(self, labels: LabelSet, p: float = 0.5):
        self.labels, self.p = labels, p

    def __call__(self, sample: Sample) -> Sample:
        return hflip_sample(sample, self.labels) if random.random() < self.p else sample


class ColorJitter:
    """Random brightness, contrast and saturation factors in ``[1 - s, 1 + s]``; photometric only."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        b = 1 + random.uniform(-self.brightness, self.brightness)
        c = 1 + random.uniform(-self.contrast, self.contrast)
        s = 1 + random.uniform(-self.saturation, self.saturation)
        image = image * b
        image = (image - image.mean()) * c + image.mean()
        gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = (image - gray) * s + gray
        return {**sample, "image": image.clamp(0, 1)}


class Normalize:
    """Subtract ``mean`` and divide by ``std`` per channel. The result leaves [0, 1]: use it only at model input."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": (sample["image"] - self.mean) / self.std}
