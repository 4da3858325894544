"""Differentiable and combinatorial operators shared by the methods (Instance CRF, bipartite matching, RoIAlign,
Hough voting, flow warping)."""

from .hough import disk_cells, hough_map, hough_scores, point_nms
from .instance_crf import (
    InstanceCRF,
    crf_channel,
    crf_prediction,
    hungarian_matched_loss,
    instance_crf,
    match_segments,
    squash_detection_scores,
)
from .matching import assignment_loss, dykstra_matching, greedy_matching, hungarian_matching, round_assignment
from .roi_align import MultiScaleRoIAlign, roi_align
from .warp import flow_warp, upsample_field
