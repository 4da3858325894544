"""Benchmarks behind ``hparse bench NAME``.

Each benchmark is a module with ``run(profile, device) -> dict`` that times something, writes its numbers to
``results/<profile>/bench/<name>.json`` through :func:`hparse.engine.results.write_result` and returns them.
Benchmarks report ratios and throughputs measured in one process; they are never unit tests.
"""

from __future__ import annotations

import importlib

import torch

from ..engine.profiles import Profile

# name -> module implementing ``run(profile, device)``; modules are imported only when run.
BENCHMARKS: dict[str, str] = {
    "instance_crf": "hparse.benchmarks.instance_crf",
    "matching": "hparse.benchmarks.matching",
    "metrics": "hparse.benchmarks.metrics",
    "parsing_rcnn": "hparse.benchmarks.parsing_rcnn",
    "synth": "hparse.benchmarks.synth",
}


def run_benchmark(name: str, profile: Profile, device: torch.device) -> dict:
    """Run the benchmark ``name`` and return its numbers."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    module = importlib.import_module(BENCHMARKS[name])
    return module.run(profile=profile, device=device)
