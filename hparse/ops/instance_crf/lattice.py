"""The permutohedral lattice (Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the Permutohedral
Lattice", Eurographics 2010): a Gaussian filter ``out_k ≈ Σ_m exp(-|f_k - f_m|²/2) v_m`` over N points with
d-dimensional features f, in O(N·d) work per channel instead of O(N²). It is the filter of Krähenbühl & Koltun's
dense CRF (``pydensecrf``); here it is written with whole-tensor torch operations and sparse matrices.

*The lattice.* Features are embedded into the hyperplane ``H_d = {x ∈ R^(d+1): Σ x = 0}`` by ``E f`` (the
columns of E are orthogonal, ``(1, …, 1, -(i+1), 0, …)``, each scaled to length c). The lattice is ``(d+1)·A*_d``:
the integer points of H_d whose coordinates are all congruent mod d+1. It tiles H_d into congruent simplices; the
simplex that holds a point, and the point's barycentric weights on its d+1 vertices, come from rounding to the
nearest remainder-0 point and sorting the residuals (the rank of each coordinate). All of it is vectorised over
the N points; lattice points are hashed by encoding their first d coordinates as one int64, and one stable sort
of the codes gives the distinct points, each point's vertex ids and the splat matrix in CSR order.

*Filtering* is three linear maps, each a sparse matrix built once: **splat** (each point adds its value, times
its barycentric weight, to its d+1 vertices; (M, N) with d+1 entries per column), **blur** (for each of the d+1
lattice directions ``u_j = (d+1) e_j - 1``, ``[1 2 1]/4`` along u_j between existing lattice points; (M, M), at
most 3 entries per row) and **slice** (the transpose of splat: barycentric interpolation back to the points). The
transpose of the whole map is the same chain with the blur directions in reverse order, which is the backward pass
(:class:`_LatticeFilter`; it is checked by ``gradcheck``).

*Scale of the features.* One ``[1 2 1]/4`` blur has variance 1/2 step²; a step along u_j is ``|u_j|² = d(d+1)``
long, and the d+1 unit directions form a tight frame (``Σ_j û_j û_jᵀ = (d+1)/d`` on H_d), so the d+1 blurs have
isotropic variance ``(d+1)²/2`` in H_d. Splatting and slicing (barycentric hat functions on a simplex whose edges
are ~(d+1) long) add about ``(d+1)²/6``, so the lattice's Gaussian has variance ``σ_L² ≈ (2/3)(d+1)²`` in H_d. The
embedding scales distances by c, so ``exp(-|Δf|²/2)`` needs ``c² = σ_L²``: ``c = sqrt(2/3)·(d+1)`` (the
``inv_std_dev`` of Krähenbühl's code; Adams et al. write the same factor into the features). Measured: fitting
``log K`` against ``|Δf|²`` for dense random 5-d points with this c gives variance 1.02.

*Amplitude.* Splat, blur and slice all preserve mass, so for a point set of density ρ in feature space the lattice
returns ``Σ_m K_L(k, m) ≈ ρ·V``, with ``V`` the feature-space volume per lattice point: the covolume of
``(d+1)·A*_d`` is ``(d+1)^d / sqrt(d+1)``, divided by c^d. The Gaussian gives ``ρ·(2π)^(d/2)``, so the output is
multiplied by ``(2π)^(d/2)/V = (4π/3)^(d/2)·sqrt(d+1)`` (≈ 87.96 for d = 5; a fit of the kernel's peak gives
88.4). The lattice kernel is not exactly Gaussian: relative to ``exp(-|Δf|²/2)`` (median over pairs of dense
random 5-d points) it is 28% low at ``|Δf| ≈ 0``, 17% low at ``|Δf|² = 1-2``, 5% low at 2-4 and 9-13% high at
4-9 (a heavier tail), and it varies with where the two points sit in their simplices (10-90% spread ±10-30%): the
known error of the method, the same as ``pydensecrf``'s.

*The pixel's own term.* The message of the Instance CRF sums over m ≠ k, so the lattice's own contribution of a
point to itself, the diagonal ``K_L(k, k) = Σ_{a,b} w_a w_b B(v_b ← v_a)`` (w: its barycentric weights, B: the
blur chain between two vertices of its simplex), is subtracted. Vertices a and b of one simplex differ by
``-Σ_{j∈S} u_j`` with ``S`` the coordinates ranked in ``(d - b, d - a]`` (for b ≥ a; the complement of S(b, a) for
b < a). The d+1 blurs, one ``[1 2 1]/4`` pass per direction in a fixed order, carry mass from v_a to v_b along
exactly two paths, ``-u_j`` for j ∈ S (weight ``4^-|S| 2^-(d+1-|S|)``) or ``+u_j`` for j ∉ S (weight
``4^-(d+1-|S|) 2^-|S|``), plus a third, ``-u_j`` along every direction, when a = b; a path counts only if every
lattice point it stops at exists (the blur drops mass sent to a missing point). Which paths exist is found once per
lattice point for all 2^(d+1) subsets by walking the blur-neighbour tables, so :attr:`self_weight` is the exact
diagonal of the filter as built (checked against filtering one-hot inputs to 1e-16), not of an ideal infinite
lattice — the ideal one overestimates it for points whose colour few others share, which would leave them a
negative message. The alternative, filtering each point's own one-hot input, costs one filter per point.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = ["PermutohedralLattice", "lattice_scale", "lattice_amplitude"]


def lattice_scale(d: int) -> float:
    """The embedding's length c = sqrt(2/3)·(d+1): features scaled so the lattice approximates exp(-|Δf|²/2)."""
    return math.sqrt(2.0 / 3.0) * (d + 1)


