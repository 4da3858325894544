"""Datasets (all returning the data contract of DESIGN.md), label sets, transforms and collate."""

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
