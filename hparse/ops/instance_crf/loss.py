"""The permutation-invariant loss of the Instance CRF (Li, Arnab & Torr, BMVC 2017, §3.3, Eq. 4) with OHEM.

Detections come in no particular order, so the ground truth is matched to the prediction before the cross-entropy:
Eq. 4 takes the permutation of the ground truth's instance identities that maximises its IoU with the prediction
(:func:`match_segments`, person level by default: all parts of one person follow one detection and keep their own
label; only a person no detection takes goes to background), relabels the ground truth accordingly, and takes the
cross-entropy over the K hardest pixels of the mini-batch (:mod:`hparse.ops.ohem`; the paper: K = 2^15).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..ohem import ohem_reduce
from .outputs import num_detections as _num_detections
from .potentials import _first_bad, boxes_to_masks, crf_channel

__all__ = ["SegmentMatching", "match_segments", "hungarian_matched_loss"]


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
