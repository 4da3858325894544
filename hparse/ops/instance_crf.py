"""The Instance CRF of Li, Arnab & Torr, "Holistic, Instance-level Human Parsing" (BMVC 2017), §3.2–3.4.

A category-level part segmentation ``Q`` (P + 1 channels, channel 0 background) and D person detections are turned
into an instance-level part segmentation with 1 + D·P labels: the background label (0, 0) and (detection i, part j)
for i = 1..D, j = 1..P. Channel ``1 + (i - 1)·P + (j - 1)`` holds label (i, j) (see :func:`crf_channel`).

The module reads like the paper:

- §3.2, Eq. 1: energy ``E(v) = -Σ_k ln[w_box ψBox_k(v_k) + w_global ψGlobal_k(v_k) + ε] + Σ_{k<m} ψPairwise``.
- §3.2.1, Eq. 2 (:func:`instance_unary`): ``ψBox_k(i, j) = s_i Q_k(j)`` if pixel k lies in box i, else 0;
  ``ψBox_k(0, 0) = 0``.
- §3.2.2, Eq. 3: ``ψGlobal_k(i, j) = Q_k(j)`` and ``ψGlobal_k(0, 0) = Q_k(0)`` — parts outside a (truncated)
  box can still be claimed by its person.
- §3.2.3: dense Gaussian pairwise term [Krähenbühl & Koltun], Potts compatibility, one scalar weight per kernel
  shared by all labels (the label set changes with D, so no per-label parameter can exist).
- Mean-field inference unrolled as an RNN [Zheng et al.], so gradients reach Q, the scores and the weights
  (:func:`instance_crf`, :class:`InstanceCRF`).
- §3.3, Eq. 4 (:func:`match_segments`, :func:`hungarian_matched_loss`): the permutation-invariant loss.
- §3.4 (:func:`crf_instances`, :func:`crf_semantic`, :func:`crf_to_person_parts`, :func:`crf_prediction`):
  human instances and semantic parts from the same output.

Choices where the paper is vague (written down once here):

- *Pixel in box.* Boxes are xyxy in continuous pixel coordinates (pixel (x, y) covers [x, x+1) × [y, y+1)); pixel
  k is in box i when its centre (x + 0.5, y + 0.5) lies in the closed box. Boxes from ``masks_to_boxes`` (inclusive
  max coordinates) need +1 on x2, y2.
- *Pairwise kernels.* Appearance ``exp(-|p_k - p_m|²/2θα² - |I_k - I_m|²/2θβ²)`` and smoothness
  ``exp(-|p_k - p_m|²/2θγ²)`` with positions in pixels and colours in 0–255 units. Potts compatibility turns
  the mean-field update into ``Q_k(l) ∝ exp(-U_k(l) + Σ_{m≠k} [w_app k_app + w_smooth k_smooth](k, m) Q_m(l))``
  (the label-independent constant of the Potts penalty cancels in the softmax).
- *Normalisation* (default ``normalize=True``, the released layers' form): each kernel's message is divided by
  the pixel's kernel mass ``Σ_{m≠k} k(k, m)``, i.e. it is a Gaussian-weighted *average* of the neighbours' Q, so
  its size does not depend on how many neighbours a pixel has. The released lattice filters also count the pixel
  itself in both sums; we keep the m ≠ k of the message in both. ``normalize=False`` is the plain sum above.
- *Defaults.* θα = 49, θβ = 5, θγ = 3 and the kernel weights 4 (appearance) and 3 (smoothness) are those of the
  authors' released Instance-CRF model (DIN, CVPR 2017; ``din.prototxt``), which multiplies normalised kernels.
  For ``normalize=False`` those weights are divided by the mass a pixel sees inside a uniform region, ``2πθ² - 1``
  (:func:`default_pairwise_weights`), so that both forms send the same message there, and only there: on small
  images the appearance kernel's actual mass is far below 2πθα² (see the end of this docstring), so the
  unnormalised appearance message shrinks to a few percent of the released one. ``w_box = w_global = 1`` are the
  released initial values of the two unary weights. Scores enter as given; :func:`squash_detection_scores` is the
  released layer's ``sigmoid(2s - 1)``.
- *Box-term-only ablation* (``global_term=False``; Tab. 1 "box term only", the model of Arnab & Torr): the person
  labels lose their global term but the background keeps ``w_global Q_k(0)`` — with ``ψBox(0, 0) = 0`` it would
  otherwise have no potential at all; the released box layer gives the background its own channel in the same way.

Two ways to compute the pairwise messages (``method``):

- ``"exact"``: two dense N×N kernels (N = H·W), built once per image and reused by every iteration; the reference,
  refused above ``EXACT_MAX_PIXELS`` pixels.
- ``"fast"``: the smoothness kernel is a separable Gaussian (two 1-D depthwise convolutions truncated at 4θγ;
  only the truncation differs from exact). The appearance kernel keeps every pixel as a query but summarises the
  other pixels: the image is cut into ``app_stride``-sized cells, each cell is split in two along its main colour
  axis (so a cell on an edge keeps both sides), and each half becomes one Gaussian cloud (pixel count n_c, mean
  μ_c and covariance C_c of the features f = (x/θα, y/θα, RGB/θβ)). The kernel from pixel k to a cloud is its
  exact Gaussian expectation, ``n_c det(I + C_c)^(-1/2) exp(-(f_k - μ_c)ᵀ (I + C_c)⁻¹ (f_k - μ_c) / 2)``, which
  is a dot product of a 21-d query of f_k (its squares, cross products, itself, 1) with a 21-d key of the cloud.
  So all messages are one ``scaled_dot_product_attention`` call over the clouds (values: the clouds' mean Q) plus
  a zero "sink" key whose extra value channel returns the normaliser ``1 / (1 + Z_k)``: no N×N matrix is ever
  stored and GPUs run it with flash / memory-efficient kernels. The pixel's own share of its cloud is removed
  (the sum runs over m ≠ k). The backward pass is the same sum with pixels and clouds swapped, one more
  attention call (an attention backward would also compute the unused query/key gradients, at several times the
  cost on CPUs). ``app_stride=1`` is exact; by default the stride is the smallest whose clouds fit in
  ``app_max_keys`` = 2048 keys (stride 2 at 64×64, 16 at 512×512). Cost: N × keys × (D·P) per iteration.
  Measured against ``"exact"`` by ``hparse/benchmarks/instance_crf.py`` (a 64×64 SynthCrowd val image, D = 3,
  P = 19, 5 iterations, float32, CPU; ``results/cpu/bench/instance_crf.json``): with normalised kernels (the
  default) max |ΔQ| is 7e-5 at stride 1 (the smoothness truncation), but 0.15, 0.27 and 0.43 at strides 2, 4
  and 8 on a few pixels (mean |ΔQ| at most 4e-4; the arg-max label differs at 0.17%, 0.49% and 0.90% of the
  pixels); with ``normalize=False``: 8e-5, 3.8e-4, 9.4e-4 and 5.1e-3, and no arg-max change up to stride 4.
  Where it errs: pixels whose colour has few matches, as their few neighbours share a cloud with unlike pixels;
  normalised, such a pixel's message is an average over very few neighbours, so it is far more sensitive there
  than the plain sum. Appearance features are large (colour / θβ spans ±25), so the appearance path always runs
  in float32 or wider.
  *Error relative to the appearance term's own effect.* On the same image and inputs (exact path, 5
  iterations), switching the appearance term off (``w_app=0``) changes Q by max 0.91 and mean 1.3e-2 and flips
  4.5% of the arg-max labels with normalised kernels; the default-stride fast error is 17% (max), 0.6% (mean)
  and 0.17% vs 4.5% flipped labels of that: the fast path keeps the appearance term's effect on average, but a
  few pixels get a noticeably wrong message. Unnormalised, the appearance term does almost nothing there (max
  0.050, 0.10% of labels flipped), which is why the plain sum looks so accurate.
  *Why the plain sum is not the default.* Its weight ``w_app = 4/(2πθα² - 1)`` (≈ 2.7e-4) assumes a pixel whose
  appearance neighbourhood is all of its colour (within θβ) and reaches ~3θα (≈ 150 px) in every direction inside
  the image, so that ``Σ_{m≠k} k_app(k, m) = 2πθα² - 1`` ≈ 15085. On the 64×64 image above that sum (from the
  exact kernel) has median 254 (10th-90th percentile 7-618; even a flat 64×64 image reaches only 2490-3570), so
  the unnormalised appearance message is ~1.7% of the released model's at the median pixel, while the smoothness
  kernel (θγ = 3) gets its full mass 2πθγ² - 1 ≈ 55.5 away from the border: the pairwise term degenerates into
  pure smoothing. The normalised form gives every pixel the released weights whatever its neighbourhood
  (``tests/test_instance_crf.py::test_normalised_kernels_do_not_depend_on_kernel_mass``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .ohem import ohem_reduce

__all__ = [
    "THETA_ALPHA",
    "THETA_BETA",
    "THETA_GAMMA",
    "EXACT_MAX_PIXELS",
    "default_pairwise_weights",
    "squash_detection_scores",
    "crf_channel",
    "boxes_to_masks",
    "instance_unary",
    "instance_crf",
    "InstanceCRF",
    "crf_labels",
    "crf_instances",
    "crf_semantic",
    "crf_to_person_parts",
    "crf_prediction",
    "SegmentMatching",
    "match_segments",
    "hungarian_matched_loss",
]

# Kernel widths of the authors' released Instance-CRF (DIN, din.prototxt): bilateral xy / rgb, spatial xy.
THETA_ALPHA = 49.0
THETA_BETA = 5.0
THETA_GAMMA = 3.0
# Released kernel weights; they multiply *normalised* kernels (see default_pairwise_weights).
_W_APP_NORMALISED = 4.0
_W_SMOOTH_NORMALISED = 3.0
# method="exact" stores two N x N kernels: 9216 pixels (96 x 96) is 340 MB each in float32.
EXACT_MAX_PIXELS = 96 * 96
# Q must sum to one over its channels within this tolerance.
_SUM_TOL = 1e-3

WeightLike = float | Tensor


# --------------------------------------------------------------------------------------------------------------
# Small helpers: defaults, score squashing, label layout
# --------------------------------------------------------------------------------------------------------------


def default_pairwise_weights(
    normalize: bool, theta_alpha: float = THETA_ALPHA, theta_gamma: float = THETA_GAMMA
) -> tuple[float, float]:
    """Default ``(w_app, w_smooth)``: the released weights 4 and 3, rescaled for unnormalised kernels.

    The released model multiplies kernels normalised to sum to one. For ``normalize=False`` they are divided by
    ``2πθ² - 1``, the mass of the kernel (self excluded) around a pixel inside a uniform region, so both forms
    send the same message there.
    """
    if normalize:
        return _W_APP_NORMALISED, _W_SMOOTH_NORMALISED
    return (
        _W_APP_NORMALISED / (2 * math.pi * theta_alpha**2 - 1),
        _W_SMOOTH_NORMALISED / (2 * math.pi * theta_gamma**2 - 1),
    )


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


def _check_inputs(Q: Tensor, boxes: Tensor, scores: Tensor, image: Tensor, where: str) -> None:
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


def _check_weight(name: str, value: WeightLike, nonnegative: bool) -> None:
    v = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if v.numel() != 1:
        raise ValueError(
            f"instance_crf: {name} must be a scalar (shared by all labels, §3.2), got shape {tuple(v.shape)}"
        )
    if not torch.isfinite(v).all():
        raise ValueError(f"instance_crf: {name} = {float(v)} is not finite")
    if nonnegative and float(v) < 0:
        raise ValueError(f"instance_crf: {name} = {float(v)} must be >= 0 (it weights a potential inside a log, Eq. 1)")


# --------------------------------------------------------------------------------------------------------------
# §3.2.1–3.2.2: unary potentials
# --------------------------------------------------------------------------------------------------------------


def _unary_potential(
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
        _check_inputs(Q, boxes, scores, img, "instance_unary")
        _check_weight("w_box", w_box, True)
        _check_weight("w_global", w_global, True)
    boxes = boxes.to(device=Q.device, dtype=Q.dtype)
    scores = scores.to(device=Q.device, dtype=Q.dtype)
    return -torch.log(_unary_potential(Q, boxes, scores, w_box, w_global, box_term, global_term) + eps)


# --------------------------------------------------------------------------------------------------------------
# §3.2.3: dense Gaussian pairwise messages, exact and fast
# --------------------------------------------------------------------------------------------------------------


class _ExactMessages:
    """Both kernels as dense N×N matrices (self-pairs removed), built once per image; the reference."""

    def __init__(self, image: Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float, normalize: bool,
                 dtype: torch.dtype):
        _, height, width = image.shape
        n = height * width
        if n > EXACT_MAX_PIXELS:
            raise ValueError(
                f"instance_crf(method='exact') stores two N x N kernels; N = H*W = {height}*{width} = {n} exceeds "
                f"EXACT_MAX_PIXELS = {EXACT_MAX_PIXELS}. Use method='fast' or a smaller image."
            )
        dev = image.device
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dtype),
                                torch.arange(width, device=dev, dtype=dtype), indexing="ij")
        pos = torch.stack([xs.flatten(), ys.flatten()], 1)  # (N, 2) pixels
        rgb = (image.to(dtype) * 255.0).reshape(3, n).T  # (N, 3) in 0..255
        # Direct (not matmul-based) distances: the reference must not suffer cancellation.
        mode = "donot_use_mm_for_euclid_dist"
        d_pos = torch.cdist(pos, pos, compute_mode=mode).square_()
        d_rgb = torch.cdist(rgb, rgb, compute_mode=mode).square_()
        self.smooth = torch.exp(d_pos / (-2 * theta_gamma**2))
        self.app = torch.exp(d_pos / (-2 * theta_alpha**2) - d_rgb / (2 * theta_beta**2))
        del d_pos, d_rgb
        self.smooth.fill_diagonal_(0.0)  # Σ over m ≠ k
        self.app.fill_diagonal_(0.0)
        if normalize:
            tiny = torch.finfo(dtype).tiny
            self.smooth /= self.smooth.sum(1, keepdim=True).clamp_min(tiny)
            self.app /= self.app.sum(1, keepdim=True).clamp_min(tiny)

    def __call__(self, Q: Tensor) -> tuple[Tensor, Tensor]:
        labels, height, width = Q.shape
        flat = Q.reshape(labels, -1)
        # message_k = Σ_m K[k, m] Q_m  ->  Q @ K^T  (the kernels are constants: autograd keeps one reference).
        app = (flat @ self.app.T).reshape(labels, height, width)
        smooth = (flat @ self.smooth.T).reshape(labels, height, width)
        return app, smooth


def _auto_stride(height: int, width: int, max_keys: int) -> int:
    """Smallest grid stride whose appearance keys (1 per pixel at stride 1, 2 per cell above) fit ``max_keys``."""
    if height * width <= max_keys:
        return 1
    stride = 2
    while 2 * math.ceil(height / stride) * math.ceil(width / stride) > max_keys:
        stride += 1
    return stride


# Upper-triangle index pairs of the 5 appearance features, for the quadratic form in the attention logits.
_TRIU = torch.triu_indices(5, 5, offset=1)


def _kernel_sum(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``exp(query @ key.T) @ value`` without the (rows, keys) matrix: one ``scaled_dot_product_attention`` call.

    Attention returns ``softmax(q·k) @ v``, a sum divided by its normaliser. A "sink" key of logit 0 (the zero
    vector) with its own value channel returns ``1 / (1 + Σ_j exp(q·k_j))``, which undoes the division.
    Attention kernels (flash, memory-efficient) want equal q/k/v head dims, a multiple of 8 and at most 256, so
    the value channels are split into equal heads and q, k are zero-padded to the head size (zeros do not change
    q·k); unequal head dims would fall back to a path that stores the score matrix.

    Args:
        query: (R, d) rows; key: (C, d) columns; value: (C, V).

    Returns:
        (R, V) ``Σ_j exp(query_i · key_j) value_j``.
    """
    channels = value.shape[1]
    value = torch.cat([
        torch.cat([value, value.new_zeros(value.shape[0], 1)], 1),
        torch.cat([value.new_zeros(1, channels), value.new_ones(1, 1)], 1),
    ], 0)  # (C + 1, V + 1), last row: the sink
    key = torch.cat([key, key.new_zeros(1, key.shape[1])], 0)
    heads = math.ceil((channels + 1) / 256)
    size = max(8 * math.ceil(query.shape[1] / 8), 8 * math.ceil((channels + 1) / (8 * heads)))
    value = F.pad(value, (0, heads * size - value.shape[1]))
    value = value.reshape(-1, heads, size).transpose(0, 1)[None]  # (1, heads, C + 1, size)
    q = F.pad(query, (0, size - query.shape[1]))[None, None].expand(1, heads, -1, -1)
    k = F.pad(key, (0, size - key.shape[1]))[None, None].expand(1, heads, -1, -1)
    out = F.scaled_dot_product_attention(q, k, value, scale=1.0)[0]  # (heads, R, size)
    out = out.transpose(0, 1).reshape(out.shape[1], heads * size)
    return out[:, :channels] / out[:, channels : channels + 1]


