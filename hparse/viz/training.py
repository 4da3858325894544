"""Figures of a training run: learning curves from its log, and predictions beside the ground truth.

Both draw from what a run leaves behind (``train_log.jsonl``, :func:`hparse.engine.trainer.read_log`; a model's
prediction-contract dicts), so a chapter can draw them from a committed run's artefacts without training anything.
:func:`write_run_figures` saves both for a finished run (what ``hparse demo`` writes into its run folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from ..data.labels import LabelSet
from .overlay import draw_boxes, overlay_person_parts, overlay_semantic, save_figure

__all__ = ["learning_curves", "prediction_panels", "smooth", "write_run_figures"]

#: Validation metrics drawn against steps (fractions, shown in %).
CURVE_METRICS = ("mIoU", "APp50", "APpvol")


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Running mean over ``window`` steps (shorter at the start), for noisy per-step losses."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def learning_curves(train_records: list[dict], eval_records: list[dict], title: str = "", window: int = 25):
    """Two panels: each loss term against steps (smoothed), and validation metrics against steps.

    Args:
        train_records, eval_records: ``read_log(run, "train")`` and ``read_log(run, "eval")``.
        title: figure title.
        window: smoothing window of the losses, in steps.

    Returns:
        A matplotlib figure (about 2.4:1).
    """
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    steps = [r["step"] for r in train_records]
    terms = sorted({k for r in train_records for k in r if k.startswith("loss_")})
    for term in terms:
        values = [r.get(term, np.nan) for r in train_records]
        loss_ax.plot(steps, smooth(values, window), lw=1.3, label=term[5:])
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel(f"training loss (mean of {window} steps)")
    loss_ax.legend(fontsize=7, ncol=2)
    loss_ax.grid(alpha=0.3)
    eval_steps = [r["step"] for r in eval_records]
    for key in CURVE_METRICS:
        values = [100 * (r["metrics"].get(key) or 0.0) for r in eval_records]
        metric_ax.plot(eval_steps, values, marker="o", lw=1.5, label=key)
    metric_ax.set_xlabel("step")
    metric_ax.set_ylabel("validation (%)")
    metric_ax.set_ylim(bottom=0)
    metric_ax.legend(fontsize=8)
    metric_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def prediction_panels(samples: Sequence[dict], predictions: Sequence[dict], labels: LabelSet,
                      score_thresh: float = 0.3, title: str = "", size: float = 2.4):
    """Ground truth (top row) above each image's predicted persons (bottom row), each person outlined and boxed.

    Args:
        samples: data-contract dicts (``image``, ``semantic``, ``boxes``).
        predictions: the model's prediction-contract dicts for them (at the images' resolution).
        labels: the label set (palette).
        score_thresh: persons drawn (the model's semantic painting threshold).
    """
    count = len(samples)
    fig, axes = plt.subplots(2, count, figsize=(size * count, 2 * size + 0.9), squeeze=False, layout="constrained")
    for k, (sample, pred) in enumerate(zip(samples, predictions)):
        keep = pred["person_scores"].cpu() >= score_thresh
        axes[0, k].imshow(overlay_semantic(sample["image"], sample["semantic"], labels))
        axes[0, k].set_title(f"ground truth: {len(sample['boxes'])} people", fontsize=8)
        axes[1, k].imshow(overlay_person_parts(sample["image"], pred["person_parts"].cpu()[keep], labels))
        if "person_boxes" in pred and int(keep.sum()):
            scores = pred["person_scores"].cpu()[keep]
            draw_boxes(axes[1, k], pred["person_boxes"].cpu()[keep], labels=[f"{s:.2f}" for s in scores.tolist()],
                       linewidth=1.0)
        axes[1, k].set_title(f"predicted: {int(keep.sum())} people (score >= {score_thresh})", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def write_run_figures(model, dataset, run_dir: str | Path, title: str, images: int = 4) -> dict[str, Path]:
    """Save a trained run's ``learning_curves.png`` (from its log) and ``overlay.png`` (its predictions on the first
    ``images`` samples of ``dataset`` beside the ground truth) into ``run_dir``; return their paths by name."""
    import torch

    from ..engine.trainer import read_log

    run_dir = Path(run_dir)
    paths = {"learning_curves": save_figure(learning_curves(read_log(run_dir, "train"), read_log(run_dir, "eval"),
                                                            title=title), run_dir / "learning_curves.png")}
    samples = [dataset[i] for i in range(min(images, len(dataset)))]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            predictions = model([s["image"].to(device) for s in samples])
    finally:
        model.train(was_training)
    threshold = getattr(model, "semantic_score_thresh", 0.3)
    paths["overlay"] = save_figure(prediction_panels(samples, predictions, dataset.labels, threshold, title=title),
                                   run_dir / "overlay.png")
    return paths
