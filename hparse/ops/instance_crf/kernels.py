"""Dense Gaussian pairwise messages of the Instance CRF (Li, Arnab & Torr, BMVC 2017, §3.2.3): exact, fast, lattice.

Kernels [Krähenbühl & Koltun]: appearance ``exp(-|p_k - p_m|²/2θα² - |I_k - I_m|²/2θβ²)`` and smoothness
``exp(-|p_k - p_m|²/2θγ²)`` with positions in pixels and colours in 0–255 units; with a Potts compatibility the
message of label l at pixel k is ``Σ_{m≠k} k(k, m) Q_m(l)``, divided by the pixel's kernel mass ``Σ_{m≠k} k(k, m)``
when normalised (the default, as the released layers; see :mod:`hparse.ops.instance_crf`). The released lattice
filters also count the pixel itself in both sums; we keep the m ≠ k of the message in both.

Three ways to compute the pairwise messages (``method``):

- ``"exact"``: two dense N×N kernels (N = H·W), built once per image and reused by every iteration; the reference,
  refused above ``EXACT_MAX_PIXELS`` pixels.
- ``"fast"``: the smoothness kernel is a separable Gaussian (two 1-D depthwise convolutions truncated at 4θγ;
  only the truncation differs from exact). The appearance kernel keeps every pixel as a query but summarises the
  other pixels: the image is cut into ``app_stride``-sized cells, each cell is split in two along its main colour
  axis (so a cell on an edge keeps both sides), and each half becomes one Gaussian cloud (pixel count n_c, mean
  μ_c and covariance C_c of the features f = (x/θα, y/θα, RGB/θβ)). The kernel from pixel k to a cloud is its
  exact Gaussian expectation, ``n_c det(I + C_c)^(-1/2) exp(-(f_k - μ_c)ᵀ (I + C_c)⁻¹ (f_k - μ_c) / 2)``, which
  is a dot product of a 21-d query of f_k (its squares, cross products, itself, 1) with a 21-d key of the cloud.
  So all messages are one ``scaled_dot_product_attention`` call over the clouds (values: the clouds' mean Q) plus
  a zero "sink" key whose extra value channel returns the normaliser ``1 / (1 + Z_k)``: no N×N matrix is ever
  stored and GPUs run it with flash / memory-efficient kernels. The pixel's own share of its cloud is removed
  (the sum runs over m ≠ k). The backward pass is the same sum with pixels and clouds swapped, one more
  attention call (an attention backward would also compute the unused query/key gradients, at several times the
  cost on CPUs). ``app_stride=1`` is exact; by default the stride is the smallest whose clouds fit in
  ``app_max_keys`` = 2048 keys (stride 2 at 64×64, 16 at 512×512). Cost: N × keys × (D·P) per iteration.
  Measured against ``"exact"`` by ``hparse/benchmarks/instance_crf.py`` (a 64×64 SynthCrowd val image, D = 3,
  P = 19, 5 iterations, float32, CPU; ``results/cpu/bench/instance_crf.json``): with normalised kernels (the
  default) max |ΔQ| is 7e-5 at stride 1 (the smoothness truncation), but 0.15, 0.27 and 0.43 at strides 2, 4
  and 8 on a few pixels (mean |ΔQ| at most 4e-4; the arg-max label differs at 0.17%, 0.49% and 0.90% of the
  pixels); with ``normalize=False``: 8e-5, 3.8e-4, 9.4e-4 and 5.1e-3, and no arg-max change up to stride 4.
  Where it errs: pixels whose colour has few matches, as their few neighbours share a cloud with unlike pixels;
  normalised, such a pixel's message is an average over very few neighbours, so it is far more sensitive there
  than the plain sum. Appearance features are large (colour / θβ spans ±25), so the appearance path always runs
  in float32 or wider.
  *Error relative to the appearance term's own effect.* On the same image and inputs (exact path, 5
  iterations), switching the appearance term off (``w_app=0``) changes Q by max 0.91 and mean 1.3e-2 and flips
  4.5% of the arg-max labels with normalised kernels; the default-stride fast error is 17% (max), 0.6% (mean)
  and 0.17% vs 4.5% flipped labels of that: the fast path keeps the appearance term's effect on average, but a
  few pixels get a noticeably wrong message. Unnormalised, the appearance term does almost nothing there (max
  0.050, 0.10% of labels flipped), which is why the plain sum looks so accurate.
  *Why the plain sum is not the default.* Its weight ``w_app = 4/(2πθα² - 1)`` (≈ 2.7e-4) assumes a pixel whose
  appearance neighbourhood is all of its colour (within θβ) and reaches ~3θα (≈ 150 px) in every direction inside
  the image, so that ``Σ_{m≠k} k_app(k, m) = 2πθα² - 1`` ≈ 15085. On the 64×64 image above that sum (from the
  exact kernel) has median 254 (10th-90th percentile 7-618; even a flat 64×64 image reaches only 2490-3570), so
  the unnormalised appearance message is ~1.7% of the released model's at the median pixel, while the smoothness
  kernel (θγ = 3) gets its full mass 2πθγ² - 1 ≈ 55.5 away from the border: the pairwise term degenerates into
  pure smoothing. The normalised form gives every pixel the released weights whatever its neighbourhood
  (``tests/test_instance_crf.py::test_normalised_kernels_do_not_depend_on_kernel_mass``).
- ``"lattice"``: the appearance kernel by the permutohedral lattice of Adams, Baek & Davis (the filter of
  ``pydensecrf``; :mod:`.lattice`, where the feature scale, the amplitude and the own-term removal are derived): the
  pixels' features f = (x/θα, y/θα, RGB/θβ) are splatted onto the vertices of their enclosing simplices in a 5-d
  lattice, blurred along its 6 directions and sliced back, three sparse matrices built once per image and applied to
  all labels at once per iteration (cost ~ (12 N + 18 M)·L, M lattice points: 25 497 for a 256×256 SynthCrowd image).
  The pixel's own lattice contribution (the filter's exact diagonal) is subtracted, so the sum runs over m ≠ k;
  normalised messages divide by the kernel mass Σ_{m≠k}, computed once per image (as exact); a pixel whose lattice
  mass is almost all its own (a colour nothing else shares; float32 would leave round-off) gets no appearance message.
  The smoothness kernel is the same truncated separable Gaussian as the fast path, computed as block Toeplitz matrix
  products over labels-last (H, W, L) data instead of depthwise convolutions; the mean-field loop keeps Q labels-last
  for this path (``labels_last``), so no iteration transposes it. Its error is the lattice's: the kernel is ~28% low
  at Δf = 0 and ~10% high in the tail against ``exp(-|Δf|²/2)``, so on SynthCrowd crops the appearance messages are
  off by 3-14% (normalised, 64-24 px) and 16-21% (unnormalised) in relative L2 norm (``tests/test_crf_lattice.py``),
  against < 1e-4 for the fast path at stride 1. After 5 iterations (64×64, D = 4, P = 19, normalised) mean |ΔQ| is
  9e-5 and 0.1% of the arg-max labels differ from exact (max |ΔQ| 0.5 on a few pixels). Its speed against
  ``pydensecrf`` on the same problem (5 iterations, D = 4, P = 20: 81 labels) is measured by ``hparse bench
  instance_crf`` (``vs_densecrf``), recorded in ``results/<profile>/bench/instance_crf.json`` and shown in the
  Instance CRF chapter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .lattice import PermutohedralLattice
from .options import EXACT_MAX_PIXELS, CRFOptions

__all__ = ["message_kernels", "pairwise_messages"]


class _ExactMessages:
    """Both kernels as dense N×N matrices (self-pairs removed), built once per image; the reference."""

    def __init__(self, image: Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float, normalize: bool,
                 dtype: torch.dtype):
        _, height, width = image.shape
        n = height * width
        if n > EXACT_MAX_PIXELS:
            raise ValueError(
                f"instance_crf(method='exact') stores two N x N kernels; N = H*W = {height}*{width} = {n} exceeds "
                f"EXACT_MAX_PIXELS = {EXACT_MAX_PIXELS}. Use method='fast' or a smaller image."
            )
        dev = image.device
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dtype),
                                torch.arange(width, device=dev, dtype=dtype), indexing="ij")
        pos = torch.stack([xs.flatten(), ys.flatten()], 1)  # (N, 2) pixels
        rgb = (image.to(dtype) * 255.0).reshape(3, n).T  # (N, 3) in 0..255
        # Direct (not matmul-based) distances: the reference must not suffer cancellation.
        mode = "donot_use_mm_for_euclid_dist"
        d_pos = torch.cdist(pos, pos, compute_mode=mode).square_()
        d_rgb = torch.cdist(rgb, rgb, compute_mode=mode).square_()
        self.smooth = torch.exp(d_pos / (-2 * theta_gamma**2))
        self.app = torch.exp(d_pos / (-2 * theta_alpha**2) - d_rgb / (2 * theta_beta**2))
        del d_pos, d_rgb
        self.smooth.fill_diagonal_(0.0)  # Σ over m ≠ k
        self.app.fill_diagonal_(0.0)
        if normalize:
            tiny = torch.finfo(dtype).tiny
            self.smooth /= self.smooth.sum(1, keepdim=True).clamp_min(tiny)
            self.app /= self.app.sum(1, keepdim=True).clamp_min(tiny)

    def __call__(self, Q: Tensor) -> tuple[Tensor, Tensor]:
        labels, height, width = Q.shape
        flat = Q.reshape(labels, -1)
        # message_k = Σ_m K[k, m] Q_m  ->  Q @ K^T  (the kernels are constants: autograd keeps one reference).
        app = (flat @ self.app.T).reshape(labels, height, width)
        smooth = (flat @ self.smooth.T).reshape(labels, height, width)
        return app, smooth


def _auto_stride(height: int, width: int, max_keys: int) -> int:
    """Smallest grid stride whose appearance keys (1 per pixel at stride 1, 2 per cell above) fit ``max_keys``."""
    if height * width <= max_keys:
        return 1
    stride = 2
    while 2 * math.ceil(height / stride) * math.ceil(width / stride) > max_keys:
        stride += 1
    return stride


# Upper-triangle index pairs of the 5 appearance features, for the quadratic form in the attention logits.
_TRIU = torch.triu_indices(5, 5, offset=1)


def _kernel_sum(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``exp(query @ key.T) @ value`` without the (rows, keys) matrix: one ``scaled_dot_product_attention`` call.

    Attention returns ``softmax(q·k) @ v``, a sum divided by its normaliser. A "sink" key of logit 0 (the zero
    vector) with its own value channel returns ``1 / (1 + Σ_j exp(q·k_j))``, which undoes the division.
    Attention kernels (flash, memory-efficient) want equal q/k/v head dims, a multiple of 8 and at most 256, so
    the value channels are split into equal heads and q, k are zero-padded to the head size (zeros do not change
    q·k); unequal head dims would fall back to a path that stores the score matrix.

    Args:
        query: (R, d) rows; key: (C, d) columns; value: (C, V).

    Returns:
        (R, V) ``Σ_j exp(query_i · key_j) value_j``.
    """
    channels = value.shape[1]
    value = torch.cat([
        torch.cat([value, value.new_zeros(value.shape[0], 1)], 1),
        torch.cat([value.new_zeros(1, channels), value.new_ones(1, 1)], 1),
    ], 0)  # (C + 1, V + 1), last row: the sink
    key = torch.cat([key, key.new_zeros(1, key.shape[1])], 0)
    heads = math.ceil((channels + 1) / 256)
    size = max(8 * math.ceil(query.shape[1] / 8), 8 * math.ceil((channels + 1) / (8 * heads)))
    value = F.pad(value, (0, heads * size - value.shape[1]))
    value = value.reshape(-1, heads, size).transpose(0, 1)[None]  # (1, heads, C + 1, size)
    q = F.pad(query, (0, size - query.shape[1]))[None, None].expand(1, heads, -1, -1)
    k = F.pad(key, (0, size - key.shape[1]))[None, None].expand(1, heads, -1, -1)
    out = F.scaled_dot_product_attention(q, k, value, scale=1.0)[0]  # (heads, R, size)
    out = out.transpose(0, 1).reshape(out.shape[1], heads * size)
    return out[:, :channels] / out[:, channels : channels + 1]


