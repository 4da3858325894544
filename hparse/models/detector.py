"""The shared top-down base: Faster R-CNN with FPN for one class (person), assembled from torchvision.

Every top-down hparse method (Parsing R-CNN; the RoI-attention framework) is "detect people, then parse each
detected RoI". :class:`TopDownParser` owns the detection half and hands RoIs to a method-specific parsing branch:

``images -> DetectionTransform (normalise, resize, batch) -> ResNet-FPN -> RPN -> box branch``

- training: the box branch samples 512 RoIs per image (25 % positive, IoU 0.5) and computes its losses; its
  *positive* RoIs and the person each is matched to are handed to :meth:`TopDownParser.branch_losses`
  (after :meth:`TopDownParser.sample_branch_rois` optionally subsamples them, Parsing R-CNN's decoupled RoI batch).
- inference: the box branch decodes, thresholds (score 0.05), runs NMS (0.5) and keeps at most 100 detections per
  image; :meth:`TopDownParser.branch_predict` parses them and returns prediction-contract dicts at the original
  image resolution.

Nothing torchvision provides is re-implemented: ``AnchorGenerator``, ``RPNHead``, ``RegionProposalNetwork``,
``MultiScaleRoIAlign``, ``TwoMLPHead``, ``FastRCNNPredictor``, ``RoIHeads`` (sampling, box coding, NMS) are used as
they are. The one exception is the RoIAlign op itself on a CPU during training: every RoI pooler is
:class:`hparse.ops.roi_align.MultiScaleRoIAlign`, torchvision's class over the same op with a sparse-matrix backward
that is several times faster than torchvision's serial CPU kernel (same results; CUDA runs torchvision's kernel).
Two small subclasses adapt them: :class:`DetectionTransform` (separate train scales and test scale, or no
resizing at all) and :class:`BoxRoIHeads` (returns the positive RoIs with their matches instead of running
torchvision's mask branch). Label maps never pass through the transform: parsing targets are sampled from the
original-resolution maps (see :mod:`hparse.models.targets`), with RoIs mapped back to original pixel coordinates.

Defaults are torchvision's / Mask R-CNN's, which the official Parsing R-CNN configs also use (anchors 32-512 on
strides 4-64, RPN NMS 0.7, 2000/1000 proposals after NMS in train/test, box RoIAlign 7x7 with FPN level assignment,
two 1024-d FC layers). Images are normalised with ImageNet statistics (torchvision's weights; the official code uses
Caffe BGR means).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..ops.roi_align import MultiScaleRoIAlign
from .backbone import FPN_LEVELS
from .inputs import check_images

__all__ = ["DetectionTransform", "BoxRoIHeads", "BranchRoIs", "TopDownParser", "PERSON", "scaled_anchor_sizes"]

PERSON = 1  # the one foreground class of the detector (0 = background)


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-resize-batch transform with separate training scales and test scale.

    Training picks the short side uniformly from ``train_sizes`` (torch RNG, so seeding makes it reproducible);
    evaluation uses ``test_size``; the long side is capped at ``max_size``. A size of ``None`` keeps the input size
    (useful for small synthetic images). Parsing R-CNN trains on short sides (512, 640, 704, 768, 800, 864) and
    tests at 800, long side at most 1333 (official config; the paper says "randomly sampled from [512, 864]").
    """

    def __init__(self, train_sizes: tuple[int, ...] | int | None, test_size: int | None, max_size: int | None,
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, size_divisible: int = 32):
        if isinstance(train_sizes, int):
            train_sizes = (train_sizes,)
        super().__init__(min_size=train_sizes or (0,), max_size=max_size or 0, image_mean=list(image_mean),
                         image_std=list(image_std), size_divisible=size_divisible)
        self.train_sizes = tuple(train_sizes) if train_sizes else None
        self.test_size = test_size
        self.max_size_limit = max_size

    def resize(self, image: torch.Tensor, target: dict | None = None):
        sizes = self.train_sizes if self.training else ((self.test_size,) if self.test_size else None)
        height, width = image.shape[-2:]
        scale = 1.0
        if sizes is not None:
            size = self.torch_choice(list(sizes)) if len(sizes) > 1 else sizes[0]
            scale = size / min(height, width)
        if self.max_size_limit:
            scale = min(scale, self.max_size_limit / max(height, width))
        if scale != 1.0:
            image = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                                  align_corners=False)[0]
            if target is not None:
                target["boxes"] = resize_boxes(target["boxes"], [height, width], list(image.shape[-2:]))
        return image, target