class _KernelSum(torch.autograd.Function):
    """``exp(query @ key.T) @ value`` with the gradient for ``value`` only (query and key are image constants).

    The backward pass is the same kind of sum with rows and columns swapped, ``exp(key @ query.T) @ grad``, so it
    costs one more forward call instead of an attention backward (which also computes the unused q/k gradients).
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(query, key)
        return _kernel_sum(query, key, value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        query, key = ctx.saved_tensors
        return None, None, _kernel_sum(key, query, grad.contiguous())


class _FastMessages:
    """Separable-Gaussian smoothness messages and grid-attention appearance messages (see the module docstring)."""

    def __init__(self, image: Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float, normalize: bool,
                 dtype: torch.dtype, app_stride: int | None, app_max_keys: int, smooth_truncate: float = 4.0):
        _, height, width = image.shape
        dev = image.device
        self.height, self.width, self.normalize, self.dtype = height, width, normalize, dtype

        # Smoothness: exp(-(dx² + dy²)/2θγ²) = g(dx) g(dy) with g(0) = 1, truncated at smooth_truncate·θγ.
        radius = max(1, math.ceil(smooth_truncate * theta_gamma))
        taps = torch.arange(-radius, radius + 1, device=dev, dtype=dtype)
        self.gauss = torch.exp(taps.square() / (-2 * theta_gamma**2))
        self.radius = radius
        if normalize:
            ones = torch.ones(1, height, width, device=dev, dtype=dtype)
            self.smooth_norm = self._smooth_incl(ones) - 1.0  # Σ_{m≠k} k_smooth(k, m), (1, H, W)

        # Appearance: pixel features f = (x/θα, y/θα, RGB·255/θβ), so that k_app = exp(-|f_k - f_m|²/2).
        stride = app_stride if app_stride is not None else _auto_stride(height, width, app_max_keys)
        if stride < 1:
            raise ValueError(f"instance_crf: app_stride must be >= 1, got {stride}")
        self.stride = stride
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dtype),
                                torch.arange(width, device=dev, dtype=dtype), indexing="ij")
        f = torch.cat([xs[None] / theta_alpha, ys[None] / theta_alpha, image.to(dtype) * (255.0 / theta_beta)])
        f = f.reshape(5, -1).T  # (N, 5)
        f = f - f.mean(0, keepdim=True)  # centring is exact and keeps the logits small
        grid_w = math.ceil(width / stride)
        cell = ((ys // stride) * grid_w + (xs // stride)).long().flatten()  # (N,)
        num_cells = math.ceil(height / stride) * grid_w
        if stride == 1:
            cluster, num_keys = cell, num_cells
        else:
            # Split every cell in two along its main colour axis, so that a cell on an edge keeps both sides.
            count = torch.bincount(cell, minlength=num_cells).to(dtype)[:, None]
            centred = f[:, 2:] - (torch.zeros(num_cells, 3, device=dev, dtype=dtype).index_add_(0, cell, f[:, 2:])
                                  / count)[cell]
            cov = torch.zeros(num_cells, 3, 3, device=dev, dtype=dtype).index_add_(
                0, cell, centred[:, :, None] * centred[:, None, :])
            axis = torch.linalg.eigh(cov).eigenvectors[:, :, -1]  # (cells, 3) largest-variance direction
            side = ((centred * axis[cell]).sum(1) > 0).long()
            cluster, num_keys = 2 * cell + side, 2 * num_cells
        # Each cluster c is summarised by its pixel count n_c, mean μ_c and covariance C_c of f. For m ~ N(μ, C),
        # E[exp(-|f - m|²/2)] = det(I + C)^(-1/2) exp(-(f - μ)ᵀ (I + C)⁻¹ (f - μ) / 2): the kernel to a Gaussian
        # cloud of pixels. Exact at stride 1 (n = 1, C = 0).
        count = torch.bincount(cluster, minlength=num_keys).to(dtype)
        safe = count.clamp_min(1)[:, None]
        mean = torch.zeros(num_keys, 5, device=dev, dtype=dtype).index_add_(0, cluster, f) / safe
        d = f - mean[cluster]
        cov = torch.zeros(num_keys, 25, device=dev, dtype=dtype).index_add_(
            0, cluster, (d[:, :, None] * d[:, None, :]).reshape(-1, 25)).reshape(-1, 5, 5) / safe[:, :, None]
        spread = torch.eye(5, device=dev, dtype=dtype) + cov
        chol = torch.linalg.cholesky(spread)
        prec = torch.cholesky_inverse(chol)  # (I + C)⁻¹
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        # The logit -(f-μ)ᵀA(f-μ)/2 - logdet/2 + ln n as a dot product q_k · k_c:
        # q = [f_a², f_a f_b (a<b), f, 1];  k = [-A_aa/2, -A_ab, Aμ, -μᵀAμ/2 - logdet/2 + ln n].
        a_mu = (prec @ mean[:, :, None])[:, :, 0]
        const = -0.5 * (mean * a_mu).sum(1) - 0.5 * logdet + torch.log(count.clamp_min(1))
        const = torch.where(count > 0, const, torch.full_like(const, -1e4))  # empty cluster: no weight
        i, j = _TRIU[0].to(dev), _TRIU[1].to(dev)
        key = torch.cat([-0.5 * torch.diagonal(prec, dim1=1, dim2=2), -prec[:, i, j], a_mu, const[:, None]], 1)
        query = torch.cat([f.square(), f[:, i] * f[:, j], f, torch.ones_like(f[:, :1])], 1)  # (N, 21)
        self.query = query  # (N, 21)
        self.key = key  # (keys, 21)
        self.cluster, self.num_keys, self.count = cluster, num_keys, count
        # The pixel's own share in its cluster, E_self = exp(logit(k, c(k))) / n_c, is removed from the message
        # (the sum runs over m ≠ k); it equals 1 at stride 1.
        dk = f - mean[cluster]
        quad = (dk[:, :, None] * prec[cluster] * dk[:, None, :]).sum((1, 2))
        self.self_weight = torch.exp(-0.5 * quad - 0.5 * logdet[cluster]).reshape(1, height, width)

    # -- smoothness --------------------------------------------------------------------------------------------
    def _smooth_incl(self, Q: Tensor) -> Tensor:
        """Σ_m k_smooth(k, m) Q_m including m = k, zero outside the image; two 1-D depthwise convolutions."""
        labels = Q.shape[0]
        size = 2 * self.radius + 1
        wx = self.gauss.view(1, 1, 1, size).expand(labels, 1, 1, size)
        wy = self.gauss.view(1, 1, size, 1).expand(labels, 1, size, 1)
        out = F.conv2d(Q[None], wx, padding=(0, self.radius), groups=labels)
        out = F.conv2d(out, wy, padding=(self.radius, 0), groups=labels)
        return out[0]

    # -- appearance --------------------------------------------------------------------------------------------
    def _app_incl(self, Q: Tensor) -> Tensor:
        """Σ_m k_app(k, m) Q_m including the pixel's own cluster share, (L, H, W), via one attention call."""
        labels = Q.shape[0]
        flat = Q.reshape(labels, -1).T  # (N, L)
        if self.stride == 1:
            mean_q = flat
        else:
            mean_q = torch.zeros(self.num_keys, labels, device=Q.device, dtype=Q.dtype).index_add(
                0, self.cluster, flat) / self.count.clamp_min(1)[:, None]
        msg = _KernelSum.apply(self.query, self.key, mean_q)  # (N, L) = Σ_c exp(q_k · k_c) Q̄_c
        return msg.T.reshape(labels, self.height, self.width)

    def __call__(self, Q: Tensor) -> tuple[Tensor, Tensor]:
        work = Q.to(self.dtype)
        app = (self._app_incl(work) - self.self_weight * work).clamp_min(0.0)  # Σ over m ≠ k
        smooth = self._smooth_incl(work) - work
        if self.normalize:
            # Σ_l Q_m(l) = 1, so Σ_l message_k(l) = Σ_{m≠k} k(k, m): the normaliser comes for free.
            tiny = torch.finfo(self.dtype).tiny
            app = app / app.sum(0, keepdim=True).clamp_min(tiny)
            smooth = smooth / self.smooth_norm.clamp_min(tiny)
        return app.to(Q.dtype), smooth.to(Q.dtype)


