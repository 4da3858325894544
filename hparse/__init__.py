"""hparse: instance-level human parsing, four published methods reproduced and taught.

Subpackages: ``hparse.data`` (datasets, label sets, transforms), ``hparse.models`` (``build_model``),
``hparse.ops`` (Instance CRF, matching), ``hparse.metrics`` (``ParsingEvaluator``), ``hparse.engine``
(profiles, results with provenance, training, prediction), ``hparse.viz`` (overlays and widgets).

``hparse.predict(model_or_checkpoint, images)`` parses your own images with a trained model
(:func:`hparse.engine.predict.predict`). It is imported on first use, so that ``import hparse`` (and the command
line's ``--help``) does not load torch.
"""

__version__ = "0.1.0"

__all__ = ["predict", "__version__"]


def __getattr__(name: str):
    if name == "predict":
        from .engine.predict import predict

        return predict
    raise AttributeError(f"module 'hparse' has no attribute {name!r}")