def lattice_amplitude(d: int) -> float:
    """``(2π)^(d/2) / V``: the factor that turns the mass-preserving lattice filter into ``Σ exp(-|Δf|²/2) v``."""
    return (4.0 * math.pi / 3.0) ** (d / 2) * math.sqrt(d + 1)


def _chain(matrices: list[Tensor], values: Tensor) -> Tensor:
    for matrix in matrices:
        values = matrix @ values
    return values


class _LatticeFilter(torch.autograd.Function):
    """``slice · blur_d ⋯ blur_0 · splat · values`` (the amplitude is folded into the slice and splat weights);
    the backward pass is the transposed chain (blur symmetric, splat and slice each other's transpose), so the
    gradient reaches ``values`` exactly."""

    @staticmethod
    def forward(ctx, values: Tensor, lattice: PermutohedralLattice) -> Tensor:
        ctx.lattice = lattice
        return _chain(lattice.forward_chain, values)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        lattice = ctx.lattice
        return _chain(lattice.backward_chain, grad), None


class PermutohedralLattice:
    """The lattice of N points with features ``(N, d)``, built once; :meth:`filter` is the Gaussian filter.

    Args:
        features: (N, d) point features; the filter approximates ``Σ_m exp(-|f_k - f_m|²/2) v_m``.
        dtype: floating type of the sparse matrices (the lattice geometry is computed in float64).
    """

    def __init__(self, features: Tensor, dtype: torch.dtype = torch.float32):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self._build(features, dtype)

    def _build(self, features: Tensor, dtype: torch.dtype) -> None:
        n, d = features.shape
        d1 = d + 1
        dev = features.device
        self.num_points, self.dim, self.dtype = n, d, dtype
        self.amplitude = lattice_amplitude(d)

        # Elevate: E f with E's column i = c/sqrt((i+1)(i+2)) · (1, …, 1 (i+1 times), -(i+1), 0, …).
        column = torch.arange(d, device=dev, dtype=torch.float64)
        embed = torch.zeros(d1, d, device=dev, dtype=torch.float64)
        for i in range(d):
            embed[: i + 1, i] = 1.0
            embed[i + 1, i] = -(i + 1.0)
        embed *= lattice_scale(d) / torch.sqrt((column + 1) * (column + 2))
        elevated = features.to(torch.float64) @ embed.T  # (N, d+1), Σ = 0

        # Nearest remainder-0 point (coordinates multiples of d+1), then the residuals' ranks.
        down = torch.floor(elevated / d1) * d1
        up = down + d1
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        excess = torch.round(rem0.sum(1, keepdim=True) / d1).long()  # (N, 1); rem0 may leave H_d by a few steps
        order = torch.argsort(elevated - rem0, dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(d1, device=dev).expand(n, d1).contiguous())
        # Walk back onto H_d: move the coordinates with the largest (or smallest) residuals by ∓(d+1).
        lower = (excess > 0) & (rank >= d1 - excess)
        raise_ = (excess < 0) & (rank < -excess)
        rem0 = rem0 - d1 * lower + d1 * raise_
        rank = rank + excess - d1 * lower + d1 * raise_

        # Barycentric weights of the d+1 vertices (vertex r = rem0 + canonical[r] permuted by rank).
        residual = (elevated - rem0) / d1
        bary = torch.zeros(n, d1 + 1, device=dev, dtype=torch.float64)
        bary.scatter_add_(1, d - rank, residual)
        bary.scatter_add_(1, d1 - rank, -residual)
        bary[:, 0] += 1.0 + bary[:, d1]
        bary = bary[:, :d1].clamp_min(0.0)  # (N, d+1); -1e-16 round-off aside, already >= 0

        # Vertex keys: first d coordinates (the last is minus their sum), encoded as one int64.
        r = torch.arange(d1, device=dev)
        canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - d1)  # (remainder, rank)
        keys = rem0.round().long()[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)  # (N, d+1, d)
        low = keys.amin((0, 1)) - d1  # room for the blur neighbours (±d per coordinate)
        span = keys.amax((0, 1)) + d1 - low + 1
        if float(span.double().log2().sum()) > 62:
            raise ValueError("PermutohedralLattice: the features span too many lattice cells to hash in int64; "
                             "scale them down")
        radix = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
        code = ((keys - low) * radix).sum(-1)  # (N, d+1)
        # One stable sort gives the distinct lattice points, each entry's vertex id, and the splat matrix's CSR
        # order (rows = vertices, columns = points, ascending within a row).
        sorted_code, order = torch.sort(code.flatten(), stable=True)
        first = torch.ones_like(sorted_code, dtype=torch.bool)
        first[1:] = sorted_code[1:] != sorted_code[:-1]
        lattice_codes = sorted_code[first]
        m = lattice_codes.numel()
        self.num_lattice_points = m
        vertex_sorted = torch.cumsum(first, 0) - 1
        vertex = torch.empty_like(vertex_sorted).scatter_(0, order, vertex_sorted).view(n, d1)

        # Splat (M, N) and slice (N, M): the same (vertex, point, weight) triples; the slice also carries the
        # amplitude (one factor per chain), so does the splat of the backward chain.
        weight = bary.flatten().to(dtype)
        self.slice = torch.sparse_csr_tensor(torch.arange(0, n * d1 + 1, d1, device=dev), vertex.flatten(),
                                             weight * self.amplitude, size=(n, m), check_invariants=False)
        splat_rows = torch.zeros(m + 1, dtype=torch.long, device=dev)
        splat_rows[1:] = torch.cumsum(torch.bincount(vertex_sorted, minlength=m), 0)
        self.splat = torch.sparse_csr_tensor(splat_rows, order // d1, weight[order], size=(m, n),
                                             check_invariants=False)
        splat_t = torch.sparse_csr_tensor(self.splat.crow_indices(), self.splat.col_indices(),
                                          self.splat.values() * self.amplitude, size=(m, n), check_invariants=False)
        slice_t = torch.sparse_csr_tensor(self.slice.crow_indices(), self.slice.col_indices(), weight, size=(n, m),
                                          check_invariants=False)

        # Blur along u_j = (d+1)e_j - 1: neighbours key ± (-1, …, d at j, …, -1), found by binary search;
        # step[sign][j] maps each lattice point to its neighbour (M: none, and M maps to M).
        self.blurs = []
        index = torch.arange(m, device=dev)
        step = {1: [], -1: []}
        for j in range(d1):
            offset = -torch.ones(d, dtype=torch.long, device=dev)
            if j < d:
                offset[j] = d
            delta = int((offset * radix).sum())
            # Row i holds (i - u_j, i, i + u_j) where they exist: three candidate columns per row, sorted in place
            # (a missing neighbour is column m, dropped), so the CSR needs no global sort.
            columns, values = [index], [torch.full((m,), 0.5, device=dev, dtype=dtype)]
            for sign in (1, -1):
                target = lattice_codes + sign * delta
                found = torch.searchsorted(lattice_codes, target).clamp_max(m - 1)
                neighbour = torch.where(lattice_codes[found] == target, found, m)
                step[sign].append(torch.cat([neighbour, found.new_full((1,), m)]))
                columns.append(neighbour)
                values.append(torch.full((m,), 0.25, device=dev, dtype=dtype))
            columns, at = torch.sort(torch.stack(columns, 1), dim=1)
            values = torch.stack(values, 1).gather(1, at)
            kept = columns < m
            blur_rows = torch.zeros(m + 1, dtype=torch.long, device=dev)
            blur_rows[1:] = torch.cumsum(kept.sum(1), 0)
            self.blurs.append(torch.sparse_csr_tensor(blur_rows, columns[kept], values[kept], size=(m, m),
                                                      check_invariants=False))
        self.forward_chain = [self.splat, *self.blurs, self.slice]
        self.backward_chain = [splat_t, *reversed(self.blurs), slice_t]

        # The point's own term Σ_ab w_a w_b B(v_b ← v_a), with B the blur chain between two of its vertices
        # (module docstring): v_b - v_a = -Σ_{j∈S} u_j for the directions S(a, b), reached by -u_j along j ∈ S or
        # by +u_j along j ∉ S, through the points the blurs actually hold. reach[sign][S]: the walk from each
        # lattice point by sign·u_j for j ∈ S in blur order stays on existing points.
        masks = torch.arange(2**d1, device=dev)
        size = ((masks[:, None] >> r) & 1).sum(1)  # |S|
        reach = {}
        for sign in (1, -1):
            walk = torch.empty(2**d1, m + 1, dtype=torch.long, device=dev)
            walk[0] = torch.arange(m + 1, device=dev)
            for mask in range(1, 2**d1):
                last = mask.bit_length() - 1  # the walk's last direction, the last blur on its way
                walk[mask] = step[sign][last][walk[mask ^ (1 << last)]]
            reach[sign] = (walk[:, :m] < m).to(torch.float64)  # (2^(d+1), M)
        quarter_minus = 0.25 ** size * 0.5 ** (d1 - size)  # -u_j along S, stay elsewhere
        quarter_plus = 0.25 ** (d1 - size) * 0.5**size  # +u_j along S's complement
        table = reach[-1] * quarter_minus[:, None] + reach[1][(2**d1 - 1) ^ masks] * quarter_plus[:, None]
        table[0] += reach[-1][2**d1 - 1] * 0.25**d1  # offset 0 is also -Σ_all u_j: a third path
        # S(a, b) for b >= a: the coordinates ranked in (d - b, d - a]; for b < a the complement of S(b, a).
        by_rank = torch.argsort(rank, dim=1, descending=True)  # coordinate holding rank d, d-1, …, 0
        # at_least[:, a] = bits of the coordinates ranked above d - a (ranks d-a+1 … d): a bits.
        at_least = torch.cat([rank.new_zeros(n, 1), torch.cumsum(1 << by_rank, 1)[:, :d]], 1).int()  # (N, d+1)
        upper = (at_least[:, None, :] - at_least[:, :, None]).abs()  # (N, d+1, d+1): S(min, max)
        mask = torch.where(r[None, :] >= r[:, None], upper, (2**d1 - 1) ^ upper)  # S(a, b) per pair
        # B(v_b ← v_a), (N, d+1, d+1): a point's 36 lookups read one row of the (M, 2^(d+1)) table.
        between = table.T.contiguous().flatten().take(vertex[:, :, None] * 2**d1 + mask)
        pair = bary[:, :, None] * bary[:, None, :]
        self.self_weight = (self.amplitude * (pair * between).sum((1, 2))).to(dtype)  # (N,)

    def filter(self, values: Tensor) -> Tensor:
        """``Σ_m K(k, m) values_m`` for every point k, the point itself included (K ≈ exp(-|f_k - f_m|²/2)).

        Args:
            values: (N, C), any strides (a column-major (N, C) view of a (C, N) tensor is not copied here).

        Returns:
            (N, C); differentiable with respect to ``values``.
        """
        return _LatticeFilter.apply(values.to(self.dtype), self)
