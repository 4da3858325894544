"""Controlled corruptions of a perfect prediction: what does each metric reward, and what does it ignore?

Start from the ground truth written as a prediction (:func:`prediction_from_target`: every person parsed exactly),
apply one mistake a real parser makes, and score it. Each function takes a prediction-contract dict and returns a
new one; none modifies its input. After every change the global ``semantic`` map is re-painted from the persons
(highest score on top), as Parsing R-CNN's ``parsing_png`` builds it (``shared/reference/metrics_and_formats.md``
§A1), so mIoU sees exactly what the instance metrics see.

- :func:`swap_identities`: two people exchange a body region. The part map is untouched, so mIoU cannot move;
  AP^p and AP^r drop.
- :func:`erode_part`: one part loses its boundary. Every metric drops a little; AP^r at high thresholds the most.
- :func:`merge_persons`: two people become one prediction (a bottom-up grouping error).
- :func:`drop_person`: a missed detection. Recall drops; mIoU loses that person's pixels.
- :func:`add_false_positive`: a ghost person on the background (a shifted copy of a real one).

:data:`CORRUPTIONS` maps a name to ``fn(pred, target, rng) -> pred`` choosing the people at random, for tables and
explorers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..data.contract import person_part_maps
from .checks import gt_person_count
from .painting import paint_persons, painted_maps, person_pixels

__all__ = [
    "prediction_from_target",
    "repaint_semantic",
    "swap_identities",
    "erode_part",
    "merge_persons",
    "drop_person",
    "add_false_positive",
    "CORRUPTIONS",
]


def repaint_semantic(pred: dict) -> dict:
    """Set ``pred["semantic"]`` to the persons painted by ascending score (highest on top); returns ``pred``."""
    semantic, _ = painted_maps(paint_persons(person_pixels(pred["person_parts"]), pred["person_scores"]))
    pred["semantic"] = semantic
    return pred


def prediction_from_target(target: dict, scores: Sequence[float] | None = None) -> dict:
    """The ground truth as a perfect prediction: one part map per annotated person, distinct scores.

    Args:
        target: a data-contract sample (``semantic``, ``instances``, ``boxes``).
        scores: (N,) person scores; default ``0.95, 0.90, ...`` (never below 0.05), so every ranking is defined.
    """
    num = gt_person_count(target)
    parts = person_part_maps(target["semantic"], target["instances"], num)
    if scores is None:
        scores = np.maximum(0.95 - 0.05 * np.arange(num), 0.05)
    return repaint_semantic({"person_parts": parts, "person_scores": torch.as_tensor(scores, dtype=torch.float32)})


def _copy(pred: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in pred.items()}


def _check_person(pred: dict, *indices: int) -> None:
    num = pred["person_parts"].shape[0]
    for k in indices:
        if not 0 <= k < num:
            raise IndexError(f"person {k} does not exist: the prediction has {num} persons (0..{num - 1})")


def swap_identities(pred: dict, a: int, b: int, classes: Sequence[int] | None = None) -> dict:
    """Persons ``a`` and ``b`` exchange pixels: those of ``classes``, or (default) the lower half of each body.

    The lower half is every pixel of the person at or below the middle row of its extent, so the swap is label-set
    agnostic: a's legs become b's and b's become a's. Pixels keep their part labels.
    """
    _check_person(pred, a, b)
    out = _copy(pred)
    parts = out["person_parts"]
    moved = []
    for k in (a, b):
        mask = parts[k] > 0
        if classes is not None:
            region = mask & torch.isin(parts[k], torch.as_tensor(list(classes), device=parts.device))
        else:
            rows = mask.any(1).nonzero().flatten()
            middle = (rows.min() + rows.max() + 1) // 2 if rows.numel() else parts.shape[1]
            region = mask & (torch.arange(parts.shape[1], device=parts.device)[:, None] >= middle)
        moved.append((region, parts[k] * region))
    (region_a, pix_a), (region_b, pix_b) = moved
    parts[a] = torch.where(region_a, 0, parts[a])
    parts[b] = torch.where(region_b, 0, parts[b])
    # Where both receive a pixel at the same place (overlapping persons) the receiver's own pixel wins.
    parts[a] = torch.where(parts[a] == 0, pix_b, parts[a])
    parts[b] = torch.where(parts[b] == 0, pix_a, parts[b])
    return repaint_semantic(out)


def erode_part(pred: dict, person: int, label: int | None = None, iterations: int = 2) -> dict:
    """Erode one part of one person by ``iterations`` pixels (binary erosion); the lost rim becomes background.

    Args:
        label: the part; default the person's largest part.
    """
    _check_person(pred, person)
    out = _copy(pred)
    parts = out["person_parts"]
    if label is None:
        counts = torch.bincount(parts[person].flatten().long(), minlength=2)[1:]
        label = int(counts.argmax()) + 1
    region = (parts[person] == label).cpu().numpy()
    kept = ndimage.binary_erosion(region, iterations=iterations)
    lost = torch.as_tensor(region & ~kept, device=parts.device)
    parts[person] = torch.where(lost, 0, parts[person])
    return repaint_semantic(out)


def merge_persons(pred: dict, a: int, b: int) -> dict:
    """Persons ``a`` and ``b`` become one prediction (kept at index ``a``), scored as the higher of the two.

    Where they overlap the higher-scored person's pixel wins, as it did in the painted map, so the semantic map is
    unchanged: a merge is invisible to mIoU.
    """
    _check_person(pred, a, b)
    if a == b:
        raise ValueError(f"cannot merge person {a} with itself")
    out = _copy(pred)
    parts, scores = out["person_parts"], out["person_scores"]
    top, other = (a, b) if scores[a] >= scores[b] else (b, a)
    parts[a] = torch.where(parts[top] == 0, parts[other], parts[top])
    scores[a] = torch.maximum(scores[a], scores[b])
    keep = torch.arange(parts.shape[0], device=parts.device) != b
    out["person_parts"], out["person_scores"] = parts[keep], scores[keep]
    if "part_scores" in out:
        out["part_scores"] = out["part_scores"][keep]
    return repaint_semantic(out)


def drop_person(pred: dict, person: int) -> dict:
    """Remove one predicted person (a missed detection)."""
    _check_person(pred, person)
    out = _copy(pred)
    keep = torch.arange(out["person_parts"].shape[0]) != person
    for key in ("person_parts", "person_scores", "part_scores", "person_boxes", "keypoints"):
        if key in out:
            out[key] = out[key][keep.to(out[key].device)]
    return repaint_semantic(out)


def add_false_positive(pred: dict, source: int, score: float = 0.5, shift: tuple[int, int] | None = None) -> dict:
    """Add a ghost: a copy of person ``source`` moved by ``shift`` (default: its own width to the side with room).

    Args:
        score: the ghost's score (above the real persons' it ranks first and hurts AP the most).
        shift: (dy, dx) in pixels; pixels moved out of the image are dropped.
    """
    _check_person(pred, source)
    out = _copy(pred)
    parts = out["person_parts"]
    height, width = parts.shape[1:]
    ghost = parts[source]
    if shift is None:
        cols = (ghost > 0).any(0).nonzero().flatten()
        x0, x1 = (int(cols.min()), int(cols.max()) + 1) if cols.numel() else (0, 0)
        dx = x1 - x0
        shift = (0, dx if width - x1 >= x0 else -dx)
    dy, dx = shift
    moved = torch.zeros_like(ghost)
    ys, ye = max(dy, 0), min(height, height + dy)
    xs, xe = max(dx, 0), min(width, width + dx)
    if ys < ye and xs < xe:
        moved[ys:ye, xs:xe] = ghost[ys - dy:ye - dy, xs - dx:xe - dx]
    out["person_parts"] = torch.cat([parts, moved[None]])
    out["person_scores"] = torch.cat([out["person_scores"], torch.tensor([score], dtype=out["person_scores"].dtype,
                                                                          device=out["person_scores"].device)])
    if "part_scores" in out:
        row = torch.full_like(out["part_scores"][:1], score)
        out["part_scores"] = torch.cat([out["part_scores"], row])
    return repaint_semantic(out)


def _two(pred: dict, rng: np.random.Generator) -> tuple[int, int] | None:
    num = pred["person_parts"].shape[0]
    if num < 2:
        return None
    a, b = rng.choice(num, size=2, replace=False)
    return int(a), int(b)


def _one(pred: dict, rng: np.random.Generator) -> int | None:
    num = pred["person_parts"].shape[0]
    return int(rng.integers(num)) if num else None


def _swap(pred, target, rng):
    pair = _two(pred, rng)
    return swap_identities(pred, *pair) if pair else _copy(pred)


def _erode(pred, target, rng):
    k = _one(pred, rng)
    return erode_part(pred, k) if k is not None else _copy(pred)


def _merge(pred, target, rng):
    pair = _two(pred, rng)
    return merge_persons(pred, *pair) if pair else _copy(pred)


def _drop(pred, target, rng):
    k = _one(pred, rng)
    return drop_person(pred, k) if k is not None else _copy(pred)


def _false_positive(pred, target, rng):
    k = _one(pred, rng)
    top = float(pred["person_scores"].max()) if pred["person_scores"].numel() else 0.5
    return add_false_positive(pred, k, score=min(top + 0.01, 1.0)) if k is not None else _copy(pred)


#: name -> ``fn(pred, target, rng) -> pred``: one corruption with its people drawn from ``rng``. The false positive
#: is scored above every real person, so it ranks first.
CORRUPTIONS: dict[str, Callable[[dict, dict, np.random.Generator], dict]] = {
    "swap two people": _swap,
    "erode a part": _erode,
    "merge two people": _merge,
    "drop a person": _drop,
    "add a false positive": _false_positive,
}
