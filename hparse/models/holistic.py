"""Holistic instance-level human parsing (Li, Arnab & Torr, BMVC 2017): part segmentation + detections + Instance CRF.

The network of the paper's Fig. 2, each component a constructor flag so that each row of Table 1 is one flag away:

- **Category-level part segmentation** (§3.1): a torchvision ResNet FCN, dilated so that res5 has output stride 8
  or 16 (``output_stride``), whose res5 features are pooled at five resolutions, upsampled, concatenated and
  classified (``pyramid_pooling=True``, PSPNet's module [50]); ``pyramid_pooling=False`` classifies res5 directly.
  Its softmax is Q, (P + 1) channels at the image's resolution. ``fcn_features="fpn"`` is the laptop stand-in
  (not the paper's): the FCN reads the summed P2-P5 levels of the pretrained ResNet-FPN at stride 4 instead of
  dilated res5. The shipped SynthCrowd weights were trained to label parts from exactly those levels; from its
  dilated res5 a laptop run's few hundred steps learn little (150 steps of batch 2: part mIoU 0.08 from res5).
- **Detections** (§3.2's inputs; §4.1: a separately trained R-FCN, forward-only into the network, the dotted lines of
  Fig. 2). ``detections="detector"``: hparse's own Faster R-CNN base (:class:`PersonDetector`, the detection half of
  :class:`~hparse.models.detector.TopDownParser`), a *separate* network trained on the same data in the same run on
  its own box losses (``train_detector=True``), or loaded from a checkpoint of any hparse top-down model and frozen
  (``detector_checkpoint=``). ``detections="gt"``: no detector; detections are passed in
  (``model(images, detections=...)``, e.g. jittered ground-truth boxes) for controlled ablations.
  Training is always "given detections" (§1, §3): the CRF sees the ground-truth boxes, each coordinate jittered
  by ``gt_box_jitter`` of the box's side, with scores uniform in ``gt_score_range``; the detector only supplies
  the detections at test time.
- **Instance CRF** (§3.2, :class:`hparse.ops.InstanceCRF`): box term (Eq. 2, ``box_term``), global term (Eq. 3,
  ``global_term``), dense pairwise term (§3.2.3, ``pairwise``), ``crf_iters`` mean-field iterations; its four
  scalar weights are learned.
- **Loss** (§3.3): the matched cross-entropy of Eq. 4 (:func:`hparse.ops.hungarian_matched_loss`, person-level
  matching) on the CRF's output; ``ohem=True`` keeps only the ``ohem_k`` hardest pixels of the mini-batch (the
  paper: K = 2^15, about 12% of a full-resolution image, so ``ohem_k=0.12`` by default).
- **Training** (§3.3, §4.2). The first ``segmentation_steps`` training steps pre-train the part segmentation alone
  (per-pixel cross-entropy, ``loss_semantic``; the paper pre-trains it on VOC and Pascal-Part first). Then
  ``training="piecewise"`` freezes it (no gradient, batch-norm statistics kept) and trains the CRF's weights
  only; ``training="end_to_end"`` backpropagates the matched loss through the CRF into the segmentation network.
  The model counts its own training steps (``steps_seen``, a buffer saved with checkpoints), so either schedule is
  one :func:`hparse.engine.train` run.
- **Outputs** (§3.4): the CRF's MAP labelling gives ``person_parts`` (label (i, j) -> part j of person i),
  ``semantic`` ((i, j) -> j) and the person masks; ``person_scores`` re-score each detection by the mean CRF
  probability of its pixels (``rescore=True``, the released post-processing; a detection that wins no pixel
  scores 0); ``part_scores[i, j]`` (for AP^r) is the mean probability of label (i, j) over the pixels that take
  it; ``person_boxes`` are the detections.

Choices where the paper is vague (its supplementary material, with the segmentation module's details, is not
available): the five resolutions are PSPNet's four pooled bins (1, 2, 3, 6) plus the unpooled res5 map, each
pooled branch reduced to a quarter of res5's channels by a 1x1 convolution; the classifier is a 3x3 convolution
(``head_channels``), GroupNorm, ReLU, dropout 0.1 and a 1x1 convolution, upsampled bilinearly to the image;
GroupNorm because CPU batches are 2-4 images; detections below ``detection_score_thresh`` (0.5, the released demo's
threshold) are dropped and at most ``max_detections`` kept; detector scores are squashed by the released box
layer's ``sigmoid(2s - 1)`` (``squash_scores``); the CRF's weights train at 10x the learning rate as released
(``crf_weight_scale``, exact for Adam/AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..ops.instance_crf import InstanceCRF, crf_prediction, hungarian_matched_loss, squash_detection_scores
from .backbone import FPN_LEVELS, build_resnet_fpn
from .detector import TopDownParser
from .inference import empty_prediction
from .inputs import check_images

__all__ = ["HolisticCRF", "PersonDetector", "SegmentationFCN", "PyramidPooling", "Res5", "PyramidSum", "dilate_resnet",
           "jitter_boxes", "DETECTION_SOURCES", "TRAINING_MODES"]

DETECTION_SOURCES = ("detector", "gt")
FCN_FEATURES = ("res5", "fpn")
TRAINING_MODES = ("piecewise", "end_to_end")


# ------------------------------------------------------------------------------------- §3.1 part segmentation


def dilate_resnet(body: nn.Module, output_stride: int) -> None:
    """Turn a torchvision ResNet's last stages from striding to dilation (in place), DeepLab-style.

    ``output_stride=16``: res5 (``layer4``) keeps the resolution of res4, its 3x3 convolutions dilated by 2;
    ``8``: res4 dilated by 2 and res5 by 4. As in torchvision's ``replace_stride_with_dilation``, the first block of
    a dilated stage keeps the previous dilation and the following blocks take the new one.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    stages = {8: ("layer3", "layer4"), 16: ("layer4",), 32: ()}[output_stride]
    dilation = 1
    for name in ("layer3", "layer4"):
        if name not in stages:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(getattr(body, name)):
            rate = previous if index == 0 else dilation
            for module in block.modules():
                if isinstance(module, nn.Conv2d):
                    if module.stride == (2, 2):
                        module.stride = (1, 1)
                    if module.kernel_size == (3, 3):
                        module.dilation, module.padding = (rate, rate), (rate, rate)


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


