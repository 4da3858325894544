"""Parse your own images: any trained hparse model, from image files to the prediction contract and back to files.

``hparse.predict(model_or_checkpoint, images)`` (:func:`predict`) and ``hparse predict`` (:func:`parse_files`) run a
trained model on images that have no ground truth. Nothing here is specific to one method: the model is rebuilt
with :func:`hparse.models.build_model` from the ``model_config`` its checkpoint stores, and everything downstream
reads the prediction contract (DESIGN.md), so a model added to the registry later is parsed without changes.

**Reading** (:func:`read_image`). JPEG and PNG (and what else Pillow reads) become (H, W, 3) uint8 RGB:

- the EXIF orientation is applied, so a phone photo is parsed the way it is shown, not lying on its side;
- grayscale and 1-bit images are replicated to three channels; palette, CMYK and YCbCr images are converted;
- transparent images (RGBA, LA, palette with transparency) are composited onto white, so transparent pixels do not
  become black silhouettes;
- 16-bit images are reduced to 8 bits (16-bit RGB PNGs by Pillow itself, 16-bit grayscale here, 65535 -> 255);
  32-bit integer and floating-point images have no agreed range and are refused with a message saying so;
- a file that is not an image, is truncated, or claims more than :data:`hparse.data.io.MAX_IMAGE_PIXELS` pixels
  raises :class:`ImageReadError` naming the file; ``hparse predict`` reports it and goes on with the next file.

**Sizing** (:func:`recipe_input_size`). A model sees images at the scale it was trained on: the shorter side is
resized to the recipe's test side (``test_size`` of a real-dataset recipe, the long side capped at its ``max_size``;
for a model trained on SynthCrowd, the side of its square training images). A recipe that keeps images at their own
size (the bottom-up model on a real dataset) is followed as it is; ``size`` (``--size``) sets the shorter side for
any model. The resize is bilinear with antialiasing (a photo is often ten times larger than the model's input), and
the model's own input resize is switched off meanwhile, so the image is resized once. Predictions come back at each
image's own resolution: label maps by nearest neighbour (part labels are categories, never blended), boxes and
keypoints scaled.

**Writing** (:func:`write_outputs`). Per image, under the output folder:

- ``overlay/<id>.png``: the image with each person's parts in the label palette, its outline and score, and its
  keypoints where the model predicts them (:func:`hparse.viz.overlay.render_prediction`);
- ``global_parsing/<id>.png``, ``person_parsing/<id>_<NN>_<KK>.png`` + ``<id>.txt``, ``instance_parsing/``: the
  semantic map and per-person part maps in the layout ``hparse evaluate --pred`` reads
  (:func:`hparse.metrics.io.write_predictions`), so predictions of images that do have ground truth can be scored;
- one line of ``predictions.jsonl``: the image, its size, and per person the score, box, part areas in pixels and
  keypoints (a file that could not be read gets a line with its ``error`` instead).

``<id>`` is the file's stem (a second file of the same stem gets ``-2``, ...). The semantic map is the model's own;
``score_thresh`` (``--score-thresh``) selects the persons written, drawn and listed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.labels import COCO17, LABEL_SETS, MPII16, PPP14, KeypointSet, LabelSet, voc_palette

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "PredictSetupError",
    "Predictor",
    "predict",
    "read_image",
    "find_images",
    "recipe_input_size",
    "label_set_for",
    "keypoint_set_for",
    "keep_persons",
    "prediction_record",
    "write_outputs",
    "parse_files",
    "ParseSummary",
]

#: Suffixes of the files taken from a folder (case-insensitive); a file named on the command line is tried whatever
#: its suffix.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

#: Name of the JSON-lines file ``hparse predict`` writes in its output folder.
JSONL_NAME = "predictions.jsonl"


class ImageReadError(ValueError):
    """An image file cannot be read (missing, not an image, truncated, an unsupported pixel format)."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = Path(path)
        self.message = message
        super().__init__(f"{path}: {message}")


