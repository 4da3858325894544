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
- :func:`ladder_records`: the Table 6 ladder's records (:mod:`hparse.experiments.parsing_rcnn_ladder`): read from
  ``results/`` when a real run exists, else trained right now at the current profile's size; :func:`ladder_table`
  and :func:`ablation_table` put records of several seeds in one table with the paper's numbers: mean ± spread,
  whether each row's difference exceeds the spread (:func:`hparse.experiments.runner.exceeds_spread`), and the
  command that reproduces them; :func:`seed_stats` and :func:`change_verdicts` are the numbers behind them;
- :func:`percent` and :func:`short_run_caveat`: how the chapters print our metrics, and the note every table of
  ours carries unless it comes from a gpu-profile run;
- :func:`read_saved_log` and :func:`saved_prediction_grid`: a training log and predictions kept beside a record
  (:func:`hparse.experiments.runner.save_artefacts`).
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

__all__ = ["fpn_levels", "level_histogram", "bilinear_label_crops", "module_cost", "nonlocal_attention",
           "ladder_records", "ladder_table", "ablation_table", "seed_stats", "change_verdicts", "percent",
           "short_run_caveat", "starting_point_note", "read_saved_log", "saved_prediction_grid", "MarkdownTables"]


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
                   seeds: Sequence[int] | None = None, prefer: tuple[str, ...] = ("gpu", "cpu"),
                   device: str | torch.device | None = None) -> dict:
    """Records of Table 6 ladder rungs: from ``results/`` when a real run exists, else trained now.

    A real run (``python -m hparse.experiments.parsing_rcnn_ladder --profile cpu``) writes
    ``results/<profile>/parsing_rcnn/ladder_<rung>.json`` (each seed's metrics, mean and spread) and the first seed's
    artefacts beside them; the first of ``prefer`` holding **every** requested rung is used, so a table never mixes
    profiles (records of the older ``ladder_<k>_<rung>`` names are not read). Without one,
    :func:`hparse.experiments.parsing_rcnn_ladder.ladder` trains the rungs at ``profile``'s size. A ``smoke`` run
    writes its records and artefacts to a temporary folder (they measure nothing worth keeping); a ``cpu`` or ``gpu``
    run writes to ``results/`` like the command line does.

    Args:
        rungs: rung names of :data:`hparse.experiments.parsing_rcnn_ladder.LADDER` (``"baseline"``, ``"pss"``, ...).
        profile: the :class:`hparse.engine.Profile` to train at when no saved run exists.
        run_missing: train when no saved run exists (else return ``{}``).
        iterations: override the recipe's iterations of a run made here.
        seeds: seeds of a run made here (default: two at ``smoke``, :data:`~hparse.experiments.runner.SEEDS` else).
        prefer: profiles whose saved runs are used, in order.
        device: device of a run made here.

    Returns:
        ``{"records": {rung: record}, "source": "results" | "run", "profile": name, "log_dirs": {rung: path},
        "artefacts": {rung: saved_artefacts(...) or None}}`` where each record is the JSON written by
        :func:`hparse.engine.write_result` (metrics, config, provenance), ``log_dirs`` the first seed's run folders
        of a run made here, and ``artefacts`` the first seed's saved log and predictions
        (:func:`hparse.experiments.runner.saved_artefacts`).
    """
    from ..engine.results import find_results, load_result
    from ..experiments.parsing_rcnn_ladder import LADDER, RECORD_PREFIX, ladder
    from ..experiments.runner import SEEDS, run_folder, saved_artefacts

    known = [name for name, _ in LADDER]
    unknown = [r for r in rungs if r not in known]
    if unknown:
        raise ValueError(f"ladder_records: unknown rungs {unknown}; choose from {known}")
    names = {r: f"{RECORD_PREFIX}{r}" for r in rungs}
    for saved in prefer:
        records = {r: find_results(n, profiles=(saved,)) for r, n in names.items()}
        if all(rec is not None for rec in records.values()):
            return {"records": records, "source": "results", "profile": saved, "log_dirs": {},
                    "artefacts": {r: saved_artefacts("parsing_rcnn", r, (saved,)) for r in rungs}}
    if not run_missing:
        return {}
    seeds = tuple(seeds or ((0, 1) if profile.name == "smoke" else SEEDS))
    out_root = Path(tempfile.mkdtemp(prefix="hparse_ladder_"))
    root = out_root / "results" if profile.name == "smoke" else None
    with _results_root(root) if root is not None else nullcontext():
        ladder(profile, device, seeds=seeds, iterations=iterations, rungs=tuple(rungs), out_root=out_root / "runs")
        records = {r: load_result(n, profile.name) for r, n in names.items()}
        artefacts = {r: saved_artefacts("parsing_rcnn", r, (profile.name,), root=root) for r in rungs}
    log_dirs = {r: run_folder(out_root / "runs", profile, r, seeds[0]) for r in rungs}
    return {"records": records, "source": "run", "profile": profile.name, "log_dirs": log_dirs,
            "artefacts": artefacts}


