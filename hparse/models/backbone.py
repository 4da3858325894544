"""ResNet + FPN backbone (Lin et al., CVPR 2017), the feature extractor every top-down hparse model shares.

Parsing R-CNN (Yang et al., CVPR 2019, Sec. 4.1 and Fig. 2) uses a ResNet-FPN backbone: pyramid levels P2-P5 at
strides 4-32 feed the RoI heads, and P6 (a stride-2 max pool of P5, ``LastLevelMaxPool``) is used by the RPN only.
The backbone is torchvision's ``resnet_fpn_backbone``; this module only chooses its normalisation and weights.

Output: an ``OrderedDict`` with keys ``"0"``, ``"1"``, ``"2"``, ``"3"`` (P2-P5) and ``"pool"`` (P6), each
``(B, 256, H / stride, W / stride)``.

Normalisation. With ImageNet weights the batch-norm statistics are frozen (``FrozenBatchNorm2d``), as in Mask R-CNN
and in the official Parsing R-CNN code (BN frozen). Without pretrained weights, frozen statistics of a random init are
the identity, so the network would train with no normalisation at all: training from scratch therefore defaults to
ordinary (trainable) ``BatchNorm2d`` and all five stages trainable. ``norm="gn"`` (GroupNorm, 32 groups) is the
option for very small per-device batches.

Width. ``width`` is the ResNet's base width, the channels of its stem and first stage (64 in every ResNet of the
papers); the four stages have ``width * (1, 2, 4, 8)`` channels (times 4 for bottleneck ResNets). A narrower ResNet
is the same architecture at a smaller size: ``width=32`` costs about a quarter of the multiply-adds, which is what
lets the ``cpu`` recipes train on a laptop (:mod:`hparse.recipes`). ImageNet weights exist only at width 64.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from torchvision.models import resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ["RESNET_DEPTHS", "build_resnet_fpn", "FPN_LEVELS", "FPN_STRIDES", "narrow_resnet"]

RESNET_DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
FPN_LEVELS = ("0", "1", "2", "3")  # P2..P5, the levels RoI heads pool from ("pool" = P6 is RPN-only)
FPN_STRIDES = (4, 8, 16, 32)


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return partial(nn.GroupNorm, 32)
    raise ValueError(f"backbone norm must be 'bn', 'frozen_bn' or 'gn', got {norm!r}")


_BLOCKS = {"resnet18": (resnet.BasicBlock, (2, 2, 2, 2)), "resnet34": (resnet.BasicBlock, (3, 4, 6, 3)),
           "resnet50": (resnet.Bottleneck, (3, 4, 6, 3)), "resnet101": (resnet.Bottleneck, (3, 4, 23, 3)),
           "resnet152": (resnet.Bottleneck, (3, 8, 36, 3))}


class _ResNet(resnet.ResNet):
    """torchvision's ResNet with the base width as an argument (torchvision fixes it at 64)."""

    def __init__(self, block, layers, width: int, norm_layer):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def narrow_resnet(name: str, width: int, norm_layer) -> resnet.ResNet:
    """A torchvision ``ResNet`` of depth ``name`` whose stages have ``width * (1, 2, 4, 8)`` base channels."""
    block, layers = _BLOCKS[name]
    return _ResNet(block, layers, width, norm_layer)


def _is_hparse_weights(spec) -> bool:
    from .pretrain import is_hparse_weights

    return is_hparse_weights(spec)


def build_resnet_fpn(
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    *,
    norm: str | None = None,
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
    width: int = 64,
) -> BackboneWithFPN:
    """ResNet of the given depth with an FPN (P2-P6, 256 channels by default).

    Args:
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or ``"resnet152"`` (also accepted
            as an int depth such as ``50``).
        backbone_weights: ``None`` (random init, works offline) or a torchvision weights name such as ``"DEFAULT"``
            or ``"IMAGENET1K_V1"`` (downloaded on first use).
        norm: ``"frozen_bn"``, ``"bn"`` or ``"gn"``; default ``"frozen_bn"`` with pretrained weights, else ``"bn"``.
        trainable_layers: how many ResNet stages (counted from the top, 0-5) are trained; default 3 with pretrained
            weights (torchvision's detection default), 5 from scratch.
        fpn_channels: width of the pyramid (256 in FPN and the papers).
        width: the ResNet's base width (64 in the papers; see the module docstring). ImageNet weights need 64.

    Returns:
        ``BackboneWithFPN`` whose ``forward(x: (B, 3, H, W))`` returns ``OrderedDict`` ``{"0": P2, ..., "3": P5,
        "pool": P6}`` and whose ``out_channels`` is 256.

    Raises:
        ValueError: unknown depth or norm.
        RuntimeError: pretrained weights were requested but could not be loaded (for example without a network);
            the message says how to run offline.
    """
    name = f"resnet{backbone}" if isinstance(backbone, int) else str(backbone).lower()
    if name not in RESNET_DEPTHS:
        raise ValueError(f"backbone must be one of {', '.join(RESNET_DEPTHS)}, got {backbone!r}")
    pretrained = backbone_weights is not None
    if pretrained and _is_hparse_weights(backbone_weights):
        # hparse's own starting point (hparse.models.pretrain): built at its width, then loaded from the shipped file.
        from .pretrain import load_pretrained

        body = build_resnet_fpn(name, None, norm=norm or "frozen_bn", trainable_layers=5 if trainable_layers is None
                                else trainable_layers, fpn_channels=fpn_channels, width=width)
        load_pretrained(body, backbone_weights, {"backbone": name, "width": width, "fpn_channels": fpn_channels})
        return body
    norm = norm or ("frozen_bn" if pretrained else "bn")
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if not (isinstance(fpn_channels, int) and fpn_channels >= 1):
        raise ValueError(f"fpn_channels must be a positive int (256 in the paper), got {fpn_channels!r}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be a positive int (64 in the papers), got {width!r}")
    if width != 64:
        if pretrained:
            raise ValueError(f"torchvision's weights {backbone_weights!r} exist for width 64 only, got width={width}")
        body = _resnet_fpn_extractor(narrow_resnet(name, width, _norm_layer(norm)), trainable_layers,
                                     extra_blocks=LastLevelMaxPool())
        return _with_fpn_width(body, fpn_channels)
    try:
        body = resnet_fpn_backbone(
            backbone_name=name,
            weights=backbone_weights,
            norm_layer=_norm_layer(norm),
            trainable_layers=trainable_layers,
            extra_blocks=LastLevelMaxPool(),
        )
    except (ValueError, KeyError) as err:
        if pretrained and "weight" in str(err).lower():
            raise ValueError(f"unknown weights {backbone_weights!r} for {name}: {err}") from err
        raise
    except Exception as err:  # network, cache or checksum failures all surface here
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load ImageNet weights {backbone_weights!r} for {name} ({type(err).__name__}: {err}). "
            "torchvision downloads them on first use into $TORCH_HOME (~/.cache/torch/hub/checkpoints). "
            "To run offline, build the model with backbone_weights=None (random init; hparse's default), or copy "
            "the weight file into that folder on a machine with a network first."
        ) from err
    return _with_fpn_width(body, fpn_channels)


def _with_fpn_width(body: BackboneWithFPN, fpn_channels: int) -> BackboneWithFPN:
    """torchvision fixes the pyramid at 256 channels; swap in the same FPN (no norm, P6 by max pooling) at the
    requested width. The ResNet body, its weights and its frozen stages are untouched."""
    if fpn_channels != body.out_channels:
        in_channels = [block[0].in_channels for block in body.fpn.inner_blocks]
        body.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        body.out_channels = fpn_channels
    return body
