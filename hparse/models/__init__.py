"""Models of the four methods, built by name through ``build_model``."""

from .registry import MODELS, build_model, model_names
