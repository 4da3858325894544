"""Geometric and Context Encoding (GCE) module, Parsing R-CNN Sec. 3.3 and Fig. 4.

GCE replaces the plain FCN of a parsing branch with two parts applied to the RoI feature:

1. **ASPP** (context, multi-scale receptive field): one 1x1 convolution, three 3x3 convolutions with atrous rates
   (6, 12, 18), and an image-level branch (global average pooling -> 1x1 convolution -> bilinear upsampling back to
   the RoI size, e.g. 32x32). The five outputs are concatenated and fused by a 1x1 convolution.
2. **Non-local** (geometry, relations between parts): the embedded-Gaussian non-local block of Wang et al. (CVPR
   2018) with a batch-normalisation layer after its last convolution, added residually.

"All the convolutional layers in GCE module have 256 channels" (Sec. 3.3), so every branch, the fusion convolution
and the non-local embeddings have 256 channels here. Choices where the paper is silent, taken from the official code
(``roi_gce_head``): each ASPP branch is conv + ReLU without normalisation; the non-local block max-pools its key and
value embeddings with stride 2 and scales the dot product by ``1 / sqrt(C)``. Where paper and code differ we follow the
paper: batch norm (the code uses GroupNorm) and 256 channels (the code fuses the ASPP into 512 channels). The last
batch norm of the non-local block starts with zero scale, so a freshly built block is the identity (Wang et al.).

Table 3 of the paper ablates the halves: ``GCE(aspp=True, nonlocal_=False)`` is "ASPP only",
``GCE(aspp=False, nonlocal_=True)`` is "Non-local only".
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ASPP", "NonLocal2d", "GCE"]


def init_conv(module: nn.Module) -> None:
    """He initialisation (fan-out, ReLU) of every convolution, zero biases: Mask R-CNN's heads."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling on an RoI feature (Sec. 3.3, Fig. 4 "ASPP").

    Args:
        in_channels: channels of the input RoI feature.
        channels: channels of each branch and of the fused output (256 in the paper).
        rates: atrous rates of the three 3x3 branches, (6, 12, 18) in the paper.
        norm: ``None`` (official code) or ``"gn"``: GroupNorm after each convolution but the image-level branch's.

    Shape:
        (R, in_channels, S, S) -> (R, channels, S, S).
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, rates: tuple[int, ...] = (6, 12, 18),
                 norm: str | None = None):
        super().__init__()
        from .parsing_head import norm_layer

        self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, channels, 1), norm_layer(norm, channels),
                                                     nn.ReLU(inplace=True))])
        for rate in rates:
            self.branches.append(nn.Sequential(
                nn.Conv2d(in_channels, channels, 3, padding=rate, dilation=rate), norm_layer(norm, channels),
                nn.ReLU(inplace=True)))
        # Image-level features: global average pooling -> 1x1 conv; upsampled back to S x S in forward.
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1),
                                        nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(channels * (len(rates) + 2), channels, 1), norm_layer(norm, channels),
                                     nn.ReLU(inplace=True))
        self.out_channels = channels
        init_conv(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.image_pool(x), size=size, mode="bilinear", align_corners=False)
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block with batch norm on its output convolution (Sec. 3.3; Wang et al. Eq. 1-3).

    ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(C')) g(x_j)``, ``z = x + BN(W_z y)``. Keys and values are
    max-pooled with stride 2 (official code and Wang et al.), which quarters the attention cost.

    Args:
        channels: input and output channels.
        inter_channels: embedding channels C' (256 = all GCE convolutions have 256 channels).
        subsample: max-pool keys and values by 2.

    Shape:
        (R, channels, S, S) -> (R, channels, S, S).
    """

    def __init__(self, channels: int = 256, inter_channels: int = 256, subsample: bool = True):
        super().__init__()
        self.theta = nn.Conv2d(channels, inter_channels, 1)
        self.phi = nn.Conv2d(channels, inter_channels, 1)
        self.g = nn.Conv2d(channels, inter_channels, 1)
        self.pool = nn.MaxPool2d(2) if subsample else nn.Identity()
        self.out = nn.Conv2d(inter_channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.out_channels = channels
        for conv in (self.theta, self.phi, self.g, self.out):
            nn.init.normal_(conv.weight, std=0.01)  # official code's non-local init
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.bn.weight)  # block starts as the identity (Wang et al., Sec. 4.1)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (R, HW, C')
        key = self.pool(self.phi(x)).flatten(2).transpose(1, 2)  # (R, HW/4, C')
        value = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # (R, HW/4, C')
        # Softmax of scaled dot products = the embedded Gaussian affinity normalised over j (fused kernel on GPUs).
        y = F.scaled_dot_product_attention(query, key, value)  # (R, HW, C')
        y = y.transpose(1, 2).reshape(r, value.shape[-1], h, w)
        return x + self.bn(self.out(y))


class GCE(nn.Module):
    """Geometric and Context Encoding: ASPP then non-local (Sec. 3.3, Fig. 4); either half can be switched off.

    Args:
        in_channels: channels of the RoI feature.
        channels: channels of every GCE convolution (256).
        aspp: use the ASPP half ("context").
        nonlocal_: use the non-local half ("geometry").
        rates: ASPP atrous rates.
        norm: normalisation of the ASPP convolutions (``None`` or ``"gn"``).

    Shape:
        (R, in_channels, S, S) -> (R, out_channels, S, S), ``out_channels`` = ``channels`` if ASPP is on, else
        ``in_channels`` (the non-local block keeps its input width).
    """

    def __init__(self, in_channels: int = 256, channels: int = 256, *, aspp: bool = True, nonlocal_: bool = True,
                 rates: tuple[int, ...] = (6, 12, 18), norm: str | None = None):
        super().__init__()
        if not (aspp or nonlocal_):
            raise ValueError("GCE needs at least one of its halves (aspp, nonlocal_)")
        self.aspp = ASPP(in_channels, channels, rates, norm) if aspp else None
        width = channels if aspp else in_channels
        self.nonlocal_block = NonLocal2d(width, channels) if nonlocal_ else None
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aspp is not None:
            x = self.aspp(x)
        if self.nonlocal_block is not None:
            x = self.nonlocal_block(x)
        return x
