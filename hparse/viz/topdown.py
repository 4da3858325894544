"""Helpers for the top-down chapters: FPN level assignment, head capacity, label crops and the ladder's results.

The chapters on Parsing R-CNN (Yang et al., CVPR 2019) show what each component changes. The measurements they need
and that belong beside the package rather than in a notebook live here:

- :func:`fpn_levels` / :func:`level_histogram`: which pyramid level each person's RoI is pooled from under the FPN
  assignment ``k = floor(4 + log2(sqrt(wh) / canonical_scale))`` (FPN Eq. 1), computed by torchvision's
  ``LevelMapper``, the same object ``MultiScaleRoIAlign`` uses inside the model;
- :func:`bilinear_label_crops`: what goes wrong when part labels are cropped like features (bilinear RoIAlign);
- :func:`module_cost`: parameters and forward FLOPs of a head on one RoI (``torch.utils.flop_counter``);
- :func:`nonlocal_attention`: the attention weights a :class:`~hparse.models.heads.gce.NonLocal2d` block computes
  (its forward call fuses them into ``scaled_dot_product_attention`` and never materialises them);
- :class:`MarkdownTables`: Markdown output whose pipe tables render as tables on the static page too;
- :func:`ladder_records`: the Table 6 ladder's results: read from ``results/`` when a real run exists, else trained
  right now at the current profile's size; :func:`ladder_table` puts them in a table;
- :func:`percent` and :func:`short_run_caveat`: how the chapters print our metrics, and the warning every table of
  ours carries unless it comes from a gpu-profile run.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

__all__ = ["fpn_levels", "level_histogram", "bilinear_label_crops", "module_cost", "nonlocal_attention",
           "ladder_records", "ladder_table", "percent", "short_run_caveat", "MarkdownTables"]


def fpn_levels(boxes: torch.Tensor, canonical_scale: int, k_min: int = 2, k_max: int = 5,
               canonical_level: int = 4) -> torch.Tensor:
    """FPN level (``k_min..k_max``, e.g. 2 = P2) each box is pooled from under FPN Eq. 1.

    Args:
        boxes: (R, 4) xyxy boxes in the pixels of the image the features were computed on.
        canonical_scale: the ``224`` of FPN Eq. 1 (the model's ``canonical_scale``; scaled with the image size).
        k_min, k_max: the finest and coarsest pyramid level the heads pool from (P2-P5).
        canonical_level: the level a ``canonical_scale``-sized box maps to (4).

    Returns:
        int64 (R,) levels in ``k_min..k_max``.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"fpn_levels: boxes must be (R, 4), got {tuple(boxes.shape)}")
    mapper = LevelMapper(k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)
    return mapper([boxes.float()]).to(torch.int64) + k_min


def level_histogram(boxes: Sequence[torch.Tensor], canonical_scale: int, k_min: int = 2,
                    k_max: int = 5) -> dict[str, int]:
    """How many of the boxes (a list of per-image (R_i, 4) tensors) land on each level ``P{k_min}..P{k_max}``."""
    boxes = [b for b in boxes if len(b)]
    levels = fpn_levels(torch.cat(boxes), canonical_scale, k_min, k_max) if boxes else torch.zeros(0, dtype=torch.int64)
    counts = torch.bincount(levels - k_min, minlength=k_max - k_min + 1)
    return {f"P{k_min + i}": int(c) for i, c in enumerate(counts)}


