"""Mean-field inference in the Instance CRF, unrolled as an RNN (Li, Arnab & Torr, BMVC 2017, §3.2; Zheng et al.).

Starting from ``Q⁰ = softmax(-U)`` (the unaries of :mod:`~hparse.ops.instance_crf.potentials`), each iteration is

``Q_k(l) ∝ exp(-U_k(l) + Σ_{m≠k} [w_app k_app + w_smooth k_smooth](k, m) Q_m(l))``

(Potts compatibility: the label-independent constant of the Potts penalty cancels in the softmax; the messages come
from :mod:`~hparse.ops.instance_crf.kernels`). Gradients reach Q, the scores and the four scalar weights, so the CRF
trains with the network behind it. One scalar weight per term is shared by all labels: the label set changes with
D, so no per-label parameter can exist (§3.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .kernels import message_kernels
from .options import CRFOptions, WeightLike, check_weight
from .potentials import check_inputs, unary_potential

__all__ = ["instance_crf", "InstanceCRF"]


def _instance_crf_single(Q: Tensor, boxes: Tensor, scores: Tensor, image: Tensor, weights: tuple, opts: CRFOptions,
                         log_probs: bool, check: bool, where: str) -> Tensor:
    w_box, w_global, w_app, w_smooth = weights
    if check:
        check_inputs(Q, boxes, scores, image, where)
    boxes = boxes.to(device=Q.device, dtype=Q.dtype)
    scores = scores.to(device=Q.device, dtype=Q.dtype)
    potential = unary_potential(Q, boxes, scores, w_box, w_global, opts.box_term, opts.global_term)
    neg_unary = torch.log(potential + opts.eps)  # -U
    logits = neg_unary
    labels_last = False
    if opts.pairwise and opts.iters > 0:
        messages = message_kernels(image, opts, Q.dtype)
        # Operators that work labels-last (each pixel's labels contiguous) get Q in that memory layout throughout.
        labels_last = getattr(messages, "labels_last", False)
        if labels_last:
            neg_unary = neg_unary.permute(1, 2, 0).contiguous().permute(2, 0, 1)
        probs = _softmax(neg_unary, labels_last)  # Q⁰ = softmax(-U)
        w_app, w_smooth = (torch.as_tensor(w, dtype=Q.dtype, device=Q.device) for w in (w_app, w_smooth))
        for _ in range(opts.iters):
            app, smooth = messages(probs)
            # Potts: Q_k(l) ∝ exp(-U_k(l) + Σ_m [w_app k_app + w_smooth k_smooth] Q_m(l)); two fused passes.
            logits = torch.addcmul(neg_unary, app, w_app).addcmul_(smooth, w_smooth)
            probs = _softmax(logits, labels_last)
    out = _softmax(logits, labels_last, log=log_probs)
    return out.contiguous() if labels_last else out


def _softmax(logits: Tensor, labels_last: bool, log: bool = False) -> Tensor:
    """(Log-)softmax over the labels (dim 0) of (L, H, W); labels-last tensors reduce over their contiguous dim."""
    fn = torch.log_softmax if log else torch.softmax
    if labels_last:
        return fn(logits.permute(1, 2, 0), dim=-1).permute(2, 0, 1)
    return fn(logits, dim=0)


def _as_list(x, count: int, name: str) -> list[Tensor]:
    if isinstance(x, Tensor):
        if x.dim() == 0 or x.shape[0] != count:
            raise ValueError(
                f"instance_crf: batched {name} must have {count} entries (one per image), got {tuple(x.shape)}"
            )
        return list(x.unbind(0))
    if len(x) != count:
        raise ValueError(f"instance_crf: batched {name} must have {count} entries (one per image), got {len(x)}")
    return list(x)


def instance_crf(
    Q: Tensor,
    boxes: Tensor | Sequence[Tensor],
    scores: Tensor | Sequence[Tensor],
    image: Tensor,
    *,
    w_box: WeightLike = 1.0,
    w_global: WeightLike = 1.0,
    w_app: WeightLike | None = None,
    w_smooth: WeightLike | None = None,
    log_probs: bool = False,
    check: bool = True,
    options: CRFOptions | None = None,
    **changes,
) -> Tensor | list[Tensor]:
    """Instance-level part segmentation by mean-field inference in the Instance CRF (§3.2, Eq. 1–3).

    Args:
        Q: (P+1, H, W) category-level part probabilities (channel 0 background), or (B, P+1, H, W) for a batch.
        boxes: (D, 4) xyxy person boxes in pixels inside the image (D may be 0); a list (or (B, D, 4)) for a batch.
        scores: (D,) detection scores in [0, 1], used as given; a list (or (B, D)) for a batch.
        image: (3, H, W) RGB in [0, 1] (or (B, 3, H, W)); drives the appearance kernel.
        w_box, w_global: unary weights (Eq. 1), >= 0; floats or 0-d tensors (learnable, see :class:`InstanceCRF`).
        w_app, w_smooth: pairwise kernel weights; ``None`` takes :func:`default_pairwise_weights` for the kernels.
        log_probs: return log-probabilities (for a numerically stable loss).
        check: validate inputs (one host sync per image); turn off inside tight GPU loops once inputs are trusted.
        options: :class:`CRFOptions`; its fields may also be given as keywords (``iters=3``, ``normalize=False``,
            ``method="exact"``, ``global_term=False``, ...), which override ``options``.

    Returns:
        (1 + D·P, H, W) probabilities over the labels {(0, 0)} ∪ {1..D}×{1..P} (channel layout of
        :func:`crf_channel`); a list of those for a batch.
    """
    opts = CRFOptions.build(options, "instance_crf", **changes)
    default_app, default_smooth = opts.default_weights()
    w_app = default_app if w_app is None else w_app
    w_smooth = default_smooth if w_smooth is None else w_smooth
    if check:
        check_weight("w_box", w_box, True)
        check_weight("w_global", w_global, True)
        check_weight("w_app", w_app, False)
        check_weight("w_smooth", w_smooth, False)
    if not isinstance(Q, Tensor):
        raise TypeError(f"instance_crf: Q must be a tensor, got {type(Q).__name__}")
    weights = (w_box, w_global, w_app, w_smooth)
    if Q.dim() == 4:
        batch = Q.shape[0]
        if image.dim() != 4 or image.shape[0] != batch:
            raise ValueError(f"instance_crf: batched Q has {batch} images but image has shape {tuple(image.shape)}")
        box_list = _as_list(boxes, batch, "boxes")
        score_list = _as_list(scores, batch, "scores")
        return [_instance_crf_single(Q[b], box_list[b], score_list[b], image[b], weights, opts, log_probs, check,
                                     f"instance_crf: image {b}") for b in range(batch)]
    if not isinstance(boxes, Tensor) or not isinstance(scores, Tensor):
        raise TypeError("instance_crf: for a single image, boxes and scores must be tensors (D, 4) and (D,)")
    return _instance_crf_single(Q, boxes, scores, image, weights, opts, log_probs, check, "instance_crf")


class InstanceCRF(nn.Module):
    """The Instance CRF as a layer whose four scalar weights are learned (§3.2: "weighting co-efficients are all
    learned via backpropagation"; one scalar per term, shared by all labels, because D changes per image).

    The weights ``w_box``, ``w_global`` (unary, Eq. 1) and ``w_app``, ``w_smooth`` (pairwise kernels) start at
    the released values (:func:`default_pairwise_weights`) and are stored as their logarithms (``log_w_box``, ...):
    they stay positive — the unary weights sit inside a log, and a negative Potts weight would reward label changes
    — and one optimiser step changes each by the same *relative* amount, although their defaults may span four
    orders of magnitude (1 for the unary weights, 2.7e-4 for the unnormalised appearance kernel). The released
    model trains them at 10x the network's learning rate; ``weight_scale`` does that for any optimiser that is
    invariant to a gradient's scale (Adam): the parameter is ``log(w) / weight_scale``. To switch a term off,
    use the ``box_term`` / ``global_term`` / ``pairwise`` options rather than a zero weight. Kernel widths stay
    fixed, as in the released model. ``forward`` takes and returns what :func:`instance_crf` does.

    Args:
        w_box, w_global, w_app, w_smooth: initial weights (``None``: the defaults for the kernels).
        weight_scale: see above.
        options: :class:`CRFOptions`, or its fields as keywords (``iters=5``, ``normalize=True``, ...).
    """

    def __init__(self, *, w_box: float = 1.0, w_global: float = 1.0, w_app: float | None = None,
                 w_smooth: float | None = None, weight_scale: float = 1.0, options: CRFOptions | None = None,
                 **changes):
        super().__init__()
        if not (math.isfinite(weight_scale) and weight_scale > 0):
            raise ValueError(f"InstanceCRF: weight_scale must be > 0, got {weight_scale}")
        self.weight_scale = float(weight_scale)
        self.options = CRFOptions.build(options, "InstanceCRF", **changes)
        default_app, default_smooth = self.options.default_weights()
        initial = {"w_box": w_box, "w_global": w_global, "w_app": default_app if w_app is None else w_app,
                   "w_smooth": default_smooth if w_smooth is None else w_smooth}
        for name, value in initial.items():
            if not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"InstanceCRF: {name} = {value} must be > 0 (switch terms off with the options)")
            self.register_parameter(f"log_{name}", nn.Parameter(torch.tensor(math.log(float(value)) / weight_scale)))

    def _weight(self, name: str) -> Tensor:
        return (getattr(self, f"log_{name}") * self.weight_scale).exp()

    @property
    def w_box(self) -> Tensor:
        return self._weight("w_box")

    @property
    def w_global(self) -> Tensor:
        return self._weight("w_global")

    @property
    def w_app(self) -> Tensor:
        return self._weight("w_app")

    @property
    def w_smooth(self) -> Tensor:
        return self._weight("w_smooth")

    def weights(self) -> dict[str, float]:
        """The current weights as plain numbers (for logs and result files)."""
        return {name: float(self._weight(name).detach()) for name in ("w_box", "w_global", "w_app", "w_smooth")}

    def forward(self, Q, boxes, scores, image, *, log_probs: bool = False, check: bool = True):
        return instance_crf(Q, boxes, scores, image, w_box=self.w_box, w_global=self.w_global, w_app=self.w_app,
                            w_smooth=self.w_smooth, log_probs=log_probs, check=check, options=self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in {**self.options.to_dict(), "weight_scale": self.weight_scale}.items())
