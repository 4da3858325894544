"""PASCAL-Person-Part (Chen et al., CVPR 2014): loader and writer of the layout the official releases unpack to.

Three public downloads make the instance-level dataset (shared/reference/metrics_and_formats.md §B3, §C):

- the **semantic release** ``pascal_person_part.zip`` (DeepLab "attention to scale"): 6 merged parts per pixel and
  the official split lists (1,716 train / 1,817 test);
- the **Pascal-Part annotations** ``trainval.tar.gz``: one ``Annotations_Part/<id>.mat`` per VOC image, holding
  every object's silhouette mask (and its parts);
- the **VOC2010 images** (VOC2012's ``JPEGImages`` holds them as well).

Expected tree::

    root/
      JPEGImages/<id>.jpg
      Annotations_Part/<id>.mat                      anno = {imname, objects[]}; object = {class, class_ind,
                                                     mask, parts[]}; persons have class 'person' (class_ind 15)
      pascal_person_part/
        pascal_person_part_gt/<id>.png               labels 0..6 (PASCAL_PERSON_PART_LABELS); or SegmentationPart/
        pascal_person_part_trainval_list/train.txt   lines '/JPEGImages/<id>.jpg /SegmentationPart/<id>.png'
        pascal_person_part_trainval_list/val.txt     the 1,817 test images

Choice of instance-level layout. The notes list three: (1) the semantic release plus Pascal-Part's person objects,
(2) the ``SegmentationPart/`` + ``SegmentationPartInstance/`` folders of the Oxford evaluation code, (3) a
CIHP-style conversion shared on a third-party drive. This loader reads (1): it is built only from the datasets'
own public files, its semantic labels are exactly the official benchmark's (so mIoU is comparable), and each
Pascal-Part person object is one human, which is what the instance level of the benchmark counts.

What the loader returns:

- ``semantic`` = the release's PNG (6 merged parts; there is no left/right, so no flip swap);
- ``instances`` = the silhouette masks of the ``person`` objects of the ``.mat``, numbered in file order; where
  silhouettes overlap the later one is painted on top (VOC silhouettes come from VOC's non-overlapping object
  segmentation, so this should not arise); persons with an empty mask are left out;
- ``boxes`` are the silhouettes' tight boxes;
- ``keypoints`` has K = 0: the 14 PASCAL-Person-Part keypoints (Xia et al., CVPR 2017) are not in these releases.

Every part pixel of the PNG must lie on a person's silhouette. A part pixel on no silhouette is an inconsistency
between the two releases: by default it is an error; ``unassigned="ignore"`` turns such pixels into 255 (ignore)
and counts them in ``meta['unassigned_pixels']``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.io

from .contract import IGNORE_INDEX
from .io import (
    DatasetError,
    ParsingDataset,
    Problems,
    boxes_from_instances,
    check_same_size,
    check_sizes_before_decode,
    first_missing,
    list_dir,
    make_sample,
    read_checked_label,
    read_id_list,
    read_image,
    relabel_by_segment,
    require_dir,
    safe_stem,
    synth_segments,
    write_image,
    write_label_png,
)
from .labels import PASCAL_PERSON_PART_LABELS

__all__ = [
    "PascalPersonPart",
    "write_pascal_person_part",
    "PPP_SPLITS",
    "read_pascal_part_persons",
    "SYNTH_SEGMENT_TO_PPP",
    "synth_to_pascal_person_part",
]

#: split name -> list file of the DeepLab release ("val.txt" holds the 1,817 images papers call "test").
PPP_SPLITS = {"train": "train.txt", "val": "val.txt", "test": "val.txt"}
PERSON_CLASS = "person"
PERSON_CLASS_IND = 15
_RELEASE = "pascal_person_part"
_LISTS = "pascal_person_part_trainval_list"
_LABEL_DIRS = ("pascal_person_part_gt", "SegmentationPart")


def _as_list(value) -> list:
    """A MATLAB struct array read with ``squeeze_me`` is a struct (one element) or an array; make it a list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return list(value.ravel())
    return [value]


