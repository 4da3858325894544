"""The top-down unified framework with an RoI attention branch (Qin, Hong, Hung, Tsai, Yang, BMVC 2019).

Sec. 3.1: detect every person, then parse each detected RoI as a *single*-person problem; an attention branch predicts
the foreground of the RoI's own person and feeds it to the parsing branch, so that "the noisy part caused by other
instances or the background within a proposal region can be mitigated". Three branches share one ResNet-FPN:

1. **Detection branch** (Faster R-CNN, from the shared base :class:`~hparse.models.detector.TopDownParser`):
   RPN + box head. Sec. 3.2 sets "the size in RoI Align as 14 x 14 for the detection/attention branch" and "the number
   of convolution layers after RoI Align to 4 in all branches": ``box_head="4conv"`` replaces the base's 7x7 two-FC
   head by RoIAlign 14x14 -> four 3x3 convs -> one FC (torchvision's ``FastRCNNConvFCHead``); ``"2fc"`` keeps the
   base's head. The detection branch keeps FPN's per-RoI level assignment.
2. **Attention branch** (:class:`~hparse.models.heads.attention.AttentionHead`): RoIAlign 14x14 -> four 3x3 convs ->
   x2 -> 28x28 foreground logits, binary cross-entropy against the matched person's mask (``La``).
3. **Parsing branch** (:class:`~hparse.models.heads.attention.AttentionParsingHead`): RoIAlign 28x28 on *all* FPN
   levels fused by element-wise max (``roi_fusion="max"``, Sec. 3.2 "like [PANet]") -> four 3x3 convs with GroupNorm,
   the attention map fused after conv3 or conv4 (``attention=...``, Table 5) -> x2 -> 56x56 part logits, per-pixel
   cross-entropy on the positive RoIs (``Lp``). The attention branch pools the same way as the parsing branch (the
   paper names only the parsing branch; both are RoI segmentation heads, so they share the pooling choice).

Objective, Eq. 1: ``L = Ld + La + alpha Lp`` with ``alpha = 5`` (Sec. 3.2), "the parsing loss is defined only on
positive proposals". ``Ld`` is the detector's four terms (``loss_objectness``, ``loss_rpn_box_reg``,
``loss_classifier``, ``loss_box_reg``); ``La`` is ``loss_attention``; ``alpha Lp`` is ``loss_parsing``. Targets: the
matched person's part map nearest-cropped to 56x56 (ignore 255) and its mask ``instances == k`` nearest-cropped to
28x28 (Sec. 3.2, "via the nearest interpolated operation").

Every component is a constructor flag, so every row of the paper's ablations is one flag away:

- ``attention``: ``"concat_after_conv4"`` (the paper's final choice), ``"concat_after_conv4_trans"``,
  ``"dot_after_conv3_sum"``, ``"dot_after_conv4_sum"`` (Table 5), or ``None`` ("Ours w/o attention", Table 1);
- ``attention_loss_weight``: weight of ``La`` (1 in Eq. 1; 0 trains the attention map through the parsing loss only);
- ``parsing_loss_weight``: ``alpha`` (5);
- ``roi_fusion``: ``"max"`` (all levels, max-fused) or ``"level"`` (FPN level assignment, one level per RoI);
- ``group_norm``: GroupNorm in the parsing branch (on) or none;
- ``box_head``: ``"4conv"`` (14x14, four convs) or ``"2fc"`` (the base's 7x7 two-FC head);
- RoI sizes (``parsing_roi_size=28``, ``attention_roi_size=14``, ``box_roi_size=14``) and ``num_convs=4``.

Training and inference settings of Sec. 3.2 are the defaults: short side 800 (long side at most 1333), 512 RoIs per
image at 1:3 positives to negatives with IoU 0.5, 1000 test proposals and NMS; every positive RoI trains the parsing
and attention branches (``parsing_batch=None``). Inference: detections (score >= 0.05, NMS 0.5, at most 100) are
parsed, their softmax maps pasted into the original image through the shared paste
(:func:`hparse.models.inference.paste_part_probs`), and the semantic map paints persons scored at least
``semantic_score_thresh`` in ascending score order (the paper does not say how it builds its multi-human map; we use
the same rule as our Parsing R-CNN). ``return_masks=True`` also returns each person's pasted attention mask, the
"instance masks" of Fig. 1(c) and Fig. 3(f).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.transform import resize_boxes

from ..ops.roi_align import MultiScaleRoIAlign
from .backbone import FPN_LEVELS, build_resnet_fpn
from .detector import BranchRoIs, TopDownParser
from .heads.attention import (
    ATTENTION_VARIANTS,
    AttentionHead,
    AttentionParsingHead,
    MaxFusedRoIAlign,
    UpsamplePredictor,
    attention_loss,
    attention_targets,
    parse_attention,
)
from .inference import empty_prediction, paint_semantic, paste_part_probs
from .targets import parsing_loss, parsing_targets

__all__ = ["AttentionRCNN", "ATTENTION_VARIANTS", "ROI_FUSIONS", "BOX_HEADS"]

ROI_FUSIONS = ("max", "level")
BOX_HEADS = ("4conv", "2fc")


class AttentionRCNN(TopDownParser):
    """The RoI attention framework; the module docstring maps each flag to the paper.

    Args:
        num_classes: part labels including background (CIHP 20, PASCAL-Person-Part 7).
        backbone: ResNet depth name (the paper: ``"resnet101"``).
        backbone_weights: ``None`` (offline, random init) or torchvision weights such as ``"DEFAULT"``.
        backbone_norm, trainable_layers: see :func:`hparse.models.backbone.build_resnet_fpn`.
        backbone_width: the ResNet's base width (64 in the paper; narrower for laptop runs).
        fpn_channels: width of the FPN levels (256 in the paper).
        attention: a Table 5 fusion name or ``None`` (see :func:`hparse.models.heads.attention.parse_attention`).
        roi_fusion: ``"max"`` (RoIAlign on all FPN levels + max, Sec. 3.2) or ``"level"`` (one level per RoI).
        box_head: ``"4conv"`` (Sec. 3.2) or ``"2fc"`` (the shared base's head).
        parsing_roi_size, attention_roi_size, box_roi_size: RoIAlign sides (28, 14, 14; Sec. 3.2).
        num_convs: convolutions after RoIAlign in every branch (4).
        head_channels: width of the parsing convolutions (256).
        attention_channels: width of the attention convolutions (256).
        box_conv_channels: width of the ``"4conv"`` box convolutions (256).
        group_norm: GroupNorm after each parsing convolution (Sec. 3.2); ``gn_groups`` groups (32).
        attention_loss_weight: weight of ``La`` (Eq. 1: 1).
        parsing_loss_weight: ``alpha`` of Eq. 1 (5).
        parsing_batch: positive RoIs per image for the attention and parsing branches in training (``None``: all,
            as the paper).
        semantic_score_thresh: persons painted into the semantic map.
        return_masks: add ``person_masks`` (bool (N, H, W), attention >= 0.5 pasted) to each prediction.
        **detector: :class:`~hparse.models.detector.TopDownParser` settings. Defaults differing from the base: a
            single training scale of 800 (the paper's; the base trains on Parsing R-CNN's 512-864).

    Narrower widths (``head_channels`` etc.) are for quick CPU runs and tests; the paper's are the defaults.
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
        attention: str | None = "concat_after_conv4",
        roi_fusion: str = "max",
        box_head: str = "4conv",
        parsing_roi_size: int = 28,
        attention_roi_size: int = 14,
        box_roi_size: int = 14,
        num_convs: int = 4,
        head_channels: int = 256,
        attention_channels: int = 256,
        box_conv_channels: int = 256,
        group_norm: bool = True,
        gn_groups: int = 32,
        attention_loss_weight: float = 1.0,
        parsing_loss_weight: float = 5.0,
        parsing_batch: int | None = None,
        semantic_score_thresh: float = 0.3,
        return_masks: bool = False,
        **detector,
    ):
        fusion = parse_attention(attention, num_convs)
        if roi_fusion not in ROI_FUSIONS:
            raise ValueError(f"roi_fusion must be one of {ROI_FUSIONS}, got {roi_fusion!r}")
        if box_head not in BOX_HEADS:
            raise ValueError(f"box_head must be one of {BOX_HEADS}, got {box_head!r}")
        for name, value in (("parsing_roi_size", parsing_roi_size), ("attention_roi_size", attention_roi_size),
                            ("box_roi_size", box_roi_size), ("num_convs", num_convs)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if parsing_batch is not None and parsing_batch < 1:
            raise ValueError(f"parsing_batch must be >= 1 or None, got {parsing_batch}")
        if attention_loss_weight < 0 or parsing_loss_weight <= 0:
            raise ValueError(f"loss weights must be attention >= 0 and parsing > 0, got {attention_loss_weight} and "
                             f"{parsing_loss_weight}")
        detector.setdefault("train_sizes", 800)
        body = build_resnet_fpn(backbone, backbone_weights, norm=backbone_norm, trainable_layers=trainable_layers,
                                fpn_channels=fpn_channels, width=backbone_width)
        super().__init__(body, num_classes, branch_batch_per_image=parsing_batch, **detector)
        channels = body.out_channels
        self.attention, self.fusion = attention, fusion
        self.roi_fusion, self.box_head_kind = roi_fusion, box_head
        self.parsing_roi_size, self.attention_roi_size = parsing_roi_size, attention_roi_size
        self.attention_loss_weight, self.parsing_loss_weight = attention_loss_weight, parsing_loss_weight
        self.semantic_score_thresh, self.return_masks = semantic_score_thresh, return_masks

        # 1. Detection branch: the base's box branch with the paper's 14x14 four-conv head swapped in.
        if box_head == "4conv":
            representation = detector.get("box_representation_size", 1024)
            levels = self.roi_heads.box_roi_pool.featmap_names
            self.roi_heads.box_roi_pool = MultiScaleRoIAlign(levels, output_size=box_roi_size, sampling_ratio=2,
                                                             canonical_scale=self.canonical_scale,
                                                             aligned=self.roi_aligned)
            self.roi_heads.box_head = FastRCNNConvFCHead((channels, box_roi_size, box_roi_size),
                                                         [box_conv_channels] * num_convs, [representation])
            self.roi_heads.box_predictor = FastRCNNPredictor(representation, 2)

        # 2, 3. Attention and parsing branches, each with its own RoIAlign.
        def pool(size: int):
            if roi_fusion == "max":
                return MaxFusedRoIAlign(FPN_LEVELS, size, sampling_ratio=2, aligned=self.roi_aligned)
            return MultiScaleRoIAlign(list(FPN_LEVELS), output_size=size, sampling_ratio=2,
                                      canonical_scale=self.canonical_scale, aligned=self.roi_aligned)

        self.attention_pool = self.attention_head = None
        if fusion is not None:
            self.attention_pool = pool(attention_roi_size)
            self.attention_head = AttentionHead(channels, attention_channels, num_convs)
        self.parsing_pool = pool(parsing_roi_size)
        self.parsing_head = AttentionParsingHead(channels, head_channels, num_convs, fusion=fusion,
                                                 group_norm=group_norm, gn_groups=gn_groups)
        self.parsing_predictor = UpsamplePredictor(self.parsing_head.out_channels, head_channels, num_classes)

    @property
    def output_size(self) -> int:
        """Side of the parsing logits (56): the parsing RoI upsampled by 2."""
        return 2 * self.parsing_roi_size

    @property
    def attention_size(self) -> int:
        """Side of the attention logits (28): the attention RoI upsampled by 2."""
        return 2 * self.attention_roi_size

    # ------------------------------------------------------------------------------------------------ branches

    def branch_logits(self, features: OrderedDict, boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Parsing and attention logits of the RoIs ``boxes`` (per image, (R_i, 4) in resized-image pixels).

        Returns:
            ``(parsing, attention)``: (R, num_classes, 56, 56) part logits and (R, 1, 28, 28) foreground logits
            (``None`` without attention).
        """
        attention_logits, attention_map = None, None
        if self.attention_head is not None:
            pooled = self.attention_pool(features, boxes, image_sizes)  # (R, 256, 14, 14)
            attention_logits = self.attention_head(pooled)  # (R, 1, 28, 28)
            attention_map = attention_logits.sigmoid()  # the foreground probability the parsing branch receives
        pooled = self.parsing_pool(features, boxes, image_sizes)  # (R, 256, 28, 28)
        parsing_logits = self.parsing_predictor(self.parsing_head(pooled, attention_map))  # (R, C, 56, 56)
        return parsing_logits, attention_logits

    def branch_targets(self, rois: BranchRoIs, targets: list[dict], device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Part targets (R, 56, 56) and person-mask targets (R, 28, 28) of the training RoIs (``None`` w/o attention).

        Both come from the original-resolution label maps, sampled with nearest interpolation at the RoIs mapped back
        to original pixels (:mod:`hparse.models.targets`).
        """
        boxes = rois.original_boxes()
        instances = [t["instances"].to(device) for t in targets]
        parts = parsing_targets([t["semantic"].to(device) for t in targets], instances, boxes, rois.person_ids,
                                self.output_size)
        masks = None
        if self.attention_head is not None:
            masks = attention_targets(instances, boxes, rois.person_ids, self.attention_size)
        return parts, masks

    def branch_losses(self, features, rois: BranchRoIs, image_sizes, targets):
        """``La`` (``loss_attention``) and ``alpha Lp`` (``loss_parsing``) of Eq. 1 on the positive RoIs."""
        parsing_logits, attention_logits = self.branch_logits(features, rois.boxes, image_sizes)
        parts, masks = self.branch_targets(rois, targets, parsing_logits.device)
        losses = {"loss_parsing": parsing_loss(parsing_logits, parts, self.parsing_loss_weight)}
        if attention_logits is not None:
            losses["loss_attention"] = attention_loss(attention_logits, masks, self.attention_loss_weight)
        return losses

    @torch.no_grad()
    def branch_predict(self, features, detections, image_sizes, original_sizes, image_tensors=None):
        boxes = [d["boxes"] for d in detections]
        device = features["0"].device
        if sum(len(b) for b in boxes) == 0:
            return [self._empty(size, device) for size in original_sizes]
        parsing_logits, attention_logits = self.branch_logits(features, boxes, image_sizes)
        counts = [len(b) for b in boxes]
        with torch.autocast(device.type, enabled=False):  # paste and argmax in float32 under mixed precision
            probs = F.softmax(parsing_logits.float(), dim=1).split(counts)
            masks = (attention_logits.float().sigmoid().split(counts) if attention_logits is not None
                     else [None] * len(counts))
            return [self._paste(det, p, m, size, original)
                    for det, p, m, size, original in zip(detections, probs, masks, image_sizes, original_sizes)]

    def _empty(self, size: tuple[int, int], device: torch.device) -> dict:
        pred = empty_prediction(size, device=device)
        if self.return_masks:
            pred["person_masks"] = torch.zeros(0, *size, dtype=torch.bool, device=device)
        return pred

    def _paste(self, detection: dict, probs: torch.Tensor, attention: torch.Tensor | None,
               image_size: tuple[int, int], original_size: tuple[int, int]) -> dict:
        """One image's prediction-contract dict from its detections, (N, C, 56, 56) part and (N, 1, 28, 28)
        attention probabilities."""
        person_boxes = self.to_original(detection["boxes"], image_size, original_size).float()
        scores = detection["scores"].float()
        person_parts = paste_part_probs(probs, person_boxes, original_size)
        pred = {
            "semantic": paint_semantic(person_parts, scores, self.semantic_score_thresh),
            "person_parts": person_parts,
            "person_scores": scores,
            "person_boxes": person_boxes,
        }
        if self.return_masks:
            if attention is None:  # w/o attention the person mask is where the parsing map is not background
                pred["person_masks"] = person_parts > 0
            else:  # the attention map as two-class probabilities, through the same paste
                two = torch.cat((1 - attention, attention), dim=1)
                pred["person_masks"] = paste_part_probs(two, person_boxes, original_size).bool()
        return pred

    # ------------------------------------------------------------------------------------------- inspection

    @torch.no_grad()
    def roi_maps(self, images: list[torch.Tensor], boxes: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Attention and parsing maps of given RoIs (for example ground-truth boxes), in evaluation mode.

        Args:
            images: (3, H, W) images.
            boxes: per image, (N_i, 4) xyxy boxes in that image's original pixels.

        Returns:
            Per image ``{"attention": (N_i, 28, 28) foreground probability (absent w/o attention),
            "parsing": (N_i, C, 56, 56) part probabilities, "labels": (N_i, 56, 56) argmax}`` over each box.
        """
        if len(images) != len(boxes):
            raise ValueError(f"roi_maps got {len(images)} images but {len(boxes)} box lists")
        was_training = self.training
        self.eval()
        try:
            original_sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
            image_list, _ = self.transform(list(images))
            features = self.backbone(image_list.tensors)
            sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
            scaled = [resize_boxes(b.to(image_list.tensors.device).float(), list(o), list(s))
                      for b, o, s in zip(boxes, original_sizes, sizes)]
            parsing_logits, attention_logits = self.branch_logits(features, scaled, sizes)
        finally:
            self.train(was_training)
        counts = [len(b) for b in boxes]
        probs = F.softmax(parsing_logits.float(), dim=1)
        out = [{"parsing": p, "labels": p.argmax(1)} for p in probs.split(counts)]
        if attention_logits is not None:
            for record, a in zip(out, attention_logits.float().sigmoid()[:, 0].split(counts)):
                record["attention"] = a
        return out
