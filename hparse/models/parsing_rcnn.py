"""Parsing R-CNN (Yang et al., CVPR 2019): Faster R-CNN + FPN with a parsing branch, and its four components.

Each component of the paper is one constructor flag, so each row of the ablation tables is one flag away:

- **PSS**, proposals separation sampling (Sec. 3.1, Table 1): the box branch keeps the FPN scale assignment over
  P2-P5, the parsing branch pools from the finest level P2 only (``pss=True``). ``pss=False`` pools the parsing
  RoIs with the same FPN assignment as the box branch (the "baseline" row); ``pss="p2_only"`` makes both branches
  pool from P2 (the "P2 only" row).
- **ERR**, enlarging RoI resolution (Sec. 3.2, Table 2): parsing RoIAlign ``roi_size`` x ``roi_size`` (14 baseline,
  32 with ERR, 64 also reported), and a parsing RoI batch decoupled from the detection sample: at most
  ``parsing_batch`` (32, Sec. 4.1: "32 sampled RoIs for parsing branch") positives per image, drawn at random from
  the box branch's 512-RoI sample. The official code samples 16 per image; we follow the paper.
- **GCE**, geometric and context encoding (Sec. 3.3, Table 3): ``gce=True`` (ASPP + non-local), ``"aspp"``,
  ``"nonlocal"``, or ``False`` for the baseline stack of eight 3x3 512-d convolutions.
- **IPBC**, increasing parsing branch capacity (Sec. 3.4, Table 4): four 3x3 512-d convolutions after the GCE
  (``ipbc=True`` / ``"after"``), ``"before"``, ``"both"``, or ``False``.

All flags off (``pss=False, roi_size=14, gce=False, ipbc=False``) is the paper's baseline parsing branch: eight
convolutions, a deconvolution, x2 bilinear upsampling, per-pixel softmax, 56x56 output.

Training (Sec. 4.2): per-pixel softmax cross-entropy on the positive RoIs (ignore 255), weight 2.0 (official code).
Targets: the matched person's part map cropped and nearest-resized on the device (:mod:`hparse.models.targets`).
Horizontal-flip augmentation belongs to the dataset transform (:class:`hparse.data.transforms.RandomHorizontalFlip`
swaps left/right parts); :func:`hparse.engine.train` applies it.

Inference (official code): detections with score >= 0.05 after NMS 0.5, at most 100 per image; a person's score is
its box score; per-RoI softmax probabilities are pasted into the original image (box expanded by (M+2)/M, one-cell
padding) and arg-maxed; the semantic map paints persons with score >= 0.3 in ascending score order.

- **Test-time augmentation** (Table 8, the rows marked †: "multi-scale testing and horizontal flipping"; the official
  code's ``TEST.AUG`` with ``SOFT_AVG``): ``test_flip=True`` adds the horizontally mirrored image, ``test_scales``
  adds the image resized by each factor. The paper does not say how the views are combined; we keep the detections
  of the image as given and average the parsing branch's softmax probabilities of each detected box over the views
  (the box mirrored or scaled into the view; a mirrored view's probabilities mirrored back, left and right parts
  swapped by ``flip_pairs``). Averaging happens on the RoI's own M x M grid, so the views need no resampling of
  label maps. The official code also merges the views' detections; we do not (the boxes, scores and so AP ranking
  are the plain model's). Off by default, as in every table but Table 8.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..ops.roi_align import MultiScaleRoIAlign
from .backbone import FPN_LEVELS, build_resnet_fpn
from .detector import BranchRoIs, TopDownParser
from .heads.parsing_head import GCE_VARIANTS, IPBC_VARIANTS, ParsingHead, ParsingPredictor
from .inference import empty_prediction, paint_semantic, paste_part_probs
from .targets import parsing_loss, parsing_targets

__all__ = ["ParsingRCNN", "PSS_VARIANTS"]

PSS_VARIANTS = (True, False, "p2_only")


class ParsingRCNN(TopDownParser):
    """Parsing R-CNN; see the module docstring for the flags and where each comes from.

    Args:
        num_classes: part labels including background (CIHP 20, MHP v2 59, PASCAL-Person-Part 7).
        backbone: ResNet depth name (``"resnet18"``, ``"resnet50"``, ``"resnet101"``, ...).
        backbone_weights: ``None`` (offline, random init) or torchvision weights such as ``"DEFAULT"``.
        backbone_norm: ``"bn"``, ``"frozen_bn"`` or ``"gn"`` (default depends on the weights, see backbone.py).
        trainable_layers: ResNet stages trained (default 3 pretrained, 5 from scratch).
        backbone_width: the ResNet's base width (64 in the paper; narrower for laptop runs, see backbone.py).
        fpn_channels: width of the FPN levels (paper: 256; narrower only for quick CPU runs such as ``hparse demo``).
        pss: ``True``, ``False`` or ``"p2_only"`` (Sec. 3.1).
        roi_size: parsing RoIAlign side (Sec. 3.2); the output side is ``4 * roi_size``.
        gce: ``True``, ``"aspp"``, ``"nonlocal"`` or ``False`` (Sec. 3.3).
        ipbc: ``True``/``"after"``, ``"before"``, ``"both"`` or ``False`` (Sec. 3.4).
        parsing_batch: parsing RoIs per image in training (Sec. 3.2 / 4.1); ``None`` uses every positive RoI.
        loss_weight: weight of the parsing loss (official code: 2.0).
        semantic_score_thresh: persons painted into the semantic map (official code: 0.3).
        head_channels: width of the baseline / IPBC convolutions (paper: 512). Narrower heads are for quick CPU
            runs and tests only; the paper's widths are the defaults.
        gce_channels: width of the GCE convolutions (paper: 256).
        head_norm: normalisation in the parsing branch: ``None`` (official code) or ``"gn"`` (see parsing_head.py).
        test_flip: average the parsing probabilities with those of the mirrored image (Table 8 †).
        test_scales: further image scale factors whose parsing probabilities are averaged in (Table 8 †), e.g.
            ``(0.75, 1.25)``; the image itself (factor 1) is always a view.
        flip_pairs: the left/right label pairs swapped in a mirrored view; by default those of the hparse label set
            with ``num_classes`` labels (CIHP and SynthCrowd, MHP v2, PASCAL-Person-Part, DensePose).
        **detector: :class:`~hparse.models.detector.TopDownParser` settings (sizes, anchors, RPN, box branch).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "resnet50",
        backbone_weights: str | None = None,
        backbone_norm: str | None = None,
        trainable_layers: int | None = None,
        backbone_width: int = 64,
        fpn_channels: int = 256,
        pss: bool | str = True,
        roi_size: int = 32,
        gce: bool | str = True,
        ipbc: bool | str = True,
        parsing_batch: int | None = 32,
        loss_weight: float = 2.0,
        semantic_score_thresh: float = 0.3,
        head_channels: int = 512,
        gce_channels: int = 256,
        head_norm: str | None = None,
        test_flip: bool = False,
        test_scales: tuple[float, ...] = (),
        flip_pairs: tuple[tuple[int, int], ...] | None = None,
        **detector,
    ):
        if pss not in PSS_VARIANTS:
            raise ValueError(f"pss must be one of {PSS_VARIANTS}, got {pss!r}")
        if gce not in GCE_VARIANTS:
            raise ValueError(f"gce must be one of {list(GCE_VARIANTS)}, got {gce!r}")
        if ipbc not in IPBC_VARIANTS:
            raise ValueError(f"ipbc must be one of {list(IPBC_VARIANTS)}, got {ipbc!r}")
        if not (isinstance(roi_size, int) and roi_size >= 2):
            raise ValueError(f"roi_size must be an int >= 2 (14 baseline, 32 ERR), got {roi_size!r}")
        if parsing_batch is not None and parsing_batch < 1:
            raise ValueError(f"parsing_batch must be >= 1 or None, got {parsing_batch}")
        if "box_featmaps" in detector:
            raise ValueError("ParsingRCNN sets box_featmaps from pss; use pss='p2_only' to pool boxes from P2")
        body = build_resnet_fpn(backbone, backbone_weights, norm=backbone_norm, trainable_layers=trainable_layers,
                                fpn_channels=fpn_channels, width=backbone_width)
        box_featmaps = ("0",) if pss == "p2_only" else FPN_LEVELS
        super().__init__(body, num_classes, box_featmaps=box_featmaps, branch_batch_per_image=parsing_batch,
                         **detector)
        self.pss, self.roi_size, self.gce, self.ipbc = pss, roi_size, gce, ipbc
        self.loss_weight = loss_weight
        self.semantic_score_thresh = semantic_score_thresh
        # PSS: the parsing branch pools from P2 only (a single-level MultiScaleRoIAlign = RoIAlign at stride 4);
        # without PSS it assigns each RoI to a level by its scale, exactly like the box branch.
        parsing_levels = ["0"] if pss else list(FPN_LEVELS)
        self.parsing_roi_pool = MultiScaleRoIAlign(parsing_levels, output_size=roi_size, sampling_ratio=2,
                                                   canonical_scale=self.canonical_scale, aligned=self.roi_aligned)
        self.parsing_head = ParsingHead(body.out_channels, gce=gce, ipbc=ipbc, gce_channels=gce_channels,
                                        conv_channels=head_channels, norm=head_norm)
        self.parsing_predictor = ParsingPredictor(self.parsing_head.out_channels, num_classes)
        self.flip_pairs = flip_pairs
        self.register_buffer("flip_permutation", torch.arange(num_classes), persistent=False)
        self.set_test_views(test_flip, test_scales)

    def set_test_views(self, test_flip: bool = False, test_scales: tuple[float, ...] = ()) -> None:
        """Switch the test-time views (Table 8 †, see the module docstring) of a built or loaded model; checks them
        (a mirrored view needs the left/right pairs of its labels) and sets the flip permutation."""
        if any(not (isinstance(f, (int, float)) and f > 0) for f in test_scales):
            raise ValueError(f"test_scales must be positive scale factors such as (0.75, 1.25), got {test_scales!r}")
        perm = _flip_permutation(self.num_classes, self.flip_pairs, required=bool(test_flip))
        self.flip_permutation = perm.to(self.flip_permutation.device)
        self.test_flip, self.test_scales = bool(test_flip), tuple(float(f) for f in test_scales)

    @property
    def output_size(self) -> int:
        """Side of the parsing logits: deconvolution x2 then bilinear x2 of the RoI side."""
        return 4 * self.roi_size

    def parsing_logits(self, features: OrderedDict, boxes: list[torch.Tensor],
                       image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        """(sum R_i, num_classes, 4S, 4S) part logits of the RoIs ``boxes`` (resized-image pixels, per image)."""
        pooled = self.parsing_roi_pool(features, boxes, image_sizes)  # (R, 256, S, S)
        return self.parsing_predictor(self.parsing_head(pooled))

    def branch_losses(self, features, rois: BranchRoIs, image_sizes, targets):
        logits = self.parsing_logits(features, rois.boxes, image_sizes)
        device = logits.device
        target = parsing_targets(
            [t["semantic"].to(device) for t in targets], [t["instances"].to(device) for t in targets],
            rois.original_boxes(), rois.person_ids, self.output_size,
        )
        return {"loss_parsing": parsing_loss(logits, target, self.loss_weight)}

    @torch.no_grad()
    def branch_predict(self, features, detections, image_sizes, original_sizes, image_tensors=None):
        boxes = [d["boxes"] for d in detections]
        device = features["0"].device
        if sum(len(b) for b in boxes) == 0:
            return [empty_prediction(size, device=device) for size in original_sizes]
        probs = self.parsing_probs(features, boxes, image_sizes, image_tensors)
        with torch.autocast(device.type, enabled=False):  # paste and argmax in float32 under mixed precision
            return [self.paste(det, p, size, original)
                    for det, p, size, original in zip(detections, probs.split([len(b) for b in boxes]), image_sizes,
                                                       original_sizes)]

    @torch.no_grad()
    def parsing_probs(self, features: OrderedDict, boxes: list[torch.Tensor], image_sizes: list[tuple[int, int]],
                      image_tensors: torch.Tensor | None = None) -> torch.Tensor:
        """(sum R_i, num_classes, 4S, 4S) float32 part probabilities of ``boxes``, averaged over the test-time views
        (``test_flip``, ``test_scales``; see the module docstring) when there are any.

        ``image_tensors`` is the padded batch ``features`` came from; boxes are mirrored across its full (padded)
        width, which is where the mirrored features' columns map back to."""
        probs = F.softmax(self.parsing_logits(features, boxes, image_sizes).float(), dim=1)
        if not (self.test_flip or self.test_scales):
            return probs
        if image_tensors is None:
            raise ValueError("test-time augmentation (test_flip / test_scales) needs the image batch: call the model "
                             "on images, or pass image_tensors")
        views = 1
        for factor in (1.0, *self.test_scales):
            if factor == 1.0:
                tensors, scaled, sizes, view = image_tensors, boxes, image_sizes, features
            else:
                tensors = F.interpolate(image_tensors, scale_factor=factor, mode="bilinear", align_corners=False)
                scaled = [b * factor for b in boxes]
                sizes = [(round(h * factor), round(w * factor)) for h, w in image_sizes]
                view = self.backbone(tensors)
                probs = probs + F.softmax(self.parsing_logits(view, scaled, sizes).float(), dim=1)
                views += 1
            if self.test_flip:
                width = tensors.shape[-1]
                mirrored = [torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1) for b in scaled]
                logits = self.parsing_logits(self.backbone(tensors.flip(-1)), mirrored, sizes)
                probs = probs + F.softmax(logits.float(), dim=1).flip(-1)[:, self.flip_permutation]
                views += 1
        return probs / views

    def paste(self, detection: dict, probs: torch.Tensor, image_size: tuple[int, int],
              original_size: tuple[int, int]) -> dict:
        """One image's prediction-contract dict from its detections and their (N, C, M, M) part probabilities."""
        person_boxes = self.to_original(detection["boxes"], image_size, original_size).float()
        scores = detection["scores"].float()
        person_parts = paste_part_probs(probs, person_boxes, original_size)
        return {
            "semantic": paint_semantic(person_parts, scores, self.semantic_score_thresh),
            "person_parts": person_parts,
            "person_scores": scores,
            "person_boxes": person_boxes,
        }


def _flip_permutation(num_classes: int, flip_pairs, required: bool) -> torch.Tensor:
    """Channel ``c`` of a mirrored view holds the original's ``perm[c]`` (left and right swapped)."""
    from ..data.labels import LABEL_SETS
    from ..data.labels import _flip_permutation as permutation

    if flip_pairs is None:
        known = [labels for labels in LABEL_SETS.values() if labels.num_classes == num_classes]
        if not known and required:
            raise ValueError(f"test_flip needs the left/right label pairs: no hparse label set has {num_classes} "
                             "labels; pass flip_pairs=((left, right), ...), or () if no label has a side")
        flip_pairs = known[0].flip_pairs if known else ()
    for a, b in flip_pairs:
        if not (0 < a < num_classes and 0 < b < num_classes):
            raise ValueError(f"flip pair ({a}, {b}) is outside the part labels 1..{num_classes - 1}")
    return torch.tensor(permutation(num_classes, tuple(flip_pairs)), dtype=torch.long)
