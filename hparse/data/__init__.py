"""Datasets (all returning the data contract of DESIGN.md), label sets, transforms and collate."""

from .cihp import CIHP, write_cihp
from .densepose_coco import DensePoseCOCO, write_densepose_coco
from .io import DatasetError, DatasetNotFoundError
from .labels import (
    CIHP_LABELS,
    COCO17,
    DENSEPOSE_LABELS,
    MHP_V2_LABELS,
    MPII16,
    PASCAL_PERSON_PART_LABELS,
    PPP14,
    KeypointSet,
    LabelSet,
    get_label_set,
)
from .mhp import MHPv2, write_mhp
from .pascal_person_part import PascalPersonPart, write_pascal_person_part
from .synth import RECIPE_SEED, SynthCrowd
