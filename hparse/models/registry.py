"""``build_model(name, num_classes, **cfg)``: the one table from model names to their classes.

Each entry is ``"module:Class"`` inside :mod:`hparse.models`, imported only when that model is built, so a model's
dependencies load only when it is used. The built model remembers how it was built (``model.build_config``), which
is what checkpoints store so that a trained model can be rebuilt from its file alone.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch.nn as nn

__all__ = ["MODELS", "build_model", "model_names"]

MODELS: dict[str, str] = {
    "attention_rcnn": "attention_rcnn:AttentionRCNN",
    "holistic_crf": "holistic:HolisticCRF",
    "mg_parser": "mg_parser:MGParser",
    "parsing_rcnn": "parsing_rcnn:ParsingRCNN",
}


def model_names() -> list[str]:
    """Names ``build_model`` accepts."""
    return sorted(MODELS)


def build_model(name: str, num_classes: int, **cfg: Any) -> nn.Module:
    """Build the model ``name`` for ``num_classes`` labels (including background) with its paper flags ``cfg``.

    Example: ``build_model("parsing_rcnn", num_classes=20, backbone="resnet50", pss=True, roi_size=32, gce=True,
    ipbc=True)``.

    Raises:
        ValueError: unknown name (the message lists the known ones) or an invalid flag value.
        TypeError: a flag the model does not take.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(model_names())}")
    module_name, class_name = MODELS[name].split(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)
    try:
        model = cls(num_classes=num_classes, **cfg)
    except TypeError as err:
        raise TypeError(f"build_model({name!r}): {err}") from err
    model.build_config = {"name": name, "num_classes": num_classes, **cfg}
    return model
