"""``hparse evaluate`` round trips: write predictions and ground truth, score from disk, compare to in memory."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hparse.cli import main
from hparse.data import CIHP, SynthCrowd, write_cihp
from hparse.metrics import ParsingEvaluator
from hparse.metrics.corruptions import CORRUPTIONS, prediction_from_target
from hparse.metrics.io import PredictionReader, detect_layout, write_predictions


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A SynthCrowd val export in the CIHP layout, and predictions made from it by corruptions (with overlaps)."""
    root = tmp_path_factory.mktemp("cihp")
    write_cihp((s for s in SynthCrowd(split="val", num_images=4, image_size=64, min_people=2, max_people=4, seed=3)),
               root, "val")
    gt = CIHP(root, "val")
    rng = np.random.default_rng(0)
    preds = []
    for i in range(len(gt)):
        target = gt[i]
        pred = prediction_from_target(target, scores=rng.uniform(0.1, 1.0, len(target["boxes"])))
        for name in ("add a false positive", "erode a part", "swap two people"):
            pred = CORRUPTIONS[name](pred, target, rng)
        pred["part_scores"] = torch.rand(pred["person_parts"].shape[0], 20, generator=torch.Generator().manual_seed(i))
        preds.append((pred, target))
    return root, gt, preds


def in_memory(preds, **kwargs):
    ev = ParsingEvaluator(20, **kwargs)
    for pred, target in preds:
        ev.update(pred, target)
    return ev.compute()


def run_cli(tmp_path, pred_dir, gt_root, *extra):
    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_root), "--dataset", "synth", "--json", str(out),
                 *extra])
    assert code == 0
    return json.loads(out.read_text())


def close(got, want):
    """``got`` from the JSON file (NaN written as null) against ``want`` computed in memory."""
    if np.isnan(want):
        return got is None
    return got == pytest.approx(want, abs=1e-6)


def test_round_trip_hparse_layout(exported, tmp_path):
    root, gt, preds = exported
    pred_dir = tmp_path / "pred"
    for pred, target in preds:
        write_predictions(pred, pred_dir, target["meta"]["id"])
    assert detect_layout(pred_dir) == "hparse"
    record = run_cli(tmp_path, pred_dir, root)
    # scores and part scores go through text as float32 values: compare with the same values in memory
    expected = in_memory(preds)
    assert record["layout"] == "hparse" and record["evaluator"]["ap_style"] == "voc"
    for key in ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol", "APp10", "APr90"):
        assert close(record["metrics"][key], expected[key]), key
    assert record["metrics"]["num_images"] == len(preds)
    assert 0 < expected["APp50"] < 1  # the corruptions left something to measure


def test_reader_restores_the_prediction(exported, tmp_path):
    _, _, preds = exported
    pred, target = preds[0]
    write_predictions(pred, tmp_path, target["meta"]["id"])
    back = PredictionReader(tmp_path, 20).read(target["meta"]["id"], target["semantic"].shape)
    assert torch.equal(back["person_parts"], pred["person_parts"].long())
    assert torch.equal(back["semantic"], pred["semantic"].long())
    assert torch.equal(back["person_scores"], pred["person_scores"].float())
    assert torch.equal(back["part_scores"], pred["part_scores"].float())


def test_cihp_challenge_layout_gives_the_same_miou_and_apr(exported, tmp_path):
    root, _, preds = exported
    pred_dir = tmp_path / "pred"
    for pred, target in preds:
        write_predictions(pred, pred_dir, target["meta"]["id"])
    shutil.rmtree(pred_dir / "person_parsing")  # what a CIHP challenge submission holds
    assert detect_layout(pred_dir) == "cihp"
    record = run_cli(tmp_path, pred_dir, root)
    expected = in_memory(preds)
    assert "APp50" not in record["metrics"]
    for key in ("mIoU", "APr10", "APr50", "APr70", "APrvol"):
        assert close(record["metrics"][key], expected[key]), key


def test_mhp_submission_layout(exported, tmp_path):
    """results.txt + global_seg + global_tag: persons painted into one map, so compare with the painted persons."""
    root, _, preds = exported
    pred_dir = tmp_path / "pred"
    lines, painted_preds = [], []
    for pred, target in preds:
        image_id = target["meta"]["id"]
        order = torch.argsort(pred["person_scores"], stable=True)
        seg = torch.zeros_like(target["semantic"])
        tag = torch.zeros_like(target["semantic"])
        for k in order.tolist():  # ascending score, the higher on top
            m = pred["person_parts"][k] > 0
            seg[m], tag[m] = pred["person_parts"][k][m].long(), k + 1
        (pred_dir / "global_seg").mkdir(parents=True, exist_ok=True)
        (pred_dir / "global_tag").mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg.numpy().astype(np.uint8)).save(pred_dir / "global_seg" / f"{image_id}.png")
        Image.fromarray(tag.numpy().astype(np.uint8)).save(pred_dir / "global_tag" / f"{image_id}.png")
        pairs = " ".join(f"{k + 1} {float(pred['person_scores'][k])!r}" for k in range(len(pred["person_scores"])))
        lines.append(f"{image_id} {pairs}\n")
        persons = [(k, seg * (tag == k + 1)) for k in range(len(pred["person_scores"]))]
        persons = [(k, m) for k, m in persons if m.any()]
        painted_preds.append(({"semantic": seg, "person_parts": torch.stack([m for _, m in persons]),
                               "person_scores": pred["person_scores"][[k for k, _ in persons]]}, target))
    (pred_dir / "results.txt").write_text("".join(lines))
    assert detect_layout(pred_dir) == "mhp"
    record = run_cli(tmp_path, pred_dir, root)
    expected = in_memory(painted_preds)
    for key in ("mIoU", "APp50", "APpvol", "PCP50", "APr50", "APrvol"):
        assert close(record["metrics"][key], expected[key]), key


def test_missing_predictions_and_bad_sizes(exported, tmp_path, capsys):
    root, _, preds = exported
    pred_dir = tmp_path / "pred"
    for pred, target in preds[1:]:
        write_predictions(pred, pred_dir, target["meta"]["id"])
    args = ["evaluate", "--pred", str(pred_dir), "--gt", str(root), "--dataset", "synth"]
    assert main(args) == 2
    assert "1 of 4 val images have no prediction" in capsys.readouterr().err
    assert main([*args, "--missing", "skip"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert main([*args, "--missing", "empty"]) == 0
    assert "4 images" in capsys.readouterr().out
    # a prediction of the wrong size names the image
    pred, target = preds[0]
    small = {k: v[..., :10, :10] if k in ("semantic", "person_parts") else v for k, v in pred.items()}
    write_predictions(small, pred_dir, target["meta"]["id"])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert target["meta"]["id"] in err and "has size (10, 10)" in err


def test_user_errors(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path), "--dataset", "cihp"]) == 2
    assert "hparse: error:" in capsys.readouterr().err


def test_empty_prediction_round_trip(tmp_path):
    empty = {"semantic": torch.zeros(5, 7, dtype=torch.int64), "person_parts": torch.zeros(0, 5, 7, dtype=torch.uint8),
             "person_scores": torch.zeros(0)}
    write_predictions(empty, tmp_path, "e")
    back = PredictionReader(tmp_path, 20).read("e", (5, 7))
    assert back["person_parts"].shape == (0, 5, 7) and back["person_scores"].shape == (0,)
    assert (tmp_path / "instance_parsing" / "e.txt").read_text() == ""
    with pytest.raises(ValueError, match="cannot be a file name"):
        write_predictions(empty, tmp_path, "../x")