def read_pascal_part_persons(path: str | os.PathLike, image_hw: tuple[int, int] | None, image_path: Path,
                             problems: Problems | None = None) -> list[np.ndarray] | None:
    """Silhouettes of the ``person`` objects of a Pascal-Part ``Annotations_Part/<id>.mat``, in file order.

    Returns a list of (H, W) bool masks. Raises :class:`DatasetError` naming the file if it is missing, unreadable,
    lacks ``anno.objects``, or holds a mask whose size differs from the image's (not checked when ``image_hw`` is
    ``None``). With a collecting ``problems`` these go to it instead (every broken object is listed) and the result
    is ``None`` when any was found.
    """
    problems = Problems() if problems is None else problems
    path = Path(path)
    if not path.is_file():
        problems.add(DatasetError(path, "Pascal-Part annotation is missing"))
        return None
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several unrelated types for a damaged file
        problems.add(DatasetError(path, f"Pascal-Part annotation is unreadable or corrupt ({type(err).__name__}: "
                                  f"{err})"))
        return None
    anno = mat.get("anno")
    if anno is None or not hasattr(anno, "objects"):
        problems.add(DatasetError(path, "has no 'anno' struct with an 'objects' field (not a Pascal-Part "
                                  "annotation?)"))
        return None
    found = len(problems)
    persons = []
    for k, obj in enumerate(_as_list(anno.objects)):
        cls, cls_ind = getattr(obj, "class", None), getattr(obj, "class_ind", None)
        if cls != PERSON_CLASS and cls_ind != PERSON_CLASS_IND:
            continue
        mask = np.asarray(getattr(obj, "mask", None))
        if mask.ndim != 2:
            problems.add(DatasetError(path, f"object {k + 1} (person) has no 2-D mask (got shape {mask.shape})"))
            continue
        if image_hw is not None and tuple(mask.shape) != tuple(image_hw):
            problems.attempt(check_same_size, mask, image_hw, path, image_path)
            continue
        persons.append(mask > 0)
    return None if len(problems) > found else persons


class PascalPersonPart(ParsingDataset):
    """PASCAL-Person-Part at the instance level: the DeepLab release's 6 parts + Pascal-Part's person silhouettes.

    Args:
        root: the folder holding ``JPEGImages/``, ``Annotations_Part/`` and ``pascal_person_part/``.
        split: ``"train"`` (1,716 images) or ``"val"`` / ``"test"`` (the same 1,817 images of ``val.txt``).
        transform: optional callable applied to each sample.
        unassigned: what to do with part pixels on no person silhouette: ``"error"`` or ``"ignore"`` (set to 255).
        check_files: list the folders once at construction and fail at once, naming the first missing file
            (``hparse data verify`` reports all instead).
    """

    name = "PASCAL-Person-Part"
    labels = PASCAL_PERSON_PART_LABELS

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[[dict], dict] | None = None,
                 unassigned: str = "error", check_files: bool = True):
        if split not in PPP_SPLITS:
            raise ValueError(f"PASCAL-Person-Part split must be one of {sorted(PPP_SPLITS)}, got {split!r}")
        if unassigned not in ("error", "ignore"):
            raise ValueError(f"unassigned must be 'error' or 'ignore', got {unassigned!r}")
        self.root = require_dir(root, "the PASCAL-Person-Part root (with JPEGImages/, Annotations_Part/ and "
                                "pascal_person_part/)")
        self.split, self.transform, self.unassigned = split, transform, unassigned
        release = require_dir(self.root / _RELEASE, "the unpacked pascal_person_part.zip")
        self.label_dir = next((release / d for d in _LABEL_DIRS if (release / d).is_dir()), release / _LABEL_DIRS[0])
        require_dir(self.label_dir, f"the part label folder {_RELEASE}/{_LABEL_DIRS[0]}/")
        lines = read_id_list(release / _LISTS / PPP_SPLITS[split], f"the PASCAL-Person-Part {split} list")
        # A line is '/JPEGImages/<id>.jpg /SegmentationPart/<id>.png' (or just '<id>'): the id is the first stem.
        self.ids = [Path(line.split()[0]).stem for line in lines]
        if check_files:
            self._check_listed_files()

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def label_path(self, image_id: str) -> Path:
        return self.label_dir / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return self.root / "Annotations_Part" / f"{image_id}.mat"

    def _check_listed_files(self) -> None:
        for folder, suffix, what in ((self.root / "JPEGImages", ".jpg", "VOC image"),
                                     (self.label_dir, ".png", "part label PNG"),
                                     (self.root / "Annotations_Part", ".mat", "Pascal-Part annotation")):
            present = list_dir(require_dir(folder, f"the {what} folder"))
            first_missing([folder / f"{i}{suffix}" for i in self.ids if f"{i}{suffix}" not in present],
                          f"listed {what}")

    def load(self, index: int, thorough: bool = False, problems: Problems | None = None) -> dict | None:
        problems = Problems() if problems is None else problems
        image_id = self.ids[index]
        image_path, label_path = self.image_path(image_id), self.label_path(image_id)
        check_sizes_before_decode(image_path, (label_path,), problems)
        image = problems.attempt(read_image, image_path)
        hw = None if image is None else image.shape[:2]
        semantic = read_checked_label(label_path, hw, image_path, problems, self.labels, "part")
        silhouettes = read_pascal_part_persons(self.annotation_path(image_id), hw, image_path, problems=problems)
        if semantic is None or silhouettes is None or any(m.shape != semantic.shape for m in silhouettes):
            return None  # (only reached while collecting: a raising ``problems`` has raised already)
        silhouettes = [m for m in silhouettes if m.any()]
        instances = np.zeros(semantic.shape, dtype=np.int64)
        for k, mask in enumerate(silhouettes, start=1):
            instances[mask] = k  # later persons on top
        unassigned = (semantic > 0) & (semantic != IGNORE_INDEX) & (instances == 0)
        count = int(unassigned.sum())
        if count and self.unassigned == "error":
            ys, xs = np.nonzero(unassigned)
            problems.add(DatasetError(label_path, f"{count} part pixels lie on no person silhouette of "
                                      f"{self.annotation_path(image_id)} (first at x={int(xs[0])}, y={int(ys[0])}); "
                                      "pass unassigned='ignore' to ignore them"))
        if problems:
            return None
        semantic = np.where(unassigned, IGNORE_INDEX, semantic)
        boxes = boxes_from_instances(instances, len(silhouettes))
        keypoints = np.zeros((len(silhouettes), 0, 3), dtype=np.float32)
        meta = {"id": image_id, "dataset": "pascal_person_part", "split": self.split, "image_path": str(image_path),
                "unassigned_pixels": count}
        return make_sample(image, semantic, instances, boxes, keypoints, meta)


