"""Overlays of semantic, instance and person-part maps, keypoints and skeletons, and sample grids.

The grids and panels are matplotlib figures (for the book and ``hparse data preview``); :func:`render_prediction`
draws the overlay ``hparse predict`` writes straight into the image's pixels (Pillow), at the image's own
resolution, so that a 12-megapixel photo gives a 12-megapixel overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.labels import KeypointSet, LabelSet, voc_palette

__all__ = [
    "to_numpy_image",
    "instance_palette",
    "overlay_semantic",
    "overlay_instances",
    "overlay_person_parts",
    "draw_boxes",
    "draw_keypoints",
    "show_sample",
    "sample_grid",
    "save_figure",
    "write_sample_grid",
    "render_prediction",
]


def to_numpy_image(image) -> np.ndarray:
    """(3, H, W) float tensor in [0, 1] or (H, W, 3) array -> (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def instance_palette(n: int) -> np.ndarray:
    """Distinct colours for person ids 0..n (id 0, background, is black)."""
    return voc_palette(max(n + 1, 2))[: n + 1]


def _blend(image: np.ndarray, colours: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * colours[mask].astype(np.float32)
    return out.round().astype(np.uint8)


def overlay_semantic(image, semantic, labels: LabelSet, alpha: float = 0.6) -> np.ndarray:
    """Part colours over the image where ``semantic`` is foreground; returns (H, W, 3) uint8."""
    image, semantic = to_numpy_image(image), _np(semantic)
    return _blend(image, labels.colorize(semantic), semantic > 0, alpha)


def overlay_instances(image, instances, alpha: float = 0.6) -> np.ndarray:
    """One colour per person id over the image; returns (H, W, 3) uint8."""
    image, instances = to_numpy_image(image), _np(instances).astype(np.int64)
    palette = instance_palette(int(instances.max()) if instances.size else 0)
    return _blend(image, palette[instances], instances > 0, alpha)


def overlay_person_parts(image, person_parts, labels: LabelSet, alpha: float = 0.6, outline: bool = True) -> np.ndarray:
    """Paint (N, H, W) per-person part maps in part colours, later persons on top, with each person's outline."""
    image, person_parts = to_numpy_image(image), _np(person_parts)
    out = image.copy()
    palette = instance_palette(len(person_parts))
    for k, parts in enumerate(person_parts):
        out = _blend(out, labels.colorize(parts), parts > 0, alpha)
        if outline:
            mask = parts > 0
            out[_mask_edge(mask)] = palette[k + 1]
    return out


def _mask_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image border counts as outside (no wrap-around)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def draw_boxes(ax, boxes, colours: np.ndarray | None = None, labels: Sequence[str] | None = None, linewidth=1.5):
    """Draw xyxy ``boxes`` on a matplotlib axis, coloured like :func:`overlay_instances` by default."""
    boxes = _np(boxes).reshape(-1, 4)
    colours = instance_palette(len(boxes))[1:] if colours is None else colours
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        colour = np.asarray(colours[k % len(colours)]) / 255.0
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=linewidth))
        if labels is not None:
            ax.text(x1, y1, labels[k], color="white", fontsize=7, va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))


def draw_keypoints(ax, keypoints, keypoint_set: KeypointSet | None = None, colours: np.ndarray | None = None,
                   markersize: float = 3.0):
    """Draw (N, K, 3) keypoints (visible filled, occluded hollow, absent skipped) and the skeleton's limbs."""
    keypoints = _np(keypoints)
    if keypoints.size == 0:  # no persons, or a dataset without keypoints (K = 0)
        return
    keypoints = keypoints.reshape(-1, keypoints.shape[-2], 3)
    colours = instance_palette(len(keypoints))[1:] if colours is None else colours
    for k, person in enumerate(keypoints):
        colour = np.asarray(colours[k % len(colours)]) / 255.0
        if keypoint_set is not None:
            for a, b in keypoint_set.skeleton:
                if person[a, 2] > 0 and person[b, 2] > 0:
                    ax.plot([person[a, 0], person[b, 0]], [person[a, 1], person[b, 1]], color=colour, linewidth=1)
        visible, occluded = person[:, 2] == 2, person[:, 2] == 1
        ax.plot(person[visible, 0], person[visible, 1], "o", color=colour, markersize=markersize)
        ax.plot(person[occluded, 0], person[occluded, 1], "o", markerfacecolor="none", markeredgecolor=colour,
                markersize=markersize)


