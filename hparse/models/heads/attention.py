"""Heads of the RoI attention framework (Qin et al., BMVC 2019, Sec. 3.1 "Attention Module", Sec. 3.2, Table 5).

Three pieces, each a module that maps RoI features to logits, with the attention targets and loss beside them:

- :class:`MaxFusedRoIAlign`: "to obtain features from all levels of pyramid features, we apply RoI Align to the
  features and fuse them with max operation in the parsing branch like [PANet]" (Sec. 3.2). One ``roi_align`` per FPN
  level, all RoIs at once, and an element-wise maximum over the levels.
- :class:`AttentionHead`: the attention map generator. RoIAlign 14x14, "four convolution layers ... kernel size 3x3
  and 1 padding" (Sec. 3.2), then the output is upsampled by 2 to a 28x28 foreground map, trained with binary
  cross-entropy against the RoI's person mask resized to 28x28 with nearest interpolation (Eq. 1, term ``La``).
- :class:`AttentionParsingHead`: the parsing branch. RoIAlign 28x28, four 3x3 convolutions each followed by group
  normalisation (Sec. 3.2), the attention map fused in after conv3 or conv4 (:class:`AttentionFusion`, Table 5),
  then :class:`UpsamplePredictor` upsamples by 2 to 56x56 part logits.

Table 5 names a fusion ``<op>_after_conv<k>[_<modifier>]`` ("we use conv3 and conv4 to represent the third layer and
four layer after RoI Align ... between conv3 layer and conv4 layer, denoted as 'after_conv3' or between conv4 and
upsample layer, denoted as 'after_conv4'. For feature fusion types, we compare dot and concatenate"). The paper does
not define the two modifiers; our reading, written down here and in :class:`AttentionFusion`:

- ``dot``: multiplicative fusion, the attention probability map (R, 1, S, S) scales every channel of the feature;
  ``_sum`` adds the input back (``x + x * a = x (1 + a)``), a residual attention that can emphasise the person
  without erasing the features elsewhere in the box. Without ``_sum`` it is the gate ``x * a``.
- ``concat``: the probability map is appended as one extra channel, "the parsing branch receives additional features
  of the human mask" (Sec. 3.1). ``_trans`` adds a *transition layer* after the concatenation (DenseNet's name for a
  layer that follows a concatenation): a 1x1 convolution with group normalisation and ReLU that maps the C + 1
  channels back to C, so the mask is mixed into every channel before the upsampling layer. (Another reading of
  "trans" is "after the transposed convolution", i.e. concatenating at 56x56 after the upsampling layer; we take the
  reading that keeps every Table 5 variant between conv3 and the upsampling layer, as the text describes them.)

Choices where the paper is silent: the attention map is the sigmoid probability of the attention logits, fused with
its gradient (the parsing loss also trains the attention branch; the whole model is "trained in an end-to-end
fashion", Sec. 3.1); the x2 upsampling is Mask R-CNN's (a 2x2 stride-2 transposed convolution + ReLU, then a 1x1
convolution to the outputs), the paper's framework being Faster/Mask R-CNN; the attention convolutions have no
normalisation ("we add group normalization to each convolution layer in the parsing branch" only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...ops.roi_align import roi_align
from ..targets import sample_label_maps
from .gce import init_conv

__all__ = [
    "ATTENTION_VARIANTS",
    "FusionSpec",
    "parse_attention",
    "MaxFusedRoIAlign",
    "AttentionHead",
    "AttentionFusion",
    "AttentionParsingHead",
    "UpsamplePredictor",
    "attention_targets",
    "attention_loss",
]

#: The rows of Table 5 (and ``None``, "Ours w/o attention" of Table 1), best last as in the paper.
ATTENTION_VARIANTS = (None, "dot_after_conv3_sum", "dot_after_conv4_sum", "concat_after_conv4_trans",
                      "concat_after_conv4")

_NAME = re.compile(r"^(?P<op>concat|dot)_after_conv(?P<after>\d+)(?:_(?P<modifier>trans|sum))?$")
_MODIFIERS = {"concat": (None, "trans"), "dot": (None, "sum")}


@dataclass(frozen=True)
class FusionSpec:
    """A parsed attention fusion name (Table 5).

    Attributes:
        name: the name, e.g. ``"concat_after_conv4"``.
        op: ``"concat"`` or ``"dot"``.
        after: the parsing convolution (1-based) whose output is fused; ``after == depth`` is "between conv4 and
            the upsample layer".
        modifier: ``"trans"`` (concat + transition layer), ``"sum"`` (dot + residual) or ``None``.
    """

    name: str
    op: str
    after: int
    modifier: str | None


def parse_attention(name: str | None, depth: int = 4) -> FusionSpec | None:
    """Parse a Table 5 fusion name ``<concat|dot>_after_conv<k>[_trans|_sum]``; ``None`` is "w/o attention".

    The paper's four rows are :data:`ATTENTION_VARIANTS`; the grammar also accepts the other positions and the
    plain ``dot`` / ``concat`` forms, so neighbouring ablations are one string away.

    Raises:
        ValueError: an unknown name, a position outside ``1..depth``, or ``trans`` with ``dot`` / ``sum`` with
            ``concat``.
    """
    if name is None:
        return None
    match = _NAME.match(str(name))
    if match is None:
        raise ValueError(f"attention must be None or '<concat|dot>_after_conv<k>[_trans|_sum]' such as "
                         f"{', '.join(repr(v) for v in ATTENTION_VARIANTS[1:])}; got {name!r}")
    op, after, modifier = match["op"], int(match["after"]), match["modifier"]
    if not 1 <= after <= depth:
        raise ValueError(f"attention {name!r}: the parsing branch has convolutions conv1..conv{depth}, "
                         f"so 'after_conv{after}' does not exist")
    if modifier not in _MODIFIERS[op]:
        raise ValueError(f"attention {name!r}: '_{modifier}' goes with "
                         f"{'concat' if modifier == 'trans' else 'dot'}, not {op}")
    return FusionSpec(str(name), op, after, modifier)


def _groups(channels: int, groups: int) -> int:
    """GroupNorm groups for ``channels``: ``groups`` (32, Wu and He) when it divides them, else the largest divisor."""
    return math.gcd(channels, groups)


# ------------------------------------------------------------------------------------------------ RoI pooling


class MaxFusedRoIAlign(nn.Module):
    """RoIAlign on every FPN level, fused by element-wise max (Sec. 3.2, PANet's adaptive feature pooling).

    Each RoI is pooled from *all* levels P2-P5 instead of the one level FPN assigns by its scale; the maximum keeps, at
    each cell and channel, the strongest response of any level, so small and large people alike see fine and coarse
    features. Level scales are inferred from the feature and image sizes as torchvision's ``MultiScaleRoIAlign`` does.

    Args:
        featmap_names: FPN levels to pool from.
        output_size: S, the pooled side (28 for parsing, 14 for attention).
        sampling_ratio: RoIAlign sampling points per bin side (2, as torchvision's heads).

    Shape:
        ``forward(features, boxes, image_sizes)``: ``boxes`` per image (R_i, 4) xyxy in the (resized) image's pixels
        -> (sum R_i, C, S, S).
    """

    def __init__(self, featmap_names: tuple[str, ...] | list[str], output_size: int, sampling_ratio: int = 2,
                 aligned: bool = True):
        super().__init__()
        self.aligned = aligned
        self.featmap_names = list(featmap_names)
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_sizes: list[tuple[int, int]]) -> torch.Tensor:
        missing = [name for name in self.featmap_names if name not in features]
        if missing:
            raise KeyError(f"MaxFusedRoIAlign: feature levels {missing} missing (have {list(features)})")
        height = max(size[0] for size in image_sizes)
        fused = None
        for name in self.featmap_names:
            level = features[name]
            # A level of stride s has about height / s rows; the scale is that ratio rounded to a power of two.
            scale = 2.0 ** round(math.log2(level.shape[-2] / height))
            pooled = roi_align(level, boxes, self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=self.aligned)
            fused = pooled if fused is None else torch.maximum(fused, pooled)
        return fused


# ----------------------------------------------------------------------------------------------------- heads


class UpsamplePredictor(nn.Module):
    """x2 upsampling and the output layer: 2x2 stride-2 transposed conv + ReLU, then a 1x1 conv (Mask R-CNN).

    Sec. 3.2: "we upsample the network output by 2" (14 -> 28 for attention, 28 -> 56 for parsing).

    Args:
        in_channels: channels of the input feature.
        channels: channels of the upsampled feature.
        out_channels: logits (part classes, or 1 foreground logit).
        logits_std: initial standard deviation of the 1x1 logits weights; ``None`` is ``1 / sqrt(channels)``
            (unit-variance logits for unit-variance features, as after the parsing branch's group norm).

    Shape:
        (R, in_channels, S, S) -> (R, out_channels, 2S, 2S).
    """

    def __init__(self, in_channels: int, channels: int, out_channels: int, logits_std: float | None = None):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, out_channels, 1)
        init_conv(self)
        nn.init.normal_(self.logits.weight, std=channels ** -0.5 if logits_std is None else logits_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.upsample(x)))


class AttentionHead(nn.Module):
    """The attention map generator (Sec. 3.1, Fig. 2): four 3x3 convs + ReLU, x2 upsampling, one foreground logit.

    Args:
        in_channels: pooled feature channels (256 from the FPN).
        channels: width of the convolutions (256; narrower only for quick CPU runs).
        depth: number of convolutions ("4 in all branches", Sec. 3.2).

    Shape:
        (R, in_channels, 14, 14) -> (R, 1, 28, 28) foreground logits.
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        init_conv(self.convs)
        # The attention convolutions are unnormalised, so their features can be large: a small initial logit keeps
        # the first foreground probabilities near 0.5 (BCE near log 2) instead of confidently wrong.
        self.predictor = UpsamplePredictor(channels if depth else in_channels, channels, 1, logits_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.convs(x))


class AttentionFusion(nn.Module):
    """Fuse the attention probability map into a parsing feature (Table 5; our reading of the names in the docstring).

    - ``dot``: ``x * a``; ``dot ... _sum``: ``x + x * a``.
    - ``concat``: ``[x, a]`` (C + 1 channels); ``concat ... _trans``: ``[x, a]`` then a transition layer
      (1x1 conv C + 1 -> C, group norm, ReLU).

    A map of another size than the feature is resized bilinearly (probabilities, not labels, so interpolation is
    safe); with the paper's sizes both are 28x28 and nothing is resized.

    Args:
        spec: the parsed fusion.
        channels: C, channels of the feature being fused.
        gn_groups: group-norm groups of the transition layer (``None``: no normalisation).

    Shape:
        ``forward(x: (R, C, S, S), a: (R, 1, S', S'))`` -> (R, out_channels, S, S).
    """

    def __init__(self, spec: FusionSpec, channels: int, gn_groups: int | None = 32):
        super().__init__()
        self.spec = spec
        self.transition = None
        self.out_channels = channels + 1 if spec.op == "concat" else channels
        if spec.modifier == "trans":
            norm = nn.GroupNorm(_groups(channels, gn_groups), channels) if gn_groups else nn.Identity()
            self.transition = nn.Sequential(nn.Conv2d(channels + 1, channels, 1, bias=gn_groups is None), norm,
                                            nn.ReLU(inplace=True))
            init_conv(self.transition)
            self.out_channels = channels

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        if attention.shape[0] != x.shape[0] or attention.shape[1] != 1:
            raise ValueError(f"AttentionFusion({self.spec.name}): attention must be (R, 1, S, S) for a feature of "
                             f"{x.shape[0]} RoIs, got {tuple(attention.shape)}")
        if attention.shape[-2:] != x.shape[-2:]:
            attention = F.interpolate(attention, size=x.shape[-2:], mode="bilinear", align_corners=False)
        attention = attention.to(x.dtype)
        if self.spec.op == "dot":
            gated = x * attention  # (R, C, S, S): one map scales every channel
            return x + gated if self.spec.modifier == "sum" else gated
        fused = torch.cat((x, attention), dim=1)  # (R, C + 1, S, S)
        return self.transition(fused) if self.transition is not None else fused


class AttentionParsingHead(nn.Module):
    """The parsing branch body: ``depth`` x (3x3 conv, GroupNorm, ReLU) with the attention fused after conv ``k``.

    Args:
        in_channels: pooled feature channels (256).
        channels: width of the convolutions (256).
        depth: number of convolutions (4, Sec. 3.2).
        fusion: the parsed attention fusion, or ``None`` (w/o attention).
        group_norm: "group normalization to each convolution layer in the parsing branch" (Sec. 3.2); ``False``
            leaves the convolutions unnormalised (with biases).
        gn_groups: groups per GroupNorm (32; fewer when they do not divide ``channels``).

    Shape:
        ``forward(x: (R, in_channels, S, S), attention: (R, 1, S, S) | None)`` -> (R, out_channels, S, S).
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, depth: int = 4, *,
                 fusion: FusionSpec | None = None, group_norm: bool = True, gn_groups: int = 32):
        super().__init__()
        if fusion is not None and not 1 <= fusion.after <= depth:
            raise ValueError(f"attention {fusion.name!r} fuses after conv{fusion.after}, but the parsing branch "
                             f"has {depth} convolutions")
        self.fusion_spec = fusion
        self.convs = nn.ModuleList()
        self.fusion = None
        width = in_channels
        for i in range(1, depth + 1):
            norm = nn.GroupNorm(_groups(channels, gn_groups), channels) if group_norm else nn.Identity()
            self.convs.append(nn.Sequential(nn.Conv2d(width, channels, 3, padding=1, bias=not group_norm), norm,
                                            nn.ReLU(inplace=True)))
            width = channels
            if fusion is not None and fusion.after == i:
                self.fusion = AttentionFusion(fusion, channels, gn_groups if group_norm else None)
                width = self.fusion.out_channels
        init_conv(self.convs)
        self.out_channels = width

    def forward(self, x: torch.Tensor, attention: torch.Tensor | None = None) -> torch.Tensor:
        if (self.fusion is None) != (attention is None):
            raise ValueError("AttentionParsingHead: pass an attention map exactly when the head has a fusion "
                             f"(fusion: {self.fusion_spec.name if self.fusion_spec else None}, "
                             f"attention given: {attention is not None})")
        for i, conv in enumerate(self.convs, start=1):
            x = conv(x)
            if self.fusion is not None and self.fusion_spec.after == i:
                x = self.fusion(x, attention)
        return x


# -------------------------------------------------------------------------------------------- targets, loss


def attention_targets(instances: list[torch.Tensor], boxes: list[torch.Tensor], person_ids: list[torch.Tensor],
                      size: int) -> torch.Tensor:
    """Foreground target of each RoI: its matched person's mask ``instances == k``, nearest-resized to ``size``.

    Sec. 3.2: "the ground truth of each instance is resized to 28 x 28 for the attention map ... via the nearest
    interpolated operation". Pixels of other people inside the box are background: suppressing them is the point of
    the attention branch. Uses the shared on-device nearest crop (:func:`hparse.models.targets.sample_label_maps`).

    Args:
        instances: per image, int64 (H_i, W_i) person ids (0 background).
        boxes: per image, (R_i, 4) RoIs in that image's pixel coordinates.
        person_ids: per image, int64 (R_i,) 1-based person id each RoI is matched to.
        size: side of the target (28).

    Returns:
        float32 (R, size, size) with 1 on the matched person, 0 elsewhere.
    """
    if len(instances) != len(boxes) or len(boxes) != len(person_ids):
        raise ValueError(f"attention_targets got {len(instances)} instance maps, {len(boxes)} box lists and "
                         f"{len(person_ids)} id lists; they must be one per image")
    for index, (b, p) in enumerate(zip(boxes, person_ids)):
        if len(b) != len(p):
            raise ValueError(f"attention_targets: image {index} has {len(b)} RoIs but {len(p)} person ids")
    sampled = sample_label_maps([i[None] for i in instances], boxes, size)[:, 0]  # (R, S, S) person ids
    ids = torch.cat([p.to(sampled.device) for p in person_ids]) if person_ids else sampled.new_zeros(0)
    return (sampled == ids.view(-1, 1, 1)).float()


def attention_loss(logits: torch.Tensor, targets: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """``La`` of Eq. 1: binary cross-entropy of the foreground logits, mean over the pixels of all positive RoIs.

    With no RoI (images without people) the loss is ``0 * logits.sum()``: zero, yet connected to every parameter of
    the branch (as the parsing loss), so distributed training sees a gradient for each parameter.

    Args:
        logits: (R, 1, S, S) attention logits.
        targets: (R, S, S) person masks in {0, 1}.
        weight: loss weight (1 in Eq. 1).

    Returns:
        scalar loss.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0
    if logits.shape[1] != 1 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"attention_loss: logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}")
    return weight * F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())
