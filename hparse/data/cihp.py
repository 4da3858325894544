"""CIHP (Crowd Instance-level Human Parsing, Gong et al., ECCV 2018): loader and writer of the official layout.

On disk (the archive ``instance-level_human_parsing.tar.gz``; shared/reference/metrics_and_formats.md §B1)::

    instance-level_human_parsing/          <- root
      Training/
        train_id.txt                       7-digit stems, one per line
        Images/<id>.jpg
        Category_ids/<id>.png              part label 0..19 per pixel (CIHP_LABELS)
        Human_ids/<id>.png                 person index 1..N per pixel, 0 background
        Instance_ids/<id>.png              part-instance id = 20 * (human_id - 1) + category_id
        Categories/ Humans/ Instances/     colour visualisations (not read)
      Validation/
        val_id.txt, Images/, Category_ids/, Human_ids/, Instance_ids/, ...
      Testing/                             images only (no labels released) - not loadable here

``root`` is the ``instance-level_human_parsing`` folder. The list file is looked for inside the split folder
(``Training/train_id.txt``) and, failing that, next to it (``root/train_id.txt``).

What the loader returns (the data contract of DESIGN.md):

- ``semantic`` = ``Category_ids``; ``instances`` = ``Human_ids`` with its ids **compacted** to ``1..N`` in
  increasing order (a gap in the file's numbering would otherwise give a person with no pixels and a degenerate
  box); the file's ids are kept in ``meta['person_ids']``.
- ``boxes`` are the tight boxes of the ``Human_ids`` masks (CIHP has no box annotation).
- ``keypoints`` has K = 0: CIHP has no keypoints.

``Instance_ids`` is redundant with the other two maps, so it is read only by the thorough check
(``hparse data verify``). Its encoding, ``20 * (human_id - 1) + category_id``, was confirmed on all 121,374 part
instances of the val helper files of the official AP^r evaluation; an 8-bit PNG holds it for persons 1..12 only, so
persons after the 12th are not checked (they appear to be left out of ``Instance_ids``; unverified).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .io import (
    DatasetError,
    ParsingDataset,
    Problems,
    boxes_from_instances,
    check_same_size,
    check_sizes_before_decode,
    compact_ids,
    first_missing,
    list_dir,
    make_sample,
    read_checked_label,
    read_id_list,
    read_image,
    read_label_png,
    require_dir,
    safe_stem,
    write_image,
    write_label_png,
)
from .labels import CIHP_LABELS

__all__ = ["CIHP", "write_cihp", "CIHP_SPLITS", "instance_part_ids"]

#: split name -> (folder, list file)
CIHP_SPLITS = {"train": ("Training", "train_id.txt"), "val": ("Validation", "val_id.txt")}

#: Instance_ids encodes a part instance as 20 * (human_id - 1) + category_id, which fits 8 bits for 12 persons.
_IDS_PER_PERSON = 20
_MAX_ENCODED_PERSONS = 12


def instance_part_ids(category: np.ndarray, human: np.ndarray) -> np.ndarray:
    """The ``Instance_ids`` map of a (Category_ids, Human_ids) pair: ``20 * (h - 1) + c`` on part pixels of
    persons 1..12, else 0. Inputs and output are (H, W) integer arrays."""
    encodable = (category > 0) & (category < _IDS_PER_PERSON) & (human > 0) & (human <= _MAX_ENCODED_PERSONS)
    return np.where(encodable, _IDS_PER_PERSON * (human - 1) + category, 0)


class CIHP(ParsingDataset):
    """CIHP read from its official folders; returns the data contract with :data:`CIHP_LABELS`.

    Args:
        root: the ``instance-level_human_parsing`` folder (holding ``Training/`` and ``Validation/``).
        split: ``"train"`` or ``"val"`` (the test split has no released labels).
        transform: optional callable applied to each sample (see :mod:`hparse.data.transforms`).
        check_files: list the image and label folders once at construction and fail at once, naming the first
            missing file, if any listed image lacks its ``Images``/``Category_ids``/``Human_ids`` file. ``hparse
            data verify`` turns it off and reports every missing file instead.
    """

    name = "CIHP"
    labels = CIHP_LABELS

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[[dict], dict] | None = None,
                 check_files: bool = True):
        if split not in CIHP_SPLITS:
            raise ValueError(f"CIHP split must be one of {sorted(CIHP_SPLITS)}, got {split!r} (the test split's "
                             "labels are not released)")
        self.root = require_dir(root, "the CIHP 'instance-level_human_parsing' folder (with Training/ and "
                                "Validation/)")
        folder, list_name = CIHP_SPLITS[split]
        self.split, self.transform = split, transform
        self.split_dir = require_dir(self.root / folder, f"the CIHP {split} split folder {folder}/")
        list_path = self.split_dir / list_name
        if not list_path.is_file() and (self.root / list_name).is_file():
            list_path = self.root / list_name
        self.ids = read_id_list(list_path, f"the CIHP {split} image list")
        if check_files:
            self._check_listed_files()

    # -- paths
    def image_path(self, image_id: str) -> Path:
        return self.split_dir / "Images" / f"{image_id}.jpg"

    def label_path(self, kind: str, image_id: str) -> Path:
        """``kind`` is ``Category_ids``, ``Human_ids`` or ``Instance_ids``."""
        return self.split_dir / kind / f"{image_id}.png"

    def _check_listed_files(self) -> None:
        for kind, suffix in (("Images", ".jpg"), ("Category_ids", ".png"), ("Human_ids", ".png")):
            folder = require_dir(self.split_dir / kind, f"the CIHP {kind}/ folder")
            present = list_dir(folder)
            first_missing([folder / f"{i}{suffix}" for i in self.ids if f"{i}{suffix}" not in present],
                          f"listed in {self.split} but its {kind} file")

    # -- reading
    def load(self, index: int, thorough: bool = False, problems: Problems | None = None) -> dict | None:
        problems = Problems() if problems is None else problems
        image_id = self.ids[index]
        image_path = self.image_path(image_id)
        category_path, human_path = self.label_path("Category_ids", image_id), self.label_path("Human_ids", image_id)
        check_sizes_before_decode(image_path, (category_path, human_path), problems)
        image = problems.attempt(read_image, image_path)
        hw = None if image is None else image.shape[:2]
        category = read_checked_label(category_path, hw, image_path, problems, self.labels, "category")
        human = read_checked_label(human_path, hw, image_path, problems)
        if thorough and category is not None and human is not None and category.shape == human.shape:
            problems.attempt(self._check_instance_ids, image_id, category, human, image_path, hw is not None)
        if problems:
            return None
        instances, person_ids = compact_ids(human)
        boxes = boxes_from_instances(instances, len(person_ids))
        keypoints = np.zeros((len(person_ids), 0, 3), dtype=np.float32)
        meta = {"id": image_id, "dataset": "cihp", "split": self.split, "image_path": str(image_path),
                "person_ids": person_ids.tolist()}
        return make_sample(image, category, instances, boxes, keypoints, meta)

    def _check_instance_ids(self, image_id: str, category: np.ndarray, human: np.ndarray, image_path: Path,
                            image_read: bool = True) -> None:
        """``Instance_ids`` must equal ``20 * (h - 1) + c`` on part pixels of persons 1..12 and decode to the
        same (category, human) wherever it is nonzero. ``image_read=False``: the image could not be read, so the
        size is compared with ``Category_ids``'."""
        path = self.label_path("Instance_ids", image_id)
        instance = read_label_png(path)
        if image_read:
            check_same_size(instance, category.shape, path, image_path)
        elif instance.shape != category.shape:
            (h, w), (ch, cw) = instance.shape, category.shape
            raise DatasetError(path, f"size {w}x{h} differs from {self.label_path('Category_ids', image_id)} "
                               f"({cw}x{ch})")
        expected = instance_part_ids(category, human)
        checked = (expected > 0) | (instance > 0)
        wrong = checked & (instance != expected)
        # Nonzero ids on persons beyond the 12th cannot be told apart from the encoding; accept them if they
        # decode to the pixel's category (the file may wrap or drop those persons; unverified).
        beyond = (human > _MAX_ENCODED_PERSONS) & (instance > 0) & (instance % _IDS_PER_PERSON == category)
        wrong &= ~beyond
        if wrong.any():
            ys, xs = np.nonzero(wrong)
            y, x = int(ys[0]), int(xs[0])
            raise DatasetError(path, f"Instance_ids disagrees with Category_ids/Human_ids at {int(wrong.sum())} "
                               f"pixels, e.g. (x={x}, y={y}): instance id {int(instance[y, x])}, expected "
                               f"20*(human {int(human[y, x])} - 1) + category {int(category[y, x])} = "
                               f"{int(expected[y, x])}")


