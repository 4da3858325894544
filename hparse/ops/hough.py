"""Hough voting of keypoints from disk heatmaps and short-range offsets (Zhou et al., CVPR 2021, §3.3, Eq. 8).

For one keypoint type, every grid cell ``u`` predicts how likely it lies in a disk of radius ``R`` around a keypoint
of that type, ``M(u)``, and an offset ``O(u)`` to that keypoint. Each cell votes, with weight ``M(u)``, for the point
``v(u) = u + O(u)``. The Hough score at a point ``x`` is (Eq. 8)

    H(x) = 1/(πR²) Σ_u M(u) K(v(u) − x),      K(d) = max(0, 1 − |d_x|) · max(0, 1 − |d_y|),

with ``K`` the bilinear ("tent") kernel of the paper's ``F^{Bi-inter}``, in cells of the grid. A perfect disk whose
cells all vote for its centre scores ``H = 1`` there: the normaliser ``πR²`` is the disk's area *in grid cells*
(``R`` measured in cells of the grid, i.e. ``R_pixels / stride``), which is what makes the paper's threshold 0.7 mean
"70 % of a disk agrees". Disks cut by the image border score less (a keypoint on the border at most about 0.5,
below the threshold), and so do disks shared with a nearby keypoint of the same type. hparse therefore offers a
second normaliser (the parser's ``hough_norm="cells"``, its default): the number of grid cells the disk holds
*inside the image* (:func:`disk_cells`). For a disk well inside the image the two agree up to discretisation (R = 3
cells: 29 cells against πR² = 28.3); at the border only the cells that can vote are counted.

Two evaluations of the same sum:

- :func:`hough_map`: ``H`` at every grid node, by bilinear **splatting** (each vote adds ``M · K`` to its four
  neighbouring nodes, ``index_add``). Exact at the nodes; used for pictures and as the reference in the tests.
- :func:`hough_scores`: ``H`` at arbitrary points ``x`` (the DSPF projections ``u + D(u)`` in the parser), exactly,
  as a sum over votes. Reading the splatted map bilinearly between nodes would *not* give Eq. 8 (it convolves the
  tent twice: a vote exactly at ``x`` halfway between nodes would read 0.25 instead of 1), so points are scored
  against the votes themselves, in chunks of queries: cost ``O(K · Q · V)`` for ``K`` types, ``Q`` points, ``V``
  votes per type (votes with ``M`` below ``min_weight`` are dropped first; each would add at most ``min_weight / πR²``).

:func:`point_nms` deduplicates scored points: greedy non-maximum suppression within a radius, per type.

Coordinates are grid coordinates in cell units with cell ``(i, j)`` centred at ``(j + 0.5, i + 0.5)`` (x first),
the convention of :mod:`hparse.ops.warp`; image pixels are ``stride`` times these.
"""

from __future__ import annotations

import math

import torch

__all__ = ["hough_map", "hough_scores", "point_nms", "disk_area", "disk_cells"]


def disk_area(radius: float) -> float:
    """πR², the normaliser of Eq. 8 (``radius`` in grid cells)."""
    return math.pi * radius * radius


def disk_cells(points: torch.Tensor, radius: float, size: tuple[int, int]) -> torch.Tensor:
    """How many cell centres of an ``H x W`` grid lie within ``radius`` of each point (cell units): the cells a
    complete disk centred there would hold, counting only those inside the image.

    Closed form per row: row ``i`` (centre ``y_i = i + 0.5``) holds the columns ``j`` with
    ``|j + 0.5 − x| ≤ sqrt(R² − (y_i − y)²)``, an interval of integers clipped to ``[0, W − 1]``.

    Args:
        points: (Q, 2) points (x, y). radius: R in cells. size: (H, W).

    Returns:
        (Q,) counts (float).
    """
    height, width = size
    span = int(math.ceil(radius)) + 1
    rows = points[:, 1:2].floor() + torch.arange(-span, span + 1, device=points.device)  # (Q, 2 span + 1)
    dy = rows + 0.5 - points[:, 1:2]
    half = (radius * radius - dy * dy).clamp_min(0).sqrt()
    lo = torch.ceil(points[:, 0:1] - half - 0.5).clamp_min(0)
    hi = torch.floor(points[:, 0:1] + half - 0.5).clamp_max(width - 1)
    inside = (dy.abs() <= radius) & (rows >= 0) & (rows < height)
    return ((hi - lo + 1).clamp_min(0) * inside).sum(1)


