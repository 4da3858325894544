"""Start a run from another run's weights: the second step of a two-step schedule.

The multi-granularity parser trains in two steps (Zhou et al., CVPR 2021, §3.4): without the differentiable matching,
then "we finetune the whole model ... with a fixed learning rate of 1e-4" with it. The fine-tuning run is a new run
(its own optimiser, schedule, step count and run folder: :func:`hparse.engine.train` starts it fresh), whose model
starts from the first run's weights. :func:`load_weights` does that one thing: it copies a checkpoint's model weights
into a freshly built model and says what it did.

What may differ between the two models is limited to parameters that the second step adds, which the model names in
its ``init_new_parameters`` attribute (the parser's ``log_var_matching``, the uncertainty weight of the matching loss);
they keep their initial values. Any other missing or unexpected parameter, or a shape that differs, is an error: the
checkpoint is of another architecture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn

from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

__all__ = ["load_weights"]


def load_weights(model: nn.Module, source: str | Path) -> dict[str, Any]:
    """Copy the model weights of the checkpoint ``source`` (a file, or a run folder holding ``checkpoint.pt``) into
    ``model`` (in place).

    Returns:
        ``{"checkpoint": path, "step": its step, "model_config": how its model was built, "new_parameters": the
        parameters of ``model`` it did not hold}``.

    Raises:
        CheckpointError: the file is missing or unreadable, or its weights do not fit ``model`` beyond the parameters
            ``model.init_new_parameters`` names.
    """
    path = Path(source)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    checkpoint = load_checkpoint(path)
    if "model" not in checkpoint:
        raise CheckpointError(f"{path} holds no model weights (no 'model' entry); it was not written by "
                              "hparse.engine.train")
    state = checkpoint["model"]
    own = model.state_dict()
    allowed = set(getattr(model, "init_new_parameters", ()))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{key}: {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} here"
                    for key in set(state) & set(own) if state[key].shape != own[key].shape)
    problems = [f"missing {key}" for key in missing if key not in allowed] + [f"unexpected {key}" for key in unexpected]
    if problems or shapes:
        listed = "\n  ".join(problems + shapes)
        built = (checkpoint.get("model_config") or {}).get("name", "an unknown model")
        raise CheckpointError(f"the weights in {path} ({built}) do not fit this model:\n  {listed}\nStart from a "
                              "checkpoint of the same architecture (the same recipe and model flags).")
    model.load_state_dict(state, strict=False)
    return {"checkpoint": str(path), "step": checkpoint.get("step"), "model_config": checkpoint.get("model_config"),
            "new_parameters": missing}