def write_pascal_person_part(samples: Iterable[dict], root: str | os.PathLike, split: str = "val") -> Path:
    """Write data-contract samples (PASCAL-Person-Part labels) in the layout above; return the list file.

    Writes ``JPEGImages/<id>.jpg``, the part PNG in ``pascal_person_part/pascal_person_part_gt/``, and an
    ``Annotations_Part/<id>.mat`` whose ``anno.objects`` holds one ``person`` object per person (silhouette =
    ``instances == k``; ``parts`` left empty, since the loader takes parts from the PNG), and the split's list file
    (rewritten, not appended to) with the DeepLab line format.
    """
    if split not in PPP_SPLITS:
        raise ValueError(f"PASCAL-Person-Part split must be one of {sorted(PPP_SPLITS)}, got {split!r}")
    root = Path(root)
    lines = []
    for index, sample in enumerate(samples):
        stem = safe_stem(sample, index)
        semantic = sample["semantic"].cpu().numpy()
        if ((semantic >= PASCAL_PERSON_PART_LABELS.num_classes) & (semantic != IGNORE_INDEX)).any():
            raise ValueError(f"sample {stem!r}: semantic has values outside the PASCAL-Person-Part label set")
        instances = sample["instances"].cpu().numpy()
        num = len(sample["boxes"])
        objects = np.empty((1, num), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
        for k in range(1, num + 1):
            no_parts = np.zeros((1, 0), dtype=[("part_name", "O"), ("mask", "O")])
            objects[0, k - 1] = (PERSON_CLASS, PERSON_CLASS_IND, (instances == k).astype(np.uint8), no_parts)
        (root / "Annotations_Part").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "Annotations_Part" / f"{stem}.mat", {"anno": {"imname": stem, "objects": objects}})
        write_image(sample["image"], root / "JPEGImages" / f"{stem}.jpg")
        write_label_png(semantic, root / _RELEASE / _LABEL_DIRS[0] / f"{stem}.png")
        lines.append(f"/JPEGImages/{stem}.jpg /SegmentationPart/{stem}.png")
    list_path = root / _RELEASE / _LISTS / PPP_SPLITS[split]
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text("".join(f"{line}\n" for line in lines))
    return list_path


#: SynthCrowd body segment -> PASCAL-Person-Part part (the astmt-style merge of §B3: hands with the lower arms, feet
#: with the lower legs, the neck - drawn in the torso segment - with the torso).
SYNTH_SEGMENT_TO_PPP = {
    "head": "Head", "hair_back": "Head", "torso": "Torso", "pelvis": "Torso",
    "left_upper_arm": "Upper Arms", "right_upper_arm": "Upper Arms",
    "left_forearm": "Lower Arms", "right_forearm": "Lower Arms",
    "left_thigh": "Upper Legs", "right_thigh": "Upper Legs",
    "left_shin": "Lower Legs", "right_shin": "Lower Legs", "left_foot": "Lower Legs", "right_foot": "Lower Legs",
}


def synth_to_pascal_person_part(dataset, index: int) -> dict:
    """SynthCrowd image ``index`` relabelled to the six PASCAL-Person-Part parts by body segment (keypoints
    dropped: SynthCrowd draws COCO-17, not the 14 PASCAL-Person-Part joints)."""
    return relabel_by_segment(dataset[index], synth_segments(dataset, index), SYNTH_SEGMENT_TO_PPP,
                              PASCAL_PERSON_PART_LABELS, keypoints=False)