def hough_map(votes: torch.Tensor, weights: torch.Tensor, size: tuple[int, int],
              radius: float | None = None) -> torch.Tensor:
    """Eq. 8 at every grid node by bilinear splatting.

    Args:
        votes: (K, V, 2) voted points (x, y) in cell units (cell centres at ``j + 0.5``).
        weights: (K, V) vote weights ``M(u)`` (0 for padding).
        size: (H, W) of the grid.
        radius: disk radius in cells; the map is divided by ``πR²`` (``None``: raw sums).

    Returns:
        (K, H, W) Hough scores at the cell centres.
    """
    height, width = size
    kinds = votes.shape[0]
    out = votes.new_zeros(kinds * height * width)
    if votes.numel():
        pos = votes - 0.5  # node (i, j) sits at (j, i) here
        x0, y0 = pos[..., 0].floor(), pos[..., 1].floor()
        fx, fy = pos[..., 0] - x0, pos[..., 1] - y0
        base = (torch.arange(kinds, device=votes.device) * height * width)[:, None]
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            xi, yi = (x0 + dx).long(), (y0 + dy).long()
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = (base + yi.clamp(0, height - 1) * width + xi.clamp(0, width - 1))[inside]
            out.index_add_(0, index, (weights * w)[inside].to(out.dtype))
    out = out.view(kinds, height, width)
    return out / disk_area(radius) if radius is not None else out


def hough_scores(votes: torch.Tensor, weights: torch.Tensor, points: torch.Tensor, radius: float,
                 min_weight: float = 0.0, chunk: int = 1 << 22, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 8 at arbitrary points, exactly: ``H_k(x_q) = Σ_v w_kv K(v_kv − x_q) / πR²`` for every type and point.

    Args:
        votes: (K, V, 2) voted points in cell units. weights: (K, V) their ``M`` (0 for padding).
        points: (Q, 2) query points in cell units (the same points are scored under every type).
        radius: disk radius in cells (the normaliser πR²).
        min_weight: votes with a smaller weight are dropped first (a speed knob; 0 keeps all).
        chunk: bound on the ``K · q · V`` vote-query pairs of one block (the queries per block follow from it).
        size: (H, W) of the grid. Given, each point's sum is divided by the number of grid cells its disk would
            hold inside the image (:func:`disk_cells`) instead of by πR², so that a keypoint near the border, whose
            disk the border cuts, can still score 1 (see the module docstring).

    Returns:
        (K, Q) scores.
    """
    kinds, count = votes.shape[:2]
    out = points.new_zeros(kinds, points.shape[0])
    if count == 0 or points.shape[0] == 0:
        return out
    if min_weight > 0:  # keep, per type, only the votes that matter; pad to the largest count
        keep = weights >= min_weight
        per = keep.sum(1)
        top = int(per.max())
        if top == 0:
            return out
        order = keep.float().argsort(dim=1, descending=True, stable=True)[:, :top]
        votes = votes.gather(1, order[..., None].expand(-1, -1, 2))
        weights = weights.gather(1, order) * (torch.arange(top, device=votes.device)[None] < per[:, None])
    step = max(1, chunk // max(kinds * votes.shape[1], 1))
    for start in range(0, points.shape[0], step):
        q = points[start:start + step]  # (q, 2)
        d = (votes[:, None, :, :] - q[None, :, None, :]).abs()  # (K, q, V, 2)
        tent = (1 - d).clamp_min(0).prod(-1)  # (K, q, V)
        out[:, start:start + step] = (tent * weights[:, None, :]).sum(-1)
    if size is not None:
        return out / disk_cells(points, radius, size).clamp_min(1)[None]
    return out / disk_area(radius)


def point_nms(points: torch.Tensor, scores: torch.Tensor, radius: float, valid: torch.Tensor | None = None,
              max_keep: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression of scored points, independently per type.

    Round after round every type keeps its best remaining point and suppresses the points within ``radius`` of it
    (itself included). The loop runs over rounds (at most the number of points kept per type, i.e. about the number
    of people), each round batched over types.

    Args:
        points: (K, Q, 2). scores: (K, Q). radius: suppression radius (same units as ``points``).
        valid: (K, Q) bool, points allowed to be kept (default all).
        max_keep: at most this many points per type.

    Returns:
        (K, Q) bool, the kept points.
    """
    kinds, count = scores.shape
    keep = torch.zeros(kinds, count, dtype=torch.bool, device=scores.device)
    if count == 0:
        return keep
    alive = torch.ones_like(keep) if valid is None else valid.clone()
    rows = torch.arange(kinds, device=scores.device)
    rounds = count if max_keep is None else min(count, max_keep)
    for _ in range(rounds):
        masked = scores.masked_fill(~alive, -math.inf)
        best, index = masked.max(1)
        take = torch.isfinite(best)
        if not bool(take.any()):
            break
        keep[rows[take], index[take]] = True
        centre = points[rows, index]  # (K, 2)
        near = ((points - centre[:, None]) ** 2).sum(-1) <= radius * radius
        alive &= ~(near & take[:, None])
    return keep