def percent(value: float | None) -> str:
    """A metric (a fraction) as a percentage with two decimals, so that small early-training numbers stay
    distinguishable; "–" for a missing value (``None`` or NaN, e.g. AP without ground-truth persons)."""
    if value is None or value != value:
        return "–"
    return f"{100 * value:.2f}"


def short_run_caveat(profile: str, iterations: int, device: str, made_here: bool = False) -> str | None:
    """The note that goes under a table of our numbers unless they come from a gpu-profile run.

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
    if profile == "smoke":
        return (f"**Smoke-test numbers** (`{profile}` profile, {iterations} iterations, {device}; {where}): a few "
                "steps on tiny images, enough to show that every row trains and evaluates end to end, not to measure "
                "what any component is worth. The book's own numbers come from the cpu or gpu runs in `results/`.")
    return (f"**Short-run numbers** (`{profile}` profile, {iterations} iterations, {device}; {where}). The `{profile}` "
            "recipe trains on small SynthCrowd images with narrowed heads, so its values are not comparable with the "
            "paper's CIHP numbers; what can be compared is the direction of each change, and a change counts only "
            "where it exceeds the spread over seeds. The paper-sized comparison needs the gpu-profile run.")


def starting_point_note(records: Sequence[dict]) -> str | None:
    """A line saying that the records started from another SynthCrowd starting point than the file shipped now
    (``backbone_weights`` pins the file, :func:`hparse.models.pretrain.pinned`), so rerunning the table's command
    trains from the newer file and gives other numbers; ``None`` when they match or name no hparse file."""
    from ..models.pretrain import is_hparse_weights, pinned, split_pinned

    used = sorted({w for r in records if isinstance(w := ((r.get("config") or {}).get("model") or {})
                                                      .get("backbone_weights"), str) and is_hparse_weights(w)})
    stale = [w for w in used if w != pinned(split_pinned(w)[0])]
    if not stale:
        return None
    now = ", ".join(sorted({pinned(split_pinned(w)[0]) for w in stale}))
    return (f"These runs started from an earlier SynthCrowd starting point ({', '.join(f'`{w}`' for w in stale)}); "
            f"this command now starts from `{now}`, the file shipped today, so rerunning it (with `--force`, "
            "which replaces the records) gives numbers of the newer start.")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def seed_stats(metrics: dict, keys: Sequence[str], seed: int | None = None) -> dict:
    """Mean, sample standard deviation and seeds of ``keys`` in a record's ``metrics``.

    ``metrics`` as :func:`hparse.experiments.runner.run_variants` writes them (``per_seed``, ``mean``, ``std``); a key
    the runner does not summarise is computed from ``per_seed``. A record of the older one-seed format (plain metrics)
    is read as one seed, ``seed`` (spread 0, and ``seeds`` of length 1: no spread to compare with).

    Returns:
        ``{"mean": {key: value or None}, "std": {key: value or None}, "seeds": [...]}``.
    """
    from ..experiments.runner import record_spread

    metrics = record_spread(metrics, seed)
    per_seed = list((metrics.get("per_seed") or {}).values())
    out = {"mean": {}, "std": {}, "seeds": list(metrics.get("seeds") or [])}
    for key in keys:
        if key in metrics.get("mean", {}) and key in metrics.get("std", {}):
            out["mean"][key], out["std"][key] = metrics["mean"][key], metrics["std"][key]
            continue
        values = [m[key] for m in per_seed if _number(m.get(key))]
        if not values:
            out["mean"][key] = out["std"][key] = None
            continue
        mean = sum(values) / len(values)
        out["mean"][key] = mean
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out["std"][key] = math.sqrt(var)
    return out


def change_verdicts(before: dict, after: dict, keys: Sequence[str]) -> dict[str, dict]:
    """For each key, the change from ``before`` to ``after`` (:func:`seed_stats` dicts) and whether it exceeds the
    spread over seeds (:func:`hparse.experiments.runner.exceeds_spread`).

    Returns:
        ``{key: {"change": after - before (fraction) or None, "exceeds": True | False | None}}``; ``exceeds`` is
        ``None`` when either side has fewer than two seeds (no spread to compare with) or a value is missing.
    """
    from ..experiments.runner import exceeds_spread

    out = {}
    for key in keys:
        a, b = before["mean"].get(key), after["mean"].get(key)
        if a is None or b is None:
            out[key] = {"change": None, "exceeds": None}
            continue
        enough = len(before["seeds"]) > 1 and len(after["seeds"]) > 1
        out[key] = {"change": b - a, "exceeds": exceeds_spread(before, after, key) if enough else None}
    return out


def _points(change: float) -> str:
    return f"{round(100 * change, 2) + 0.0:+.2f}"  # a change of a fraction, in points (+ 0.0: no "-0.00")


def _verdict(verdicts: dict[str, dict]) -> str:
    """One table cell: which metrics' change exceeds the spread over seeds (:data:`~hparse.experiments.runner.VERDICTS`
    wording)."""
    from ..experiments.runner import VERDICTS

    known = {k: v for k, v in verdicts.items() if v["change"] is not None}
    if not known:
        return "–"
    if any(v["exceeds"] is None for v in known.values()):
        return VERDICTS[None]
    real = [f"{k} {_points(v['change'])}" for k, v in known.items() if v["exceeds"]]
    within = [k for k, v in known.items() if not v["exceeds"]]
    if not real:
        return f"no: {VERDICTS[False]} for all"
    return "yes for " + ", ".join(real) + ("; within the spread for " + ", ".join(within) if within else "")


def _cell(stats: dict, key: str) -> str:
    mean, std = stats["mean"].get(key), stats["std"].get(key)
    if mean is None:
        return "–"
    return percent(mean) + ("" if len(stats["seeds"]) < 2 else f" ± {percent(std)}")


def _seed_table(records: dict[str, dict], labels: dict[str, str], keys: Sequence[str], compare, verdict_header: str,
                paper: dict | None, paper_label: str) -> tuple[list[str], dict[str, dict]]:
    """Rows of ours (mean ± std, the verdict against ``compare(row)``) with the paper's row under each."""
    stats = {row: seed_stats(records[row]["metrics"], (*keys, "train_images_per_s"),
                             (records[row].get("config") or {}).get("seed")) for row in labels}
    lines = ["| | | " + " | ".join(keys) + f" | {verdict_header} |", "|---" * (len(keys) + 3) + "|"]
    for row, label in labels.items():
        other = compare(row)
        verdict = "–" if other is None else _verdict(change_verdicts(stats[other], stats[row], keys))
        lines.append(f"| {label} | ours | " + " | ".join(_cell(stats[row], k) for k in keys) + f" | {verdict} |")
        if paper and row in paper:
            source, values = paper[row]
            lines.append(f"| | {paper_label} ({source}) | "
                         + " | ".join("–" if values.get(k) is None else f"{values[k]:.1f}" for k in keys) + " | |")
    return lines, stats


