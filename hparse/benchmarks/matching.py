"""Benchmark: batched differentiable matching (PGD + Dykstra) against per-problem Hungarian and batched greedy.

A bottom-up parser solves one small bipartite matching per limb type and image (§3.3 of the multi-granularity
parser: 19 COCO limbs × batch size problems per step). This benchmark times, for B problems of size n × n:

- ``dykstra``: :func:`hparse.ops.dykstra_matching` at its default settings on the whole batch at once, plus
  :func:`hparse.ops.round_assignment` to get assignments (``dykstra_s`` is solve + round);
- ``hungarian``: :func:`hparse.ops.hungarian_matching`, a Python loop calling scipy's ``linear_sum_assignment``
  per problem (on the CPU; the scores are copied there first when the device is CUDA);
- ``greedy``: :func:`hparse.ops.greedy_matching`, batched on the device;

and records each method's quality on the same problems (fraction within 1% of the Hungarian weight). It also times
one forward + backward pass of the Dykstra solver at a training-sized batch, at the training settings
(:data:`hparse.ops.matching.TRAINING_DEFAULTS`). Sizes follow the profile: ``smoke``
shrinks everything; ``cpu`` and ``gpu`` use 10×10 and 20×20 with B from 1 to 4096. CPU timings run with one torch
thread (scipy is single-threaded too, and the machine may be shared); the config records it.

:func:`quality` (``hparse bench matching_quality``, file ``bench/matching_quality``) measures the quality criteria
of the op rather than its speed:

- inference: on several seeds of random problems with N, M uniform in 1..20 (padded to 20 × 20 and masked), the
  fraction whose rounded Dykstra assignment is within 1% of the Hungarian weight, at the default settings and along
  the accuracy–iterations trade-off (:func:`hparse.ops.matching.accuracy_vs_iterations`);
- training: on random problems with 3-8 candidates per side and a random ground-truth matching, the fraction of
  problems whose rounded answer is wrong that still send a non-zero gradient of the assignment loss back to the scores
  (:func:`hparse.ops.matching.gradient_alive_rate`), at :data:`hparse.ops.matching.TRAINING_DEFAULTS` (the settings
  the parser trains with) beside the inference settings and fewer unregularised steps.

:func:`loss_cost` (``hparse bench matching_loss_cost``, file ``bench/matching_loss_cost``) measures what the matching
loss adds to a training step of the bottom-up parser (stage 2): full steps with the loss off and on, the same network.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from ..engine.profiles import Profile
from ..engine.results import write_result
from ..ops.matching import (
    DEFAULT_ITERS,
    DEFAULT_PROJ_ITERS,
    DEFAULT_STEP,
    TRAINING_DEFAULTS,
    accuracy_vs_iterations,
    dykstra_matching,
    gradient_alive_rate,
    greedy_matching,
    hungarian_matching,
    matching_weight,
    round_assignment,
)

# Profile name -> problem sides, batch sizes and the batch of the forward+backward timing.
SETTINGS: dict[str, dict] = {
    "smoke": {"sizes": (5, 10), "batches": (1, 8, 64), "train_batch": 16},
    "cpu": {"sizes": (10, 20), "batches": (1, 4, 16, 64, 256, 1024, 4096), "train_batch": 256},
    "gpu": {"sizes": (10, 20), "batches": (1, 4, 16, 64, 256, 1024, 4096), "train_batch": 256},
}


# Profile name -> seeds, problems per seed and the iteration counts of the trade-off (DEFAULT_ITERS is always added).
QUALITY_SETTINGS: dict[str, dict] = {
    "smoke": {"seeds": (0,), "num_problems": 100, "iterations": (10, 50)},
    "cpu": {"seeds": (0, 1, 2, 3, 4), "num_problems": 2000,
            "iterations": (10, 20, 50, 100, 150, 200, 300, 400, 600)},
    "gpu": {"seeds": tuple(range(10)), "num_problems": 2000,
            "iterations": (10, 20, 50, 100, 150, 200, 300, 400, 600)},
}
QUALITY_TARGET = 0.99  # the op's quality bar: within 1% of the optimum on at least 99% of problems, by default
QUALITY_MAX_SIZE = 20

# The training signal: problems per seed (the seeds are QUALITY_SETTINGS'), sizes, and the settings compared.
GRADIENT_PROBLEMS = {"smoke": 200, "cpu": 2000, "gpu": 2000}
GRADIENT_SIZES = (3, 8)
GRADIENT_TARGET = 0.95  # a wrong answer sends a gradient back on at least 95% of problems, at TRAINING_DEFAULTS
GRADIENT_VARIANTS: dict[str, dict] = {
    "inference_defaults": {},  # tau = 0, DEFAULT_ITERS steps: what the parser predicts with
    "lp_30_steps": {"iters": 30},
    "lp_10_steps": {"iters": 10},
    "training_defaults": dict(TRAINING_DEFAULTS),
    "training_converged": {**TRAINING_DEFAULTS, "iters": 1000},  # the regularised optimum itself
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, arg, device: torch.device, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn(arg)`` (after one untimed call) and the last output."""
    out = fn(arg)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(arg)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _forward_backward(A: torch.Tensor) -> torch.Tensor:
    A.grad = None
    dykstra_matching(A, **TRAINING_DEFAULTS).sum().backward()
    return A.grad