# --------------------------------------------------------------------------------------------------------------
# Mean-field inference (the CRF as an RNN)
# --------------------------------------------------------------------------------------------------------------


def _instance_crf_single(Q, boxes, scores, image, *, iters, w_box, w_global, eps, w_app, w_smooth, theta_alpha,
                         theta_beta, theta_gamma, normalize, method, box_term, global_term, pairwise, app_stride,
                         app_max_keys, log_probs, check, where):
    if check:
        _check_inputs(Q, boxes, scores, image, where)
    boxes = boxes.to(device=Q.device, dtype=Q.dtype)
    scores = scores.to(device=Q.device, dtype=Q.dtype)
    potential = _unary_potential(Q, boxes, scores, w_box, w_global, box_term, global_term)
    neg_unary = torch.log(potential + eps)  # -U
    logits = neg_unary
    if pairwise and iters > 0:
        if method == "exact":
            messages = _ExactMessages(image, theta_alpha, theta_beta, theta_gamma, normalize, Q.dtype)
        else:
            work_dtype = torch.promote_types(Q.dtype, torch.float32)
            messages = _FastMessages(image, theta_alpha, theta_beta, theta_gamma, normalize, work_dtype,
                                     app_stride, app_max_keys)
        probs = torch.softmax(neg_unary, dim=0)  # Q⁰ = softmax(-U)
        for _ in range(iters):
            app, smooth = messages(probs)
            # Potts: Q_k(l) ∝ exp(-U_k(l) + Σ_m [w_app k_app + w_smooth k_smooth] Q_m(l)).
            logits = neg_unary + w_app * app + w_smooth * smooth
            probs = torch.softmax(logits, dim=0)
    return torch.log_softmax(logits, dim=0) if log_probs else torch.softmax(logits, dim=0)


