"""Online hard example mining (OHEM) over pixels: average the loss of the K hardest pixels only.

Li, Arnab & Torr (BMVC 2017), §3.3 and §4.2: "we only compute our loss over the top K pixels with the highest loss
in the training mini-batch", with K = 2^15 at full resolution (about 12% of a PASCAL-Person-Part image), so the
network works on the pixels it still gets wrong instead of sharpening the ones it already gets right.

The authors' released loss layer (caffe-tvg ``SoftmaxWithLoss``) adds one knob beside K: pixels whose ground-truth
probability already exceeds a threshold are dropped before ranking. Here that knob is ``loss_threshold``: a pixel
is a candidate only if its loss is at least ``loss_threshold`` (probability threshold t <=> loss threshold -ln t).
The mean is taken over the pixels kept, as in the released layer.
"""

from __future__ import annotations

import torch

__all__ = ["ohem_count", "ohem_mask", "ohem_reduce"]


def ohem_count(k: int | float | None, num_candidates: int) -> int:
    """How many pixels OHEM keeps out of ``num_candidates``.

    Args:
        k: ``None`` keeps every candidate; an ``int`` >= 1 keeps that many (the paper's K, e.g. ``2**15``); a
            ``float`` in (0, 1] keeps that fraction, rounded up (useful when images are smaller than the paper's,
            where K = 2^15 is about 0.12 of the pixels).
        num_candidates: number of pixels eligible for the loss.
    """
    if k is None:
        return num_candidates
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"ohem k must be an int count, a float fraction or None, got {type(k).__name__}")
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"ohem k given as a fraction must lie in (0, 1], got {k}")
        return min(num_candidates, int(-(-k * num_candidates // 1)))
    if k < 1:
        raise ValueError(f"ohem k given as a count must be >= 1, got {k}")
    return min(num_candidates, k)


def ohem_mask(
    loss: torch.Tensor,
    k: int | float | None,
    valid: torch.Tensor | None = None,
    *,
    loss_threshold: float | None = None,
) -> torch.Tensor:
    """Boolean mask of the pixels OHEM keeps: the ``k`` largest losses among the valid candidates.

    Args:
        loss: per-pixel loss, any shape (e.g. (H, W) or (B, H, W)).
        k: see :func:`ohem_count`.
        valid: bool mask of the same shape; ``False`` pixels (ignore label) are never kept.
        loss_threshold: pixels with a loss below it are not candidates (the released layer's probability
            threshold, in loss units).

    Returns:
        bool tensor shaped like ``loss`` with exactly ``ohem_count(k, #candidates)`` ``True`` entries
        (ties at the K-th value are broken by ``torch.topk``).
    """
    candidates = torch.ones_like(loss, dtype=torch.bool) if valid is None else valid.to(torch.bool)
    if candidates.shape != loss.shape:
        raise ValueError(
            f"ohem: valid mask shape {tuple(candidates.shape)} differs from loss shape {tuple(loss.shape)}"
        )
    if loss_threshold is not None:
        candidates = candidates & (loss.detach() >= loss_threshold)
    num = int(candidates.sum())
    keep = ohem_count(k, num)
    mask = torch.zeros_like(candidates)
    if keep == 0:
        return mask
    if keep == num:
        return candidates
    # Rank on detached values: the selection is a hard, non-differentiable choice (as in the released layer).
    ranked = torch.where(candidates, loss.detach(), torch.full_like(loss.detach(), -float("inf"))).flatten()
    top = torch.topk(ranked, keep, sorted=False).indices
    mask.view(-1)[top] = True
    return mask


def ohem_reduce(
    loss: torch.Tensor,
    k: int | float | None,
    valid: torch.Tensor | None = None,
    *,
    loss_threshold: float | None = None,
) -> torch.Tensor:
    """Mean of the per-pixel ``loss`` over the pixels :func:`ohem_mask` keeps (0 with a graph if none is kept)."""
    mask = ohem_mask(loss, k, valid, loss_threshold=loss_threshold)
    kept = int(mask.sum())
    if kept == 0:
        # Keep the graph connected so that callers can always call backward().
        return loss.sum() * 0.0
    return loss[mask].sum() / kept
