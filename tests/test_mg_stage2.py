"""The bottom-up parser's second step: the matching loss, its candidates and gradient, fine-tuning, the ablation."""

import json

import pytest
import torch

from hparse.data import SynthCrowd
from hparse.engine import get_profile
from hparse.engine.checkpoint import CheckpointError, save_checkpoint
from hparse.engine.finetune import load_weights
from hparse.models import build_model
from hparse.models import mg_parser as mg
from hparse.models.mg_parser import (
    detect_keypoints,
    hough_upper_bound,
    limb_assignment_accuracy,
    limb_assignment_counts,
    limb_scores,
    oracle_maps,
    oracle_prediction,
)
from hparse.models.mg_targets import assignment_targets, label_candidates, pad_keypoints
from hparse.ops.hough import hough_scores
from hparse.ops.matching import TRAINING_DEFAULTS
from hparse.recipes import mg_parser_recipe, recipe

TINY = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, decoder_channels=16, dspf_channels=8,
            disk_radius=6.0, limb_sigma=2.0)


def _samples(n=2, size=64, people=3, seed=0):
    data = SynthCrowd("train", num_images=n, image_size=size, max_people=people, seed=seed)
    return [data[i] for i in range(n)]


# ------------------------------------------------------------------------------------------- candidates


def test_label_candidates_by_hand():
    # one type, two people: joints at (10, 10) and (30, 10); candidates near the first (two of them), one far away
    joints = torch.tensor([[[[10.0, 10.0]]], [[[30.0, 10.0]]]]).view(1, 2, 1, 2)
    used = torch.tensor([[[True], [True]]])
    cand = torch.tensor([[[[11.0, 10.0], [10.5, 10.0], [50.0, 50.0], [29.0, 12.0]]]])
    valid = torch.tensor([[[True, True, True, False]]])
    labels, covered = label_candidates(cand, valid, joints, used, radius=3.0)
    # the nearer of the two candidates stands for person 1; the other is a duplicate; the far one a false positive;
    # the invalid candidate near person 2 does not count, so person 2 is not covered
    assert labels.tolist() == [[[0, 1, 0, 0]]]
    assert covered.tolist() == [[[True, False]]]


def test_assignment_targets_connect_one_person():
    labels = torch.tensor([[[1, 2, 0], [2, 1, 1]]])  # (B=1, K=2, N=3)
    valid = torch.tensor([[[True, True, True], [True, True, False]]])
    target, mask = assignment_targets(labels, valid, [(0, 1)])
    assert target[0, 0].tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert mask[0, 0, :, 2].tolist() == [False, False, False]


def test_batched_limb_scores_equal_per_image():
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 10, 12, generator=gen)
    cand = torch.rand(3, 5, 6, 2, generator=gen) * 40
    valid = torch.rand(3, 5, 6, generator=gen) > 0.3
    limbs = [(0, 1), (1, 2), (3, 4), (0, 4)]
    batched = limb_scores(maps, limbs, cand, valid, 7, 4)
    for b in range(3):
        torch.testing.assert_close(batched[b], limb_scores(maps[b], limbs, cand[b], valid[b], 7, 4))


