"""Tests of hparse.ops.matching: PGD + Dykstra relaxation, Hungarian, greedy, rounding and losses."""

import itertools

import numpy as np
import pytest
import torch

from hparse.ops import assignment_loss, dykstra_matching, greedy_matching, hungarian_matching, round_assignment
from hparse.ops.matching import (
    TRAINING_DEFAULTS,
    accuracy_vs_iterations,
    dykstra_projection,
    gradient_alive_rate,
    matching_weight,
    optimality_rate,
    pgd_iterates,
    random_problems,
    random_targets,
)

TRAP = torch.tensor([[0.9, 0.8], [0.8, 0.1]])  # greedy takes 0.9 + 0.1, the optimum is 0.8 + 0.8


def violation(Y: torch.Tensor) -> float:
    """Largest violation of Y1 <= 1, Y^T 1 <= 1, Y >= 0."""
    return max(
        float((Y.sum(-1) - 1).max()), float((Y.sum(-2) - 1).max()), float((-Y).max()), 0.0
    )


def is_one_to_one(sel: torch.Tensor) -> bool:
    return bool((sel.sum(-1) <= 1).all() and (sel.sum(-2) <= 1).all())


def all_matchings(n: int, m: int):
    """Every matching of K_{n,m} as a 0/1 matrix: the vertices of the feasible polytope of Eq. 14."""
    pairs = [(i, j) for i in range(n) for j in range(m)]
    for k in range(min(n, m) + 1):
        for subset in itertools.combinations(pairs, k):
            rows = {i for i, _ in subset}
            cols = {j for _, j in subset}
            if len(rows) == k and len(cols) == k:
                V = torch.zeros(n, m, dtype=torch.float64)
                for i, j in subset:
                    V[i, j] = 1
                yield V


# ------------------------------------------------------------------------------- training through the matching


def test_training_defaults_keep_the_gradient_alive_on_wrong_answers():
    # The measurement: 3-8 candidates per side, a random ground-truth matching. At the inference settings the
    # unrolled PGD reaches a vertex and the gradient is exactly zero on most wrong problems; the training settings
    # must send a gradient back on at least 95% of them.
    trained = gradient_alive_rate(400, seed=5, **TRAINING_DEFAULTS)
    assert trained["wrong"] > 300
    assert trained["alive_when_wrong"] >= 0.95
    lp = gradient_alive_rate(400, seed=5)
    assert lp["alive_when_wrong"] < 0.5


