"""``ParsingEvaluator``: every hparse number goes through here, with the official scripts' semantics.

One ``update(pred, target)`` per image, one ``compute()`` per split. It checks the input once, lists each predicted
person's foreground pixels once, and feeds three accumulators that can also be used alone:

- :class:`~hparse.metrics.semantic.SemanticIoU`: mIoU, per-class IoU, pixel accuracy (§A1 of
  ``shared/reference/metrics_and_formats.md``; Parsing R-CNN ``parsing_eval.py``, PGN ``test_pgn.py``);
- :class:`~hparse.metrics.part_ap.PartAP`: AP^p and PCP (§A2; MHP v2 ``eval_mhp.py``, Parsing R-CNN);
- :class:`~hparse.metrics.region_ap.RegionAP`: AP^r (§A3, §A5; CIHP ``test_inst_part_ap.py``, Oxford TVG).

State is a confusion matrix and a few numbers per predicted person and region, never a full-resolution map, so a
5000-image split fits in a few megabytes. Defaults reproduce the numbers the papers report: mIoU with
``absent_class="nan"``, AP^p/PCP as Parsing R-CNN (score threshold 0.001, every annotated person counted), AP^r as
the CIHP script (VOC area, ``np.mean`` over classes, painted regions, part scores when given).

``pred`` is a prediction-contract dict (DESIGN.md): ``semantic`` (H, W), ``person_parts`` (N, H, W),
``person_scores`` (N,), optional ``part_scores`` (N, n). Without ``semantic`` the global map is painted from the
persons (highest score on top, persons below ``semantic_score_thresh`` left out), as Parsing R-CNN's
``parsing_png`` builds it. ``target`` is a data-contract dict: ``semantic``, ``instances``, ``boxes`` (its rows give
the number of annotated persons), ``meta`` (``id`` names the image in errors).
"""

from __future__ import annotations

from .ap import THRESHOLDS
from .checks import MetricInputError, check_ground_truth, check_label_map, check_persons, gt_person_count
from .painting import paint_persons, painted_maps, person_pixels
from .part_ap import PartAP
from .region_ap import RegionAP
from .semantic import SemanticIoU

__all__ = ["ParsingEvaluator", "METRIC_GROUPS"]

#: Metric groups an evaluator can compute: ``miou`` (SemanticIoU), ``app`` (AP^p + PCP), ``apr`` (AP^r).
METRIC_GROUPS = ("miou", "app", "apr")


