"""The bottom-up parser against the crowd: runtime vs people beside Parsing R-CNN, and the oracle bound of its grouping.

:func:`run` (``hparse bench mg_parser``) times both paradigms on the same SynthCrowd images holding 1, 2, 4, 8 and 16
people (the paper's claim, §1 and Table 1's M-Adds: bottom-up time is flat in the number of people). Neither model is
trained, so to time the work each would do on a crowd of ``n``:

- Parsing R-CNN keeps exactly ``n`` detections (score threshold 0, ``n`` per image), as
  :mod:`hparse.benchmarks.parsing_rcnn` does: its parsing branch and paste process ``n`` people;
- the bottom-up parser runs its network on the image (whose cost does not depend on what it has learned) and its
  assembly (Hough voting, limb scores, matching, grouping, Eq. 17) on the image's ground-truth maps
  (:func:`~hparse.models.mg_parser.oracle_maps`), i.e. on ``n`` real people; the two parts are reported apart and
  summed.

Each number is the best of ``max(profile.bench_repeats, 5)`` timed repeats after a warm-up, in one process.

:func:`oracle` (``hparse bench mg_parser_oracle``) runs :func:`~hparse.models.mg_parser.oracle_prediction` on the
first ``profile.val_images`` SynthCrowd val images at the profile's size, for the default settings and one change
at a time, and writes ``results/<profile>/mg_parser/oracle.json``.
"""

from __future__ import annotations

import os
import time

import torch

from ..data import SynthCrowd
from ..engine.profiles import Profile, seed_everything
from ..engine.results import write_result
from ..models import build_model
from ..models.mg_parser import assemble, oracle_maps, oracle_prediction
from ..recipes import recipe as method_recipe
from .parsing_rcnn import PEOPLE, _slope, _timed

__all__ = ["run", "oracle", "ORACLE_VARIANTS"]


def run(profile: Profile, device: torch.device) -> dict:
    """Latency vs people of mg_parser and Parsing R-CNN; writes ``results/<profile>/bench/mg_parser.json``."""
    device = torch.device(device)
    seed_everything(0)
    repeats = max(profile.bench_repeats, 5)
    mg_recipe = method_recipe("mg_parser", profile)
    mg = build_model("mg_parser", num_classes=20, **{**mg_recipe["model"], "backbone_weights": None}).to(device).eval()
    top_recipe = method_recipe("parsing_rcnn", profile)
    top = build_model("parsing_rcnn", num_classes=20, **top_recipe["model"]).to(device).eval()
    top.roi_heads.score_thresh = 0.0
    cfg = mg.assembly
    numbers = {"people": list(PEOPLE), "mg_network_ms": {}, "mg_assembly_ms": {}, "mg_total_ms": {},
               "mg_persons_found": {}, "parsing_rcnn_ms": {}, "parsing_rcnn_detections": {}}
    load_before = os.getloadavg()[0]
    for n in PEOPLE:
        sample = SynthCrowd("val", num_images=1, image_size=profile.image_size, min_people=n, max_people=n,
                            seed=0)[0]
        image = sample["image"].to(device)
        maps = {k: v.to(device) for k, v in oracle_maps(sample, cfg.kset, cfg.limbs, 20, cfg.disk_radius,
                                                         mg.limb_sigma, mg.min_visibility).items()}
        out = {}

        def network(image=image):
            with torch.no_grad():
                mg.maps(mg._batch([image]))

        def assembly(maps=maps, out=out):
            out["pred"] = assemble(cfg, maps["probs"], maps["dspf_full"], human=maps["human"],
                                   dspf_grid=maps["dspf_grid"], disks=maps["disks"], offsets=maps["offsets"],
                                   limbs=maps["limbs"])

        top.roi_heads.detections_per_img = n

        def topdown(image=image, out=out):
            with torch.no_grad():
                out["top"] = top([image])[0]

        key = str(n)
        numbers["mg_network_ms"][key] = 1000 * _timed(network, repeats, device)
        numbers["mg_assembly_ms"][key] = 1000 * _timed(assembly, repeats, device)
        numbers["mg_total_ms"][key] = numbers["mg_network_ms"][key] + numbers["mg_assembly_ms"][key]
        numbers["mg_persons_found"][key] = int(len(out["pred"]["person_scores"]))
        numbers["parsing_rcnn_ms"][key] = 1000 * _timed(topdown, repeats, device)
        numbers["parsing_rcnn_detections"][key] = int(len(out["top"]["person_scores"]))
    for name in ("mg_total_ms", "mg_assembly_ms", "parsing_rcnn_ms"):
        numbers[name.replace("_ms", "_ms_per_extra_person")] = _slope(PEOPLE, [numbers[name][str(n)] for n in PEOPLE])
    numbers["load_average"] = [load_before, os.getloadavg()[0]]
    note = ("untrained networks on the same images; Parsing R-CNN keeps n detections, mg_parser assembles the image's "
            f"ground-truth maps (n real people); device {device.type}"
            + ("" if device.type == "cuda" else " (no GPU used for this run)")
            + "; load_average: 1-minute load before and after (the machine may be shared)")
    write_result("bench/mg_parser", numbers, profile=profile.name,
                 config={"mg_parser": mg_recipe["model"], "parsing_rcnn": top_recipe["model"], "repeats": repeats,
                         "image_size": profile.image_size, "torch_threads": torch.get_num_threads()},
                 device=device, notes=note)
    return numbers


#: one change at a time against the default settings (name -> oracle_prediction keywords)
ORACLE_VARIANTS: dict[str, dict] = {
    "default": {},
    "hough_norm_area": dict(hough_norm="area"),
    "skeleton_limbs": dict(limb_set="skeleton"),
    "hungarian": dict(matching="hungarian"),
    "greedy": dict(matching="greedy"),
    "limb_threshold_0.5": dict(limb_threshold=0.5),
    "min_person_joints_2": dict(min_person_joints=2),
    "min_visibility_1": dict(min_visibility=1),
}


def oracle(profile: Profile, device: torch.device | None = None, variants: tuple[str, ...] | None = None) -> dict:
    """AP^p, PCP, AP^r of the oracle assembly on SynthCrowd val; writes ``results/<profile>/mg_parser/oracle.json``."""
    from ..metrics import ParsingEvaluator

    data = SynthCrowd("val", num_images=profile.val_images, image_size=profile.image_size, min_people=1,
                      max_people=profile.max_people, seed=0)
    samples = [data[i] for i in range(len(data))]
    keys = ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol")
    results, started = {}, time.perf_counter()
    for name in variants or tuple(ORACLE_VARIANTS):
        evaluator = ParsingEvaluator(20)
        tick = time.perf_counter()
        for sample in samples:
            evaluator.update(oracle_prediction(sample, **ORACLE_VARIANTS[name]), sample)
        metrics = evaluator.compute()
        results[name] = {k: metrics[k] for k in keys} | {"seconds_per_image": (time.perf_counter() - tick)
                                                          / max(len(samples), 1)}
    numbers = {**results["default"], "variants": results} if "default" in results else {"variants": results}
    write_result("mg_parser/oracle", numbers, profile=profile.name,
                 config={"images": len(samples), "image_size": profile.image_size, "max_people": profile.max_people,
                         "split": "val", "seed": 0, "variants": {k: ORACLE_VARIANTS[k] for k in results}},
                 wall_time_s=time.perf_counter() - started, device="cpu",
                 notes="the parser's own assembly on ground-truth maps (hparse.models.mg_parser.oracle_prediction); "
                       "no network, no training")
    return numbers