def test_wrong_vertex_has_zero_gradient_in_the_lp_and_a_useful_one_with_tau():
    A = torch.tensor([[0.9, 0.6], [0.5, 0.8]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # the truth is the anti-diagonal; the scores prefer the diagonal
    Y = dykstra_matching(A)
    assert round_assignment(Y.detach()).tolist() == [[True, False], [False, True]]
    assignment_loss(Y, target).backward()
    assert float(A.grad.abs().max()) == 0.0  # converged onto the vertex: nothing to learn from
    A.grad = None
    Y = dykstra_matching(A, **TRAINING_DEFAULTS)
    loss = assignment_loss(Y, target)
    loss.backward()
    g = A.grad
    assert float(g.abs().max()) > 1e-3
    # descending the gradient raises the true pairs against the wrong ones
    assert float(g[0, 1]) < 0 and float(g[1, 0]) < 0 and float(g[0, 0]) > 0 and float(g[1, 1]) > 0
    with torch.no_grad():
        assert float(assignment_loss(dykstra_matching(A - 0.1 * g / g.abs().max(), **TRAINING_DEFAULTS), target)) < \
            float(loss)


def test_regularised_solution_is_the_projection_of_a_over_tau():
    # min -<A, Y> + tau/2 |Y|^2 over the polytope is F_C(A / tau); PGD with tau > 0 converges to it.
    A, lengths = random_problems(16, min_size=2, max_size=6, seed=8, dtype=torch.float64)
    for tau in (0.3, 0.5, 1.0):
        Y = dykstra_matching(A, lengths, iters=3000, step=0.2 / tau, tau=tau, polish=False)
        P = dykstra_projection(A / tau, lengths, iters=20000)
        torch.testing.assert_close(Y, P, atol=1e-6, rtol=0)
    Y = dykstra_matching(A, lengths, **{**TRAINING_DEFAULTS, "iters": 3000})
    P = dykstra_projection(A / TRAINING_DEFAULTS["tau"], lengths, iters=20000)
    torch.testing.assert_close(Y, P, atol=1e-6, rtol=0)
    # and the training settings are close to it after their 30 steps
    Y30 = dykstra_matching(A, lengths, **TRAINING_DEFAULTS)
    assert float((Y30 - P).abs().max()) < 0.05


def test_training_defaults_are_feasible_and_inference_unchanged():
    A, lengths = random_problems(64, max_size=8, seed=9)
    Y = dykstra_matching(A, lengths, **TRAINING_DEFAULTS)
    assert violation(Y) <= 1e-5 and float(Y.max()) <= 1 + 1e-5
    assert torch.equal(dykstra_matching(A, lengths), dykstra_matching(A, lengths, tau=0.0))


def test_tau_is_validated():
    A = torch.rand(3, 3)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            dykstra_matching(A, tau=bad)
    with pytest.raises(ValueError, match="step \\* tau"):
        dykstra_matching(A, step=4.0, tau=0.5)


def test_random_targets_are_matchings_of_min_size():
    A, lengths = random_problems(50, min_size=1, max_size=6, seed=2)
    T = random_targets(lengths, 6, seed=3)
    rows, cols = lengths
    assert torch.equal(T.sum((1, 2)), torch.minimum(rows, cols).float())
    assert bool((T.sum(1) <= 1).all() and (T.sum(2) <= 1).all())
    r = torch.arange(6)
    outside = ~((r[None, :, None] < rows[:, None, None]) & (r[None, None, :] < cols[:, None, None]))
    assert float(T[outside].abs().sum()) == 0


# ------------------------------------------------------------------------------------------ feasibility


def test_output_is_feasible_and_bounded():
    A, lengths = random_problems(64, max_size=12, seed=3)
    Y = dykstra_matching(A, lengths)
    assert Y.shape == A.shape and Y.dtype == torch.float32
    assert violation(Y) <= 1e-5
    assert float(Y.max()) <= 1 + 1e-5


def test_iterate_is_nearly_feasible_without_polish():
    A, lengths = random_problems(64, max_size=6, seed=4)
    Y = dykstra_matching(A, lengths, polish=False, iters=300)
    assert violation(Y) < 1e-3  # small problems converge; the polish only removes the remaining error


def test_dykstra_projection_is_the_nearest_feasible_point():
    # For X = Proj_C(Z) the variational inequality <Z - X, V - X> <= 0 holds for every V in C; C is the convex
    # hull of the matchings, so checking the matchings suffices.
    gen = torch.Generator().manual_seed(0)
    for n, m in [(2, 2), (2, 3), (3, 2)]:
        Z = 3 * torch.rand(n, m, generator=gen, dtype=torch.float64) - 1
        X = dykstra_projection(Z, iters=3000)
        assert violation(X) < 1e-8
        worst = max(float(((Z - X) * (V - X)).sum()) for V in all_matchings(n, m))
        assert worst < 1e-7


def test_plain_alternating_projection_is_feasible_but_not_nearest():
    # The 2x2 problem without the pair (1, 1): three variables, the polytope drawn in the chapter.
    Z = torch.tensor([[2.4, 1.5], [1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    X = dykstra_projection(Z, mask, iters=500)
    X_pocs = dykstra_projection(Z, mask, iters=500, correct=False)
    # By hand: on the face y01 = y10 = 1 - y00, minimise (y - 2.4)^2 + (y + 0.5)^2 + y^2, so y00 = 1.9 / 3.
    y = 1.9 / 3
    torch.testing.assert_close(X, torch.tensor([[y, 1 - y], [1 - y, 0.0]], dtype=torch.float64))
    assert violation(X_pocs) < 1e-9
    assert float((X_pocs - Z).norm()) > float((X - Z).norm()) + 0.1


def test_projection_history_has_three_substeps_per_cycle():
    Z = torch.tensor([[1.4, 1.2]])
    X, hist = dykstra_projection(Z, iters=4, return_history=True)
    assert len(hist) == 1 + 3 * 4
    torch.testing.assert_close(hist[0], Z)
    torch.testing.assert_close(hist[-1], X)


# ------------------------------------------------------------------------------------------- optimality


def test_matches_hungarian_on_small_problems():
    A, lengths = random_problems(300, max_size=6, seed=5, dtype=torch.float64)
    opt = matching_weight(A, hungarian_matching(A, lengths))
    sel = round_assignment(dykstra_matching(A, lengths), lengths)
    assert is_one_to_one(sel)
    exact = float((matching_weight(A, sel) >= opt - 1e-9).double().mean())
    assert exact >= 0.97
    assert optimality_rate(A, sel, opt, tol=0.01) >= 0.99


def test_quality_target_at_default_settings():
    A, lengths = random_problems(500, max_size=20, seed=11)
    opt = matching_weight(A.double(), hungarian_matching(A, lengths))
    sel = round_assignment(dykstra_matching(A, lengths), lengths)
    assert optimality_rate(A, sel, opt, tol=0.01) >= 0.99


def test_cold_started_converged_projection_reaches_the_default_assignment():
    # warm_start=False restarts Dykstra from zero at every PGD step; with enough cycles each projection has
    # converged, which is PGD with the exact projection of Eq. 16. It must round to the default solver's assignment.
    A, lengths = random_problems(8, max_size=6, seed=13, dtype=torch.float64)
    default = round_assignment(dykstra_matching(A, lengths), lengths)
    Y = dykstra_matching(A, lengths, iters=100, proj_iters=500, warm_start=False, polish=False)
    assert violation(Y) < 1e-6  # feasible without the polish: every projection converged
    assert round_assignment(Y, lengths).tolist() == default.tolist()
    assert default.tolist() == hungarian_matching(A, lengths).tolist()
    # Control: restarting from zero with a single cycle is no projection at all, so the flag does matter.
    Y1 = dykstra_matching(A, lengths, proj_iters=1, warm_start=False, polish=False)
    assert violation(Y1) > 0.1


def test_hungarian_is_optimal_by_enumeration():
    gen = torch.Generator().manual_seed(1)
    for n, m in [(1, 3), (3, 3), (2, 4), (4, 2)]:
        A = torch.rand(n, m, generator=gen, dtype=torch.float64)
        best = max(float((A * V).sum()) for V in all_matchings(n, m))
        assert float(matching_weight(A, hungarian_matching(A))) == pytest.approx(best)


def test_greedy_is_suboptimal_on_the_trap_case():
    g = greedy_matching(TRAP)
    h = hungarian_matching(TRAP)
    d = round_assignment(dykstra_matching(TRAP))
    assert g.tolist() == [[True, False], [False, True]]
    assert h.tolist() == [[False, True], [True, False]]
    assert d.tolist() == h.tolist()
    assert float(matching_weight(TRAP, g)) == pytest.approx(1.0)
    assert float(matching_weight(TRAP, h)) == pytest.approx(1.6)


def test_greedy_takes_pairs_in_score_order():
    A = torch.tensor([[0.5, 0.9, 0.1], [0.8, 0.7, 0.0], [0.2, 0.6, 0.3]])
    # 0.9 (0,1) first, then 0.8 (1,0), then the best free pair 0.3 (2,2)
    assert greedy_matching(A).nonzero().tolist() == [[0, 1], [1, 0], [2, 2]]


def test_round_assignment_is_one_to_one_on_any_input():
    Y = torch.rand(20, 7, 9, generator=torch.Generator().manual_seed(2)) * 3  # not feasible at all
    sel = round_assignment(Y)
    assert is_one_to_one(sel)
    assert int(sel.sum()) == 20 * 7  # greedy completes the matching on the smaller side


def test_round_assignment_recovers_an_integral_solution():
    Y = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert round_assignment(Y).tolist() == (Y > 0.5).tolist()


def test_batch_equals_problem_by_problem():
    A, lengths = random_problems(6, max_size=8, seed=7)
    Y = dykstra_matching(A, lengths, iters=50)
    for b in range(6):
        n, m = int(lengths[0][b]), int(lengths[1][b])
        torch.testing.assert_close(Y[b, :n, :m], dykstra_matching(A[b, :n, :m], iters=50), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("polish", [False, True])
def test_gradcheck_float64(polish):
    # Y is piecewise linear in A; few iterations keep the row/column sums away from the kinks at exactly 1,
    # which finite differences would straddle.
    A = torch.tensor([[0.7, 0.2, 0.4], [0.3, 0.9, 0.35]], dtype=torch.float64, requires_grad=True)
    fn = lambda a: dykstra_matching(a, iters=3, proj_iters=2, step=0.5, polish=polish)
    assert torch.autograd.gradcheck(fn, (A,), eps=1e-6, atol=1e-5)


def test_gradient_reaches_scores_and_skips_padding():
    A, lengths = random_problems(4, max_size=5, seed=8, dtype=torch.float64)
    A.requires_grad_(True)
    target = hungarian_matching(A.detach(), lengths)
    loss = assignment_loss(dykstra_matching(A, lengths, iters=10), target, lengths)
    loss.backward()
    valid = torch.zeros_like(A, dtype=torch.bool)
    for b in range(4):
        valid[b, : lengths[0][b], : lengths[1][b]] = True
    assert float(A.grad[valid].abs().sum()) > 0
    assert float(A.grad[~valid].abs().sum()) == 0


def test_learning_scores_through_the_matching():
    # Scores start at the greedy trap; supervising the relaxed assignment with the other permutation teaches A.
    A = TRAP.clone().double().requires_grad_(True)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    opt = torch.optim.SGD([A], lr=0.5)
    losses = []
    for _ in range(30):
        loss = assignment_loss(dykstra_matching(A, iters=10), target, kind="bce")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert round_assignment(dykstra_matching(A.detach())).tolist() == [[True, False], [False, True]]


# -------------------------------------------------------------------------------------- masks, padding


@pytest.mark.parametrize("form", ["bool", "lengths"])
def test_padded_problem_gives_the_unpadded_answer(form):
    gen = torch.Generator().manual_seed(9)
    small = torch.rand(3, 5, generator=gen)
    padded = torch.rand(2, 6, 8, generator=gen) * 5  # garbage in the padding must not matter
    padded[1, :3, :5] = small
    if form == "bool":
        mask = torch.zeros(2, 6, 8, dtype=torch.bool)
        mask[0] = True
        mask[1, :3, :5] = True
    else:
        mask = (torch.tensor([6, 3]), torch.tensor([8, 5]))
    Y = dykstra_matching(padded, mask)
    torch.testing.assert_close(Y[1, :3, :5], dykstra_matching(small), atol=1e-6, rtol=0)
    assert float(Y[1].sum() - Y[1, :3, :5].sum()) == 0
    for solver in (hungarian_matching, greedy_matching):
        sel = solver(padded, mask)
        assert sel[1].tolist() == torch.nn.functional.pad(solver(small), (0, 3, 0, 3)).tolist()
    sel = round_assignment(Y, mask)
    assert sel[1, 3:].sum() == 0 and sel[1, :, 5:].sum() == 0


def test_irregular_bool_mask_forbids_pairs():
    A = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    mask = torch.tensor([[False, True], [True, True]])  # the best pair (0, 0) is forbidden
    for sel in (hungarian_matching(A, mask), greedy_matching(A, mask), round_assignment(dykstra_matching(A, mask))):
        assert not sel[0, 0]
    assert dykstra_matching(A, mask)[0, 0] == 0


# ---------------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0), (3, 0, 5), (0, 2, 2)])
def test_empty_sides(shape):
    A = torch.rand(shape)
    Y = dykstra_matching(A)
    assert Y.shape == A.shape
    for sel in (round_assignment(Y), hungarian_matching(A), greedy_matching(A)):
        assert sel.shape == A.shape and sel.dtype == torch.bool and int(sel.sum()) == 0


def test_all_zero_scores_match_nothing():
    A = torch.zeros(2, 4, 3)
    Y = dykstra_matching(A)
    assert float(Y.abs().max()) == 0
    for sel in (round_assignment(Y), hungarian_matching(A), greedy_matching(A)):
        assert int(sel.sum()) == 0


@pytest.mark.parametrize("n,m", [(3, 7), (7, 3), (1, 5)])
def test_rectangular_problems(n, m):
    A = torch.rand(n, m, generator=torch.Generator().manual_seed(n * 10 + m)) + 0.05
    for sel in (round_assignment(dykstra_matching(A)), hungarian_matching(A), greedy_matching(A)):
        assert sel.shape == (n, m) and is_one_to_one(sel) and int(sel.sum()) == min(n, m)


def test_nan_scores_raise():
    A = torch.rand(2, 3, 3)
    A[1, 2, 0] = float("nan")
    for fn in (dykstra_matching, hungarian_matching, greedy_matching, round_assignment):
        with pytest.raises(ValueError, match=r"NaN.*problem 1, entry \(2, 0\)"):
            fn(A)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), ()])
def test_wrong_dims_raise(shape):
    for fn in (dykstra_matching, hungarian_matching, greedy_matching, round_assignment):
        with pytest.raises(ValueError, match="score matrix"):
            fn(torch.rand(shape))


def test_bad_masks_and_arguments_raise():
    A = torch.rand(2, 3, 3)
    with pytest.raises(TypeError, match="bool"):
        dykstra_matching(A, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="does not match"):
        dykstra_matching(A, torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="problem 1"):
        dykstra_matching(A, (torch.tensor([3, 4]), torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="one entry per problem"):
        dykstra_matching(A, (torch.tensor([3]), torch.tensor([3])))
    with pytest.raises(ValueError, match="step"):
        dykstra_matching(A, step=0.0)
    with pytest.raises(ValueError, match="proj_iters"):
        dykstra_matching(A, proj_iters=0)


def test_dtypes():
    A = torch.rand(3, 4, dtype=torch.float64)
    assert dykstra_matching(A).dtype == torch.float64
    assert dykstra_matching(torch.ones(2, 2, dtype=torch.int64)).dtype == torch.float32
    assert dykstra_matching(np.full((2, 2), 0.5)).shape == (2, 2)


# -------------------------------------------------------------------------------------------- thresholds


def test_threshold_drops_pairs_at_or_below_it():
    A = torch.tensor([[0.9, 0.8], [0.8, 0.1]])
    assert hungarian_matching(A, threshold=0.8).nonzero().tolist() == [[0, 0]]
    assert greedy_matching(A, threshold=0.8).nonzero().tolist() == [[0, 0]]
    assert hungarian_matching(A, threshold=0.79).nonzero().tolist() == [[0, 1], [1, 0]]
    assert greedy_matching(A, threshold=0.95).sum() == 0
    assert round_assignment(torch.tensor([[0.6, 0.4], [0.4, 0.6]]), threshold=0.5).nonzero().tolist() == [
        [0, 0],
        [1, 1],
    ]


def test_hungarian_threshold_optimises_over_eligible_pairs():
    # The best full assignment is 0.7 + 0.45; dropping 0.45 afterwards would leave 0.7 < 1.0.
    A = torch.tensor([[1.0, 0.7], [0.45, 0.0]])
    assert hungarian_matching(A).nonzero().tolist() == [[0, 1], [1, 0]]
    assert hungarian_matching(A, threshold=0.5).nonzero().tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="threshold"):
        hungarian_matching(A, threshold=-0.1)


# ---------------------------------------------------------------------------------------------- losses


def test_bce_and_mse_values():
    Y = torch.tensor([[0.8, 0.1], [0.2, 0.6]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(assignment_loss(Y, t), torch.nn.functional.binary_cross_entropy(Y, t))
    torch.testing.assert_close(assignment_loss(Y, t, kind="mse"), ((Y - t) ** 2).mean())
    mask = torch.tensor([[True, True], [False, False]])
    torch.testing.assert_close(
        assignment_loss(Y, t, mask), torch.nn.functional.binary_cross_entropy(Y[0], t[0])
    )


def test_ce_value_by_hand():
    Y = torch.tensor([[0.7, 0.2, 0.0], [0.1, 0.3, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1, 0, 0], [0, 0, 0]])
    # rows: -log 0.7 (matched to col 0), -log(1 - 0.4) (unmatched);
    # cols: -log 0.7, -log(1 - 0.5), -log(1 - 0) (unmatched)
    expected = -(np.log(0.7) + np.log(0.6) + np.log(0.7) + np.log(0.5) + np.log(1 - 1e-6)) / 5
    assert float(assignment_loss(Y, t, kind="ce")) == pytest.approx(expected, rel=1e-6)


def test_loss_errors_and_empty():
    Y = torch.rand(2, 2)
    with pytest.raises(ValueError, match="kind"):
        assignment_loss(Y, torch.eye(2), kind="focal")
    with pytest.raises(ValueError, match="0/1"):
        assignment_loss(Y, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="target shape"):
        assignment_loss(Y, torch.eye(3))
    Y0 = torch.zeros(0, 3, requires_grad=True)
    for kind in ("bce", "ce", "mse"):
        loss = assignment_loss(Y0, torch.zeros(0, 3), kind=kind)
        assert loss.item() == 0
        loss.backward()


# ---------------------------------------------------------------------------------------- trade-off


def test_accuracy_vs_iterations_improves_with_iterations():
    r = accuracy_vs_iterations((5, 300), num_problems=150, max_size=10, seed=1)
    assert r["iterations"] == [5, 300] and r["cycles"] == [5, 300]
    assert r["within_tol"][1] > r["within_tol"][0]
    assert r["within_tol"][1] >= 0.98
    assert r["max_violation"][1] < r["max_violation"][0]


def test_pgd_iterates_yields_every_step():
    A = torch.rand(2, 3, 3)
    iterates = list(pgd_iterates(A, iters=7))
    assert len(iterates) == 7
    torch.testing.assert_close(dykstra_matching(A, iters=7, polish=False), iterates[-1])


def test_quality_benchmark_smoke(tmp_results):
    from hparse.benchmarks import BENCHMARKS, run_benchmark
    from hparse.benchmarks.matching import QUALITY_SETTINGS
    from hparse.engine import get_profile, load_result
    from hparse.ops.matching import DEFAULT_ITERS

    assert "matching_quality" in BENCHMARKS
    metrics = run_benchmark("matching_quality", get_profile("smoke"), torch.device("cpu"))
    assert set(metrics) == {"default", "trade_off", "training"}
    default, trade = metrics["default"], metrics["trade_off"]
    training = metrics["training"]
    assert training["defaults"] == TRAINING_DEFAULTS
    assert training["meets_target"] == (training["alive_when_wrong"] >= training["target"])
    assert training["alive_when_wrong"] == training["variants"]["training_defaults"]["alive_when_wrong"]
    # the regularised relaxation keeps the gradient that the converged LP loses
    assert training["variants"]["training_defaults"]["alive_when_wrong"] >= 0.95
    assert training["variants"]["inference_defaults"]["alive_when_wrong"] < 0.5
    settings = QUALITY_SETTINGS["smoke"]
    assert trade["iterations"] == sorted({*settings["iterations"], DEFAULT_ITERS})
    for key in ("within_1pct", "within_1pct_min_seed", "within_1pct_max_seed", "exact", "mean_ratio"):
        assert len(trade[key]) == len(trade["iterations"])
        assert all(0.0 <= v <= 1.0 + 1e-12 for v in trade[key]), key  # a rounded weight never beats the optimum
    assert all(lo <= v <= hi for lo, v, hi in zip(trade["within_1pct_min_seed"], trade["within_1pct"],
                                                   trade["within_1pct_max_seed"]))
    assert default["iters"] == DEFAULT_ITERS and 0.0 <= default["within_1pct"] <= 1.0
    assert default["within_1pct"] == trade["within_1pct"][trade["iterations"].index(DEFAULT_ITERS)]
    assert len(default["per_seed"]["per_seed"]) == len(settings["seeds"])
    assert default["meets_target"] == (default["within_1pct"] >= default["target"])
    # The measured fractions are those the op itself gives: round_assignment(dykstra_matching(A, mask, iters=...)).
    (seed,) = settings["seeds"]
    A, lengths = random_problems(settings["num_problems"], max_size=20, seed=seed)
    opt = matching_weight(A.double(), hungarian_matching(A, lengths))
    for iters, within in zip(trade["iterations"], trade["within_1pct"]):
        sel = round_assignment(dykstra_matching(A, lengths, iters=iters), lengths)
        assert within == optimality_rate(A, sel, opt, tol=0.01), iters
    assert trade["within_1pct"][0] < default["within_1pct"]  # 10 steps are too few: the trade-off is visible
    record = load_result("bench/matching_quality", "smoke", root=tmp_results)
    assert record["metrics"]["default"]["within_1pct"] == default["within_1pct"]
    assert record["config"]["num_problems"] == settings["num_problems"] * len(settings["seeds"])


def test_quality_benchmark_writes_under_root(tmp_path):
    from hparse.benchmarks.matching import quality
    from hparse.engine import get_profile, load_result
    from hparse.ops.matching import DEFAULT_ITERS

    metrics = quality(get_profile("smoke"), "cpu", seeds=(3, 4), num_problems=20, iterations=(5,), root=tmp_path)
    assert metrics["trade_off"]["iterations"] == [5, DEFAULT_ITERS]
    assert metrics["default"]["per_seed"]["min"] <= metrics["default"]["within_1pct"]
    assert load_result("bench/matching_quality", "smoke", root=tmp_path)["config"]["seeds"] == [3, 4]
    with pytest.raises(ValueError, match="seed"):
        quality(get_profile("smoke"), "cpu", seeds=(), root=tmp_path)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    A, lengths = random_problems(32, max_size=10, seed=12)
    Y_cpu = dykstra_matching(A, lengths)
    Y_gpu = dykstra_matching(A.cuda(), (lengths[0].cuda(), lengths[1].cuda()))
    torch.testing.assert_close(Y_gpu.cpu(), Y_cpu, atol=1e-4, rtol=0)
    assert round_assignment(Y_gpu, (lengths[0].cuda(), lengths[1].cuda())).is_cuda
    assert greedy_matching(A.cuda()).cpu().tolist() == greedy_matching(A).tolist()
