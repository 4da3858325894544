"""How fast a parsing branch learns from a starting point: the branch alone, on frozen features and true boxes.

A short laptop run of Parsing R-CNN learned little, and the question was which part limits. This experiment takes
the detector out: it builds the cpu recipe's model, freezes its ResNet-FPN (the starting point under test), and
trains only the parsing branch on ground-truth person boxes (jittered by 6% of their size, as proposals are), then
scores its arg-max on the validation people's boxes (RoI part mIoU against
:func:`hparse.models.targets.parsing_targets`, the split-wide rule of :class:`hparse.metrics.SemanticIoU`).
Three probes of one starting point:

- ``branch``: the recipe's whole parsing branch (GCE, IPBC, the deconvolution predictor), AdamW at the recipe's lr;
- ``linear``: the predictor alone on the pooled P2 RoI (a linear read-out), AdamW lr 3e-3;
- ``linear_semantic``: the same read-out against targets that keep *every* person's parts in the box, so the gap
  to ``linear`` is what telling this person from the others costs.

Starting points: a weights file (``backbone.pt`` written by ``hparse pretrain``), or ``"perfect"``: the one-hot part
map average-pooled to stride 4 in place of P2 (what a branch learns from ideal features; its ceiling is the
alignment bound of :mod:`hparse.experiments.roi_alignment`).

    python -m hparse.experiments.branch_probe --profile cpu \\
        --weights stage1=runs/pretrain_cpu/stage1/backbone.pt stage2=hparse/weights/synthcrowd_resnet18_w24.pt \\
        --record parsing_rcnn/branch_probe

prints one row per probe and writes ``results/<profile>/<record>.json``; without ``--record`` it only prints.
``--head-norms none gn`` trains the whole branch once with each normalisation (the GroupNorm question of
:mod:`hparse.models.heads.parsing_head`; ``--record parsing_rcnn/branch_probe_norm``).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import SynthCrowd
from ..engine.profiles import Profile, get_profile, seed_everything
from ..engine.results import write_result
from ..metrics.semantic import SemanticIoU
from ..models import build_model
from ..models.targets import parsing_loss, parsing_targets

__all__ = ["probe_branch", "PROBES"]

PROBES = ("branch", "linear", "linear_semantic")
RECIPE = "recipe"  # head_norm: the demo recipe's own
HEAD_NORMS = {"recipe": RECIPE, "none": None, "gn": "gn"}  # --head-norms names -> ParsingRCNN(head_norm=...)


def _model(profile: Profile, weights: str | Path | None, head_norm: str | None = RECIPE):
    from ..recipes import demo_recipe

    plan = demo_recipe(profile)
    if head_norm != RECIPE:
        plan["model"]["head_norm"] = head_norm
    model = build_model("parsing_rcnn", 20, **{**plan["model"], "backbone_weights": None})
    if weights not in (None, "perfect"):
        blob = torch.load(weights, map_location="cpu", weights_only=True)
        model.backbone.load_state_dict({k: v.float() if v.is_floating_point() else v
                                        for k, v in blob["state_dict"].items()})
    return model.eval(), plan


@torch.no_grad()
def _features(model, dataset, perfect: bool) -> list[tuple[dict, dict]]:
    out = []
    for index in range(len(dataset)):
        sample = dataset[index]
        images, _ = model.transform([sample["image"]], None)
        features = model.backbone(images.tensors)
        if perfect:
            part = sample["semantic"].clamp(max=model.num_classes - 1)[None]
            one_hot = F.avg_pool2d(F.one_hot(part, model.num_classes).permute(0, 3, 1, 2).float(), 4)
            pad = features["0"].shape[1] - one_hot.shape[1]
            features = {"0": torch.cat([one_hot, one_hot.new_zeros(1, pad, *one_hot.shape[-2:])], 1)}
        out.append(({"0": features["0"]}, sample))
    return out


def _batch(model, items, jitter: float, semantic_targets: bool):
    features = {"0": torch.cat([f["0"] for f, _ in items])}
    boxes, ids, semantic, instances = [], [], [], []
    for _, s in items:
        b = s["boxes"].float()
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, person = b[keep], torch.arange(1, len(s["boxes"]) + 1)[keep]
        if jitter:
            b = b + torch.randn_like(b) * jitter * (b[:, 2:] - b[:, :2]).repeat(1, 2)
        boxes.append(b)
        semantic.append(s["semantic"])
        if semantic_targets:  # every person's parts are this RoI's: the person-agnostic (semantic) crop
            instances.append(((s["semantic"] > 0) & (s["semantic"] != 255)).long())
            ids.append(torch.ones_like(person))
        else:
            instances.append(s["instances"])
            ids.append(person)
    size = items[0][1]["image"].shape[-2:]
    logits = model.parsing_predictor(model.parsing_head(
        model.parsing_roi_pool(features, boxes, [tuple(size)] * len(items))))
    return logits, parsing_targets(semantic, instances, boxes, ids, model.output_size)


def probe_branch(profile: Profile, weights: str | Path | None, probe: str = "branch", *, steps: int = 300,
                 batch_size: int = 4, train_images: int = 400, val_images: int = 40,
                 eval_at=(25, 100, 200, 300, 500, 750, 1000), seed: int = 0, head_norm: str | None = RECIPE,
                 return_model: bool = False) -> dict:
    """Train one probe on frozen features; returns ``{"curve": [(step, RoI mIoU)], "mIoU", "per_class_iou", ...}``
    (and the trained ``"model"`` with ``return_model``). ``head_norm`` replaces the recipe's normalisation of the
    branch (``None`` or ``"gn"``, :func:`hparse.models.heads.parsing_head.norm_layer`)."""
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    seed_everything(seed)
    model, plan = _model(profile, weights, head_norm)
    if probe != "branch":  # the predictor straight on the pooled RoI
        from ..models.heads.parsing_head import ParsingPredictor

        channels = model.backbone.out_channels
        model.parsing_head = torch.nn.Identity()
        model.parsing_predictor = ParsingPredictor(channels, model.num_classes)
    data = plan["data"]
    common = dict(image_size=data["image_size"], max_people=data["max_people"])
    train = _features(model, SynthCrowd("train", train_images, **common), weights == "perfect")
    val = _features(model, SynthCrowd("val", val_images, **common), weights == "perfect")
    params = list(model.parsing_head.parameters()) + list(model.parsing_predictor.parameters())
    lr = plan["train"]["lr"] if probe == "branch" else 3e-3
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    semantic_targets = probe == "linear_semantic"

    def evaluate() -> SemanticIoU:
        model.parsing_head.eval()
        score = SemanticIoU(model.num_classes, ignore_index=255)
        with torch.no_grad():
            for start in range(0, len(val), 8):
                logits, target = _batch(model, val[start:start + 8], 0.0, semantic_targets)
                score.update_checked(logits.argmax(1), target)
        model.parsing_head.train()
        return score

    curve, started = [], time.perf_counter()
    model.parsing_head.train()
    for step in range(1, steps + 1):
        picks = torch.randint(0, len(train), (batch_size,)).tolist()
        logits, target = _batch(model, [train[i] for i in picks], 0.06, semantic_targets)
        loss = parsing_loss(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in eval_at or step == steps:
            curve.append((step, evaluate().compute()["mIoU"]))
    final = evaluate().compute()
    out = {"curve": curve, "mIoU": final["mIoU"], "per_class_iou": [float(x) for x in final["IoU"]],
           "steps": steps, "lr": lr, "wall_time_s": time.perf_counter() - started}
    return {**out, "model": model} if return_model else out


def _digest(path) -> str | None:
    return None if path in (None, "perfect") else hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--weights", nargs="+", required=True,
                        help="NAME=FILE starting points (backbone.pt files of hparse pretrain), or NAME=perfect")
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    parser.add_argument("--head-norms", nargs="+", default=["recipe"], choices=list(HEAD_NORMS),
                        help="the branch's normalisation: the recipe's, none or GroupNorm (one row each)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--record", default=None,
                        help="results name to write (e.g. parsing_rcnn/branch_probe); without it the rows are only "
                             "printed")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    rows, started = {}, time.perf_counter()
    for spec in args.weights:
        name, _, path = spec.partition("=")
        for probe in args.probes:
            if path == "perfect" and probe != "branch":
                continue
            for norm in args.head_norms if probe == "branch" else ["recipe"]:
                result = probe_branch(profile, path, probe, steps=args.steps, head_norm=HEAD_NORMS[norm])
                row = f"{name}/{probe}" + ("" if norm == "recipe" else f"/{norm}")
                rows[row] = {**result, "weights": path, "weights_sha256": _digest(path), "head_norm": norm}
                print(f"{row:>24} RoI mIoU {result['mIoU']:.3f}  curve {result['curve']}", flush=True)
    if args.record is None:
        return 0
    write_result(args.record, {"rows": rows}, profile=profile.name,
                 config={"weights": args.weights, "probes": args.probes, "steps": args.steps,
                         "head_norms": args.head_norms},
                 wall_time_s=time.perf_counter() - started, force=args.force,
                 notes="the parsing branch alone on frozen features and true boxes (hparse.experiments.branch_probe)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
