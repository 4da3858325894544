"""mIoU on hand-computed cases, the evaluator's keys and input errors (metrics_and_formats.md §A1, DESIGN.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hparse.data.contract import person_part_maps
from hparse.metrics import MetricInputError, ParsingEvaluator, SemanticIoU, confusion_matrix, iou_from_confusion

T = lambda a: torch.tensor(np.asarray(a), dtype=torch.int64)  # noqa: E731


def sample(sem, inst, image_id="0000001"):
    sem, inst = T(sem), T(inst)
    n = int(inst.max()) if inst.numel() else 0
    return {"semantic": sem, "instances": inst, "boxes": torch.zeros(n, 4), "meta": {"id": image_id, "dataset": "t"}}


def perfect(tgt, scores=None):
    parts = person_part_maps(tgt["semantic"], tgt["instances"], tgt["boxes"].shape[0])
    scores = torch.linspace(0.9, 0.5, parts.shape[0]) if scores is None else torch.tensor(scores)
    sem = torch.where(tgt["semantic"] == 255, 0, tgt["semantic"])
    return {"semantic": sem, "person_parts": parts, "person_scores": scores}


SEM = np.array([[0, 1, 1, 0], [0, 2, 2, 0], [0, 3, 3, 0]])
INST = (SEM > 0).astype(np.int64)


def test_miou_by_hand_and_ignore():
    gt = T([[0, 1, 1], [2, 2, 255]])
    pred = T([[0, 1, 2], [2, 2, 1]])
    m = SemanticIoU(3)
    m.update(pred, gt)
    r = m.compute()
    # the 255 pixel is dropped: bg 1/1, part 1 1/2, part 2 2/3
    np.testing.assert_allclose(r["IoU"], [1.0, 0.5, 2 / 3])
    assert r["mIoU"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert r["pixel_acc"] == pytest.approx(4 / 5)
    assert confusion_matrix(pred, gt, 3).sum() == 5


def test_miou_is_one_confusion_matrix_over_the_split():
    m = SemanticIoU(2)
    m.update(T([[1, 1, 1, 1]]), T([[1, 1, 1, 1]]))  # big image, perfect
    m.update(T([[0]]), T([[1]]))  # small image, wrong
    assert m.compute()["IoU"][1] == pytest.approx(4 / 5)  # not the mean of per-image IoUs (1 and 0)


def test_absent_class_modes():
    conf = np.array([[3, 0, 0], [0, 2, 0], [0, 0, 0]])  # class 2 never occurs
    iou, miou = iou_from_confusion(conf, "nan")
    assert np.isnan(iou[2]) and miou == 1.0
    iou, miou = iou_from_confusion(conf, "zero")
    assert iou[2] == 0.0 and miou == pytest.approx(2 / 3)


def test_evaluator_keys_and_perfect_prediction():
    names = ["bg", "a", "b", "c"]
    ev = ParsingEvaluator(4, class_names=names)
    tgt = sample(SEM, INST)
    ev.update(perfect(tgt), tgt)
    r = ev.compute()
    for key in ("mIoU", "pixel_acc", "APp50", "APpvol", "PCP50", "APr50", "APr60", "APr70", "APrvol",
                "IoU/a", "APr50/c"):
        assert r[key] == 1.0, key
    for prefix in ("APp", "APr", "PCP"):
        assert [k for k in r if k.startswith(prefix) and k[len(prefix):].isdigit()] == \
            [f"{prefix}{t}" for t in range(10, 100, 10)]
    assert len(r["IoU"]) == 4 and r["num_images"] == 1 and r["num_gt_persons"] == 1
    assert ev.config()["ap_style"] == "voc"
    ev.reset()
    assert ev.compute()["num_images"] == 0


def test_person_order_never_matters_for_any_metric():
    """Permuting the predicted persons with their scores and part scores leaves mIoU (of the map painted from the
    persons), AP^p, PCP and AP^r unchanged; the persons overlap, so the painting order is exercised."""
    sem = np.array([[1, 1, 1, 1, 0, 0], [2, 2, 2, 2, 0, 0], [3, 3, 3, 3, 0, 0]])
    inst = np.array([[1, 1, 2, 2, 0, 0]] * 3)
    tgt = sample(sem, inst)
    rng = np.random.default_rng(4)
    for case in range(10):
        persons = [np.where(rng.random(sem.shape) < 0.6, sem * (inst == rng.integers(1, 3)),
                            rng.integers(0, 4, sem.shape)) for _ in range(4)]
        scores = rng.permutation([0.9, 0.7, 0.5, 0.3])
        parts = rng.random((4, 4))
        perm = rng.permutation(4)
        results = []
        for order in (np.arange(4), perm):
            pred = {"person_parts": T(np.stack([persons[i] for i in order])),
                    "person_scores": torch.tensor(scores[order], dtype=torch.float32)}
            if case % 2:
                pred["part_scores"] = torch.tensor(parts[order], dtype=torch.float32)
            ev = ParsingEvaluator(4, score_thresh=0.0)
            ev.update(pred, tgt)
            results.append(ev.compute())
        np.testing.assert_equal(results[0], results[1])
        assert not np.isnan(results[0]["mIoU"])


def test_semantic_painted_when_missing():
    tgt = sample(SEM, INST)
    pred = perfect(tgt)
    del pred["semantic"]
    ev = ParsingEvaluator(4)
    ev.update(pred, tgt)
    assert ev.compute()["mIoU"] == 1.0


def test_metric_subsets():
    tgt = sample(SEM, INST)
    ev = ParsingEvaluator(4, metrics=("miou",))
    ev.update({"semantic": tgt["semantic"]}, tgt)  # persons are not needed for mIoU alone
    r = ev.compute()
    assert r["mIoU"] == 1.0 and "APp50" not in r and "APr50" not in r
    with pytest.raises(ValueError, match="unknown metric groups"):
        ParsingEvaluator(4, metrics=("miou", "pq"))


def test_values_are_fractions():
    rng = np.random.default_rng(0)
    ev = ParsingEvaluator(4)
    for i in range(3):
        tgt = sample(SEM, INST, image_id=str(i))
        pred = perfect(tgt)
        pred["person_parts"] = torch.where(torch.as_tensor(rng.random(pred["person_parts"].shape) < 0.3), 0,
                                           pred["person_parts"])
        ev.update(pred, tgt)
    r = ev.compute()
    for key, value in r.items():
        if key.startswith(("mIoU", "APp", "PCP", "pixel")):
            assert 0.0 <= value <= 1.0, key


@pytest.mark.parametrize("case, message", [
    ("size", "has size (2, 4) but the ground truth is (3, 4)"),
    ("label", "person_parts has labels [7] outside 0..3"),
    ("sem_label", "semantic prediction has labels [9] outside 0..3"),
    ("nan", "person_scores of persons [0] are NaN"),
    ("count", "1 persons in person_parts but 2 in person_scores"),
    ("gt_label", "ground-truth semantic has labels [5] outside 0..3 (or 255)"),
    ("gt_ids", "ground-truth instances has person ids 0..3 but the image has 1 annotated persons"),
    ("part_scores", "part_scores must be a (1, 4) tensor"),
    ("float", "person_parts must be an integer tensor"),
])
def test_errors_name_the_image(case, message):
    tgt = sample(SEM, INST, image_id="0000042")
    pred = perfect(tgt)
    if case == "size":
        pred["person_parts"] = pred["person_parts"][:, :2]
    elif case == "label":
        pred["person_parts"][0, 0, 0] = 7
    elif case == "sem_label":
        pred["semantic"][0, 0] = 9
    elif case == "nan":
        pred["person_scores"] = torch.tensor([float("nan")])
    elif case == "count":
        pred["person_scores"] = torch.tensor([0.9, 0.8])
    elif case == "gt_label":
        tgt["semantic"][0, 0] = 5
    elif case == "gt_ids":
        tgt["instances"][0, 0] = 3
    elif case == "part_scores":
        pred["part_scores"] = torch.zeros(1, 3)
    elif case == "float":
        pred["person_parts"] = pred["person_parts"].float()
    with pytest.raises(MetricInputError, match="image '0000042'") as err:
        ParsingEvaluator(4).update(pred, tgt)
    assert message in str(err.value)


def test_uint8_person_parts_and_empty_prediction():
    tgt = sample(SEM, INST)
    pred = perfect(tgt)
    pred["person_parts"] = pred["person_parts"].to(torch.uint8)
    ev = ParsingEvaluator(4)
    ev.update(pred, tgt)
    empty = {"semantic": torch.zeros(3, 4, dtype=torch.int64), "person_parts": torch.zeros(0, 3, 4, dtype=torch.uint8),
             "person_scores": torch.zeros(0)}
    ev.update(empty, sample(np.zeros((3, 4)), np.zeros((3, 4)), "empty"))
    r = ev.compute()
    assert r["APp50"] == 1.0 and r["APr50"] == 1.0


@pytest.mark.gpu
def test_cuda_tensors_give_the_cpu_numbers():
    from hparse.data import SynthCrowd
    from hparse.metrics.corruptions import CORRUPTIONS, prediction_from_target

    rng = np.random.default_rng(0)
    pairs = []
    for target in SynthCrowd(split="val", num_images=4, image_size=96, min_people=2, max_people=4, seed=0):
        pred = prediction_from_target(target, scores=rng.uniform(0.1, 1, len(target["boxes"])))
        pred = CORRUPTIONS["swap two people"](pred, target, rng)
        pred["part_scores"] = torch.rand(pred["person_parts"].shape[0], 20)
        pairs.append((pred, target))
    cpu, gpu = ParsingEvaluator(20), ParsingEvaluator(20)
    for pred, target in pairs:
        cpu.update(pred, target)
        gpu.update({k: v.cuda() for k, v in pred.items()}, target)
    a, b = cpu.compute(), gpu.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], nan_ok=True), key