class PredictSetupError(ValueError):
    """Prediction cannot start as asked (no image found, a model without a usable checkpoint); names the fix."""


# ------------------------------------------------------------------------------------------------- reading


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite a transparent image onto white."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _to_rgb(img: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a decoded Pillow image of any supported mode."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        return np.array(_flatten_alpha(img), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        values = np.array(img)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(path, f"a {mode} image with values in [{values.min()}, {values.max()}] has no "
                                 "agreed range; save it as an 8-bit or 16-bit image")
        gray = (values.astype(np.uint32) * 255 + 32767) // 65535  # 16-bit -> 8-bit, rounded
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        raise ImageReadError(path, "a floating-point image has no agreed range; save it as an 8-bit or 16-bit "
                             "image")
    try:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # 1, L, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as err:
        raise ImageReadError(path, f"pixel format {mode} cannot be converted to RGB ({err})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright (EXIF orientation applied); see the module docstring.

    Raises:
        ImageReadError: naming the file and what is wrong with it.
    """
    from ..data.io import MAX_IMAGE_PIXELS

    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageReadError(path, f"{width}x{height} pixels is more than hparse.data.io.MAX_IMAGE_PIXELS "
                                     f"({MAX_IMAGE_PIXELS:,}); shrink the image first")
            if width == 0 or height == 0:
                raise ImageReadError(path, "the image has no pixels")
            img.load()  # decode now: a truncated file fails here, with its name
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img, path)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can read (expected JPEG or PNG)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, f"unreadable or corrupt image ({err})") from None


def find_images(inputs: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The files to parse: each file as given, and each folder's image files (:data:`IMAGE_SUFFIXES`, sorted by
    name, not recursive, hidden files left out).

    Returns:
        ``(files, problems)``: problems are ``(path, message)`` for inputs that do not exist.
    """
    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                                and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            files.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return files, problems


def _image_ids(paths: Sequence[Path]) -> list[str]:
    """One output id per file: its stem, made unique (``-2``, ``-3``, ...) and never hidden."""
    ids, seen = [], set()
    for path in paths:
        stem = path.stem or "image"
        stem = "_" + stem[1:] if stem.startswith(".") else stem
        candidate, count = stem, 1
        while candidate in seen:
            count += 1
            candidate = f"{stem}-{count}"
        seen.add(candidate)
        ids.append(candidate)
    return ids


def _as_array(image: Any, index: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a Pillow image, an array or a tensor (the inputs :func:`predict` takes)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image), Path(f"image {index}"))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and tensor.shape[-1] not in (1, 3):
            tensor = tensor.permute(1, 2, 0)
        image = tensor.numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(Path(f"image {index}"), f"expected an (H, W, 3) image or a (3, H, W) tensor, got shape "
                             f"{array.shape}")
    if array.shape[2] == 4:
        array = np.array(_flatten_alpha(Image.fromarray(_to_uint8(array, index), "RGBA")))
    array = _to_uint8(array, index)
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, index: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and (not np.isfinite(array).all() or array.min() < 0 or array.max() > 1):
            raise ImageReadError(Path(f"image {index}"), "a float image must hold finite values in [0, 1]")
        return (array * 255).round().astype(np.uint8)
    raise ImageReadError(Path(f"image {index}"), f"unsupported dtype {array.dtype}; pass uint8, uint16 or float "
                         "values in [0, 1]")


# -------------------------------------------------------------------------------------------------- sizing


def recipe_input_size(model_config: dict | None, run_config: dict | None = None) -> tuple[int | None, int | None]:
    """``(shorter side, longer-side cap)`` the model was trained to see, from its checkpoint; ``None`` = as given.

    A real-dataset top-down recipe says it in ``test_size`` / ``max_size``; a model trained on SynthCrowd saw square
    images of the run's ``image_size``; otherwise images kept their own size.
    """
    model_config, run_config = model_config or {}, run_config or {}
    if model_config.get("test_size"):
        return int(model_config["test_size"]), model_config.get("max_size") or None
    if run_config.get("dataset", "synth") == "synth" and run_config.get("image_size"):
        return int(run_config["image_size"]), None
    return None, None


def _scaled_size(height: int, width: int, side: int | None, max_side: int | None) -> tuple[int, int]:
    if side is None:
        return height, width
    scale = side / min(height, width)
    if max_side:
        scale = min(scale, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def _nearest(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) label maps -> (..., H, W) by nearest neighbour at pixel centres (any dtype, labels unchanged)."""
    h, w = maps.shape[-2:]
    height, width = size
    if (h, w) == (height, width):
        return maps
    rows = ((torch.arange(height, device=maps.device) + 0.5) * (h / height)).long().clamp_(max=h - 1)
    cols = ((torch.arange(width, device=maps.device) + 0.5) * (w / width)).long().clamp_(max=w - 1)
    return maps.index_select(-2, rows).index_select(-1, cols)


def _to_original(pred: dict, seen: tuple[int, int], original: tuple[int, int]) -> dict:
    """A prediction made at ``seen`` (H, W) brought to the image's ``original`` (H, W), on the CPU."""
    out = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in pred.items()}
    if seen == original:
        return out
    sy, sx = original[0] / seen[0], original[1] / seen[1]
    for key in ("semantic", "person_parts"):
        if key in out:
            out[key] = _nearest(out[key], original)
    if "person_boxes" in out:
        out["person_boxes"] = out["person_boxes"] * torch.tensor([sx, sy, sx, sy], dtype=out["person_boxes"].dtype)
    if "keypoints" in out and out["keypoints"].numel():
        keypoints = out["keypoints"].clone()
        keypoints[..., 0] *= sx
        keypoints[..., 1] *= sy
        out["keypoints"] = keypoints
    contract = ("semantic", "person_parts", "person_scores", "person_boxes", "keypoints", "part_scores")
    for key, value in pred.items():  # a model's extra maps at the resolution it saw are left out
        if key not in contract and isinstance(value, torch.Tensor) and tuple(value.shape[-2:]) == seen:
            out.pop(key)
    return out


@contextmanager
def _own_resize_off(model: nn.Module):
    """Switch off a model's own test-time resize (torchvision-style ``transform``) while predict resizes."""
    transform = getattr(model, "transform", None)
    names = ("test_size", "max_size_limit")
    if transform is None or not all(hasattr(transform, n) for n in names):
        yield
        return
    saved = [getattr(transform, n) for n in names]
    for n in names:
        setattr(transform, n, None)
    try:
        yield
    finally:
        for n, value in zip(names, saved):
            setattr(transform, n, value)


# -------------------------------------------------------------------------------------------- labels, model


def label_set_for(num_classes: int, dataset: str | None = None) -> LabelSet:
    """The label set of a model: its training dataset's, else the first known set of ``num_classes`` labels, else
    generic names (``part 1``, ...) on the VOC palette."""
    if dataset and dataset.lower() in LABEL_SETS and LABEL_SETS[dataset.lower()].num_classes == num_classes:
        return LABEL_SETS[dataset.lower()]
    for labels in LABEL_SETS.values():
        if labels.num_classes == num_classes:
            return labels
    names = ("background", *(f"part {k}" for k in range(1, num_classes)))
    return LabelSet(name=f"{num_classes} labels", names=names, flip_pairs=(), palette=voc_palette(num_classes))


def keypoint_set_for(model: nn.Module, count: int | None = None) -> KeypointSet | None:
    """The keypoint set a model predicts (its ``kset``), else the known set of ``count`` keypoints."""
    kset = getattr(model, "kset", None)
    if isinstance(kset, KeypointSet):
        return kset
    return {k.num_keypoints: k for k in (COCO17, MPII16, PPP14)}.get(count) if count else None


@dataclass
class Predictor:
    """A trained model ready for images without ground truth: rebuilds it, sizes its inputs, batches them.

    Build one with :meth:`load`; call it on a list of images (paths, Pillow images, (H, W, 3) arrays or (3, H, W)
    tensors) to get prediction-contract dicts at the images' own resolution, on the CPU.
    """

    model: nn.Module
    labels: LabelSet
    device: torch.device
    side: int | None = None
    max_side: int | None = None
    batch_size: int = 2
    source: str = "model"
    config: dict = field(default_factory=dict)

    @classmethod
    def load(cls, model_or_checkpoint: nn.Module | str | os.PathLike, *, size: int | None = None,
             device: str | torch.device | None = None, batch_size: int = 2, test_flip: bool = False,
             test_scales: tuple[float, ...] = ()) -> Predictor:
        """A predictor of a model object or of a checkpoint (``checkpoint.pt`` or its run folder).

        Args:
            size: the shorter side the model sees (default: its recipe's, :func:`recipe_input_size`).
            device: default: the model's own device, for a checkpoint CUDA when available.
            batch_size: images per forward pass.
            test_flip, test_scales: Parsing R-CNN's test-time augmentation (Table 8 †,
                :class:`hparse.models.parsing_rcnn.ParsingRCNN`); set on the model.
        """
        from .checkpoint import load_model
        from .profiles import get_device

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if size is not None and size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if isinstance(model_or_checkpoint, nn.Module):
            model = model_or_checkpoint
            device = torch.device(device) if device is not None else next(model.parameters()).device
            model.to(device)
            model_config, run_config, source = dict(getattr(model, "build_config", None) or {}), {}, "model"
        elif isinstance(model_or_checkpoint, (str, os.PathLike)):
            device = get_device(device)
            model, checkpoint = load_model(model_or_checkpoint, device=device)
            model_config = dict(checkpoint.get("model_config") or {})
            run_config, source = dict(checkpoint.get("config") or {}), str(model_or_checkpoint)
        else:
            raise TypeError(f"predict takes a model (nn.Module) or a checkpoint path, got "
                            f"{type(model_or_checkpoint).__name__}")
        if test_flip or test_scales:
            if not hasattr(model, "set_test_views"):
                raise PredictSetupError(f"{source}: test-time augmentation (--test-flip, --test-scales) is Parsing "
                                        f"R-CNN's (its Table 8); this model ({type(model).__name__}) has none")
            try:
                model.set_test_views(bool(test_flip), tuple(test_scales))
            except ValueError as err:
                raise PredictSetupError(f"{source}: {err}") from None
        num_classes = model_config.get("num_classes") or getattr(model, "num_classes", None)
        if num_classes is None:
            raise PredictSetupError(f"{source}: cannot tell how many part labels the model has (no build_config "
                                    "and no num_classes); build it with hparse.models.build_model")
        side, max_side = recipe_input_size(model_config, run_config)
        if size is not None:
            max_side = round(max_side * size / side) if (max_side and side) else None
            side = size
        labels = label_set_for(int(num_classes), run_config.get("dataset"))
        return cls(model=model.eval(), labels=labels, device=torch.device(device), side=side, max_side=max_side,
                   batch_size=batch_size, source=source, config={"model": model_config, "run": run_config})

    @property
    def name(self) -> str:
        return self.config.get("model", {}).get("name") or type(self.model).__name__

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the model sees for an image of ``height`` x ``width``."""
        return _scaled_size(height, width, self.side, self.max_side)

    @torch.no_grad()
    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> list[dict]:
        """Prediction-contract dicts (CPU, original resolution) of (H, W, 3) uint8 images, one forward pass."""
        from .trainer import _amp_dtype

        originals = [tuple(a.shape[:2]) for a in arrays]
        inputs = [_resize(_tensor(a), self.input_size(*hw)).to(self.device) for a, hw in zip(arrays, originals)]
        amp_dtype = _amp_dtype(self.device, None)
        self.model.eval()
        with _own_resize_off(self.model), torch.autocast(self.device.type, dtype=amp_dtype,
                                                         enabled=amp_dtype is not None):
            preds = self.model(inputs)
        return [_to_original(p, tuple(x.shape[-2:]), hw) for p, x, hw in zip(preds, inputs, originals)]

    def __call__(self, images: Sequence[Any], progress: bool = False) -> list[dict]:
        arrays = [_as_array(image, i) for i, image in enumerate(images)]
        out = []
        for start in _progress(range(0, len(arrays), self.batch_size), progress, len(arrays), self.batch_size):
            out.extend(self.predict_arrays(arrays[start : start + self.batch_size]))
        return out


def _tensor(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch.from_numpy warns on read-only memory (an np.asarray of a Pillow image)
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255)


def _progress(iterable, enabled: bool, total_images: int, step: int):
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    with tqdm(total=total_images, desc="predict", unit="image", dynamic_ncols=True) as bar:
        for item in iterable:
            yield item
            bar.update(min(step, total_images - bar.n))


def keep_persons(pred: dict, score_thresh: float) -> dict:
    """The persons of ``pred`` scoring at least ``score_thresh``, highest score first (the semantic map is the
    model's own and stays as it is)."""
    scores = pred["person_scores"]
    order = torch.argsort(scores.float(), descending=True, stable=True)
    order = order[scores[order] >= score_thresh]
    out = dict(pred)
    for key in ("person_parts", "person_scores", "person_boxes", "keypoints", "part_scores"):
        if key in pred and isinstance(pred[key], torch.Tensor) and pred[key].shape[0] == scores.shape[0]:
            out[key] = pred[key][order]
    return out


def predict(model_or_checkpoint: nn.Module | str | os.PathLike, images: Any, *, size: int | None = None,
            device: str | torch.device | None = None, batch_size: int = 2, score_thresh: float = 0.0,
            progress: bool = False) -> list[dict]:
    """Parse ``images`` with a trained model; one prediction-contract dict per image, at its own resolution.

    Args:
        model_or_checkpoint: a model built by :func:`hparse.models.build_model` (trained, or loaded with
            :func:`hparse.engine.checkpoint.load_model`), or a checkpoint: ``checkpoint.pt`` or its run folder.
        images: one image or a list of them: file paths (JPEG/PNG; see :func:`read_image`), Pillow images,
            (H, W, 3) / (H, W) uint8 or [0, 1] float arrays, or (3, H, W) tensors.
        size: the shorter side the model sees (default: its recipe's; :func:`recipe_input_size`).
        device: default: a model's own device; for a checkpoint CUDA when available.
        batch_size: images per forward pass.
        score_thresh: leave out persons scoring below it (default 0: every person the model returns, as
            ``model(images)`` does); persons are listed highest score first.
        progress: show a progress bar.

    Returns:
        Prediction-contract dicts on the CPU: ``semantic`` (H, W), ``person_parts`` (N, H, W), ``person_scores``
        (N,), and what the model adds (``person_boxes``, ``part_scores``, ``keypoints``).

    Raises:
        ImageReadError: an image cannot be read (the message names it).
        hparse.engine.checkpoint.CheckpointError: the checkpoint is missing or unreadable.
    """
    single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor))
    was_training = isinstance(model_or_checkpoint, nn.Module) and model_or_checkpoint.training
    predictor = Predictor.load(model_or_checkpoint, size=size, device=device, batch_size=batch_size)
    try:
        return [keep_persons(p, score_thresh) for p in predictor([images] if single else list(images), progress)]
    finally:
        predictor.model.train(was_training)  # a model passed in keeps its mode


