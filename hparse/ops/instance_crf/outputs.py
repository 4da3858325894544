"""Segmentations at other granularities from the Instance CRF's output (Li, Arnab & Torr, BMVC 2017, §3.4).

The MAP labelling assigns each pixel (detection i, part j) or background; mapping (i, j) -> i gives the human
instances, (i, j) -> j the semantic parts, and the pair the prediction contract's per-person part maps.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["crf_labels", "crf_instances", "crf_semantic", "crf_to_person_parts", "crf_prediction", "num_detections"]


def crf_labels(prob: Tensor) -> Tensor:
    """(1 + D·P, H, W) probabilities -> (H, W) int64 channel index of the most probable label (the MAP estimate)."""
    return prob.argmax(0)


def num_detections(num_labels: int, num_parts: int) -> int:
    if num_parts < 1 or (num_labels - 1) % num_parts:
        raise ValueError(f"{num_labels} CRF labels do not form 1 + D·P with P = {num_parts} parts")
    return (num_labels - 1) // num_parts


def crf_instances(labels: Tensor, num_parts: int) -> Tensor:
    """§3.4 human instances: label (i, j) -> i. (H, W) channel indices -> (H, W) int64, 0 background, i = 1..D."""
    return torch.where(labels > 0, (labels - 1) // num_parts + 1, torch.zeros_like(labels))


def crf_semantic(labels: Tensor, num_parts: int) -> Tensor:
    """§3.4 semantic parts: label (i, j) -> j. (H, W) channel indices -> (H, W) int64 part map, 0 background."""
    return torch.where(labels > 0, (labels - 1) % num_parts + 1, torch.zeros_like(labels))


def crf_to_person_parts(labels: Tensor, num_detections: int, num_parts: int) -> Tensor:
    """(H, W) channel indices -> (D, H, W) int64: part label of each detection's pixels, 0 = not this person."""
    inst = crf_instances(labels, num_parts)
    sem = crf_semantic(labels, num_parts)
    ids = torch.arange(1, num_detections + 1, device=labels.device)[:, None, None]
    return torch.where(inst[None] == ids, sem[None], torch.zeros_like(sem[None]))


def crf_prediction(
    prob: Tensor,
    num_parts: int,
    scores: Tensor,
    boxes: Tensor | None = None,
    *,
    rescore: bool = False,
) -> dict[str, Tensor]:
    """Instance CRF output -> the prediction contract (DESIGN.md) for one image.

    Args:
        prob: (1 + D·P, H, W) CRF probabilities.
        num_parts: P.
        scores: (D,) detection scores (reported as ``person_scores`` unless ``rescore``).
        boxes: optional (D, 4) detection boxes (``person_boxes``).
        rescore: score each person by the mean, over its pixels, of its CRF probability mass Σ_j Q_k(i, j) — the
            released post-processing re-scores instances by their mean segmentation probability, which helps AP;
            a detection that owns no pixel (a rejected false positive) gets 0.

    Returns:
        dict with ``semantic`` (H, W), ``person_parts`` (D, H, W), ``instances`` (H, W), ``person_scores`` (D,)
        and, when given, ``person_boxes``. Detections that own no pixel keep an all-zero part map.
    """
    num_det = num_detections(prob.shape[0], num_parts)
    labels = crf_labels(prob)
    inst = crf_instances(labels, num_parts)
    out = {
        "semantic": crf_semantic(labels, num_parts),
        "person_parts": crf_to_person_parts(labels, num_det, num_parts),
        "instances": inst,
        "person_scores": scores.detach().to(torch.float32).clone(),
    }
    if rescore and num_det > 0:
        mass = prob.detach()[1:].reshape(num_det, num_parts, *prob.shape[1:]).sum(1)  # (D, H, W)
        own = inst[None] == torch.arange(1, num_det + 1, device=prob.device)[:, None, None]
        count = own.sum((1, 2))
        total = (mass * own).sum((1, 2))
        out["person_scores"] = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)).float()
    if boxes is not None:
        out["person_boxes"] = boxes.detach().to(torch.float32).clone()
    return out
