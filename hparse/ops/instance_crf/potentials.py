"""The Instance CRF's unary potentials (Li, Arnab & Torr, BMVC 2017, §3.2.1-3.2.2, Eq. 1-3) and its label layout.

- Labels: the background (0, 0) and (detection i, part j) for i = 1..D, j = 1..P; channel
  ``1 + (i - 1)·P + (j - 1)`` holds label (i, j) (:func:`crf_channel`).
- Eq. 2 (box term): ``ψBox_k(i, j) = s_i Q_k(j)`` if pixel k lies in box i (:func:`boxes_to_masks`), else 0;
  ``ψBox_k(0, 0) = 0``.
- Eq. 3 (global term): ``ψGlobal_k(i, j) = Q_k(j)`` and ``ψGlobal_k(0, 0) = Q_k(0)``.
- Eq. 1: ``U_k(l) = -ln(w_box ψBox_k(l) + w_global ψGlobal_k(l) + ε)`` (:func:`instance_unary`).

*Pixel in box.* Boxes are xyxy in continuous pixel coordinates (pixel (x, y) covers [x, x+1) × [y, y+1)); pixel k is
in box i when its centre (x + 0.5, y + 0.5) lies in the closed box. Boxes from ``masks_to_boxes`` (inclusive max
coordinates) need +1 on x2, y2.

*Box-term-only ablation* (``global_term=False``; Tab. 1 "box term only", the model of Arnab & Torr): the person
labels lose their global term but the background keeps ``w_global Q_k(0)`` — with ``ψBox(0, 0) = 0`` it would
otherwise have no potential at all; the released box layer gives the background its own channel in the same way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .options import WeightLike, check_weight

__all__ = ["squash_detection_scores", "crf_channel", "boxes_to_masks", "check_inputs", "unary_potential",
           "instance_unary"]

# Q must sum to one over its channels within this tolerance.
_SUM_TOL = 1e-3


def squash_detection_scores(scores: Tensor) -> Tensor:
    """The released box layer's score transform ``exp(s) / (exp(s) + exp(1 - s)) = sigmoid(2s - 1)``.

    0.5 stays 0.5 and 1.0 becomes 0.73, which keeps confident and unsure detections closer together. Apply it
    (or not) before :func:`instance_crf`; the op itself uses the scores as given (Eq. 2).
    """
    return torch.sigmoid(2.0 * scores - 1.0)


def crf_channel(detection: int, part: int, num_parts: int) -> int:
    """Output channel of label (detection i, part j), both 1-based; (0, 0) is channel 0."""
    if detection == 0 and part == 0:
        return 0
    if detection < 1 or not 1 <= part <= num_parts:
        raise ValueError(f"label ({detection}, {part}) is not (0, 0) or (i >= 1, 1 <= j <= {num_parts})")
    return 1 + (detection - 1) * num_parts + (part - 1)


def boxes_to_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """(D, H, W) bool: pixel centres (x + 0.5, y + 0.5) inside each closed xyxy box (the set B_i of §3.2)."""
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    in_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] <= boxes[:, 2:3])  # (D, W)
    in_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] <= boxes[:, 3:4])  # (D, H)
    return in_y[:, :, None] & in_x[:, None, :]


# --------------------------------------------------------------------------------------------------------------
# Input checks: say what is wrong and where
# --------------------------------------------------------------------------------------------------------------


def _first_bad(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in torch.nonzero(mask)[0])


def check_inputs(Q: Tensor, boxes: Tensor, scores: Tensor, image: Tensor, where: str) -> None:
    if Q.dim() != 3 or Q.shape[0] < 2:
        raise ValueError(f"{where}: Q must be (P+1, H, W) with P >= 1 part classes, got shape {tuple(Q.shape)}")
    if not Q.is_floating_point():
        raise TypeError(f"{where}: Q must be a floating-point tensor of probabilities, got {Q.dtype}")
    _, height, width = Q.shape
    q = Q.detach()
    if not torch.isfinite(q).all():
        raise ValueError(f"{where}: Q has NaN/inf at (channel, y, x) = {_first_bad(~torch.isfinite(q))}")
    if (q < 0).any():
        raise ValueError(f"{where}: Q has negative probabilities, e.g. at (channel, y, x) = {_first_bad(q < 0)}")
    sums = q.sum(0)
    off = (sums - 1).abs() > _SUM_TOL
    if off.any():
        y, x = _first_bad(off)
        raise ValueError(
            f"{where}: Q must sum to 1 over its {Q.shape[0]} channels (softmax of the part logits), but the sum is "
            f"{float(sums[y, x]):.4g} at pixel (y, x) = ({y}, {x}); sums range {float(sums.min()):.4g}.."
            f"{float(sums.max()):.4g}"
        )
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{where}: image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
    if image.device != Q.device:
        raise ValueError(f"{where}: image is on {image.device} but Q is on {Q.device}; move both to one device")
    if tuple(image.shape[1:]) != (height, width):
        raise ValueError(
            f"{where}: image is {image.shape[1]}x{image.shape[2]} (HxW) but Q is {height}x{width}; they must match"
        )
    img = image.detach()
    if not torch.isfinite(img).all():
        raise ValueError(f"{where}: image has NaN/inf at (channel, y, x) = {_first_bad(~torch.isfinite(img))}")
    if img.min() < -1e-3 or img.max() > 1 + 1e-3:
        raise ValueError(
            f"{where}: image must be RGB in [0, 1], got values in [{float(img.min()):.4g}, {float(img.max()):.4g}]"
            " (divide 8-bit images by 255)"
        )
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be (D, 4) xyxy, got shape {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{where}: scores must be (D,) with D = {boxes.shape[0]} (one per box), got shape {tuple(scores.shape)}"
        )
    b = boxes.detach()
    s = scores.detach()
    for i in range(b.shape[0]):  # D is small; a loop gives each bad box its own message.
        x1, y1, x2, y2 = (float(v) for v in b[i])
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            raise ValueError(f"{where}: boxes[{i}] = {[x1, y1, x2, y2]} is not finite")
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{where}: boxes[{i}] = {[x1, y1, x2, y2]} is degenerate (needs x1 < x2 and y1 < y2)")
        if x1 < -1e-3 or y1 < -1e-3 or x2 > width + 1e-3 or y2 > height + 1e-3:
            raise ValueError(
                f"{where}: boxes[{i}] = {[x1, y1, x2, y2]} extends outside the {width}x{height} (WxH) image; clip it "
                "with torchvision.ops.clip_boxes_to_image first"
            )
        if not math.isfinite(float(s[i])) or not 0.0 <= float(s[i]) <= 1.0:
            raise ValueError(
                f"{where}: scores[{i}] = {float(s[i])} must be a detection score in [0, 1] (Eq. 2); squash raw logits "
                "with torch.sigmoid or squash_detection_scores"
            )


def unary_potential(
    Q: Tensor,
    boxes: Tensor,
    scores: Tensor,
    w_box: WeightLike,
    w_global: WeightLike,
    box_term: bool,
    global_term: bool,
) -> Tensor:
    """``w_box ψBox + w_global ψGlobal``, shape (1 + D·P, H, W) (before ``+ ε`` and the log)."""
    _, height, width = Q.shape
    parts = Q[1:]  # (P, H, W)
    num_det = boxes.shape[0]
    # Per (detection, pixel) multiplier of Q_k(j): w_box s_i [k in B_i] + w_global  (Eq. 2 + Eq. 3).
    factor = Q.new_zeros(num_det, height, width)
    if box_term:
        inside = boxes_to_masks(boxes, height, width).to(Q.dtype)
        factor = factor + w_box * scores[:, None, None] * inside
    if global_term:
        factor = factor + w_global
    person = factor[:, None] * parts[None]  # (D, P, H, W)
    # The background (0, 0) has ψBox = 0 and ψGlobal = Q_k(0); it keeps that term in the box-only ablation.
    background = w_global * Q[:1]
    return torch.cat([background, person.reshape(num_det * parts.shape[0], height, width)], dim=0)


def instance_unary(
    Q: Tensor,
    boxes: Tensor,
    scores: Tensor,
    *,
    w_box: WeightLike = 1.0,
    w_global: WeightLike = 1.0,
    eps: float = 1e-6,
    box_term: bool = True,
    global_term: bool = True,
    image: Tensor | None = None,
    check: bool = True,
) -> Tensor:
    """Unary energies ``U_k(l) = -ln(w_box ψBox_k(l) + w_global ψGlobal_k(l) + ε)`` (Eq. 1–3).

    Args:
        Q: (P+1, H, W) category-level probabilities, channel 0 background.
        boxes: (D, 4) xyxy person boxes in pixels, inside the image.
        scores: (D,) detection scores s_i in [0, 1].
        w_box, w_global: scalar weights of the box (Eq. 2) and global (Eq. 3) terms.
        eps: ε of Eq. 1 (keeps the log finite where both terms vanish).
        box_term, global_term: switch the two terms (ablations of Tab. 1).
        image: only used to check sizes when given.
        check: validate the inputs (one host sync).

    Returns:
        (1 + D·P, H, W) energies; channel ``crf_channel(i, j, P)`` is label (i, j).
    """
    if check:
        img = image if image is not None else Q.new_full((3, Q.shape[-2], Q.shape[-1]), 0.5)
        check_inputs(Q, boxes, scores, img, "instance_unary")
        check_weight("w_box", w_box, True)
        check_weight("w_global", w_global, True)
    boxes = boxes.to(device=Q.device, dtype=Q.dtype)
    scores = scores.to(device=Q.device, dtype=Q.dtype)
    return -torch.log(unary_potential(Q, boxes, scores, w_box, w_global, box_term, global_term) + eps)