def _reproduce(module: str, profile: str, seeds: Sequence[int]) -> str:
    from ..experiments.runner import SEEDS

    extra = "" if list(seeds) == list(SEEDS) or not seeds or None in seeds else " --seeds " + " ".join(map(str, seeds))
    return f"Reproduce ours: `python -m {module} --profile {profile}{extra}`"


def ladder_table(ladder: dict, labels: dict[str, str], keys: Sequence[str] = ("mIoU", "APp50", "APpvol", "PCP50"),
                 paper: dict[str, tuple[str, dict[str, float]]] | None = None) -> str:
    """Our ladder rungs beside the paper's in one Markdown table: mean ± spread over seeds, and whether each rung's
    change from the rung before exceeds the spread.

    Args:
        ladder: what :func:`ladder_records` returns.
        labels: display name of each rung, in table order (each compared with the one before it).
        keys: metrics to show (percent, two decimals).
        paper: ``{rung: (source, {key: value in %})}``, shown in a row under ours.

    Returns:
        Markdown: a line naming the run (profile, iterations, seeds, device), the table, the command that reproduces
        ours, and :func:`short_run_caveat`.
    """
    records = ladder["records"]
    first = records[next(iter(labels))]
    iterations, device = first["config"]["train"]["iterations"], first["provenance"]["device"]
    order = list(labels)
    lines, stats = _seed_table(records, labels, keys, lambda r: order[order.index(r) - 1] if order.index(r) else None,
                               "change from the rung above exceeds the spread over seeds?", paper, "paper")
    seeds = stats[order[0]]["seeds"]
    speed = ", ".join(f"{labels[r]} {stats[r]['mean']['train_images_per_s']:.1f}" for r in order
                      if stats[r]["mean"].get("train_images_per_s") is not None)
    caveat = short_run_caveat(first["profile"], iterations, device, made_here=ladder["source"] == "run")
    start = starting_point_note([records[r] for r in order])
    made = "trained while this page was built" if ladder["source"] == "run" else "read from results/"
    return (f"Ours: SynthCrowd val, profile `{first['profile']}`, {iterations} iterations per rung, seeds {seeds}, "
            f"{device} ({made}); mean ± standard deviation over seeds, in %."
            + (f" Training images/s: {speed}." if speed else "") + "\n\n" + "\n".join(lines)
            + "\n\n" + _reproduce("hparse.experiments.parsing_rcnn_ladder", first["profile"], seeds)
            + (f". {start}" if start else "") + (f"\n\n{caveat}" if caveat else ""))