class PyramidPooling(nn.Module):
    """§3.1 / PSPNet: res5 average-pooled to ``bins`` x ``bins`` cells, each reduced by a 1x1 convolution, upsampled
    to res5's size and concatenated with it. (B, C, h, w) -> (B, C + len(bins) * branch, h, w).

    The pooled branches have no normalisation (PSPNet's batch norm there needs large batches; GroupNorm over a 1x1
    cell would zero the global branch).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), branch_channels: int | None = None):
        super().__init__()
        branch_channels = branch_channels or max(in_channels // 4, 8)
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, branch_channels, 1), nn.ReLU(inplace=True))
            for _ in self.bins)
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
                  for b, branch in zip(self.bins, self.branches)]
        return torch.cat([x, *pooled], 1)


class Res5(nn.Module):
    """§3.1's features: res5 of a (dilated) torchvision ResNet, (B, 3, H, W) -> (B, C, H/s, W/s)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk  # torchvision IntermediateLayerGetter: {"0": res2, ..., "3": res5}
        last = trunk.layer4[-1]  # BasicBlock (ResNet-18/34) ends in conv2, Bottleneck in conv3
        self.out_channels = (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)["3"]


class PyramidSum(nn.Module):
    """The laptop stand-in for res5 (``fcn_features="fpn"``): the levels P2-P5 of a pretrained ResNet-FPN,
    upsampled to stride 4 and summed, the features the shipped SynthCrowd weights were trained to label
    (:mod:`hparse.models.pretrain`). (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.out_channels = body.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.body(x)
        size = levels[FPN_LEVELS[0]].shape[-2:]
        return sum(F.interpolate(levels[k], size=size, mode="bilinear", align_corners=False) if k != FPN_LEVELS[0]
                   else levels[k] for k in FPN_LEVELS)


class SegmentationFCN(nn.Module):
    """§3.1: features (dilated res5) -> (pyramid pooling) -> 3x3 conv, GN, ReLU, dropout -> 1x1 classifier ->
    bilinear to the image.

    ``forward((B, 3, H, W) normalised images)`` returns (B, num_classes, H, W) part logits.
    """

    def __init__(self, features: nn.Module, num_classes: int, *, pyramid_pooling: bool = True,
                 head_channels: int = 512, dropout: float = 0.1):
        super().__init__()
        self.features = features  # Res5 or PyramidSum, with out_channels
        channels = features.out_channels
        self.ppm = PyramidPooling(channels) if pyramid_pooling else None
        in_channels = self.ppm.out_channels if pyramid_pooling else channels
        self.head = nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1, bias=False),
                                  _group_norm(head_channels), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res5 = self.features(x)
        if self.ppm is not None:
            res5 = self.ppm(res5)
        logits = self.classifier(self.head(res5))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------ detections


class PersonDetector(TopDownParser):
    """hparse's Faster R-CNN base with no parsing branch: ``model(images, targets)`` -> RPN and box losses;
    ``model(images)`` -> ``[{"boxes": (D, 4) original pixels, "scores": (D,)}]``."""

    def __init__(self, backbone: nn.Module, **detector):
        super().__init__(backbone, num_classes=2, **detector)

    def branch_losses(self, features, rois, image_sizes, targets):
        return {}

    def branch_predict(self, features, detections, image_sizes, original_sizes, image_tensors=None):
        return [{"boxes": self.to_original(d["boxes"], size, original), "scores": d["scores"]}
                for d, size, original in zip(detections, image_sizes, original_sizes)]


@torch.no_grad()
def _detect_with(model: TopDownParser, images: list[torch.Tensor]) -> list[dict]:
    """The detection half of any hparse top-down model (a loaded checkpoint): boxes and scores in original pixels."""
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    image_list, _ = model.transform(list(images), None)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features, None)
    resized = [(int(h), int(w)) for h, w in image_list.image_sizes]
    detections, _ = model.roi_heads(features, proposals, resized)
    return [{"boxes": model.to_original(d["boxes"], size, original), "scores": d["scores"]}
            for d, size, original in zip(detections, resized, sizes)]


def jitter_boxes(boxes: torch.Tensor, height: int, width: int, jitter: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Ground-truth boxes with each coordinate moved by N(0, ``jitter`` x the box's side), clipped to the image and
    kept at least one pixel wide and high (the simulated detections of training "given detections")."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).float()
    boxes = boxes.float()
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device if generator is None else "cpu")
    out = boxes + jitter * side * noise.to(boxes.device)
    limit = torch.tensor([width, height, width, height], dtype=out.dtype, device=out.device)
    out = torch.minimum(out.clamp_min(0), limit)
    out[:, 2] = torch.maximum(out[:, 2], (out[:, 0] + 1).clamp(max=width))
    out[:, 0] = torch.minimum(out[:, 0], out[:, 2] - 1)
    out[:, 3] = torch.maximum(out[:, 3], (out[:, 1] + 1).clamp(max=height))
    out[:, 1] = torch.minimum(out[:, 1], out[:, 3] - 1)
    return out


def _valid_detections(boxes: torch.Tensor, scores: torch.Tensor, height: int, width: int, thresh: float,
                      limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Detections the CRF can take: score >= ``thresh``, clipped to the image, at least one pixel, top ``limit``."""
    boxes = boxes.float().clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (scores >= thresh) & (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    boxes, scores = boxes[keep], scores[keep].float()
    order = torch.argsort(scores, descending=True)[:limit]
    return boxes[order], scores[order]


# ------------------------------------------------------------------------------------------------- the model


class HolisticCRF(nn.Module):
    """The holistic parser; see the module docstring for each flag and the section it implements.

    ``model(images, targets)`` in training returns ``{"loss_semantic", "loss_instance"}`` (the inactive phase's
    loss is 0) plus the detector's losses when it trains; ``model(images)`` (or ``model(images,
    detections=[{"boxes", "scores"}, ...])``) in evaluation returns one prediction-contract dict per image.

    Args:
        num_classes: part labels including background (P + 1; CIHP 20, PASCAL-Person-Part 7).
        backbone: torchvision ResNet depth (``"resnet101"`` in the paper).
        backbone_weights, backbone_norm, trainable_layers, backbone_width, fpn_channels: the ResNet as
            :func:`~hparse.models.backbone.build_resnet_fpn` builds it (``backbone_weights="synthcrowd"`` needs
            ResNet-18, width 24, ``fpn_channels=64``: the shipped weights include that FPN, which the FCN drops).
        output_stride: 8 or 16 (§3.1, dilated res4/res5).
        fcn_features: ``"res5"`` (§3.1) or ``"fpn"`` (the laptop stand-in, see the module docstring).
        pyramid_pooling: §3.1's multi-resolution pooling of res5.
        head_channels: width of the classifier's 3x3 convolution (PSPNet: 512).
        detections: ``"detector"`` or ``"gt"`` (see the module docstring).
        detector: :class:`~hparse.models.detector.TopDownParser` settings of the detector (sizes, anchors, RPN).
        detector_checkpoint: a checkpoint of a trained hparse top-down model whose detection half is used, frozen.
        train_detector: train the detector in the same run (ignored with a checkpoint).
        detection_score_thresh, max_detections, squash_scores: test-time detections (see the module docstring).
        gt_box_jitter, gt_score_range: the detections the CRF is trained with.
        box_term, global_term, pairwise, crf_iters, normalize: the Instance CRF (§3.2, Eq. 1-3).
        app_max_keys: the fast pairwise path's key budget (:func:`hparse.ops.instance_crf`); cost grows with it.
        crf_weight_scale: learning-rate multiplier of the CRF's weights (released: 10).
        ohem, ohem_k: §3.3's online hard example mining and its K (count, or fraction of the batch's pixels).
        training: ``"piecewise"`` or ``"end_to_end"`` (§4.2, Table 1).
        segmentation_steps: training steps of the part-segmentation pre-training phase.
        match_level, unmatched: :func:`hparse.ops.match_segments` settings (Eq. 4).
        rescore: re-score persons by their CRF probability (released post-processing).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "resnet101",
        backbone_weights: str | None = None,
        backbone_norm: str | None = None,
        trainable_layers: int | None = None,
        backbone_width: int = 64,
        fpn_channels: int = 256,
        output_stride: int = 8,
        fcn_features: str = "res5",
        pyramid_pooling: bool = True,
        head_channels: int = 512,
        detections: str = "detector",
        detector: dict | None = None,
        detector_checkpoint: str | None = None,
        train_detector: bool = True,
        detection_score_thresh: float = 0.5,
        max_detections: int = 20,
        squash_scores: bool = True,
        gt_box_jitter: float = 0.08,
        gt_score_range: tuple[float, float] = (0.7, 1.0),
        box_term: bool = True,
        global_term: bool = True,
        pairwise: bool = True,
        crf_iters: int = 5,
        normalize: bool = True,
        app_max_keys: int = 2048,
        crf_weight_scale: float = 10.0,
        ohem: bool = False,
        ohem_k: int | float = 0.12,
        training: str = "end_to_end",
        segmentation_steps: int = 0,
        match_level: str = "person",
        unmatched: str = "background",
        rescore: bool = True,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts labels including background and must be >= 2, got {num_classes}")
        if detections not in DETECTION_SOURCES:
            raise ValueError(f"detections must be one of {DETECTION_SOURCES}, got {detections!r}")
        if fcn_features not in FCN_FEATURES:
            raise ValueError(f"fcn_features must be one of {FCN_FEATURES}, got {fcn_features!r}")
        if training not in TRAINING_MODES:
            raise ValueError(f"training must be one of {TRAINING_MODES}, got {training!r}")
        if not box_term and not global_term:
            raise ValueError("the Instance CRF needs a unary: keep box_term or global_term on")
        if not (isinstance(segmentation_steps, int) and segmentation_steps >= 0):
            raise ValueError(f"segmentation_steps must be an int >= 0, got {segmentation_steps!r}")
        if not (len(gt_score_range) == 2 and 0 <= gt_score_range[0] <= gt_score_range[1] <= 1):
            raise ValueError(f"gt_score_range must be (low, high) within [0, 1], got {gt_score_range!r}")
        self.num_classes, self.num_parts = num_classes, num_classes - 1
        self.detections, self.training_mode = detections, training
        self.segmentation_steps = segmentation_steps
        self.detection_score_thresh, self.max_detections = detection_score_thresh, max_detections
        self.squash_scores = squash_scores
        self.gt_box_jitter, self.gt_score_range = gt_box_jitter, tuple(gt_score_range)
        self.ohem_k = ohem_k if ohem else None
        self.match_level, self.unmatched, self.rescore = match_level, unmatched, rescore
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        def resnet() -> nn.Module:
            return build_resnet_fpn(backbone, backbone_weights, norm=backbone_norm, trainable_layers=trainable_layers,
                                    fpn_channels=fpn_channels, width=backbone_width)

        if fcn_features == "res5":
            trunk = resnet().body  # the ResNet of the ResNet-FPN (its weights loaded); the FPN is dropped
            dilate_resnet(trunk, output_stride)
            features: nn.Module = Res5(trunk)
        else:
            features = PyramidSum(resnet())
        self.segmentation = SegmentationFCN(features, num_classes, pyramid_pooling=pyramid_pooling,
                                            head_channels=head_channels)
        self.crf = InstanceCRF(iters=crf_iters, normalize=normalize, box_term=box_term, global_term=global_term,
                               pairwise=pairwise, app_max_keys=app_max_keys, weight_scale=crf_weight_scale)

        self.detector: nn.Module | None = None
        self.train_detector = False
        if detections == "detector":
            if detector_checkpoint is not None:
                from ..engine.checkpoint import load_model

                loaded, _ = load_model(detector_checkpoint, device="cpu")
                if not isinstance(loaded, TopDownParser):
                    raise ValueError(f"detector_checkpoint {detector_checkpoint} holds a {type(loaded).__name__}, "
                                     "not an hparse top-down model with a Faster R-CNN base")
                self.detector = loaded.requires_grad_(False).eval()
            else:
                self.detector = PersonDetector(resnet(), **(detector or {}))
                self.train_detector = train_detector
                if not train_detector:
                    self.detector.requires_grad_(False)

    # ------------------------------------------------------------------------------------------ pieces

    @property
    def phase(self) -> str:
        """``"segmentation"`` during the first ``segmentation_steps`` training steps, then ``"instance"``."""
        return "segmentation" if int(self.steps_seen) < self.segmentation_steps else "instance"

    def segment(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """§3.1: per image (P + 1, H, W) part logits. Images of different sizes are zero-padded together."""
        height = max(int(img.shape[-2]) for img in images)
        width = max(int(img.shape[-1]) for img in images)
        batch = images[0].new_zeros(len(images), 3, height, width)
        for b, img in enumerate(images):
            batch[b, :, : img.shape[-2], : img.shape[-1]] = (img[None] - self.mean) / self.std
        logits = self.segmentation(batch)
        return [logits[b, :, : img.shape[-2], : img.shape[-1]] for b, img in enumerate(images)]

    def detect(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Test-time detections of the detector, thresholded and capped, scores squashed when asked."""
        if self.detector is None:
            raise ValueError("this model was built with detections='gt': pass them, model(images, detections=[{'boxes':"
                             " (D, 4), 'scores': (D,)}, ...])")
        was_training = self.detector.training
        self.detector.eval()
        try:
            raw = _detect_with(self.detector, images)
        finally:
            self.detector.train(was_training)
        out = []
        for det, img in zip(raw, images):
            boxes, scores = _valid_detections(det["boxes"], det["scores"], img.shape[-2], img.shape[-1],
                                              self.detection_score_thresh, self.max_detections)
            out.append({"boxes": boxes, "scores": squash_detection_scores(scores) if self.squash_scores else scores})
        return out

    def training_detections(self, targets: list[dict]) -> list[dict[str, torch.Tensor]]:
        """Training "given detections": jittered ground-truth boxes with uniform scores (module docstring)."""
        low, high = self.gt_score_range
        out = []
        for t in targets:
            height, width = t["semantic"].shape[-2:]
            boxes = t["boxes"].float()
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes = jitter_boxes(boxes[keep], int(height), int(width), self.gt_box_jitter)
            scores = low + (high - low) * torch.rand(len(boxes), device=boxes.device)
            out.append({"boxes": boxes, "scores": scores})
        return out

    def instance_log_probs(self, logits: list[torch.Tensor], detections: list[dict],
                           images: list[torch.Tensor]) -> list[torch.Tensor]:
        """§3.2: the Instance CRF's (1 + D·P, H, W) log-probabilities per image, in float32 outside autocast."""
        out = []
        with torch.autocast(images[0].device.type, enabled=False):
            for lg, det, img in zip(logits, detections, images):
                Q = torch.softmax(lg.float(), 0)
                out.append(self.crf(Q, det["boxes"].float(), det["scores"].float(), img.float(), log_probs=True))
        return out

    # ---------------------------------------------------------------------------------------------- forward

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None,
                detections: list[dict] | None = None):
        check_images(images)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the model needs targets: model(images, targets)")
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            return self._losses(images, targets)
        return self._predict(images, detections)

    def _losses(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        phase = self.phase
        self.steps_seen += 1
        losses: dict[str, torch.Tensor] = {}
        if self.train_detector:
            losses.update(self.detector(images, targets))
        frozen = phase == "instance" and self.training_mode == "piecewise"
        if frozen:  # §4.2 piecewise: the segmentation module is fixed while the instance module trains
            self.segmentation.eval()
            with torch.no_grad():
                logits = [lg.detach() for lg in self.segment(images)]
            self.segmentation.train()
        else:
            logits = self.segment(images)
        zero = logits[0].sum() * 0.0
        if phase == "segmentation":
            semantic = [t["semantic"].to(logits[0].device) for t in targets]
            losses["loss_semantic"] = sum(F.cross_entropy(lg[None].float(), s[None], ignore_index=255, reduction="sum")
                                          for lg, s in zip(logits, semantic)) / max(
                sum(int((s != 255).sum()) for s in semantic), 1)
            losses["loss_instance"] = zero + sum(p.sum() * 0.0 for p in self.crf.parameters())
            return losses
        dets = self.training_detections(targets)
        log_probs = self.instance_log_probs(logits, dets, images)
        losses["loss_semantic"] = zero
        losses["loss_instance"] = hungarian_matched_loss(
            log_probs, [t["instances"] for t in targets], [t["semantic"] for t in targets], num_parts=self.num_parts,
            ohem_k=self.ohem_k, level=self.match_level, unmatched=self.unmatched, boxes=[d["boxes"] for d in dets],
            pred_is_log=True)
        return losses

    @torch.no_grad()
    def _predict(self, images: list[torch.Tensor], detections: list[dict] | None) -> list[dict]:
        if detections is None:
            detections = self.detect(images)
        elif len(detections) != len(images):
            raise ValueError(f"got {len(images)} images but {len(detections)} detection sets")
        else:
            detections = [{"boxes": d["boxes"].to(img.device).float(), "scores": d["scores"].to(img.device).float()}
                          for d, img in zip(detections, images)]
        logits = self.segment(images)
        log_probs = self.instance_log_probs(logits, detections, images)
        return [self._prediction(lp.exp(), det, img.shape[-2:]) for lp, det, img in zip(log_probs, detections, images)]

    def _prediction(self, prob: torch.Tensor, det: dict, size) -> dict[str, torch.Tensor]:
        """§3.4: the prediction contract from one image's CRF probabilities."""
        num_det = len(det["boxes"])
        if num_det == 0:
            return empty_prediction(tuple(int(s) for s in size), self.num_classes, prob.device)
        pred = crf_prediction(prob, self.num_parts, det["scores"], det["boxes"], rescore=self.rescore)
        labels = prob.argmax(0)
        # part_scores[i, j]: mean probability of label (i, j) over the pixels that take it (0 where none does).
        flat = prob.reshape(prob.shape[0], -1)
        index = labels.flatten()
        total = torch.zeros(prob.shape[0], device=prob.device).index_add_(0, index, flat.gather(0, index[None])[0])
        count = torch.bincount(index, minlength=prob.shape[0]).float()
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
        part_scores = torch.zeros(num_det, self.num_classes, device=prob.device)
        part_scores[:, 1:] = mean[1:].reshape(num_det, self.num_parts)
        pred["part_scores"] = part_scores
        pred["person_parts"] = pred["person_parts"].to(torch.uint8)
        pred.pop("instances", None)
        return pred
