"""Greedy, Hungarian and Dykstra on the limb scores of the trained bottom-up parser, stage 1 against stage 1 + 2.

The matching chapter first compares the solvers on limb scores made from ground-truth heatmaps plus noise. This
experiment asks the same question of the trained parsers of :mod:`hparse.experiments.mg_stage2` (their run folders,
``runs/mg_stage2/<profile>/{baseline,finetuned}/seed<k>``): on every SynthCrowd val image, each model's own
keypoint candidates and its limb scores (Eq. 9's A: the predicted limb heatmap sampled along each candidate pair),
exactly as :func:`hparse.models.mg_parser.assemble` computes them at inference. Each candidate is labelled with the
ground-truth person it stands for, as the matching loss and the limb assignment accuracy label them
(:func:`hparse.models.mg_targets.label_candidates`, within the model's NMS radius), which gives every limb type its
true assignment (:func:`~hparse.models.mg_targets.assignment_targets`). All solvers see the same eligible pairs, both
candidates real and A above the model's ``limb_threshold``:

- ``greedy`` (:func:`hparse.ops.greedy_matching`), ``hungarian`` (:func:`hparse.ops.hungarian_matching`) and
  ``dykstra`` (:func:`hparse.ops.dykstra_matching` at its inference settings, rounded by
  :func:`hparse.ops.round_assignment`: what the parser predicts with).
- Per solver: **precision** (correct pairs / pairs made between two labelled candidates), **recall** (correct
  pairs / true limbs whose two joints were detected: the limb assignment accuracy), F1, and the fraction of limb
  problems (one per limb type and image) solved without a wrong entry.
- Per model, the score **margin** the matching loss trains for: the mean A of the true pairs and of the wrong pairs
  between labelled candidates.

One record, ``results/<profile>/mg_parser/limb_solvers.json``, holds every seed's numbers with their mean and
spread. For the chapter's picture of the gradient, the artefact ``results/<profile>/mg_parser/limb_problems.pt.gz``
keeps seed 0's training-time matching problem of the fine-tuned model on the most crowded of the images (what
:meth:`hparse.models.mg_parser.MGParser.matching_loss` solves: detected candidates plus the ground-truth joints no
detection stands for; A, the true assignment, the mask, the candidates) with its image::

    python -m hparse.experiments.limb_solvers --profile cpu     # after python -m hparse.experiments.mg_stage2

Nothing is trained; about a minute per model on a CPU.
"""

from __future__ import annotations

import argparse
import gzip
import io
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from ..engine.checkpoint import CHECKPOINT_NAME, load_model
from ..engine.profiles import Profile, get_device, get_profile
from ..engine.results import results_dir, write_result
from ..models.mg_targets import assignment_targets, label_candidates, pad_keypoints
from ..ops import dykstra_matching, greedy_matching, hungarian_matching, round_assignment
from ..recipes import mg_parser_recipe
from .runner import SEEDS, _jpeg, _write_bytes, run_folder, synth_splits

__all__ = ["SOLVERS", "VARIANTS", "RECORD", "ARTEFACT", "solver_scores", "limb_solvers", "load_problem"]

SOLVERS = ("greedy", "hungarian", "dykstra")
#: The trained variants of :mod:`hparse.experiments.mg_stage2` compared here.
VARIANTS = ("baseline", "finetuned")
RECORD = "mg_parser/limb_solvers"
ARTEFACT = "mg_parser/limb_problems.pt.gz"
KEYS = ("precision", "recall", "f1", "perfect", "true_score", "wrong_score")