def _as_list(x, count: int, name: str) -> list[Tensor]:
    if isinstance(x, Tensor):
        if x.dim() == 0 or x.shape[0] != count:
            raise ValueError(
                f"instance_crf: batched {name} must have {count} entries (one per image), got {tuple(x.shape)}"
            )
        return list(x.unbind(0))
    if len(x) != count:
        raise ValueError(f"instance_crf: batched {name} must have {count} entries (one per image), got {len(x)}")
    return list(x)


def instance_crf(
    Q: Tensor,
    boxes: Tensor | Sequence[Tensor],
    scores: Tensor | Sequence[Tensor],
    image: Tensor,
    *,
    iters: int = 5,
    w_box: WeightLike = 1.0,
    w_global: WeightLike = 1.0,
    eps: float = 1e-6,
    w_app: WeightLike | None = None,
    w_smooth: WeightLike | None = None,
    theta_alpha: float = THETA_ALPHA,
    theta_beta: float = THETA_BETA,
    theta_gamma: float = THETA_GAMMA,
    normalize: bool = True,
    method: str = "fast",
    box_term: bool = True,
    global_term: bool = True,
    pairwise: bool = True,
    app_stride: int | None = None,
    app_max_keys: int = 2048,
    log_probs: bool = False,
    check: bool = True,
) -> Tensor | list[Tensor]:
    """Instance-level part segmentation by mean-field inference in the Instance CRF (§3.2, Eq. 1–3).

    Args:
        Q: (P+1, H, W) category-level part probabilities (channel 0 background), or (B, P+1, H, W) for a batch.
        boxes: (D, 4) xyxy person boxes in pixels inside the image (D may be 0); a list (or (B, D, 4)) for a batch.
        scores: (D,) detection scores in [0, 1], used as given; a list (or (B, D)) for a batch.
        image: (3, H, W) RGB in [0, 1] (or (B, 3, H, W)); drives the appearance kernel.
        iters: mean-field iterations; 0 returns ``softmax(-U)``.
        w_box, w_global: unary weights (Eq. 1), >= 0; floats or 0-d tensors (learnable, see :class:`InstanceCRF`).
        eps: ε of Eq. 1.
        w_app, w_smooth: pairwise kernel weights; ``None`` takes :func:`default_pairwise_weights`.
        theta_alpha, theta_beta, theta_gamma: kernel widths: θα (appearance, position) and θγ (smoothness) in
            pixels, θβ (appearance, colour) in 0–255 colour units.
        normalize: divide each kernel's sum by ``Σ_{m≠k} k(k, m)`` (the released layers) instead of the plain sum.
        method: ``"exact"`` (dense N×N, small images only) or ``"fast"`` (separable convolutions + attention over
            Gaussian clouds of pixels; see the module docstring for its measured error).
        box_term, global_term, pairwise: switch the paper's components (ablations of Tab. 1).
        app_stride: cell size of the fast appearance kernel (1 = exact); ``None`` picks the smallest stride whose
            clouds (two per cell above stride 1) fit in ``app_max_keys`` attention keys.
        app_max_keys: the key budget; cost per iteration is about H·W × keys × (D·P).
        log_probs: return log-probabilities (for a numerically stable loss).
        check: validate inputs (one host sync per image); turn off inside tight GPU loops once inputs are trusted.

    Returns:
        (1 + D·P, H, W) probabilities over the labels {(0, 0)} ∪ {1..D}×{1..P} (channel layout of
        :func:`crf_channel`); a list of those for a batch.
    """
    if method not in ("exact", "fast"):
        raise ValueError(f"instance_crf: method must be 'exact' or 'fast', got {method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"instance_crf: iters must be an int >= 0, got {iters!r}")
    for name, theta in (("theta_alpha", theta_alpha), ("theta_beta", theta_beta), ("theta_gamma", theta_gamma)):
        if not theta > 0:
            raise ValueError(f"instance_crf: {name} must be > 0, got {theta}")
    if not eps > 0:
        raise ValueError(f"instance_crf: eps must be > 0 (it keeps ln finite), got {eps}")
    default_app, default_smooth = default_pairwise_weights(normalize, theta_alpha, theta_gamma)
    w_app = default_app if w_app is None else w_app
    w_smooth = default_smooth if w_smooth is None else w_smooth
    if check:
        _check_weight("w_box", w_box, True)
        _check_weight("w_global", w_global, True)
        _check_weight("w_app", w_app, False)
        _check_weight("w_smooth", w_smooth, False)
    if not isinstance(Q, Tensor):
        raise TypeError(f"instance_crf: Q must be a tensor, got {type(Q).__name__}")
    kwargs = dict(iters=iters, w_box=w_box, w_global=w_global, eps=eps, w_app=w_app, w_smooth=w_smooth,
                  theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma, normalize=normalize,
                  method=method, box_term=box_term, global_term=global_term, pairwise=pairwise,
                  app_stride=app_stride, app_max_keys=app_max_keys, log_probs=log_probs, check=check)
    if Q.dim() == 4:
        batch = Q.shape[0]
        if image.dim() != 4 or image.shape[0] != batch:
            raise ValueError(f"instance_crf: batched Q has {batch} images but image has shape {tuple(image.shape)}")
        box_list = _as_list(boxes, batch, "boxes")
        score_list = _as_list(scores, batch, "scores")
        return [
            _instance_crf_single(Q[b], box_list[b], score_list[b], image[b], where=f"instance_crf: image {b}", **kwargs)
            for b in range(batch)
        ]
    if not isinstance(boxes, Tensor) or not isinstance(scores, Tensor):
        raise TypeError("instance_crf: for a single image, boxes and scores must be tensors (D, 4) and (D,)")
    return _instance_crf_single(Q, boxes, scores, image, where="instance_crf", **kwargs)


class InstanceCRF(nn.Module):
    """The Instance CRF as a layer whose four scalar weights are learned (§3.2: "weighting co-efficients are all
    learned via backpropagation"; one scalar per term, shared by all labels, because D changes per image).

    The weights ``w_box``, ``w_global`` (unary, Eq. 1) and ``w_app``, ``w_smooth`` (pairwise kernels) start at
    the released values (:func:`default_pairwise_weights`) and are stored as their logarithms (``log_w_box``, ...):
    they stay positive — the unary weights sit inside a log, and a negative Potts weight would reward label changes
    — and one optimiser step changes each by the same *relative* amount, although their defaults may span four
    orders of magnitude (1 for the unary weights, 2.7e-4 for the unnormalised appearance kernel). The released
    model trains them at 10x the network's learning rate; ``weight_scale`` does that for any optimiser that is
    invariant to a gradient's scale (Adam): the parameter is ``log(w) / weight_scale``. To switch a term off,
    use the ``box_term`` / ``global_term`` / ``pairwise`` flags rather than a zero weight. Kernel widths stay fixed,
    as in the released model. ``forward`` takes and returns what :func:`instance_crf` does.
    """

    def __init__(
        self,
        *,
        iters: int = 5,
        w_box: float = 1.0,
        w_global: float = 1.0,
        w_app: float | None = None,
        w_smooth: float | None = None,
        theta_alpha: float = THETA_ALPHA,
        theta_beta: float = THETA_BETA,
        theta_gamma: float = THETA_GAMMA,
        eps: float = 1e-6,
        normalize: bool = True,
        method: str = "fast",
        box_term: bool = True,
        global_term: bool = True,
        pairwise: bool = True,
        app_stride: int | None = None,
        app_max_keys: int = 2048,
        weight_scale: float = 1.0,
    ):
        super().__init__()
        if not (math.isfinite(weight_scale) and weight_scale > 0):
            raise ValueError(f"InstanceCRF: weight_scale must be > 0, got {weight_scale}")
        self.weight_scale = float(weight_scale)
        default_app, default_smooth = default_pairwise_weights(normalize, theta_alpha, theta_gamma)
        initial = {"w_box": w_box, "w_global": w_global, "w_app": default_app if w_app is None else w_app,
                   "w_smooth": default_smooth if w_smooth is None else w_smooth}
        for name, value in initial.items():
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"InstanceCRF: {name} = {value} must be > 0 (switch terms off with the flags)")
            self.register_parameter(f"log_{name}", nn.Parameter(torch.tensor(math.log(float(value)) / weight_scale)))
        self.options = dict(iters=iters, theta_alpha=theta_alpha, theta_beta=theta_beta, theta_gamma=theta_gamma,
                            eps=eps, normalize=normalize, method=method, box_term=box_term, global_term=global_term,
                            pairwise=pairwise, app_stride=app_stride, app_max_keys=app_max_keys)

    @property
    def w_box(self) -> Tensor:
        return (self.log_w_box * self.weight_scale).exp()

    @property
    def w_global(self) -> Tensor:
        return (self.log_w_global * self.weight_scale).exp()

    @property
    def w_app(self) -> Tensor:
        return (self.log_w_app * self.weight_scale).exp()

    @property
    def w_smooth(self) -> Tensor:
        return (self.log_w_smooth * self.weight_scale).exp()

    def weights(self) -> dict[str, float]:
        """The current weights as plain numbers (for logs and result files)."""
        return {name: float(getattr(self, name).detach()) for name in ("w_box", "w_global", "w_app", "w_smooth")}

    def forward(self, Q, boxes, scores, image, *, log_probs: bool = False, check: bool = True):
        return instance_crf(
            Q, boxes, scores, image, w_box=self.w_box, w_global=self.w_global, w_app=self.w_app,
            w_smooth=self.w_smooth, log_probs=log_probs, check=check, **self.options,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in {**self.options, "weight_scale": self.weight_scale}.items())