class ParsingEvaluator:
    """mIoU, AP^p, PCP and AP^r of instance-level human parsing over a split.

    Args:
        num_classes: n, labels including background (CIHP 20, MHP v2 59, PASCAL-Person-Part 7).
        ignore_index: ground-truth label that is not scored.
        class_names: optional n class names (e.g. ``labels.names``): adds ``IoU/<name>`` and ``APr50/<name>``.
        absent_class: mIoU of a class absent from the whole split: ``"nan"`` skipped (default) or ``"zero"``.
        score_thresh: AP^p/PCP skip persons scored below it (Parsing R-CNN 0.001).
        skip_empty_gt: AP^p/PCP drop GT persons with an empty part map (MHP v2) instead of counting them.
        ap_style: AP^r integration, ``"voc"`` (PGN) or ``"uninterpolated"`` (Oxford TVG).
        class_mean: AP^r class average, ``"mean"`` (PGN) or ``"nanmean"`` (MG, QANet).
        ignore_void: AP^r drops predicted pixels on ignore-label ground truth (TVG).
        paint_score_thresh: AP^r paints only persons scored at least this (None: all).
        semantic_score_thresh: persons painted into the global map when ``pred`` has no ``semantic`` (None: all).
        thresholds: IoU thresholds of AP^p, PCP and AP^r (default 0.1..0.9).
        metrics: which groups to compute, a subset of ``("miou", "app", "apr")``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, *, class_names=None, absent_class: str = "nan",
                 score_thresh: float = 0.001, skip_empty_gt: bool = False, ap_style: str = "voc",
                 class_mean: str = "mean", ignore_void: bool = False, paint_score_thresh: float | None = None,
                 semantic_score_thresh: float | None = None, thresholds=THRESHOLDS, metrics=METRIC_GROUPS):
        unknown = set(metrics) - set(METRIC_GROUPS)
        if unknown:
            raise ValueError(f"unknown metric groups {sorted(unknown)}; choose from {METRIC_GROUPS}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.metrics = tuple(m for m in METRIC_GROUPS if m in metrics)
        self.semantic_score_thresh = semantic_score_thresh
        self.semantic = SemanticIoU(num_classes, ignore_index, absent_class, class_names)
        self.part_ap = PartAP(num_classes, thresholds, score_thresh, skip_empty_gt, ignore_index)
        self.region_ap = RegionAP(num_classes, thresholds, ap_style, class_mean, ignore_void, paint_score_thresh,
                                  ignore_index, class_names)
        self._config = {
            "num_classes": num_classes, "ignore_index": ignore_index, "absent_class": absent_class,
            "score_thresh": score_thresh, "skip_empty_gt": skip_empty_gt, "ap_style": ap_style,
            "class_mean": class_mean, "ignore_void": ignore_void, "paint_score_thresh": paint_score_thresh,
            "semantic_score_thresh": semantic_score_thresh, "thresholds": list(self.part_ap.thresholds),
            "metrics": list(self.metrics),
        }
        self.reset()

    def config(self) -> dict:
        """The evaluator's mode (the knobs of §A4): store it beside every number it produced."""
        return dict(self._config)

    def reset(self) -> None:
        self.semantic.reset()
        self.part_ap.reset()
        self.region_ap.reset()
        self.num_images = 0
        self.num_pred_persons = 0
        self.num_gt_persons = 0

    def update(self, pred: dict, target: dict) -> None:
        """Score one image: ``pred`` a prediction-contract dict, ``target`` a data-contract dict."""
        meta = target.get("meta") if isinstance(target, dict) else None
        where = (f"image {meta['id']!r}" if isinstance(meta, dict) and "id" in meta
                 else f"image #{self.num_images}")
        if not isinstance(pred, dict):
            raise MetricInputError(f"{where}: the prediction must be a dict, got {type(pred).__name__}")
        for key in ("semantic", "instances"):
            if key not in target:
                raise MetricInputError(f"{where}: the ground truth has no {key!r}")
        gt_semantic, gt_instances = target["semantic"], target["instances"]
        num_gt = gt_person_count(target)
        check_ground_truth(gt_semantic, gt_instances, self.num_classes, self.ignore_index, num_gt, where)

        needs_persons = "app" in self.metrics or "apr" in self.metrics or "semantic" not in pred
        pixels = scores = part_scores = None
        if needs_persons:
            for key in ("person_parts", "person_scores"):
                if key not in pred:
                    raise MetricInputError(f"{where}: the prediction has no {key!r}")
            part_scores = pred.get("part_scores")
            check_persons(pred["person_parts"], pred["person_scores"], self.num_classes, gt_semantic.shape, where,
                          part_scores)
            device = pred["person_parts"].device
            gt_semantic, gt_instances = gt_semantic.to(device), gt_instances.to(device)
            pixels = person_pixels(pred["person_parts"])
            scores = pred["person_scores"]

        if "miou" in self.metrics:
            if "semantic" in pred:
                semantic = pred["semantic"]
                check_label_map(semantic, self.num_classes, where, "semantic prediction", shape=gt_semantic.shape)
            else:
                semantic, _ = painted_maps(paint_persons(pixels, scores, self.semantic_score_thresh))
            self.semantic.update_checked(semantic.to(gt_semantic.device), gt_semantic)
        if "app" in self.metrics:
            self.part_ap.update_pixels(pixels, scores, gt_semantic, gt_instances, num_gt)
        if "apr" in self.metrics:
            self.region_ap.update_pixels(pixels, scores, gt_semantic, gt_instances, num_gt, part_scores)
        self.num_images += 1
        self.num_gt_persons += num_gt
        self.num_pred_persons += int(pixels.num_persons) if pixels is not None else 0

    def compute(self) -> dict:
        """All metrics as fractions (NaN where undefined), plus image and person counts.

        Every value lies in [0, 1] except AP^r, whose many-to-one matching lets recall, and so AP, exceed 1 when
        several predicted regions hit one ground-truth region (the official CIHP script behaves the same).

        Keys: ``mIoU``, ``IoU`` (list of n), ``pixel_acc``, ``mean_acc``; ``APp10`` .. ``APp90``, ``APpvol``,
        ``PCP10`` .. ``PCP90`` (``APp50`` and ``PCP50`` are the headline numbers); ``APr10`` .. ``APr90``,
        ``APrvol``; ``num_images``, ``num_gt_persons``, ``num_pred_persons``. Groups not in ``metrics`` are absent.
        """
        result: dict = {}
        if "miou" in self.metrics:
            result.update(self.semantic.compute())
        if "app" in self.metrics:
            result.update(self.part_ap.compute())
        if "apr" in self.metrics:
            result.update(self.region_ap.compute())
        result.update(num_images=self.num_images, num_gt_persons=self.num_gt_persons,
                      num_pred_persons=self.num_pred_persons)
        return result
