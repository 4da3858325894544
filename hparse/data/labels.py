"""Label sets of the datasets hparse reads: part names in official order, flip pairs, palettes, keypoints.

Every dataset exposes ``dataset.labels``, a :class:`LabelSet`. ``num_classes`` counts background (label 0),
so CIHP has 20, MHP v2.0 has 59, PASCAL-Person-Part has 7 and DensePose-COCO has 15.

Official orders are those of the datasets' own evaluation code (see ``shared/reference/metrics_and_formats.md``
§B): CIHP from ``CIHP_PGN/evaluation/test_inst_part_ap.py``; MHP v2.0 from the dataset README; PASCAL-Person-Part
from the DeepLab release; DensePose-COCO's 14 coarse parts from detectron2's DensePose documentation.
Horizontal flip swaps the *values* of left/right labels (and the indices of left/right keypoints).

Choices written down here:
- CIHP's 10th label is spelled "tosor-skin" in the official files; we spell it "Torso-skin".
- PASCAL-Person-Part's 14 keypoints (Xia et al., CVPR 2017, used by the CVPR 2021 bottom-up paper) have no single
  published order; we use head, neck, then right arm, left arm, right leg, left leg (LSP-style).
- Palettes: CIHP uses the colours of the PGN visualisation code; the other sets use the PASCAL VOC colour map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KeypointSet",
    "LabelSet",
    "COCO17",
    "MPII16",
    "PPP14",
    "CIHP_LABELS",
    "MHP_V2_LABELS",
    "PASCAL_PERSON_PART_LABELS",
    "DENSEPOSE_LABELS",
    "LABEL_SETS",
    "voc_palette",
    "get_label_set",
]


def voc_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour map: colour of label i from the bits of i spread over R, G, B. Returns (n, 3) uint8."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def _flip_permutation(n: int, pairs: tuple[tuple[int, int], ...]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


@dataclass(frozen=True)
class KeypointSet:
    """A keypoint convention: names, left/right pairs (swapped on horizontal flip) and limbs (skeleton edges)."""

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """``flipped[k] = original[perm[k]]`` after a horizontal flip."""
        return _flip_permutation(len(self.names), self.flip_pairs)

    def index(self, name: str) -> int:
        return self.names.index(name)


@dataclass(frozen=True)
class LabelSet:
    """A dataset's part categories (label 0 is background), their flip pairs and palette, and its keypoints."""

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    palette: np.ndarray = field(repr=False, compare=False)
    keypoints: KeypointSet | None = None

    def __post_init__(self):
        if self.palette.shape != (len(self.names), 3):
            raise ValueError(f"{self.name}: palette has shape {self.palette.shape}, expected ({len(self.names)}, 3)")
        for a, b in self.flip_pairs:
            if not (0 < a < len(self.names) and 0 < b < len(self.names)):
                raise ValueError(f"{self.name}: flip pair ({a}, {b}) outside 1..{len(self.names) - 1}")

    @property
    def num_classes(self) -> int:
        """Number of labels including background."""
        return len(self.names)

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """Lookup table: a label ``l`` becomes ``perm[l]`` after a horizontal flip."""
        return _flip_permutation(len(self.names), self.flip_pairs)

    def index(self, name: str) -> int:
        """Label value of a part name (case-insensitive)."""
        lowered = [n.lower() for n in self.names]
        try:
            return lowered.index(name.lower())
        except ValueError:
            raise KeyError(f"{self.name} has no part named {name!r}; parts: {', '.join(self.names)}") from None

    def colorize(self, label_map: np.ndarray) -> np.ndarray:
        """(H, W) labels -> (H, W, 3) uint8 colours; 255 (ignore) is drawn white."""
        label_map = np.asarray(label_map)
        lut = np.zeros((256, 3), dtype=np.uint8)
        lut[: self.num_classes] = self.palette
        lut[255] = 255
        return lut[label_map.clip(0, 255).astype(np.int64)]


# ----------------------------------------------------------------------------------------------- keypoints

