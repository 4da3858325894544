"""Average precision from a ranked list of hits: the integration rules of the official evaluation scripts.

Every AP in hparse (AP^p over persons, AP^r over part regions) is computed the same way: predictions are ranked by
score, each is a hit (true positive) or a miss (false positive), and precision/recall along the ranking are
integrated. Two integration rules occur in the official code (``shared/reference/metrics_and_formats.md`` §A2 step 5,
§A3):

- **VOC all-point interpolated** (``ap_style="voc"``): the area under the precision envelope, ``voc_ap(...,
  use_07_metric=False)`` of the MHP v2 evaluation (``v2/voc_eval.py``), Parsing R-CNN
  (``utils/data/evaluation/parsing_eval.py``) and the CIHP script (``CIHP_PGN/evaluation/test_inst_part_ap.py``).
- **Uninterpolated** (``ap_style="uninterpolated"``): ``sum_i hit_i * precision_i / #GT`` with no envelope, the
  Oxford TVG code (``dynamically-instantiated-network/evaluation/compute_mAP.m``).

Ranking: the official scripts sort with NumPy's default (unstable) ``argsort``, so equal scores have no defined
order (§A5). hparse sorts with a *stable* sort on the score, descending: equal scores keep the order in which the
predictions were added (image by image, person by person). That is deterministic and, for the short arrays NumPy
sorts by insertion, what the official code does too.
"""

from __future__ import annotations

import numpy as np

__all__ = ["THRESHOLDS", "threshold_key", "rank_by_score", "voc_ap", "uninterpolated_ap", "average_precision"]

#: IoU thresholds of AP^p, PCP and AP^r: 0.1, 0.2, ..., 0.9, hard-coded in every official script (§A2 step 6, §A3).
THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def threshold_key(prefix: str, threshold: float) -> str:
    """Result key of a metric at an IoU threshold: ``threshold_key("APp", 0.5) == "APp50"``."""
    return f"{prefix}{int(round(threshold * 100)):02d}"


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` (K,) from highest to lowest; ties keep their input order (stable sort).

    The official scripts use ``np.argsort(-confidence)`` (Parsing R-CNN, MHP) or ``np.argsort(scores)[::-1]`` (CIHP),
    both unstable, so ties are undefined there (§A5 "Ties"); see the module docstring for our choice.
    """
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP (``use_07_metric=False``), as in MHP ``voc_eval.py`` and PGN's script.

    Sentinels ``recall = [0, ..., 1]`` and ``precision = [0, ..., 0]`` are added, precision is made non-increasing
    from the right (the envelope), and ``sum(Δrecall · precision)`` is taken where recall changes. Recall may exceed
    1 under the many-to-one matching of AP^r (§A3 quirks): the closing sentinel then steps *back* to 1 with
    precision 0 and adds nothing, so one GT found twice gives AP = 2.0, as the official script does.

    Args:
        recall: (K,) cumulative recall along the ranking.
        precision: (K,) cumulative precision along the ranking.

    Returns:
        The area; NaN when ``recall`` contains NaN (no ground truth but some predictions).
    """
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    # Envelope: running maximum from the right (the official code does this with a Python loop).
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    change = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def uninterpolated_ap(hits: np.ndarray, num_gt: int) -> float:
    """Uninterpolated AP of the Oxford TVG code: ``sum_i hit_i * (hits so far / i) / num_gt``.

    ``compute_mAP.m`` (``area_under_curve``) divides by the GT count without a guard, so ``num_gt == 0`` gives
    0/0 = NaN in MATLAB; we return NaN likewise.

    Args:
        hits: (K,) 0/1 along the ranking (highest score first).
        num_gt: number of ground-truth objects.
    """
    hits = np.asarray(hits, dtype=np.float64)
    if num_gt == 0:
        return float("nan")
    if hits.size == 0:
        return 0.0
    precision_at_hit = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(np.sum(hits * precision_at_hit) / num_gt)


def average_precision(hits: np.ndarray, num_gt: int, ap_style: str = "voc") -> float:
    """AP of a ranked list of hits (highest score first) against ``num_gt`` ground-truth objects.

    ``ap_style="voc"`` follows the official Python scripts line by line: ``tp = cumsum(hits)``, ``fp = cumsum(1 -
    hits)``, ``recall = tp / num_gt``, ``precision = tp / max(tp + fp, eps)``, then :func:`voc_ap`. Their edge cases
    follow: no predictions gives 0 (the sentinels alone have zero area); predictions without any ground truth give
    recall 0/0 = NaN and so AP = NaN (§A5, "AP^r class mean").

    Args:
        hits: (K,) 0/1 along the ranking.
        num_gt: number of ground-truth objects (the official ``npos``).
        ap_style: ``"voc"`` or ``"uninterpolated"``.
    """
    if ap_style == "uninterpolated":
        return uninterpolated_ap(hits, num_gt)
    if ap_style != "voc":
        raise ValueError(f"ap_style must be 'voc' or 'uninterpolated', got {ap_style!r}")
    hits = np.asarray(hits, dtype=np.float64)
    if hits.size == 0:
        return voc_ap(np.zeros(0), np.zeros(0))
    if num_gt == 0:
        return float("nan")
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    recall = tp / float(num_gt)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision)