class _KernelSum(torch.autograd.Function):
    """``exp(query @ key.T) @ value`` with the gradient for ``value`` only (query and key are image constants).

    The backward pass is the same kind of sum with rows and columns swapped, ``exp(key @ query.T) @ grad``, so it
    costs one more forward call instead of an attention backward (which also computes the unused q/k gradients).
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(query, key)
        return _kernel_sum(query, key, value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        query, key = ctx.saved_tensors
        return None, None, _kernel_sum(key, query, grad.contiguous())


class _FastMessages:
    """Separable-Gaussian smoothness messages and grid-attention appearance messages (see the module docstring)."""

    def __init__(self, image: Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float, normalize: bool,
                 dtype: torch.dtype, app_stride: int | None, app_max_keys: int, smooth_truncate: float = 4.0):
        _, height, width = image.shape
        dev = image.device
        self.height, self.width, self.normalize, self.dtype = height, width, normalize, dtype

        # Smoothness: exp(-(dx² + dy²)/2θγ²) = g(dx) g(dy) with g(0) = 1, truncated at smooth_truncate·θγ.
        radius = max(1, math.ceil(smooth_truncate * theta_gamma))
        taps = torch.arange(-radius, radius + 1, device=dev, dtype=dtype)
        self.gauss = torch.exp(taps.square() / (-2 * theta_gamma**2))
        self.radius = radius
        if normalize:
            ones = torch.ones(1, height, width, device=dev, dtype=dtype)
            self.smooth_norm = self._smooth_incl(ones) - 1.0  # Σ_{m≠k} k_smooth(k, m), (1, H, W)

        # Appearance: pixel features f = (x/θα, y/θα, RGB·255/θβ), so that k_app = exp(-|f_k - f_m|²/2).
        stride = app_stride if app_stride is not None else _auto_stride(height, width, app_max_keys)
        if stride < 1:
            raise ValueError(f"instance_crf: app_stride must be >= 1, got {stride}")
        self.stride = stride
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=dtype),
                                torch.arange(width, device=dev, dtype=dtype), indexing="ij")
        f = torch.cat([xs[None] / theta_alpha, ys[None] / theta_alpha, image.to(dtype) * (255.0 / theta_beta)])
        f = f.reshape(5, -1).T  # (N, 5)
        f = f - f.mean(0, keepdim=True)  # centring is exact and keeps the logits small
        grid_w = math.ceil(width / stride)
        cell = ((ys // stride) * grid_w + (xs // stride)).long().flatten()  # (N,)
        num_cells = math.ceil(height / stride) * grid_w
        if stride == 1:
            cluster, num_keys = cell, num_cells
        else:
            # Split every cell in two along its main colour axis, so that a cell on an edge keeps both sides.
            count = torch.bincount(cell, minlength=num_cells).to(dtype)[:, None]
            centred = f[:, 2:] - (torch.zeros(num_cells, 3, device=dev, dtype=dtype).index_add_(0, cell, f[:, 2:])
                                  / count)[cell]
            cov = torch.zeros(num_cells, 3, 3, device=dev, dtype=dtype).index_add_(
                0, cell, centred[:, :, None] * centred[:, None, :])
            axis = torch.linalg.eigh(cov).eigenvectors[:, :, -1]  # (cells, 3) largest-variance direction
            side = ((centred * axis[cell]).sum(1) > 0).long()
            cluster, num_keys = 2 * cell + side, 2 * num_cells
        # Each cluster c is summarised by its pixel count n_c, mean μ_c and covariance C_c of f. For m ~ N(μ, C),
        # E[exp(-|f - m|²/2)] = det(I + C)^(-1/2) exp(-(f - μ)ᵀ (I + C)⁻¹ (f - μ) / 2): the kernel to a Gaussian
        # cloud of pixels. Exact at stride 1 (n = 1, C = 0).
        count = torch.bincount(cluster, minlength=num_keys).to(dtype)
        safe = count.clamp_min(1)[:, None]
        mean = torch.zeros(num_keys, 5, device=dev, dtype=dtype).index_add_(0, cluster, f) / safe
        d = f - mean[cluster]
        cov = torch.zeros(num_keys, 25, device=dev, dtype=dtype).index_add_(
            0, cluster, (d[:, :, None] * d[:, None, :]).reshape(-1, 25)).reshape(-1, 5, 5) / safe[:, :, None]
        spread = torch.eye(5, device=dev, dtype=dtype) + cov
        chol = torch.linalg.cholesky(spread)
        prec = torch.cholesky_inverse(chol)  # (I + C)⁻¹
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        # The logit -(f-μ)ᵀA(f-μ)/2 - logdet/2 + ln n as a dot product q_k · k_c:
        # q = [f_a², f_a f_b (a<b), f, 1];  k = [-A_aa/2, -A_ab, Aμ, -μᵀAμ/2 - logdet/2 + ln n].
        a_mu = (prec @ mean[:, :, None])[:, :, 0]
        const = -0.5 * (mean * a_mu).sum(1) - 0.5 * logdet + torch.log(count.clamp_min(1))
        const = torch.where(count > 0, const, torch.full_like(const, -1e4))  # empty cluster: no weight
        i, j = _TRIU[0].to(dev), _TRIU[1].to(dev)
        key = torch.cat([-0.5 * torch.diagonal(prec, dim1=1, dim2=2), -prec[:, i, j], a_mu, const[:, None]], 1)
        query = torch.cat([f.square(), f[:, i] * f[:, j], f, torch.ones_like(f[:, :1])], 1)  # (N, 21)
        self.query = query  # (N, 21)
        self.key = key  # (keys, 21)
        self.cluster, self.num_keys, self.count = cluster, num_keys, count
        # The pixel's own share in its cluster, E_self = exp(logit(k, c(k))) / n_c, is removed from the message
        # (the sum runs over m ≠ k); it equals 1 at stride 1.
        dk = f - mean[cluster]
        quad = (dk[:, :, None] * prec[cluster] * dk[:, None, :]).sum((1, 2))
        self.self_weight = torch.exp(-0.5 * quad - 0.5 * logdet[cluster]).reshape(1, height, width)

    # -- smoothness --------------------------------------------------------------------------------------------
    def _smooth_incl(self, Q: Tensor) -> Tensor:
        """Σ_m k_smooth(k, m) Q_m including m = k, zero outside the image; two 1-D depthwise convolutions."""
        labels = Q.shape[0]
        size = 2 * self.radius + 1
        wx = self.gauss.view(1, 1, 1, size).expand(labels, 1, 1, size)
        wy = self.gauss.view(1, 1, size, 1).expand(labels, 1, size, 1)
        out = F.conv2d(Q[None], wx, padding=(0, self.radius), groups=labels)
        out = F.conv2d(out, wy, padding=(self.radius, 0), groups=labels)
        return out[0]

    # -- appearance --------------------------------------------------------------------------------------------
    def _app_incl(self, Q: Tensor) -> Tensor:
        """Σ_m k_app(k, m) Q_m including the pixel's own cluster share, (L, H, W), via one attention call."""
        labels = Q.shape[0]
        flat = Q.reshape(labels, -1).T  # (N, L)
        if self.stride == 1:
            mean_q = flat
        else:
            mean_q = torch.zeros(self.num_keys, labels, device=Q.device, dtype=Q.dtype).index_add(
                0, self.cluster, flat) / self.count.clamp_min(1)[:, None]
        msg = _KernelSum.apply(self.query, self.key, mean_q)  # (N, L) = Σ_c exp(q_k · k_c) Q̄_c
        return msg.T.reshape(labels, self.height, self.width)

    def __call__(self, Q: Tensor) -> tuple[Tensor, Tensor]:
        work = Q.to(self.dtype)
        app = (self._app_incl(work) - self.self_weight * work).clamp_min(0.0)  # Σ over m ≠ k
        smooth = self._smooth_incl(work) - work
        if self.normalize:
            # Σ_l Q_m(l) = 1, so Σ_l message_k(l) = Σ_{m≠k} k(k, m): the normaliser comes for free.
            tiny = torch.finfo(self.dtype).tiny
            app = app / app.sum(0, keepdim=True).clamp_min(tiny)
            smooth = smooth / self.smooth_norm.clamp_min(tiny)
        return app.to(Q.dtype), smooth.to(Q.dtype)


