"""Per-RoI parsing targets and the parsing loss: pure functions beside the heads.

A parsing target is the matched person's part map, ``semantic * (instances == k)``, cropped to the RoI and resized
to the head's output size (Parsing R-CNN, Sec. 3; official code: crop with the proposal box, cv2 ``INTER_NEAREST``
resize). Part labels are categorical, so they are sampled with **nearest** interpolation: a bilinear ``roi_align`` on
a label map would blend part ids (an arm and a leg averaging to a torso) and must never be used.

All RoIs of a batch are sampled by **one** ``F.grid_sample(mode="nearest")`` call on the device: each image's label
maps are stacked once as ``(B, 2, H, W)`` channels (semantic, instances) and each RoI contributes an ``M x M`` block
of sample points to its image's grid, so no per-RoI crop, copy or CPU loop is needed.

Coordinates are continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``). Output cell ``j`` of an RoI
``(x1, y1, x2, y2)`` samples the label at ``x1 + (j + 0.5) (x2 - x1) / M``; with ``align_corners=False`` nearest
sampling returns the pixel that contains that point, so every target value is a label that exists in the map.
The official code first rounds the box to integers (it crops a NumPy array); sampling at continuous coordinates keeps
the target aligned with the RoIAlign features instead (a choice of ours; the paper does not say).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.contract import IGNORE_INDEX

__all__ = ["roi_sample_grid", "sample_label_maps", "parsing_targets", "parsing_loss"]


def roi_sample_grid(boxes: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Normalised ``grid_sample`` coordinates of the ``size x size`` cell centres of each box.

    Args:
        boxes: (R, 4) xyxy boxes in pixels of a ``height x width`` map.
        size: M, the output side.
        height, width: size of the (padded) map the grid indexes.

    Returns:
        (R, M, M, 2) grid of (x, y) in [-1, 1] for ``F.grid_sample(..., align_corners=False)``.
    """
    centres = (torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5) / size  # (M,) in (0, 1)
    boxes = boxes.float()
    xs = boxes[:, 0:1] + centres[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # (R, M) pixel x of column centres
    ys = boxes[:, 1:2] + centres[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # (R, M) pixel y of row centres
    gx = (2 * xs / width - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys / height - 1)[:, :, None].expand(-1, -1, size)
    return torch.stack((gx, gy), dim=-1)


def sample_label_maps(maps: list[torch.Tensor], boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """Crop-and-resize integer label maps to every RoI with nearest sampling, all RoIs in one ``grid_sample``.

    Args:
        maps: per image, an int64 (K, H_i, W_i) stack of label maps (images may differ in size).
        boxes: per image, (R_i, 4) xyxy RoIs in that image's pixel coordinates.
        size: M, the output side.

    Returns:
        int64 (sum R_i, K, M, M): the labels under each RoI, in the order of ``boxes``. Points outside an image read 0.
    """
    if len(maps) != len(boxes):
        raise ValueError(f"sample_label_maps got {len(maps)} label maps but {len(boxes)} box lists")
    counts = [len(b) for b in boxes]
    channels = maps[0].shape[0] if maps else 0
    device = maps[0].device if maps else torch.device("cpu")
    total = sum(counts)
    if total == 0:
        return torch.zeros(0, channels, size, size, dtype=torch.int64, device=device)
    height = max(m.shape[-2] for m in maps)
    width = max(m.shape[-1] for m in maps)
    # Labels are small integers, exactly representable in float32, which is what grid_sample needs.
    canvas = torch.zeros(len(maps), channels, height, width, dtype=torch.float32, device=device)
    for i, m in enumerate(maps):
        canvas[i, :, : m.shape[-2], : m.shape[-1]] = m
    rmax = max(counts)
    grid = torch.full((len(maps), rmax, size, size, 2), -2.0, device=device)  # -2: outside, read as 0
    for i, b in enumerate(boxes):
        if len(b):
            grid[i, : len(b)] = roi_sample_grid(b.to(device), size, height, width)
    # All RoIs of image i are stacked along the grid's height: (B, Rmax * M, M, 2) -> (B, K, Rmax * M, M).
    # Autocast off: labels must stay exact float32 integers whatever precision the model runs in.
    with torch.autocast(device.type, enabled=False):
        sampled = F.grid_sample(canvas, grid.view(len(maps), rmax * size, size, 2), mode="nearest",
                                padding_mode="zeros", align_corners=False)
    sampled = sampled.view(len(maps), channels, rmax, size, size).transpose(1, 2)  # (B, Rmax, K, M, M)
    valid = torch.arange(rmax, device=device)[None] < torch.tensor(counts, device=device)[:, None]
    return sampled[valid].round().long()


def parsing_targets(
    semantic: list[torch.Tensor],
    instances: list[torch.Tensor],
    boxes: list[torch.Tensor],
    person_ids: list[torch.Tensor],
    size: int,
    return_foreground: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Part-label target of each RoI: its matched person's part map, cropped and nearest-resized to ``size``.

    For RoI r matched to person k the target is ``semantic`` where ``instances == k``, 0 (background) on other
    people and on background, and ``255`` (ignore) wherever ``semantic`` is 255: an ignore region is unlabelled, so
    whether it belongs to person k is unknown and it must not count as background either.

    Args:
        semantic: per image, int64 (H_i, W_i) part labels (0 background, 255 ignore).
        instances: per image, int64 (H_i, W_i) person ids (0 background).
        boxes: per image, (R_i, 4) RoIs in that image's pixel coordinates.
        person_ids: per image, int64 (R_i,) the 1-based person id each RoI is matched to.
        size: M, the output side of the parsing head.
        return_foreground: also return the person's binary mask under each RoI (used by attention branches).

    Returns:
        int64 (R, M, M) part targets with values in ``0..num_classes - 1`` and 255; with ``return_foreground``
        also a bool (R, M, M) foreground mask ``instances == k``.
    """
    maps = [torch.stack((s, i)) for s, i in zip(semantic, instances)]
    sampled = sample_label_maps(maps, boxes, size)  # (R, 2, M, M)
    sem, inst = sampled[:, 0], sampled[:, 1]
    ids = torch.cat([p.to(sem.device) for p in person_ids]).view(-1, 1, 1) if person_ids else sem.new_zeros(0, 1, 1)
    if ids.shape[0] != sem.shape[0]:
        raise ValueError(f"parsing_targets got {sem.shape[0]} RoIs but {ids.shape[0]} person ids")
    mine = inst == ids
    target = torch.where(mine, sem, torch.zeros_like(sem))
    target = torch.where(sem == IGNORE_INDEX, torch.full_like(sem, IGNORE_INDEX), target)
    return (target, mine) if return_foreground else target


def parsing_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 2.0) -> torch.Tensor:
    """Per-pixel softmax cross-entropy over the positive RoIs (Parsing R-CNN Sec. 4.2), ignore label 255.

    The mean runs over the labelled pixels of all RoIs. ``weight`` = 2.0 follows the official code
    (``PRCNN.LOSS_WEIGHT: 2.0``, "double loss weight"); the paper does not give a weight. With no RoIs (images
    without people) the loss is ``0 * logits.sum()``: zero, but still connected to every parameter of the head, as
    torchvision's mask loss does, so that distributed training sees a gradient for each parameter.

    Args:
        logits: (R, C, M, M) parsing logits.
        targets: int64 (R, M, M) part labels with 255 = ignore.
        weight: loss weight.

    Returns:
        scalar loss.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0
    if targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"parsing_loss: logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return weight * total / labelled