def test_hough_bound_is_an_upper_bound_and_pruning_keeps_the_candidates():
    gen = torch.Generator().manual_seed(1)
    votes = torch.rand(3, 80, 2, generator=gen) * 16 - 2
    weights = torch.rand(3, 80, generator=gen)
    points = torch.rand(300, 2, generator=gen) * 18 - 3
    exact = hough_scores(votes, weights, points, 2.0) * (torch.pi * 4)
    assert bool((hough_upper_bound(votes, weights, points, (12, 12)) >= exact - 1e-5).all())
    # on a real image's ground-truth maps (people to detect) and on noisy ones
    sample = _samples(1, size=96, people=4, seed=3)[0]
    model = build_model("mg_parser", num_classes=20, **TINY)
    cfg = model.assembly
    maps = oracle_maps(sample, cfg.kset, cfg.limbs, 20, cfg.disk_radius, 2.0)
    noisy = {**maps, "disks": (maps["disks"] + 0.3 * torch.rand(maps["disks"].shape, generator=gen)).clamp(0, 1)}
    for m in (maps, noisy):
        plain = detect_keypoints(cfg, m["human"], m["dspf_grid"], m["disks"], m["offsets"])
        pruned = detect_keypoints(cfg, m["human"], m["dspf_grid"], m["disks"], m["offsets"], prune=True)
        assert "candidates" in plain
        assert torch.equal(plain["keep"], pruned["keep"])
        assert torch.equal(plain["candidates"], pruned["candidates"])
        scored = pruned["scores"] > 0
        torch.testing.assert_close(pruned["scores"][scored], plain["scores"][scored], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- the loss


def test_matching_loss_is_off_by_default_and_a_sixth_term_when_on():
    samples = _samples()
    images = [s["image"] for s in samples]
    torch.manual_seed(0)
    off = build_model("mg_parser", num_classes=20, **TINY).train()
    assert set(off(images, samples)) == {"loss_semantic", "loss_dspf", "loss_disk", "loss_offset", "loss_limb"}
    assert not hasattr(off, "log_var_matching")
    torch.manual_seed(0)
    on = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True).train()
    losses = on(images, samples)
    assert set(losses) == {"loss_semantic", "loss_dspf", "loss_disk", "loss_offset", "loss_limb", "loss_matching"}
    assert torch.isfinite(sum(losses.values()))
    fixed = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True, uncertainty=False,
                        loss_weights={"matching": 2.0}).train()
    assert "loss_matching" in fixed(images, samples)
    with pytest.raises(ValueError, match="matching"):
        build_model("mg_parser", num_classes=20, **TINY, loss_weights={"matching": 2.0})


def test_matching_loss_trains_through_training_defaults(monkeypatch):
    seen = []
    real = mg.dykstra_matching

    def spy(A, mask=None, **kwargs):
        seen.append(kwargs)
        return real(A, mask, **kwargs)

    monkeypatch.setattr(mg, "dykstra_matching", spy)
    model = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True).train()
    samples = _samples()
    model([s["image"] for s in samples], samples)
    assert seen == [TRAINING_DEFAULTS]


def test_every_person_is_represented_and_detections_are_labelled():
    torch.manual_seed(0)
    # threshold 0: the untrained detector finds candidates everywhere, most of them false positives
    model = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True, keypoint_threshold=0.0).train()
    samples = _samples(people=4)
    out = model.maps(model._batch([s["image"] for s in samples]))
    keypoints = [s["keypoints"] for s in samples]
    _, parts = model.matching_loss(out, keypoints, return_parts=True)
    assert parts["detected"] > 0
    joints, used = pad_keypoints(keypoints, model.min_visibility)
    labels, valid = parts["labels"], parts["valid"]
    for b in range(len(samples)):
        for k in range(model.kset.num_keypoints):
            people = sorted(int(p) + 1 for p in used[b, :, k].nonzero()[:, 0])
            found = sorted(int(x) for x in labels[b, k][valid[b, k] & (labels[b, k] > 0)])
            assert found == people  # each used joint exactly once
    # the target is "same person" between real candidates, one per person and limb at most
    target = parts["target"]
    assert bool((target.sum(-1) <= 1).all() and (target.sum(-2) <= 1).all())
    assert bool((target <= parts["mask"].float()).all())


def test_gradient_reaches_limb_heatmaps_and_the_dspf_only():
    torch.manual_seed(0)
    model = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True, keypoint_threshold=0.0).train()
    samples = _samples(people=4)
    out = model.maps(model._batch([s["image"] for s in samples]))
    loss, parts = model.matching_loss(out, [s["keypoints"] for s in samples], return_parts=True)
    assert parts["detected"] > 0 and float(loss.detach()) > 0
    model.zero_grad()
    loss.backward()

    def moved(module):
        return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)

    # the limb heatmaps (A is their mean along each segment) and what feeds them
    assert moved(model.limb_head) > 0 and moved(model.pose_decoder) > 0 and moved(model.body) > 0
    # the DSPF, through the positions c(u) + D(u) of the detected candidates
    assert moved(model.dspf_head) > 0
    # Hough voting only selects candidates: no gradient to the disks and offsets, nor to the part classifier
    for head in (model.disk_head, model.offset_head, model.semantic_head, model.seg_decoder):
        assert moved(head) == 0


