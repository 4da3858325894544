"""Bipartite limb matching: exact (Hungarian), greedy, and differentiable (PGD + Dykstra).

Multi-granularity bottom-up parsing (Zhou et al., CVPR 2021, §3.3) assembles detected keypoints into people limb
by limb. For one limb type with endpoint categories k and k', the limb scores form a matrix
A ∈ [0, 1]^{N_k × N_k'} and the best assembly is the maximum-weight bipartite matching

    max_Y  Σ_{n,n'} a_{nn'} y_{nn'}                                         (Eq. 9)
    s.t.   Σ_{n'} y_{nn'} ≤ 1  ∀n,   Σ_n y_{nn'} ≤ 1  ∀n',   y_{nn'} ∈ {0, 1}.  (Eqs. 10-12)

Dropping the integer constraint (Eq. 12) gives the linear programme

    min_Y  tr(−AᵀY)   s.t.   Y 1 ≤ 1  (C1),   Yᵀ1 ≤ 1  (C2),   Y ≥ 0  (C3),        (Eqs. 13-14)

whose optimum is integral for bipartite graphs (the constraint matrix is totally unimodular), so solving the
relaxation solves the matching. The paper solves it with projected gradient descent (PGD),

    Y ← F_C(Y − α ∇f(Y)) = F_C(Y + α A),                                       (Eq. 15)

where the projection F_C(Z) = argmin_{Y' ∈ C1∩C2∩C3} ½‖Y' − Z‖² (Eq. 16) is computed by Dykstra's cyclic
projection algorithm from the three sets' closed-form projections. Every step is an elementwise operation or a
row/column sum, so gradients reach A through the unrolled iterations and the paper trains limb scores with
"direct matching based supervision" (§3.3, §3.4: a cross-entropy loss on the assignment matrix).

Training through the matching. At the LP's optimum Y is a vertex of the polytope, and the LP solution is piecewise
constant in A: an unrolled PGD that has reached the vertex has a Jacobian dY/dA of exactly zero. At the inference
defaults (300 steps) that is the case on about 90% of small problems (3-8 candidates per side) whose rounded answer is
wrong, so a loss on Y would teach nothing where it matters most. Fewer steps keep some gradient only because the
iterate has not converged yet (16% dead at 30 steps, 4% at 10), which ties the signal to an accident of truncation.
We keep the paper's solver and regularise the training problem instead (our choice; the paper gives no detail):

    min_Y  tr(−AᵀY) + (τ/2)‖Y‖²   s.t.   Y ∈ C1∩C2∩C3,     i.e.   Y*_τ = F_C(A / τ),                  (Eq. 13 + τ)

a strongly convex objective whose unique optimum is the Euclidean projection of A/τ onto the polytope (so τ is also
a temperature on the scores). PGD on it is Eq. 15 with the gradient A − τY: Y ← F_C((1 − ατ) Y + α A), still with
Dykstra's F_C (Eq. 16). Y*_τ is Lipschitz in A and lies on a vertex only when A/τ sits deep inside that vertex's normal
cone, i.e. when every row and column already prefers its pair by a margin of about τ over its competitors; a wrong
assignment is never such a point unless the scores are confidently wrong. So τ reads as the score margin the loss asks
for: the cross-entropy on Y*_τ stops pulling once the true pair leads each competitor by τ. :data:`TRAINING_DEFAULTS`
are the settings the parser trains with (τ = 0.5, α = 0.4, 30 steps of one warm-started Dykstra cycle; measured in
:func:`gradient_alive_rate` and ``hparse bench matching_quality``); inference keeps τ = 0 and the defaults below.

This module, top to bottom:

1. input handling shared by all solvers (batched ``(B, N, M)`` problems, padding masks);
2. the three closed-form projections and Dykstra's algorithm (Eq. 16): :func:`dykstra_projection`;
3. PGD (Eq. 15): :func:`pgd_iterates` and :func:`dykstra_matching`;
4. discrete solvers: :func:`hungarian_matching` (scipy, the exact optimum), :func:`greedy_matching` (the usual
   bottom-up pose baseline) and :func:`round_assignment` (relaxed Y → one-to-one assignment);
5. losses on assignment matrices: :func:`assignment_loss`;
6. quality measurement against the Hungarian optimum: :func:`random_problems`, :func:`optimality_rate`,
   :func:`accuracy_vs_iterations`; and of the training signal: :func:`random_targets`, :func:`gradient_alive_rate`.

Masks. A batch of problems of different sizes is padded to ``(B, N, M)``. ``mask`` says which entries are real,
in one of two forms: a bool tensor of ``A``'s shape (True = a real, allowed pair; any pattern works, not only
rectangles) or a pair ``(rows, cols)`` of integer lengths of shape ``(B,)`` (problem b is the top-left
``rows[b] × cols[b]`` block; ints for a 2-D ``A``). Entries outside the mask are never matched, get ``Y = 0`` and
receive no gradient, so a padded problem gives exactly the answer of the unpadded one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = [
    "dykstra_projection",
    "pgd_iterates",
    "dykstra_matching",
    "hungarian_matching",
    "greedy_matching",
    "round_assignment",
    "assignment_loss",
    "matching_weight",
    "random_problems",
    "optimality_rate",
    "accuracy_vs_iterations",
    "DEFAULT_ITERS",
    "DEFAULT_STEP",
    "DEFAULT_PROJ_ITERS",
    "TRAINING_DEFAULTS",
    "random_targets",
    "gradient_alive_rate",
]

Mask = torch.Tensor | tuple | list | None

# Defaults of dykstra_matching (why these values: see its docstring and accuracy_vs_iterations).
DEFAULT_ITERS = 300
DEFAULT_STEP = 1.0
DEFAULT_PROJ_ITERS = 1

#: The training-time relaxation: ``dykstra_matching(A, mask, **TRAINING_DEFAULTS)`` is exactly what the parser's
#: matching loss back-propagates through (module docstring, "Training through the matching"). τ = 0.5 is the score
#: margin the loss asks for (the inference threshold on limb scores is 0.7, so a true limb near 1 must beat its
#: competitors by half the range); α τ = 0.2 and 30 steps bring Y within 0.012 (max over 1000 problems of 3-8
#: candidates per side, 95th percentile 0.001) of the regularised optimum F_C(A/τ): at α τ = 1 every PGD step projects
#: the same point A/τ and the warm-started Dykstra cycles converge slowly (0.38 after 30 steps), smaller steps let the
#: damped PGD do the work; 15-20 steps are 0.03-0.16 away. 30 cycles instead of 300 also make it ten times cheaper.
TRAINING_DEFAULTS: dict = {"iters": 30, "step": 0.4, "proj_iters": 1, "warm_start": True, "polish": True, "tau": 0.5}


# ------------------------------------------------------------------------------------------ input handling


def _as_batch(A, mask: Mask, name: str = "A") -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate ``A``/``mask`` and return ``(A (B, N, M), valid (B, N, M) bool, was_2d)``."""
    if not isinstance(A, torch.Tensor):
        A = torch.as_tensor(np.asarray(A))
    if A.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be a score matrix (N, M) or a batch of them (B, N, M); got shape {tuple(A.shape)}"
        )
    if A.dtype == torch.bool or A.is_complex():
        raise TypeError(f"{name} must hold real scores; got dtype {A.dtype}")
    was_2d = A.dim() == 2
    A3 = A.unsqueeze(0) if was_2d else A
    if A3.is_floating_point() and A3.numel() and not bool(torch.isfinite(A3).all()):
        b, i, j = (int(v) for v in (~torch.isfinite(A3)).nonzero()[0])
        where = f"entry ({i}, {j})" if was_2d else f"problem {b}, entry ({i}, {j})"
        raise ValueError(f"{name} contains NaN or infinite scores (first at {where}: {A3[b, i, j].item()})")
    B, N, M = A3.shape
    if mask is None:
        valid = torch.ones(B, N, M, dtype=torch.bool, device=A3.device)
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = real entry) or a (rows, cols) pair; got {mask.dtype}")
        if tuple(mask.shape) != tuple(A.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(A.shape)}")
        valid = (mask.unsqueeze(0) if was_2d else mask).to(A3.device)
    elif isinstance(mask, (tuple, list)) and len(mask) == 2:
        rows = torch.as_tensor(mask[0], device=A3.device).reshape(-1).long()
        cols = torch.as_tensor(mask[1], device=A3.device).reshape(-1).long()
        if rows.numel() != B or cols.numel() != B:
            raise ValueError(
                f"mask lengths must have one entry per problem (B={B}); got {rows.numel()} rows and {cols.numel()} cols"
            )
        for what, lengths, limit in (("row", rows, N), ("column", cols, M)):
            bad = (lengths < 0) | (lengths > limit)
            if bool(bad.any()):
                b = int(bad.nonzero()[0])
                raise ValueError(f"mask {what} length {int(lengths[b])} of problem {b} is outside [0, {limit}]")
        r = torch.arange(N, device=A3.device)
        c = torch.arange(M, device=A3.device)
        valid = (r[None, :, None] < rows[:, None, None]) & (c[None, None, :] < cols[:, None, None])
    else:
        raise TypeError(
            "mask must be None, a bool tensor shaped like A, or a pair (rows, cols) of per-problem lengths; "
            f"got {type(mask).__name__}"
        )
    return A3, valid, was_2d


