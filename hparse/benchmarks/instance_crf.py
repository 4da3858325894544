"""Benchmark: the Instance CRF's fast pairwise path against the exact dense one, and its cost at full size.

Inputs are real SynthCrowd images (patterns, blur, noise: the colour statistics the appearance kernel sees) with
category-level probabilities made from the ground truth (:func:`simulated_inputs`: softened labels plus spatially
smooth noise) and jittered ground-truth boxes, so no trained network is needed. Two measurements:

- ``small``: at 64×64 (smoke: 32×32), D people of SynthCrowd and P = 19 CIHP parts, 5 mean-field iterations:
  wall time of ``method="exact"`` and ``method="fast"``, and the fast path's error against exact — max and mean
  |ΔQ| over all labels and pixels, and the fraction of pixels whose arg-max label differs — for the default grid
  stride and for forced strides 1, 2, 4, 8, with normalised (default) and unnormalised kernels.
- ``large``: ``method="fast"`` at 512×512 (smoke: 96×96) with D = 1, 4, 16 (smoke: 1, 4) and P = 20, 5
  iterations, without gradients. On a CPU every size runs once (a 512×512, D = 16 run takes minutes there); on a
  GPU the median of the profile's repeats after one warm-up run.
- ``vs_densecrf``: ``method="lattice"`` and ``method="fast"`` against Krähenbühl's permutohedral-lattice dense CRF
  (``pydensecrf``, the benchmark-only ``bench`` extra) on the same problem: a SynthCrowd image at 256×256 and 512×512
  (smoke: 48×48), D = 4 boxes, P = 20 parts (81 labels), 5 iterations, the same unary (``-log`` of the Instance CRF's
  unary probabilities, i.e. ``instance_crf(iters=0)``) and the same kernels (θα = 49, θβ = 5, θγ = 3;
  ``addPairwiseGaussian(sxy=3, compat=3)``, ``addPairwiseBilateral(sxy=49, srgb=5, compat=4)``). Wall time of each,
  once per size, with 1 and with 2 torch threads (``pydensecrf`` is single-threaded; it is timed again in each
  setting, so every ratio compares runs made side by side), and the speed-up ``densecrf_s / hparse_s``; ``breakdown``
  splits each side's time: hparse's per-image build of the lattice path and one mean-field iteration's messages,
  pydensecrf's setup (its two lattices) and its inference. Numerically, the hparse paths are compared with
  ``method="exact"`` at 64×64 (32×32 in smoke; exact stores N×N kernels, so not at full size) — max / mean |ΔQ| and
  the share of pixels whose arg-max label differs — and with each other at full size (lattice against fast).
  ``pydensecrf``'s output is *not* the same function: it normalises its kernels symmetrically (``1/sqrt(n_k n_m)``)
  and keeps the pixel's own term, where the Instance CRF averages over m ≠ k, so only its arg-max agreement with the
  lattice path is recorded, as a sanity check. Without ``pydensecrf`` the record says ``"densecrf": "not installed"``.
  The 1-minute load average before and after is recorded: the CPU may be shared, so only ratios measured in one run
  count.

:func:`simulated_inputs` is also what the Instance CRF chapter uses to build its inputs.
"""

from __future__ import annotations

import os
import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from ..data import SynthCrowd
from ..engine.profiles import Profile
from ..engine.results import write_result
from ..ops.instance_crf import THETA_ALPHA, THETA_BETA, THETA_GAMMA, CRFOptions, crf_channel, instance_crf
from ..ops.instance_crf.kernels import message_kernels

__all__ = ["simulated_inputs", "run", "SETTINGS"]

SETTINGS: dict[str, dict] = {
    "smoke": {"small": 32, "large": 96, "detections": (1, 4), "people": 2, "versus": (48,), "threads": (1,)},
    "cpu": {"small": 64, "large": 512, "detections": (1, 4, 16), "people": 4, "versus": (256, 512),
            "threads": (1, 2)},
    "gpu": {"small": 64, "large": 512, "detections": (1, 4, 16), "people": 4, "versus": (256, 512),
            "threads": (1, 2)},
}
# The vs_densecrf problem: D boxes, P parts, kernels as the Instance CRF defaults (options.py).
VERSUS_DETECTIONS = 4
VERSUS_PARTS = 20
ITERS = 5
STRIDES = (1, 2, 4, 8)


