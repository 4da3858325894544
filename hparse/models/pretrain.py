"""A starting point for the backbone made by hparse itself: ResNet-FPN pretrained on SynthCrowd semantic parsing.

Every paper of the book starts its backbone from ImageNet weights (Parsing R-CNN Sec. 4.1, the RoI attention
framework Sec. 3.2, the Holistic model's PSPNet, the bottom-up parser's ResNet-101) and trains the rest. Offline there
are no ImageNet weights, and a backbone trained from random weights in the few minutes a laptop gives learns almost
nothing about people (``hparse demo`` from scratch: mIoU 0.05 after 500 steps). hparse therefore makes its own
starting point, once, the way the papers' starting points were made: a generic dense task on plenty of images,
before and apart from the method that will use it.

- **Task**: per-pixel part labels (the semantic half of the problem, no person identities, no boxes) on SynthCrowd
  *train* images drawn from a seed no recipe trains or evaluates on (:data:`PRETRAIN_SEED`).
- **Model** (:class:`SemanticPretrainer`): the ResNet-FPN of :func:`hparse.models.backbone.build_resnet_fpn` and a
  minimal head: one 1x1 convolution per pyramid level P2-P5 to part logits, each upsampled bilinearly to the image.
  Every level must carry the labels *on its own*, since the box branch reads P3-P5 and Parsing R-CNN's parsing
  branch reads P2 alone (PSS), so the loss is the mean of one cross-entropy per level (ignore 255;
  ``supervision="per_level"``, deep supervision). ``supervision="summed"`` (the loss of the sum of the levels'
  logits, the first shipped file's) lets a level specialise in what the others miss: with it, a linear probe of P2
  RoIs reached part mIoU 0.16 against 0.25 after only 200 per-level steps, and the parsing branches learned
  correspondingly slowly. Predictions are the argmax of the summed logits. Only the ResNet-FPN is kept; the head
  is thrown away, as ImageNet's classifier is.
- **What the methods still learn** from this start: the RPN, the box branch and every parsing/attention branch
  (all from random weights), and which person each part belongs to, which no pixel label says.

Shipped weights (:data:`PRETRAINED`): ``synthcrowd`` is a ResNet-18 at base width 24 with a 64-channel FPN
(1.75 M parameters, 3.5 MB in float16), made by ``hparse pretrain`` in two stages (6000 steps of the summed loss from
random weights, then 1500 of the per-level loss from them; :func:`hparse.recipes.pretrain_recipe`; the command and its
provenance are stored in the file and in ``results/cpu/pretrain/synthcrowd.json``). Build a model on it with
``backbone_weights="synthcrowd"``; like ImageNet weights, its batch-norm statistics are then frozen. The recipes pin
the file they start from (``"synthcrowd@<digest>"``, :func:`pinned`), so runs made from an earlier file stay apart.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .backbone import FPN_LEVELS, build_resnet_fpn

__all__ = ["SemanticPretrainer", "PRETRAINED", "PRETRAIN_SEED", "pretrained_path", "load_pretrained",
           "save_pretrained", "weights_digest", "pinned", "split_pinned"]

SUPERVISION = ("per_level", "summed")
PRETRAIN_SEED = 1_000  # SynthCrowd seed of the pretraining images: no recipe trains or evaluates on it
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# name -> (file inside hparse/weights, the architecture it fixes)
PRETRAINED: dict[str, tuple[str, dict]] = {
    "synthcrowd": ("synthcrowd_resnet18_w24.pt", {"backbone": "resnet18", "width": 24, "fpn_channels": 64}),
}


class SemanticPretrainer(nn.Module):
    """ResNet-FPN + per-level 1x1 part classifiers; torchvision's calling convention (see the module docstring).

    ``model(images, targets)`` in training returns ``{"loss_semantic": ...}``; ``model(images)`` in evaluation
    returns ``[{"semantic": (H, W) int64}]`` per image (enough for :class:`hparse.metrics.SemanticIoU`).

    Args:
        num_classes: part labels including background.
        backbone, width, fpn_channels, norm: the ResNet-FPN (:func:`~hparse.models.backbone.build_resnet_fpn`).
        supervision: ``"per_level"`` (one cross-entropy per level, averaged) or ``"summed"`` (one cross-entropy of
            the summed logits); see the module docstring.
    """

    def __init__(self, num_classes: int, *, backbone: str = "resnet18", width: int = 24, fpn_channels: int = 64,
                 norm: str = "bn", supervision: str = "per_level"):
        super().__init__()
        if supervision not in SUPERVISION:
            raise ValueError(f"supervision must be one of {SUPERVISION}, got {supervision!r}")
        self.num_classes = num_classes
        self.supervision = supervision
        self.body = build_resnet_fpn(backbone, None, norm=norm, trainable_layers=5, fpn_channels=fpn_channels,
                                     width=width)
        self.classifiers = nn.ModuleList(nn.Conv2d(fpn_channels, num_classes, 1) for _ in FPN_LEVELS)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def level_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> one (B, num_classes, H, W) part-logit map per level P2-P5."""
        features = self.body((images - self.mean) / self.std)
        return [F.interpolate(classify(features[level]), size=images.shape[-2:], mode="bilinear", align_corners=False)
                for classify, level in zip(self.classifiers, FPN_LEVELS)]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, num_classes, H, W) part logits: the sum of the levels'."""
        return sum(self.level_logits(images))

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        batch = torch.stack(list(images))
        levels = self.level_logits(batch)
        if self.training:
            if targets is None:
                raise ValueError("in training mode the model needs targets: model(images, targets)")
            semantic = torch.stack([t["semantic"] for t in targets]).to(batch.device)
            if self.supervision == "summed":
                return {"loss_semantic": F.cross_entropy(sum(levels), semantic, ignore_index=255)}
            losses = [F.cross_entropy(logits, semantic, ignore_index=255) for logits in levels]
            return {"loss_semantic": sum(losses) / len(losses)}
        return [{"semantic": lab} for lab in sum(levels).argmax(1)]