# ------------------------------------------------------------------------------------------------- writing


def _boxes(pred: dict) -> torch.Tensor:
    """(N, 4) xyxy boxes: the model's, else the bounding boxes of the part maps."""
    if "person_boxes" in pred and len(pred["person_boxes"]) == len(pred["person_scores"]):
        return pred["person_boxes"].float()
    parts = pred["person_parts"]
    boxes = torch.zeros(len(parts), 4)
    for k, mask in enumerate(parts > 0):
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        if len(rows):
            boxes[k] = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
    return boxes


def prediction_record(pred: dict, labels: LabelSet) -> list[dict]:
    """One JSON-ready dict per person: ``person`` (1-based, as in ``person_parsing/``), ``score``, ``box`` (xyxy
    pixels), ``parts`` (pixel area of each part present, by name) and ``keypoints`` ((x, y, score) where given)."""
    parts = pred["person_parts"]
    boxes = _boxes(pred)
    n = labels.num_classes
    records = []
    for k in range(len(parts)):
        areas = torch.bincount(parts[k].reshape(-1).long(), minlength=n).tolist()
        record = {"person": k + 1, "score": round(float(pred["person_scores"][k]), 4),
                  "box": [round(float(v), 1) for v in boxes[k]],
                  "parts": {labels.names[c] if c < n else str(c): int(a) for c, a in enumerate(areas) if c and a}}
        if "keypoints" in pred and len(pred["keypoints"]) == len(parts):
            record["keypoints"] = [[round(float(x), 1), round(float(y), 1), round(float(s), 3)]
                                   for x, y, s in pred["keypoints"][k].tolist()]
        records.append(record)
    return records


