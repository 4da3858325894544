"""Predicted persons as sparse pixel lists, and the painting that turns overlapping persons into one map.

A prediction holds one full-image part map per person, (N, H, W), mostly zeros. Every metric here needs only each
person's *foreground* pixels, so :func:`person_pixels` lists them once, as ``(person, flat pixel, label)`` triples;
everything that involves the zeros (background areas, background intersections) follows from image-level counts.
This keeps the cost proportional to the predicted area, not to N x H x W.

**Painting** (``shared/reference/metrics_and_formats.md`` §A1 "How the global map is built" and §A5 first item;
Parsing R-CNN ``parsing_eval.py`` ``parsing_png``): persons are painted in ascending score order, each person's
nonzero pixels overwriting what is there, so the highest-scored person owns a contested pixel. Persons scored below
a threshold are not painted (``PRCNN.SEMSEG_SCORE_THRESH``: 0.3 CIHP, 0.05 MHP v2). The painted maps are what the
CIHP formats store (one indexed PNG per image), so AP^r must be computed on them, while AP^p and PCP use the
unpainted per-person maps. Equal scores: the person listed later is painted later and wins (stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PersonPixels", "person_pixels", "paint_persons", "paint_order", "painted_maps"]


@dataclass
class PersonPixels:
    """The foreground pixels of N predicted persons (entries sorted by person, then by pixel).

    Attributes:
        person: (K,) int64 person index 0..N-1 of each entry.
        pixel: (K,) int64 flat pixel index ``y * W + x``.
        label: (K,) int64 part label, 1..n-1.
        num_persons: N.
        shape: (H, W) of the image.
    """

    person: torch.Tensor
    pixel: torch.Tensor
    label: torch.Tensor
    num_persons: int
    shape: tuple[int, int]

    @property
    def num_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    def select(self, keep: torch.Tensor) -> PersonPixels:
        """The entries where ``keep`` (K,) is true."""
        return PersonPixels(self.person[keep], self.pixel[keep], self.label[keep], self.num_persons, self.shape)


def person_pixels(person_parts: torch.Tensor) -> PersonPixels:
    """List the foreground pixels of (N, H, W) per-person part maps (0 = not this person)."""
    num, height, width = person_parts.shape
    flat = person_parts.reshape(num, height * width)
    person, pixel = flat.nonzero(as_tuple=True)
    label = flat[person, pixel].long()
    return PersonPixels(person, pixel, label, num, (height, width))


def paint_order(scores: torch.Tensor) -> torch.Tensor:
    """(N,) painting rank of each person: 0 is painted first (lowest score); ties in input order (stable)."""
    order = torch.sort(scores.double(), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def paint_persons(pixels: PersonPixels, scores: torch.Tensor, score_thresh: float | None = None) -> PersonPixels:
    """Paint persons by ascending score, higher scores overwriting; return the surviving (painted) entries.

    The rule of Parsing R-CNN's ``parsing_png`` (``_inx = scores.argsort()``, skip scores below the threshold,
    ``np.where(_parsing > 0, _parsing, parsing_seg)``), which §A5 requires before AP^r and §A1 uses for the global
    map.

    Args:
        pixels: foreground pixels of the N persons (:func:`person_pixels`).
        scores: (N,) person scores (the painting order).
        score_thresh: persons scored below it are not painted (None: paint all).

    Returns:
        The entries that own their pixel after painting: at most one entry per pixel.
    """
    if pixels.person.numel() == 0:
        return pixels
    rank = paint_order(scores.to(pixels.person.device))
    entry_rank = rank[pixels.person]
    if score_thresh is not None:
        painted = scores.to(pixels.person.device)[pixels.person] >= score_thresh
        entry_rank = torch.where(painted, entry_rank, torch.full_like(entry_rank, -1))
    owner = torch.full((pixels.num_pixels,), -1, dtype=entry_rank.dtype, device=entry_rank.device)
    owner.scatter_reduce_(0, pixels.pixel, entry_rank, reduce="amax", include_self=True)
    return pixels.select((entry_rank >= 0) & (entry_rank == owner[pixels.pixel]))


def painted_maps(pixels: PersonPixels) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, W) part-label map and (H, W) person map (person index + 1, 0 = nobody) of painted entries."""
    semantic = torch.zeros(pixels.num_pixels, dtype=torch.int64, device=pixels.pixel.device)
    owner = torch.zeros_like(semantic)
    semantic[pixels.pixel] = pixels.label
    owner[pixels.pixel] = pixels.person + 1
    return semantic.reshape(pixels.shape), owner.reshape(pixels.shape)