def test_gradient_steps_on_the_matching_loss_lower_it():
    torch.manual_seed(0)
    model = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True).train()
    samples = _samples(people=3)
    batch = model._batch([s["image"] for s in samples])
    keypoints = [s["keypoints"] for s in samples]
    optimizer = torch.optim.Adam(list(model.limb_head.parameters()) + list(model.pose_decoder.parameters()), lr=3e-3)
    first = None
    for _ in range(15):
        loss = model.matching_loss(model.maps(batch), keypoints)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.8 * first


# ------------------------------------------------------------------------------------- grouping quality


def test_limb_assignment_counts_by_hand():
    # one limb type (0, 1); persons 1 and 2 have both joints; candidates: type 0 at the two joints, type 1 at the
    # two joints and a false positive
    keypoints = torch.zeros(2, 17, 3)
    keypoints[0, 0], keypoints[0, 1] = torch.tensor([10.0, 10, 2]), torch.tensor([10.0, 30, 2])
    keypoints[1, 0], keypoints[1, 1] = torch.tensor([50.0, 10, 2]), torch.tensor([50.0, 30, 2])
    cand = torch.zeros(17, 3, 2)
    cand[0, 0], cand[0, 1] = torch.tensor([10.0, 10]), torch.tensor([50.0, 10])
    cand[1, 0], cand[1, 1], cand[1, 2] = torch.tensor([50.0, 30]), torch.tensor([10.0, 30]), torch.tensor([90.0, 90])
    valid = torch.zeros(17, 3, dtype=torch.bool)
    valid[0, :2] = True
    valid[1, :3] = True
    chosen = torch.zeros(1, 3, 3, dtype=torch.bool)
    chosen[0, 0, 1] = True  # person 1: right
    chosen[0, 1, 2] = True  # person 2's type-0 joint to the false positive: wrong
    steps = {"candidates": cand, "candidate_valid": valid, "assignment": chosen}
    counts = limb_assignment_counts(steps, keypoints, [(0, 1)], radius=2.0)
    assert counts == {"limbs": 2, "correct": 1, "matched": 2, "matched_labelled": 1}


def test_limb_assignment_of_the_oracle():
    from hparse.data.labels import COCO17
    from hparse.models.mg_parser import Assembly

    data = SynthCrowd("val", num_images=3, image_size=128, max_people=4, seed=0)
    limbs = Assembly(COCO17, 20, 8.0).limbs
    totals = {"limbs": 0, "correct": 0, "matched_labelled": 0}
    for i in range(len(data)):
        sample = data[i]
        pred = oracle_prediction(sample, return_steps=True)
        counts = limb_assignment_counts(pred["steps"], sample["keypoints"], limbs, 32.0 * 128 / 512 / 3)
        for key in totals:
            totals[key] += counts[key]
    # the assembly on ground-truth maps groups most limbs, and the pairs it makes are right
    assert totals["limbs"] > 20
    assert totals["correct"] / totals["limbs"] > 0.75
    assert totals["correct"] / totals["matched_labelled"] > 0.95


def test_limb_assignment_accuracy_runs_on_a_model():
    model = build_model("mg_parser", num_classes=20, **TINY)
    data = SynthCrowd("val", num_images=2, image_size=64, max_people=2)
    result = limb_assignment_accuracy(model, data)
    assert 0.0 <= result["limb_accuracy"] <= 1.0 and result["limb_images"] == 2
    assert model.training  # left as it was


# ------------------------------------------------------------------------------------- the two steps


def test_stage2_recipe_fine_tunes_at_a_fixed_low_rate():
    for name in ("smoke", "cpu", "gpu"):
        profile = get_profile(name)
        one = mg_parser_recipe(profile)
        two = mg_parser_recipe(profile, stage=2, init="runs/x/checkpoint.pt")
        assert "matching_loss" not in one["model"] and "init" not in one
        assert two["model"] == {**one["model"], "matching_loss": True}
        assert two["init"] == "runs/x/checkpoint.pt"
        assert two["train"]["iterations"] == one["train"]["iterations"] // 3
        assert two["train"]["milestones"] == () and two["train"]["warmup"] == 0
        assert two["train"]["lr"] < one["train"]["lr"]
    gpu = mg_parser_recipe(get_profile("gpu"), stage=2, init="x")
    assert gpu["train"]["lr"] == pytest.approx(1e-4 * get_profile("gpu").batch_size / 32)  # §3.4's 1e-4 per 32 images
    assert mg_parser_recipe(get_profile("cpu"), stage=2, init="x")["train"]["lr"] == pytest.approx(1e-5)
    assert recipe("mg_parser", get_profile("smoke"), stage=2, init="x", matching_loss=False)["model"][
        "matching_loss"] is False
    with pytest.raises(ValueError, match="init"):
        mg_parser_recipe(get_profile("smoke"), stage=2)
    with pytest.raises(ValueError, match="stage"):
        mg_parser_recipe(get_profile("smoke"), stage=3, init="x")


