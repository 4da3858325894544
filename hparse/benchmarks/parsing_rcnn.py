"""Parsing R-CNN speed: training throughput and inference latency against the number of people.

Top-down parsing costs one parsing-branch pass and one paste per detected person, so its inference time grows with
the crowd (bottom-up methods do not). To measure that growth without depending on what a model has learned, the
detector keeps exactly ``n`` detections per image (score threshold 0, ``n`` detections per image) on SynthCrowd
images holding ``n`` people; the model is the profile's SynthCrowd recipe (:func:`hparse.recipes.recipe`) with the
paper's flags on. Each number is the best of ``profile.bench_repeats`` timed repeats (at least 5 for latencies)
after one warm-up, measured in one process (the minimum, because other load on a shared machine only ever adds
time); the cost per extra person is the least-squares slope over 1-16 people.

:func:`ladder` trains the paper's ablation ladder (Table 6: baseline -> +PSS -> +ERR -> +GCE -> +IPBC) on SynthCrowd
at a profile's size and writes one results file per rung (``results/<profile>/parsing_rcnn/ladder_<k>_<rung>.json``)::

    python -m hparse.benchmarks.parsing_rcnn --ladder --profile cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ..data import SynthCrowd
from ..data.collate import collate_detection, targets_to
from ..engine.profiles import Profile, get_device, get_profile, seed_everything
from ..engine.results import write_result
from ..engine.trainer import build_optimizer
from ..models import build_model
from ..recipes import demo_recipe
from ..recipes import recipe as method_recipe

__all__ = ["run", "PEOPLE"]

PEOPLE = (1, 2, 4, 8, 16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)  # best of the repeats: other load on the machine only ever adds time


def _slope(xs, ys) -> float:
    """Least-squares slope of ys over xs (milliseconds per extra person)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run(profile: Profile, device: torch.device) -> dict:
    """Time training steps and per-image inference; write ``results/<profile>/bench/parsing_rcnn.json``."""
    device = torch.device(device)
    seed_everything(0)
    recipe = method_recipe("parsing_rcnn", profile)
    model = build_model("parsing_rcnn", num_classes=20, **recipe["model"]).to(device)
    amp = device.type == "cuda"
    dtype = torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    repeats = max(profile.bench_repeats, 1)
    batch = profile.batch_size

    # Training throughput: full steps (forward, backward, optimiser) on SynthCrowd batches.
    data = SynthCrowd("train", num_images=batch, image_size=profile.image_size, min_people=1,
                      max_people=profile.max_people, seed=0)
    images, targets = collate_detection([data[i] for i in range(batch)])
    images, targets = [i.to(device) for i in images], targets_to(targets, device)
    optimizer = build_optimizer(model, "sgd", lr=1e-4)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    load_before = os.getloadavg()[0]
    step_s = _timed(step, repeats, device)
    demo_step_s = _demo_step_s(profile, device, repeats)

    # Inference latency vs people: exactly n detections are parsed and pasted per image.
    model.eval()
    model.roi_heads.score_thresh = 0.0
    latency_ms, detections = {}, {}
    for n in PEOPLE:
        crowd = SynthCrowd("val", num_images=1, image_size=profile.image_size, min_people=n, max_people=n, seed=0)
        image = crowd[0]["image"].to(device)
        model.roi_heads.detections_per_img = n
        out = {}

        def infer(image=image, out=out):
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=amp):
                out["pred"] = model([image])[0]

        latency_ms[str(n)] = 1000 * _timed(infer, max(repeats, 5), device)  # cheap: a few more repeats
        detections[str(n)] = int(len(out["pred"]["person_scores"]))

    numbers = {
        "train_images_per_s": batch / step_s,
        "train_step_s": step_s,
        "batch_size": batch,
        "image_size": profile.image_size,
        "latency_ms_by_people": latency_ms,
        "detections_by_people": detections,
        "latency_ms_per_extra_person": _slope(PEOPLE, [latency_ms[str(n)] for n in PEOPLE]),
        "demo_train_step_s": demo_step_s,
        "load_average": [load_before, os.getloadavg()[0]],
    }
    note = ("untrained model; detections fixed to n per image so the parsing branch and paste process n people; "
            f"device {device.type}" + ("" if device.type == "cuda" else " (no GPU used for this run)")
            + "; load_average: 1-minute load before and after the run (the machine may be shared)")
    write_result("bench/parsing_rcnn", numbers, profile=profile.name,
                 config={"model": recipe["model"], "repeats": repeats, "amp": amp, "people": list(PEOPLE),
                         "torch_threads": torch.get_num_threads(),
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(OpenMP default: active)")},
                 device=device, notes=note)
    return numbers


def _demo_step_s(profile: Profile, device: torch.device, repeats: int) -> float:
    """Seconds of one training step of ``hparse demo``'s model (:func:`demo_recipe`) on a SynthCrowd batch."""
    recipe = demo_recipe(profile)
    data, train_cfg = recipe["data"], recipe["train"]
    model = build_model("parsing_rcnn", num_classes=20, **recipe["model"]).to(device)
    crowd = SynthCrowd("train", num_images=train_cfg["batch_size"], image_size=data["image_size"], min_people=1,
                       max_people=data["max_people"], seed=0)
    images, targets = collate_detection([crowd[i] for i in range(len(crowd))])
    images, targets = [i.to(device) for i in images], targets_to(targets, device)
    optimizer = build_optimizer(model, train_cfg["optimizer"], lr=1e-5)
    model.train()

    def step():
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return _timed(step, repeats, device)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    print(run(get_profile(args.profile), get_device(args.device)))


if __name__ == "__main__":
    _main()
