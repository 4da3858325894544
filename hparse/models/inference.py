"""From per-RoI parsing probabilities to the prediction contract: paste into the image, then paint the semantic map.

Paste (official Parsing R-CNN code, ``expand_boxes`` / ``parsing_results``; torchvision's ``paste_masks_in_image``
does the same for binary masks): the ``M x M`` probability map is padded by one cell on each side and the box is
expanded by ``(M + 2) / M`` about its centre, so the padded map covers the expanded box exactly and the person's edge
fades into the padding instead of being cut at the box border. The padding is background with probability 1 (the
official code pads with zeros for every class, whose argmax is background too). The probabilities are resampled
bilinearly to the image pixels under the box and the per-pixel argmax is the person's part map. Probabilities, not
labels, are interpolated, so no part id is ever blended.

Semantic map (for mIoU, Parsing R-CNN Sec. 4.2 following the panoptic protocol): persons whose score is at least
``score_threshold`` (0.3 in the official code) are painted in ascending score order, so where people overlap the
highest-scoring person's part label wins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["expand_boxes", "paste_part_probs", "paint_semantic", "empty_prediction"]


def expand_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale (N, 4) xyxy boxes about their centres by ``scale``."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * scale
    return torch.cat((centre - half, centre + half), dim=1)


def paste_part_probs(probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Paste per-RoI part probabilities into the image and take the argmax.

    Args:
        probs: (N, C, M, M) softmax probabilities of each detection's RoI (class 0 = background).
        boxes: (N, 4) xyxy detection boxes in the pixel coordinates of the output image.
        image_size: (H, W) of the output image.

    Returns:
        uint8 (N, H, W) part map of each detection (0 = not this person). Needs ``C <= 256``.
    """
    height, width = image_size
    num, classes, size, _ = probs.shape
    out = torch.zeros(num, height, width, dtype=torch.uint8, device=probs.device)
    if num == 0:
        return out
    if classes > 256:
        raise ValueError(f"paste_part_probs stores labels as uint8 and supports at most 256 classes, got {classes}")
    padded = F.pad(probs.float(), (1, 1, 1, 1))  # (N, C, M + 2, M + 2)
    padded[:, 0, 0, :] = padded[:, 0, -1, :] = padded[:, 0, :, 0] = padded[:, 0, :, -1] = 1.0  # background rim
    big = expand_boxes(boxes.float(), (size + 2) / size)
    # One detection at a time, each over only the pixels under its own box (a loop over people, as torchvision's
    # paste_masks_in_image does; the work inside is one grid_sample over that box).
    for n, (x1, y1, x2, y2) in enumerate(big.tolist()):  # one device-to-host copy for all boxes
        c0, c1 = max(math.floor(x1), 0), min(math.ceil(x2), width)
        r0, r1 = max(math.floor(y1), 0), min(math.ceil(y2), height)
        if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
            continue
        # Pixel centres of the covered region in the padded map's normalised coordinates (align_corners=False).
        gx = (torch.arange(c0, c1, device=probs.device, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
        gy = (torch.arange(r0, r1, device=probs.device, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, h, w, 2) as (x, y)
        sampled = F.grid_sample(padded[n : n + 1], grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[n, r0:r1, c0:c1] = sampled[0].argmax(0).to(torch.uint8)
    return out


def paint_semantic(person_parts: torch.Tensor, scores: torch.Tensor, score_threshold: float = 0.3) -> torch.Tensor:
    """Semantic map from per-person part maps: higher-scoring persons are painted over lower-scoring ones.

    The one painting rule of hparse, shared with the metrics (:func:`hparse.metrics.painting.paint_persons`: ascending
    score order, each person's nonzero pixels overwriting; of two persons with equal scores the one listed later
    wins), so the map a model returns is the map the evaluator would paint from its persons.

    Args:
        person_parts: (N, H, W) part map of each person (0 = not this person).
        scores: (N,) person scores.
        score_threshold: persons below it are not painted (official code: 0.3).

    Returns:
        int64 (H, W) part labels, 0 where no kept person has a part.
    """
    from ..metrics.painting import paint_persons, painted_maps, person_pixels

    semantic, _ = painted_maps(paint_persons(person_pixels(person_parts), scores, score_threshold))
    return semantic


def empty_prediction(image_size: tuple[int, int], num_classes: int | None = None,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A prediction-contract dict with no person (correct dtypes and shapes)."""
    height, width = image_size
    pred = {
        "semantic": torch.zeros(height, width, dtype=torch.int64, device=device),
        "person_parts": torch.zeros(0, height, width, dtype=torch.uint8, device=device),
        "person_scores": torch.zeros(0, dtype=torch.float32, device=device),
        "person_boxes": torch.zeros(0, 4, dtype=torch.float32, device=device),
    }
    if num_classes is not None:
        pred["part_scores"] = torch.zeros(0, num_classes, dtype=torch.float32, device=device)
    return pred
