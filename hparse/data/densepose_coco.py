"""DensePose-COCO (Güler et al., CVPR 2018) as 14-part human parsing: loader and writer of the official layout.

On disk (detectron2 ``projects/DensePose/doc/DENSEPOSE_DATASETS.md``; shared/reference/metrics_and_formats.md §B4)::

    root/
      annotations/densepose_train2014.json             39,210 persons / 26,437 images
      annotations/densepose_valminusminival2014.json    7,297 / 5,984
      annotations/densepose_minival2014.json            2,243 / 1,508
      train2014/COCO_train2014_<12 digits>.jpg         COCO 2014 images
      val2014/COCO_val2014_<12 digits>.jpg

Each json is COCO-style; a DensePose person annotation adds ``dp_masks``: 14 entries, each empty or a COCO RLE
``{counts, size}`` of a 256 x 256 mask **in the person's box frame**, entry ``i`` being coarse part ``i + 1``
(DENSEPOSE_LABELS: Torso, Right Hand, ..., Head), later entries overwriting earlier ones. It also carries the fine
``dp_I/dp_U/dp_V`` points (not read) and COCO's 17 ``keypoints`` where annotated.

Pasting to the image (as MG-HumanParsing builds its 15-class parsing ground truth, ``lib/transforms/
annotations.py``): the box is truncated to integers, ``x1 = int(x)``, ``x2 = x1 + int(w)`` (likewise y), and
clipped to the image; the 256 x 256 map is resized with nearest neighbour to ``(x2 - x1, y2 - y1)`` - squeezed, not
cropped, when the box was clipped - and its nonzero pixels are pasted. Persons are pasted in annotation order,
later ones on top, which also builds ``instances``. Nearest neighbour here is OpenCV's ``INTER_NEAREST``: output
pixel ``i`` reads input ``floor(i * 256 / size)``.

What the loader returns:

- persons = the image's annotations that have ``dp_masks`` (category person, not crowd), in file order; COCO
  persons without DensePose annotation are not persons here (``meta['skipped_persons']`` counts them);
- ``boxes`` = the annotations' ``bbox`` (xywh -> xyxy, clipped to the image), not the pasted masks: DensePose masks
  cover the body surface only, and the COCO box is the detection target;
- ``keypoints`` = COCO-17 ``(x, y, v)`` where present, else all absent (K = 17 always).

Splits: ``train`` (= ``train2014``), ``valminusminival2014``, ``minival2014`` and ``val`` (= ``minival2014``, the
evaluation set of detectron2's DensePose configurations).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from .io import (
    DatasetError,
    DatasetNotFoundError,
    ParsingDataset,
    Problems,
    first_missing,
    list_dir,
    make_sample,
    read_image,
    relabel_by_segment,
    require_dir,
    safe_stem,
    synth_segments,
    write_image,
)
from .labels import COCO17, DENSEPOSE_LABELS

__all__ = [
    "DensePoseCOCO",
    "write_densepose_coco",
    "DENSEPOSE_SPLITS",
    "decode_dp_masks",
    "check_dp_points",
    "paste_dp_masks",
    "dp_grid_from_parts",
    "SYNTH_SEGMENT_TO_DENSEPOSE",
    "synth_to_densepose",
]

#: split -> (annotation file, image folder)
DENSEPOSE_SPLITS = {
    "train2014": ("densepose_train2014.json", "train2014"),
    "valminusminival2014": ("densepose_valminusminival2014.json", "val2014"),
    "minival2014": ("densepose_minival2014.json", "val2014"),
}
_ALIASES = {"train": "train2014", "val": "minival2014", "valminusminival": "valminusminival2014",
            "minival": "minival2014"}
DP_SIZE = 256
NUM_DP_PARTS = 14
PERSON_CATEGORY = 1


def _nearest_index(size: int) -> np.ndarray:
    """OpenCV INTER_NEAREST source index of each of ``size`` output pixels resized from ``DP_SIZE``."""
    return np.minimum(np.floor(np.arange(size) * (DP_SIZE / size)).astype(np.int64), DP_SIZE - 1)


def decode_dp_masks(dp_masks: list, where: str, path: Path) -> np.ndarray:
    """14 ``dp_masks`` entries -> one (256, 256) int64 part map (entry i -> label i + 1, later on top)."""
    if not isinstance(dp_masks, list) or len(dp_masks) > NUM_DP_PARTS:
        count = len(dp_masks) if isinstance(dp_masks, list) else type(dp_masks).__name__
        raise DatasetError(path, f"{where}: dp_masks has {count} entries; DensePose has {NUM_DP_PARTS} coarse parts "
                           f"(labels 1..{NUM_DP_PARTS})")
    grid = np.zeros((DP_SIZE, DP_SIZE), dtype=np.int64)
    for i, rle in enumerate(dp_masks):
        if not rle:
            continue
        if not isinstance(rle, dict) or "counts" not in rle or list(rle.get("size", [])) != [DP_SIZE, DP_SIZE]:
            size = rle.get("size") if isinstance(rle, dict) else None
            raise DatasetError(path, f"{where}: dp_masks[{i}] is not an RLE of a {DP_SIZE}x{DP_SIZE} mask "
                               f"(size {size})")
        try:
            with warnings.catch_warnings():
                # pycocotools' decode trips numpy 2's copy-keyword DeprecationWarning; the result is unaffected.
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = mask_utils.decode(rle)
        except Exception as err:  # pycocotools raises TypeError/ValueError/... on damaged counts
            raise DatasetError(path, f"{where}: dp_masks[{i}] RLE cannot be decoded ({err})") from None
        grid[mask > 0] = i + 1
    return grid


def check_dp_points(ann: dict, where: str, path: Path, problems: Problems | None = None) -> None:
    """The fine DensePose points of one annotation must agree: ``dp_x, dp_y, dp_I, dp_U, dp_V`` of equal length,
    ``dp_x, dp_y`` in the box frame [0, 256], ``dp_I`` a chart index 1..24, ``dp_U, dp_V`` in [0, 1]. The loader
    does not use the points; ``hparse data verify`` checks them so that a UV-training user learns of damage early.
    Raises :class:`DatasetError` on the first problem, or adds every one to a collecting ``problems``."""
    problems = Problems() if problems is None else problems
    fields = ("dp_x", "dp_y", "dp_I", "dp_U", "dp_V")
    present = [f for f in fields if f in ann]
    if not present:
        return
    if len(present) != len(fields):
        problems.add(DatasetError(path, f"{where} has {present} but not {sorted(set(fields) - set(present))}"))
        return
    try:
        points = {f: np.asarray(ann[f], dtype=np.float64).reshape(-1) for f in fields}
    except (TypeError, ValueError) as err:
        problems.add(DatasetError(path, f"{where}: DensePose points are not numeric lists ({err})"))
        return
    lengths = {f: len(v) for f, v in points.items()}
    if len(set(lengths.values())) != 1:
        problems.add(DatasetError(path, f"{where}: DensePose point lists differ in length: {lengths}"))
        return
    bad = {
        "dp_x/dp_y outside [0, 256]": ((points["dp_x"] < 0) | (points["dp_x"] > DP_SIZE)
                                       | (points["dp_y"] < 0) | (points["dp_y"] > DP_SIZE)),
        "dp_I outside the charts 1..24": (points["dp_I"] < 1) | (points["dp_I"] > 24)
        | (points["dp_I"] != np.round(points["dp_I"])),
        "dp_U/dp_V outside [0, 1]": ((points["dp_U"] < 0) | (points["dp_U"] > 1)
                                     | (points["dp_V"] < 0) | (points["dp_V"] > 1)),
    }
    for what, mask in bad.items():
        if mask.any():
            problems.add(DatasetError(path, f"{where}: {int(mask.sum())} DensePose points have {what}"))


def paste_dp_masks(grid: np.ndarray, bbox: list[float], hw: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize a (256, 256) part map into its truncated, clipped box. Returns ``(patch, (x1, y1))``; the patch is
    empty when the box has no pixel inside the image."""
    height, width = hw
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = int(x), int(y)
    x2, y2 = x1 + int(w), y1 + int(h)
    x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
    y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
    if x2 <= x1 or y2 <= y1:
        return np.zeros((0, 0), dtype=grid.dtype), (x1, y1)
    return grid[np.ix_(_nearest_index(y2 - y1), _nearest_index(x2 - x1))], (x1, y1)