def _within(weight: torch.Tensor, optimum: torch.Tensor, tol: float = 0.01) -> float:
    return float((weight >= (1 - tol) * optimum - 1e-9).double().mean())


def run(profile: Profile, device: torch.device) -> dict:
    """Time the three solvers over the profile's sizes on ``device``; write ``results/<profile>/bench/matching``."""
    device = torch.device(device)
    settings = SETTINGS.get(profile.name, SETTINGS["cpu"])
    repeats = max(1, profile.bench_repeats)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    try:
        gen = torch.Generator().manual_seed(0)
        for n in settings["sizes"]:
            for B in settings["batches"]:
                A = torch.rand(B, n, n, generator=gen).to(device)
                t_solve, Y = _time(dykstra_matching, A, device, repeats)
                t_round, sel_d = _time(round_assignment, Y, device, repeats)
                t_hung, sel_h = _time(hungarian_matching, A, device, repeats)
                t_greedy, sel_g = _time(greedy_matching, A, device, repeats)
                optimum = matching_weight(A.double(), sel_h)
                rows.append({
                    "size": n,
                    "batch": B,
                    "dykstra_s": t_solve + t_round,
                    "dykstra_solve_s": t_solve,
                    "round_s": t_round,
                    "hungarian_loop_s": t_hung,
                    "greedy_s": t_greedy,
                    "hungarian_over_dykstra": t_hung / (t_solve + t_round),
                    "dykstra_within_1pct": _within(matching_weight(A.double(), sel_d), optimum),
                    "greedy_within_1pct": _within(matching_weight(A.double(), sel_g), optimum),
                })

        # One training step's matching cost: forward through the unrolled iterations (TRAINING_DEFAULTS), then
        # backward to A.
        train = []
        for n in settings["sizes"]:
            A = torch.rand(settings["train_batch"], n, n, generator=gen).to(device).requires_grad_(True)

            t_train, _ = _time(_forward_backward, A, device, repeats)
            train.append({"size": n, "batch": settings["train_batch"], "forward_backward_s": t_train})

        largest = [r for r in rows if r["batch"] == max(settings["batches"])]
        metrics = {
            "rows": rows,
            "train_step": train,
            # Headline numbers: the largest batch of each size.
            "largest_batch": {
                f"{r['size']}x{r['size']}": {
                    "batch": r["batch"],
                    "dykstra_s": r["dykstra_s"],
                    "hungarian_loop_s": r["hungarian_loop_s"],
                    "greedy_s": r["greedy_s"],
                    "hungarian_over_dykstra": r["hungarian_over_dykstra"],
                }
                for r in largest
            },
        }
        config = {
            "sizes": list(settings["sizes"]),
            "batches": list(settings["batches"]),
            "train_batch": settings["train_batch"],
            "train_step_dykstra": dict(TRAINING_DEFAULTS),
            "repeats": repeats,
            "timing": "median of repeats after one untimed call",
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "dykstra": {"iters": DEFAULT_ITERS, "step": DEFAULT_STEP, "proj_iters": DEFAULT_PROJ_ITERS,
                        "warm_start": True},
            "scores": "uniform in [0, 1], float32, seed 0",
            # CPU timings on a shared machine depend on what else runs; the 1-minute load average brackets the run.
            "load_average_1min": {"before": load_before,
                                  "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        }
        # Written before the thread count is restored, so the provenance names the setting that was timed.
        write_result("bench/matching", metrics, profile=profile.name, config=config,
                     wall_time_s=time.perf_counter() - started, device=device)
    finally:
        torch.set_num_threads(threads)
    return metrics


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "per_seed": values}


def quality(profile: Profile, device: torch.device, *, seeds=None, num_problems: int | None = None,
            iterations=None, root: str | Path | None = None) -> dict:
    """Optimality rate of the rounded Dykstra assignment; write ``results/<profile>/bench/matching_quality``.

    For each seed, :func:`~hparse.ops.matching.random_problems` draws ``num_problems`` problems with N, M uniform in
    1..20 and scores uniform in [0, 1] (float32, padded to 20 × 20, masked by their lengths), and
    :func:`~hparse.ops.matching.accuracy_vs_iterations` runs PGD once at the default step and Dykstra cycles per
    step, rounding at every requested iteration count exactly as ``round_assignment(dykstra_matching(A, mask))``
    does at that ``iters``. ``seeds``, ``num_problems`` and ``iterations`` default to the profile's
    :data:`QUALITY_SETTINGS`; ``root`` redirects the results folder (default ``$HPARSE_RESULTS`` or ``results/``).

    Returns:
        ``default``: the criterion at ``DEFAULT_ITERS`` — ``within_1pct`` (fraction over all problems), its
        ``per_seed`` spread, ``exact`` (fraction reaching the optimum), ``target`` and ``meets_target``;
        ``trade_off``: per iteration count, the pooled ``within_1pct``, its per-seed minimum and maximum, ``exact``,
        ``mean_ratio`` (mean weight / optimum) and ``max_violation`` (largest constraint violation before polish);
        ``training``: the gradient criterion (:func:`_training_signal`).
    """
    device = torch.device(device)
    settings = QUALITY_SETTINGS.get(profile.name, QUALITY_SETTINGS["cpu"])
    seeds = tuple(settings["seeds"] if seeds is None else seeds)
    num_problems = int(settings["num_problems"] if num_problems is None else num_problems)
    checkpoints = sorted({int(i) for i in (settings["iterations"] if iterations is None else iterations)}
                         | {DEFAULT_ITERS})
    if not seeds or num_problems < 1:
        raise ValueError(f"quality needs at least one seed and one problem; got seeds={seeds}, "
                         f"num_problems={num_problems}")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        runs = [accuracy_vs_iterations(checkpoints, num_problems=num_problems, max_size=QUALITY_MAX_SIZE, seed=seed,
                                       device=device) for seed in seeds]
        # Every seed has the same number of problems, so the pooled fraction is the mean over seeds.
        trade_off = {"iterations": checkpoints, "within_1pct": [], "within_1pct_min_seed": [],
                     "within_1pct_max_seed": [], "exact": [], "mean_ratio": [], "max_violation": []}
        for k in range(len(checkpoints)):
            within = [r["within_tol"][k] for r in runs]
            trade_off["within_1pct"].append(statistics.fmean(within))
            trade_off["within_1pct_min_seed"].append(min(within))
            trade_off["within_1pct_max_seed"].append(max(within))
            trade_off["exact"].append(statistics.fmean(r["exact"][k] for r in runs))
            trade_off["mean_ratio"].append(statistics.fmean(r["mean_ratio"][k] for r in runs))
            trade_off["max_violation"].append(max(r["max_violation"][k] for r in runs))
        d = checkpoints.index(DEFAULT_ITERS)
        default_within = [r["within_tol"][d] for r in runs]
        training = _training_signal(seeds, GRADIENT_PROBLEMS.get(profile.name, GRADIENT_PROBLEMS["cpu"]), device)
        metrics = {
            "default": {
                "iters": DEFAULT_ITERS,
                "within_1pct": statistics.fmean(default_within),
                "per_seed": _spread(default_within),
                "exact": trade_off["exact"][d],
                "target": QUALITY_TARGET,
                "meets_target": statistics.fmean(default_within) >= QUALITY_TARGET,
            },
            "trade_off": trade_off,
            "training": training,
        }
        config = {
            "seeds": list(seeds),
            "num_problems_per_seed": num_problems,
            "num_problems": num_problems * len(seeds),
            "sizes": f"N, M uniform in 1..{QUALITY_MAX_SIZE}, padded to {QUALITY_MAX_SIZE}x{QUALITY_MAX_SIZE} "
                     "and masked by their lengths",
            "scores": "uniform in [0, 1], float32",
            "tolerance": "weight >= 0.99 * Hungarian weight (relative 1%)",
            "rounding": "round_assignment (greedy on Y) after the final polish",
            "dykstra": {"iters": DEFAULT_ITERS, "step": DEFAULT_STEP, "proj_iters": DEFAULT_PROJ_ITERS,
                        "warm_start": True},
            "training": {"sizes": f"N, M uniform in {GRADIENT_SIZES[0]}..{GRADIENT_SIZES[1]}",
                         "problems_per_seed": GRADIENT_PROBLEMS.get(profile.name, GRADIENT_PROBLEMS["cpu"]),
                         "target": "a random one-to-one matching of min(N, M) pairs",
                         "loss": "assignment_loss kind 'bce', summed over entries",
                         "alive": "max |dL/dA| over the problem's scores > 1e-6",
                         "variants": GRADIENT_VARIANTS},
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
        }
        write_result("bench/matching_quality", metrics, profile=profile.name, config=config,
                     wall_time_s=time.perf_counter() - started, device=device,
                     root=Path(root) if root is not None else None)
    finally:
        torch.set_num_threads(threads)
    return metrics


def _training_signal(seeds, num_problems: int, device: torch.device) -> dict:
    """:func:`~hparse.ops.matching.gradient_alive_rate` per seed for each of :data:`GRADIENT_VARIANTS`.

    Returns ``{"alive_when_wrong": ..., "per_seed": spread, "target", "meets_target", "defaults": TRAINING_DEFAULTS,
    "variants": {name: {"alive_when_wrong", "alive_per_seed", "wrong", "median_grad_max", "within_1pct", "solver"}}}``
    where the headline numbers are those of ``training_defaults``.
    """
    lo, hi = GRADIENT_SIZES
    variants = {}
    for name, solver in GRADIENT_VARIANTS.items():
        runs = [gradient_alive_rate(num_problems, min_size=lo, max_size=hi, seed=seed, device=device, **solver)
                for seed in seeds]
        alive = [r["alive_when_wrong"] for r in runs]
        variants[name] = {
            "alive_when_wrong": statistics.fmean(alive),
            "alive_per_seed": _spread(alive),
            "wrong": sum(r["wrong"] for r in runs),
            "median_grad_max": statistics.median(r["median_grad_max"] for r in runs),
            "within_1pct": statistics.fmean(r["within_1pct"] for r in runs),
            "solver": {"iters": DEFAULT_ITERS, "step": DEFAULT_STEP, "proj_iters": DEFAULT_PROJ_ITERS, "tau": 0.0,
                       **solver},
        }
    head = variants["training_defaults"]
    return {
        "alive_when_wrong": head["alive_when_wrong"],
        "per_seed": head["alive_per_seed"],
        "target": GRADIENT_TARGET,
        "meets_target": head["alive_when_wrong"] >= GRADIENT_TARGET,
        "defaults": dict(TRAINING_DEFAULTS),
        "variants": variants,
    }


# ------------------------------------------------------------------------------- the matching loss in a step

#: The cases of :func:`loss_cost`: Assembly settings for the training-time detection (see its docstring).
LOSS_COST_CASES: dict[str, dict] = {
    "recipe_threshold": {},
    "low_threshold": {"keypoint_threshold": 0.3},
}


def _train_step(model, optimizer, images, targets, matching: bool, device: torch.device) -> float:
    """Seconds of one training step of the parser with its matching loss on or off."""
    model.matching_loss_on = matching
    _sync(device)
    tick = time.perf_counter()
    losses = model(images, targets)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    _sync(device)
    return time.perf_counter() - tick


def loss_cost(profile: Profile, device: torch.device, *, repeats: int | None = None,
              checkpoint: str | Path | None = None, root: str | Path | None = None) -> dict:
    """The share of a stage-2 training step spent on the matching loss; writes ``bench/matching_loss_cost``.

    The parser of the profile's recipe (``matching_loss=True``) trains on one batch of SynthCrowd train images at the
    recipe's batch size; each repeat times one full step (forward, backward, AdamW update at learning rate 0, so that
    every repeat sees the same weights) with the matching loss off and then on, the same network, the flag toggled.
    The share is ``(t_on − t_off) / t_on`` of the medians. Two cases:

    - ``recipe_threshold``: the recipe's detection threshold (the paper's 0.7);
    - ``low_threshold``: 0.3, which lets more (and more false) candidates of a half-trained detector through, and
      makes Hough voting score more projections exactly.

    The candidates are the detections plus the ground-truth joints that no detection stands for (the training rule),
    so their number is about the number of joints whatever the detector does; what the detector changes is the cost
    of Hough voting, which runs on every image in both cases and is included.

    ``checkpoint``: start from these weights, a stage-1 run of the same recipe, whose confident heatmaps are what
    stage 2 meets. Default: ``runs/mg_parser_synth_<profile>/checkpoint.pt`` (where ``hparse train --model mg_parser``
    puts it) when it exists, else the untrained network (whose flat disk heatmaps give no candidate). CPU timings use
    one torch thread and bracket the load average.
    """
    from ..data import SynthCrowd
    from ..engine.checkpoint import CHECKPOINT_NAME
    from ..engine.finetune import load_weights
    from ..engine.profiles import seed_everything
    from ..models import build_model
    from ..recipes import mg_parser_recipe

    device = torch.device(device)
    repeats = max(5, profile.bench_repeats) if repeats is None else repeats
    if checkpoint is None and Path(f"runs/mg_parser_synth_{profile.name}/{CHECKPOINT_NAME}").exists():
        checkpoint = f"runs/mg_parser_synth_{profile.name}/{CHECKPOINT_NAME}"
    plan = mg_parser_recipe(profile, matching_loss=True)
    batch_size = plan["train"]["batch_size"]
    data = SynthCrowd("train", num_images=batch_size, image_size=profile.image_size, min_people=1,
                      max_people=profile.max_people, seed=0)
    samples = [data[i] for i in range(batch_size)]
    images = [s["image"].to(device) for s in samples]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in samples]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    started = time.perf_counter()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cases = {}
    try:
        for name, settings in LOSS_COST_CASES.items():
            seed_everything(0)
            model = build_model("mg_parser", num_classes=20, **{**plan["model"], "backbone_weights": None}).to(device)
            if checkpoint is not None:
                loaded = load_weights(model, checkpoint)
            for key, value in settings.items():
                setattr(model.assembly, key, value)
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

            _train_step(model, optimizer, images, targets, False, device)  # warm-up
            _train_step(model, optimizer, images, targets, True, device)
            off, on = [], []
            for _ in range(repeats):
                off.append(_train_step(model, optimizer, images, targets, False, device))
                on.append(_train_step(model, optimizer, images, targets, True, device))
            with torch.no_grad():
                out = model.maps(model._batch(images))
                _, parts = model.matching_loss(out, [t["keypoints"] for t in targets], return_parts=True)
            t_off, t_on = statistics.median(off), statistics.median(on)
            cases[name] = {
                "step_s_without": t_off, "step_s_with": t_on, "share": (t_on - t_off) / t_on,
                "step_s_without_all": off, "step_s_with_all": on,
                "candidates_per_type": float(parts["valid"].sum(2).float().mean()),
                "padded_candidates": int(parts["valid"].shape[2]),
                "detected": int(parts["detected"]),
                "problems": int(parts["mask"].shape[0] * parts["mask"].shape[1]),
                "settings": settings,
            }
        model.matching_loss_on = True
        metrics = {"cases": cases, "share": max(c["share"] for c in cases.values()), "target": 0.15}
        metrics["meets_target"] = metrics["share"] <= metrics["target"]
        config = {
            "model": plan["model"], "batch_size": batch_size, "image_size": profile.image_size,
            "max_people": profile.max_people, "repeats": repeats, "timing": "median of interleaved repeats after one "
            "warm-up step each; a step is forward, backward and an AdamW update at lr 0",
            "matching": dict(TRAINING_DEFAULTS), "torch_threads": torch.get_num_threads(), "device": str(device),
            "weights": (f"{checkpoint} (step {loaded['step']})" if checkpoint is not None
                        else "untrained (the recipe's initialisation)"),
        }
        # CPU timings on a shared machine depend on what else runs; the 1-minute load average brackets the run.
        metrics["load_average_1min"] = {"before": load_before,
                                        "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        write_result("bench/matching_loss_cost", metrics, profile=profile.name, config=config,
                     wall_time_s=time.perf_counter() - started, device=device,
                     root=Path(root) if root is not None else None)
    finally:
        torch.set_num_threads(threads)
    return metrics
