"""Multi-granularity bottom-up parsing (Zhou et al., CVPR 2021): parts, a Dense-to-Sparse Projection Field (DSPF),
keypoints and limbs, assembled into people without boxes, trained in the paper's two steps (§3.4): without the
matching (``matching_loss=False``, the default), then fine-tuned through the differentiable matching
(``matching_loss=True``; :func:`hparse.recipes.mg_parser_recipe` with ``stage=2``).

The network (§3.1-3.4), each component a constructor flag:

- **Pyramid** {X_l}, l = 1..4 at strides 4-32: a torchvision ResNet with FPN (:func:`~hparse.models.backbone.
  build_resnet_fpn`, levels P2-P5). The paper's X_l are the ResNet stages; taking the FPN levels lets every hparse
  method share one backbone and its shipped starting point (``backbone_weights="synthcrowd"``).
- **F_Seg** (§3.1, Eq. 1): a light DeepLabv3+-style decoder (one 5×5 depthwise-separable convolution per
  upsampling stage, :class:`~hparse.models.heads.mg_heads.LightDecoder`), part logits at stride 4, cross-entropy at
  input resolution.
- **DSPF** (§3.2): ``dspf="single" | "incremental" (Eq. 2) | "residual" (Eq. 3)``, ``warp=True`` (Eqs. 4-6) or
  bilinear upsampling; L1 at every level (:class:`~hparse.models.heads.mg_heads.DSPFPyramid`,
  :mod:`hparse.ops.warp`).
- **F_Pose** (§3.3): the same light decoder; from it, per keypoint type a disk heatmap (radius ``disk_radius`` px)
  and a short-range offset field, and one limb heatmap per skeleton edge (σ = ``limb_sigma`` px).
- **Matching loss** (§3.3-3.4, ``matching_loss=True``; :meth:`MGParser.matching_loss`): per limb type, the
  candidates of the batch's images, A from the limb heatmaps, Y from the differentiable matching
  (:func:`hparse.ops.dykstra_matching` at :data:`hparse.ops.matching.TRAINING_DEFAULTS`), binary cross-entropy of Y
  against the ground-truth assignment (1 where both candidates belong to one person). Written down where the paper
  is silent:

  - *candidates*: the keypoints the network detects on the training image (steps 1-2 below, on its own maps),
    plus every ground-truth joint that no detection stands for, so that every person is represented even where
    detection still fails (:func:`~hparse.models.mg_targets.label_candidates`); detections that stand for no joint
    (false positives, duplicates) stay, labelled "no person", so that the loss also teaches to leave them unmatched;
  - *which pairs*: every pair of real candidates (inference drops pairs scoring at most ``limb_threshold``; training
    keeps them, so that a wrong pair's score is pushed down and a true pair's up across the threshold);
  - *where the gradient goes*: the limb heatmaps (through the bilinear samples along each segment: F_Pose, the
    limb head, the backbone) and the DSPF (a detected candidate sits at its cell's projection ``c(u) + D(u)``, which
    moves the sample points: the DSPF pyramid, its warping and the backbone). Hough voting only *selects* the
    candidates (a discrete choice), so the disk and offset heads get no gradient from this loss, nor does F_Seg's
    part classifier; ground-truth joints are fixed points;
  - *batching*: detection runs per image (its candidate count varies; the same code as inference, without
    gradient, with Hough voting scored exactly only where :func:`hough_upper_bound` lets a candidate pass); labelling,
    limb scores, the matching and the loss run once for all limb types and images of the step, padded to the step's
    largest candidate count. Cost: 4% of a cpu-profile step from a stage-1 checkpoint, 10% with the detection
    threshold lowered to 0.3 (``hparse bench matching_loss_cost``).
- **Loss weights**: homoscedastic uncertainty (Kendall et al., CVPR 2018; ``uncertainty=True``): each task's loss
  ``L`` enters as ``exp(−s) L + s`` with a learned ``s = log σ²`` (0 at the start, i.e. weight 1), else fixed
  ``loss_weights``. The matching loss has its own ``s`` (``log_var_matching``, a parameter that exists only with
  ``matching_loss=True``, so a stage-1 checkpoint loads into a stage-2 model with only that parameter new).

Inference (§3.3 and "Inference" of §3.4), :func:`assemble`, shared with :func:`oracle_prediction`:

1. **Human cells** = stride-4 cells whose part argmax is not background; each projects to ``c(u) + D(u)``.
2. **Hough voting** (Eq. 8, :mod:`hparse.ops.hough`): every cell votes for ``c(u) + O_k(u)`` with weight ``M_k(u)``;
   each projection is scored under every keypoint type, exactly. Projections scoring at least
   ``keypoint_threshold`` (the paper's 0.7) are candidates; **deduplication**: greedy non-maximum suppression per type
   within ``nms_radius`` px (default ``R / 3``, PersonLab's 10 px at R = 32), keeping the highest-scoring projection.
3. **Limb scores** (Eq. 9's A): for every limb type and candidate pair, the mean limb heatmap at ``limb_samples``
   points evenly spaced on the segment (endpoints included), sampled bilinearly.
4. **Matching** per limb type, all limb types of an image in one batched call: ``matching="dykstra"`` (PGD +
   Dykstra, rounded, :func:`hparse.ops.dykstra_matching`), ``"hungarian"`` or ``"greedy"``; pairs scoring at most
   ``limb_threshold`` (0.7, ours) are never matched.
5. **Grouping "from head to foot"**: limbs are visited breadth-first from the head joint
   (:func:`~hparse.models.mg_targets.skeleton_order`) and each matched pair merges the two joints' groups unless
   the merged group would hold two joints of one type (COCO's skeleton has cycles; on a tree with one-to-one matchings
   no conflict can arise, and the order does not matter). A Python loop over the matched pairs (a few per person and
   limb type); groups with fewer than ``min_person_joints`` joints are dropped (default 1: a person seen by one
   joint keeps its pixels, which Eq. 17 would otherwise hand to a neighbour).
6. **Pixels to people** by Eq. 17: each human pixel ``u`` (full resolution) goes to
   ``argmin_h min_{p ∈ P_h} ‖u + D(u) − p‖ / ((s_p + s_h) σ_h)``, with ``s_p = H(p)``, ``s_h`` the mean of its joints'
   scores and ``σ_h`` the square root of the area of the box of its joints (at least ``R``, so that a person of one
   or two aligned joints has a scale). Chunked over pixels, vectorised over people and joints.

Output: the prediction contract (``semantic`` = the part argmax; ``person_parts``; ``person_scores`` = the sum of the
person's joint scores over K, PersonLab's instance score: Eq. 17's ``s_h`` is the *mean*, which ranks a one-joint
fragment as high as a whole person and cost 13 points of the oracle's AP^p_50 on 40 val images; ``person_boxes``
from the masks; ``part_scores`` = the person score × the mean probability of the part over its pixels) plus
``keypoints`` (N, K, 3) as (x, y, score), score 0 for a missing joint. People with no pixel left after Eq. 17 are
dropped.

Image sizes: images are padded (bottom, right) to a multiple of 32 so that each level is exactly twice the next;
outputs are cropped back to each image's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.contract import IGNORE_INDEX
from ..data.labels import COCO17, MPII16, PPP14, KeypointSet
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..ops.hough import disk_area, disk_cells, hough_map, hough_scores, point_nms
from ..ops.matching import (
    TRAINING_DEFAULTS,
    assignment_loss,
    dykstra_matching,
    greedy_matching,
    hungarian_matching,
    round_assignment,
)
from .backbone import FPN_LEVELS, build_resnet_fpn
from .heads.mg_heads import DSPF_VARIANTS, DSPFPyramid, LightDecoder, Predictor
from .inference import empty_prediction
from .inputs import check_images
from .mg_targets import (
    assignment_targets,
    cell_centres,
    dense_skeleton,
    disk_loss,
    dspf_loss,
    dspf_targets,
    grid_labels,
    keypoint_targets,
    label_candidates,
    limb_loss,
    limb_targets,
    offset_loss,
    pad_keypoints,
    semantic_loss,
    skeleton_order,
)

__all__ = ["MGParser", "Assembly", "KEYPOINT_SETS", "MATCHINGS", "LIMB_SETS", "HOUGH_NORMS", "TASKS", "assemble",
           "assign_pixels", "detect_keypoints", "hough_upper_bound", "limb_scores", "group_joints",
           "oracle_prediction", "oracle_maps", "limb_assignment_counts", "limb_assignment_accuracy",
           "MATCHING_LOSS_PARAMETERS"]

KEYPOINT_SETS: dict[str, KeypointSet] = {"coco17": COCO17, "mpii16": MPII16, "ppp14": PPP14}
MATCHINGS = ("dykstra", "hungarian", "greedy")
LIMB_SETS = ("dense", "skeleton")
HOUGH_NORMS = ("cells", "area")
TASKS = ("semantic", "dspf", "disk", "offset", "limb")  # stage 1; stage 2 adds "matching"
#: parameters a stage-2 model (``matching_loss=True``) has and a stage-1 checkpoint lacks
MATCHING_LOSS_PARAMETERS = ("log_var_matching",)
STRIDE = 4  # the output grid (the finest pyramid level)
_ROOT_NAMES = ("nose", "head_top", "head")


def _keypoint_set(keypoints: str | KeypointSet) -> KeypointSet:
    if isinstance(keypoints, KeypointSet):
        return keypoints
    try:
        return KEYPOINT_SETS[keypoints]
    except KeyError:
        raise ValueError(f"keypoints must be one of {', '.join(KEYPOINT_SETS)}, got {keypoints!r}") from None


def _root(kset: KeypointSet) -> int:
    for name in _ROOT_NAMES:
        if name in kset.names:
            return kset.index(name)
    return 0


class MGParser(nn.Module):
    """The bottom-up parser; see the module docstring for what each flag is and where it comes from.

    Args:
        num_classes: part labels including background.
        keypoints: ``"coco17"`` (SynthCrowd, DensePose-COCO), ``"mpii16"`` (MHP v2) or ``"ppp14"``
            (PASCAL-Person-Part), or a :class:`~hparse.data.labels.KeypointSet`.
        backbone, backbone_weights, backbone_norm, trainable_layers, backbone_width, fpn_channels: the ResNet-FPN.
        decoder_channels: width of F_Seg and F_Pose (Panoptic-DeepLab: 256). dspf_channels: width of each DSPF
            level (released code: 256). decoder_norm: ``"gn"`` or ``"bn"``.
        dspf: ``"single"``, ``"incremental"`` (Eq. 2) or ``"residual"`` (Eq. 3, the paper's).
        warp: learnable feature warping (Eqs. 4-6); needs a coarse-to-fine ``dspf``.
        disk_radius: R in pixels (paper: 32 at its scale; recipes scale it with the image).
        limb_sigma: σ of the limb heatmaps in pixels (paper: 9 at its scale).
        min_visibility: joints used as targets have ``v >= min_visibility`` (2: visible, the paper's).
        keypoint_threshold: Hough score a DSPF projection needs to become a candidate (paper: 0.7).
        nms_radius: deduplication radius in pixels (default ``disk_radius / 3``).
        vote_min: votes with a smaller disk probability are ignored when scoring (speed; 0.01).
        limb_samples: points sampled along a candidate limb. limb_threshold: pairs scoring at most this never match
            (0.7: the paper gives none; with a lower one a joint whose true partner was not detected is matched to
            a wrong one, which merges two people; chosen on the oracle, see the chapter).
        matching: ``"dykstra"`` (default), ``"hungarian"`` or ``"greedy"``. dykstra_iters: PGD steps.
        limbs: ``"dense"`` (the skeleton plus the joint pairs two limbs apart, :func:`~hparse.models.mg_targets.
            dense_skeleton`) or ``"skeleton"`` (the keypoint set's limbs only, the paper's wording).
        hough_norm: ``"cells"`` (a Hough sum divided by the disk's cells inside the image) or ``"area"`` (by πR²,
            Eq. 8 as printed); see :mod:`hparse.ops.hough`.
        min_person_joints: groups with fewer joints are dropped.
        matching_loss: add the loss through the differentiable matching (stage 2 of §3.4; module docstring).
        uncertainty: Kendall uncertainty weighting of the task losses; else ``loss_weights`` (default all 1; keys
            ``TASKS`` and ``"matching"``).
    """

    #: parameters that a fine-tuning stage may add to a checkpoint's (see :mod:`hparse.engine.finetune`)
    init_new_parameters = MATCHING_LOSS_PARAMETERS

    def __init__(
        self,
        num_classes: int,
        *,
        keypoints: str | KeypointSet = "coco17",
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        backbone_norm: str | None = None,
        trainable_layers: int | None = None,
        backbone_width: int = 64,
        fpn_channels: int = 256,
        decoder_channels: int = 128,
        dspf_channels: int = 64,
        decoder_norm: str = "gn",
        dspf: str = "residual",
        warp: bool = True,
        disk_radius: float = 32.0,
        limb_sigma: float = 9.0,
        min_visibility: int = 2,
        keypoint_threshold: float = 0.7,
        nms_radius: float | None = None,
        vote_min: float = 0.01,
        limb_samples: int = 10,
        limb_threshold: float = 0.7,
        matching: str = "dykstra",
        limbs: str = "dense",
        hough_norm: str = "cells",
        dykstra_iters: int = 300,
        min_person_joints: int = 1,
        matching_loss: bool = False,
        uncertainty: bool = True,
        loss_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if dspf not in DSPF_VARIANTS:
            raise ValueError(f"dspf must be one of {DSPF_VARIANTS}, got {dspf!r}")
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
        if not disk_radius > 0 or not limb_sigma > 0:
            raise ValueError(f"disk_radius and limb_sigma must be positive, got {disk_radius}, {limb_sigma}")
        if min_visibility not in (1, 2):
            raise ValueError(f"min_visibility must be 1 or 2, got {min_visibility}")
        tasks = TASKS + (("matching",) if matching_loss else ())
        unknown = set(loss_weights or {}) - set(tasks)
        if unknown:
            raise ValueError(f"loss_weights has unknown tasks {sorted(unknown)}; tasks: {tasks}")
        self.num_classes = num_classes
        self.kset = _keypoint_set(keypoints)
        self.dspf_mode, self.warp, self.matching = dspf, warp, matching
        self.disk_radius, self.limb_sigma, self.min_visibility = float(disk_radius), float(limb_sigma), min_visibility
        self.assembly = Assembly(self.kset, num_classes, self.disk_radius, keypoint_threshold,
                                 float(nms_radius) if nms_radius is not None else self.disk_radius / 3, vote_min,
                                 limb_samples, limb_threshold, matching, dykstra_iters, min_person_joints,
                                 limb_set=limbs, hough_norm=hough_norm)
        self.limbs = self.assembly.limbs
        self.body = build_resnet_fpn(backbone, backbone_weights, norm=backbone_norm, trainable_layers=trainable_layers,
                                     fpn_channels=fpn_channels, width=backbone_width)
        channels = self.body.out_channels
        k, e = self.kset.num_keypoints, len(self.limbs)
        self.seg_decoder = LightDecoder(channels, decoder_channels, len(FPN_LEVELS), decoder_norm)
        self.semantic_head = Predictor(decoder_channels, num_classes, decoder_norm)
        self.dspf_head = DSPFPyramid(channels, dspf_channels, decoder_channels, dspf, warp, len(FPN_LEVELS),
                                     decoder_norm)
        self.pose_decoder = LightDecoder(channels, decoder_channels, len(FPN_LEVELS), decoder_norm)
        prior = -math.log((1 - 0.01) / 0.01)  # heatmap logits start at probability 0.01 (focal-loss prior)
        self.disk_head = Predictor(decoder_channels, k, decoder_norm, bias=prior)
        self.offset_head = Predictor(decoder_channels, 2 * k, decoder_norm)  # in units of R
        self.limb_head = Predictor(decoder_channels, e, decoder_norm, bias=prior)
        self.matching_loss_on = bool(matching_loss)
        self.uncertainty = uncertainty
        if uncertainty:
            self.log_vars = nn.Parameter(torch.zeros(len(TASKS)))
            if matching_loss:
                self.log_var_matching = nn.Parameter(torch.zeros(()))
        self.loss_weights = {task: 1.0 for task in tasks} | dict(loss_weights or {})
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------------------- network

    @property
    def dspf_strides(self) -> list[int]:
        """Strides of the supervised DSPF levels, finest last."""
        return [STRIDE] if self.dspf_mode == "single" else [32, 16, 8, 4]

    def _batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        height = math.ceil(max(i.shape[-2] for i in images) / 32) * 32
        width = math.ceil(max(i.shape[-1] for i in images) / 32) * 32
        batch = images[0].new_zeros(len(images), 3, height, width).float()
        for b, image in enumerate(images):
            batch[b, :, : image.shape[-2], : image.shape[-1]] = (image.float() - self.mean[0]) / self.std[0]
        return batch

    def maps(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs on a normalised, padded (B, 3, H, W) batch, all at stride 4 except the DSPF pyramid.

        Returns ``semantic`` (B, C, h, w) logits, ``dspf`` (list, finest last, cells of each level), ``flows``,
        ``disks`` (B, K, h, w) logits, ``offsets`` (B, K, 2, h, w) pixels, ``limbs`` (B, E, h, w) logits.
        """
        features = self.body(batch)
        pyramid = [features[level] for level in FPN_LEVELS]
        seg = self.seg_decoder(pyramid)
        fields, flows = self.dspf_head(pyramid, seg)
        pose = self.pose_decoder(pyramid)
        b, _, h, w = pose.shape
        return {
            "semantic": self.semantic_head(seg),
            "dspf": fields,
            "flows": flows,
            "disks": self.disk_head(pose),
            "offsets": self.offset_head(pose).view(b, -1, 2, h, w) * self.disk_radius,
            "limbs": self.limb_head(pose),
        }

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        check_images(images)
        batch = self._batch(images)
        out = self.maps(batch)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the model needs targets: model(images, targets)")
            return self.losses(out, batch.shape[-2:], targets)
        return self.predict(out, [tuple(i.shape[-2:]) for i in images])

    # -------------------------------------------------------------------------------------------- losses

    def losses(self, out: dict, size: tuple[int, int], targets: list[dict]) -> dict[str, torch.Tensor]:
        device = out["semantic"].device
        height, width = size
        grid = tuple(out["semantic"].shape[-2:])
        semantic = torch.full((len(targets), height, width), IGNORE_INDEX, dtype=torch.int64, device=device)
        instances = torch.zeros(len(targets), height, width, dtype=torch.int64, device=device)
        for b, t in enumerate(targets):
            h, w = t["semantic"].shape
            semantic[b, :h, :w] = t["semantic"].to(device)
            instances[b, :h, :w] = t["instances"].to(device)
        keypoints = [t["keypoints"].to(device) for t in targets]
        offsets, weight = dspf_targets(instances, keypoints, STRIDE, self.min_visibility, grid)
        disks, kp_offsets = keypoint_targets(keypoints, grid, STRIDE, self.disk_radius, self.min_visibility,
                                             self.kset.num_keypoints, device)
        limbs = limb_targets(keypoints, self.limbs, grid, STRIDE, self.limb_sigma, self.min_visibility, device)
        raw = {
            "semantic": semantic_loss(out["semantic"], semantic),
            "dspf": dspf_loss(out["dspf"], self.dspf_strides, offsets, weight, self.disk_radius),
            "disk": disk_loss(out["disks"], disks),
            "offset": offset_loss(out["offsets"], kp_offsets, disks, self.disk_radius),
            "limb": limb_loss(out["limbs"], limbs),
        }
        log_vars = {}
        if self.uncertainty:
            log_vars = {task: self.log_vars[i] for i, task in enumerate(TASKS)}
        if self.matching_loss_on:
            raw["matching"] = self.matching_loss(out, keypoints)
            if self.uncertainty:
                log_vars["matching"] = self.log_var_matching
        if self.uncertainty:
            return {f"loss_{task}": torch.exp(-s) * raw[task] + s for task, s in log_vars.items()}
        return {f"loss_{task}": self.loss_weights[task] * raw[task] for task in raw}

    def matching_loss(self, out: dict, keypoints: list[torch.Tensor], return_parts: bool = False):
        """The loss through the differentiable matching (§3.3-3.4; the module docstring's "Matching loss").

        Args:
            out: :meth:`maps` of the batch. keypoints: per image, (N_i, K, 3) ground-truth keypoints in pixels.
            return_parts: also return the intermediate tensors (tests and the chapter read them).

        Returns:
            the scalar binary cross-entropy of Y against the ground-truth assignment, averaged over the real entries of
            every limb type and image (0, attached to the graph, when the batch has no pair of candidates); with
            ``return_parts``, ``(loss, parts)`` where ``parts`` holds ``candidates`` (B, K, N, 2), ``valid``,
            ``labels``, ``scores`` (A, (B, E, N, N)), ``assignment`` (Y), ``target`` and ``mask``.
        """
        cfg = self.assembly
        k = self.kset.num_keypoints
        fields = out["dspf"][-1].float() * self.dspf_strides[-1]  # (B, 2, h, w) pixels, with gradient
        batch, _, h, w = fields.shape
        device = fields.device
        # 1-2. keypoint candidates of each image, detected as at inference (a selection: no gradient)
        with torch.no_grad():
            human = out["semantic"].argmax(1) > 0
            disks = out["disks"].float().sigmoid()
            offsets = out["offsets"].float()
            found = [detect_keypoints(cfg, human[b], fields[b].detach(), disks[b], offsets[b], prune=True)
                     for b in range(batch)]
        detected = max([f["valid"].shape[1] for f in found if "valid" in f] + [0])
        cells = torch.zeros(batch, k, detected, dtype=torch.long, device=device)
        found_valid = torch.zeros(batch, k, detected, dtype=torch.bool, device=device)
        for b, f in enumerate(found):
            if "valid" in f:
                n = f["valid"].shape[1]
                cells[b, :, :n], found_valid[b, :, :n] = f["cells"], f["valid"]
        # a detected candidate sits at its cell's projection c(u) + D(u): differentiable in D
        centres = cell_centres(h, w, STRIDE, device).view(1, h * w, 2)
        projections = centres + fields.flatten(2).transpose(1, 2)  # (B, hw, 2)
        found_xy = projections.gather(1, cells.view(batch, -1, 1).expand(-1, -1, 2)).view(batch, k, detected, 2)
        # labels, plus the ground-truth joints that no detection stands for
        joints, used = pad_keypoints(keypoints, self.min_visibility, device)  # (B, P, K, 2), (B, P, K)
        if joints.shape[2] != k:  # images without people: no joint of any type
            joints, used = joints.new_zeros(batch, joints.shape[1], k, 2), used.new_zeros(batch, used.shape[1], k)
        labels, covered = label_candidates(found_xy, found_valid, joints, used, cfg.nms_radius or cfg.disk_radius / 3)
        people = joints.shape[1]
        candidates = torch.cat((found_xy, joints.permute(0, 2, 1, 3)), 2)  # (B, K, N + P, 2)
        valid = torch.cat((found_valid, used.permute(0, 2, 1) & ~covered), 2)
        labels = torch.cat((labels, torch.arange(1, people + 1, device=device).expand(batch, k, -1)), 2)
        # keep the real candidates first and cut the padding to the step's largest count
        order = valid.to(torch.uint8).argsort(dim=2, descending=True, stable=True)
        count = int(valid.sum(2).max()) if valid.numel() else 0
        order = order[:, :, :count]
        candidates = candidates.gather(2, order[..., None].expand(-1, -1, -1, 2))
        valid, labels = valid.gather(2, order), labels.gather(2, order)
        # 3. limb scores of every limb type and image at once; 4. the relaxed matching; §3.4's cross-entropy
        limb_maps = out["limbs"].float().sigmoid()
        A = limb_scores(limb_maps, self.limbs, candidates, valid, cfg.limb_samples, STRIDE)  # (B, E, N, N)
        target, mask = assignment_targets(labels, valid, self.limbs)
        e = len(self.limbs)
        if count == 0 or not bool(mask.any()):
            loss = 0.0 * limb_maps.sum() + 0.0 * fields.sum()
            Y = A
        else:
            flat = (batch * e, count, count)
            Y = dykstra_matching(A.reshape(flat), mask.reshape(flat), **TRAINING_DEFAULTS).view_as(A)
            loss = assignment_loss(Y.reshape(flat), target.reshape(flat), mask.reshape(flat), kind="bce")
        if return_parts:
            return loss, {"candidates": candidates, "valid": valid, "labels": labels, "scores": A, "assignment": Y,
                          "target": target, "mask": mask, "detected": found_valid.sum().item()}
        return loss

    # ----------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, out: dict, sizes: list[tuple[int, int]], return_steps: bool = False) -> list[dict]:
        """:func:`assemble` on every image of the batch (``return_steps``: keep its intermediate results)."""
        with torch.autocast(out["semantic"].device.type, enabled=False):
            preds = []
            for b, (height, width) in enumerate(sizes):
                grid_h, grid_w = math.ceil(height / STRIDE), math.ceil(width / STRIDE)
                logits = out["semantic"][b : b + 1].float()
                padded = (logits.shape[-2] * STRIDE, logits.shape[-1] * STRIDE)
                probs = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
                probs = probs[0, :, :height, :width].softmax(0)
                dspf = out["dspf"][-1][b : b + 1].float() * self.dspf_strides[-1]  # pixels
                dspf_full = F.interpolate(dspf, size=padded, mode="bilinear", align_corners=False)
                dspf_full = dspf_full[0, :, :height, :width]
                preds.append(assemble(
                    self.assembly, probs, dspf_full,
                    human=logits[0].argmax(0)[:grid_h, :grid_w] > 0,
                    dspf_grid=dspf[0, :, :grid_h, :grid_w],
                    disks=out["disks"][b, :, :grid_h, :grid_w].float().sigmoid(),
                    offsets=out["offsets"][b, :, :, :grid_h, :grid_w].float(),
                    limbs=out["limbs"][b, :, :grid_h, :grid_w].float().sigmoid(),
                    return_steps=return_steps,
                ))
            return preds


# --------------------------------------------------------------------------------------------------- assembly


def limb_scores(limb_maps: torch.Tensor, limbs, candidates: torch.Tensor, valid: torch.Tensor,
                samples: int, stride: int) -> torch.Tensor:
    """Eq. 9's score matrices: the mean limb heatmap along each candidate segment, all limb types at once.

    Sampling is bilinear (``grid_sample``), so the scores are differentiable with respect to the heatmaps and to the
    candidate positions (the matching loss uses both).

    Args:
        limb_maps: (E, h, w) limb heatmaps in [0, 1] on the stride-``stride`` grid, or (B, E, h, w) for a batch.
        limbs: E (a, b) joint types. candidates: (K, N, 2) candidate positions in pixels, or (B, K, N, 2);
            valid: (K, N) or (B, K, N) bool.
        samples: points per segment (endpoints included).

    Returns:
        (E, N, N) scores ``A[e, n, n'] `` for candidate n of type a and n' of type b (0 where either is invalid), or
        (B, E, N, N) for a batch.
    """
    if limb_maps.dim() == 3:
        return limb_scores(limb_maps[None], limbs, candidates[None], valid[None], samples, stride)[0]
    batch, kinds, count = valid.shape
    e = len(limbs)
    if count == 0 or e == 0:
        return limb_maps.new_zeros(batch, e, count, count)
    a = torch.tensor([x for x, _ in limbs], device=limb_maps.device)
    b = torch.tensor([y for _, y in limbs], device=limb_maps.device)
    pa, pb = candidates[:, a, :, None], candidates[:, b, None, :]  # (B, E, N, 1, 2), (B, E, 1, N, 2)
    t = torch.linspace(0, 1, samples, device=limb_maps.device).view(1, 1, 1, 1, -1, 1)
    points = pa[..., None, :] + t * (pb - pa)[..., None, :]  # (B, E, N, N, S, 2) pixels
    h, w = limb_maps.shape[-2:]
    norm = torch.tensor([2.0 / (w * stride), 2.0 / (h * stride)], device=limb_maps.device)
    grid = (points * norm - 1).reshape(batch * e, count * count * samples, 1, 2).to(limb_maps.dtype)
    sampled = F.grid_sample(limb_maps.reshape(batch * e, 1, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    scores = sampled.view(batch, e, count, count, samples).mean(-1)
    return scores * (valid[:, a, :, None] & valid[:, b, None, :])


def _match(scores: torch.Tensor, mask: torch.Tensor, method: str, iters: int) -> torch.Tensor:
    if method == "hungarian":
        return hungarian_matching(scores, mask)
    if method == "greedy":
        return greedy_matching(scores, mask)
    relaxed = dykstra_matching(scores, mask, iters=iters)
    return round_assignment(relaxed, mask)


def group_joints(assignment: torch.Tensor, scores: torch.Tensor, limbs, order, count: int,
                 nodes=()) -> list[list[int]]:
    """Group candidates into people along matched limbs, "from head to foot" (module docstring, step 5).

    Args:
        assignment: (E, N, N) bool one-to-one matchings per limb type (rows: candidates of the limb's first joint
            type ``limbs[e][0]``, columns: of its second).
        scores: (E, N, N) limb scores; within a limb type, pairs are merged best first.
        limbs: the E ``(a, b)`` joint types. order: ``(limb, parent, child)`` of
            :func:`~hparse.models.mg_targets.skeleton_order` (the visiting order).
        count: N; candidate ``n`` of type ``k`` is node ``k * N + n``.
        nodes: every real candidate's node id (those in no matched limb become groups of one).

    Returns:
        the groups (lists of node ids), each node in exactly one.
    """
    parent: dict[int, int] = {}
    types: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        types.setdefault(x, 1 << (x // count))
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node in nodes:
        find(node)
    pairs = assignment.nonzero()
    weights = scores[assignment].tolist()
    by_limb: dict[int, list[tuple[float, int, int]]] = {}
    for (e, i, j), w in zip(pairs.tolist(), weights):  # one device-to-host copy
        by_limb.setdefault(e, []).append((w, i, j))
    for e, _, _ in order:
        a, b = limbs[e]
        for _, i, j in sorted(by_limb.get(e, []), reverse=True):
            ra, rb = find(a * count + i), find(b * count + j)
            if ra == rb or types[ra] & types[rb]:  # same group already, or two joints of one type: no merge
                continue
            parent[rb] = ra
            types[ra] |= types[rb]
    groups: dict[int, list[int]] = {}
    for node in list(parent):
        groups.setdefault(find(node), []).append(node)
    return list(groups.values())


def assign_pixels(points: torch.Tensor, joints: torch.Tensor, joint_scores: torch.Tensor, present: torch.Tensor,
                  min_scale: float = 1.0, chunk: int = 1 << 20) -> torch.Tensor:
    """Eq. 17: the person each projected pixel belongs to.

    ``ψ_h(u) = min_{p ∈ P_h} ‖u + D(u) − p‖ / ((s_p + s_h) σ_h)`` with ``s_p`` the joint's score, ``s_h`` the mean
    score of the person's joints and ``σ_h`` the square root of the area of the box of its joints, at least
    ``min_scale`` (:func:`assemble` passes R); the pixel goes to ``argmin_h ψ_h``.

    Args:
        points: (P, 2) projections ``u + D(u)`` in pixels.
        joints: (H, K, 2) joints of each person; joint_scores: (H, K); present: (H, K) bool.
        min_scale: floor of σ_h (a person of one joint, or of joints on a line, has a zero-area box).
        chunk: bound on ``P_chunk · H · K`` elements per block.

    Returns:
        int64 (P,) person index per point (-1 when there is no person).
    """
    people = joints.shape[0]
    if people == 0 or points.shape[0] == 0:
        return torch.full((points.shape[0],), -1, dtype=torch.int64, device=points.device)
    s_h = (joint_scores * present).sum(1) / present.sum(1).clamp_min(1)  # (H,)
    big = torch.finfo(joints.dtype).max
    lo = torch.where(present[..., None], joints, torch.full_like(joints, big)).amin(1)
    hi = torch.where(present[..., None], joints, torch.full_like(joints, -big)).amax(1)
    sigma = ((hi - lo).clamp_min(0).prod(-1)).sqrt().clamp_min(min_scale)  # (H,)
    # ψ² has the same argmin as ψ: compare squared distances over squared normalisers (no square root per pair)
    inv = ((joint_scores + s_h[:, None]) * sigma[:, None]).clamp_min(1e-6).pow(-2)  # (H, K)
    inv = inv.masked_fill(~present, math.inf)  # absent joints: infinitely far
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    step = max(1, chunk // (people * joints.shape[1]))
    for start in range(0, points.shape[0], step):
        x = points[start:start + step]
        d2 = ((x[:, None, None, :] - joints[None]) ** 2).sum(-1)  # (p, H, K)
        psi2 = torch.where(present[None], d2 * inv[None], torch.full_like(d2, math.inf)).amin(-1)
        out[start:start + step] = psi2.argmin(-1)
    return out


@dataclass
class Assembly:
    """Settings of :func:`assemble` (a :class:`MGParser` carries its own as ``model.assembly``)."""

    kset: KeypointSet
    num_classes: int
    disk_radius: float
    keypoint_threshold: float = 0.7
    nms_radius: float | None = None
    vote_min: float = 0.01
    limb_samples: int = 10
    limb_threshold: float = 0.7
    matching: str = "dykstra"
    dykstra_iters: int = 300
    min_person_joints: int = 1
    max_candidates: int = 50
    limb_set: str = "dense"
    hough_norm: str = "cells"
    stride: int = STRIDE

    def __post_init__(self):
        if self.limb_set not in LIMB_SETS:
            raise ValueError(f"limbs must be one of {LIMB_SETS}, got {self.limb_set!r}")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {self.matching!r}")
        if self.hough_norm not in HOUGH_NORMS:
            raise ValueError(f"hough_norm must be one of {HOUGH_NORMS}, got {self.hough_norm!r}")

    @property
    def limbs(self) -> tuple[tuple[int, int], ...]:
        """The scored limb types: the skeleton, or the skeleton plus the pairs two limbs apart (``"dense"``)."""
        skeleton = tuple(self.kset.skeleton)
        return skeleton if self.limb_set == "skeleton" else dense_skeleton(skeleton, self.kset.num_keypoints)

    @property
    def order(self):
        return skeleton_order(self.limbs, self.kset.num_keypoints, _root(self.kset), len(self.kset.skeleton))


def _boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) xyxy boxes in continuous pixels (x2 = last column + 1)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, device=masks.device)
    rows, cols = masks.any(2), masks.any(1)
    height, width = masks.shape[-2:]
    y1 = rows.float().argmax(1)
    y2 = height - rows.flip(1).float().argmax(1)
    x1 = cols.float().argmax(1)
    x2 = width - cols.flip(1).float().argmax(1)
    return torch.stack((x1, y1, x2, y2), 1).float()


def hough_upper_bound(votes: torch.Tensor, weights: torch.Tensor, points: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
    """An upper bound of Eq. 8's unnormalised Hough sum at every point, from one bilinear splat: cheap and exact.

    A vote ``v`` reaches ``x`` only when ``|v − x| < 1`` on both axes (the tent's support) and then adds at most its
    weight; its weight splats, in total, onto the grid nodes within 1 of ``v`` (bilinear weights sum to 1), all of
    which lie within 2 of ``x``: the 4 × 4 nodes around ``x``. So ``Σ_v w_v K(v − x)`` is at most the splatted map
    (:func:`~hparse.ops.hough.hough_map`) summed over those 16 nodes. The map is padded by 2 cells on each side so that
    votes just outside the image count; points whose 16 nodes leave the padded map get ``inf`` (no bound).

    Args:
        votes: (K, V, 2) votes in cell units. weights: (K, V). points: (Q, 2) in cell units. size: (h, w) of the grid.

    Returns:
        (K, Q) bounds, comparable to :func:`~hparse.ops.hough.hough_scores` before its normalisation.
    """
    h, w = size
    splat = hough_map(votes + 2, weights, (h + 4, w + 4))  # node (i, j) of the grid is (i + 2, j + 2) here
    box = F.avg_pool2d(splat[None], 4, stride=1)[0] * 16  # (K, h + 1, w + 1): sums of 4 x 4 nodes
    first = (points - 0.5).floor().long() + 1  # the box whose nodes are floor(x - 0.5) - 1 ... + 2, per axis
    inside = (first[:, 0] >= 0) & (first[:, 0] <= w) & (first[:, 1] >= 0) & (first[:, 1] <= h)
    bound = box[:, first[:, 1].clamp(0, h), first[:, 0].clamp(0, w)]
    return bound.masked_fill(~inside[None], math.inf)


def _hough_at_pairs(votes: torch.Tensor, weights: torch.Tensor, points: torch.Tensor, kinds: torch.Tensor,
                    chunk: int = 1 << 22) -> torch.Tensor:
    """Eq. 8's unnormalised sum ``Σ_v w_kv K(v_kv − x)`` for given (type, point) pairs only: (P,) for P pairs.

    :func:`~hparse.ops.hough.hough_scores` scores every point under every type; after :func:`hough_upper_bound` has
    ruled most pairs out, scoring the remaining pairs alone is what saves the time. Votes of zero weight are dropped
    first (per type, padded to the largest count), as ``hough_scores`` does with its ``min_weight``.
    """
    out = points.new_zeros(kinds.shape[0])
    if kinds.numel() == 0:
        return out
    live = weights > 0
    top = int(live.sum(1).max())
    if top == 0:
        return out
    order = live.float().argsort(dim=1, descending=True, stable=True)[:, :top]
    votes = votes.gather(1, order[..., None].expand(-1, -1, 2))
    weights = weights.gather(1, order)  # the padding keeps weight 0
    step = max(1, chunk // top)
    for start in range(0, kinds.shape[0], step):
        kind = kinds[start:start + step]
        d = (votes[kind] - points[start:start + step, None]).abs()  # (p, V, 2)
        out[start:start + step] = ((1 - d).clamp_min(0).prod(-1) * weights[kind]).sum(-1)
    return out


def detect_keypoints(cfg: Assembly, human: torch.Tensor, dspf_grid: torch.Tensor, disks: torch.Tensor,
                     offsets: torch.Tensor, prune: bool = False) -> dict:
    """Steps 1-2 of the module docstring for one image: keypoint candidates from DSPF projections and Hough voting.

    Args:
        cfg: the settings (:class:`Assembly`).
        human: (h, w) bool human cells. dspf_grid: (2, h, w) DSPF in pixels. disks: (K, h, w) probabilities.
        offsets: (K, 2, h, w) short-range offsets in pixels.
        prune: score exactly only the (type, projection) pairs whose :func:`hough_upper_bound` reaches the threshold
            (the others cannot pass it; their scores are reported as 0). The candidates are the same up to rounding
            in the last bits of a sum; the matching loss uses it because exact Hough scoring of every projection under
            every type would dominate its cost.

    Returns:
        ``queries`` (Q, 2) projections of the human cells, ``scores`` (K, Q) their Hough scores, ``keep`` (K, Q) the
        kept ones and, when any is kept, ``candidates`` (K, N, 2) in pixels, ``valid`` (K, N), ``candidate_scores``
        (K, N) and ``cells`` (K, N) the flat index (row-major in ``h x w``) of the cell each candidate projects from.
    """
    s, k, radius = cfg.stride, cfg.kset.num_keypoints, cfg.disk_radius
    h, w = human.shape
    centres = cell_centres(h, w, s, human.device)  # (h, w, 2) pixels
    # 1. candidates are the projections of the human cells
    queries = (centres + dspf_grid.permute(1, 2, 0))[human]  # (Q, 2) pixels
    # 2. Hough voting (Eq. 8) at the projections, then deduplication
    votes = (centres[None] + offsets.permute(0, 2, 3, 1)).reshape(k, -1, 2)  # (K, hw, 2) pixels
    weights = disks.reshape(k, -1)
    norm_size = (h, w) if cfg.hough_norm == "cells" else None
    if prune and queries.shape[0]:
        kept = weights * (weights >= cfg.vote_min)  # the exact sum drops these votes too
        norm = disk_cells(queries / s, radius / s, (h, w)).clamp_min(1) if norm_size else disk_area(radius / s)
        if not torch.is_tensor(norm):
            norm = queries.new_full((queries.shape[0],), norm)
        bound = hough_upper_bound(votes / s, kept, queries / s, (h, w)) / norm
        kinds, index = (bound >= cfg.keypoint_threshold - 1e-4).nonzero(as_tuple=True)  # a margin for rounding
        scores = queries.new_zeros(k, queries.shape[0])
        scores[kinds, index] = _hough_at_pairs(votes / s, kept, queries[index] / s, kinds) / norm[index]
    else:
        scores = hough_scores(votes / s, weights, queries / s, radius / s, cfg.vote_min, size=norm_size)  # (K, Q)
    passed = scores >= cfg.keypoint_threshold
    keep = point_nms(queries[None].expand(k, -1, -1), scores, cfg.nms_radius or radius / 3, passed,
                     cfg.max_candidates)
    out = {"queries": queries, "scores": scores, "keep": keep}
    count = int(keep.sum(1).max()) if keep.numel() else 0
    if count == 0:
        return out
    ranked = scores.masked_fill(~keep, -math.inf).topk(count, dim=1)
    valid = torch.isfinite(ranked.values)  # (K, N)
    out.update(candidates=queries[ranked.indices], valid=valid, candidate_scores=ranked.values.masked_fill(~valid, 0),
               cells=human.flatten().nonzero()[:, 0][ranked.indices])
    return out


def assemble(cfg: Assembly, probs: torch.Tensor, dspf_full: torch.Tensor, *, human: torch.Tensor,
             dspf_grid: torch.Tensor, disks: torch.Tensor, offsets: torch.Tensor, limbs: torch.Tensor,
             return_steps: bool = False) -> dict:
    """From the maps of one image to its prediction-contract dict (module docstring, steps 1-6).

    Args:
        cfg: the settings (:class:`Assembly`).
        probs: (C, H, W) part probabilities at full resolution (one-hot for the oracle).
        dspf_full: (2, H, W) DSPF in pixels at full resolution (for Eq. 17).
        human: (h, w) bool human cells of the stride-``cfg.stride`` grid.
        dspf_grid: (2, h, w) DSPF in pixels on the grid (its projections are the keypoint candidates).
        disks: (K, h, w) disk probabilities. offsets: (K, 2, h, w) short-range offsets in pixels.
        limbs: (E, h, w) limb heatmaps in [0, 1].
        return_steps: also return the intermediate results under ``"steps"`` (the chapter draws them).

    Returns:
        the prediction contract plus ``keypoints``.
    """
    height, width = probs.shape[-2:]
    device = probs.device
    s = cfg.stride
    k = cfg.kset.num_keypoints
    radius = cfg.disk_radius
    empty = empty_prediction((height, width), cfg.num_classes, device)
    empty["semantic"] = probs.argmax(0)
    empty["keypoints"] = torch.zeros(0, k, 3, device=device)
    found = detect_keypoints(cfg, human, dspf_grid, disks, offsets)
    steps = {key: found[key] for key in ("queries", "scores", "keep")}
    if "candidates" not in found:
        return {**empty, "steps": steps} if return_steps else empty
    cand, valid, cand_score = found["candidates"], found["valid"], found["candidate_scores"]
    count = valid.shape[1]
    # 3. limb scores (Eq. 9's A) and 4. matching, all limb types at once
    A = limb_scores(limbs, cfg.limbs, cand, valid, cfg.limb_samples, s)  # (E, N, N)
    a_idx = [a for a, _ in cfg.limbs]
    b_idx = [b for _, b in cfg.limbs]
    mask = valid[a_idx][:, :, None] & valid[b_idx][:, None, :] & (A > cfg.limb_threshold)
    assignment = _match(A, mask, cfg.matching, cfg.dykstra_iters) & mask
    steps.update(candidates=cand, candidate_valid=valid, candidate_scores=cand_score, limb_scores=A,
                 assignment=assignment)
    # 5. grouping from head to foot
    nodes = valid.flatten().nonzero()[:, 0].tolist()
    groups = [g for g in group_joints(assignment, A, cfg.limbs, cfg.order, count, nodes)
              if len(g) >= cfg.min_person_joints]
    if not groups:
        return {**empty, "steps": steps} if return_steps else empty
    people = len(groups)
    present = torch.zeros(people, k, dtype=torch.bool, device=device)
    joints = torch.zeros(people, k, 2, device=device)
    joint_scores = torch.zeros(people, k, device=device)
    node = torch.tensor([[g, n] for g, members in enumerate(groups) for n in members], device=device)
    kind, slot = node[:, 1] // count, node[:, 1] % count
    present[node[:, 0], kind] = True
    joints[node[:, 0], kind] = cand[kind, slot]
    joint_scores[node[:, 0], kind] = cand_score[kind, slot]
    # 6. pixels to people (Eq. 17), sigma_h floored at R
    semantic = probs.argmax(0)
    ys, xs = (semantic > 0).nonzero(as_tuple=True)
    points = torch.stack((xs + 0.5, ys + 0.5), 1) + dspf_full[:, ys, xs].T
    owner = assign_pixels(points, joints, joint_scores, present, min_scale=radius)
    person_map = torch.full((height, width), -1, dtype=torch.int64, device=device)
    person_map[ys, xs] = owner
    masks = person_map[None] == torch.arange(people, device=device)[:, None, None]
    alive = masks.flatten(1).any(1)
    masks, joints, joint_scores, present = masks[alive], joints[alive], joint_scores[alive], present[alive]
    s_h = (joint_scores * present).sum(1) / k  # PersonLab's instance score: the joints' scores summed, over K
    person_parts = torch.where(masks, semantic[None], torch.zeros_like(semantic)[None]).to(torch.uint8)
    # part scores: s_h x mean probability of each part over the person's pixels of that part
    n = masks.shape[0]
    label = semantic[None].expand(n, -1, -1)[masks]
    who = masks.nonzero(as_tuple=True)[0]
    prob = probs.permute(1, 2, 0)[None].expand(n, -1, -1, -1)[masks].gather(1, label[:, None])[:, 0]
    sums = torch.zeros(n * cfg.num_classes, device=device).index_add_(0, who * cfg.num_classes + label, prob)
    hits = torch.zeros(n * cfg.num_classes, device=device).index_add_(0, who * cfg.num_classes + label,
                                                                     torch.ones_like(prob))
    part_scores = (sums / hits.clamp_min(1)).view(n, cfg.num_classes) * s_h[:, None]
    keypoints = torch.cat((joints, joint_scores[..., None]), -1) * present[..., None]
    pred = {
        "semantic": semantic,
        "person_parts": person_parts,
        "person_scores": s_h.float(),
        "person_boxes": _boxes_from_masks(masks),
        "part_scores": part_scores.float(),
        "keypoints": keypoints.float(),
    }
    if return_steps:
        steps.update(groups=groups, owner=person_map)
        pred["steps"] = steps
    return pred


# ------------------------------------------------------------------------------------- grouping quality


def limb_assignment_counts(steps: dict, keypoints: torch.Tensor, limbs, radius: float,
                           min_visibility: int = 2) -> dict[str, int]:
    """How well one image's matching grouped its detected keypoints (the limb assignment accuracy's counts).

    Candidates are labelled with the ground-truth person they stand for exactly as the matching loss labels them
    (:func:`~hparse.models.mg_targets.label_candidates`, within ``radius``). A ground-truth limb (a person with both
    joints of a limb type used) is *detectable* when both joints have a candidate, and *correct* when the matching
    paired exactly those two candidates. Detection misses are thus left out: this measures the grouping alone.

    Args:
        steps: :func:`assemble`'s ``steps`` (``candidates``, ``candidate_valid``, ``assignment``).
        keypoints: (P, K, 3) ground-truth keypoints of the image. limbs: the matched limb types.
        radius: labelling radius in pixels (the model's ``assembly.nms_radius``). min_visibility: joints used.

    Returns:
        ``limbs`` (detectable ground-truth limbs), ``correct``, ``matched`` (pairs the matching made) and
        ``matched_labelled`` (made pairs whose two candidates both stand for a joint).
    """
    zero = {"limbs": 0, "correct": 0, "matched": 0, "matched_labelled": 0}
    if "candidates" not in steps or not len(keypoints):
        if "assignment" in steps:
            zero["matched"] = int(steps["assignment"].sum())
        return zero
    cand, valid, chosen = steps["candidates"], steps["candidate_valid"], steps["assignment"]
    joints, used = pad_keypoints([keypoints], min_visibility, cand.device)
    labels, _ = label_candidates(cand[None], valid[None], joints, used, radius)
    target, _ = assignment_targets(labels, valid[None], limbs)
    target, labels = target[0].bool(), labels[0]
    a = torch.tensor([x for x, _ in limbs], device=cand.device)
    b = torch.tensor([y for _, y in limbs], device=cand.device)
    both = (labels[a][:, :, None] > 0) & (labels[b][:, None, :] > 0)
    return {"limbs": int(target.sum()), "correct": int((target & chosen).sum()), "matched": int(chosen.sum()),
            "matched_labelled": int((chosen & both).sum())}


@torch.no_grad()
def limb_assignment_accuracy(model: MGParser, dataset, *, max_images: int | None = None, batch_size: int = 4,
                             device: torch.device | str | None = None) -> dict[str, float]:
    """The limb assignment accuracy of a trained parser on ``dataset`` (sums of :func:`limb_assignment_counts`).

    Returns:
        ``limb_accuracy`` (correct / detectable ground-truth limbs: the grouping recall), ``limb_precision``
        (correct / made pairs between labelled candidates) and the summed counts, plus ``limb_images``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = {"limbs": 0, "correct": 0, "matched": 0, "matched_labelled": 0}
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    radius = model.assembly.nms_radius or model.disk_radius / 3
    try:
        for start in range(0, count, batch_size):
            samples = [dataset[i] for i in range(start, min(count, start + batch_size))]
            images = [s["image"].to(device) for s in samples]
            out = model.maps(model._batch(images))
            preds = model.predict(out, [tuple(i.shape[-2:]) for i in images], return_steps=True)
            for pred, sample in zip(preds, samples):
                counts = limb_assignment_counts(pred["steps"], sample["keypoints"].to(device), model.limbs, radius,
                                                model.min_visibility)
                for key in totals:
                    totals[key] += counts[key]
    finally:
        model.train(was_training)
    return {"limb_accuracy": totals["correct"] / max(totals["limbs"], 1),
            "limb_precision": totals["correct"] / max(totals["matched_labelled"], 1),
            **{f"limb_{key}": value for key, value in totals.items()}, "limb_images": count}


# ----------------------------------------------------------------------------------------------------- oracle


def oracle_maps(sample: dict, kset: KeypointSet, limbs, num_classes: int, disk_radius: float, limb_sigma: float,
                min_visibility: int = 2, stride: int = STRIDE) -> dict[str, torch.Tensor]:
    """The maps a perfect network would predict for ``sample``: the arguments of :func:`assemble`.

    One-hot ground-truth parts (``probs``), the ground-truth DSPF at full resolution (``dspf_full``) and on the
    grid, and the disk, offset and limb targets of :mod:`hparse.models.mg_targets`.
    """
    semantic = sample["semantic"].clone()
    semantic[semantic == IGNORE_INDEX] = 0
    height, width = semantic.shape
    grid = (math.ceil(height / stride), math.ceil(width / stride))
    instances = sample["instances"][None]
    keypoints = [sample["keypoints"]]
    dspf_full, _ = dspf_targets(instances, keypoints, 1, min_visibility)
    dspf_grid, _ = dspf_targets(instances, keypoints, stride, min_visibility, grid)
    disks, offsets = keypoint_targets(keypoints, grid, stride, disk_radius, min_visibility, kset.num_keypoints)
    limbs = limb_targets(keypoints, limbs, grid, stride, limb_sigma, min_visibility)
    return {
        "probs": F.one_hot(semantic, num_classes).permute(2, 0, 1).float(),
        "dspf_full": dspf_full[0],
        "human": grid_labels(semantic[None], grid, stride)[0] > 0,
        "dspf_grid": dspf_grid[0],
        "disks": disks[0],
        "offsets": offsets[0],
        "limbs": limbs[0],
    }


def oracle_prediction(sample: dict, *, num_classes: int = 20, keypoints: str | KeypointSet = "coco17",
                      disk_radius: float | None = None, limb_sigma: float | None = None, min_visibility: int = 2,
                      return_steps: bool = False, **settings) -> dict:
    """The parser's own assembly run on ground-truth maps: the upper bound of the grouping (issue: AP^p_50 ≥ 0.9).

    Keypoint candidates come from Hough voting on the ground-truth disks and offsets at the ground-truth DSPF
    projections, limbs are scored on the ground-truth limb heatmaps and matched and grouped as in the model, and
    pixels are assigned by Eq. 17 with the ground-truth parts and DSPF. What it misses is what the assembly itself
    cannot do (a person without two joints linked by a limb, a disk cut by the border that votes below 0.7, a pixel
    whose nearest joint of its own person is nearer, in Eq. 17's normalised distance, to another person's joint).

    Args:
        sample: a data-contract sample. num_classes: part labels including background.
        keypoints: the keypoint set name or object. disk_radius, limb_sigma: pixels (default: the paper's 32 and 9
            scaled to the image's short side, :func:`~hparse.models.mg_targets.scaled_radius`).
        min_visibility: joints used (2: visible).
        return_steps: keep the intermediate results under ``"steps"``.
        **settings: other :class:`Assembly` fields (``keypoint_threshold``, ``matching``, ...).

    Returns:
        a prediction-contract dict (plus ``keypoints``).
    """
    from .mg_targets import scaled_radius

    kset = _keypoint_set(keypoints)
    side = min(sample["semantic"].shape)
    radius = disk_radius if disk_radius is not None else scaled_radius(32.0, side)
    sigma = limb_sigma if limb_sigma is not None else scaled_radius(9.0, side)
    cfg = Assembly(kset, num_classes, radius, **settings)
    maps = oracle_maps(sample, kset, cfg.limbs, num_classes, radius, sigma, min_visibility, cfg.stride)
    return assemble(cfg, maps.pop("probs"), maps.pop("dspf_full"), return_steps=return_steps, **maps)
