"""Benchmark: RoIAlign forward + backward, hparse's sparse-matrix CPU path against torchvision's kernel.

The workloads are the RoI poolings of one training step of the attention framework at the profile's sizes
(:func:`hparse.recipes.attention_rcnn_recipe`): the detection branch's 14x14 box RoIs on their FPN level and the
parsing branch's 28x28 RoIs on every level (max-fused). Each is timed forward and backward on random features and
boxes with both implementations (:func:`hparse.ops.roi_align.roi_align` and ``torchvision.ops.roi_align``) in
float32, and their outputs and gradients are compared in float64. The numbers are the median over ``bench_repeats``
repeats and the ratio torchvision / hparse. On CUDA both names run torchvision's kernel, so the benchmark is meant
for the CPU.
"""

from __future__ import annotations

import statistics
import time

import torch
from torchvision.ops import roi_align as torchvision_roi_align

from ..engine.profiles import Profile
from ..engine.results import write_result
from ..ops.roi_align import roi_align

# Profile name -> (images, image side, box RoIs per image, parsing RoIs per image, FPN channels).
SETTINGS: dict[str, tuple[int, int, int, int, int]] = {
    "smoke": (2, 96, 32, 2, 64),
    "cpu": (4, 192, 128, 4, 256),  # the cpu profile's attention recipe: 128 box RoIs, 4 parsing RoIs per image
    "gpu": (16, 384, 512, 32, 256),
}


def _boxes(count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * side * 0.8
    wh = torch.rand(count, 2, generator=generator) * side * 0.5 + 4
    return torch.cat((xy, (xy + wh).clamp(max=side)), dim=1)


def _time(pool, features: list[torch.Tensor], repeats: int) -> tuple[float, float, torch.Tensor, list]:
    """Median forward and backward seconds, and the last output and gradients."""
    forward, backward = [], []
    for _ in range(repeats + 1):  # the first call warms up
        inputs = [f.detach().requires_grad_(True) for f in features]
        start = time.perf_counter()
        out = pool(inputs)
        middle = time.perf_counter()
        out.backward(torch.ones_like(out))
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    if repeats == 0:
        return forward[0], backward[0], out.detach(), [i.grad for i in inputs]
    return statistics.median(forward[1:]), statistics.median(backward[1:]), out.detach(), [i.grad for i in inputs]


def run(profile: Profile, device: torch.device) -> dict:
    images, side, box_rois, parsing_rois, channels = SETTINGS.get(profile.name, SETTINGS["cpu"])
    generator = torch.Generator().manual_seed(0)
    levels = [torch.randn(images, channels, side // s, side // s, generator=generator) for s in (4, 8, 16, 32)]
    box_lists = [_boxes(box_rois, side, generator) for _ in range(images)]
    parsing_lists = [_boxes(parsing_rois, side, generator) for _ in range(images)]
    # FPN level of each box RoI (Eq. 1 of the FPN paper, canonical 224 at level 4), as the model's pooler assigns.
    all_boxes = torch.cat(box_lists)
    area = ((all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1])).sqrt()
    level_of = (4 + torch.log2(area / 224 + 1e-6)).floor().clamp(2, 5).long() - 2
    batch_index = torch.cat([torch.full((len(b),), i, dtype=torch.float32) for i, b in enumerate(box_lists)])
    rois = torch.cat((batch_index[:, None], all_boxes), dim=1)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]

    def box_pool(op):
        def pool(inputs):
            return torch.cat([op(inputs[level], rois[level_of == level].to(inputs[level].dtype), 14, scales[level], 2)
                              for level in range(4)])
        return pool

    def parsing_pool(op):
        def pool(inputs):
            fused = None
            for level in range(4):
                pooled = op(inputs[level], [b.to(inputs[level].dtype) for b in parsing_lists], 28, scales[level], 2)
                fused = pooled if fused is None else torch.maximum(fused, pooled)
            return fused
        return pool

    device = torch.device(device)
    started = time.perf_counter()
    levels = [f.to(device) for f in levels]
    rois = rois.to(device)
    level_of = level_of.to(device)
    parsing_lists = [b.to(device) for b in parsing_lists]
    metrics: dict = {}
    for name, make in (("box_14x14", box_pool), ("parsing_28x28_max_fused", parsing_pool)):
        ours_f, ours_b, _, _ = _time(make(roi_align), levels, profile.bench_repeats)
        tv_f, tv_b, _, _ = _time(make(torchvision_roi_align), levels, profile.bench_repeats)
        # Agreement in float64: in float32 the two ops round differently, and where two pyramid levels are within
        # that rounding of each other the max fusion picks different levels, moving whole gradients between them.
        exact = [f.double() for f in levels]
        _, _, ours_out, ours_grad = _time(make(roi_align), exact, 0)
        _, _, tv_out, tv_grad = _time(make(torchvision_roi_align), exact, 0)
        metrics[name] = {
            "hparse_forward_s": ours_f, "hparse_backward_s": ours_b,
            "torchvision_forward_s": tv_f, "torchvision_backward_s": tv_b,
            "speedup_forward": tv_f / ours_f, "speedup_backward": tv_b / ours_b,
            "speedup_total": (tv_f + tv_b) / (ours_f + ours_b),
            "max_abs_output_difference": float((ours_out - tv_out).abs().max()),
            "max_relative_gradient_difference": max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))
                                                    for a, b in zip(ours_grad, tv_grad)),
        }
    config = {"images": images, "image_side": side, "box_rois_per_image": box_rois,
              "parsing_rois_per_image": parsing_rois, "channels": channels, "sampling_ratio": 2,
              "repeats": profile.bench_repeats, "torch_threads": torch.get_num_threads()}
    write_result("bench/roi_align", metrics, profile=profile.name, config=config,
                 wall_time_s=time.perf_counter() - started, device=device,
                 notes="RoIAlign forward+backward: hparse's sparse-matrix CPU path vs torchvision's kernel")
    return metrics