class BoxRoIHeads(RoIHeads):
    """torchvision's box branch; in training it also returns the positive RoIs and the GT index each matches.

    ``forward`` returns ``(positives, losses)`` in training, with ``positives = (boxes, matched)``: per image the
    (P_i, 4) positive RoIs of the 512-RoI sample and the (P_i,) index of the ground-truth box each is matched to
    (IoU >= 0.5; ground-truth boxes are added to the proposals, so every person has at least one positive).
    In evaluation it returns ``(detections, {})`` with ``detections`` a list of ``{"boxes", "scores"}``.
    """

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits.float(), box_regression.float(), labels,
                                                      regression_targets)
            positive = [lab > 0 for lab in labels]
            boxes = [p[m].detach() for p, m in zip(proposals, positive)]
            matched = [i[m] for i, m in zip(matched_idxs, positive)]
            return (boxes, matched), {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        boxes, scores, _ = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "scores": s} for b, s in zip(boxes, scores)], {}


@dataclass
class BranchRoIs:
    """RoIs handed to a parsing branch in training, per image.

    Attributes:
        boxes: (R_i, 4) RoIs in the transformed (resized) image's pixels, where the features live.
        person_ids: int64 (R_i,) 1-based id of the matched person in the target's ``instances`` map.
        scales: (2,) per image, original / resized size as (x, y): multiply boxes by it to reach original pixels.
    """

    boxes: list[torch.Tensor]
    person_ids: list[torch.Tensor]
    scales: list[torch.Tensor]

    def original_boxes(self) -> list[torch.Tensor]:
        """RoIs in the original image's pixel coordinates (where the label maps live)."""
        return [b * s.repeat(2) for b, s in zip(self.boxes, self.scales)]

    @property
    def num_rois(self) -> int:
        return sum(len(b) for b in self.boxes)


