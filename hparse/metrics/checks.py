"""Input checks shared by the metrics: every error names the image (``meta['id']``) and the field at fault.

The official scripts fail late and obscurely on bad input: ``fast_hist`` filters only the ground truth, so a
prediction label >= n lands in a wrong bin or breaks the reshape (§A2 "Quirks"), and a NaN score silently sorts
somewhere. hparse refuses such input at ``update`` time instead, with a message saying what is wrong and where.
"""

from __future__ import annotations

import torch

__all__ = ["MetricInputError", "check_label_map", "check_ground_truth", "check_persons", "gt_person_count"]


class MetricInputError(ValueError):
    """A prediction or ground truth cannot be scored; the message names the image and the field."""


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def check_label_map(values: torch.Tensor, num_classes: int, where: str, field: str, shape=None,
                    allow: int | None = None) -> None:
    """Check an integer label map: its shape (if ``shape`` is given) and values in ``0..num_classes-1``.

    Args:
        values: (..., H, W) integer tensor.
        num_classes: number of labels including background.
        where: the image, for the message (e.g. ``"image '0000123'"``).
        field: the field name, for the message.
        shape: expected trailing (H, W), or None.
        allow: one extra accepted value (the ignore index of the ground truth), or None.
    """
    if not isinstance(values, torch.Tensor) or values.dtype.is_floating_point or values.dtype == torch.bool:
        raise MetricInputError(f"{where}: {field} must be an integer tensor, got {_describe(values)}")
    if shape is not None and tuple(values.shape[-2:]) != tuple(shape):
        raise MetricInputError(f"{where}: {field} has size {tuple(values.shape[-2:])} but the ground truth is "
                               f"{tuple(shape)} (predictions must be at the image's original resolution)")
    if values.numel() == 0:
        return
    low, high = torch.aminmax(values)
    if int(low) >= 0 and (int(high) < num_classes or (allow is not None and int(high) == allow
                                                        and int((values >= num_classes).sum()) ==
                                                        int((values == allow).sum()))):
        return  # the common case, decided with one or two passes over the map
    bad = (values < 0) | (values >= num_classes)
    if allow is not None:
        bad &= values != allow
    if bool(bad.any()):
        found = torch.unique(values[bad]).tolist()[:8]
        extra = f" (or {allow})" if allow is not None else ""
        raise MetricInputError(f"{where}: {field} has labels {found} outside 0..{num_classes - 1}{extra}")


def gt_person_count(target: dict) -> int:
    """Number of annotated persons: rows of ``boxes`` when present, else the largest id in ``instances``."""
    boxes = target.get("boxes")
    if isinstance(boxes, torch.Tensor) and boxes.ndim == 2:
        return int(boxes.shape[0])
    instances = target["instances"]
    return int(instances.max()) if instances.numel() else 0


def check_ground_truth(semantic: torch.Tensor, instances: torch.Tensor, num_classes: int, ignore_index: int,
                       num_persons: int, where: str) -> None:
    """Check a ground truth: ``semantic`` (H, W) in 0..n-1 or ``ignore_index``; ``instances`` (H, W) in 0..N."""
    if not isinstance(semantic, torch.Tensor) or semantic.ndim != 2:
        raise MetricInputError(f"{where}: ground-truth semantic must be an (H, W) tensor, got {_describe(semantic)}")
    check_label_map(semantic, num_classes, where, "ground-truth semantic", allow=ignore_index)
    if not isinstance(instances, torch.Tensor) or tuple(instances.shape) != tuple(semantic.shape):
        raise MetricInputError(f"{where}: ground-truth instances must be a tensor of shape {tuple(semantic.shape)}, "
                               f"got {_describe(instances)}")
    if instances.numel() and (int(instances.min()) < 0 or int(instances.max()) > num_persons):
        raise MetricInputError(f"{where}: ground-truth instances has person ids {int(instances.min())}.."
                               f"{int(instances.max())} but the image has {num_persons} annotated persons")


def check_persons(person_parts: torch.Tensor, person_scores: torch.Tensor, num_classes: int, shape, where: str,
                  part_scores: torch.Tensor | None = None) -> None:
    """Check the person-level prediction: (N, H, W) part maps, (N,) finite scores, optional (N, n) part scores."""
    if not isinstance(person_parts, torch.Tensor) or person_parts.ndim != 3:
        raise MetricInputError(f"{where}: person_parts must be an (N, H, W) tensor, got {_describe(person_parts)}")
    check_label_map(person_parts, num_classes, where, "person_parts", shape=shape)
    if not isinstance(person_scores, torch.Tensor) or person_scores.ndim != 1:
        raise MetricInputError(f"{where}: person_scores must be an (N,) tensor, got {_describe(person_scores)}")
    if person_scores.shape[0] != person_parts.shape[0]:
        raise MetricInputError(f"{where}: {person_parts.shape[0]} persons in person_parts but "
                               f"{person_scores.shape[0]} in person_scores")
    if person_scores.numel() and not bool(torch.isfinite(person_scores.double()).all()):
        bad = (~torch.isfinite(person_scores.double())).nonzero().flatten().tolist()
        raise MetricInputError(f"{where}: person_scores of persons {bad} are NaN or infinite")
    if part_scores is not None:
        if not isinstance(part_scores, torch.Tensor) or tuple(part_scores.shape) != (person_parts.shape[0],
                                                                                      num_classes):
            raise MetricInputError(f"{where}: part_scores must be a ({person_parts.shape[0]}, {num_classes}) tensor, "
                                   f"got {_describe(part_scores)}")
        if part_scores.numel() and not bool(torch.isfinite(part_scores.double()).all()):
            raise MetricInputError(f"{where}: part_scores contain NaN or infinite values")
