"""AP^p and PCP on hand-computed cases (rules: shared/reference/metrics_and_formats.md §A2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hparse.metrics import ParsingEvaluator, PartAP, match_persons, person_part_iou, person_pixels

T = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731


def target(semantic, instances, num_gt=None, image_id="img"):
    semantic, instances = T(semantic), T(instances)
    num_gt = int(instances.max()) if num_gt is None else num_gt
    return {"semantic": semantic, "instances": instances, "boxes": torch.zeros(num_gt, 4),
            "meta": {"id": image_id, "dataset": "test"}}


def prediction(persons, scores, semantic=None):
    parts = T(np.stack(persons)) if len(persons) else torch.zeros((0, *np.shape(semantic)), dtype=torch.int64)
    out = {"person_parts": parts, "person_scores": torch.tensor(scores, dtype=torch.float32)}
    if semantic is not None:
        out["semantic"] = T(semantic)
    return out


def app(images, **kwargs):
    ev = ParsingEvaluator(kwargs.pop("num_classes", 4), metrics=("app",), **kwargs)
    for pred, tgt in images:
        ev.update(pred, tgt)
    return ev.compute()


# Two people side by side on a 4x4 image: A in columns 0-1, B in columns 2-3; rows 0-1 are part 1, rows 2-3 part 2.
INST = np.array([[1, 1, 2, 2]] * 4)
SEM = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])
A = SEM * (INST == 1)
B = SEM * (INST == 2)


def test_perfect_prediction_scores_one():
    r = app([(prediction([A, B], [0.9, 0.8]), target(SEM, INST))])
    assert all(r[f"APp{t}"] == 1.0 for t in range(10, 100, 10))
    assert r["APpvol"] == 1.0 and r["PCP50"] == 1.0


def test_missing_part_counts_background_in_the_mean():
    """Golden case of §A2 step 3: the person's mean IoU includes background, so missing a part costs less."""
    sem = np.zeros((4, 4), dtype=np.int64)
    sem[0, 0:2], sem[1, 0:2] = 1, 2  # the GT person: part 1 (2 px) and part 2 (2 px), 12 px background
    inst = (sem > 0).astype(np.int64)
    pred = np.where(sem == 1, 1, 0)  # misses part 2 entirely
    ious = person_part_iou(person_pixels(T(pred)[None]), T(sem), T(inst), 1, 4)
    # background 12/14, part 1 2/2, part 2 0/2, part 3 absent from both (NaN, skipped)
    np.testing.assert_allclose(ious.class_iou[0, 0, :3], [12 / 14, 1.0, 0.0])
    assert np.isnan(ious.class_iou[0, 0, 3])
    mean = (12 / 14 + 1.0 + 0.0) / 3  # 0.619; without background it would be 0.5
    assert ious.mean_iou[0, 0] == pytest.approx(mean)
    r = app([(prediction([pred], [0.9]), target(sem, inst))])
    assert r["APp60"] == 1.0 and r["APp70"] == 0.0
    assert r["PCP50"] == 0.5  # one of the person's two parts has IoU > 0.5
    assert r["PCP10"] == 0.5  # part 2 has IoU 0, never > t


def test_unmatched_gt_persons_pad_pcp_to_npos():
    """Golden case of §A2 step 7: PCP is divided by npos, so a missed person counts 0."""
    r = app([(prediction([A], [0.9]), target(SEM, INST))])
    assert r["APp50"] == 0.5  # recall stops at 1/2 with precision 1
    assert r["PCP50"] == 0.5  # (1 + 0) / 2


def test_swapped_identities_lower_app_but_not_miou():
    """A's top with B's bottom and vice versa: same semantic map, wrong persons."""
    swap1 = np.where(INST == 1, SEM == 1, SEM == 2) * SEM
    swap2 = np.where(INST == 2, SEM == 1, SEM == 2) * SEM
    ev = ParsingEvaluator(4)
    ev.update(prediction([swap1, swap2], [0.9, 0.8], semantic=SEM), target(SEM, INST))
    r = ev.compute()
    assert r["mIoU"] == 1.0
    # Each swapped person: background 4/12, its correct part 4/4, its wrong part 0/8: mean 4/9 against A and B.
    # Both pick A (first of equal means); the second is an FP with no fallback to B.
    for t in (10, 20, 30, 40):
        assert r[f"APp{t}"] == pytest.approx(0.5)
    for t in (50, 60, 70, 80, 90):
        assert r[f"APp{t}"] == 0.0
    assert r["PCP10"] == pytest.approx(0.25)  # one TP with 1 of 2 parts right, over npos 2


