"""Targets and losses of the multi-granularity bottom-up parser (Zhou et al., CVPR 2021, §3.2-3.4): pure functions.

Every target is built on the device for a whole batch at once from the data contract's ``instances`` and
``keypoints`` (no NumPy, no loop over people or joints): distances between every grid cell and every joint are one
broadcast, masked by person id or keypoint type, then reduced.

The grid. Targets live on the stride-``s`` output grid (``s = 4``, the finest pyramid level). Cell ``(i, j)`` is
centred at the image point ``((j + 0.5) s, (i + 0.5) s)`` (pixel ``x`` covers ``[x, x + 1)``, as everywhere in
hparse). A cell's person id and part label are those of the image pixel containing its centre, i.e. the label maps
are sampled with ``[s // 2 :: s]`` (nearest, never averaged: labels are categorical). With ``s = 1`` the same
functions give full-resolution targets (the oracle's DSPF).

Conventions written down here (the paper leaves them open):

- **Which joints count.** A joint is used when its visibility is at least ``min_visibility`` (2: "visible", the
  paper's "visible anatomical keypoints", §3.3; 1: also occluded joints inside the image, the released code's
  ``v > 0``). The same set feeds the DSPF, the disks and the limbs, so what the DSPF points at can be detected.
- **DSPF** (§3.2): ``D(u) = p* − c(u)`` in image pixels, ``p*`` the Euclidean-nearest used joint *of the cell's own
  person* (released code: cKDTree, Euclidean). Cells of a person without any used joint get weight 0 (the released
  code gives them weight 1 and a zero target, which teaches "point at yourself"); background cells weight 0.
- **Disks** (§3.3): ``M_k(u) = 1`` if a used joint of type ``k`` (any person) lies within ``R`` pixels of ``c(u)``.
  **Offsets** ``O_k(u) = p − c(u)`` to the nearest such joint, supervised inside the disks only (PersonLab).
- **Limbs** (§3.3): one map per skeleton edge ``(a, b)``: ``exp(−d²/(2σ²))`` with ``d`` the distance from ``c(u)``
  to the segment ``ab`` of a person with both joints used, the maximum over people. The paper's "unnormalised
  elliptical Gaussian ... between the endpoints" leaves the shape open; ours is flat (= 1) along the segment and
  Gaussian across it and around the ends (its level sets are stadiums), so the mean along a true limb is 1.
- **Candidates of the matching loss** (§3.3-3.4, stage 2): the keypoints the network detects, plus every used
  ground-truth joint that no detection stands for, so that every person is represented even where detection failed.
  A detection stands for the used joint of its type nearest to it when that joint is within ``radius`` pixels (the
  parser passes its deduplication radius, ``R / 3``: two points closer than that are one keypoint for the assembly) and
  no other detection is nearer to that joint (:func:`label_candidates`); the others are labelled 0, "no person" (false
  positives and duplicates), and the ground truth of a limb is "same person" (:func:`assignment_targets`).
- **Scale.** ``R = 32`` and ``σ = 9`` pixels are the paper's values at its input scale; the recipes scale both with
  the image side (``R = 32 · side / 512``, :func:`scaled_radius`), the model takes them in pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.contract import IGNORE_INDEX

__all__ = ["PAPER_SIDE", "scaled_radius", "cell_centres", "grid_labels", "pad_keypoints", "dspf_targets",
           "keypoint_targets", "limb_targets", "limb_flip_permutation", "skeleton_order", "dense_skeleton",
           "label_candidates", "assignment_targets", "semantic_loss", "dspf_loss", "disk_loss", "offset_loss",
           "limb_loss"]

#: the input side at which the paper's R = 32 px and σ = 9 px are taken to hold (see :func:`scaled_radius`)
PAPER_SIDE = 512


def scaled_radius(paper_pixels: float, side: int) -> float:
    """A length given in pixels at the paper's scale, at an image side of ``side`` pixels.

    The paper gives R = 32 px and σ = 9 px without its input size; its released training crops are 385-473 px and
    its datasets' images are ~500 px on the short side, so we take ``PAPER_SIDE = 512`` as the scale at which those
    values hold and multiply by ``side / 512`` (SynthCrowd 192 px: R = 12 px, σ = 3.4 px; 384 px: R = 24, σ = 6.75).
    """
    return paper_pixels * side / PAPER_SIDE


def cell_centres(height: int, width: int, stride: int, device=None) -> torch.Tensor:
    """(H, W, 2) image-pixel centres ``((j + 0.5) s, (i + 0.5) s)`` of the stride-``s`` grid cells, x first."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=-1)