def simulated_inputs(
    sample: dict,
    num_classes: int,
    *,
    sharpness: float = 3.0,
    noise: float = 0.6,
    blur: int = 5,
    noise_stride: int = 8,
    box_jitter: float = 0.08,
    score_range: tuple[float, float] = (0.7, 1.0),
    truncate: tuple[int, float] | None = None,
    false_positive: float | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Instance-CRF inputs made from a ground-truth sample, standing in for a segmentation network and a detector.

    Args:
        sample: a data-contract dict (``image``, ``semantic``, ``boxes``).
        num_classes: P + 1 channels of Q (may exceed the labels present).
        sharpness: logit given to the true label after blurring the one-hot map (higher = more confident Q).
        noise: std of the spatially smooth logit noise (Gaussian noise drawn on a grid ``noise_stride`` times
            coarser, upsampled bilinearly), which makes Q wrong in blobs as a network is.
        blur: side of the box filter applied to the one-hot labels (soft edges); 1 disables it.
        box_jitter: std of each box coordinate's noise, as a fraction of the box's width/height.
        score_range: detection scores are uniform in this range.
        truncate: ``(k, keep)`` cuts box k (0-based) to its top ``keep`` fraction of height, like a detector that
            covers only part of a person (paper Fig. 4, first row).
        false_positive: add a box on the emptiest background region with this score (paper Fig. 4, second row).
        seed: seeds all the noise.

    Returns:
        dict with ``Q`` (P+1, H, W), ``boxes`` (D, 4) clipped to the image, ``scores`` (D,), and ``false_positive``
        (index of the added box, or -1).
    """
    g = torch.Generator().manual_seed(seed)
    sem = sample["semantic"].clone()
    height, width = sem.shape
    sem[sem == 255] = 0
    onehot = F.one_hot(sem, num_classes).permute(2, 0, 1).float()
    if blur > 1:
        onehot = F.avg_pool2d(onehot[None], blur, stride=1, padding=blur // 2, count_include_pad=False)[0]
    coarse = torch.randn(num_classes, -(-height // noise_stride), -(-width // noise_stride), generator=g)
    smooth = F.interpolate(coarse[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    Q = torch.softmax(sharpness * onehot + noise * smooth, dim=0)

    boxes = sample["boxes"].clone().float()
    if boxes.numel():
        size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).repeat(1, 2)
        boxes = boxes + box_jitter * size * torch.randn(boxes.shape, generator=g)
    if truncate is not None and boxes.shape[0] > truncate[0]:
        k, keep = truncate
        boxes[k, 3] = boxes[k, 1] + keep * (boxes[k, 3] - boxes[k, 1])
    low, high = score_range
    scores = low + (high - low) * torch.rand(boxes.shape[0], generator=g)
    fp_index = -1
    if false_positive is not None:
        # The background window (a quarter of the image side) with the fewest person pixels.
        side = max(4, min(height, width) // 4)
        person = (sample["instances"] > 0).float()[None, None]
        crowd = F.avg_pool2d(person, side, stride=max(1, side // 4))[0, 0]
        flat = int(torch.argmin(crowd))
        y0, x0 = divmod(flat, crowd.shape[1])
        y0, x0 = y0 * max(1, side // 4), x0 * max(1, side // 4)
        fp_box = torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32)
        boxes = torch.cat([boxes, fp_box])
        scores = torch.cat([scores, torch.tensor([false_positive])])
        fp_index = boxes.shape[0] - 1
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    # Keep every box at least 2 pixels wide after jitter and clipping (the op refuses degenerate boxes).
    boxes[:, 2] = torch.maximum(boxes[:, 2], (boxes[:, 0] + 2).clamp(max=width))
    boxes[:, 0] = torch.minimum(boxes[:, 0], boxes[:, 2] - 2)
    boxes[:, 3] = torch.maximum(boxes[:, 3], (boxes[:, 1] + 2).clamp(max=height))
    boxes[:, 1] = torch.minimum(boxes[:, 1], boxes[:, 3] - 2)
    return {"Q": Q, "boxes": boxes, "scores": scores.float(), "false_positive": fp_index}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int, warmup: bool) -> tuple[float, torch.Tensor]:
    if warmup:
        fn()
        _sync(device)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _small(settings: dict, device: torch.device, repeats: int) -> dict:
    side = settings["small"]
    people = settings["people"]
    ds = SynthCrowd(split="val", num_images=1, image_size=side, min_people=people, max_people=people, seed=0)
    sample = ds[0]
    num_classes = ds.labels.num_classes
    inputs = simulated_inputs(sample, num_classes, seed=0)
    args = [t.to(device) for t in (inputs["Q"], inputs["boxes"], inputs["scores"], sample["image"])]
    out: dict = {"size": side, "num_detections": int(args[1].shape[0]), "num_parts": num_classes - 1,
                 "iters": ITERS}
    for normalize in (False, True):
        key = "normalized" if normalize else "unnormalized"
        with torch.no_grad():
            t_exact, exact = _timed(partial(instance_crf, *args, iters=ITERS, method="exact", normalize=normalize),
                                    device, repeats, warmup=device.type == "cuda")
            t_fast, fast = _timed(partial(instance_crf, *args, iters=ITERS, method="fast", normalize=normalize),
                                  device, repeats, warmup=device.type == "cuda")
            errors = {}
            for stride in (None, *STRIDES):
                approx = fast if stride is None else instance_crf(*args, iters=ITERS, method="fast", app_stride=stride,
                                                                  normalize=normalize)
                diff = (approx - exact).abs()
                errors["default" if stride is None else f"stride{stride}"] = {
                    "max_abs": float(diff.max()),
                    "mean_abs": float(diff.mean()),
                    "argmax_disagree": float((approx.argmax(0) != exact.argmax(0)).float().mean()),
                }
        out[key] = {"exact_s": t_exact, "fast_s": t_fast, "speedup": t_exact / t_fast, "error": errors}
    return out


def _large(settings: dict, device: torch.device, repeats: int) -> dict:
    side = settings["large"]
    num_parts = 20
    ds = SynthCrowd(split="val", num_images=1, image_size=side, min_people=4, max_people=8, seed=0)
    sample = ds[0]
    inputs = simulated_inputs(sample, num_parts + 1, seed=0)
    base = inputs["boxes"]
    out: dict = {"size": side, "num_parts": num_parts, "iters": ITERS, "runs": {}}
    for num_det in settings["detections"]:
        # Reuse the image's jittered boxes, cycling through them with a small shift to reach D.
        index = torch.arange(num_det) % base.shape[0]
        shift = (torch.arange(num_det) // base.shape[0]).float()[:, None] * 2.0
        boxes = base[index] + shift
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, side - 2)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, side - 2)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
        scores = torch.linspace(0.95, 0.6, num_det)
        args = [t.to(device) for t in (inputs["Q"], boxes, scores, sample["image"])]
        with torch.no_grad():
            seconds, prob = _timed(partial(instance_crf, *args, iters=ITERS), device, repeats,
                                   warmup=device.type == "cuda")
        run = {"fast_s": seconds, "labels": int(prob.shape[0]), "per_iteration_s": seconds / ITERS}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            with torch.no_grad():
                instance_crf(*args, iters=ITERS)
            run["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["runs"][f"D{num_det}"] = run
        del prob
    # The channel of (detection 1, part 1), to show the label layout in the record.
    out["channel_of_detection1_part1"] = crf_channel(1, 1, num_parts)
    return out


def _densecrf():
    """``(pydensecrf.densecrf, "distribution version")``, or ``(None, None)`` when it is not installed."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None, None
    from importlib import metadata

    for dist in ("pydensecrf2", "pydensecrf"):
        try:
            return dcrf, f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return dcrf, "pydensecrf (unknown distribution)"


def _versus_inputs(side: int) -> tuple:
    """(Q, boxes, scores, image) of a SynthCrowd val image with D = 4 boxes and P = 20 parts."""
    ds = SynthCrowd(split="val", num_images=1, image_size=side, min_people=VERSUS_DETECTIONS, max_people=8, seed=0)
    sample = ds[0]
    inputs = simulated_inputs(sample, VERSUS_PARTS + 1, seed=0)
    boxes, scores = inputs["boxes"], inputs["scores"]
    index = torch.arange(VERSUS_DETECTIONS) % boxes.shape[0]
    return inputs["Q"], boxes[index], scores[index], sample["image"]


def _densecrf_setup(dcrf, unary, image_u8, side: int, labels: int):
    """pydensecrf's model with its two lattices built (``addPairwise*`` builds them)."""
    crf = dcrf.DenseCRF2D(side, side, labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=THETA_GAMMA, compat=3)
    crf.addPairwiseBilateral(sxy=THETA_ALPHA, srgb=THETA_BETA, rgbim=image_u8, compat=4)
    return crf


def _densecrf_run(dcrf, unary, image_u8, side: int, labels: int):
    return _densecrf_setup(dcrf, unary, image_u8, side, labels).inference(ITERS)


def _breakdown(args: tuple, dcrf, unary, image_u8, side: int, labels: int) -> dict:
    """Where each side's time goes: hparse's per-image build (lattice, smoothness normaliser) and one iteration's
    messages (Q labels-last, as the mean-field loop keeps it); pydensecrf's setup (its lattices) and inference."""
    Q, _, _, image = args
    cpu = torch.device("cpu")
    options = CRFOptions(method="lattice")
    out = {}
    with torch.no_grad():
        out["lattice_build_s"], messages = _timed(partial(message_kernels, image, options, torch.float32), cpu, 1,
                                                  warmup=False)
        probs = instance_crf(*args, iters=0, method="lattice").permute(1, 2, 0).contiguous().permute(2, 0, 1)
        out["lattice_messages_per_iteration_s"], _ = _timed(partial(messages, probs), cpu, 3, warmup=True)
    if dcrf is not None:
        out["densecrf_setup_s"], crf = _timed(partial(_densecrf_setup, dcrf, unary, image_u8, side, labels), cpu, 1,
                                              warmup=False)
        out["densecrf_inference_s"], _ = _timed(partial(crf.inference, ITERS), cpu, 1, warmup=False)
    return out


def _errors(approx: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (approx - ref).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "argmax_disagree": float((approx.argmax(0) != ref.argmax(0)).float().mean())}


def _vs_densecrf(settings: dict) -> dict:
    """Lattice and fast paths against pydensecrf on the CPU (see the module docstring)."""
    import numpy as np

    dcrf, package = _densecrf()
    out: dict = {"densecrf": package or "not installed", "iters": ITERS, "num_detections": VERSUS_DETECTIONS,
                 "num_parts": VERSUS_PARTS, "labels": 1 + VERSUS_DETECTIONS * VERSUS_PARTS}
    threads_before = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    # Error against the exact path where it fits.
    side = settings["small"]
    args = _versus_inputs(side)
    with torch.no_grad():
        exact = instance_crf(*args, iters=ITERS, method="exact")
        out["error_vs_exact"] = {"size": side, **{
            method: _errors(instance_crf(*args, iters=ITERS, method=method), exact) for method in ("lattice", "fast")}}
    out["sizes"] = {}
    for side in settings["versus"]:
        args = _versus_inputs(side)
        labels = 1 + VERSUS_DETECTIONS * VERSUS_PARTS
        with torch.no_grad():
            unary = -torch.log(instance_crf(*args, iters=0).clamp_min(1e-30))  # (L, H, W), up to a per-pixel constant
        unary_np = np.ascontiguousarray(unary.reshape(labels, -1).numpy().astype(np.float32))
        image_u8 = np.ascontiguousarray((args[3].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        row: dict = {"size": side, "threads": {}}
        for threads in settings["threads"]:
            torch.set_num_threads(threads)
            timing: dict = {}
            with torch.no_grad():
                timing["lattice_s"], lattice = _timed(partial(instance_crf, *args, iters=ITERS, method="lattice"),
                                                      torch.device("cpu"), 1, warmup=False)
                timing["fast_s"], fast = _timed(partial(instance_crf, *args, iters=ITERS, method="fast"),
                                                torch.device("cpu"), 1, warmup=False)
            if dcrf is not None:
                timing["densecrf_s"], dense = _timed(partial(_densecrf_run, dcrf, unary_np, image_u8, side, labels),
                                                     torch.device("cpu"), 1, warmup=False)
                timing["speedup_lattice_vs_densecrf"] = timing["densecrf_s"] / timing["lattice_s"]
                timing["speedup_fast_vs_densecrf"] = timing["densecrf_s"] / timing["fast_s"]
            timing["speedup_lattice_vs_fast"] = timing["fast_s"] / timing["lattice_s"]
            timing["breakdown"] = _breakdown(args, dcrf, unary_np, image_u8, side, labels)
            row["threads"][str(threads)] = timing
        row["lattice_vs_fast"] = _errors(lattice, fast)
        if dcrf is not None:
            dense_top = torch.from_numpy(np.asarray(dense)).reshape(labels, side, side).argmax(0)
            row["argmax_agree_densecrf"] = {
                "lattice": float((lattice.argmax(0) == dense_top).float().mean()),
                "fast": float((fast.argmax(0) == dense_top).float().mean()),
            }
        out["sizes"][str(side)] = row
    torch.set_num_threads(threads_before)
    out["load_average"] = [load_before, os.getloadavg()[0]]
    return out


def run(profile: Profile, device: torch.device) -> dict:
    """Measure fast vs exact at the small size and fast at the large size; write ``bench/instance_crf``."""
    device = torch.device(device)
    settings = SETTINGS.get(profile.name, SETTINGS["cpu"])
    repeats = max(1, profile.bench_repeats)
    start = time.perf_counter()
    metrics = {
        "small": _small(settings, device, repeats),
        # Full-size CPU runs take minutes each: time them once there.
        "large": _large(settings, device, repeats if device.type == "cuda" else 1),
        # pydensecrf runs on the CPU, so this comparison does too, whatever the device.
        "vs_densecrf": _vs_densecrf(settings),
    }
    wall = time.perf_counter() - start
    config = {"settings": settings, "iters": ITERS, "strides": list(STRIDES), "repeats": repeats,
              "torch_threads": torch.get_num_threads(), "device": str(device),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "inputs": "SynthCrowd val image 0; Q and boxes from simulated_inputs(seed=0)"}
    write_result("bench/instance_crf", metrics, profile=profile.name, config=config, wall_time_s=wall, device=device)
    return metrics