def write_cihp(samples: Iterable[dict], root: str | os.PathLike, split: str = "val") -> Path:
    """Write data-contract samples (CIHP labels) in CIHP's official layout under ``root``; return the list file.

    Writes ``Images/<id>.jpg`` (JPEG, quality 95), ``Category_ids``, ``Human_ids`` and ``Instance_ids`` as 8-bit
    grey PNGs, and the split's id list. The stem is ``meta['id']``. Person ids are written as they are
    (``instances`` values); ``Instance_ids`` follows the official encoding and leaves persons after the 12th out.
    Keypoints are not written (CIHP has none); the colour visualisation folders are not written either.
    """
    if split not in CIHP_SPLITS:
        raise ValueError(f"CIHP split must be one of {sorted(CIHP_SPLITS)}, got {split!r}")
    folder, list_name = CIHP_SPLITS[split]
    split_dir = Path(root) / folder
    stems = []
    for index, sample in enumerate(samples):
        stem = safe_stem(sample, index)
        semantic = sample["semantic"].cpu().numpy()
        instances = sample["instances"].cpu().numpy()
        if semantic.size and ((semantic >= CIHP_LABELS.num_classes) & (semantic != 255)).any():
            raise ValueError(f"sample {stem!r}: semantic has values outside the CIHP label set; map them first")
        write_image(sample["image"], split_dir / "Images" / f"{stem}.jpg")
        write_label_png(semantic, split_dir / "Category_ids" / f"{stem}.png")
        write_label_png(instances, split_dir / "Human_ids" / f"{stem}.png")
        write_label_png(instance_part_ids(semantic, instances), split_dir / "Instance_ids" / f"{stem}.png")
        stems.append(stem)
    list_path = split_dir / list_name
    list_path.write_text("".join(f"{s}\n" for s in stems))
    return list_path
