"""Heads: modules that map pooled RoI features to logits (targets and losses live beside them, in ``targets``)."""

from .gce import ASPP, GCE, NonLocal2d
from .parsing_head import ParsingHead, ParsingPredictor, conv_stack
