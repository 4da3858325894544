"""The corruptions move the metrics the way the chapter says they do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hparse.data import SynthCrowd
from hparse.metrics import ParsingEvaluator
from hparse.metrics.corruptions import (
    CORRUPTIONS,
    add_false_positive,
    drop_person,
    erode_part,
    merge_persons,
    prediction_from_target,
    swap_identities,
)


def score(pred, target):
    ev = ParsingEvaluator(20)
    ev.update(pred, target)
    return ev.compute()


@pytest.fixture(scope="module")
def target():
    # crowding 0: people apart, so every corruption has a clean, predictable effect
    return SynthCrowd(split="val", num_images=1, image_size=96, min_people=3, max_people=3, crowding=0.0, seed=1)[0]


def test_perfect_prediction(target):
    r = score(prediction_from_target(target), target)
    assert r["mIoU"] == 1.0 and r["APp90"] == 1.0 and r["PCP90"] == 1.0
    # AP^r averages np.mean over all 19 part classes (PGN): a class absent from the split contributes 0.
    present = len(set(target["semantic"].unique().tolist()) - {0, 255})
    assert r["APr90"] == pytest.approx(present / 19)


def test_swap_keeps_miou_and_lowers_app(target):
    pred = prediction_from_target(target)
    swapped = swap_identities(pred, 0, 1)
    assert torch.equal(swapped["semantic"], pred["semantic"])
    assert not torch.equal(swapped["person_parts"], pred["person_parts"])
    r = score(swapped, target)
    assert r["mIoU"] == 1.0
    assert r["APp50"] < 1.0 and r["APr90"] < score(pred, target)["APr90"]
    # explicit classes: only those pixels change owner
    swapped = swap_identities(pred, 0, 1, classes=[2])
    moved = swapped["person_parts"] != pred["person_parts"]
    assert moved.any() and ((pred["person_parts"][moved] == 2) | (swapped["person_parts"][moved] == 2)).all()


def test_erode_part_lowers_every_metric_a_little(target):
    pred = prediction_from_target(target)
    r = score(erode_part(pred, 0, iterations=2), target)
    assert r["mIoU"] < 1.0 and r["APr90"] < score(pred, target)["APr90"]
    assert r["APp10"] == 1.0  # the person is still found at low thresholds


def test_merge_keeps_miou_and_loses_a_person(target):
    pred = prediction_from_target(target)
    merged = merge_persons(pred, 0, 1)
    assert merged["person_parts"].shape[0] == pred["person_parts"].shape[0] - 1
    assert torch.equal(merged["semantic"], pred["semantic"])
    r = score(merged, target)
    assert r["mIoU"] == 1.0 and r["APp90"] < 1.0


def test_drop_person_lowers_recall_and_miou(target):
    pred = prediction_from_target(target)
    r = score(drop_person(pred, 0), target)
    assert r["APp50"] == pytest.approx(2 / 3) and r["PCP50"] == pytest.approx(2 / 3)
    assert r["mIoU"] < 1.0


def test_false_positive_ranked_first_costs_precision(target):
    pred = prediction_from_target(target)
    ghost = add_false_positive(pred, 0, score=0.99)
    assert ghost["person_parts"].shape[0] == pred["person_parts"].shape[0] + 1
    r = score(ghost, target)
    assert r["APp90"] < 1.0
    r_low = score(add_false_positive(pred, 0, score=0.01), target)
    assert r_low["APp90"] == 1.0  # ranked last, the envelope hides it


def test_corruptions_never_modify_their_input(target):
    pred = prediction_from_target(target)
    before = {k: v.clone() for k, v in pred.items()}
    rng = np.random.default_rng(0)
    for name, fn in CORRUPTIONS.items():
        out = fn(pred, target, rng)
        assert out is not pred, name
        for k in before:
            assert torch.equal(pred[k], before[k]), name


def test_bad_person_index(target):
    with pytest.raises(IndexError, match="person 7 does not exist"):
        drop_person(prediction_from_target(target), 7)
