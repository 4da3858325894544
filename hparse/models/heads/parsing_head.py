"""The parsing branch of Parsing R-CNN: RoI feature -> part logits (Sec. 3.3, 3.4, 4.2; Tables 3, 4).

The branch is split, as in Sec. 3.4, into three parts: *before* the context module, the context module itself, and
*after* it. The context module is either

- the paper's **baseline** FCN, "a stack of eight 3x3 512-d convolutional layers" (Sec. 4.2), or
- **GCE** (Sec. 3.3): ASPP and/or non-local, see :mod:`hparse.models.heads.gce`.

**IPBC** (increasing parsing branch capacity, Sec. 3.4, Table 4) adds four 3x3 512-d convolutions before and/or after
the context module; the paper keeps "GCE + 4conv" (after). With the baseline FCN in the middle, IPBC adds its
convolutions around that stack in the same way (a combination the paper does not report).

The output layer (:class:`ParsingPredictor`) is "a deconvolution layer and 2x bilinear upscaling" (Sec. 4.2): a
stride-2 4x4 transposed convolution straight to the part classes (official code), then bilinear x2, so an
``S x S`` RoI gives ``4S x 4S`` logits (14 -> 56 baseline, 32 -> 128 with ERR, 64 -> 256). Convolutions are followed
by ReLU without normalisation, as in the official heads (``norm=None``). ``norm="gn"`` puts a GroupNorm between each
convolution of the baseline / IPBC stacks and the ASPP branches and their ReLU: the paper is silent on normalisation
in the branch (the RoI attention paper's parsing branch uses GN). Every recipe uses ``None``: at the laptop width of
64 channels, 32 groups are groups of 2 channels, and the branch learned more slowly with them than without
(``results/cpu/parsing_rcnn/branch_probe_norm.json``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gce import GCE, init_conv

__all__ = ["conv_stack", "norm_layer", "NORMS", "ParsingHead", "ParsingPredictor", "GCE_VARIANTS", "IPBC_VARIANTS"]

# gce flag -> (aspp, nonlocal); False = the baseline FCN (Table 3 rows: baseline, ASPP only, Non-local only, GCE).
GCE_VARIANTS = {False: None, True: (True, True), "aspp": (True, False), "nonlocal": (False, True)}
# ipbc flag -> (4 convs before, 4 convs after) the context module (Table 4 rows).
IPBC_VARIANTS = {False: (0, 0), True: (0, 4), "after": (0, 4), "before": (4, 0), "both": (4, 4)}


NORMS = (None, "gn")


def norm_layer(norm: str | None, channels: int) -> nn.Module:
    """The normalisation after a head convolution: none (official heads) or GroupNorm (32 groups, fewer if narrow)."""
    if norm is None:
        return nn.Identity()
    if norm == "gn":
        groups = max(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and g <= channels // 2 or g == 1)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"head norm must be one of {NORMS}, got {norm!r}")


def conv_stack(in_channels: int, channels: int, depth: int, norm: str | None = None) -> nn.Sequential:
    """``depth`` x (3x3 conv [+ GroupNorm] + ReLU); an empty stack is the identity."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                   norm_layer(norm, channels), nn.ReLU(inplace=True)]
    stack = nn.Sequential(*layers)
    init_conv(stack)
    return stack


class ParsingHead(nn.Module):
    """Parsing branch body: [4conv] -> (GCE | 8conv baseline) -> [4conv].

    Args:
        in_channels: channels of the pooled RoI feature (256 from the FPN).
        gce: ``True`` (ASPP + non-local), ``"aspp"``, ``"nonlocal"``, or ``False`` for the baseline eight-conv FCN.
        ipbc: ``True``/``"after"`` (GCE + 4conv, the paper's choice), ``"before"`` (4conv + GCE), ``"both"``
            (4conv + GCE + 4conv), or ``False``.
        gce_channels: channels of the GCE convolutions (256, Sec. 3.3).
        conv_channels: channels of the baseline and IPBC convolutions (512, "512-d", Sec. 3.4 and 4.2).
        baseline_depth: convolutions of the baseline FCN (8, Sec. 4.2).
        norm: ``None`` (the official heads) or ``"gn"`` (see the module docstring).

    Shape:
        (R, in_channels, S, S) -> (R, out_channels, S, S).
    """

    def __init__(self, in_channels: int = 256, *, gce: bool | str = True, ipbc: bool | str = True,
                 gce_channels: int = 256, conv_channels: int = 512, baseline_depth: int = 8, norm: str | None = None):
        super().__init__()
        if gce not in GCE_VARIANTS:
            raise ValueError(f"gce must be one of {list(GCE_VARIANTS)}, got {gce!r}")
        if ipbc not in IPBC_VARIANTS:
            raise ValueError(f"ipbc must be one of {list(IPBC_VARIANTS)}, got {ipbc!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        before, after = IPBC_VARIANTS[ipbc]
        self.before = conv_stack(in_channels, conv_channels, before, norm)
        width = conv_channels if before else in_channels
        halves = GCE_VARIANTS[gce]
        if halves is None:
            self.context = conv_stack(width, conv_channels, baseline_depth, norm)
            width = conv_channels
        else:
            self.context = GCE(width, gce_channels, aspp=halves[0], nonlocal_=halves[1], norm=norm)
            width = self.context.out_channels
        self.after = conv_stack(width, conv_channels, after, norm)
        self.out_channels = conv_channels if after else width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.context(self.before(x)))


class ParsingPredictor(nn.Module):
    """Deconvolution (x2) to part logits, then bilinear x2 (Sec. 4.2; official ``parsing_output``).

    Shape:
        (R, in_channels, S, S) -> (R, num_classes, 4S, 4S).
    """

    def __init__(self, in_channels: int, num_classes: int, upsample: int = 2):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, num_classes, 4, stride=2, padding=1)
        self.upsample = upsample
        # Small initial logits, so training starts near the uniform-softmax loss log(num_classes) instead of a
        # confident random guess (a He init here starts the cross-entropy several times higher; the paper is silent).
        nn.init.normal_(self.deconv.weight, std=0.001)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.deconv(x)
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return x
