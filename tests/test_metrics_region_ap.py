"""AP^r, painting and AP integration on hand-computed cases (rules: metrics_and_formats.md §A3, §A5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hparse.metrics import (
    ParsingEvaluator,
    RegionAP,
    average_precision,
    paint_persons,
    painted_maps,
    person_pixels,
    uninterpolated_ap,
    voc_ap,
)

T = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731


def region_ap(images, num_classes=2, **kwargs):
    ev = RegionAP(num_classes, **kwargs)
    for persons, scores, sem, inst, *part in images:
        ev.update(T(np.stack(persons)) if persons else torch.zeros((0, *np.shape(sem)), dtype=torch.int64),
                  torch.tensor(scores, dtype=torch.float64), T(sem), T(inst),
                  part_scores=torch.tensor(part[0]) if part else None)
    return ev.compute()


# One GT person of part 1 in a 1x4 strip plus background; n = 2 (only part class 1).
SEM = np.array([[1, 1, 1, 1, 0, 0]])
INST = (SEM > 0).astype(np.int64)


def test_voc_ap_by_hand():
    # hits 0 1 1 with 2 GT: recall 0 .5 1, precision 0 .5 2/3; the envelope lifts the first step to 2/3.
    assert average_precision(np.array([0, 1, 1]), 2) == pytest.approx(2 / 3)
    assert uninterpolated_ap(np.array([0, 1, 1]), 2) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision(np.array([1, 0, 1]), 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.zeros(0), 3) == 0.0
    assert np.isnan(average_precision(np.array([0.0]), 0))
    assert np.isnan(uninterpolated_ap(np.zeros(0), 0))  # TVG: 0/0 in MATLAB
    assert voc_ap(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == 2.0  # recall > 1 is integrated as is


def test_two_duplicate_tps_on_one_gt():
    """Golden case (§A3 quirks): many-to-one AP^r gives 2.0 where one-to-one AP^p gives 1.0."""
    left = np.array([[1, 1, 0, 0, 0, 0]])  # each half of the GT part: IoU 0.5
    right = np.array([[0, 0, 1, 1, 0, 0]])
    ev = ParsingEvaluator(2, metrics=("app", "apr"))
    ev.update({"person_parts": T(np.stack([left, right])), "person_scores": torch.tensor([0.9, 0.8])},
              {"semantic": T(SEM), "instances": T(INST), "boxes": torch.zeros(1, 4), "meta": {"id": "dup"}})
    r = ev.compute()
    for t in (10, 20, 30, 40):
        assert r[f"APr{t}"] == pytest.approx(2.0)
        assert r[f"APp{t}"] == pytest.approx(1.0)
    assert r["APr50"] == 0.0  # IoU 0.5 is not > 0.5


def test_overlapping_duplicates_are_painted_away():
    """§A5: the lower-scored copy of a person is painted over, so it adds no second true positive."""
    persons = [SEM, SEM]
    r = region_ap([(persons, [0.9, 0.8], SEM, INST)])
    assert r["APr50"] == 1.0
    painted = paint_persons(person_pixels(T(np.stack(persons))), torch.tensor([0.8, 0.9]))
    _, owner = painted_maps(painted)
    assert owner.tolist() == [[2, 2, 2, 2, 0, 0]]  # the higher score (person index 1) owns every pixel


def test_painting_highest_score_wins_and_ties_go_to_the_later_person():
    a = np.array([[1, 1, 1, 0]])
    b = np.array([[0, 2, 2, 2]])
    sem, owner = painted_maps(paint_persons(person_pixels(T(np.stack([a, b]))), torch.tensor([0.9, 0.5])))
    assert sem.tolist() == [[1, 1, 1, 2]] and owner.tolist() == [[1, 1, 1, 2]]
    sem, owner = painted_maps(paint_persons(person_pixels(T(np.stack([a, b]))), torch.tensor([0.5, 0.5])))
    assert sem.tolist() == [[1, 2, 2, 2]] and owner.tolist() == [[1, 2, 2, 2]]
    sem, owner = painted_maps(paint_persons(person_pixels(T(np.stack([a, b]))), torch.tensor([0.9, 0.5]),
                                            score_thresh=0.6))
    assert owner.tolist() == [[1, 1, 1, 0]]


def test_part_scores_rank_regions():
    sem = np.array([[1, 1, 0, 2, 2, 0]])
    inst = (sem > 0).astype(np.int64)
    good = sem.copy()  # both parts right
    bad = np.array([[0, 0, 1, 0, 0, 2]])  # both parts wrong, on another person
    images = [([good, bad], [0.9, 0.5], sem, inst)]
    assert region_ap(images, 3)["APr50"] == 1.0  # TPs outrank FPs in both classes
    # Part scores rank the bad person's part 1 above the good one's: class 1 AP = 0.5, class 2 AP = 1.
    part_scores = [[0.0, 0.2, 0.9], [0.0, 0.8, 0.1]]
    r = region_ap([([good, bad], [0.9, 0.5], sem, inst, part_scores)], 3)
    assert r["APr50"] == pytest.approx((0.5 + 1.0) / 2)


def test_class_mean_nan_and_absent_classes():
    # n = 3: part 1 predicted perfectly, part 2 absent everywhere -> AP 0 in the np.mean (PGN).
    r = region_ap([([SEM], [0.9], SEM, INST)], 3)
    assert r["APr50"] == pytest.approx(0.5)
    assert r["APrvol"] == pytest.approx(0.5)
    # A part-2 prediction with no part-2 GT anywhere: that class is NaN; np.mean is NaN, nanmean skips it.
    pred = np.array([[1, 1, 1, 1, 2, 0]])
    assert np.isnan(region_ap([([pred], [0.9], SEM, INST)], 3)["APr50"])
    assert region_ap([([pred], [0.9], SEM, INST)], 3, class_mean="nanmean")["APr50"] == 1.0


def test_many_to_one_matching_and_fp_without_gt_class():
    sem = np.array([[1, 1, 0, 1, 1, 0]])
    inst = np.array([[1, 1, 0, 2, 2, 0]])
    # one prediction covering both GT parts of class 1 (5 px): IoU 2/5 with each
    r = region_ap([([np.array([[1, 1, 1, 1, 1, 0]])], [0.9], sem, inst)])
    assert r["APr30"] == pytest.approx(0.5) and r["APr40"] == 0.0  # IoU 2/5 > 0.3: 1 TP of 2 GT
    # two persons predicted exactly: both TP
    assert region_ap([([sem * (inst == 1), sem * (inst == 2)], [0.9, 0.8], sem, inst)])["APr90"] == 1.0


def test_ignore_void_tvg_option():
    sem = np.array([[1, 1, 255, 255, 0, 0]])
    inst = np.array([[1, 1, 0, 0, 0, 0]])
    pred = np.array([[1, 1, 1, 1, 0, 0]])  # right part plus the two void pixels
    assert region_ap([([pred], [0.9], sem, inst)])["APr50"] == 0.0  # PGN: IoU 2/4
    assert region_ap([([pred], [0.9], sem, inst)], ignore_void=True)["APr50"] == 1.0  # TVG: IoU 2/2
    # A region entirely on void still exists (TVG lists regions before masking): an FP.
    only_void = np.array([[0, 0, 1, 1, 0, 0]])
    r = region_ap([([pred * (np.arange(6) < 2), only_void], [0.9, 0.8], sem, inst)], ignore_void=True,
                  ap_style="uninterpolated")
    assert r["APr50"] == 1.0  # TP first (uninterpolated: 1 * 1/1 over 1 GT), the void FP after it
    r = region_ap([([pred * (np.arange(6) < 2), only_void], [0.7, 0.8], sem, inst)], ignore_void=True,
                  ap_style="uninterpolated")
    assert r["APr50"] == pytest.approx(0.5)


def test_empty_images_region_ap():
    empty = np.zeros((1, 6), dtype=np.int64)
    r = region_ap([([], [], empty, empty)])
    assert r["APr50"] == 0.0  # no GT and no prediction: the class's AP is 0 (PGN arithmetic)
    r = region_ap([([], [], SEM, INST)])
    assert r["APr50"] == 0.0
    r = region_ap([([SEM], [0.9], empty, empty)])
    assert np.isnan(r["APr50"])


def test_per_class_names():
    ev = RegionAP(3, class_names=["background", "head", "torso"])
    ev.update(T(SEM[None]), torch.tensor([0.9]), T(SEM), T(INST))
    r = ev.compute()
    assert r["APr50/head"] == 1.0 and r["APr50/torso"] == 0.0
