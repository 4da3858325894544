"""Heads of the multi-granularity bottom-up parser (Zhou et al., CVPR 2021): decoders, the coarse-to-fine DSPF, and
the keypoint/limb predictors. Heads map features to outputs only; targets and losses are in
:mod:`hparse.models.mg_targets`.

- :class:`LightDecoder` (§3.1, §3.4): F_Seg and F_Pose. "A similar architecture as the decoder in [5]
  (DeepLabv3+), while in each upsampling stage we apply a single 5×5 depthwise-separable convolution": starting at
  the coarsest level, each stage upsamples ×2 (bilinear), concatenates the next finer level (projected by a 1×1
  convolution) and applies one 5×5 depthwise-separable convolution, down to stride 4.
- :class:`DSPFPyramid` (§3.2): the DSPF predicted at every level, coarse (stride 32) to fine (stride 4), with the
  variants of the ablation: ``"single"`` (one prediction at stride 4, from F_Seg's stride-4 features), ``"incremental"``
  (Eq. 2: each level predicts the whole field from its feature, the coarser feature and twice the coarser field) and
  ``"residual"`` (Eq. 3, the paper's: each level predicts a residue added to twice the coarser field). ``warp=True``
  predicts a feature flow per level (Eq. 4, a 3×3 convolution on the concatenated features, as §3.4 says) and moves
  both the coarser feature and the coarser field with it (Eqs. 5-6, :func:`hparse.ops.warp.flow_warp`); ``warp=False``
  upsamples bilinearly (the zero-flow case). The flow layer starts at zero, so a warped model starts as the
  bilinear one. DSPF values are in cells of their level.
- :class:`Predictor`: a 5×5 depthwise-separable convolution then a 1×1 convolution to the outputs (the released
  code's heads).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ...ops.warp import flow_warp

__all__ = ["norm2d", "SepConv", "LightDecoder", "Predictor", "DSPFPyramid", "DSPF_VARIANTS"]

DSPF_VARIANTS = ("single", "incremental", "residual")


def norm2d(kind: str, channels: int) -> nn.Module:
    """``"gn"`` (GroupNorm, up to 32 groups of at least 4 channels) or ``"bn"``."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"decoder norm must be 'gn' or 'bn', got {kind!r}")


class SepConv(nn.Sequential):
    """k×k depthwise + norm + ReLU, then 1×1 pointwise + norm + ReLU (Panoptic-DeepLab's separable convolution)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 5, norm: str = "gn"):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel, padding=kernel // 2, groups=in_channels, bias=False),
            norm2d(norm, in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False), norm2d(norm, out_channels), nn.ReLU(inplace=True),
        )


class LightDecoder(nn.Module):
    """Pyramid (coarsest last) -> stride-4 features of ``channels`` channels, one 5×5 separable conv per stage."""

    def __init__(self, in_channels: int, channels: int, levels: int = 4, norm: str = "gn"):
        super().__init__()
        self.top = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), norm2d(norm, channels),
                                 nn.ReLU(inplace=True))
        lateral = max(channels // 2, 8)
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, lateral, 1, bias=False), norm2d(norm, lateral), nn.ReLU(inplace=True))
            for _ in range(levels - 1))
        self.fuse = nn.ModuleList(SepConv(channels + lateral, channels, 5, norm) for _ in range(levels - 1))

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        x = self.top(pyramid[-1])
        for index in range(len(pyramid) - 2, -1, -1):  # stride 16, 8, 4
            feature = pyramid[index]
            x = flow_warp(x, None, size=tuple(feature.shape[-2:]))
            x = self.fuse[index](torch.cat((x, self.laterals[index](feature)), dim=1))
        return x


class Predictor(nn.Sequential):
    """5×5 separable convolution then 1×1 to ``out_channels`` (bias initialised to ``bias``)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "gn", bias: float = 0.0):
        super().__init__(SepConv(in_channels, in_channels, 5, norm), nn.Conv2d(in_channels, out_channels, 1))
        nn.init.normal_(self[1].weight, std=0.01)
        nn.init.constant_(self[1].bias, bias)


class DSPFPyramid(nn.Module):
    """Coarse-to-fine DSPF (§3.2, Eqs. 2-6); see the module docstring for the variants.

    ``forward(pyramid, seg_features)`` returns ``(fields, flows)``: the DSPF of every supervised level, finest last,
    each (B, 2, h_l, w_l) in cells of its level, and the feature flows (finest last; empty without ``warp``).
    """

    def __init__(self, in_channels: int, channels: int, seg_channels: int, mode: str = "residual", warp: bool = True,
                 levels: int = 4, norm: str = "gn"):
        super().__init__()
        if mode not in DSPF_VARIANTS:
            raise ValueError(f"dspf must be one of {DSPF_VARIANTS}, got {mode!r}")
        if mode == "single" and warp:
            raise ValueError("warp=True needs a coarse-to-fine DSPF (dspf='incremental' or 'residual'); the single "
                             "stride-4 prediction has no coarser level to warp")
        self.mode, self.warp, self.levels = mode, warp, levels
        if mode == "single":
            self.single = Predictor(seg_channels, 2, norm)
            return
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), norm2d(norm, channels),
                          nn.ReLU(inplace=True))
            for _ in range(levels))
        extra = 2 if mode == "incremental" else 0  # Eq. 2 feeds the upsampled coarser field to the predictor
        self.coarsest = Predictor(channels, 2, norm)
        self.refine = nn.ModuleList(Predictor(2 * channels + extra, 2, norm) for _ in range(levels - 1))
        if warp:  # F^Flow (Eq. 4): a 3×3 convolution on concat(X_l, X_{l+1}⇑), zero-initialised
            self.flow = nn.ModuleList(nn.Conv2d(2 * channels, 2, 3, padding=1) for _ in range(levels - 1))
            for conv in self.flow:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, pyramid: list[torch.Tensor], seg_features: torch.Tensor):
        if self.mode == "single":
            return [self.single(seg_features)], []
        feats = [proj(x) for proj, x in zip(self.project, pyramid)]
        field = self.coarsest(feats[-1])
        fields, flows = [field], []
        for index in range(self.levels - 2, -1, -1):
            fine, coarse = feats[index], feats[index + 1]
            size = tuple(fine.shape[-2:])
            flow = None
            if self.warp:
                flow = self.flow[index](torch.cat((fine, flow_warp(coarse, None, size)), dim=1))  # Eq. 4
                flows.append(flow)
            coarse_up = flow_warp(coarse, flow, size)  # Eq. 5, feature warping (bilinear when flow is None)
            field_up = flow_warp(field, flow, size, scale=2.0)  # Eq. 5, DSPF warping, ×2 into finer cells
            if self.mode == "residual":
                field = self.refine[index](torch.cat((fine, coarse_up), dim=1)) + field_up  # Eq. 3
            else:
                field = self.refine[index](torch.cat((fine, coarse_up, field_up), dim=1))  # Eq. 2
            fields.append(field)
        return fields, flows
