"""Differentiable and combinatorial operators shared by the methods (Instance CRF, bipartite matching, RoIAlign)."""

from .instance_crf import InstanceCRF, crf_prediction, hungarian_matched_loss, instance_crf, squash_detection_scores
from .matching import assignment_loss, dykstra_matching, greedy_matching, hungarian_matching, round_assignment
from .roi_align import MultiScaleRoIAlign, roi_align