# --------------------------------------------------------------------------------------------------------------
# §3.4: other granularities from the same output
# --------------------------------------------------------------------------------------------------------------


def crf_labels(prob: Tensor) -> Tensor:
    """(1 + D·P, H, W) probabilities -> (H, W) int64 channel index of the most probable label (the MAP estimate)."""
    return prob.argmax(0)


def _num_detections(num_labels: int, num_parts: int) -> int:
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
    num_det = _num_detections(prob.shape[0], num_parts)
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


# --------------------------------------------------------------------------------------------------------------
# §3.3: permutation-invariant loss (Hungarian matching of segments, Eq. 4) with OHEM
# --------------------------------------------------------------------------------------------------------------


class SegmentMatching(NamedTuple):
    """Result of :func:`match_segments` for one image.

    ``target`` (H, W) int64 is the matched ground truth Y* in CRF channel indices (``ignore_index`` where ignored);
    ``pairs`` lists matched ``(gt_person, part, detection)``; ``unmatched`` lists ``(gt_person, part)`` segments
    that no detection took; ``iou`` is the IoU of segment (gt_person, part) with predicted segment (detection,
    part), aligned with ``pairs`` (it may be 0 at ``level="person"``: a mislabelled part still follows its person).
    """

    target: Tensor
    pairs: list[tuple[int, int, int]]
    unmatched: list[tuple[int, int]]
    iou: list[float]


