"""mIoU: instance-agnostic part segmentation quality, one confusion matrix over the whole split.

Official rule (``shared/reference/metrics_and_formats.md`` §A1; Parsing R-CNN / RP R-CNN
``utils/data/evaluation/parsing_eval.py``: ``fast_hist``, ``compute_hist``, ``mean_IoU``; PGN ``test_pgn.py``
L139-140, TF ``streaming_mean_iou``):

1. One ``n x n`` confusion matrix (rows ground truth, columns prediction) is summed over every image of the split
   before any IoU is taken: big images weigh more, and there is no per-image averaging.
2. A pixel counts only if its ground truth is in ``0..n-1``; the ignore label (255) and anything >= n are dropped.
3. ``IoU_c = diag_c / (rowsum_c + colsum_c - diag_c)``; mIoU is the mean over all n classes *including background*.
   A class absent from both ground truth and prediction over the whole split is 0/0:
   ``absent_class="nan"`` skips it (``np.nanmean``, Parsing R-CNN and PGN, the default); ``absent_class="zero"``
   counts it as 0 (MG-HumanParsing ``EvalSemantic``, QANet ``semseg_eval.py``: ``tp / max(1, union)``).

Also reported, as Parsing R-CNN prints them: pixel accuracy ``trace / total`` and mean class accuracy
``nanmean(diag / rowsum)``.
"""

from __future__ import annotations

import numpy as np
import torch

from .checks import MetricInputError, check_label_map

__all__ = ["confusion_matrix", "iou_from_confusion", "SemanticIoU"]


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(n, n) int64 confusion matrix of one image, rows ground truth, columns prediction (``fast_hist``).

    Ground-truth pixels outside ``0..n-1`` (the ignore label) are dropped. Predictions must be in range (checked by
    the caller: ``fast_hist`` would silently corrupt the matrix otherwise).

    Args:
        pred: (H, W) integer prediction.
        gt: (H, W) integer ground truth.
        num_classes: n, including background.
    """
    gt = gt.reshape(-1).long()
    pred = pred.reshape(-1).to(gt.device)
    low, high = torch.aminmax(gt) if gt.numel() else (torch.tensor(0), torch.tensor(0))
    if int(low) < 0 or int(high) >= num_classes:  # drop the ignore label (only when there is one)
        keep = (gt >= 0) & (gt < num_classes)
        gt, pred = gt[keep], pred[keep]
    counts = torch.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(confusion: np.ndarray, absent_class: str = "nan") -> tuple[np.ndarray, float]:
    """Per-class IoU (n,) and mIoU from a confusion matrix, under the ``absent_class`` rule of §A1.

    Returns:
        ``(iou, miou)``; with ``absent_class="nan"`` an absent class has IoU NaN and is skipped by the mean, with
        ``"zero"`` it has IoU 0 and is averaged in.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    diag = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = diag / union
    if absent_class == "nan":
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    elif absent_class == "zero":
        iou = np.where(union > 0, iou, 0.0)
        miou = float(iou.mean()) if iou.size else float("nan")
    else:
        raise ValueError(f"absent_class must be 'nan' or 'zero', got {absent_class!r}")
    return iou, miou


class SemanticIoU:
    """Accumulates the split-wide confusion matrix of the semantic (global) part map; see the module docstring.

    Args:
        num_classes: n, including background (CIHP 20, MHP v2 59).
        ignore_index: ground-truth label that is not scored (any label >= n is dropped as well, as in
            ``fast_hist``).
        absent_class: ``"nan"`` (Parsing R-CNN / PGN, default) or ``"zero"`` (MG / QANet).
        class_names: optional n names; :meth:`compute` then also returns ``IoU/<name>`` keys.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, absent_class: str = "nan",
                 class_names: list[str] | tuple[str, ...] | None = None):
        if absent_class not in ("nan", "zero"):
            raise ValueError(f"absent_class must be 'nan' or 'zero', got {absent_class!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.absent_class = absent_class
        self.class_names = tuple(class_names) if class_names is not None else None
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_images = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor, image_id: str | None = None) -> None:
        """Add one image: ``pred`` (H, W) and ``gt`` (H, W) label maps at the same resolution."""
        where = f"image {image_id!r}" if image_id is not None else f"image #{self.num_images}"
        if not isinstance(gt, torch.Tensor) or gt.ndim != 2:
            raise MetricInputError(f"{where}: ground-truth semantic must be an (H, W) tensor")
        check_label_map(pred, self.num_classes, where, "semantic prediction", shape=gt.shape)
        check_label_map(gt, self.num_classes, where, "ground-truth semantic", allow=self.ignore_index)
        self.update_checked(pred, gt)

    def update_checked(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """:meth:`update` on input already checked by the caller."""
        self.confusion += confusion_matrix(pred, gt, self.num_classes).cpu().numpy()
        self.num_images += 1

    def compute(self) -> dict:
        """``mIoU``, ``IoU`` (list of n), ``pixel_acc``, ``mean_acc`` (and ``IoU/<name>`` with class names)."""
        iou, miou = iou_from_confusion(self.confusion, self.absent_class)
        total = self.confusion.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            class_acc = np.diag(self.confusion) / self.confusion.sum(1)
        result = {
            "mIoU": miou,
            "IoU": [float(v) for v in iou],
            "pixel_acc": float(np.trace(self.confusion) / total) if total else float("nan"),
            "mean_acc": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        }
        if self.class_names is not None:
            result.update({f"IoU/{name}": float(v) for name, v in zip(self.class_names, iou)})
        return result