def test_load_weights_allows_only_the_stage2_parameters(tmp_path):
    torch.manual_seed(0)
    stage1 = build_model("mg_parser", num_classes=20, **TINY)
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": stage1.state_dict(), "step": 7,
                                                 "model_config": stage1.build_config})
    stage2 = build_model("mg_parser", num_classes=20, **TINY, matching_loss=True)
    info = load_weights(stage2, tmp_path)
    assert info["step"] == 7 and info["new_parameters"] == ["log_var_matching"]
    for key, value in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[key], value)
    other = build_model("mg_parser", num_classes=20, **{**TINY, "decoder_channels": 24})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(other, tmp_path / "checkpoint.pt")


def test_train_stage2_fine_tunes_a_stage1_checkpoint(tmp_path, tmp_results):
    from hparse.engine import train
    from hparse.experiments.runner import synth_splits

    profile = get_profile("smoke")
    plan = mg_parser_recipe(profile)
    train_set, val_set = synth_splits(plan["data"], val_images=2)
    torch.manual_seed(0)
    stage1 = build_model("mg_parser", num_classes=20, **plan["model"])
    train(stage1, train_set, out_dir=tmp_path / "one", progress=False, **{**plan["train"], "iterations": 2})
    from hparse.experiments.mg_stage2 import train_stage2

    summary = train_stage2(tmp_path / "one", train_set, val_set, profile=profile, out_dir=tmp_path / "two",
                           iterations=2, progress=False)
    assert summary["step"] == 2 and summary["init"]["step"] == 2
    assert "loss_matching" in summary["history"][-1]
    rates = [r["lr"] for r in summary["history"]]
    assert rates == pytest.approx([plan["train"]["lr"] * 0.01] * 2)  # fixed: the rate stage 1 ends at
    record = json.loads((tmp_path / "two" / "result.json").read_text())
    assert record["config"]["stage"] == 2 and record["config"]["model"]["matching_loss"] is True


def test_stage2_ablation_smoke(tmp_path, tmp_results):
    from hparse.engine import load_result
    from hparse.experiments.mg_stage2 import stage2_ablation

    result = stage2_ablation(get_profile("smoke"), "cpu", seeds=(0, 1), iterations=2, out_root=tmp_path,
                             val_images=2)
    assert set(result["variants"]) == {"baseline", "finetuned", "finetuned_no_matching"}
    for name in result["variants"]:
        record = load_result(f"mg_parser/stage2_{name}", "smoke", root=tmp_results)
        per_seed = record["metrics"]["per_seed"]
        assert set(per_seed) == {"0", "1"}
        assert all({"APp50", "APpvol", "PCP50", "limb_accuracy"} <= set(m) for m in per_seed.values())
    tuned = load_result("mg_parser/stage2_finetuned", "smoke", root=tmp_results)
    assert tuned["config"]["flags"]["init"].endswith("baseline/seed{seed}/checkpoint.pt")
    summary = load_result("mg_parser/stage2_summary", "smoke", root=tmp_results)["metrics"]
    assert set(summary["table"]["limb_accuracy"]) == {"baseline", "finetuned", "finetuned_no_matching"}
    assert "exceeds_spread" in summary["against_baseline"]["finetuned"]["APp50"]
    # stage 2 needs each seed's stage-1 checkpoint
    with pytest.raises(FileNotFoundError, match="baseline"):
        stage2_ablation(get_profile("smoke"), "cpu", seeds=(5,), iterations=2, out_root=tmp_path / "empty",
                        names=["finetuned"], val_images=2, write=False)
    # the solvers on the trained models' own limb scores, from the same run folders
    from hparse.experiments.limb_solvers import ARTEFACT, RECORD, SOLVERS, limb_solvers, load_problem

    metrics = limb_solvers(get_profile("smoke"), "cpu", seeds=(0, 1), out_root=tmp_path, val_images=2)
    assert set(metrics["summary"]) == {"baseline", "finetuned"}
    assert set(metrics["per_seed"]["finetuned"]) == {0, 1}
    record = load_result(RECORD, "smoke", root=tmp_results)
    assert set(record["metrics"]["summary"]["baseline"]) == {*SOLVERS, "margin"}
    if (tmp_results / "smoke" / ARTEFACT).exists():  # a 2-step model may detect no keypoint at all
        problem = load_problem(tmp_results / "smoke" / ARTEFACT)
        assert problem["scores"].shape == problem["target"].shape == problem["mask"].shape
        assert problem["image"].dtype == torch.uint8
    with pytest.raises(FileNotFoundError, match="mg_stage2"):
        limb_solvers(get_profile("smoke"), "cpu", seeds=(5,), out_root=tmp_path, val_images=2, write=False)


