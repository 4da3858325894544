"""The data contract every hparse dataset returns, and a validator that says exactly what is wrong and where.

``sample = dataset[i]`` is a dict (DESIGN.md, "Data contract"):

- ``image``: float32 (3, H, W), RGB in [0, 1]
- ``semantic``: int64 (H, W), part label per pixel; 0 background; 255 ignore
- ``instances``: int64 (H, W), person id per pixel; 0 background; 1..N persons
- ``boxes``: float32 (N, 4), xyxy pixel boxes of persons 1..N (row k is person k+1)
- ``keypoints``: float32 (N, K, 3), x, y, visibility (0 absent, 1 occluded, 2 visible); K may be 0
- ``meta``: dict with at least ``id`` (str) and ``dataset`` (str)

Per-person part maps are derived, never stored twice: ``person_parts = semantic * (instances == k)``.
"""

from __future__ import annotations

import torch

from .labels import LabelSet

__all__ = ["IGNORE_INDEX", "ContractError", "validate_sample", "person_part_maps"]

IGNORE_INDEX = 255


class ContractError(ValueError):
    """A sample breaks the data contract; the message names the sample and the field."""


def _fail(where: str, message: str) -> None:
    raise ContractError(f"{where}: {message}")


def validate_sample(sample: dict, labels: LabelSet, where: str | None = None) -> dict:
    """Check ``sample`` against the data contract and the label set; return it unchanged.

    Raises :class:`ContractError` naming the sample (``where``, else ``meta['id']``) and the offending field.
    """
    meta = sample.get("meta")
    if where is None:
        where = f"sample {meta.get('id', '?')!r} of {meta.get('dataset', '?')}" if isinstance(meta, dict) else "sample"
    for key in ("image", "semantic", "instances", "boxes", "keypoints", "meta"):
        if key not in sample:
            _fail(where, f"missing key {key!r}")
    image, semantic, instances = sample["image"], sample["semantic"], sample["instances"]
    boxes, keypoints = sample["boxes"], sample["keypoints"]

    if not (isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.ndim == 3
            and image.shape[0] == 3):
        _fail(where, f"image must be a float32 tensor (3, H, W), got {_describe(image)}")
    _, height, width = image.shape
    if image.numel() and (image.min() < 0 or image.max() > 1 or not torch.isfinite(image).all()):
        _fail(where, "image values must be finite and in [0, 1]")
    for name, value in (("semantic", semantic), ("instances", instances)):
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.int64 and value.shape == (height, width)):
            _fail(where, f"{name} must be an int64 tensor of shape ({height}, {width}), got {_describe(value)}")

    bad = (semantic >= labels.num_classes) & (semantic != IGNORE_INDEX) | (semantic < 0)
    if bad.any():
        values = torch.unique(semantic[bad]).tolist()[:10]
        _fail(where, f"semantic has values {values} outside 0..{labels.num_classes - 1} (and 255) of {labels.name}")

    num_persons = boxes.shape[0] if isinstance(boxes, torch.Tensor) and boxes.ndim == 2 else -1
    if not (isinstance(boxes, torch.Tensor) and boxes.dtype == torch.float32 and boxes.ndim == 2
            and boxes.shape[1] == 4):
        _fail(where, f"boxes must be a float32 tensor (N, 4), got {_describe(boxes)}")
    if instances.min() < 0 or instances.max() > num_persons:
        _fail(where, f"instances has ids in {instances.min().item()}..{instances.max().item()} but there are "
              f"{num_persons} boxes (ids must be 0..{num_persons})")
    if num_persons:
        if not torch.isfinite(boxes).all():
            _fail(where, "boxes contain NaN or inf")
        if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
            _fail(where, f"boxes must be xyxy with x2 >= x1 and y2 >= y1: {boxes.tolist()}")
        outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        if outside.any():
            k = int(outside.nonzero()[0])
            _fail(where, f"box of person {k + 1} {boxes[k].tolist()} lies outside the {width}x{height} image")

    if not (isinstance(keypoints, torch.Tensor) and keypoints.dtype == torch.float32 and keypoints.ndim == 3
            and keypoints.shape[0] == num_persons and keypoints.shape[2] == 3):
        _fail(where, f"keypoints must be a float32 tensor ({num_persons}, K, 3), got {_describe(keypoints)}")
    if keypoints.numel():
        vis = keypoints[..., 2]
        if not ((vis == 0) | (vis == 1) | (vis == 2)).all():
            _fail(where, "keypoint visibility must be 0 (absent), 1 (occluded) or 2 (visible)")
        if labels.keypoints is not None and keypoints.shape[1] != labels.keypoints.num_keypoints:
            _fail(where, f"keypoints have K={keypoints.shape[1]} but {labels.name} uses "
                  f"{labels.keypoints.name} with K={labels.keypoints.num_keypoints}")

    if not isinstance(meta, dict) or not isinstance(meta.get("id"), str) or not isinstance(meta.get("dataset"), str):
        _fail(where, "meta must be a dict with str 'id' and 'dataset'")
    return sample


def person_part_maps(semantic: torch.Tensor, instances: torch.Tensor, num_persons: int | None = None) -> torch.Tensor:
    """(N, H, W) part map of each person: ``semantic * (instances == k)``, ignore pixels set to 0."""
    if num_persons is None:
        num_persons = int(instances.max()) if instances.numel() else 0
    ids = torch.arange(1, num_persons + 1, device=instances.device).view(-1, 1, 1)
    parts = torch.where(semantic == IGNORE_INDEX, torch.zeros_like(semantic), semantic)
    return parts.unsqueeze(0) * (instances.unsqueeze(0) == ids)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