class DensePoseCOCO(ParsingDataset):
    """DensePose-COCO's 14 coarse parts pasted to the image, persons and COCO keypoints, as the data contract.

    Args:
        root: the folder holding ``annotations/`` and the COCO image folders ``train2014/``, ``val2014/``.
        split: ``"train"``/``"train2014"``, ``"valminusminival2014"``, ``"minival2014"`` or ``"val"`` (minival).
        transform: optional callable applied to each sample.
        check_files: list the image folder once at construction and fail at once, naming the first missing image
            (``hparse data verify`` reports all instead).
    """

    name = "DensePose-COCO"
    labels = DENSEPOSE_LABELS

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[[dict], dict] | None = None,
                 check_files: bool = True):
        split = _ALIASES.get(split, split)
        if split not in DENSEPOSE_SPLITS:
            raise ValueError(f"DensePose-COCO split must be one of {sorted(DENSEPOSE_SPLITS) + sorted(_ALIASES)}, "
                             f"got {split!r}")
        self.root = require_dir(root, "the DensePose-COCO root (with annotations/ and the COCO image folders)")
        self.split, self.transform = split, transform
        json_name, image_folder = DENSEPOSE_SPLITS[split]
        self.annotation_path = self.root / "annotations" / json_name
        data = self._read_json(self.annotation_path)
        self.image_dir = require_dir(self.root / image_folder, f"the COCO image folder {image_folder}/")
        self.images = {}
        for k, entry in enumerate(data["images"]):
            if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
                raise DatasetError(self.annotation_path, f"images[{k}] lacks 'id' or 'file_name'")
            self.images[str(entry["id"])] = entry
        self.annotations: dict[str, list[dict]] = {key: [] for key in self.images}
        for ann in data.get("annotations", []):
            key = str(ann.get("image_id"))
            if key not in self.annotations:
                raise DatasetError(self.annotation_path, f"annotation {ann.get('id')} refers to image_id {key}, "
                                   "which is not in 'images'")
            self.annotations[key].append(ann)
        self.ids = sorted(self.images, key=int)
        if check_files:
            present = list_dir(self.image_dir)
            first_missing([self.image_dir / self.images[i]["file_name"] for i in self.ids
                           if self.images[i]["file_name"] not in present], "image listed in the annotations")

    @staticmethod
    def _read_json(path: Path) -> dict:
        if not path.is_file():
            raise DatasetNotFoundError(path, "does not exist; expected the DensePose-COCO annotation file")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(path, f"annotation file is unreadable or not valid JSON ({err})") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DatasetError(path, "is not a COCO annotation file (no 'images' list)")
        return data

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self.images[image_id]["file_name"]

    def load(self, index: int, thorough: bool = False, problems: Problems | None = None) -> dict | None:
        problems = Problems() if problems is None else problems
        image_id = self.ids[index]
        entry, path = self.images[image_id], self.annotation_path
        image_path = self.image_path(image_id)
        image = problems.attempt(read_image, image_path)
        annotated_hw = (entry.get("height"), entry.get("width"))
        if image is not None:
            height, width = hw = image.shape[:2]
            if annotated_hw != (height, width):
                problems.add(DatasetError(image_path, f"size {width}x{height} differs from the annotation's "
                                          f"{entry.get('width')}x{entry.get('height')} (image id {image_id} in "
                                          f"{path})"))
        elif all(isinstance(v, int) and v > 0 for v in annotated_hw):
            height, width = hw = annotated_hw  # the persons can still be checked against the annotated size
        else:
            return None  # (only reached while collecting: the image problem is recorded)
        persons = [a for a in self.annotations[image_id] if a.get("dp_masks") is not None]
        skipped = len(self.annotations[image_id]) - len(persons)
        semantic = np.zeros(hw, dtype=np.int64)
        instances = np.zeros(hw, dtype=np.int64)
        boxes = np.zeros((len(persons), 4), dtype=np.float32)
        keypoints = np.zeros((len(persons), COCO17.num_keypoints, 3), dtype=np.float32)
        for k, ann in enumerate(persons, start=1):
            where = f"annotation {ann.get('id')} of image {image_id}"
            if ann.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY or ann.get("iscrowd", 0):
                problems.add(DatasetError(path, f"{where} has dp_masks but is not a single person (category "
                                          f"{ann.get('category_id')}, iscrowd {ann.get('iscrowd')})"))
            box = problems.attempt(_person_box, ann.get("bbox"), hw, where, path)
            if box is not None:
                boxes[k - 1] = box
            if thorough:
                check_dp_points(ann, where, path, problems)
            grid = problems.attempt(decode_dp_masks, ann["dp_masks"], where, path)
            if grid is not None and box is not None:
                patch, (x1, y1) = paste_dp_masks(grid, ann["bbox"], hw)
                region = (slice(y1, y1 + patch.shape[0]), slice(x1, x1 + patch.shape[1]))
                on = patch > 0
                semantic[region][on] = patch[on]  # later persons on top
                instances[region][on] = k
            kps = problems.attempt(_person_keypoints, ann.get("keypoints"), where, path)
            if kps is not None:
                keypoints[k - 1] = kps
        if problems:
            return None
        meta = {"id": image_id, "dataset": "densepose_coco", "split": self.split, "image_path": str(image_path),
                "annotation_ids": [a.get("id") for a in persons], "skipped_persons": skipped}
        return make_sample(image, semantic, instances, boxes, keypoints, meta)