def grid_labels(label_map: torch.Tensor, grid: tuple[int, int], stride: int, fill: int = 0) -> torch.Tensor:
    """Sample (B, H, W) integer labels at the centres of an ``h x w`` stride-``s`` grid (nearest: the pixel that
    contains each centre). Centres outside the map read ``fill``."""
    h, w = grid
    b, height, width = label_map.shape
    padded = label_map.new_full((b, h * stride, w * stride), fill)
    ph, pw = min(height, h * stride), min(width, w * stride)
    padded[:, :ph, :pw] = label_map[:, :ph, :pw]
    return padded[:, stride // 2::stride, stride // 2::stride]


def pad_keypoints(keypoints: Sequence[torch.Tensor], min_visibility: int, device=None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """Stack per-image (N_i, K, 3) keypoints into (B, N, K, 2) positions and a (B, N, K) bool "used" mask."""
    count = max([len(k) for k in keypoints] + [0])
    kinds = max([k.shape[1] for k in keypoints if k.ndim == 3] + [0])
    device = device or (keypoints[0].device if keypoints else "cpu")
    xy = torch.zeros(len(keypoints), count, kinds, 2, device=device)
    used = torch.zeros(len(keypoints), count, kinds, dtype=torch.bool, device=device)
    for b, k in enumerate(keypoints):  # a copy per image; the targets below are one batched computation
        if len(k):
            xy[b, : len(k)] = k[..., :2].to(device, torch.float32)
            used[b, : len(k)] = k[..., 2].to(device) >= min_visibility
    return xy, used


def dspf_targets(instances: torch.Tensor, keypoints: Sequence[torch.Tensor], stride: int,
                 min_visibility: int = 2, grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """DSPF ground truth (§3.2): per human cell, the offset in pixels to the nearest used joint of its own person.

    Args:
        instances: (B, H, W) person ids (0 background), image pixels.
        keypoints: per image, (N_i, K, 3) keypoints (row n = person n + 1).
        stride: grid stride in pixels (4 for training, 1 for full resolution).
        min_visibility: joints with ``v >= min_visibility`` are used.
        grid: (h, w) of the grid (default ``ceil(H / s), ceil(W / s)``).

    Returns:
        ``(offsets, weight)``: float (B, 2, h, w) offsets ``p* − c(u)`` in pixels (x, y) and bool (B, h, w), True
        on cells of a person that has a used joint.
    """
    b, height, width = instances.shape
    h, w = grid or (math.ceil(height / stride), math.ceil(width / stride))
    device = instances.device
    ids = grid_labels(instances, (h, w), stride).reshape(b, -1)  # (B, hw)
    xy, used = pad_keypoints(keypoints, min_visibility, device)  # (B, N, K, 2), (B, N, K)
    n, k = xy.shape[1:3]
    joint_xy = xy.reshape(b, n * k, 2)
    joint_id = (torch.arange(n, device=device) + 1).repeat_interleave(k)[None].expand(b, -1)  # person of each joint
    joint_ok = used.reshape(b, n * k)
    centres = cell_centres(h, w, stride, device).reshape(1, -1, 2)  # (1, hw, 2)
    offsets = torch.zeros(b, h * w, 2, device=device)
    weight = torch.zeros(b, h * w, dtype=torch.bool, device=device)
    if n * k:
        d2 = ((joint_xy[:, None] - centres[:, :, None]) ** 2).sum(-1)  # (B, hw, J)
        mine = (joint_id[:, None, :] == ids[:, :, None]) & joint_ok[:, None, :]
        d2 = d2.masked_fill(~mine, math.inf)
        best, index = d2.min(-1)
        weight = torch.isfinite(best) & (ids > 0)
        nearest = joint_xy.gather(1, index[..., None].expand(-1, -1, 2))
        offsets = torch.where(weight[..., None], nearest - centres, offsets)
    return offsets.view(b, h, w, 2).permute(0, 3, 1, 2), weight.view(b, h, w)


def keypoint_targets(keypoints: Sequence[torch.Tensor], grid: tuple[int, int], stride: int, radius: float,
                     min_visibility: int = 2, num_keypoints: int | None = None,
                     device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Disk heatmaps and short-range offsets (§3.3).

    Returns:
        ``(disks, offsets)``: float (B, K, h, w) in {0, 1}, and float (B, K, 2, h, w) offsets in pixels from each cell
        centre to the nearest used joint of each type (meaningful inside the disks only).
    """
    h, w = grid
    xy, used = pad_keypoints(keypoints, min_visibility, device)
    b, n, k = used.shape
    k = k if num_keypoints is None else num_keypoints
    device = xy.device
    centres = cell_centres(h, w, stride, device).reshape(1, 1, -1, 1, 2)  # (1, 1, hw, 1, 2)
    disks = torch.zeros(b, k, h * w, device=device)
    offsets = torch.zeros(b, k, h * w, 2, device=device)
    if n and used.shape[2]:
        joints = xy.permute(0, 2, 1, 3)[:, :, None]  # (B, K, 1, N, 2)
        d2 = ((joints - centres) ** 2).sum(-1).masked_fill(~used.permute(0, 2, 1)[:, :, None], math.inf)  # (B,K,hw,N)
        best, index = d2.min(-1)
        disks = (best <= radius * radius).float()
        nearest = joints.expand(-1, -1, h * w, -1, -1).gather(3, index[..., None, None].expand(-1, -1, -1, 1, 2))
        offsets = nearest[:, :, :, 0] - centres[:, :, :, 0]
        offsets = offsets * disks[..., None]
    return disks.view(b, k, h, w), offsets.view(b, k, h, w, 2).permute(0, 1, 4, 2, 3)


def limb_targets(keypoints: Sequence[torch.Tensor], limbs: Sequence[tuple[int, int]], grid: tuple[int, int],
                 stride: int, sigma: float, min_visibility: int = 2, device=None) -> torch.Tensor:
    """Limb heatmaps (§3.3): per skeleton edge, the Gaussian of the distance to the nearest true limb segment.

    Returns:
        float (B, E, h, w) in [0, 1].
    """
    h, w = grid
    xy, used = pad_keypoints(keypoints, min_visibility, device)
    b, n = used.shape[:2]
    device = xy.device
    out = torch.zeros(b, len(limbs), h * w, device=device)
    if n == 0 or not limbs or used.shape[2] == 0:
        return out.view(b, len(limbs), h, w)
    a_idx = torch.tensor([a for a, _ in limbs], device=device)
    b_idx = torch.tensor([c for _, c in limbs], device=device)
    pa, pb = xy[:, :, a_idx], xy[:, :, b_idx]  # (B, N, E, 2)
    ok = used[:, :, a_idx] & used[:, :, b_idx]  # (B, N, E)
    centres = cell_centres(h, w, stride, device).reshape(1, 1, 1, -1, 2)
    seg = (pb - pa)[..., None, :]  # (B, N, E, 1, 2)
    rel = centres - pa[..., None, :]  # (B, N, E, hw, 2)
    t = ((rel * seg).sum(-1) / (seg * seg).sum(-1).clamp_min(1e-6)).clamp(0, 1)
    d2 = ((rel - t[..., None] * seg) ** 2).sum(-1)
    heat = torch.exp(-d2 / (2 * sigma * sigma)) * ok[..., None]
    return heat.amax(1).view(b, len(limbs), h, w)


def limb_flip_permutation(limbs: Sequence[tuple[int, int]], keypoint_permutation: Sequence[int]) -> tuple[int, ...]:
    """Limb ``e`` becomes limb ``perm[e]`` under a horizontal flip (its endpoints' left/right swapped)."""
    index = {frozenset(limb): e for e, limb in enumerate(limbs)}
    out = []
    for a, b in limbs:
        key = frozenset((keypoint_permutation[a], keypoint_permutation[b]))
        if key not in index:
            raise ValueError(f"limb ({a}, {b}) has no mirror ({keypoint_permutation[a]}, {keypoint_permutation[b]}) "
                             "in the skeleton")
        out.append(index[key])
    return tuple(out)


def dense_skeleton(skeleton: Sequence[tuple[int, int]], num_keypoints: int) -> tuple[tuple[int, int], ...]:
    """The skeleton plus every pair of joints two limbs apart (shoulder-wrist, hip-ankle, ...), in that order.

    Bottom-up grouping along the skeleton alone breaks a person in two wherever a middle joint is not detected (an
    occluded elbow separates the wrist from the body). The released code scores a denser limb set for the same
    reason (OpenPifPaf's ``caf25``); ours is defined by one rule, so it exists for every keypoint set and is closed
    under the left/right flip. The extra limbs get their own heatmaps and are matched like the others.
    """
    edges = [tuple(e) for e in skeleton]
    seen = {frozenset(e) for e in edges}
    neighbours: dict[int, set[int]] = {j: set() for j in range(num_keypoints)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    extra = []
    for a in range(num_keypoints):
        for middle in sorted(neighbours[a]):
            for b in sorted(neighbours[middle]):
                if b > a and frozenset((a, b)) not in seen:
                    seen.add(frozenset((a, b)))
                    extra.append((a, b))
    return tuple(edges) + tuple(extra)


def skeleton_order(limbs: Sequence[tuple[int, int]], num_keypoints: int, root: int,
                   num_primary: int | None = None) -> list[tuple[int, int, int]]:
    """Limbs oriented and ordered "from head to foot" (§3.3): breadth-first from ``root``.

    Returns ``(limb index, parent joint, child joint)`` for every limb, sorted by the depth of its shallower end
    (ties: limb order), the first ``num_primary`` limbs (the skeleton; default all) before the rest (the extra limbs
    of :func:`dense_skeleton`, which bridge gaps). Depths are measured on the primary limbs. Limbs that close a cycle
    (COCO's face triangle, shoulders-hips) are kept; the grouping merges along them only when that does not give a
    person two joints of one type.
    """
    primary = list(limbs[:num_primary] if num_primary is not None else limbs)
    depth = {root: 0}
    frontier = [root]
    while frontier:
        nxt = []
        for j in frontier:
            for a, b in primary:
                for u, v in ((a, b), (b, a)):
                    if u == j and v not in depth:
                        depth[v] = depth[j] + 1
                        nxt.append(v)
        frontier = nxt
    far = num_keypoints + 1
    order = []
    for e, (a, b) in enumerate(limbs):
        da, db = depth.get(a, far), depth.get(b, far)
        parent, child = (a, b) if da <= db else (b, a)
        order.append((e >= len(primary), min(da, db), e, parent, child))
    return [(e, p, c) for _, _, e, p, c in sorted(order)]


def label_candidates(candidates: torch.Tensor, valid: torch.Tensor, joints: torch.Tensor, used: torch.Tensor,
                     radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which person each keypoint candidate stands for (module docstring, "Candidates of the matching loss").

    Candidate ``n`` of type ``k`` is labelled ``p + 1`` when the used joint of type ``k`` nearest to it is person
    ``p``'s, lies within ``radius``, and no other candidate of that type is nearer to it; else 0. Batched over images
    and types, no loop.

    Args:
        candidates: (B, K, N, 2) positions in pixels. valid: (B, K, N) bool, real candidates.
        joints: (B, P, K, 2) ground-truth joints in pixels. used: (B, P, K) bool (:func:`pad_keypoints`).
        radius: the largest distance at which a candidate stands for a joint, in pixels.

    Returns:
        ``(labels, covered)``: int64 (B, K, N) in 0..P, and bool (B, K, P), True where a candidate stands for the joint.
    """
    b, k, n = valid.shape
    p = joints.shape[1]
    if n == 0 or p == 0:
        return (torch.zeros(b, k, n, dtype=torch.int64, device=valid.device),
                torch.zeros(b, k, p, dtype=torch.bool, device=valid.device))
    gt = joints.permute(0, 2, 1, 3)  # (B, K, P, 2)
    d2 = ((candidates.detach()[:, :, :, None] - gt[:, :, None]) ** 2).sum(-1)  # (B, K, N, P)
    ok = valid[..., None] & used.permute(0, 2, 1)[:, :, None] & (d2 <= radius * radius)
    d2 = d2.masked_fill(~ok, math.inf)
    nearest_d2, nearest = d2.min(-1)  # each candidate's nearest joint
    mine = F.one_hot(nearest, p).bool() & torch.isfinite(nearest_d2)[..., None]  # (B, K, N, P)
    best_d2, winner = d2.masked_fill(~mine, math.inf).min(2)  # each joint's nearest candidate among those
    covered = torch.isfinite(best_d2)  # (B, K, P)
    wins = (torch.arange(n, device=valid.device)[None, None, :, None] == winner[:, :, None]) & covered[:, :, None]
    labels = (wins.long() * torch.arange(1, p + 1, device=valid.device)).sum(-1)
    return labels, covered


def assignment_targets(labels: torch.Tensor, valid: torch.Tensor, limbs: Sequence[tuple[int, int]]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth assignment matrices of every limb type (§3.3): candidates of the same person are connected.

    Args:
        labels: (B, K, N) person labels of :func:`label_candidates` (0: no person). valid: (B, K, N) bool.
        limbs: the E ``(a, b)`` joint types.

    Returns:
        ``(target, mask)``: float (B, E, N, N) in {0, 1}, 1 where candidate ``i`` of type ``a`` and candidate ``j`` of
        type ``b`` belong to the same person; bool (B, E, N, N), both candidates real.
    """
    a = torch.tensor([x for x, _ in limbs], dtype=torch.long, device=labels.device)
    c = torch.tensor([y for _, y in limbs], dtype=torch.long, device=labels.device)
    la, lb = labels[:, a, :, None], labels[:, c, None, :]
    mask = valid[:, a, :, None] & valid[:, c, None, :]
    return ((la == lb) & (la > 0) & mask).float(), mask


# ------------------------------------------------------------------------------------------------------ losses


def semantic_loss(logits: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """Eq. 1's cross-entropy at input resolution (§3.4): stride-4 logits bilinearly upsampled to the (padded) label
    map, ignore 255 (padding is 255 too)."""
    up = F.interpolate(logits.float(), size=semantic.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, semantic, ignore_index=IGNORE_INDEX)


def dspf_loss(levels: Sequence[torch.Tensor], strides: Sequence[int], target: torch.Tensor, weight: torch.Tensor,
              unit: float) -> torch.Tensor:
    """L1 DSPF loss at every pyramid level (§3.2, §3.4), averaged over levels.

    Each level's prediction (cells of its level) is turned into pixels (× its stride), bilinearly resampled to the
    stride-4 target grid and compared on the weighted cells; the L1 distance (x plus y) is divided by ``unit`` (the
    disk radius in pixels, so the loss does not grow with the image size). A batch without a weighted cell gives
    ``0 * prediction`` (zero, connected to the graph).
    """
    grid = target.shape[-2:]
    mask = weight[:, None].float()
    count = mask.sum().clamp_min(1)
    total = 0.0
    for pred, stride in zip(levels, strides):
        pixels = pred.float() * stride
        if pixels.shape[-2:] != grid:
            pixels = F.interpolate(pixels, size=grid, mode="bilinear", align_corners=False)
        total = total + ((pixels - target).abs() * mask).sum() / count / unit
    return total / len(levels)


def disk_loss(logits: torch.Tensor, disks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the disk heatmaps (§3.4, "cross-entropy ... for confidence maps")."""
    return F.binary_cross_entropy_with_logits(logits.float(), disks)


def offset_loss(pred: torch.Tensor, target: torch.Tensor, disks: torch.Tensor, unit: float) -> torch.Tensor:
    """L1 on the short-range offsets inside the disks, in units of ``R`` (PersonLab's normalisation).

    pred, target: (B, K, 2, h, w) pixels; disks: (B, K, h, w)."""
    mask = disks[:, :, None]
    return ((pred.float() - target).abs() * mask).sum() / mask.sum().clamp_min(1) / unit


def limb_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against the soft limb heatmaps (§3.4)."""
    return F.binary_cross_entropy_with_logits(logits.float(), heat)