#: Weight of the box-coverage tie-break in person-level matching: mask IoU decides wherever it is positive.
_BOX_TIEBREAK = 1e-3


def match_segments(
    pred_labels: Tensor,
    gt_instances: Tensor,
    gt_semantic: Tensor,
    num_detections: int,
    num_parts: int,
    *,
    level: str = "person",
    unmatched: str = "background",
    ignore_index: int = 255,
    boxes: Tensor | None = None,
) -> SegmentMatching:
    """Eq. 4: the permutation Y* of the ground truth's instance identities that maximises its IoU with the prediction.

    Eq. 4 permutes *instances*: a ground-truth person g is renamed to a detection i, and then every part j of g
    becomes label (i, j). So all parts of one person follow one detection, each part keeps its own label, and only
    a person no detection takes goes to background (or ignore). With ``level="person"`` (the default) the
    assignment is one Hungarian problem (``scipy.optimize.linear_sum_assignment``) over persons x detections,
    scored by the IoU of the whole-person masks (§3.4: prediction label (i, j) -> person i; ground truth: the
    person's part pixels), so a part the network mislabels (hair predicted as face) still targets (i, hair) on the
    detection that has its person, and a person split over two detections is reunited on the one that overlaps
    it most. A pair of IoU 0 is not a match, unless ``boxes`` are given: then the fraction of the person's pixels
    inside detection i's box breaks ties (weight 1e-3, so mask IoU decides wherever it is positive) and a person
    whose pixels the CRF gave to nobody yet is still matched to the detection whose box covers it. A person with
    no overlapping prediction (nor box) is undetected and goes to ``unmatched``.

    ``level="segment"`` is the older per-segment reading: every (person, part) segment is matched on its own, one
    Hungarian problem per part label (segments of different parts have IoU 0, §3.3), and zero-IoU pairs go to
    ``unmatched``. It keeps a split person split and sends a mislabelled part of a detected person to background,
    reinforcing the error; it is kept as an option for comparison.

    Args:
        pred_labels: (H, W) int64 CRF channel index per pixel (argmax of the output).
        gt_instances: (H, W) int64 person id, 0 background.
        gt_semantic: (H, W) int64 part label, 0 background, ``ignore_index`` ignored.
        num_detections, num_parts: D and P of the prediction.
        level: ``"person"`` (Eq. 4, default) or ``"segment"`` (see above).
        unmatched: what the segments of a ground-truth person no detection takes become: ``"background"``
            (default; what the released training does: such a person has no detection to belong to, and labelling
            it as some other detection's part would cost that detection precision, which AP^r punishes) or
            ``"ignore"`` (kept out of the loss, e.g. when detections are known to be missing).
        ignore_index: label of ignored pixels in ``gt_semantic`` and in the returned target.
        boxes: optional (D, 4) xyxy detection boxes (person level only): the tie-break above.
    """
    if level not in ("segment", "person"):
        raise ValueError(f"match_segments: level must be 'person' or 'segment', got {level!r}")
    if unmatched not in ("background", "ignore"):
        raise ValueError(f"match_segments: unmatched must be 'background' or 'ignore', got {unmatched!r}")
    if pred_labels.shape != gt_instances.shape or pred_labels.shape != gt_semantic.shape:
        raise ValueError(
            f"match_segments: prediction {tuple(pred_labels.shape)}, gt_instances {tuple(gt_instances.shape)} and "
            f"gt_semantic {tuple(gt_semantic.shape)} must have the same (H, W)"
        )
    if boxes is not None and (boxes.dim() != 2 or boxes.shape != (num_detections, 4)):
        raise ValueError(f"match_segments: boxes must be ({num_detections}, 4), got {tuple(boxes.shape)}")
    device = pred_labels.device
    sem = gt_semantic.long()
    inst = gt_instances.long()
    num_persons = int(inst.max()) if inst.numel() else 0
    if inst.numel() and int(inst.min()) < 0:
        raise ValueError("match_segments: gt_instances has negative person ids")
    bad_part = (sem != ignore_index) & ((sem < 0) | (sem > num_parts))
    if bad_part.any():
        y, x = _first_bad(bad_part)
        raise ValueError(f"match_segments: gt_semantic has label {int(sem[y, x])} at (y, x) = ({y}, {x}); "
                         f"expected 0..{num_parts} or {ignore_index}")
    # Ground-truth segment id (g-1)·P + (j-1) per pixel, -1 where none; pixels of a part without a person are
    # inconsistent annotations and are ignored.
    is_part = (sem >= 1) & (sem <= num_parts) & (sem != ignore_index)
    has_person = inst >= 1
    gt_id = torch.where(is_part & has_person, (inst - 1) * num_parts + (sem - 1), torch.full_like(sem, -1))
    pred_id = pred_labels.long() - 1  # (i-1)·P + (j-1), -1 for background
    gp, dp = num_persons * num_parts, num_detections * num_parts

    target = torch.zeros_like(sem)
    target[(sem == ignore_index) | (is_part & ~has_person)] = ignore_index
    pairs: list[tuple[int, int, int]] = []
    ious: list[float] = []
    lut = torch.full((max(gp, 1),), 0 if unmatched == "background" else ignore_index, dtype=torch.long)
    gt_area = torch.bincount(gt_id[gt_id >= 0], minlength=gp).cpu() if gp else torch.zeros(0, dtype=torch.long)
    matched_mask = torch.zeros(gp, dtype=torch.bool)
    if gp and dp:
        both = (gt_id >= 0) & (pred_id >= 0)
        inter = torch.bincount(gt_id[both] * dp + pred_id[both], minlength=gp * dp).reshape(gp, dp).cpu().double()
        pred_area = torch.bincount(pred_id[pred_id >= 0], minlength=dp).cpu().double()
        # (g, j, i, j') -> keep j == j' only (different part labels have IoU 0).
        inter4 = inter.reshape(num_persons, num_parts, num_detections, num_parts)
        same = torch.diagonal(inter4, dim1=1, dim2=3)  # (G, D, P): intersection of (g, j) with (i, j)
        area_g = gt_area.double().reshape(num_persons, num_parts)  # (G, P)
        area_p = pred_area.reshape(num_detections, num_parts)  # (D, P)
        union = area_g[:, None, :] + area_p[None, :, :] - same
        iou = torch.where(union > 0, same / union.clamp_min(1), torch.zeros_like(same)).numpy()  # (G, D, P)
        if level == "segment":
            for j in range(num_parts):  # one assignment problem per part label
                rows = np.nonzero(area_g[:, j].numpy() > 0)[0]
                if rows.size == 0:
                    continue
                r, c = linear_sum_assignment(iou[rows, :, j], maximize=True)
                for g_idx, i in zip(rows[r], c):
                    if iou[g_idx, i, j] > 0:
                        pairs.append((int(g_idx) + 1, j + 1, int(i) + 1))
                        ious.append(float(iou[g_idx, i, j]))
        else:
            # Whole-person masks: every part label of person g against every part label of detection i.
            inter_person = inter4.sum((1, 3))  # (G, D)
            union_person = area_g.sum(1)[:, None] + area_p.sum(1)[None, :] - inter_person
            score = torch.where(union_person > 0, inter_person / union_person.clamp_min(1),
                                torch.zeros_like(inter_person))
            if boxes is not None:
                inside = boxes_to_masks(boxes.detach().float().to(device), *pred_labels.shape)  # (D, H, W)
                person = torch.where(gt_id >= 0, inst, torch.zeros_like(inst))
                flat = person.flatten()
                cover = torch.stack([torch.bincount(flat[m.flatten()], minlength=num_persons + 1)[1:]
                                     for m in inside], 1).cpu().double()  # (G, D) person pixels in box i
                score = score + _BOX_TIEBREAK * cover / area_g.sum(1, keepdim=True).clamp_min(1)
            score = score.numpy()
            r, c = linear_sum_assignment(score, maximize=True)
            for g_idx, i in zip(r, c):
                if score[g_idx, i] <= 0:
                    continue
                for j in np.nonzero(area_g[g_idx].numpy() > 0)[0]:
                    pairs.append((int(g_idx) + 1, int(j) + 1, int(i) + 1))
                    ious.append(float(iou[g_idx, i, j]))
        for g, j, i in pairs:
            seg = (g - 1) * num_parts + (j - 1)
            lut[seg] = crf_channel(i, j, num_parts)
            matched_mask[seg] = True
    present = gt_area > 0
    unmatched_list = [(int(s) // num_parts + 1, int(s) % num_parts + 1)
                      for s in torch.nonzero(present & ~matched_mask).flatten()]
    if gp:
        seg_pixels = gt_id >= 0
        target[seg_pixels] = lut.to(device)[gt_id[seg_pixels]]
    return SegmentMatching(target, pairs, unmatched_list, ious)


def hungarian_matched_loss(
    pred: Tensor | Sequence[Tensor],
    gt_instances: Tensor | Sequence[Tensor],
    gt_semantic: Tensor | Sequence[Tensor],
    *,
    num_parts: int,
    ohem_k: int | float | None = None,
    ohem_loss_threshold: float | None = None,
    level: str = "person",
    unmatched: str = "background",
    ignore_index: int = 255,
    boxes: Tensor | Sequence[Tensor] | None = None,
    pred_is_log: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """Permutation-invariant cross-entropy of §3.3: match (Eq. 4), permute the ground truth, then CE (+ OHEM).

    Args:
        pred: (1 + D·P, H, W) CRF probabilities (or log-probabilities with ``pred_is_log``), or a list for a batch.
        gt_instances: (H, W) person ids (0 background), or a list.
        gt_semantic: (H, W) part labels (0 background, ``ignore_index`` ignored), or a list.
        num_parts: P.
        ohem_k: keep only the K pixels with the highest loss in the whole mini-batch (``int`` count, ``float``
            fraction, ``None`` = all). The paper uses K = 2^15 at full resolution (≈ 12% of the pixels, §4.2).
        ohem_loss_threshold: drop pixels whose loss is below it before ranking (see :mod:`hparse.ops.ohem`).
        level, unmatched, ignore_index: see :func:`match_segments` (person-level matching, Eq. 4; the ground truth of
            a person no detection takes becomes background by default).
        boxes: optional (D, 4) detection boxes (or a list): the tie-break of :func:`match_segments`.
        pred_is_log: ``pred`` holds log-probabilities (``instance_crf(..., log_probs=True)``), the stable choice.
        eps: floor inside the log for probabilities.

    Returns:
        scalar loss: mean of -log p(Y*_k) over the kept pixels. The matching uses the detached argmax and is
        redone at every call; gradients flow through the probabilities only.
    """
    single = isinstance(pred, Tensor)
    preds = [pred] if single else list(pred)
    insts = [gt_instances] if isinstance(gt_instances, Tensor) else list(gt_instances)
    sems = [gt_semantic] if isinstance(gt_semantic, Tensor) else list(gt_semantic)
    if not (len(preds) == len(insts) == len(sems)):
        raise ValueError(f"hungarian_matched_loss: {len(preds)} predictions, {len(insts)} instance maps and "
                         f"{len(sems)} semantic maps; they must match")
    box_list = [None] * len(preds) if boxes is None else ([boxes] if isinstance(boxes, Tensor) else list(boxes))
    if len(box_list) != len(preds):
        raise ValueError(f"hungarian_matched_loss: {len(preds)} predictions but {len(box_list)} box sets")
    losses, valids = [], []
    for b, (p, inst, sem) in enumerate(zip(preds, insts, sems)):
        if p.dim() != 3:
            raise ValueError(f"hungarian_matched_loss: image {b}: pred must be (1 + D·P, H, W), got {tuple(p.shape)}")
        try:
            num_det = _num_detections(p.shape[0], num_parts)
        except ValueError as err:
            raise ValueError(f"hungarian_matched_loss: image {b}: {err}") from None
        if tuple(p.shape[1:]) != tuple(inst.shape) or tuple(p.shape[1:]) != tuple(sem.shape):
            raise ValueError(f"hungarian_matched_loss: image {b}: pred is {tuple(p.shape[1:])} but the ground truth "
                             f"is {tuple(inst.shape)} / {tuple(sem.shape)}")
        match = match_segments(p.detach().argmax(0), inst.to(p.device), sem.to(p.device), num_det, num_parts,
                               level=level, unmatched=unmatched, ignore_index=ignore_index, boxes=box_list[b])
        valid = match.target != ignore_index
        index = torch.where(valid, match.target, torch.zeros_like(match.target))[None]
        picked = p.gather(0, index)[0]
        nll = -picked if pred_is_log else -torch.log(picked.clamp_min(eps))
        losses.append(nll.flatten())
        valids.append(valid.flatten())
    return ohem_reduce(torch.cat(losses), ohem_k, torch.cat(valids), loss_threshold=ohem_loss_threshold)
