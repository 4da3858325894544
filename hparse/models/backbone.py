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
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

__all__ = ["RESNET_DEPTHS", "build_resnet_fpn", "FPN_LEVELS", "FPN_STRIDES"]

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


def build_resnet_fpn(
    backbone: str = "resnet50",
    backbone_weights: str | None = None,
    *,
    norm: str | None = None,
    trainable_layers: int | None = None,
    fpn_channels: int = 256,
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
    norm = norm or ("frozen_bn" if pretrained else "bn")
    if trainable_layers is None:
        trainable_layers = 3 if pretrained else 5
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    if not (isinstance(fpn_channels, int) and fpn_channels >= 1):
        raise ValueError(f"fpn_channels must be a positive int (256 in the paper), got {fpn_channels!r}")
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
    if fpn_channels != body.out_channels:
        # torchvision fixes the pyramid at 256 channels; swap in the same FPN (no norm, P6 by max pooling) at the
        # requested width. The ResNet body, its weights and its frozen stages are untouched.
        in_channels = [block[0].in_channels for block in body.fpn.inner_blocks]
        body.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        body.out_channels = fpn_channels
    return body