def _solve(name: str, A: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if name == "greedy":
        return greedy_matching(A, mask)
    if name == "hungarian":
        return hungarian_matching(A, mask)
    return round_assignment(dykstra_matching(A, mask), mask)


def solver_scores(problems: list[dict]) -> dict[str, dict[str, float]]:
    """Every solver on a list of limb problems (``A``, ``mask``, ``target``, ``labelled`` of shape (E, N, N)).

    Returns:
        per solver ``precision``, ``recall``, ``f1`` and ``perfect`` (the fraction of (image, limb type) problems
        without a wrong entry among the labelled pairs), plus the summed counts.
    """
    out = {}
    for name in SOLVERS:
        correct = made = true = perfect = total = 0
        for p in problems:
            pick = _solve(name, p["A"], p["mask"]) & p["mask"]
            target = p["target"].bool()
            labelled = p["labelled"]
            correct += int((pick & target).sum())
            made += int((pick & labelled).sum())
            true += int(target.sum())
            has_limb = target.flatten(1).any(1) | (pick & labelled).flatten(1).any(1)
            errors = ((pick & labelled) != target).flatten(1).any(1)
            perfect += int((has_limb & ~errors).sum())
            total += int(has_limb.sum())
        precision, recall = correct / max(made, 1), correct / max(true, 1)
        out[name] = {"precision": precision, "recall": recall,
                     "f1": 2 * precision * recall / max(precision + recall, 1e-12), "perfect": perfect / max(total, 1),
                     "pairs_correct": correct, "pairs_made": made, "true_limbs": true, "problems": total}
    return out


@torch.no_grad()
def _problems(model, dataset, device: torch.device, batch_size: int = 4) -> tuple[list[dict], dict]:
    """The inference-time limb problems of every image of ``dataset`` and their score margin."""
    radius = model.assembly.nms_radius or model.disk_radius / 3
    limbs = model.limbs
    a = torch.tensor([x for x, _ in limbs], device=device)
    b = torch.tensor([y for _, y in limbs], device=device)
    problems, true_scores, wrong_scores = [], [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        images = [s["image"].to(device) for s in samples]
        out = model.maps(model._batch(images))
        preds = model.predict(out, [tuple(i.shape[-2:]) for i in images], return_steps=True)
        for pred, sample in zip(preds, samples):
            steps = pred["steps"]
            if "candidates" not in steps or not len(sample["keypoints"]):
                continue
            cand, valid, A = steps["candidates"], steps["candidate_valid"], steps["limb_scores"]
            joints, used = pad_keypoints([sample["keypoints"].to(device)], model.min_visibility, device)
            labels, _ = label_candidates(cand[None], valid[None], joints, used, radius)
            target, _ = assignment_targets(labels, valid[None], limbs)
            labels = labels[0]
            both = (labels[a][:, :, None] > 0) & (labels[b][:, None, :] > 0)
            mask = valid[a][:, :, None] & valid[b][:, None, :] & (A > model.assembly.limb_threshold)
            target = target[0].bool()
            problems.append({"A": A.cpu(), "mask": mask.cpu(), "target": target.cpu(), "labelled": both.cpu()})
            true_scores.append(A[target])
            wrong_scores.append(A[both & ~target])
    true_scores, wrong_scores = torch.cat(true_scores or [torch.zeros(0)]), torch.cat(wrong_scores or [torch.zeros(0)])
    # None where a model made no such pair (a barely trained model may detect no keypoint)
    margin = {"true_score": float(true_scores.mean()) if len(true_scores) else None,
              "wrong_score": float(wrong_scores.mean()) if len(wrong_scores) else None}
    return problems, margin


def _training_problem(model, dataset, device: torch.device, images: int) -> dict:
    """The matching loss's problem on the most crowded of the first ``images`` val images (for the chapter)."""
    index = max(range(min(images, len(dataset))), key=lambda i: len(dataset[i]["keypoints"]))
    sample = dataset[index]
    with torch.no_grad():
        out = model.maps(model._batch([sample["image"].to(device)]))
        _, parts = model.matching_loss(out, [sample["keypoints"].to(device)], return_parts=True)
    keep = ("candidates", "valid", "labels", "scores", "target", "mask")
    return {"index": index, "image_id": str(sample["meta"]["id"]), "image_jpeg": _jpeg(sample["image"]),
            "limbs": [list(limb) for limb in model.limbs], "keypoint_names": list(model.kset.names),
            **{key: parts[key][0].detach().cpu() for key in keep}}


def _spread(values: list[float | None]) -> dict:
    """Mean and standard deviation over the seeds that have a value (``None`` when none has)."""
    known = [v for v in values if v is not None]
    return {"mean": statistics.fmean(known) if known else None,
            "std": (statistics.stdev(known) if len(known) > 1 else 0.0) if known else None, "per_seed": values}


def limb_solvers(profile: Profile, device: torch.device | str | None = None, *, seeds: Sequence[int] = SEEDS,
                 out_root: str | Path = "runs/mg_stage2", val_images: int | None = None, artefact_images: int = 20,
                 write: bool = True) -> dict:
    """Score the solvers on each trained variant and seed (see the module docstring); write the record and artefact.

    Raises:
        FileNotFoundError: a run folder of :mod:`hparse.experiments.mg_stage2` is missing (the message names it and
            the command that makes it).
    """
    device = get_device(device)
    plan = mg_parser_recipe(profile)
    _, val_set = synth_splits(plan["data"], val_images=val_images)
    per_variant: dict[str, dict[int, dict]] = {}
    problem = None
    for variant in VARIANTS:
        per_variant[variant] = {}
        for seed in seeds:
            path = run_folder(out_root, profile, variant, seed) / CHECKPOINT_NAME
            if not path.exists():
                raise FileNotFoundError(f"no trained parser at {path}; make it with `python -m "
                                        f"hparse.experiments.mg_stage2 --profile {profile.name}` (or pass --out-root)")
            model, _ = load_model(path, device=device)
            problems, margin = _problems(model, val_set, device)
            scores = solver_scores(problems)
            per_variant[variant][seed] = {"solvers": scores, **margin}
            print(f"{variant} seed {seed}: " + ", ".join(f"{n} F1 {s['f1']:.3f}" for n, s in scores.items())
                  + f"; mean score of true pairs {margin['true_score']}, of wrong pairs {margin['wrong_score']}",
                  flush=True)
            if variant == "finetuned" and seed == seeds[0]:
                problem = _training_problem(model, val_set, device, artefact_images)
    summary = {}
    for variant, runs in per_variant.items():
        row = {name: {key: _spread([r["solvers"][name][key] for r in runs.values()])
                      for key in ("precision", "recall", "f1", "perfect")} for name in SOLVERS}
        row["margin"] = {key: _spread([r[key] for r in runs.values()]) for key in ("true_score", "wrong_score")}
        summary[variant] = row
    metrics = {"summary": summary, "per_seed": per_variant, "num_images": len(val_set)}
    if write:
        config = {"seeds": list(seeds), "variants": list(VARIANTS), "solvers": list(SOLVERS),
                  "val_images": len(val_set), "out_root": str(out_root), "recipe": plan["model"],
                  "artefact": f"results/{profile.name}/{ARTEFACT}"}
        write_result(RECORD, metrics, profile=profile.name, config=config, device=device)
        if problem is not None:
            blob = io.BytesIO()
            torch.save({"format": 1, "seed": seeds[0], "variant": "finetuned", "profile": profile.name, **problem},
                       blob)
            _write_bytes(results_dir() / profile.name / ARTEFACT, gzip.compress(blob.getvalue()))
    return metrics


def load_problem(path: str | Path) -> dict:
    """The artefact of :func:`limb_solvers`: one training-time matching problem, its image decoded (uint8 (3, H, W))."""
    from .runner import _unjpeg

    saved = torch.load(io.BytesIO(gzip.decompress(Path(path).read_bytes())), map_location="cpu", weights_only=True)
    saved["image"] = _unjpeg(saved.pop("image_jpeg"))
    return saved


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out-root", default="runs/mg_stage2", help="run folders of hparse.experiments.mg_stage2")
    parser.add_argument("--val-images", type=int, default=None, help="override the recipe's val images")
    args = parser.parse_args(argv)
    try:
        limb_solvers(get_profile(args.profile), args.device, seeds=args.seeds, out_root=args.out_root,
                     val_images=args.val_images)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    _main()
