"""Options of the Instance CRF (Li, Arnab & Torr, BMVC 2017, §3.2) in one place: kernel widths, weights' defaults,
which terms are on, how the pairwise messages are computed.

:class:`CRFOptions` holds every setting that is not a learned weight; :func:`~hparse.ops.instance_crf.instance_crf`,
:class:`~hparse.ops.instance_crf.InstanceCRF` and :func:`~hparse.ops.instance_crf.pairwise_messages` take one (or
its fields as keywords). The defaults are the authors' released Instance-CRF model (DIN, CVPR 2017,
``din.prototxt``): θα = 49, θβ = 5, θγ = 3, normalised kernels with weights 4 and 3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

__all__ = ["THETA_ALPHA", "THETA_BETA", "THETA_GAMMA", "EXACT_MAX_PIXELS", "METHODS", "CRFOptions",
           "default_pairwise_weights", "WeightLike"]

# Kernel widths of the authors' released Instance-CRF (DIN, din.prototxt): bilateral xy / rgb, spatial xy.
THETA_ALPHA = 49.0
THETA_BETA = 5.0
THETA_GAMMA = 3.0
# Released kernel weights; they multiply *normalised* kernels (see default_pairwise_weights).
_W_APP_NORMALISED = 4.0
_W_SMOOTH_NORMALISED = 3.0
# method="exact" stores two N x N kernels: 9216 pixels (96 x 96) is 340 MB each in float32.
EXACT_MAX_PIXELS = 96 * 96
# How the pairwise messages are computed (hparse.ops.instance_crf.kernels).
METHODS = ("exact", "fast", "lattice")

WeightLike = float | Tensor


def default_pairwise_weights(
    normalize: bool, theta_alpha: float = THETA_ALPHA, theta_gamma: float = THETA_GAMMA
) -> tuple[float, float]:
    """Default ``(w_app, w_smooth)``: the released weights 4 and 3, rescaled for unnormalised kernels.

    The released model multiplies kernels normalised to sum to one. For ``normalize=False`` they are divided by
    ``2πθ² - 1``, the mass of the kernel (self excluded) around a pixel inside a uniform region, so both forms
    send the same message there.
    """
    if normalize:
        return _W_APP_NORMALISED, _W_SMOOTH_NORMALISED
    return (
        _W_APP_NORMALISED / (2 * math.pi * theta_alpha**2 - 1),
        _W_SMOOTH_NORMALISED / (2 * math.pi * theta_gamma**2 - 1),
    )


@dataclass(frozen=True)
class CRFOptions:
    """Every setting of the Instance CRF that is not a learned weight.

    Attributes:
        iters: mean-field iterations; 0 returns ``softmax(-U)``.
        eps: ε of Eq. 1 (keeps the log finite where both unary terms vanish).
        theta_alpha, theta_beta, theta_gamma: kernel widths: θα (appearance, position) and θγ (smoothness) in
            pixels, θβ (appearance, colour) in 0-255 colour units.
        normalize: divide each kernel's message by the pixel's kernel mass ``Σ_{m≠k} k(k, m)`` (the released
            layers; default) instead of the plain sum.
        method: ``"exact"`` (dense N×N kernels, small images only), ``"fast"`` (separable convolutions +
            attention over Gaussian clouds of pixels) or ``"lattice"`` (permutohedral lattice, as ``pydensecrf``;
            :mod:`~hparse.ops.instance_crf.kernels`).
        box_term, global_term, pairwise: switch the paper's components (ablations of Tab. 1).
        app_stride: cell size of the fast appearance kernel (1 = exact); ``None`` picks the smallest stride whose
            clouds (two per cell above stride 1) fit in ``app_max_keys`` attention keys.
        app_max_keys: the key budget; cost per iteration is about H·W × keys × (D·P).
    """

    iters: int = 5
    eps: float = 1e-6
    theta_alpha: float = THETA_ALPHA
    theta_beta: float = THETA_BETA
    theta_gamma: float = THETA_GAMMA
    normalize: bool = True
    method: str = "fast"
    box_term: bool = True
    global_term: bool = True
    pairwise: bool = True
    app_stride: int | None = None
    app_max_keys: int = 2048

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"instance_crf: method must be one of {', '.join(map(repr, METHODS))}, "
                             f"got {self.method!r}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 0:
            raise ValueError(f"instance_crf: iters must be an int >= 0, got {self.iters!r}")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"instance_crf: {name} must be > 0, got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"instance_crf: eps must be > 0 (it keeps ln finite), got {self.eps}")
        if self.app_stride is not None and self.app_stride < 1:
            raise ValueError(f"instance_crf: app_stride must be >= 1, got {self.app_stride}")

    @classmethod
    def build(cls, options: CRFOptions | None = None, where: str = "instance_crf", **changes) -> CRFOptions:
        """``options`` (default: the defaults) with ``changes`` applied; an unknown name raises a TypeError that
        lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {unknown}; the options are {sorted(known)}")
        base = options if options is not None else cls()
        return cls(**{**asdict(base), **changes}) if changes else base

    def default_weights(self) -> tuple[float, float]:
        """``(w_app, w_smooth)`` defaults for these kernels (:func:`default_pairwise_weights`)."""
        return default_pairwise_weights(self.normalize, self.theta_alpha, self.theta_gamma)

    def to_dict(self) -> dict:
        return asdict(self)


def check_weight(name: str, value: WeightLike, nonnegative: bool) -> None:
    v = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if v.numel() != 1:
        raise ValueError(
            f"instance_crf: {name} must be a scalar (shared by all labels, §3.2), got shape {tuple(v.shape)}"
        )
    if not torch.isfinite(v).all():
        raise ValueError(f"instance_crf: {name} = {float(v)} is not finite")
    if nonnegative and float(v) < 0:
        raise ValueError(f"instance_crf: {name} = {float(v)} must be >= 0 (it weights a potential inside a log, Eq. 1)")