def test_solver_scores_by_hand():
    from hparse.experiments.limb_solvers import solver_scores

    # one limb type, two candidates per side: the true pairs (0, 0) and (1, 1); the wrong (1, 0) outscores (1, 1),
    # but its column is taken by (0, 0), which every solver makes first
    A = torch.tensor([[[0.9, 0.0], [0.8, 0.6]]])
    target = torch.tensor([[[True, False], [False, True]]])
    problem = {"A": A, "mask": A > 0.5, "target": target, "labelled": torch.ones_like(target)}
    scores = solver_scores([problem])
    for name in ("greedy", "hungarian", "dykstra"):
        assert scores[name]["pairs_correct"] == 2 and scores[name]["pairs_made"] == 2
        assert scores[name]["precision"] == scores[name]["recall"] == scores[name]["perfect"] == 1.0
    # a wrong pair above the threshold, alone in its row and column, is made and counted against precision
    A2 = torch.tensor([[[0.9, 0.0], [0.0, 0.7]]])
    wrong = {"A": A2, "mask": A2 > 0.5, "target": torch.tensor([[[True, False], [False, False]]]),
             "labelled": torch.ones(1, 2, 2, dtype=torch.bool)}
    s2 = solver_scores([wrong])["hungarian"]
    assert (s2["precision"], s2["recall"], s2["perfect"]) == (0.5, 1.0, 0.0)


def test_loss_cost_benchmark_smoke(tmp_path, monkeypatch):
    from hparse.benchmarks import BENCHMARKS
    from hparse.benchmarks.matching import LOSS_COST_CASES, loss_cost
    from hparse.engine import load_result

    assert BENCHMARKS["matching_loss_cost"] == "hparse.benchmarks.matching:loss_cost"
    monkeypatch.chdir(tmp_path)  # no runs/ here: the untrained network
    metrics = loss_cost(get_profile("smoke"), "cpu", repeats=1, root=tmp_path / "results")
    assert set(metrics["cases"]) == set(LOSS_COST_CASES)
    for case in metrics["cases"].values():
        assert case["step_s_with"] > 0 and case["step_s_without"] > 0 and case["share"] < 1
    assert metrics["share"] == max(c["share"] for c in metrics["cases"].values())
    record = load_result("bench/matching_loss_cost", "smoke", root=tmp_path / "results")
    assert record["config"]["weights"].startswith("untrained")


def test_cli_stage2_fine_tunes_a_stage1_run_and_refuses_misuse(tmp_path, capsys):
    """``hparse train --model mg_parser --stage 2 --init RUN`` fine-tunes the stage-1 run; misuse is one line."""
    from hparse.cli import main

    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    assert main(["train", "--model", "mg_parser", "--profile", "smoke", "--iterations", "1", "--out", str(stage1)]) == 0
    assert main(["train", "--model", "mg_parser", "--profile", "smoke", "--stage", "2", "--init", str(stage1),
                 "--iterations", "1", "--out", str(stage2)]) == 0
    record = json.loads((stage2 / "result.json").read_text())
    assert record["config"]["model"]["matching_loss"] is True
    capsys.readouterr()
    for argv, words in ((["--model", "parsing_rcnn", "--stage", "2", "--init", str(stage1)], "mg_parser"),
                        (["--model", "mg_parser", "--stage", "2"], "--init"),
                        (["--model", "mg_parser", "--stage", "2", "--init", str(tmp_path / "nowhere")], "nowhere")):
        assert main(["train", "--profile", "smoke", *argv, "--out", str(tmp_path / "x")]) == 2
        assert words in capsys.readouterr().err
