"""AP^p and PCP: is each predicted *person* a correct parse of one ground-truth person?

Defined by the MHP benchmark (Li et al. 2017, Zhao et al. 2018) and used by Parsing R-CNN (Yang et al. CVPR
2019, §4.2 "Metrics and Baseline": AP^p_50, AP^p_vol and PCP_50 on CIHP and MHP v2). The rules below are those of
the official code, recorded in ``shared/reference/metrics_and_formats.md`` §A2 and checked against MHP v2
``Evaluation/Multi-Human-Parsing/v2/eval_mhp.py`` (``eval_seg_ap``, ``cal_one_mean_iou``) and Parsing R-CNN
``utils/data/evaluation/parsing_eval.py`` (``eval_parsing_ap``):

1. **Per-person IoU** (§A2 step 3). For a predicted person d and a ground-truth person g of the same image, an
   ``n x n`` confusion matrix is built over the *whole image* between d's part map and g's part map
   (``semantic * (instances == g)``, ground-truth values >= n dropped). Per-class IoU as in mIoU; the person's
   mean IoU is ``nanmean`` over the classes present in either map, **background included** (it spans nearly the
   whole image, so it is close to 1 and lifts the mean, most for persons with few parts).
2. **Best ground truth**: the largest mean IoU; strict ``>`` while scanning, so the first of equal ones wins.
3. **Greedy one-to-one matching** (§A2 step 4), predictions in descending score order: at threshold t the
   prediction is a TP if ``ovmax > t`` (strict) and its best GT is not yet matched at t; if that GT is taken it is
   an FP, **without falling back** to the second-best GT; no GT in the image or ``ovmax <= t``: FP.
4. **AP** (§A2 step 5): recall = cumTP / npos over all annotated persons, VOC all-point area
   (:func:`hparse.metrics.ap.voc_ap`). Thresholds 0.1..0.9; ``APp50`` at 0.5, ``APpvol`` the mean of the nine.
5. **PCP** (§A2 step 7), only for a TP at t: ``pcp_n / pcp_d`` with ``pcp_d`` the number of part labels
   (1..n-1) the matched GT person has and ``pcp_n`` the classes 1..n-1 whose IoU > t (the same t). PCP_t is their
   sum over TPs divided by npos (the official code pads the list with zeros up to npos), so missed persons count 0
   and false positives do not count. Headline ``PCP50``.
6. **Scores**: predictions scored below ``score_thresh`` (Parsing R-CNN ``PRCNN.SCORE_THRESH`` = 0.001) are
   neither TP nor FP (§A5).

Options for the two official variants: ``skip_empty_gt=False`` counts every annotated person in npos (Parsing
R-CNN counts every json annotation); ``skip_empty_gt=True`` drops GT persons whose part map has no nonzero pixel
(MHP ``get_gt``: ``if np.sum(mask_gt > 0) == 0: continue``).

Our choices where the official code is silent: ignore pixels (255) inside person g stay 255 in g's part map (the
DESIGN formula ``semantic * (instances == g)``) and are dropped from the (d, g) confusion matrix exactly as
``fast_hist`` drops GT >= n; ignore pixels outside g are background of g. Matching happens at ``update`` time: a
prediction only ever competes with predictions of its own image, and a stable descending sort of all scores visits
each image's predictions in the same order as the per-image sort, so the result equals the official global loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ap import THRESHOLDS, average_precision, rank_by_score, threshold_key
from .checks import check_ground_truth, check_persons
from .painting import PersonPixels, person_pixels

__all__ = ["PersonIoU", "person_part_iou", "match_persons", "PartAP"]


@dataclass
class PersonIoU:
    """IoUs of every predicted person (D) against every ground-truth person (G) of one image.

    Attributes:
        class_iou: (D, G, n) float64 per-class IoU; NaN where the class is in neither map.
        mean_iou: (D, G) float64 ``nanmean`` of ``class_iou`` over classes (background included).
        gt_parts: (G,) int64 number of part labels 1..n-1 present in each GT person (PCP denominator).
        gt_nonempty: (G,) bool, the GT part map has a nonzero pixel (MHP's test for keeping a GT person).
    """

    class_iou: np.ndarray
    mean_iou: np.ndarray
    gt_parts: np.ndarray
    gt_nonempty: np.ndarray


def _bincount(keys: torch.Tensor, size: int) -> np.ndarray:
    return torch.bincount(keys, minlength=size).cpu().numpy().astype(np.float64)


def person_part_iou(pixels: PersonPixels, gt_semantic: torch.Tensor, gt_instances: torch.Tensor, num_gt: int,
                    num_classes: int) -> PersonIoU:
    """Per-class and mean IoU of all predicted x ground-truth persons of one image in one vectorised pass.

    The official code builds one ``n x n`` confusion matrix per (prediction, GT) pair over the whole image
    (``cal_one_mean_iou``); only its diagonal and margins enter the IoU, so we count those directly. With
    ``L_g = semantic * (instances == g)`` (values >= n dropped) and ``P_d`` the prediction:

    - ``inter[d, g, c >= 1]``: pixels of person g labelled c that d labels c (one bincount over d's foreground);
    - ``inter[d, g, 0] = #(P_d == 0) - #(P_d == 0, instances == g, semantic != 0)``: every pixel outside g is
      background of g;
    - ``area_pred[d, g, c] = #(P_d == c) - #(P_d == c on g's dropped pixels)``;
    - ``area_gt[g, c]`` from one histogram of (instances, semantic).

    So the cost is one pass over the image plus one over the predicted foreground, never D x G x H x W.

    Args:
        pixels: foreground pixels of D predicted persons (:func:`hparse.metrics.painting.person_pixels`).
        gt_semantic: (H, W) part labels 0..n-1; anything else (255) is dropped.
        gt_instances: (H, W) person ids 0..G.
        num_gt: G, the number of annotated persons.
        num_classes: n, including background.
    """
    n, num_pred, size = num_classes, pixels.num_persons, pixels.num_pixels
    device = pixels.pixel.device
    sem = gt_semantic.reshape(-1).to(device).long()
    inst = gt_instances.reshape(-1).to(device).long()
    # Column n collects dropped ground truth (the ignore label): those pixels are not part of g's map.
    s = torch.where((sem >= 0) & (sem < n), sem, torch.full_like(sem, n))
    hist_gt = _bincount(inst * (n + 1) + s, (num_gt + 1) * (n + 1)).reshape(num_gt + 1, n + 1)[1:]  # (G, n+1)

    d, c = pixels.person, pixels.label
    gi, sp = inst[pixels.pixel], s[pixels.pixel]
    area_fg = _bincount(d * n + c, num_pred * n).reshape(num_pred, n)
    pair = (d * (num_gt + 1) + gi) * n + c
    inter_fg = _bincount(pair[sp == c], num_pred * (num_gt + 1) * n).reshape(num_pred, num_gt + 1, n)[:, 1:]
    dropped_fg = _bincount(pair[sp == n], num_pred * (num_gt + 1) * n).reshape(num_pred, num_gt + 1, n)[:, 1:]
    # #(P_d != 0 on pixels of g that are not background of g): turns #(P_d == 0) into the background intersection.
    fg_on_g = _bincount((d * (num_gt + 1) + gi)[sp != 0], num_pred * (num_gt + 1)).reshape(num_pred, num_gt + 1)[:, 1:]

    dropped_gt = hist_gt[:, n]  # (G,)
    area_gt = hist_gt[:, :n].copy()  # (G, n)
    area_gt[:, 0] = size - dropped_gt - hist_gt[:, 1:n].sum(1)
    area_pred = area_fg.copy()  # (D, n)
    area_pred[:, 0] = size - area_fg[:, 1:].sum(1)

    dropped = dropped_fg.copy()  # (D, G, n): d's labels on g's dropped pixels
    dropped[:, :, 0] = dropped_gt[None, :] - dropped_fg[:, :, 1:].sum(2)
    inter = inter_fg.copy()  # (D, G, n)
    inter[:, :, 0] = area_pred[:, 0, None] - (hist_gt[:, 1:].sum(1)[None, :] - fg_on_g)
    union = (area_pred[:, None, :] - dropped) + area_gt[None, :, :] - inter

    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        class_iou = np.where(present, inter / np.where(present, union, 1.0), np.nan)
        # nanmean written out: the sum of the present classes over their count (NaN when none is present).
        mean_iou = np.where(present, class_iou, 0.0).sum(-1) / present.sum(-1)
    return PersonIoU(
        class_iou=class_iou,
        mean_iou=mean_iou,
        gt_parts=(hist_gt[:, 1:n] > 0).sum(1).astype(np.int64),
        gt_nonempty=hist_gt[:, 1:].sum(1) > 0,
    )


def match_persons(ious: PersonIoU, scores: np.ndarray, thresholds=THRESHOLDS,
                  candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one image's predictions, per threshold; PCP of each true positive.

    Follows ``eval_parsing_ap`` / ``eval_seg_ap`` (§A2 steps 2-4, 7): predictions in descending score order (ties:
    input order); each takes the GT with the largest mean IoU (first on ties; NaN never wins); TP at t iff
    ``ovmax > t`` and that GT is still free at t, otherwise FP with no fallback to another GT.

    Args:
        ious: the image's :class:`PersonIoU` (D predictions x G ground truths).
        scores: (D,) prediction scores.
        thresholds: (T,) IoU thresholds.
        candidates: (G,) bool, the GT persons that take part (all when None).

    Returns:
        ``tp`` (D, T) bool and ``pcp`` (D, T) float64 (``pcp_n / pcp_d`` where TP, else 0), in input order.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    num_pred, num_gt = ious.mean_iou.shape
    tp = np.zeros((num_pred, thr.size), dtype=bool)
    pcp = np.zeros((num_pred, thr.size), dtype=np.float64)
    mean_iou = np.where(np.isnan(ious.mean_iou), -np.inf, ious.mean_iou)
    if candidates is not None:
        mean_iou = np.where(candidates[None, :], mean_iou, -np.inf)
    if num_gt == 0:
        return tp, pcp
    taken = np.zeros((thr.size, num_gt), dtype=bool)
    for d in rank_by_score(scores):
        best = int(np.argmax(mean_iou[d]))  # first maximum, as the strict '>' scan of the official loop
        ovmax = mean_iou[d, best]
        if ovmax == -np.inf:
            continue  # no (kept) GT person in the image: an FP at every threshold
        new = (ovmax > thr) & ~taken[:, best]
        taken[:, best] |= new
        tp[d] = new
        if ious.gt_parts[best] > 0:
            # NaN > t is False: a class in neither map is never a correctly parsed part.
            with np.errstate(invalid="ignore"):
                correct = (ious.class_iou[d, best, 1:, None] > thr[None, :]).sum(0)
            pcp[d] = np.where(new, correct / ious.gt_parts[best], 0.0)
    return tp, pcp


class PartAP:
    """Accumulates AP^p and PCP over a split (see the module docstring for the rules).

    Args:
        num_classes: n, including background.
        thresholds: IoU thresholds (default 0.1..0.9, the official ones).
        score_thresh: predictions scored below it are skipped, neither TP nor FP (Parsing R-CNN: 0.001).
        skip_empty_gt: drop GT persons without any nonzero pixel (MHP v2) instead of counting them (Parsing R-CNN).
        ignore_index: the ground-truth ignore label (accepted by the input check; dropped like any label >= n).
    """

    def __init__(self, num_classes: int, thresholds=THRESHOLDS, score_thresh: float = 0.001,
                 skip_empty_gt: bool = False, ignore_index: int = 255):
        self.num_classes = num_classes
        self.thresholds = tuple(float(t) for t in thresholds)
        self.score_thresh = float(score_thresh)
        self.skip_empty_gt = skip_empty_gt
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._tp: list[np.ndarray] = []
        self._pcp: list[np.ndarray] = []
        self.num_gt = 0  # the official npos
        self.num_images = 0

    def update(self, person_parts: torch.Tensor, person_scores: torch.Tensor, gt_semantic: torch.Tensor,
               gt_instances: torch.Tensor, num_gt: int | None = None, image_id: str | None = None) -> None:
        """Add one image.

        Args:
            person_parts: (D, H, W) integer part map of each predicted person (0 = not this person).
            person_scores: (D,) scores.
            gt_semantic: (H, W) ground-truth part labels (ignore label allowed).
            gt_instances: (H, W) ground-truth person ids 0..G.
            num_gt: G, the number of annotated persons (default: the largest id in ``gt_instances``).
            image_id: name used in error messages.
        """
        where = f"image {image_id!r}" if image_id is not None else f"image #{self.num_images}"
        if num_gt is None:
            num_gt = int(gt_instances.max()) if gt_instances.numel() else 0
        check_ground_truth(gt_semantic, gt_instances, self.num_classes, self.ignore_index, num_gt, where)
        check_persons(person_parts, person_scores, self.num_classes, gt_semantic.shape, where)
        self.update_pixels(person_pixels(person_parts), person_scores, gt_semantic, gt_instances, num_gt)

    def update_pixels(self, pixels: PersonPixels, person_scores: torch.Tensor, gt_semantic: torch.Tensor,
                      gt_instances: torch.Tensor, num_gt: int) -> None:
        """:meth:`update` on already checked input, with the prediction given as pixel lists."""
        scores = person_scores.detach().double().cpu().numpy()
        keep = scores >= self.score_thresh
        if not keep.all():
            keep_t = torch.as_tensor(keep, device=pixels.person.device)
            remap = torch.cumsum(keep_t.long(), 0) - 1
            pixels = pixels.select(keep_t[pixels.person])
            pixels = PersonPixels(remap[pixels.person], pixels.pixel, pixels.label, int(keep.sum()), pixels.shape)
            scores = scores[keep]
        ious = person_part_iou(pixels, gt_semantic, gt_instances, num_gt, self.num_classes)
        candidates = ious.gt_nonempty if self.skip_empty_gt else None
        tp, pcp = match_persons(ious, scores, self.thresholds, candidates)
        self._scores.append(scores)
        self._tp.append(tp)
        self._pcp.append(pcp)
        self.num_gt += int(ious.gt_nonempty.sum()) if self.skip_empty_gt else num_gt
        self.num_images += 1

    def compute(self) -> dict:
        """``APp10`` .. ``APp90``, ``APpvol`` (mean over thresholds), ``PCP10`` .. ``PCP90``.

        As the tail of ``eval_parsing_ap``: cumulative TP/FP over all images' predictions by descending score,
        ``rec = tp / npos``, ``prec = tp / max(tp + fp, eps)``, ``voc_ap``; PCP the per-TP list padded with zeros to
        npos, averaged (§A2 steps 5-7). ``APpvol`` is ``np.mean`` of the nine APs (§A2 step 6).

        Edge cases follow the official arithmetic: no prediction at all gives AP 0; predictions without any GT
        person give NaN (recall 0/0); PCP is NaN without GT persons (0/0).
        """
        num_t = len(self.thresholds)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, num_t), dtype=bool)
        pcp = np.concatenate(self._pcp) if self._pcp else np.zeros((0, num_t))
        order = rank_by_score(scores)
        result: dict = {}
        aps = []
        for k, t in enumerate(self.thresholds):
            ap = average_precision(tp[order, k].astype(np.float64), self.num_gt, "voc")
            aps.append(ap)
            result[threshold_key("APp", t)] = ap
        result["APpvol"] = float(np.mean(aps)) if aps else float("nan")
        for k, t in enumerate(self.thresholds):
            result[threshold_key("PCP", t)] = float(pcp[:, k].sum() / self.num_gt) if self.num_gt else float("nan")
        return result