def _person_box(bbox, hw: tuple[int, int], where: str, path: Path) -> np.ndarray:
    """An annotation's ``bbox`` (xywh) as an xyxy box clipped to the image; raises :class:`DatasetError`."""
    height, width = hw
    if not (isinstance(bbox, list) and len(bbox) == 4) or bbox[2] <= 0 or bbox[3] <= 0:
        raise DatasetError(path, f"{where} has bbox {bbox}; expected [x, y, w, h] with w, h > 0")
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([min(max(x, 0), width), min(max(y, 0), height),
                    min(max(x + w, 0), width), min(max(y + h, 0), height)], dtype=np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DatasetError(path, f"{where}: bbox {bbox} lies outside the {width}x{height} image")
    return box


def _person_keypoints(kps, where: str, path: Path) -> np.ndarray | None:
    """An annotation's COCO-17 ``keypoints`` as (17, 3), or ``None`` when it has none; raises :class:`DatasetError`."""
    if not kps:
        return None
    if len(kps) != 3 * COCO17.num_keypoints:
        raise DatasetError(path, f"{where} has {len(kps)} keypoint values; expected {3 * COCO17.num_keypoints} "
                           "(17 x (x, y, v))")
    array = np.asarray(kps, dtype=np.float32).reshape(COCO17.num_keypoints, 3)
    if not np.isin(array[:, 2], (0, 1, 2)).all():
        raise DatasetError(path, f"{where} has keypoint visibilities outside 0, 1, 2")
    return array


# ---------------------------------------------------------------------------------------------- writing


def dp_grid_from_parts(parts: np.ndarray) -> np.ndarray:
    """The (256, 256) box-frame map that :func:`paste_dp_masks` resizes back to ``parts`` (h, w) exactly when
    h, w <= 256: grid row ``j`` holds the last row ``i`` whose nearest-neighbour source ``floor(i * 256 / h)`` is at
    most ``j``, so every source the reader samples holds the right row (likewise for columns)."""
    h, w = parts.shape
    rows = np.searchsorted(_nearest_index(h), np.arange(DP_SIZE), side="right") - 1
    cols = np.searchsorted(_nearest_index(w), np.arange(DP_SIZE), side="right") - 1
    return parts[np.ix_(rows, cols)]


def write_densepose_coco(samples: Iterable[dict], root: str | os.PathLike, split: str = "val") -> Path:
    """Write data-contract samples (DensePose labels, COCO-17 or no keypoints) in DensePose-COCO's layout.

    Returns the annotation file. Each person becomes one annotation: ``bbox`` = the person's box and mask extent
    rounded outwards to whole pixels (so the loader's truncation pastes the whole mask; integer boxes are kept as
    they are), ``dp_masks`` = its part map in that box as 14 RLEs of a 256 x 256 grid made with
    :func:`dp_grid_from_parts` (exact for boxes up to 256 pixels), ``segmentation`` = the RLE of its silhouette,
    and its keypoints. Pixels with label 255 are not representable and are written as background.
    """
    split = _ALIASES.get(split, split)
    if split not in DENSEPOSE_SPLITS:
        raise ValueError(f"DensePose-COCO split must be one of {sorted(DENSEPOSE_SPLITS)}, got {split!r}")
    json_name, image_folder = DENSEPOSE_SPLITS[split]
    root = Path(root)
    images, annotations = [], []
    for index, sample in enumerate(samples):
        stem = safe_stem(sample, index)
        semantic = sample["semantic"].cpu().numpy()
        instances = sample["instances"].cpu().numpy()
        if ((semantic >= DENSEPOSE_LABELS.num_classes) & (semantic != 255)).any():
            raise ValueError(f"sample {stem!r}: semantic has values outside the DensePose label set")
        kps = sample["keypoints"].cpu().numpy()
        if kps.ndim != 3 or kps.shape[1] not in (0, COCO17.num_keypoints):
            raise ValueError(f"sample {stem!r}: keypoints of shape {tuple(kps.shape)} are not COCO-17")
        height, width = semantic.shape
        image_id = index + 1
        file_name = f"{stem}.jpg"
        write_image(sample["image"], root / image_folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for k, box in enumerate(sample["boxes"].cpu().numpy().reshape(-1, 4), start=1):
            person = instances == k
            x1, y1, x2, y2 = np.floor(box[:2]).tolist() + np.ceil(box[2:]).tolist()
            if person.any():
                ys, xs = np.nonzero(person)
                x1, y1 = min(x1, xs.min()), min(y1, ys.min())
                x2, y2 = max(x2, xs.max() + 1), max(y2, ys.max() + 1)
            x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
            parts = np.where(person & (semantic != 255), semantic, 0)[y1:y2, x1:x2]
            grid = dp_grid_from_parts(parts) if parts.size else np.zeros((DP_SIZE, DP_SIZE), dtype=np.int64)
            dp_masks = [_rle(grid == label) if (grid == label).any() else []
                        for label in range(1, NUM_DP_PARTS + 1)]
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": PERSON_CATEGORY, "iscrowd": 0,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(person.sum()), "segmentation": _rle(person),
                   "dp_masks": dp_masks}
            if kps.shape[1]:
                ann["keypoints"] = [float(v) for v in kps[k - 1].reshape(-1)]
                ann["num_keypoints"] = int((kps[k - 1, :, 2] > 0).sum())
            annotations.append(ann)
    categories = [{"id": PERSON_CATEGORY, "name": "person", "supercategory": "person",
                   "keypoints": list(COCO17.names), "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}]
    path = root / "annotations" / json_name
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / image_folder).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": rle["counts"].decode("ascii"), "size": [int(s) for s in rle["size"]]}


#: SynthCrowd body segment -> DensePose coarse part. SynthCrowd draws hands as the ends of the forearms, so the two
#: hand parts stay empty; the neck (drawn in the torso segment) goes to the torso.
SYNTH_SEGMENT_TO_DENSEPOSE = {
    "head": "Head", "hair_back": "Head", "torso": "Torso", "pelvis": "Torso",
    "left_upper_arm": "Upper Arm Left", "right_upper_arm": "Upper Arm Right",
    "left_forearm": "Lower Arm Left", "right_forearm": "Lower Arm Right",
    "left_thigh": "Upper Leg Left", "right_thigh": "Upper Leg Right",
    "left_shin": "Lower Leg Left", "right_shin": "Lower Leg Right",
    "left_foot": "Left Foot", "right_foot": "Right Foot",
}


def synth_to_densepose(dataset, index: int) -> dict:
    """SynthCrowd image ``index`` relabelled to DensePose's 14 coarse parts by body segment (COCO-17 keypoints
    kept, as DensePose-COCO has the same)."""
    return relabel_by_segment(dataset[index], synth_segments(dataset, index), SYNTH_SEGMENT_TO_DENSEPOSE,
                              DENSEPOSE_LABELS)