def show_sample(sample: dict, labels: LabelSet, axes=None, title: str | None = None):
    """Three panels: image with boxes and keypoints, part labels, person instances. Returns the figure."""
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    else:
        fig = axes[0].figure
    image = sample["image"]
    axes[0].imshow(to_numpy_image(image))
    draw_boxes(axes[0], sample["boxes"])
    draw_keypoints(axes[0], sample["keypoints"], labels.keypoints)
    axes[1].imshow(overlay_semantic(image, sample["semantic"], labels, alpha=0.85))
    axes[2].imshow(overlay_instances(image, sample["instances"], alpha=0.85))
    for ax, name in zip(axes, ("image, boxes, keypoints", "parts", "persons")):
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def sample_grid(samples: Sequence[dict], labels: LabelSet, cols: int = 4, panel: str = "parts", size: float = 2.4):
    """A grid of samples drawn as ``panel`` in {'image', 'parts', 'persons', 'all'} ('all' = image+parts+persons)."""
    if panel == "all":
        fig, axes = plt.subplots(len(samples), 3, figsize=(3 * size, len(samples) * size), squeeze=False)
        for row, sample in zip(axes, samples):
            show_sample(sample, labels, axes=row)
        return fig
    rows = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples):
        image = sample["image"]
        if panel == "image":
            ax.imshow(to_numpy_image(image))
            draw_boxes(ax, sample["boxes"])
            draw_keypoints(ax, sample["keypoints"], labels.keypoints)
        elif panel == "parts":
            ax.imshow(overlay_semantic(image, sample["semantic"], labels, alpha=0.85))
        elif panel == "persons":
            ax.imshow(overlay_instances(image, sample["instances"], alpha=0.85))
        else:
            raise ValueError(f"panel must be 'image', 'parts', 'persons' or 'all', got {panel!r}")
        ax.set_title(str(sample["meta"].get("id", "")), fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def write_sample_grid(samples: Sequence[dict], labels: LabelSet, path: str | Path, panel: str = "parts") -> Path:
    """``hparse data preview``: a grid of ``samples`` (every panel when there are at most 4) saved to ``path``."""
    fig = sample_grid(samples, labels, panel="all" if len(samples) <= 4 else panel)
    return save_figure(fig, path)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ValueError):  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _person_boxes(pred: dict, masks: np.ndarray) -> np.ndarray:
    boxes = pred.get("person_boxes")
    if boxes is not None and len(boxes) == len(masks):
        return _np(boxes).astype(np.float64).reshape(-1, 4)
    out = np.zeros((len(masks), 4))
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if len(rows):
            out[k] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return out


def render_prediction(image, pred: dict, labels: LabelSet, keypoint_set: KeypointSet | None = None,
                      alpha: float = 0.55) -> np.ndarray:
    """The overlay of one prediction at the image's resolution: (H, W, 3) uint8.

    Each person's parts in the label palette (higher-scoring persons painted over lower ones), the person's outline
    in its own colour (:func:`instance_palette`, in the order the persons are listed), its score on a tag at the top
    left of its box, and its keypoints and skeleton where ``pred`` has ``keypoints`` (joints whose third value, a
    visibility or a score, is 0 are absent). Line widths and text grow with the image.

    Args:
        image: (3, H, W) float tensor in [0, 1] or (H, W, 3) array.
        pred: prediction-contract dict at the image's resolution (``person_parts``, ``person_scores``; optional
            ``person_boxes``, ``keypoints``).
        labels: the label set (palette).
        keypoint_set: draws the skeleton's limbs (joints alone without it).
    """
    from scipy.ndimage import binary_dilation

    out = to_numpy_image(image).copy()
    parts = _np(pred["person_parts"])
    scores = _np(pred["person_scores"]).astype(np.float64).reshape(-1)
    height, width = out.shape[:2]
    thickness = max(1, round(max(height, width) / 500))
    palette = instance_palette(len(parts))
    order = np.argsort(scores, kind="stable")  # ascending: the highest score is painted last, on top
    masks = parts > 0
    for k in order:
        out = _blend(out, labels.colorize(parts[k]), masks[k], alpha)
    for k in order:
        edge = _mask_edge(masks[k])
        if thickness > 1:
            edge = binary_dilation(edge, iterations=thickness - 1)
        out[edge] = palette[k + 1]
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    keypoints = pred.get("keypoints")
    if keypoints is not None and len(keypoints) == len(parts) and _np(keypoints).size:
        radius = max(2, 2 * thickness)
        for k, person in enumerate(_np(keypoints).astype(np.float64)):
            colour = tuple(int(c) for c in palette[k + 1])
            present = person[:, 2] > 0
            for a, b in keypoint_set.skeleton if keypoint_set is not None else ():
                if a < len(person) and b < len(person) and present[a] and present[b]:
                    draw.line([tuple(person[a, :2]), tuple(person[b, :2])], fill=colour, width=thickness)
            for x, y in person[present, :2]:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
    font = _font(max(10, round(max(height, width) / 50)))
    for k, (x1, y1, _, _) in enumerate(_person_boxes(pred, masks)):
        colour = tuple(int(c) for c in palette[k + 1])
        text = f"{scores[k]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * thickness, bottom - top + 2 * thickness
        x = min(max(0.0, x1), max(0.0, width - w))
        y = y1 - h if y1 - h >= 0 else max(0.0, y1)
        draw.rectangle([x, y, x + w, y + h], fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
        draw.text((x + thickness - left, y + thickness - top), text, fill=ink, font=font)
    return np.asarray(canvas)
