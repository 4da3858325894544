"""Evaluation: mIoU, AP^p, PCP and AP^r with the official evaluation scripts' semantics.

``ParsingEvaluator`` computes them all; ``SemanticIoU``, ``PartAP`` and ``RegionAP`` compute one metric each.
``hparse.metrics.io`` reads and writes predictions in the CIHP/MHP-style folder layout of ``hparse evaluate``;
``hparse.metrics.corruptions`` perturbs ground truth in controlled ways (what each metric rewards).
"""

from .ap import THRESHOLDS, average_precision, threshold_key, uninterpolated_ap, voc_ap
from .checks import MetricInputError
from .evaluator import METRIC_GROUPS, ParsingEvaluator
from .io import PredictionReader, detect_layout, write_predictions
from .painting import PersonPixels, paint_persons, painted_maps, person_pixels
from .part_ap import PartAP, PersonIoU, match_persons, person_part_iou
from .region_ap import RegionAP, part_region_iou
from .semantic import SemanticIoU, confusion_matrix, iou_from_confusion