def ablation_table(saved: dict, labels: dict[str, str],
                   keys: Sequence[str] = ("APrvol", "APr50", "APr60", "APr70", "APp50", "APpvol", "mIoU"),
                   reference: str = "none", paper: dict[str, tuple[str, dict[str, float]]] | None = None,
                   made_here: bool = False) -> str:
    """Table 5 of the RoI attention paper: our variants beside the paper's in one Markdown table, mean ± spread over
    seeds, and whether each variant's difference from ``reference`` ("w/o attention") exceeds the spread.

    Args:
        saved: ``{"profile", "records": {variant key: record}}`` (:func:`hparse.experiments.attention_ablation.
            saved_ablation`, or the records of a run made on the page).
        labels: display name of each variant key, in table order.
        keys: metrics (percent, two decimals).
        reference: the variant every other row is compared with.
        paper: ``{variant key: (source, {key: value in %})}``, shown in a row under ours.
        made_here: the records come from a run made while the page was built.

    Returns:
        Markdown: the run, the table, the command that reproduces ours, and :func:`short_run_caveat`.
    """
    records = saved["records"]
    first = records[next(iter(labels))]
    iterations = first["config"]["train"]["iterations"]
    device = first["provenance"]["device"]
    lines, stats = _seed_table(records, labels, keys, lambda r: None if r == reference else reference,
                               f"difference from {labels.get(reference, reference)} exceeds the spread over seeds?",
                               paper, "paper")
    seeds = stats[next(iter(labels))]["seeds"]
    caveat = short_run_caveat(saved["profile"], iterations, device, made_here=made_here)
    made = "trained while this page was built" if made_here else "read from results/"
    return (f"Ours: SynthCrowd val, profile `{saved['profile']}`, {iterations} iterations per variant, seeds {seeds}, "
            f"{device} ({made}); mean ± standard deviation over seeds, in %.\n\n" + "\n".join(lines)
            + "\n\n" + _reproduce("hparse.experiments.attention_ablation", saved["profile"], seeds)
            + (f". {start}" if (start := starting_point_note(list(records.values()))) else "")
            + (f"\n\n{caveat}" if caveat else ""))


def read_saved_log(path: str | Path | None, kind: str = "train") -> list[dict]:
    """Records of one kind (``"train"`` steps or ``"eval"`` results) of a training log kept beside a record
    (``results/<profile>/<method>/logs/<variant>.jsonl``); ``[]`` without one."""
    if path is None or not Path(path).exists():
        return []
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == kind]


def saved_prediction_grid(paths: dict[str, str | Path | None], labels, index: int = 0, cols: int = 3,
                          size: float = 2.4):
    """One val image's ground truth and each run's kept prediction of it, in part colours, ``cols`` panels a row.

    Args:
        paths: ``{title: predictions file of :func:`hparse.experiments.runner.save_artefacts` or None}``, in order.
        labels: the :class:`~hparse.data.LabelSet` to colour parts with.
        index: which of the kept val images.
        cols: panels per row (rows are added as needed, so the figure never becomes a wide strip).
        size: inches per panel.

    Returns:
        The matplotlib figure, or ``None`` when no path holds predictions.
    """
    import matplotlib.pyplot as plt

    from ..experiments.runner import load_predictions
    from .overlay import overlay_person_parts

    kept = {title: load_predictions(path) for title, path in paths.items() if path is not None and Path(path).exists()}
    if not kept:
        return None
    first = next(iter(kept.values()))
    image = first["images"][index].float() / 255
    target = first["targets"][index]
    ids = torch.arange(1, len(target["boxes"]) + 1)[:, None, None]
    panels = [(f"ground truth: {len(ids)} people", target["semantic"].long()[None] * (target["instances"].long()[None]
                                                                                       == ids))]
    panels += [(f"{title}: {saved['predictions'][index]['num_predicted']} predicted",
                saved["predictions"][index]["person_parts"].long()) for title, saved in kept.items()]
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, (size + 0.2) * rows), squeeze=False)
    for ax, (title, parts) in zip(axes.ravel(), panels):
        ax.imshow(overlay_person_parts(image, parts, labels))
        ax.set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig


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