def test_merged_pair_matches_at_most_one_person():
    merged = SEM.copy()  # one predicted person covering A and B
    r = app([(prediction([merged], [0.9]), target(SEM, INST))])
    # against A: part 1 4/8, part 2 4/8, background 0/8 -> mean 1/3
    for t in (10, 20, 30):
        assert r[f"APp{t}"] == pytest.approx(0.5)
    assert r["APp40"] == 0.0


def test_duplicate_detection_is_a_false_positive():
    r = app([(prediction([A, A, B], [0.9, 0.8, 0.7]), target(SEM, INST))])
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3 -> area .5 * 1 + .5 * 2/3
    assert r["APp50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    r = app([(prediction([A, A, B], [0.9, 0.1, 0.7]), target(SEM, INST))])
    assert r["APp50"] == 1.0  # the same duplicate ranked last costs nothing under the VOC envelope
    assert r["PCP50"] == 1.0  # false positives never enter PCP


def test_no_fallback_to_second_best_gt():
    """The second prediction's best GT is taken: FP, even though another GT is free and would match."""
    near_a = A.copy()
    near_a[0, 2] = 1  # overlaps B slightly, still closest to A
    ious = person_part_iou(person_pixels(T(np.stack([A, near_a]))), T(SEM), T(INST), 2, 4)
    assert np.argmax(ious.mean_iou[1]) == 0
    tp, _ = match_persons(ious, np.array([0.9, 0.8]))
    assert tp[:, 4].tolist() == [True, False]


def test_threshold_is_strict():
    """ovmax must exceed t: a mean IoU of exactly 0.5 is not a TP at 0.5 (nor a correct part for PCP)."""
    sem = np.array([[1, 1, 0, 0, 0, 0]])
    inst = (sem > 0).astype(np.int64)
    pred = np.array([[1, 1, 1, 1, 0, 0]])  # background 2/4, part 1 2/4: mean exactly 0.5
    ious = person_part_iou(person_pixels(T(pred)[None]), T(sem), T(inst), 1, 2)
    assert ious.mean_iou[0, 0] == 0.5
    r = app([(prediction([pred], [0.9]), target(sem, inst))], num_classes=2)
    assert r["APp40"] == 1.0 and r["APp50"] == 0.0
    assert r["PCP40"] == 1.0 and r["PCP50"] == 0.0


def test_tied_scores_keep_insertion_order():
    """Equal scores have no defined order officially; hparse keeps the order of update (stable sort)."""
    empty = np.zeros((4, 4), dtype=np.int64)
    perfect = (prediction([A], [0.5]), target(A, (A > 0).astype(int), image_id="tp"))
    false_pos = (prediction([A], [0.5]), target(empty, empty, num_gt=0, image_id="fp"))
    assert app([perfect, false_pos])["APp50"] == 1.0  # TP then FP
    assert app([false_pos, perfect])["APp50"] == 0.5  # FP then TP


def test_empty_images():
    empty = np.zeros((4, 4), dtype=np.int64)
    nothing = (prediction([], [], semantic=empty), target(empty, empty, num_gt=0))
    r = app([nothing, nothing])
    assert r["APp50"] == 0.0  # no prediction at all: the VOC sentinels alone have zero area
    assert np.isnan(r["PCP50"])  # 0 / npos with npos = 0
    # A GT person and no prediction: recall 0.
    r = app([(prediction([], [], semantic=empty), target(SEM, INST)), nothing])
    assert r["APp50"] == 0.0 and r["PCP50"] == 0.0
    # Predictions but no GT anywhere: recall 0/0 -> NaN, as the official arithmetic gives.
    r = app([(prediction([A], [0.9]), target(empty, empty, num_gt=0))])
    assert np.isnan(r["APp50"])
    # A false positive on an empty image, ranked above a TP elsewhere.
    r = app([(prediction([A], [0.9]), target(empty, empty, num_gt=0)),
             (prediction([A], [0.5]), target(A, (A > 0).astype(int)))])
    assert r["APp50"] == 0.5


def test_score_threshold_skips_low_scores():
    """Parsing R-CNN skips persons scored below 0.001: neither TP nor FP, and they take no GT away."""
    tgt = target(A, (A > 0).astype(int))
    # Without the threshold the low-scored copy is counted: an FP after the TP.
    ev = PartAP(4, score_thresh=0.0)
    ev.update(T(np.stack([A, A])), torch.tensor([0.0005, 0.9]), tgt["semantic"], tgt["instances"])
    assert ev.compute()["APp50"] == 1.0  # the FP comes last and the envelope hides it
    r = app([(prediction([A, A], [0.0005, 0.0002]), tgt)])
    assert r["APp50"] == 0.0  # both skipped: no prediction at all
    r = app([(prediction([A, A], [0.0005, 0.0002]), tgt)], score_thresh=0.0)
    assert r["APp50"] == 1.0


def test_skip_empty_gt_option():
    """Parsing R-CNN counts every annotation in npos; MHP skips persons whose part map is empty."""
    tgt = target(A, (A > 0).astype(int), num_gt=2)  # person 2 is annotated but has no pixels
    pred = prediction([A], [0.9])
    assert app([(pred, tgt)])["APp50"] == 0.5
    assert app([(pred, tgt)], skip_empty_gt=True)["APp50"] == 1.0


def test_ignore_pixels_inside_a_person_are_dropped():
    sem = A.copy()
    sem[0, 0] = 255  # unlabelled pixel inside person A
    pred = A.copy()
    pred[0, 0] = 3  # whatever is predicted there is not scored for A
    ious = person_part_iou(person_pixels(T(pred)[None]), T(sem), T(INST * (INST == 1)), 1, 4)
    assert np.isnan(ious.class_iou[0, 0, 3])  # label 3 only on a dropped pixel: in neither map
    assert ious.class_iou[0, 0, 1] == 1.0


def test_person_order_never_matters():
    rng = np.random.default_rng(0)
    for _ in range(5):
        persons = [np.where(rng.random((4, 4)) < 0.8, SEM, 0) * (INST == rng.integers(1, 3)) for _ in range(4)]
        scores = rng.permutation([0.9, 0.7, 0.5, 0.3]).tolist()
        perm = rng.permutation(4)
        r1 = app([(prediction(persons, scores), target(SEM, INST))])
        r2 = app([(prediction([persons[i] for i in perm], [scores[i] for i in perm]), target(SEM, INST))])
        assert r1 == r2


def _ranked(accumulator) -> int:
    """Predictions an accumulator has ranked so far, i.e. those that passed the score threshold to the matcher."""
    return sum(len(s) for s in accumulator._scores)


def test_lowest_score_garbage_never_raises_app():
    """A person ranked below all others is matched last: it takes no GT person from them, so AP^p never falls,
    and where every GT person is already claimed it can only be a false positive at the end of the ranking, so AP^p
    does not rise either. The garbage here is a corrupted copy of a GT person (it can beat the IoU threshold), and
    the score threshold is 0 so that its score of 0.0 really reaches the matcher."""
    rng = np.random.default_rng(1)
    tgt = target(SEM, INST)
    tempting = 0  # claimed thresholds where the garbage's own IoU beats t: only one-to-one matching stops it
    for case in range(30):
        persons = [np.where(rng.random((4, 4)) < 0.85, SEM, 0) * (INST == k) for k in (1, 2)]
        scores = [0.9, 0.8]
        if case % 3 == 0:
            garbage = rng.integers(0, 4, (4, 4))  # anywhere, any label
        else:
            garbage = np.where(rng.random((4, 4)) < 0.7, SEM, rng.integers(0, 4, (4, 4))) * (INST == 1 + case % 2)
        base = app([(prediction(persons, scores), tgt)], score_thresh=0.0)
        ev = ParsingEvaluator(4, metrics=("app",), score_thresh=0.0)
        ev.update(prediction([*persons, garbage], [*scores, 0.0]), tgt)
        more = ev.compute()
        assert _ranked(ev.part_ap) == 3  # the garbage was matched, not dropped by the threshold
        # Which thresholds see every GT person claimed by the real predictions (matched without the garbage).
        tp, _ = match_persons(person_part_iou(person_pixels(T(np.stack(persons))), T(SEM), T(INST), 2, 4),
                              np.array(scores))
        claimed = tp.sum(0) == 2
        own = person_part_iou(person_pixels(T(garbage)[None]), T(SEM), T(INST), 2, 4).mean_iou[0]
        for k, t in enumerate(range(10, 100, 10)):
            assert more[f"APp{t}"] >= base[f"APp{t}"]
            if claimed[k]:
                assert more[f"APp{t}"] <= base[f"APp{t}"]
                tempting += bool(np.nanmax(own) > t / 100)
        # At the default threshold (0.001) the same garbage is dropped before matching.
        ev = ParsingEvaluator(4, metrics=("app",))
        ev.update(prediction([*persons, garbage], [*scores, 0.0]), tgt)
        assert _ranked(ev.part_ap) == 2
        default = app([(prediction(persons, scores), tgt)])
        assert ev.part_ap.compute() == {k: v for k, v in default.items() if k.startswith(("APp", "PCP"))}
    assert tempting >= 50