def bilinear_label_crops(label_map: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop an integer label map to ``boxes`` the way features are cropped: bilinear RoIAlign, then rounding.

    This is the *wrong* way to build part targets, kept to show why it is wrong: near a boundary between parts
    ``a`` and ``b`` the bilinear blend is a fraction between the two ids, and rounding it gives whatever id lies in
    between (the mean of "left arm" and "right leg" is some third part). Compare with
    :func:`hparse.models.targets.sample_label_maps`, which samples with nearest interpolation.

    Args:
        label_map: int64 (H, W) labels.
        boxes: (R, 4) xyxy boxes in the map's pixels.
        size: output side M.

    Returns:
        int64 (R, M, M) rounded bilinear crops.
    """
    if label_map.ndim != 2:
        raise ValueError(f"bilinear_label_crops: label_map must be (H, W), got {tuple(label_map.shape)}")
    crops = roi_align(label_map[None, None].float(), [boxes.float()], output_size=size, spatial_scale=1.0,
                      sampling_ratio=2, aligned=True)
    return crops[:, 0].round().long()


def module_cost(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters and forward FLOPs of ``module`` on one input of ``input_shape`` (e.g. one (1, 256, 32, 32) RoI).

    FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as two FLOPs; the
    attention of a non-local block is included; element-wise ops such as ReLU are not). The count runs on a copy of
    the module on the ``meta`` device, so nothing is computed and the module itself is left untouched.

    Returns:
        ``{"params": count, "gflops": forward GFLOPs}``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in module.parameters())
    shadow = copy.deepcopy(module).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        shadow(torch.zeros(input_shape, device="meta"))
    return {"params": float(params), "gflops": counter.get_total_flops() / 1e9}


def nonlocal_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention weights of a :class:`~hparse.models.heads.gce.NonLocal2d` block, from its own layers.

    ``softmax_j(theta(x_i) . phi(x)_j / sqrt(C'))`` with ``phi`` max-pooled as in the block, i.e. exactly the
    weights ``scaled_dot_product_attention`` applies inside ``block.forward`` (its default scale is
    ``1 / sqrt(C')``).

    Args:
        block: a ``NonLocal2d`` (``theta``, ``phi``, ``pool`` layers).
        x: (R, C, S, S) RoI features entering the block.

    Returns:
        (R, S * S, K) weights, row i = query pixel i (row-major), K = key positions after pooling (``(S / 2) ** 2``
        with subsampling); every row sums to 1.
    """
    if x.ndim != 4:
        raise ValueError(f"nonlocal_attention: x must be (R, C, S, S), got {tuple(x.shape)}")
    query = block.theta(x).flatten(2).transpose(1, 2)  # (R, HW, C')
    key = block.pool(block.phi(x)).flatten(2).transpose(1, 2)  # (R, K, C')
    return torch.softmax(query @ key.transpose(1, 2) / query.shape[-1] ** 0.5, dim=-1)


@contextmanager
def _results_root(path: Path):
    old = os.environ.get("HPARSE_RESULTS")
    os.environ["HPARSE_RESULTS"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HPARSE_RESULTS", None)
        else:
            os.environ["HPARSE_RESULTS"] = old


def ladder_records(rungs: Sequence[str], profile, *, run_missing: bool = True, iterations: int | None = None,
                   prefer: tuple[str, ...] = ("gpu", "cpu"), device: str | torch.device | None = None) -> dict:
    """Result records of Table 6 ladder rungs: from ``results/`` when a real run exists, else trained now.

    A real run (``python -m hparse.benchmarks.parsing_rcnn --ladder --profile gpu``) writes
    ``results/<profile>/parsing_rcnn/ladder_<k>_<rung>.json``; the first of ``prefer`` holding **every** requested
    rung is used, so a table never mixes profiles. Without one, :func:`hparse.benchmarks.parsing_rcnn.ladder` trains
    the rungs at ``profile``'s size. A ``smoke`` run writes its records to a temporary folder (they measure nothing
    worth keeping); a ``cpu`` or ``gpu`` run writes to ``results/`` like the command line does.

    Args:
        rungs: rung names of :data:`hparse.benchmarks.parsing_rcnn.LADDER` (``"baseline"``, ``"pss"``, ...).
        profile: the :class:`hparse.engine.Profile` to train at when no saved run exists.
        run_missing: train when no saved run exists (else return ``{}``).
        iterations: override the profile's iterations of a run made here.
        prefer: profiles whose saved runs are used, in order.
        device: device of a run made here.

    Returns:
        ``{"records": {rung: record}, "source": "results" | "run", "profile": name, "log_dirs": {rung: path}}`` where
        each record is the JSON written by :func:`hparse.engine.write_result` (metrics, config, provenance) and
        ``log_dirs`` holds the training logs of a run made here (``train_log.jsonl``, read with
        :func:`hparse.engine.trainer.read_log`).
    """
    from ..benchmarks.parsing_rcnn import LADDER, ladder
    from ..engine.results import find_results, load_result

    index = {name: k for k, (name, _) in enumerate(LADDER)}
    unknown = [r for r in rungs if r not in index]
    if unknown:
        raise ValueError(f"ladder_records: unknown rungs {unknown}; choose from {list(index)}")
    names = {r: f"parsing_rcnn/ladder_{index[r]}_{r}" for r in rungs}
    for saved in prefer:
        records = {r: find_results(n, profiles=(saved,)) for r, n in names.items()}
        if all(rec is not None for rec in records.values()):
            return {"records": records, "source": "results", "profile": saved, "log_dirs": {}}
    if not run_missing:
        return {}
    out_root = Path(tempfile.mkdtemp(prefix="hparse_ladder_"))
    if profile.name == "smoke":
        with _results_root(out_root / "results"):
            ladder(profile, device, iterations=iterations, rungs=tuple(rungs), out_root=out_root / "runs")
            records = {r: load_result(n, profile.name) for r, n in names.items()}
    else:
        ladder(profile, device, iterations=iterations, rungs=tuple(rungs), out_root=out_root / "runs")
        records = {r: load_result(n, profile.name) for r, n in names.items()}
    log_dirs = {r: out_root / "runs" / profile.name / r for r in rungs}
    return {"records": records, "source": "run", "profile": profile.name, "log_dirs": log_dirs}


def percent(value: float | None) -> str:
    """A metric (a fraction) as a percentage with two decimals, so that small early-training numbers stay
    distinguishable; "–" for a missing value (``None`` or NaN, e.g. AP without ground-truth persons)."""
    if value is None or value != value:
        return "–"
    return f"{100 * value:.2f}"


def short_run_caveat(profile: str, iterations: int, device: str, made_here: bool = False) -> str | None:
    """The warning that goes under a table of our numbers unless they come from a gpu-profile run.

    Args:
        profile: the profile of the run (``record["profile"]``).
        iterations: its training iterations (``record["config"]["train"]["iterations"]``).
        device: where it ran (``record["provenance"]["device"]``).
        made_here: the run was made while the page was built (rather than read from ``results/``).

    Returns:
        Markdown, or ``None`` for a gpu-profile run.
    """
    if profile == "gpu":
        return None
    where = "trained while this page was built" if made_here else "a saved run from `results/`"
    return (f"**Short-run numbers** (`{profile}` profile, {iterations} iterations from random weights, {device}; "
            f"{where}). Models this far from trained have barely begun to learn, so the table shows that every "
            "variant trains and evaluates end to end; it does not measure what each component is worth, and one "
            "seed of a run this short cannot tell which row is better. The comparison with the paper needs the "
            "gpu-profile run.")


def ladder_table(ladder: dict, labels: dict[str, str], keys: Sequence[str] = ("mIoU", "APp50", "APpvol", "PCP50")
                 ) -> str:
    """Our ladder rungs as a Markdown table (percentages, training throughput), with where they come from.

    Args:
        ladder: what :func:`ladder_records` returns.
        labels: display name of each rung, in table order.
        keys: metrics to show.

    Returns:
        Markdown: a line naming the run (profile, iterations, device), the table, and :func:`short_run_caveat`.
    """
    records = ladder["records"]
    first = next(iter(records.values()))
    iterations, device = first["config"]["train"]["iterations"], first["provenance"]["device"]
    rows = ["| ours | " + " | ".join(keys) + " | train images/s |", "|---" * (len(keys) + 2) + "|"]
    for rung, label in labels.items():
        metrics = records[rung]["metrics"]
        rows.append(f"| {label} | " + " | ".join(percent(metrics.get(k)) for k in keys)
                    + f" | {metrics['train_images_per_s']:.2f} |")
    caveat = short_run_caveat(first["profile"], iterations, device, made_here=ladder["source"] == "run")
    return (f"Ours: SynthCrowd val, profile `{first['profile']}`, {iterations} iterations per rung, {device} "
            f"({'trained while this page was built' if ladder['source'] == 'run' else 'read from results/'}).\n\n"
            + "\n".join(rows) + (f"\n\n{caveat}" if caveat else ""))


class MarkdownTables:
    """Markdown text with pipe tables, displayed as an HTML table on the static page and as Markdown in a kernel.

    The book renders ``text/markdown`` outputs as CommonMark, which has no tables; ``text/html`` takes precedence in
    the HTML build, so this object offers both (HTML through ``markdown-it-py``, which the book tooling installs; if
    it is missing, only the Markdown is offered).

    Args:
        text: Markdown, e.g. a pipe table, with optional paragraphs before and after it.
    """

    def __init__(self, text: str):
        self.text = text

    def _repr_markdown_(self) -> str:
        return self.text

    def _repr_html_(self) -> str | None:
        try:
            from markdown_it import MarkdownIt
        except ImportError:
            return None
        return MarkdownIt("commonmark").enable("table").render(self.text)