class TopDownParser(nn.Module, ABC):
    """Faster R-CNN (FPN, one class) + a method-specific parsing branch; torchvision's calling convention.

    ``model(images, targets)`` in training mode returns a dict of scalar losses (RPN, box, and the branch's);
    ``model(images)`` in eval mode returns one prediction-contract dict per image (DESIGN.md).

    Subclasses implement :meth:`branch_losses` and :meth:`branch_predict`; they may override
    :meth:`sample_branch_rois`.

    Args:
        backbone: module returning an ``OrderedDict`` of FPN levels ``"0".."3"`` (+ ``"pool"``), ``out_channels``.
        num_classes: part labels including background (CIHP 20).
        train_sizes, test_size, max_size: see :class:`DetectionTransform`.
        anchor_sizes: one anchor size per FPN level P2-P6, aspect ratios (0.5, 1, 2).
        rpn_*: RPN settings (torchvision / Mask R-CNN defaults).
        box_featmaps: FPN levels the box branch pools from (default P2-P5 with FPN level assignment).
        box_batch_size_per_image, box_positive_fraction, box_fg_iou_thresh, box_bg_iou_thresh: RoI sampling of the
            box branch (512, 0.25, 0.5, 0.5).
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference (0.05, 0.5, 100).
        box_representation_size: width of the box branch's two FC layers (1024; smaller only for quick CPU runs).
        canonical_scale: FPN level assignment ``k = floor(4 + log2(sqrt(wh) / canonical_scale))`` (FPN Eq. 1: 224
            for ~800-pixel images); scale it with the image size so small images keep the same level statistics.
        branch_batch_per_image: RoIs per image handed to the branch in training (``None`` = all positives).
        roi_aligned: every RoI pooler samples feature cells at their centres (``aligned=True``, Detectron2's
            ROIAlignV2), the convention of the label crops (:mod:`hparse.models.targets`) and of the paste
            (:func:`hparse.models.inference.paste_part_probs`). ``False`` is torchvision's default, half a feature
            cell off: with perfect stride-4 features of SynthCrowd's 192-pixel people it caps the part mIoU of the
            RoIs at 0.40 against 0.64 aligned (small people make the half cell large).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        train_sizes: tuple[int, ...] | int | None = (512, 640, 704, 768, 800, 864),
        test_size: int | None = 800,
        max_size: int | None = 1333,
        anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        box_featmaps: tuple[str, ...] = FPN_LEVELS,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_representation_size: int = 1024,
        canonical_scale: int = 224,
        branch_batch_per_image: int | None = None,
        roi_aligned: bool = True,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts labels including background and must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.branch_batch_per_image = branch_batch_per_image
        self.channels_last = False  # the trainer sets it on CUDA (the batched input is converted in forward)
        self.transform = DetectionTransform(train_sizes, test_size, max_size)
        self.backbone = backbone
        channels = backbone.out_channels
        anchors = AnchorGenerator(tuple((s,) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(channels, anchors.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
            {"training": rpn_pre_nms_top_n_train, "testing": rpn_pre_nms_top_n_test},
            {"training": rpn_post_nms_top_n_train, "testing": rpn_post_nms_top_n_test},
            rpn_nms_thresh,
        )
        self.canonical_scale = canonical_scale
        self.roi_aligned = roi_aligned
        box_pool = MultiScaleRoIAlign(list(box_featmaps), output_size=7, sampling_ratio=2,
                                      canonical_scale=canonical_scale, aligned=roi_aligned)
        self.roi_heads = BoxRoIHeads(
            box_pool, TwoMLPHead(channels * 7 * 7, box_representation_size),
            FastRCNNPredictor(box_representation_size, 2),
            box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction, None,
            box_score_thresh, box_nms_thresh, box_detections_per_img,
        )

    # --------------------------------------------------------------------------------------- branch interface

    @abstractmethod
    def branch_losses(self, features: OrderedDict, rois: BranchRoIs, image_sizes: list[tuple[int, int]],
                      targets: list[dict]) -> dict[str, torch.Tensor]:
        """Losses of the parsing branch for the training RoIs (``targets`` are the original data-contract dicts)."""

    @abstractmethod
    def branch_predict(self, features: OrderedDict, detections: list[dict], image_sizes: list[tuple[int, int]],
                       original_sizes: list[tuple[int, int]], image_tensors: torch.Tensor | None = None) -> list[dict]:
        """Prediction-contract dicts from the detections (``boxes`` in resized pixels, ``scores``) of each image.

        ``image_tensors`` is the normalised, padded batch the ``features`` were computed from (for test-time
        augmentation, which computes features of other views of it); a branch without it ignores it."""

    def sample_branch_rois(self, boxes: list[torch.Tensor], person_ids: list[torch.Tensor]):
        """Keep at most ``branch_batch_per_image`` random positives per image (all when it is ``None``)."""
        if self.branch_batch_per_image is None:
            return boxes, person_ids
        out_boxes, out_ids = [], []
        for b, p in zip(boxes, person_ids):
            if len(b) > self.branch_batch_per_image:
                keep = torch.randperm(len(b), device=b.device)[: self.branch_batch_per_image]
                b, p = b[keep], p[keep]
            out_boxes.append(b)
            out_ids.append(p)
        return out_boxes, out_ids

    # ----------------------------------------------------------------------------------------------- forward

    def _detection_targets(self, targets: list[dict]) -> tuple[list[dict], list[torch.Tensor]]:
        """Boxes + person labels for torchvision, dropping degenerate boxes; and the 1-based id of each kept box."""
        det_targets, ids = [], []
        for index, t in enumerate(targets):
            if "boxes" not in t or "instances" not in t or "semantic" not in t:
                raise KeyError(f"target {index} must be a data-contract dict with 'boxes', 'semantic' and "
                               f"'instances' (got keys {sorted(t)})")
            boxes = t["boxes"]
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"target {index}: boxes must be (N, 4), got {tuple(boxes.shape)}")
            # A person whose box has no area cannot be detected or parsed (torchvision rejects such boxes).
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            person = torch.arange(1, len(boxes) + 1, device=boxes.device)[keep]
            det_targets.append({"boxes": boxes[keep].float(),
                                "labels": torch.full((int(keep.sum()),), PERSON, dtype=torch.int64,
                                                     device=boxes.device)})
            ids.append(person)
        return det_targets, ids

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Training: ``dict`` of losses. Evaluation: ``list`` of prediction-contract dicts, one per image."""
        check_images(images)  # a list of finite (3, H, W) float images in [0, 1]
        if self.training and targets is None:
            raise ValueError("in training mode the model needs targets: model(images, targets)")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"got {len(images)} images but {len(targets)} targets")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        det_targets, person_ids = self._detection_targets(targets) if self.training else (None, None)
        image_list, det_targets = self.transform(list(images), det_targets)
        tensors = image_list.tensors
        if self.channels_last:
            tensors = tensors.contiguous(memory_format=torch.channels_last)
        features = self.backbone(tensors)
        proposals, rpn_losses = self.rpn(image_list, features, det_targets)
        image_sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
        if not self.training:
            detections, _ = self.roi_heads(features, proposals, image_sizes)
            return self.branch_predict(features, detections, image_sizes, original_sizes, image_tensors=tensors)
        (boxes, matched), box_losses = self.roi_heads(features, proposals, image_sizes, det_targets)
        ids = [p[m] if len(p) else m.new_zeros(0) for p, m in zip(person_ids, matched)]
        boxes, ids = self.sample_branch_rois(boxes, ids)
        scales = [torch.tensor([ow / w, oh / h], device=tensors.device)
                  for (oh, ow), (h, w) in zip(original_sizes, image_sizes)]
        rois = BranchRoIs(boxes, ids, scales)
        branch_losses = self.branch_losses(features, rois, image_sizes, targets)
        return {**rpn_losses, **box_losses, **branch_losses}

    @staticmethod
    def to_original(boxes: torch.Tensor, image_size: tuple[int, int], original_size: tuple[int, int]):
        """Boxes from resized-image pixels to original-image pixels."""
        return resize_boxes(boxes, list(image_size), list(original_size))


def scaled_anchor_sizes(image_size: int, reference: int = 800,
                        sizes: tuple[int, ...] = (32, 64, 128, 256, 512)) -> tuple[int, ...]:
    """Anchor sizes scaled from the reference short side (800 px) to ``image_size`` (rounded, at least 2 px)."""
    return tuple(max(2, round(s * image_size / reference)) for s in sizes)
