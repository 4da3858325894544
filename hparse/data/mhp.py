"""MHP v2.0 (LV-MHP-v2, Zhao et al., ACM MM 2018): loader and writer of the official layout.

On disk (``LV-MHP-v2.zip``; shared/reference/metrics_and_formats.md §B2)::

    LV-MHP-v2/                             <- root
      list/train.txt, list/val.txt         image stems, one per line
      train/images/<id>.jpg
      train/parsing_annos/<id>_<NN>_<KK>.png   one file per person: NN persons in the image, this is person KK
      train/pose_annos/<id>.mat            keys person_0..person_{NN-1}, each a 20 x 3 array
      val/...                              the same
      test/images/                         no labels released - not loadable here

Per-person parsing files (``_NN_KK``, both two digits) hold the person's part labels 0..58 (MHP_V2_LABELS); when
the PNG has 3 channels the label is in channel 0 (the official README: "only put in R channel").

Pose ``.mat`` (the annotation tool ``Multi-Human_Pose/Mark.py``): ``person_{k-1}`` belongs to parsing file
``KK = k``; rows 0-15 are the 16 joints in **MPII order** (:data:`~hparse.data.labels.MPII16`) as
``(x, y, flag)`` with flag 0 visible, 1 occluded, 2 out of image; rows 16-17 are the face box corners, 18-19 the
person box corners (neither is read). Visibility in the data contract is ``v = 2 - flag`` (as the MG-HumanParsing
loader converts it), so flag 2 becomes 0 = absent; a joint with a negative coordinate is also absent, because the
tool writes -1 coordinates for joints it has no position for.

Choices written down here:

- **Overlapping persons.** Per-person maps can overlap; the contract has one part label and one person per pixel.
  Persons are painted in increasing ``KK`` order and a later person's nonzero pixels overwrite an earlier one's -
  the rule Parsing R-CNN's global-map painting and DensePose pasting use (later on top). The per-person files are
  not changed; a fully covered person keeps its box and keypoints and simply has no pixel in ``instances``.
- **Boxes** are the tight boxes of each person's *own* parsing file, before painting, so occlusion by a later
  person does not shrink them.
- **Empty persons.** A parsing file with no foreground pixel is left out (the official AP^p evaluation does not
  count such persons either); ``meta['person_files']`` lists the ``KK`` of the persons kept, in contract order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

from .io import (
    DatasetError,
    ParsingDataset,
    Problems,
    boxes_from_instances,
    first_missing,
    list_dir,
    make_sample,
    read_checked_label,
    read_id_list,
    read_image,
    require_dir,
    safe_stem,
    write_image,
)
from .labels import CIHP_LABELS, COCO17, MHP_V2_LABELS, MPII16, LabelSet

__all__ = [
    "MHPv2",
    "write_mhp",
    "MHP_SPLITS",
    "CIHP_TO_MHP_V2",
    "cihp_to_mhp_v2",
    "coco17_to_mpii16",
    "read_mhp_pose",
    "parse_parsing_name",
]

MHP_SPLITS = ("train", "val")

_PARSING_NAME = re.compile(r"^(?P<id>.+)_(?P<nn>\d{2})_(?P<kk>\d{2})\.png$")
_POSE_ROWS = 20  # 16 joints + face box (2 rows) + person box (2 rows)

# ------------------------------------------------------------------------------------------ label mapping

#: CIHP label -> MHP v2.0 label, by name. CIHP's parts are each a subset of one MHP v2.0 part or the same part;
#: the generic CIHP "Upper-clothes" goes to MHP's catch-all "other-upper-body-clothes" rather than to one garment
#: (t-shirt, sweater, ...). The mapping is one-to-one, so it can be undone, and it maps CIHP's left/right pairs
#: onto MHP's left/right pairs, so it commutes with horizontal flipping.
CIHP_TO_MHP_V2: dict[str, str] = {
    "Background": "background",
    "Hat": "cap/hat",
    "Hair": "hair",
    "Glove": "glove",
    "Sunglasses": "sunglasses",
    "Upper-clothes": "other-upper-body-clothes",
    "Dress": "dress",
    "Coat": "coat",
    "Socks": "socks",
    "Pants": "pants",
    "Torso-skin": "torso-skin",
    "Scarf": "scarf",
    "Skirt": "skirt",
    "Face": "face",
    "Left-arm": "left-arm",
    "Right-arm": "right-arm",
    "Left-leg": "left-leg",
    "Right-leg": "right-leg",
    "Left-shoe": "left-shoe",
    "Right-shoe": "right-shoe",
}


def _cihp_to_mhp_lut() -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for cihp_name, mhp_name in CIHP_TO_MHP_V2.items():
        lut[CIHP_LABELS.index(cihp_name)] = MHP_V2_LABELS.index(mhp_name)
    lut[255] = 255  # ignore stays ignore
    return lut


_CIHP_TO_MHP_LUT = _cihp_to_mhp_lut()


def cihp_to_mhp_v2(semantic: torch.Tensor | np.ndarray) -> np.ndarray:
    """Map a CIHP label map (values 0..19, 255) to MHP v2.0 labels with :data:`CIHP_TO_MHP_V2`."""
    semantic = semantic.cpu().numpy() if isinstance(semantic, torch.Tensor) else np.asarray(semantic)
    return _CIHP_TO_MHP_LUT[semantic.astype(np.int64)]


# COCO-17 joints that exist in MPII-16, and the MPII joints that are midpoints of two COCO joints.
_MPII_FROM_COCO = {
    "right_ankle": "right_ankle", "right_knee": "right_knee", "right_hip": "right_hip", "left_hip": "left_hip",
    "left_knee": "left_knee", "left_ankle": "left_ankle", "right_wrist": "right_wrist", "right_elbow": "right_elbow",
    "right_shoulder": "right_shoulder", "left_shoulder": "left_shoulder", "left_elbow": "left_elbow",
    "left_wrist": "left_wrist",
}
_MPII_MIDPOINTS = {"pelvis": ("left_hip", "right_hip"), "thorax": ("left_shoulder", "right_shoulder")}


def coco17_to_mpii16(keypoints: torch.Tensor | np.ndarray) -> np.ndarray:
    """COCO-17 keypoints (N, 17, 3) -> MPII-16 (N, 16, 3) with contract visibility (0 absent, 1, 2).

    The twelve limb joints are copied; **pelvis** and **thorax** are the midpoints of the hips and of the shoulders
    (visibility: the smaller of the two, absent if either is absent); **upper_neck** and **head_top** have no COCO
    counterpart and are marked absent (v = 0). The face joints of COCO (nose, eyes, ears) are dropped.
    """
    kps = keypoints.cpu().numpy() if isinstance(keypoints, torch.Tensor) else np.asarray(keypoints)
    kps = kps.astype(np.float32).reshape(-1, COCO17.num_keypoints, 3)
    out = np.zeros((len(kps), MPII16.num_keypoints, 3), dtype=np.float32)
    for mpii_name, coco_name in _MPII_FROM_COCO.items():
        out[:, MPII16.index(mpii_name)] = kps[:, COCO17.index(coco_name)]
    for mpii_name, (a, b) in _MPII_MIDPOINTS.items():
        ja, jb = kps[:, COCO17.index(a)], kps[:, COCO17.index(b)]
        vis = np.minimum(ja[:, 2], jb[:, 2])
        mid = (ja[:, :2] + jb[:, :2]) / 2
        out[:, MPII16.index(mpii_name), :2] = np.where(vis[:, None] > 0, mid, 0)
        out[:, MPII16.index(mpii_name), 2] = vis
    out[out[..., 2] == 0, :2] = 0
    return out


# ---------------------------------------------------------------------------------------------- reading


def parse_parsing_name(name: str) -> tuple[str, int, int] | None:
    """``'<id>_<NN>_<KK>.png'`` -> ``(id, NN, KK)``; ``None`` if the name does not follow the pattern."""
    match = _PARSING_NAME.match(name)
    if match is None:
        return None
    return match["id"], int(match["nn"]), int(match["kk"])


def read_mhp_pose(path: str | os.PathLike, num_persons: int | None, problems: Problems | None = None
                  ) -> np.ndarray | None:
    """Read an MHP v2.0 pose ``.mat``: (num_persons, 16, 3) keypoints with contract visibility.

    Raises :class:`DatasetError` naming the file if it is missing or unreadable, if its ``person_*`` keys are not
    exactly ``person_0..person_{num_persons-1}``, if an array is not 20 x 3 (16 joints at least), or if a flag is
    not 0, 1 or 2. With a collecting ``problems`` these go to it instead (every broken person is listed) and the
    result is ``None`` when any was found. ``num_persons=None`` (the parsing files did not say how many persons
    there are) skips the key check and reads the persons the file has.
    """
    problems = Problems() if problems is None else problems
    path = Path(path)
    if not path.is_file():
        problems.add(DatasetError(path, "pose annotation is missing"))
        return None
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several unrelated types for a damaged file
        problems.add(DatasetError(path, f"pose annotation is unreadable or corrupt ({type(err).__name__}: {err})"))
        return None
    keys = sorted((k for k in mat if k.startswith("person_")), key=lambda k: (len(k), k))
    expected = keys if num_persons is None else [f"person_{k}" for k in range(num_persons)]
    if keys != expected:
        problems.add(DatasetError(path, f"has pose keys {keys} but the image has {num_persons} parsing files "
                                  f"(expected {expected})"))
        return None
    found = len(problems)
    out = np.zeros((len(expected), MPII16.num_keypoints, 3), dtype=np.float32)
    for k, key in enumerate(expected):
        try:
            array = np.asarray(mat[key], dtype=np.float64)
        except (TypeError, ValueError) as err:
            problems.add(DatasetError(path, f"{key} is not a numeric array ({err})"))
            continue
        if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < MPII16.num_keypoints:
            problems.add(DatasetError(path, f"{key} has shape {array.shape}; expected ({_POSE_ROWS}, 3)"))
            continue
        joints = array[: MPII16.num_keypoints]
        flags = joints[:, 2]
        if not np.isin(flags, (0, 1, 2)).all():
            problems.add(DatasetError(path, f"{key} has visibility flags {sorted(set(flags.tolist()))}; expected 0 "
                                      "(visible), 1 (occluded) or 2 (out of image)"))
            continue
        vis = 2 - flags
        unknown = (joints[:, 0] < 0) | (joints[:, 1] < 0) | ~np.isfinite(joints[:, :2]).all(axis=1)
        vis[unknown] = 0
        out[k, :, :2] = np.where(vis[:, None] > 0, joints[:, :2], 0)
        out[k, :, 2] = vis
    return None if len(problems) > found else out


class MHPv2(ParsingDataset):
    """MHP v2.0 read from its official folders; returns the data contract with :data:`MHP_V2_LABELS` and MPII-16
    keypoints.

    Args:
        root: the ``LV-MHP-v2`` folder (holding ``list/``, ``train/`` and ``val/``).
        split: ``"train"`` or ``"val"`` (the test split has no released labels).
        transform: optional callable applied to each sample.
        keypoints: read ``pose_annos/<id>.mat`` (K = 16); with ``False`` the pose files are not needed (K = 0).
        check_files: list the folders once at construction and fail at once, naming the first listed image
            whose image, parsing files or pose file are missing (``hparse data verify`` reports all instead).
    """

    name = "MHP v2.0"
    labels = MHP_V2_LABELS

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable[[dict], dict] | None = None,
                 keypoints: bool = True, check_files: bool = True):
        if split not in MHP_SPLITS:
            raise ValueError(f"MHP v2.0 split must be one of {list(MHP_SPLITS)}, got {split!r} (the test split's "
                             "labels are not released)")
        self.root = require_dir(root, "the MHP v2.0 'LV-MHP-v2' folder (with list/, train/ and val/)")
        self.split, self.transform, self.with_keypoints = split, transform, keypoints
        self.split_dir = require_dir(self.root / split, f"the MHP v2.0 {split} folder")
        self.ids = read_id_list(self.root / "list" / f"{split}.txt", f"the MHP v2.0 {split} image list")
        parsing_dir = require_dir(self.split_dir / "parsing_annos", "the MHP v2.0 parsing_annos/ folder")
        # One listing of parsing_annos/ indexes every person file by image id.
        self.person_files: dict[str, list[str]] = {}
        for name in sorted(list_dir(parsing_dir)):
            parsed = parse_parsing_name(name)
            if parsed is not None:
                self.person_files.setdefault(parsed[0], []).append(name)
        if check_files:
            self._check_listed_files()

    def image_path(self, image_id: str) -> Path:
        return self.split_dir / "images" / f"{image_id}.jpg"

    def pose_path(self, image_id: str) -> Path:
        return self.split_dir / "pose_annos" / f"{image_id}.mat"

    def _check_listed_files(self) -> None:
        images = list_dir(require_dir(self.split_dir / "images", "the MHP v2.0 images/ folder"))
        first_missing([self.image_path(i) for i in self.ids if f"{i}.jpg" not in images], "listed image")
        first_missing([self.split_dir / "parsing_annos" / f"{i}_NN_KK.png" for i in self.ids
                       if i not in self.person_files], "parsing file of a listed image")
        if self.with_keypoints:
            poses = list_dir(require_dir(self.split_dir / "pose_annos", "the MHP v2.0 pose_annos/ folder"))
            first_missing([self.pose_path(i) for i in self.ids if f"{i}.mat" not in poses], "pose annotation")

    def person_paths(self, image_id: str) -> list[tuple[int, Path]]:
        """``[(KK, path), ...]`` for KK = 1..NN, after checking that the names agree on NN and cover 1..NN."""
        names = self.person_files.get(image_id, [])
        folder = self.split_dir / "parsing_annos"
        if not names:
            raise DatasetError(folder / f"{image_id}_NN_KK.png", "no parsing file for this listed image")
        parsed = [parse_parsing_name(n) for n in names]
        counts = sorted({nn for _, nn, _ in parsed})
        if len(counts) != 1:
            raise DatasetError(folder / names[0], f"the parsing files of image {image_id} disagree on the number "
                               f"of persons NN: {counts} ({', '.join(names)})")
        num = counts[0]
        indices = sorted(kk for _, _, kk in parsed)
        if indices != list(range(1, num + 1)):
            raise DatasetError(folder / names[0], f"image {image_id} has {len(names)} parsing files with person "
                               f"indices {indices}, but their names say NN = {num} (expected KK = 1..{num})")
        return [(kk, folder / name) for (_, _, kk), name in sorted(zip(parsed, names), key=lambda p: p[0][2])]

    def load(self, index: int, thorough: bool = False, problems: Problems | None = None) -> dict | None:
        problems = Problems() if problems is None else problems
        image_id = self.ids[index]
        image_path = self.image_path(image_id)
        image = problems.attempt(read_image, image_path)
        hw = None if image is None else image.shape[:2]
        persons = problems.attempt(self.person_paths, image_id)
        person_parts = [(kk, read_checked_label(path, hw, image_path, problems, self.labels, "part", channel=0))
                        for kk, path in persons or []]
        pose = None
        if self.with_keypoints:
            pose = read_mhp_pose(self.pose_path(image_id), None if persons is None else len(persons),
                                 problems=problems)
        if problems:
            return None
        semantic = np.zeros(hw, dtype=np.int64)
        instances = np.zeros(hw, dtype=np.int64)
        boxes, kept = [], []
        for kk, parts in person_parts:
            mask = parts > 0
            if not mask.any():
                continue
            kept.append(kk)
            # Later persons are painted on top (see the module docstring).
            semantic[mask] = parts[mask]
            instances[mask] = len(kept)
            boxes.append(boxes_from_instances(mask.astype(np.int64), 1)[0])
        boxes = np.stack(boxes) if boxes else np.zeros((0, 4), dtype=np.float32)
        if self.with_keypoints:
            keypoints = pose[np.asarray(kept, dtype=np.int64) - 1]
        else:
            keypoints = np.zeros((len(kept), 0, 3), dtype=np.float32)
        meta = {"id": image_id, "dataset": "mhp_v2", "split": self.split, "image_path": str(image_path),
                "person_files": kept, "num_person_files": len(persons)}
        return make_sample(image, semantic, instances, boxes, keypoints, meta)


# ---------------------------------------------------------------------------------------------- writing


def _mpii_keypoints(keypoints: torch.Tensor, source: LabelSet, stem: str) -> np.ndarray:
    kps = keypoints.cpu().numpy().astype(np.float32)
    num_kp = kps.shape[1] if kps.ndim == 3 else 0
    if num_kp == 0:
        return np.zeros((len(kps), MPII16.num_keypoints, 3), dtype=np.float32)
    if num_kp == MPII16.num_keypoints:
        return kps
    if num_kp == COCO17.num_keypoints:
        return coco17_to_mpii16(kps)
    raise ValueError(f"sample {stem!r}: cannot write {num_kp} keypoints per person as MPII-16 "
                     f"(source label set {source.name}); expected 0, 16 or 17 (COCO)")


def write_mhp(samples: Iterable[dict], root: str | os.PathLike, split: str = "val",
              source_labels: LabelSet = CIHP_LABELS) -> Path:
    """Write data-contract samples in MHP v2.0's official layout under ``root``; return the list file.

    Args:
        samples: data-contract samples (e.g. SynthCrowd's, or MHPv2's own).
        root: the ``LV-MHP-v2`` folder to write.
        split: ``"train"`` or ``"val"``.
        source_labels: the samples' label set. :data:`CIHP_LABELS` (SynthCrowd) is mapped to MHP v2.0 labels with
            :data:`CIHP_TO_MHP_V2`; :data:`MHP_V2_LABELS` is written as it is.

    Per image it writes ``images/<id>.jpg`` (JPEG, quality 95), one ``parsing_annos/<id>_<NN>_<KK>.png`` per person
    with pixels (3-channel, the label in channel 0 and zeros elsewhere, as the official files) - persons keep their
    order, so ``KK = k`` is the k-th non-empty person - and ``pose_annos/<id>.mat`` with ``person_{KK-1}`` as
    20 x 3 arrays: MPII-16 joints (COCO-17 is converted with :func:`coco17_to_mpii16`) as ``(x, y, flag = 2 - v)``,
    absent joints as ``(-1, -1, 2)``; face-box rows -1 (unknown); person-box rows the person's box corners.
    Occluded joints keep their coordinates (the reader accepts both).
    """
    if split not in MHP_SPLITS:
        raise ValueError(f"MHP v2.0 split must be one of {list(MHP_SPLITS)}, got {split!r}")
    if source_labels.name not in (CIHP_LABELS.name, MHP_V2_LABELS.name):
        raise ValueError(f"write_mhp maps CIHP or MHP v2.0 labels, not {source_labels.name}")
    root = Path(root)
    split_dir = root / split
    for sub in ("images", "parsing_annos", "pose_annos"):
        (split_dir / sub).mkdir(parents=True, exist_ok=True)
    stems = []
    for index, sample in enumerate(samples):
        stem = safe_stem(sample, index)
        semantic = sample["semantic"].cpu().numpy().astype(np.int64)
        if source_labels.name == CIHP_LABELS.name:
            semantic = cihp_to_mhp_v2(semantic)
        bad = (semantic < 0) | (semantic >= MHP_V2_LABELS.num_classes) & (semantic != 255)
        if bad.any():
            raise ValueError(f"sample {stem!r}: semantic has values outside the {source_labels.name} label set")
        instances = sample["instances"].cpu().numpy()
        keypoints = _mpii_keypoints(sample["keypoints"], source_labels, stem)
        boxes = sample["boxes"].cpu().numpy()
        persons = [k for k in range(1, len(boxes) + 1) if (instances == k).any()]
        if not persons:
            raise ValueError(f"sample {stem!r} has no person with pixels; the MHP v2.0 layout finds an image's "
                             "labels through its per-person files, so it cannot hold an image without persons")
        write_image(sample["image"], split_dir / "images" / f"{stem}.jpg")
        pose = {}
        for kk, k in enumerate(persons, start=1):
            mask = instances == k
            parts = np.where(mask, semantic, 0).astype(np.uint8)
            rgb = np.zeros((*parts.shape, 3), dtype=np.uint8)
            rgb[..., 0] = parts
            Image.fromarray(rgb, "RGB").save(split_dir / "parsing_annos" / f"{stem}_{len(persons):02d}_{kk:02d}.png")
            rows = np.full((_POSE_ROWS, 3), -1.0)
            joints = keypoints[k - 1]
            present = joints[:, 2] > 0
            rows[: MPII16.num_keypoints, :2] = np.where(present[:, None], joints[:, :2], -1.0)
            rows[: MPII16.num_keypoints, 2] = 2 - joints[:, 2]
            rows[18, :2], rows[19, :2] = boxes[k - 1, :2], boxes[k - 1, 2:]
            pose[f"person_{kk - 1}"] = rows
        scipy.io.savemat(split_dir / "pose_annos" / f"{stem}.mat", pose)
        stems.append(stem)
    list_path = root / "list" / f"{split}.txt"
    list_path.parent.mkdir(parents=True, exist_ok=True)
    list_path.write_text("".join(f"{s}\n" for s in stems))
    return list_path
