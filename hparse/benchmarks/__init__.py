"""Benchmarks behind ``hparse bench NAME``.

Each benchmark is a function ``(profile, device) -> dict`` that measures something, writes its numbers to
``results/<profile>/bench/<name>.json`` through :func:`hparse.engine.results.write_result` and returns them: a
module's ``run`` by default, or another function of the module named as ``"module:function"`` (so that one module
can hold a timing benchmark and a quality measurement of the same op). Benchmarks report ratios, throughputs and
rates measured in one process; they are never unit tests.
"""

from __future__ import annotations

import importlib

import torch

from ..engine.profiles import Profile

# name -> module implementing ``run(profile, device)``, or ``module:function``; modules are imported only when run.
BENCHMARKS: dict[str, str] = {
    "instance_crf": "hparse.benchmarks.instance_crf",
    "matching": "hparse.benchmarks.matching",
    "matching_quality": "hparse.benchmarks.matching:quality",
    "matching_loss_cost": "hparse.benchmarks.matching:loss_cost",
    "metrics": "hparse.benchmarks.metrics",
    "mg_parser": "hparse.benchmarks.mg_parser",
    "mg_parser_oracle": "hparse.benchmarks.mg_parser:oracle",
    "parsing_rcnn": "hparse.benchmarks.parsing_rcnn",
    "roi_align": "hparse.benchmarks.roi_align",
    "synth": "hparse.benchmarks.synth",
}


def run_benchmark(name: str, profile: Profile, device: torch.device) -> dict:
    """Run the benchmark ``name`` and return its numbers."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    module_name, _, function = BENCHMARKS[name].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, function or "run")(profile=profile, device=device)