def _gaussian_blocks(taps: Tensor, block: int) -> Tensor:
    """The 1-D Gaussian (``2r + 1`` taps, zero outside the image) as a (block, block + 2r) Toeplitz matrix: output
    rows ``[i·block, (i+1)·block)`` from input rows ``[i·block - r, (i+1)·block + r)``."""
    radius = (taps.numel() - 1) // 2
    dev = taps.device
    offset = torch.arange(block + 2 * radius, device=dev)[None, :] - torch.arange(block, device=dev)[:, None]
    inside = (offset >= 0) & (offset <= 2 * radius)
    return torch.where(inside, taps[offset.clamp(0, 2 * radius)], taps.new_zeros(()))


class _SeparableGaussian:
    """``Σ_m exp(-|p_k - p_m|²/2θ²) Q_m`` including m = k, zero outside the image, truncated at ``truncate·θ``, as
    matrix products on a labels-last (H, W, L) tensor: along each axis the image is cut into blocks of ``block``
    rows, and each output block is one (block, block + 2r) Toeplitz matrix times its input rows (a GEMM per block;
    a depthwise convolution over many labels is several times slower on CPUs). Same taps and truncation as the
    fast path's convolutions, so the two agree to float round-off."""

    def __init__(self, theta: float, dtype: torch.dtype, device: torch.device, truncate: float = 4.0,
                 block: int = 32):
        radius = max(1, math.ceil(truncate * theta))
        taps = torch.exp(torch.arange(-radius, radius + 1, device=device, dtype=dtype).square() / (-2 * theta**2))
        self.radius, self.block = radius, block
        self.toeplitz = _gaussian_blocks(taps, block)  # (block, block + 2r)

    def _windows(self, size: int):
        """Per output block: its rows, the input rows it reads (clipped to the image) and the matching columns of
        the Toeplitz block (zero padding outside the image is dropping those columns)."""
        r, b = self.radius, self.block
        for start in range(0, size, b):
            stop = min(start + b, size)
            lo, hi = max(start - r, 0), min(stop + r, size)
            yield start, stop, lo, hi, self.toeplitz[: stop - start, lo - (start - r) : hi - (start - r)]

    def __call__(self, X: Tensor) -> Tensor:
        """X: (H, W, L) -> (H, W, L)."""
        height, width, labels = X.shape
        rows = X.reshape(height, width * labels)
        out = torch.cat([taps @ rows[lo:hi] for _, _, lo, hi, taps in self._windows(height)])
        out = out.view(height, width, labels)
        return torch.cat([torch.matmul(taps, out[:, lo:hi]) for _, _, lo, hi, taps in self._windows(width)], 1)


