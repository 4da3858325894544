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


# Two GT persons (columns 0-1 and 2-3) with parts 1 (rows 0-1) and 2 (rows 2-3), background in columns 4-5; n = 3.
SEM2 = np.array([[1, 1, 1, 1, 0, 0]] * 2 + [[2, 2, 2, 2, 0, 0]] * 2)
INST2 = np.array([[1, 1, 2, 2, 0, 0]] * 4)


def _ranked(accumulator) -> int:
    """Regions an accumulator has ranked so far (every painted region reaches the matcher)."""
    return sum(len(labels) for labels in accumulator._labels)


@pytest.mark.parametrize("ap_style", ["voc", "uninterpolated"])
def test_lowest_score_garbage_never_raises_apr(ap_style):
    """A person scored below all others is painted underneath them, so their regions keep their pixels, and its
    own regions come last in every class's ranking: AP^r never falls, and where none of its painted regions beats
    the threshold they are false positives at the end of the ranking, so AP^r does not rise. The garbage overlaps
    GT persons; the oracle for what it keeps after painting is computed here by hand (pixels no one else claims)."""
    rng = np.random.default_rng(2)
    shape = SEM2.shape
    hidden = raised = 0
    for case in range(30):
        persons = [np.where(rng.random(shape) < 0.75, SEM2, rng.integers(0, 3, shape)) * (INST2 == k)
                   for k in (1, 2)]
        if case % 3 == 0:
            garbage = rng.integers(0, 3, shape)  # anywhere, any label
        else:
            garbage = np.where(rng.random(shape) < 0.7, SEM2, rng.integers(0, 3, shape)) * (INST2 == 1 + case % 2)
        scores = [0.9, 0.8]
        # Half the cases rank regions by part scores, the garbage's being the lowest of all.
        parts = [rng.uniform(0.1, 1.0, 3).tolist() for _ in persons] if case % 2 else None

        def run(ps, ss, part_scores):
            ev = RegionAP(3, ap_style=ap_style)
            ev.update(T(np.stack(ps)), torch.tensor(ss, dtype=torch.float64), T(SEM2), T(INST2),
                      part_scores=torch.tensor(part_scores) if part_scores is not None else None)
            return ev.compute(), _ranked(ev)

        base, n_base = run(persons, scores, parts)
        more, n_more = run([*persons, garbage], [*scores, 0.0], [*parts, [0.0] * 3] if parts else None)
        # What the garbage keeps: its labelled pixels that neither real person paints.
        mine = (persons[0] == 0) & (persons[1] == 0) & (garbage > 0)
        best, regions = 0.0, 0
        for c in (1, 2):
            region = mine & (garbage == c)
            if region.any():
                regions += 1
                for g in (1, 2):
                    gt = (INST2 == g) & (SEM2 == c)
                    best = max(best, (region & gt).sum() / (region | gt).sum())
        assert n_more == n_base + regions  # every painted garbage region was ranked and matched
        for t in range(10, 100, 10):
            assert more[f"APr{t}"] >= base[f"APr{t}"]
            if best <= t / 100:
                assert more[f"APr{t}"] <= base[f"APr{t}"]
                hidden += bool((mine & (INST2 > 0)).any())
            raised += more[f"APr{t}"] > base[f"APr{t}"]
    assert hidden >= 50  # garbage on GT pixels, kept by painting, yet below the threshold
    assert raised >= 5  # and above it the lowest-ranked region is a true positive that does raise AP^r


def test_person_order_never_matters_for_apr():
    """Permuting the predicted persons together with their scores and part scores changes nothing: painting follows
    the (distinct) person scores and the ranking follows the region scores, never the input order."""
    rng = np.random.default_rng(3)
    shape = SEM2.shape
    for case in range(10):
        # Overlapping persons (each spills over the other GT person and the background), so painting order matters.
        persons = [np.where(rng.random(shape) < 0.6, SEM2 * (INST2 == rng.integers(1, 3)), rng.integers(0, 3, shape))
                   for _ in range(4)]
        scores = rng.permutation([0.9, 0.7, 0.5, 0.3]).tolist()
        parts = [rng.random(3).tolist() for _ in persons] if case % 2 else None
        perm = rng.permutation(4)
        extra = [parts] if parts else []
        extra_perm = [[parts[i] for i in perm]] if parts else []
        r1 = region_ap([(persons, scores, SEM2, INST2, *extra)], 3)
        r2 = region_ap([([persons[i] for i in perm], [scores[i] for i in perm], SEM2, INST2, *extra_perm)], 3)
        assert r1 == r2