COCO17 = KeypointSet(
    name="coco17",
    names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # COCO's 19 limbs (the annotation file's 1-based skeleton, made 0-based).
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
        (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
)

MPII16 = KeypointSet(
    name="mpii16",
    names=(
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
        "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
        "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (10, 11), (11, 12), (12, 7), (7, 13), (13, 14), (14, 15),
    ),
)

PPP14 = KeypointSet(
    name="ppp14",
    names=(
        "head", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
        "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    ),
    flip_pairs=((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7),
        (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
    ),
)

# ------------------------------------------------------------------------------------------------- parts

_CIHP_NAMES = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks", "Pants",
    "Torso-skin", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg", "Right-leg", "Left-shoe",
    "Right-shoe",
)

# Colours of the CIHP/LIP visualisations (PGN ``utils.label_colours``).
_CIHP_PALETTE = np.array(
    [
        (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0), (0, 0, 85), (0, 119, 221),
        (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
        (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
    ],
    dtype=np.uint8,
)

CIHP_LABELS = LabelSet(
    name="cihp",
    names=_CIHP_NAMES,
    flip_pairs=((14, 15), (16, 17), (18, 19)),
    palette=_CIHP_PALETTE,
    keypoints=COCO17,  # CIHP has no keypoints; SynthCrowd (on CIHP labels) renders COCO-17.
)

_MHP_V2_NAMES = (
    "background", "cap/hat", "helmet", "face", "hair", "left-arm", "right-arm", "left-hand", "right-hand",
    "protector", "bikini/bra", "jacket/windbreaker/hoodie", "t-shirt", "polo-shirt", "sweater", "singlet",
    "torso-skin", "pants", "shorts/swim-shorts", "skirt", "stockings", "socks", "left-boot", "right-boot",
    "left-shoe", "right-shoe", "left-highheel", "right-highheel", "left-sandal", "right-sandal", "left-leg",
    "right-leg", "left-foot", "right-foot", "coat", "dress", "robe", "jumpsuit", "other-full-body-clothes",
    "headwear", "backpack", "ball", "bats", "belt", "bottle", "carrybag", "cases", "sunglasses", "eyewear",
    "glove", "scarf", "umbrella", "wallet/purse", "watch", "wristband", "tie", "other-accessary",
    "other-upper-body-clothes", "other-lower-body-clothes",
)

MHP_V2_LABELS = LabelSet(
    name="mhp_v2",
    names=_MHP_V2_NAMES,
    flip_pairs=((5, 6), (7, 8), (22, 23), (24, 25), (26, 27), (28, 29), (30, 31), (32, 33)),
    palette=voc_palette(len(_MHP_V2_NAMES)),
    keypoints=MPII16,
)

PASCAL_PERSON_PART_LABELS = LabelSet(
    name="pascal_person_part",
    names=("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"),
    flip_pairs=(),  # the six merged parts have no left/right distinction
    palette=voc_palette(7),
    keypoints=PPP14,
)

DENSEPOSE_LABELS = LabelSet(
    name="densepose_coco",
    names=(
        "Background", "Torso", "Right Hand", "Left Hand", "Left Foot", "Right Foot", "Upper Leg Right",
        "Upper Leg Left", "Lower Leg Right", "Lower Leg Left", "Upper Arm Left", "Upper Arm Right",
        "Lower Arm Left", "Lower Arm Right", "Head",
    ),
    flip_pairs=((2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)),
    palette=voc_palette(15),
    keypoints=COCO17,
)

LABEL_SETS: dict[str, LabelSet] = {
    "cihp": CIHP_LABELS,
    "synth": CIHP_LABELS,
    "mhp": MHP_V2_LABELS,
    "mhp_v2": MHP_V2_LABELS,
    "pascal_person_part": PASCAL_PERSON_PART_LABELS,
    "ppp": PASCAL_PERSON_PART_LABELS,
    "densepose": DENSEPOSE_LABELS,
    "densepose_coco": DENSEPOSE_LABELS,
}


def get_label_set(name: str) -> LabelSet:
    """Label set by dataset name (``cihp``, ``synth``, ``mhp``, ``ppp``, ``densepose`` and long forms)."""
    try:
        return LABEL_SETS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {', '.join(sorted(LABEL_SETS))}") from None