# method="lattice": pixels whose lattice mass from other pixels is below this share of their total get no
# appearance message (float32 round-off of the total is ~1e-6 of it).
_LATTICE_MIN_SHARE = 1e-3


class _LatticeMessages:
    """Permutohedral-lattice appearance messages and block-GEMM smoothness messages (see the module docstring).

    Works labels-last: each pixel's L label values are contiguous (the sparse lattice products and the
    smoothness GEMMs read rows of L). ``labels_last`` tells the mean-field loop to keep Q in that memory layout
    (an (L, H, W) view of (H, W, L) memory), so no iteration transposes Q.
    """

    labels_last = True

    def __init__(self, image: Tensor, theta_alpha: float, theta_beta: float, theta_gamma: float, normalize: bool,
                 dtype: torch.dtype):
        _, height, width = image.shape
        dev = image.device
        self.height, self.width, self.normalize, self.dtype = height, width, normalize, dtype
        self.smooth_filter = _SeparableGaussian(theta_gamma, dtype, dev)
        if normalize:
            ones = torch.ones(height, width, 1, device=dev, dtype=dtype)
            self.smooth_norm = self.smooth_filter(ones) - 1.0  # Σ_{m≠k} k_smooth(k, m), (H, W, 1)
        ys, xs = torch.meshgrid(torch.arange(height, device=dev, dtype=torch.float64),
                                torch.arange(width, device=dev, dtype=torch.float64), indexing="ij")
        f = torch.cat([xs[None] / theta_alpha, ys[None] / theta_alpha, image.to(torch.float64) * (255.0 / theta_beta)])
        self.lattice = PermutohedralLattice(f.reshape(5, -1).T, dtype)
        self.self_weight = self.lattice.self_weight[:, None]  # (N, 1): the pixel's own share, removed (m ≠ k)
        # A pixel whose lattice mass is almost all its own (a colour no other pixel shares) keeps a difference of
        # two nearly equal numbers, i.e. float round-off: it gets no appearance message.
        mass = self.lattice.filter(torch.ones(height * width, 1, device=dev, dtype=dtype))
        others = mass - self.self_weight  # Σ_{m≠k} k_app(k, m), (N, 1)
        has_neighbours = (others > _LATTICE_MIN_SHARE * mass).to(dtype)
        # Per-pixel factor of the appearance message: the kernel mass is known once per image (as the exact path's
        # row sums), so normalising costs one multiplication per iteration.
        tiny = torch.finfo(dtype).tiny
        self.app_scale = has_neighbours / others.clamp_min(tiny) if normalize else has_neighbours
        self.smooth_scale = 1.0 / self.smooth_norm.clamp_min(tiny) if normalize else None

    def __call__(self, Q: Tensor) -> tuple[Tensor, Tensor]:
        labels = Q.shape[0]
        work = Q.to(self.dtype).permute(1, 2, 0)  # (H, W, L); no copy when Q is labels-last
        flat = work.reshape(-1, labels)  # (N, L)
        # Σ over m ≠ k: the filter (a fresh tensor, updated in place) minus the pixel's own share, then normalised.
        app = self.lattice.filter(flat).addcmul_(self.self_weight, flat, value=-1.0).mul_(self.app_scale)
        smooth = self.smooth_filter(work).sub_(work)
        if self.smooth_scale is not None:
            smooth = smooth.mul_(self.smooth_scale)
        app = app.reshape(self.height, self.width, labels).permute(2, 0, 1)
        return app.to(Q.dtype), smooth.permute(2, 0, 1).to(Q.dtype)


