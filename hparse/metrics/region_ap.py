"""AP^r: average precision over part *regions*, a region being one (person, part class) segment.

The "SDS-style" region AP of Hariharan et al., used for instance-level human parsing by Li, Arnab & Torr (BMVC 2017,
§4.1: "a prediction is considered correct if its IoU with a ground-truth instance is above a certain threshold";
AP^r_vol the mean over thresholds 0.1..0.9) and by the CIHP benchmark (Gong et al. 2018). The rules are those of the
official CIHP script, ``CIHP_PGN/evaluation/test_inst_part_ap.py`` (``compute_class_ap``), recorded in
``shared/reference/metrics_and_formats.md`` §A3 and §A5:

1. **Regions.** Ground truth: for each person g and class c in 1..n-1 the pixels with ``instances == g`` and
   ``semantic == c`` (non-empty). Prediction: the CIHP format stores one indexed PNG per image, so predicted regions
   cannot overlap; overlapping per-person maps are first **painted** by ascending score, highest score winning
   (:func:`hparse.metrics.painting.paint_persons`, §A5), then every non-empty (person, class) region of the painted
   map is one predicted region. Without painting, duplicates of one part would become extra true positives.
2. **Score** of a region: ``part_scores[person, c]`` when the prediction has part scores, else the person's score.
3. **Many-to-one matching.** A class-c region takes the *largest* IoU over all class-c GT regions of its image
   (binary masks over the whole image); it is a TP at t iff that IoU > t (strict). There is **no** one-to-one
   assignment: two predictions may both be TPs on the same GT region (recall can exceed 1). No class-c GT in the
   image: FP.
4. **AP per class**: regions of class c over the split ranked by score, recall = cumTP / #class-c GT regions,
   ``ap_style="voc"`` all-point area (PGN, default) or ``"uninterpolated"`` (Oxford TVG ``compute_mAP.m``).
5. **Class mean**: ``class_mean="mean"`` is ``np.mean`` over exactly the classes 1..n-1 (PGN): a class with
   predictions but no GT is NaN and makes the mean NaN; a class absent everywhere contributes 0.
   ``class_mean="nanmean"`` skips NaN classes (MG-HumanParsing, QANet). ``APrvol`` = mean over the thresholds.

``ignore_void=True`` (Oxford TVG ``compute_overlaps.m``) removes predicted pixels whose ground truth is the ignore
label before any IoU; the set of predicted regions is taken *before* that removal, as TVG lists labels before
masking. The PGN default does not look at the ignore label. Every image passed to ``update`` counts, with its
GT regions (the official script scores the images that have a prediction file; an empty prediction is an image
with no regions).
"""

from __future__ import annotations

import numpy as np
import torch

from .ap import THRESHOLDS, average_precision, rank_by_score, threshold_key
from .checks import check_ground_truth, check_persons
from .painting import PersonPixels, paint_persons, person_pixels

__all__ = ["part_region_iou", "RegionAP"]


def _bincount(keys: torch.Tensor, size: int) -> np.ndarray:
    return torch.bincount(keys, minlength=size).cpu().numpy().astype(np.float64)