def split_pinned(spec: str) -> tuple[str, str | None]:
    """``"synthcrowd@1a2b3c4d5e6f"`` -> ``("synthcrowd", "1a2b3c4d5e6f")``; a bare name -> ``(name, None)``."""
    name, _, digest = str(spec).partition("@")
    return name, digest or None


def is_hparse_weights(spec) -> bool:
    """Whether ``spec`` names shipped weights (``"synthcrowd"`` or its pinned form ``"synthcrowd@<digest>"``)."""
    return isinstance(spec, str) and split_pinned(spec)[0] in PRETRAINED


def weights_digest(name: str) -> str | None:
    """The first 12 hex digits of the SHA-256 of the shipped file ``name`` (``None`` when the file is missing)."""
    import hashlib

    path = pretrained_path(split_pinned(name)[0])
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def pinned(name: str) -> str:
    """``name@<digest of the file shipped now>``: what the recipes write, so that a run's config says which file it
    started from. A record or checkpoint made on another file then differs in ``backbone_weights`` (the results
    policy and the resume check refuse to mix them), and building a model from an old config fails with a message
    instead of silently loading the new file. Without the file, the bare name (loading then says how to make it)."""
    digest = weights_digest(name)
    return f"{split_pinned(name)[0]}@{digest}" if digest else split_pinned(name)[0]


def pretrained_path(name: str) -> Path:
    """The file of the shipped weights ``name`` (a key of :data:`PRETRAINED`, optionally pinned ``name@digest``)."""
    name = split_pinned(name)[0]
    if name not in PRETRAINED:
        raise ValueError(f"unknown hparse weights {name!r}; available: {', '.join(PRETRAINED)}")
    return WEIGHTS_DIR / PRETRAINED[name][0]


def save_pretrained(model: SemanticPretrainer, path: str | Path, architecture: dict, provenance: dict) -> Path:
    """Write the ResNet-FPN of ``model`` in float16 with its architecture and provenance (the head is dropped)."""
    import json

    from ..engine.checkpoint import save_checkpoint

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.body.state_dict().items()}
    plain = json.loads(json.dumps(provenance, default=str))  # plain types only: the file loads with weights_only
    save_checkpoint(Path(path), {"state_dict": state, "architecture": dict(architecture), "provenance": plain})
    return Path(path)


def load_pretrained(body: nn.Module, name: str, architecture: dict) -> None:
    """Load the shipped weights ``name`` into a ResNet-FPN built with ``architecture`` (checked against the file's).

    ``name`` may be pinned (``"synthcrowd@<digest>"``, :func:`pinned`): the file must then be that one.

    Raises:
        ValueError: unknown name, an architecture other than the one the weights were trained with, or a pinned
            digest that is not the shipped file's.
        FileNotFoundError: the weights file is missing (the message says how to make it).
    """
    name, digest = split_pinned(name)
    path = pretrained_path(name)
    expected = PRETRAINED[name][1]
    differ = {k: (v, architecture.get(k)) for k, v in expected.items() if architecture.get(k) != v}
    if differ:
        what = ", ".join(f"{k}={got!r} (the weights have {want!r})" for k, (want, got) in differ.items())
        raise ValueError(f"backbone_weights={name!r} needs backbone={expected['backbone']!r}, "
                         f"width={expected['width']}, fpn_channels={expected['fpn_channels']}; got {what}")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: hparse ships it with the package; recreate it with "
                                f"`hparse pretrain --profile cpu --install` (about 75 minutes on 2 cores; see "
                                f"hparse.models.pretrain)")
    if digest is not None and weights_digest(name) != digest:
        raise ValueError(f"backbone_weights={name}@{digest}: the run was made from another {name!r} file than the one "
                         f"shipped now ({path.name} is {name}@{weights_digest(name)}); rebuild it from its recipe "
                         f"(hparse.recipes pins the current file) or restore that file from the run's git commit")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    body.load_state_dict(state)