def message_kernels(image: Tensor, options: CRFOptions, dtype: torch.dtype):
    """The pairwise message operator of one image: ``messages(Q) -> (appearance, smoothness)``, each (L, H, W).

    Built once per image (kernels, clouds) and reused by every mean-field iteration.
    """
    if options.method == "exact":
        return _ExactMessages(image, options.theta_alpha, options.theta_beta, options.theta_gamma, options.normalize,
                              dtype)
    work = torch.promote_types(dtype, torch.float32)
    if options.method == "lattice":
        return _LatticeMessages(image, options.theta_alpha, options.theta_beta, options.theta_gamma,
                                options.normalize, work)
    return _FastMessages(image, options.theta_alpha, options.theta_beta, options.theta_gamma, options.normalize,
                         work, options.app_stride, options.app_max_keys)


def pairwise_messages(Q: Tensor, image: Tensor, options: CRFOptions | None = None, **changes) -> tuple[Tensor, Tensor]:
    """The appearance and smoothness messages ``Σ_{m≠k} k(k, m) Q_m(l)`` (normalised by default) of one image.

    Args:
        Q: (L, H, W) label probabilities (any L).
        image: (3, H, W) RGB in [0, 1].
        options: :class:`~hparse.ops.instance_crf.CRFOptions` (kernel widths, ``normalize``, ``method``, ...), or
            its fields as keywords.

    Returns:
        ``(appearance, smoothness)``, each (L, H, W), before the kernel weights. With all of Q on one label, the
        normalised messages of that label are 1 at every pixel; the plain sums are the kernel masses.
    """
    options = CRFOptions.build(options, "pairwise_messages", **changes)
    return message_kernels(image, options, Q.dtype)(Q)