def part_region_iou(painted: PersonPixels, gt_semantic: torch.Tensor, gt_instances: torch.Tensor, num_gt: int,
                    num_classes: int, ignore_void: bool = False,
                    ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best IoU of every predicted part region against the GT regions of its class, in one vectorised pass.

    The CIHP script (``compute_class_ap``, ``compute_mask_overlaps``; §A3) compares binary masks one GT at a time
    and keeps ``max`` over the class's GT instances (``np.argmax(overlaps, axis=1)``). Painted regions are disjoint
    and so are GT regions, so all intersections come from one bincount over the painted pixels keyed by (predicted
    person, GT person, class) where the predicted and GT classes agree.

    Args:
        painted: painted (non-overlapping) foreground pixels of D predicted persons.
        gt_semantic: (H, W) ground-truth part labels (``ignore_index`` allowed).
        gt_instances: (H, W) ground-truth person ids 0..G.
        num_gt: G.
        num_classes: n, including background.
        ignore_void: drop predicted pixels on ``ignore_index`` ground truth before the IoU (TVG).
        ignore_index: the ground-truth ignore label.

    Returns:
        ``person`` (R,), ``label`` (R,) of each predicted region (ordered by person, then class), ``best_iou`` (R,)
        float64 (0 when the image has no GT region of that class), and ``num_gt_regions`` (n,) int64 GT regions per
        class in this image (index 0 unused, always 0).
    """
    n, num_pred = num_classes, painted.num_persons
    device = painted.pixel.device
    sem = gt_semantic.reshape(-1).to(device).long()
    inst = gt_instances.reshape(-1).to(device).long()
    s = torch.where((sem >= 0) & (sem < n), sem, torch.full_like(sem, n))
    gt_area = _bincount(inst * (n + 1) + s, (num_gt + 1) * (n + 1)).reshape(num_gt + 1, n + 1)[1:, :n]  # (G, n)
    gt_area[:, 0] = 0  # background is not a region
    num_gt_regions = (gt_area > 0).sum(0).astype(np.int64)

    # The predicted regions exist before the void removal (TVG lists the labels first).
    region_area = _bincount(painted.person * n + painted.label, num_pred * n).reshape(num_pred, n)
    person, label = np.nonzero(region_area > 0)
    if ignore_void:
        painted = painted.select(sem[painted.pixel] != ignore_index)
    d, c = painted.person, painted.label
    gi, sp = inst[painted.pixel], s[painted.pixel]
    pred_area = _bincount(d * n + c, num_pred * n).reshape(num_pred, n)
    agree = (sp == c) & (gi >= 1)
    inter = _bincount(((d * (num_gt + 1) + gi) * n + c)[agree], num_pred * (num_gt + 1) * n)
    inter = inter.reshape(num_pred, num_gt + 1, n)[:, 1:]  # (D, G, n)
    union = pred_area[:, None, :] + gt_area[None, :, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where((gt_area[None] > 0) & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)
    best = iou.max(axis=1) if num_gt > 0 else np.zeros((num_pred, n))  # (D, n)
    return person, label, best[person, label], num_gt_regions


class RegionAP:
    """Accumulates AP^r over a split (see the module docstring for the rules).

    Args:
        num_classes: n, including background (regions are classes 1..n-1).
        thresholds: IoU thresholds (default 0.1..0.9).
        ap_style: ``"voc"`` (PGN, default) or ``"uninterpolated"`` (Oxford TVG).
        class_mean: ``"mean"`` (PGN ``np.mean``, default) or ``"nanmean"`` (MG, QANet).
        ignore_void: drop predicted pixels on ignore-label ground truth (TVG) before the IoU.
        paint_score_thresh: persons scored below it are not painted (None: all are; Parsing R-CNN's writer uses
            its semantic threshold, 0.3 CIHP / 0.05 MHP).
        ignore_index: the ground-truth ignore label.
        class_names: optional n names; :meth:`compute` then also returns ``APr50/<name>`` keys.
    """

    def __init__(self, num_classes: int, thresholds=THRESHOLDS, ap_style: str = "voc", class_mean: str = "mean",
                 ignore_void: bool = False, paint_score_thresh: float | None = None, ignore_index: int = 255,
                 class_names: list[str] | tuple[str, ...] | None = None):
        if ap_style not in ("voc", "uninterpolated"):
            raise ValueError(f"ap_style must be 'voc' or 'uninterpolated', got {ap_style!r}")
        if class_mean not in ("mean", "nanmean"):
            raise ValueError(f"class_mean must be 'mean' or 'nanmean', got {class_mean!r}")
        self.num_classes = num_classes
        self.thresholds = tuple(float(t) for t in thresholds)
        self.ap_style = ap_style
        self.class_mean = class_mean
        self.ignore_void = ignore_void
        self.paint_score_thresh = paint_score_thresh
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else None
        self.reset()

    def reset(self) -> None:
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._ious: list[np.ndarray] = []
        self.num_gt_regions = np.zeros(self.num_classes, dtype=np.int64)
        self.num_images = 0

    def update(self, person_parts: torch.Tensor, person_scores: torch.Tensor, gt_semantic: torch.Tensor,
               gt_instances: torch.Tensor, part_scores: torch.Tensor | None = None, num_gt: int | None = None,
               image_id: str | None = None) -> None:
        """Add one image.

        Args:
            person_parts: (D, H, W) integer part map of each predicted person; persons may overlap.
            person_scores: (D,) scores (painting order, and region scores without ``part_scores``).
            gt_semantic: (H, W) ground-truth part labels.
            gt_instances: (H, W) ground-truth person ids 0..G.
            part_scores: optional (D, n) score of each (person, class) region.
            num_gt: G (default: the largest id in ``gt_instances``).
            image_id: name used in error messages.
        """
        where = f"image {image_id!r}" if image_id is not None else f"image #{self.num_images}"
        if num_gt is None:
            num_gt = int(gt_instances.max()) if gt_instances.numel() else 0
        check_ground_truth(gt_semantic, gt_instances, self.num_classes, self.ignore_index, num_gt, where)
        check_persons(person_parts, person_scores, self.num_classes, gt_semantic.shape, where, part_scores)
        self.update_pixels(person_pixels(person_parts), person_scores, gt_semantic, gt_instances, num_gt, part_scores)

    def update_pixels(self, pixels: PersonPixels, person_scores: torch.Tensor, gt_semantic: torch.Tensor,
                      gt_instances: torch.Tensor, num_gt: int, part_scores: torch.Tensor | None = None) -> None:
        """:meth:`update` on already checked input, with the prediction given as pixel lists."""
        painted = paint_persons(pixels, person_scores, self.paint_score_thresh)
        person, label, best, num_regions = part_region_iou(painted, gt_semantic, gt_instances, num_gt,
                                                           self.num_classes, self.ignore_void, self.ignore_index)
        if part_scores is not None:
            scores = part_scores.detach().double().cpu().numpy()[person, label]
        else:
            scores = person_scores.detach().double().cpu().numpy()[person]
        self._labels.append(label.astype(np.int64))
        self._scores.append(scores.astype(np.float64))
        self._ious.append(best)
        self.num_gt_regions += num_regions
        self.num_images += 1

    def per_class(self) -> np.ndarray:
        """(n-1, T) AP of classes 1..n-1 at each threshold (``compute_class_ap`` of the CIHP script, §A3 "Scoring":
        ranked by score over the split, TP iff best IoU > t, recall over the class's GT regions)."""
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        ious = np.concatenate(self._ious) if self._ious else np.zeros(0)
        table = np.zeros((self.num_classes - 1, len(self.thresholds)))
        for c in range(1, self.num_classes):
            sel = np.nonzero(labels == c)[0]
            ranked = ious[sel[rank_by_score(scores[sel])]]
            for k, t in enumerate(self.thresholds):
                table[c - 1, k] = average_precision((ranked > t).astype(np.float64), int(self.num_gt_regions[c]),
                                                    self.ap_style)
        return table

    def compute(self) -> dict:
        """``APr10`` .. ``APr90`` (class means) and ``APrvol`` (their mean), as the CIHP script's ``__main__``:
        ``mAP = np.mean(AP, axis=0)`` over classes 1..n-1, then ``np.mean(mAP)`` (§A3, §A5 "AP^r class mean")."""
        table = self.per_class()
        if self.class_mean == "mean":
            means = table.mean(0)
        else:
            valid = ~np.isnan(table)
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(valid, table, 0.0).sum(0) / valid.sum(0)
        result = {threshold_key("APr", t): float(m) for t, m in zip(self.thresholds, means)}
        result["APrvol"] = float(np.mean(means)) if means.size else float("nan")
        if self.class_names is not None and 0.5 in self.thresholds:
            k = self.thresholds.index(0.5)
            result.update({f"APr50/{name}": float(table[c - 1, k]) for c, name in enumerate(self.class_names)
                           if c > 0})
        return result