def _out(x: torch.Tensor, was_2d: bool) -> torch.Tensor:
    return x[0] if was_2d else x


def _work_dtype(A: torch.Tensor) -> torch.dtype:
    """Solve in at least float32: Dykstra's corrections lose too much in half precision."""
    if A.is_floating_point():
        return torch.promote_types(A.dtype, torch.float32)
    return torch.float32


# ------------------------------------------------------------------- the projection F_C (Eq. 16), Dykstra


class _Geometry:
    """The masked constraint structure of a batch: valid entries and how many per row/column."""

    def __init__(self, valid: torch.Tensor, dtype: torch.dtype):
        self.m = valid.to(dtype)  # (B, N, M) 1 on real entries
        # Each row constraint of C1 is a half-space ⟨1_row, Y⟩ ≤ 1 over that row's real entries only.
        self.row_count = self.m.sum(2, keepdim=True).clamp_min(1)  # (B, N, 1)
        self.col_count = self.m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, M)


def _project_rows(Z: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Projection onto C1 = {Y 1 ≤ 1}: a product of independent half-spaces, one per row.

    A row whose sum s exceeds 1 moves along the half-space normal (the row's all-ones vector) by the excess:
    every real entry loses (s − 1) / (number of real entries in the row). Rows inside the set are unchanged.
    """
    excess = (Z.sum(2, keepdim=True) - 1).clamp_min(0)  # (B, N, 1)
    return Z - (excess / g.row_count) * g.m


def _project_cols(Z: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Projection onto C2 = {Yᵀ1 ≤ 1}: the same half-space step, column by column."""
    excess = (Z.sum(1, keepdim=True) - 1).clamp_min(0)  # (B, 1, M)
    return Z - (excess / g.col_count) * g.m


def _project_nonneg(Z: torch.Tensor) -> torch.Tensor:
    """Projection onto C3 = {Y ≥ 0}: clamp at zero."""
    return Z.clamp_min(0)


def _dykstra_cycles(
    X: torch.Tensor,
    corrections: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    g: _Geometry,
    cycles: int,
    correct: bool = True,
    history: list | None = None,
):
    """Run ``cycles`` rounds of Dykstra's cyclic projection over (C1, C2, C3).

    State: the current point ``X`` and one correction per set (P, Q, R). Each sub-step adds the set's old
    correction back before projecting and stores what the projection removed, which is what makes the limit the
    *nearest* feasible point rather than just some feasible point (plain alternating projections, ``correct=False``).
    Invariant after every cycle: X = Z − P − Q − R, with Z the point being projected.
    """
    P, Q, R = corrections
    for _ in range(cycles):
        T = X + P if correct else X
        X = _project_rows(T, g)
        P = T - X
        if history is not None:
            history.append(X)
        T = X + Q if correct else X
        X = _project_cols(T, g)
        Q = T - X
        if history is not None:
            history.append(X)
        T = X + R if correct else X
        X = _project_nonneg(T)
        R = T - X
        if history is not None:
            history.append(X)
    return X, (P, Q, R)


def dykstra_projection(
    Z: torch.Tensor,
    mask: Mask = None,
    *,
    iters: int = 100,
    correct: bool = True,
    return_history: bool = False,
):
    """Project ``Z`` onto C1∩C2∩C3 (Eq. 16) with Dykstra's cyclic algorithm, from a cold start.

    Args:
        Z: (B, N, M) or (N, M) points to project.
        mask: real entries (see the module docstring); padded entries stay 0.
        iters: Dykstra cycles (each cycle projects onto C1, then C2, then C3).
        correct: ``False`` drops Dykstra's correction terms, giving plain cyclic (von Neumann / POCS) projections,
            which end at *a* feasible point but in general not the nearest one (shown in the chapter).
        return_history: also return the list of iterates after every sub-projection (3 per cycle), each shaped
            like ``Z``, starting with ``Z`` itself.

    Returns:
        The projection, shaped like ``Z`` (and the history when asked for). The last sub-step is the clamp, so the
        result is exactly ≥ 0; row/column sums exceed 1 by at most the remaining Dykstra error.
    """
    Z3, valid, was_2d = _as_batch(Z, mask, "Z")
    in_dtype = Z3.dtype
    dtype = _work_dtype(Z3)
    g = _Geometry(valid, dtype)
    Z3 = Z3.to(dtype) * g.m
    zeros = torch.zeros_like(Z3)
    history = [Z3] if return_history else None
    X, _ = _dykstra_cycles(Z3, (zeros, zeros, zeros), g, iters, correct=correct, history=history)
    X = _out(X.to(in_dtype) if in_dtype.is_floating_point else X, was_2d)
    if return_history:
        return X, [_out(h, was_2d) for h in history]
    return X


# ---------------------------------------------------------------------------------------- PGD (Eq. 15)


def pgd_iterates(
    A: torch.Tensor,
    mask: Mask = None,
    *,
    iters: int = DEFAULT_ITERS,
    step: float = DEFAULT_STEP,
    proj_iters: int = DEFAULT_PROJ_ITERS,
    warm_start: bool = True,
    tau: float = 0.0,
) -> Iterator[torch.Tensor]:
    """Yield the PGD iterates Y_1 … Y_iters of Eq. 15 (3-D, in the work dtype, not yet :func:`_polish`-ed).

    The engine of :func:`dykstra_matching`; exposed so that convergence curves and the accuracy–iterations
    trade-off read every iterate of one run instead of re-running the solver per iteration count. ``tau`` adds the
    strongly convex term (τ/2)‖Y‖² of the training relaxation (module docstring).
    """
    _check_solver_args(iters, step, proj_iters, tau)
    A3, valid, _ = _as_batch(A, mask)
    dtype = _work_dtype(A3)
    g = _Geometry(valid, dtype)
    A3 = A3.to(dtype) * g.m
    Y = torch.zeros_like(A3)  # Y_0 = 0 is feasible
    zeros = torch.zeros_like(A3)
    corrections = (zeros, zeros, zeros)
    for _ in range(iters):
        # gradient step on f(Y) = tr(−AᵀY) + (τ/2)‖Y‖²: ∇f = −A + τY (Eq. 15; τ = 0 is the paper's LP)
        Z = Y + step * (A3 - tau * Y) if tau else Y + step * A3
        if not warm_start:
            corrections = (zeros, zeros, zeros)
        # Dykstra resumes from X = Z − P − Q − R (its invariant), i.e. from its previous dual state.
        X = Z - corrections[0] - corrections[1] - corrections[2]
        Y, corrections = _dykstra_cycles(X, corrections, g, proj_iters)
        yield Y


def _check_solver_args(iters: int, step: float, proj_iters: int, tau: float = 0.0) -> None:
    if int(iters) != iters or iters < 0:
        raise ValueError(f"iters must be a non-negative integer; got {iters!r}")
    if int(proj_iters) != proj_iters or proj_iters < 1:
        raise ValueError(f"proj_iters must be a positive integer; got {proj_iters!r}")
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number; got {step!r}")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a non-negative finite number; got {tau!r}")
    if step * tau >= 2:
        raise ValueError(f"step * tau must be below 2 for PGD on the regularised problem to converge; got step={step}, "
                         f"tau={tau}")


def _polish(Y: torch.Tensor) -> torch.Tensor:
    """Make an (approximately) feasible Y exactly feasible by rescaling over-full rows, then over-full columns.

    Dividing a row by its sum only lowers column sums, and dividing columns afterwards only lowers row sums, so the
    result satisfies Eq. 14 exactly; it is the identity on an already feasible Y and keeps Y ≥ 0. Exact
    feasibility also means 0 ≤ Y ≤ 1, which a BCE/CE loss on Y needs.
    """
    Y = Y / Y.sum(2, keepdim=True).clamp_min(1)
    return Y / Y.sum(1, keepdim=True).clamp_min(1)


def dykstra_matching(
    A: torch.Tensor,
    mask: Mask = None,
    *,
    iters: int = DEFAULT_ITERS,
    step: float = DEFAULT_STEP,
    proj_iters: int = DEFAULT_PROJ_ITERS,
    warm_start: bool = True,
    polish: bool = True,
    tau: float = 0.0,
) -> torch.Tensor:
    """Relaxed maximum-weight bipartite matching by PGD with Dykstra projections (§3.3, Eqs. 13-16).

    Solves min_Y tr(−AᵀY) s.t. Y1 ≤ 1, Yᵀ1 ≤ 1, Y ≥ 0 for a whole batch at once: ``iters`` PGD steps
    Y ← F_C(Y + step·A) (Eq. 15) from Y = 0, each projection F_C (Eq. 16) done by ``proj_iters`` cycles of
    Dykstra's algorithm over the closed-form projections onto C1 (rows), C2 (columns) and C3 (orthant). Only
    elementwise operations and row/column sums are used, so the result is differentiable w.r.t. ``A`` through the
    unrolled iterations (autograd keeps about one tensor of ``A``'s size per Dykstra cycle, measured 1.14).

    Defaults (``iters=300, step=1.0, proj_iters=1, warm_start=True``) and why. The paper gives no values. Dykstra
    converges slowly from a cold start on 20×20 problems (hundreds of cycles per projection), but PGD projects a
    sequence of nearby points, so each projection is warm-started from the previous one's correction terms (its
    dual variables); this stays an exact Dykstra iteration for the new point and makes one cycle per PGD step the
    best use of a fixed budget of cycles. The step trades speed against stability: larger steps push Y towards a
    vertex faster but the single Dykstra cycle lags behind the larger jumps; 0.7–1.0 were best among 0.5–2 for
    scores in [0, 1] (2.0 loses 2 points at 100 steps). With these defaults the rounded solution
    (:func:`round_assignment`) is within 1% of the Hungarian optimum on 99.7–99.85% of random problems (2000
    problems per seed, N, M uniform in 1..20, scores uniform in [0, 1], float32); 200 steps give 99.3–99.5%,
    100 steps 97–98%. Cold-started Dykstra with 30 cycles per step reaches only 79–86% after 10–50 steps
    (300–1500 cycles), and 3 warm-started cycles per step need 300 cycles for 99.0%. Full square 20×20 problems
    are the hardest case (97.3% at 300 steps, 99.6% at 600); the parser's limb problems are mostly small and
    rectangular. Reproduce with :func:`accuracy_vs_iterations`. These are the inference settings; training uses
    :data:`TRAINING_DEFAULTS` (``tau > 0``), because at a vertex the gradient w.r.t. ``A`` vanishes (module docstring).

    Args:
        A: (B, N, M) or (N, M) connection scores, nominally in [0, 1] (any finite reals work; ``step`` is tuned for
            [0, 1]). NaN or infinite scores raise ``ValueError``.
        mask: real entries, a bool tensor like ``A`` or a ``(rows, cols)`` pair of lengths (module docstring).
        iters: PGD steps.
        step: PGD step size α.
        proj_iters: Dykstra cycles per projection.
        warm_start: resume each projection from the previous one's Dykstra corrections (``False``: restart them
            from zero each step, the textbook form of Eq. 16 inside Eq. 15).
        polish: rescale over-full rows/columns at the end so that the returned Y is exactly feasible
            (see :func:`_polish`; a no-op when the iteration has converged).
        tau: weight of the strongly convex term (τ/2)‖Y‖² added to Eq. 13 (0: the paper's LP). With ``tau > 0`` the
            PGD step is Y ← F_C(Y + α(A − τY)) and the iteration converges to F_C(A/τ), whose gradient w.r.t. ``A``
            does not vanish on wrong assignments (module docstring); ``step * tau`` must be below 2.

    Returns:
        Y, shaped like ``A``, in ``A``'s floating dtype (float32 for integer ``A``), 0 on masked entries.
    """
    A3, valid, was_2d = _as_batch(A, mask)
    _check_solver_args(iters, step, proj_iters, tau)
    dtype = _work_dtype(A3)
    if A3.numel() == 0 or iters == 0:
        Y = torch.zeros(A3.shape, dtype=dtype, device=A3.device) + 0 * A3.to(dtype)  # keeps autograd connected
    else:
        iterates = pgd_iterates(A3, valid, iters=iters, step=step, proj_iters=proj_iters, warm_start=warm_start,
                                 tau=tau)
        for Y_t in iterates:
            Y = Y_t  # only the last iterate is returned
        if polish:
            Y = _polish(Y)
    out_dtype = A.dtype if isinstance(A, torch.Tensor) and A.is_floating_point() else dtype
    return _out(Y.to(out_dtype), was_2d)


# ----------------------------------------------------------------------------------- discrete solvers


def _greedy(S: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Batched greedy matching on scores ``S`` (B, N, M): repeatedly take each problem's best free pair.

    Taking the maximum remaining pair and deleting its row and column, round after round, is exactly "sort all
    pairs by score and accept each whose endpoints are still free". Ties go to the first pair in row-major order.
    The loop runs over at most min(N, M) rounds, each a batched argmax, never over problems.
    """
    B, N, M = S.shape
    out = torch.zeros(B, N, M, dtype=torch.bool, device=S.device)
    if S.numel() == 0:
        return out
    S = S.detach().masked_fill(~valid, -math.inf)
    S = S.masked_fill(S <= threshold, -math.inf)  # pairs at or below the threshold are never taken
    batch = torch.arange(B, device=S.device)
    for _ in range(min(N, M)):
        best, flat = S.view(B, -1).max(1)
        take = torch.isfinite(best)
        if not bool(take.any()):
            break
        b, i, j = batch[take], (flat // M)[take], (flat % M)[take]
        out[b, i, j] = True
        S[b, i, :] = -math.inf
        S[b, :, j] = -math.inf
    return out


def greedy_matching(A: torch.Tensor, mask: Mask = None, threshold: float = 0.0) -> torch.Tensor:
    """Greedy matching, the usual bottom-up pose baseline (OpenPose/PersonLab-style limb assembly).

    Pairs are taken in decreasing score order whenever both endpoints are still free; pairs scoring at or below
    ``threshold`` are never taken. Not optimal in general: on [[0.9, 0.8], [0.8, 0.1]] it takes 0.9 + 0.1 = 1.0
    where 0.8 + 0.8 = 1.6 is possible (a greedy matching has at least half the optimal weight).

    Args:
        A: (B, N, M) or (N, M) scores. mask: real entries (module docstring). threshold: minimum score (exclusive).

    Returns:
        bool one-to-one assignment shaped like ``A``.
    """
    A3, valid, was_2d = _as_batch(A, mask)
    return _out(_greedy(A3, valid, threshold), was_2d)


def round_assignment(Y: torch.Tensor, mask: Mask = None, threshold: float = 0.0) -> torch.Tensor:
    """Round a relaxed assignment Y to a one-to-one assignment.

    Rule: greedy on Y — pairs are accepted in decreasing order of Y while both endpoints are free and
    Y > ``threshold``. At the LP optimum Y is integral and this returns its 1-entries; before convergence it
    prefers the pairs the relaxation has committed most mass to, and it always yields a valid matching (which a
    plain ``Y > 0.5`` test does not guarantee for an approximately feasible Y). With the default threshold 0 every
    pair carrying any mass may be used, mirroring the Hungarian solver, which keeps every positive-score pair it
    needs; ``threshold=0.5`` keeps only pairs that the relaxation commits to by a majority.

    Args:
        Y: (B, N, M) or (N, M) relaxed assignment (e.g. from :func:`dykstra_matching`).
        mask: real entries (module docstring). threshold: minimum Y (exclusive).

    Returns:
        bool one-to-one assignment shaped like ``Y``.
    """
    Y3, valid, was_2d = _as_batch(Y, mask, "Y")
    return _out(_greedy(Y3, valid, threshold), was_2d)


def hungarian_matching(A: torch.Tensor, mask: Mask = None, threshold: float = 0.0) -> torch.Tensor:
    """Exact maximum-weight matching among the pairs scoring above ``threshold`` (Eqs. 9-12).

    Each problem is solved by scipy's ``linear_sum_assignment(maximize=True)`` (a Jonker-Volgenant / Hungarian
    type solver, O(n³)) on its real entries, with pairs at or below the threshold given weight 0 and dropped
    afterwards. Because every kept weight is positive, this is the maximum-weight matching over the eligible pairs
    (not "the best full assignment, then filtered", which can be worse). Runs on the CPU, one problem at a time.

    Args:
        A: (B, N, M) or (N, M) scores. mask: real entries (module docstring).
        threshold: minimum score (exclusive); must be ≥ 0 (a maximum-weight matching never gains from a pair of
            non-positive weight).

    Returns:
        bool one-to-one assignment shaped like ``A``, on ``A``'s device.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 for a maximum-weight matching; got {threshold}")
    A3, valid, was_2d = _as_batch(A, mask)
    eligible = (valid & (A3 > threshold)).cpu().numpy()
    W = np.where(eligible, A3.detach().cpu().double().numpy(), 0.0)
    out = np.zeros(W.shape, dtype=bool)
    for b in range(W.shape[0]):
        rows = np.flatnonzero(eligible[b].any(1))
        cols = np.flatnonzero(eligible[b].any(0))
        if rows.size == 0:
            continue
        r, c = linear_sum_assignment(W[b][np.ix_(rows, cols)], maximize=True)
        keep = eligible[b, rows[r], cols[c]]
        out[b, rows[r[keep]], cols[c[keep]]] = True
    return _out(torch.from_numpy(out).to(A3.device), was_2d)


# ----------------------------------------------------------------------------------------------- losses


def assignment_loss(
    Y: torch.Tensor,
    target: torch.Tensor,
    mask: Mask = None,
    kind: str = "bce",
    *,
    pos_weight: float = 1.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Supervise a relaxed assignment Y with the ground-truth limb connections (§3.4: cross-entropy).

    ``target[b, i, j] = 1`` when joint candidates i and j belong to the same person. Kinds:

    - ``"bce"``: binary cross-entropy per real entry, ``−[t log Y + (1 − t) log(1 − Y)]``, averaged over real
      entries; ``pos_weight`` scales the positive term (positives are at most min(N, M) of N·M entries).
    - ``"ce"``: categorical cross-entropy per row and per column. Row i of a feasible Y is a distribution over its
      M candidates plus "unmatched" with mass 1 − Σ_j Y_ij; the loss is −log Y_ij for the true partner j, or
      −log(1 − Σ_j Y_ij) for a row without one. Columns likewise; averaged over real rows and columns.
    - ``"mse"``: squared error per real entry, averaged (the L2 variant).

    Y is clamped to [eps, 1 − eps] inside the logarithms. Returns a scalar; 0 (still attached to Y's graph) when
    there is no real entry.
    """
    Y3, valid, _ = _as_batch(Y, mask, "Y")
    t = torch.as_tensor(target, device=Y3.device)
    if tuple(t.shape) != tuple(Y.shape):
        raise ValueError(f"target shape {tuple(t.shape)} does not match Y shape {tuple(Y.shape)}")
    t = (t.unsqueeze(0) if t.dim() == 2 else t).to(Y3.dtype)
    if bool(((t != 0) & (t != 1)).any()):
        raise ValueError("target must be a 0/1 assignment matrix")
    m = valid.to(Y3.dtype)
    if kind == "bce":
        Yc = Y3.clamp(eps, 1 - eps)
        per = -(pos_weight * t * torch.log(Yc) + (1 - t) * torch.log1p(-Yc))
        return (per * m).sum() / m.sum().clamp_min(1)
    if kind == "mse":
        return ((Y3 - t) ** 2 * m).sum() / m.sum().clamp_min(1)
    if kind == "ce":
        Ym, tm = Y3 * m, t * m
        terms, count = [], 0
        for dim in (2, 1):  # rows, then columns
            has_partner = tm.sum(dim) > 0  # (B, N) or (B, M)
            real = valid.any(dim)
            p_true = (Ym * tm).sum(dim).clamp(eps, 1 - eps)
            p_none = (1 - Ym.sum(dim)).clamp(eps, 1 - eps)
            nll = -torch.where(has_partner, torch.log(p_true), torch.log(p_none))
            terms.append((nll * real).sum())
            count += int(real.sum())
        return (terms[0] + terms[1]) / max(count, 1)
    raise ValueError(f"unknown assignment loss kind {kind!r}; choose 'bce', 'ce' or 'mse'")


# ------------------------------------------------------------------------- quality against the optimum


def matching_weight(A: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Total score of the selected pairs: (B,) for (B, N, M) inputs, a scalar for (N, M)."""
    return (A * assignment.to(A.dtype)).sum((-2, -1))


def random_problems(
    num: int, *, min_size: int = 1, max_size: int = 20, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Random padded problems: N, M uniform in [min_size, max_size], scores uniform in [0, 1].

    Returns ``(A (num, max_size, max_size), (rows, cols))``, padded entries 0; the pair is a valid ``mask``.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(min_size, max_size + 1, (num,), generator=gen)
    cols = torch.randint(min_size, max_size + 1, (num,), generator=gen)
    A = torch.rand(num, max_size, max_size, generator=gen, dtype=torch.float64)
    r = torch.arange(max_size)
    valid = (r[None, :, None] < rows[:, None, None]) & (r[None, None, :] < cols[:, None, None])
    return (A * valid).to(dtype), (rows, cols)


def optimality_rate(
    A: torch.Tensor, assignment: torch.Tensor, optimum: torch.Tensor, tol: float = 0.01
) -> float:
    """Fraction of problems whose assignment weight is within ``tol`` (relative) of the optimal weight."""
    w = matching_weight(A.double(), assignment)
    return float((w >= (1 - tol) * optimum.double() - 1e-9).double().mean())


def accuracy_vs_iterations(
    iterations: Sequence[int] = (10, 20, 50, 100, 150, 200, 300, 400),
    *,
    num_problems: int = 2000,
    min_size: int = 1,
    max_size: int = 20,
    step: float = DEFAULT_STEP,
    proj_iters: int = DEFAULT_PROJ_ITERS,
    warm_start: bool = True,
    tol: float = 0.01,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    """The accuracy–iterations trade-off of :func:`dykstra_matching` on :func:`random_problems`.

    One PGD run up to ``max(iterations)``; at each requested iteration count the iterate is polished and rounded
    exactly as :func:`dykstra_matching` + :func:`round_assignment` would, and compared with the Hungarian optimum.

    Returns:
        dict with ``iterations``, ``cycles`` (Dykstra cycles = iterations × proj_iters), ``within_tol`` (fraction
        of problems within ``tol`` of the optimum), ``exact`` (fraction reaching the optimum weight to 1e-6),
        ``mean_ratio`` (mean weight / optimum), ``max_violation`` (largest constraint violation before polishing)
        and the settings.
    """
    checkpoints = sorted({int(i) for i in iterations})
    if not checkpoints or checkpoints[0] < 1:
        raise ValueError(f"iterations must be positive integers; got {list(iterations)}")
    A, lengths = random_problems(num_problems, min_size=min_size, max_size=max_size, seed=seed, dtype=dtype)
    A = A.to(device)
    _, valid, _ = _as_batch(A, lengths)
    optimum = matching_weight(A.double(), hungarian_matching(A, valid))
    opt_pos = optimum.clamp_min(1e-12)
    result = {"iterations": [], "cycles": [], "within_tol": [], "exact": [], "mean_ratio": [], "max_violation": []}
    wanted = set(checkpoints)
    iterates = pgd_iterates(
        A, valid, iters=checkpoints[-1], step=step, proj_iters=proj_iters, warm_start=warm_start
    )
    with torch.no_grad():
        for t, Y in enumerate(iterates, start=1):
            if t not in wanted:
                continue
            viol = torch.maximum((Y.sum(2) - 1).amax(1), (Y.sum(1) - 1).amax(1)).clamp_min(0)
            sel = round_assignment(_polish(Y), valid)
            w = matching_weight(A.double(), sel)
            result["iterations"].append(t)
            result["cycles"].append(t * proj_iters)
            result["within_tol"].append(float((w >= (1 - tol) * optimum - 1e-9).double().mean()))
            result["exact"].append(float((w >= optimum - 1e-6).double().mean()))
            result["mean_ratio"].append(float(torch.where(optimum > 0, w / opt_pos, torch.ones_like(w)).mean()))
            result["max_violation"].append(float(viol.max()))
    result.update(
        num_problems=num_problems, min_size=min_size, max_size=max_size, step=step, proj_iters=proj_iters,
        warm_start=warm_start, tol=tol, seed=seed, dtype=str(dtype).replace("torch.", ""),
    )
    return result



# --------------------------------------------------------------------------------- the training signal


def random_targets(lengths: tuple[torch.Tensor, torch.Tensor], size: int, *, seed: int = 0) -> torch.Tensor:
    """A random ground-truth assignment per problem: min(N, M) pairs, a random matching of rows to columns.

    Returns a 0/1 float tensor (B, size, size), zero outside each problem's ``rows × cols`` block.
    """
    rows, cols = (torch.as_tensor(x).reshape(-1) for x in lengths)
    gen = torch.Generator().manual_seed(seed)
    B = rows.numel()
    # a random permutation per problem, of the rows and of the columns, from sorting random keys
    row_rank = torch.rand(B, size, generator=gen).masked_fill(torch.arange(size) >= rows[:, None], 2).argsort(1)
    col_rank = torch.rand(B, size, generator=gen).masked_fill(torch.arange(size) >= cols[:, None], 2).argsort(1)
    pairs = torch.minimum(rows, cols)
    keep = torch.arange(size)[None] < pairs[:, None]  # the first min(N, M) of each permutation are paired
    T = torch.zeros(B, size, size)
    b = torch.arange(B)[:, None].expand(-1, size)
    T[b[keep], row_rank[keep], col_rank[keep]] = 1
    return T


def gradient_alive_rate(
    num_problems: int = 2000,
    *,
    min_size: int = 3,
    max_size: int = 8,
    seed: int = 0,
    tol: float = 1e-6,
    loss: str = "bce",
    device: torch.device | str = "cpu",
    **solver,
) -> dict:
    """How often a loss on the relaxed Y carries a gradient back to the scores when the answer is wrong.

    Draws :func:`random_problems` (N, M uniform in ``min_size..max_size``, scores uniform in [0, 1], float32) and a
    random ground-truth matching per problem (:func:`random_targets`), solves ``dykstra_matching(A, mask, **solver)``
    and back-propagates :func:`assignment_loss` (``loss``, summed over entries so that each problem's gradient does not
    shrink with the batch). A problem counts as *wrong* when ``round_assignment(Y)`` differs from its target, and as
    *alive* when some score's gradient exceeds ``tol`` in magnitude (an unrolled solver that has reached a vertex
    gives exactly 0).

    Returns:
        dict with ``alive_when_wrong`` (fraction of wrong problems with a gradient), ``wrong`` (how many),
        ``alive`` (fraction of all problems), ``median_grad_max`` (median over wrong problems of max |dL/dA|),
        ``within_1pct`` (fraction whose rounded Y is within 1% of the Hungarian weight: how close this relaxation's
        answer is to the LP's) and the settings.
    """
    A, lengths = random_problems(num_problems, min_size=min_size, max_size=max_size, seed=seed)
    T = random_targets(lengths, max_size, seed=seed + 1).to(device)
    A = A.to(device)
    _, valid, _ = _as_batch(A, lengths)
    scores = A.clone().requires_grad_(True)
    Y = dykstra_matching(scores, valid, **solver)
    count = valid.sum().clamp_min(1)
    (assignment_loss(Y, T, valid, kind=loss) * count).backward()
    with torch.no_grad():
        sel = round_assignment(Y.detach(), valid)
        wrong = (sel != T.bool()).flatten(1).any(1)
        grad_max = scores.grad.abs().flatten(1).amax(1)
        alive = grad_max > tol
        optimum = matching_weight(A.double(), hungarian_matching(A, valid))
        within = optimality_rate(A, sel, optimum)
    n_wrong = int(wrong.sum())
    return {
        "alive_when_wrong": float(alive[wrong].double().mean()) if n_wrong else 1.0,
        "wrong": n_wrong,
        "alive": float(alive.double().mean()),
        "median_grad_max": float(grad_max[wrong].median()) if n_wrong else 0.0,
        "within_1pct": within,
        "num_problems": num_problems, "min_size": min_size, "max_size": max_size, "seed": seed, "tol": tol,
        "loss": loss, "solver": {k: v for k, v in solver.items()},
    }