def write_outputs(out_dir: str | os.PathLike, image_id: str, image: np.ndarray, pred: dict, labels: LabelSet,
                  keypoint_set: KeypointSet | None = None) -> dict:
    """Write one image's overlay PNG and prediction files (module docstring); return its JSON-lines record."""
    from ..metrics.io import write_predictions
    from ..viz.overlay import render_prediction

    out = Path(out_dir)
    write_predictions(pred, out, image_id)
    overlay = out / "overlay" / f"{image_id}.png"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_prediction(image, pred, labels, keypoint_set)).save(overlay)
    height, width = image.shape[:2]
    return {"id": image_id, "height": height, "width": width, "overlay": str(overlay.relative_to(out)),
            "num_persons": int(len(pred["person_scores"])), "persons": prediction_record(pred, labels)}


@dataclass
class ParseSummary:
    """What :func:`parse_files` did: images parsed, persons written, files skipped with why, where."""

    out_dir: Path
    parsed: list[str] = field(default_factory=list)
    persons: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_files(predictor: Predictor, files: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                score_thresh: float = 0.3, progress: bool = False,
                on_skip: Callable[[Path, str], None] | None = None) -> ParseSummary:
    """Parse image files into ``out_dir`` (the module docstring's layout); a file that cannot be read is skipped,
    reported through ``on_skip(path, message)`` and listed in the summary and in ``predictions.jsonl``.

    Files are read one batch at a time, so a folder of any length fits in memory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(f) for f in files]
    ids = _image_ids(paths)
    summary = ParseSummary(out)
    keypoint_set = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="image", dynamic_ncols=True)
    try:
        with open(out / JSONL_NAME, "w") as jsonl:
            for batch in _batches(list(zip(paths, ids)), predictor.batch_size):
                images = []  # per item: the array, or the message of why it cannot be read
                for path, _ in batch:
                    try:
                        images.append(read_image(path))
                    except ImageReadError as err:
                        images.append(err.message)
                arrays = [a for a in images if not isinstance(a, str)]
                preds = iter(predictor.predict_arrays(arrays) if arrays else [])
                for (path, image_id), image in zip(batch, images):  # records in the order of the inputs
                    if isinstance(image, str):
                        summary.skipped.append((path, image))
                        jsonl.write(json.dumps({"image": str(path), "error": image}) + "\n")
                        if on_skip is not None:
                            on_skip(path, image)
                        continue
                    pred = keep_persons(next(preds), score_thresh)
                    if keypoint_set is None and "keypoints" in pred:
                        keypoint_set = keypoint_set_for(predictor.model, pred["keypoints"].shape[1])
                    record = write_outputs(out, image_id, image, pred, predictor.labels, keypoint_set)
                    jsonl.write(json.dumps({"image": str(path), **record}) + "\n")
                    summary.parsed.append(image_id)
                    summary.persons += record["num_persons"]
                    summary.overlays.append(out / record["overlay"])
                jsonl.flush()
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return summary
