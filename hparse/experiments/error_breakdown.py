"""Where a trained top-down parser's errors come from: its detections, or its parsing branch and which parts.

Two measurements on the SynthCrowd validation images a run was evaluated on, from its checkpoint alone:

- **Detections or parsing.** The model is scored twice with the evaluator: with its own detections (what ``hparse
  evaluate`` reports), and with the ground-truth person boxes as its detections (score 1, the parsing branch run on
  them exactly as on its own boxes). The gap is what the detector costs; what is left below 1 is the parsing
  branch's (and its features').
- **Which parts, confused with what.** The pixel confusion of the semantic map (own detections): for every part, the
  share of its ground-truth pixels predicted as itself, as background, as its mirror part (``Left-arm`` for
  ``Right-arm``: the flip pairs of the label set) and as any other part. Thin parts lost to background and
  left/right swaps call for different remedies (resolution and features for the first, the person's orientation for
  the second).
- **Why a person misses IoU 0.5.** AP^p counts a person found at threshold t when a prediction's mean part IoU with
  them (the mean over the classes in either map, background included) reaches t. For every ground-truth person the
  best prediction's mean IoU is kept (its share at >= 0.5 bounds AP^p_50's recall), and each class that enters that
  mean with IoU 0 is sorted into *spurious* (predicted on the person, absent from them), *missed* (on the person,
  not predicted) or *misplaced* (both, no overlap; a left/right swap makes both parts of its pair misplaced): one
  such class among a person's ten or so pulls the mean down by a tenth. The counterfactual shares at >= 0.5 with the
  spurious, or all zero-IoU, classes left out of the mean say how much of AP^p_50 each kind of error holds.
- **How much is left and right.** The same predictions scored once more with each flip pair merged into one part
  (``Right-arm`` read as ``Left-arm``, in the prediction and the ground truth alike; AP^p, PCP and mIoU over the
  merged label set): the rise over the plain score is what the model loses to the person's orientation alone.
- **Which people get left and right wrong.** Left and right are the person's own (a front-facing person's
  ``Left-arm`` lies on the image's right, a back-facing one's on its left), so reading them needs the person's
  orientation. Over the ground-truth pixels of every flip-pair part that the model labels as either part of the
  pair, the share labelled with the right side, by the person's view (SynthCrowd's ``meta["view"]``: front, back,
  side): a model that has learned only the commonest view's rule scores high on it and below one half on the
  opposite view.

One record per run, ``results/<profile>/<method>/error_breakdown.json`` (``--record`` renames it)::

    python -m hparse.experiments.error_breakdown --checkpoint runs/demo_cpu/checkpoint.pt --profile cpu

Nothing is trained; about a minute on a CPU for 50 images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data import SynthCrowd
from ..engine.checkpoint import load_model
from ..engine.profiles import get_device, get_profile
from ..engine.results import ResultConflictError, write_result
from ..metrics import ParsingEvaluator
from ..metrics.painting import person_pixels
from ..metrics.part_ap import person_part_iou

__all__ = ["error_breakdown", "person_breakdown", "PersonBreakdown", "left_right_by_view", "KEYS"]

#: The evaluator's numbers kept for both kinds of detections.
KEYS = ("mIoU", "APp50", "APpvol", "PCP50")


@torch.no_grad()
def _parse(model, image: torch.Tensor, boxes: torch.Tensor | None) -> dict:
    """One image's prediction with the model's own detections (``boxes=None``) or with ``boxes`` (score 1)."""
    if boxes is None:
        return model([image])[0]
    images, _ = model.transform([image], None)
    features = model.backbone(images.tensors)
    sizes = [(int(h), int(w)) for h, w in images.image_sizes]
    scale = torch.tensor([sizes[0][1] / image.shape[-1], sizes[0][0] / image.shape[-2]] * 2, device=image.device)
    detections = [{"boxes": boxes.float() * scale, "scores": torch.ones(len(boxes), device=image.device),
                   "labels": torch.ones(len(boxes), dtype=torch.long, device=image.device)}]
    return model.branch_predict(features, detections, sizes, [tuple(image.shape[-2:])])[0]


class PersonBreakdown:
    """Accumulates, per ground-truth person, the best prediction's mean part IoU and its zero-IoU classes.

    ``update(pred, sample)`` takes one image's prediction (``person_parts`` (D, H, W)) and its ground truth;
    ``compute()`` returns ``{"persons", "median_best_iou", "share_at_50", "share_at_50_without_spurious",
    "share_at_50_without_zero_classes", "zero_iou": {class: {"present", "spurious", "missed", "misplaced"}},
    "spurious_per_person", "missed_per_person"}`` (``present``: persons whose best prediction or ground truth has the
    class; the other three count those where its IoU is 0, by kind, see the module docstring).
    """

    def __init__(self, names):
        self.names = list(names)
        self.best, self.class_iou, self.spurious, self.missed = [], [], [], []

    def update(self, pred: dict, sample: dict) -> None:
        n = len(self.names)
        semantic, instances = sample["semantic"].cpu(), sample["instances"].cpu()
        num_gt = int(instances.max()) if instances.numel() else 0
        parts = pred["person_parts"].cpu()
        if num_gt == 0:
            return
        if len(parts) == 0:  # nobody predicted: every person's best mean IoU is 0 (a miss at every threshold)
            parts = torch.zeros(1, *semantic.shape, dtype=torch.long)
        iou = person_part_iou(person_pixels(parts), semantic, instances, num_gt, n)
        for g in range(num_gt):
            column = torch.nan_to_num(torch.as_tensor(iou.mean_iou[:, g]), nan=-1.0)
            d = int(column.argmax())
            gt_map = torch.where(instances == g + 1, semantic, torch.zeros_like(semantic))
            gt_area = torch.bincount(gt_map[gt_map < n].flatten().long(), minlength=n)
            pred_area = torch.bincount(parts[d].flatten().long().clamp(0, n - 1), minlength=n)
            self.best.append(float(max(column[d], 0.0)))
            self.class_iou.append(torch.as_tensor(iou.class_iou[d, g]))
            self.spurious.append((pred_area > 0) & (gt_area == 0))
            self.missed.append((gt_area > 0) & (pred_area == 0))

    def compute(self) -> dict:
        if not self.best:
            return {"persons": 0}
        best = torch.tensor(self.best)
        ious = torch.stack(self.class_iou).float()  # (persons, n), NaN where the class is in neither map
        spurious, missed = torch.stack(self.spurious), torch.stack(self.missed)
        present = ~ious.isnan()
        zero = present & (ious == 0)

        def share_without(drop: torch.Tensor) -> float:
            kept = present & ~drop
            mean = torch.where(kept, ious, torch.zeros_like(ious)).sum(1) / kept.sum(1).clamp(min=1)
            return float((mean >= 0.5).float().mean())

        zero_iou = {}
        for c, name in enumerate(self.names[1:], start=1):
            if present[:, c].any():
                zero_iou[name] = {"present": int(present[:, c].sum()), "spurious": int((zero & spurious)[:, c].sum()),
                                  "missed": int((zero & missed)[:, c].sum()),
                                  "misplaced": int((zero & ~spurious & ~missed)[:, c].sum())}
        return {"persons": len(best), "median_best_iou": float(best.median()),
                "share_at_50": float((best >= 0.5).float().mean()),
                "share_at_50_without_spurious": share_without(spurious),
                "share_at_50_without_zero_classes": share_without(zero),
                "zero_iou": zero_iou,
                "spurious_per_person": float(spurious[:, 1:].sum(1).float().mean()),
                "missed_per_person": float(missed[:, 1:].sum(1).float().mean())}


def person_breakdown(predictions, samples, names) -> dict:
    """:class:`PersonBreakdown` over paired predictions and samples (a convenience for tests and notebooks)."""
    acc = PersonBreakdown(names)
    for pred, sample in zip(predictions, samples):
        acc.update(pred, sample)
    return acc.compute()


def left_right_by_view(predictions, samples, flip_pairs) -> dict[str, dict]:
    """Left/right accuracy of a model's semantic maps by the person's view (see the module docstring).

    ``predictions`` give ``semantic`` (H, W); ``samples`` are SynthCrowd samples (``meta["view"]`` per person).
    Returns ``{view: {"persons", "pixels", "accuracy"}}``: ``pixels`` counts the ground-truth pixels of flip-pair parts
    that were predicted as either part of their pair, ``accuracy`` the share of them predicted with the right side.
    """
    mirror = _mirror(flip_pairs)
    parts = torch.tensor(sorted(mirror))
    swap = torch.arange(256)  # label -> its mirror part (itself for the rest, ignore included)
    swap[list(mirror)] = torch.tensor(list(mirror.values()))
    counts: dict[str, list[int]] = {}
    for pred, sample in zip(predictions, samples):
        semantic, instances = sample["semantic"].cpu(), sample["instances"].cpu()
        predicted = pred["semantic"].cpu()
        paired = torch.isin(semantic, parts)
        right = paired & (predicted == semantic)
        wrong = paired & (predicted == swap[semantic.long()])
        for g, view in enumerate(sample["meta"]["view"]):
            person = instances == g + 1
            ok, bad = int((right & person).sum()), int((wrong & person).sum())
            row = counts.setdefault(view, [0, 0, 0])
            row[0] += ok
            row[1] += bad
            row[2] += int(ok + bad > 0)
    return {view: {"persons": persons, "pixels": ok + bad, "accuracy": ok / (ok + bad) if ok + bad else float("nan")}
            for view, (ok, bad, persons) in sorted(counts.items())}


def _mirror(flip_pairs) -> dict[int, int]:
    """Every part of a flip pair -> the other part of its pair."""
    return {a: b for a, b in flip_pairs} | {b: a for a, b in flip_pairs}


def _confusion_shares(confusion: torch.Tensor, names, flip_pairs) -> dict[str, dict]:
    mirror = _mirror(flip_pairs)
    out = {}
    for c, name in enumerate(names):
        if c == 0:
            continue
        total = int(confusion[c].sum())
        if total == 0:
            continue
        row = confusion[c].double() / total
        shares = {"itself": float(row[c]), "background": float(row[0]),
                  "mirror": float(row[mirror[c]]) if c in mirror else 0.0}
        shares["other"] = max(0.0, 1.0 - sum(shares.values()))
        out[name] = {"pixels": total, **shares}
    return out


def merge_left_right(labels: torch.Tensor, flip_pairs) -> torch.Tensor:
    """``labels`` (any shape, part ids) with the second part of every flip pair replaced by the first."""
    lut = torch.arange(max(max(pair) for pair in flip_pairs) + 1, device=labels.device)
    for left, right in flip_pairs:
        lut[right] = left
    out = labels.clone()
    inside = (labels >= 0) & (labels < len(lut))
    out[inside] = lut[labels[inside].long()].to(labels.dtype)
    return out


def _merged(pred: dict, sample: dict, flip_pairs) -> tuple[dict, dict]:
    """A prediction and its ground truth with left and right merged (:func:`merge_left_right`)."""
    pred = {**pred, "semantic": merge_left_right(pred["semantic"], flip_pairs),
            "person_parts": merge_left_right(pred["person_parts"], flip_pairs)}
    pred.pop("part_scores", None)  # per-class scores of the unmerged classes (AP^r only, not scored here)
    return pred, {**sample, "semantic": merge_left_right(sample["semantic"], flip_pairs)}


def error_breakdown(checkpoint: str | Path, *, val_images: int | None = None, device=None,
                    record: str | None = None, profile: str | None = None, write: bool = True,
                    force: bool = False) -> dict:
    """The two measurements of the module docstring for the run whose checkpoint is ``checkpoint``.

    The validation images are the run's own (SynthCrowd val at the run's image size and people per image, seed 0),
    the first ``val_images`` of them (default: as many as the run was evaluated on). A record of another run is
    replaced only with ``force`` (the results policy).
    """
    device = get_device(device)
    model, saved = load_model(checkpoint, device=device)
    config = saved.get("config") or {}
    name = (saved.get("model_config") or {}).get("name", "parsing_rcnn")
    if config.get("dataset", "synth") != "synth":
        raise ValueError(f"{checkpoint}: error_breakdown reads SynthCrowd runs; this run trained on "
                         f"{config.get('dataset')!r}")
    count = val_images or int(config.get("val_images") or 50)
    val = SynthCrowd("val", num_images=count, image_size=int(config.get("image_size", 192)), min_people=1,
                     max_people=int(config.get("max_people", 5)), seed=0)
    labels = val.labels
    evaluators = {"own": ParsingEvaluator(labels.num_classes), "gt_boxes": ParsingEvaluator(labels.num_classes)}
    merged = ParsingEvaluator(labels.num_classes, metrics=("miou", "app"))
    persons = PersonBreakdown(labels.names)
    confusion = torch.zeros(labels.num_classes, labels.num_classes, dtype=torch.long)
    views = []  # (prediction, sample) pairs reduced to what left_right_by_view reads
    for index in range(len(val)):
        sample = val[index]
        image = sample["image"].to(device)
        own = _parse(model, image, None)
        evaluators["own"].update(own, sample)
        merged.update(*_merged(own, sample, labels.flip_pairs))
        persons.update(own, sample)
        views.append(({"semantic": own["semantic"].cpu()},
                      {key: sample[key] for key in ("semantic", "instances", "meta")}))
        evaluators["gt_boxes"].update(_parse(model, image, sample["boxes"].to(device)), sample)
        target, pred = sample["semantic"], own["semantic"].cpu()
        keep = target != 255
        confusion += torch.bincount(target[keep] * labels.num_classes + pred[keep],
                                    minlength=labels.num_classes ** 2).view(labels.num_classes, -1)
    scores = {kind: ev.compute() for kind, ev in evaluators.items()}
    merged_scores = merged.compute()
    metrics = {
        "detections": {kind: {key: s[key] for key in KEYS} for kind, s in scores.items()},
        "left_right_merged": {key: merged_scores[key] for key in (*KEYS, "APp30")},
        "detector_cost": {key: scores["gt_boxes"][key] - scores["own"][key] for key in KEYS},
        "per_class_iou": {kind: dict(zip(labels.names, s["IoU"])) for kind, s in scores.items()},
        "confusion": _confusion_shares(confusion, labels.names, labels.flip_pairs),
        "persons": persons.compute(),
        "left_right_by_view": left_right_by_view(*zip(*views), labels.flip_pairs),
        "num_images": len(val),
    }
    if write:
        profile = profile or get_profile().name
        run_config = {"checkpoint": str(checkpoint), "run": config, "val_images": len(val), "step": saved.get("step")}
        write_result(record or f"{name}/error_breakdown", metrics, profile=profile, config=run_config, device=device,
                     force=force)
    return metrics


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a top-down run's checkpoint.pt (or its run folder)")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--record", default=None, help="results name (default <method>/error_breakdown)")
    parser.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--force", action="store_true", help="replace a record made from another run")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise SystemExit(f"error: no checkpoint at {path}; pass a run's checkpoint.pt or its folder")
    try:
        metrics = error_breakdown(path, val_images=args.val_images, device=args.device, record=args.record,
                                  profile=args.profile, force=args.force)
    except (ValueError, ResultConflictError) as error:
        raise SystemExit(f"error: {error}") from None
    for kind, values in {**metrics["detections"], "left/right merged": metrics["left_right_merged"]}.items():
        print(kind, {k: round(v, 4) for k, v in values.items()})


if __name__ == "__main__":
    _main()
