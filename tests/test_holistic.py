"""The holistic parser (Li, Arnab & Torr, BMVC 2017) as a model: flags, training phases, OHEM, outputs."""

import math
import sys

import pytest
import torch

from hparse.data import SynthCrowd
from hparse.engine import get_profile
from hparse.models import build_model, model_names
from hparse.models.holistic import HolisticCRF, dilate_resnet, jitter_boxes
from hparse.ops import hungarian_matched_loss
from hparse.recipes import METHODS, recipe

SIZE = 64


@pytest.fixture(scope="module")
def batch():
    data = SynthCrowd("train", num_images=2, image_size=SIZE, min_people=2, max_people=3, seed=0)
    samples = [data[i] for i in range(2)]
    return [s["image"] for s in samples], samples


def small_model(**flags) -> HolisticCRF:
    """The smoke recipe's model at 64 pixels; the first training step pre-trains the segmentation."""
    plan = recipe("holistic_crf", get_profile("smoke"), **{"segmentation_steps": 1, **flags})
    torch.manual_seed(0)
    return build_model("holistic_crf", num_classes=20, **plan["model"])


def _step(model, images, targets, optimizer):
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def test_registered_with_recipes():
    assert "holistic_crf" in model_names() and "holistic_crf" in METHODS
    for profile in ("smoke", "cpu", "gpu"):
        plan = recipe("holistic_crf", get_profile(profile))
        assert plan["model"]["pyramid_pooling"] and plan["model"]["training"] == "end_to_end"
        assert 0 < plan["model"]["segmentation_steps"] < plan["train"]["iterations"]
    from hparse.models.pretrain import split_pinned

    assert split_pinned(recipe("holistic_crf", get_profile("cpu"))["model"]["backbone_weights"])[0] == "synthcrowd"
    assert recipe("holistic_crf", get_profile("smoke"), "ppp")["model"]["detector"]["test_size"] == 128
    with pytest.raises(ValueError, match="holistic_crf has recipes"):
        recipe("holistic_crf", get_profile("smoke"), "cihp")


FLAGS = [
    {},
    {"pyramid_pooling": False},
    {"output_stride": 16},
    {"fcn_features": "fpn"},
    {"global_term": False},  # Table 1's box term only (with the pairwise term)
    {"pairwise": False},
    {"crf_iters": 0},
    {"ohem": False},
    {"training": "piecewise"},
    {"detections": "gt"},
    {"match_level": "segment", "unmatched": "ignore"},
    {"normalize": False},
]


@pytest.mark.parametrize("flags", FLAGS, ids=[",".join(f"{k}={v}" for k, v in f.items()) or "recipe" for f in FLAGS])
def test_each_flag_trains_a_step_in_both_phases(batch, flags):
    images, targets = batch
    model = small_model(**flags).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    assert model.phase == "segmentation"
    first = _step(model, images, targets, optimizer)
    assert first["loss_semantic"] > 0 and first["loss_instance"] == 0
    assert model.phase == "instance"
    crf_before = {k: v.clone() for k, v in model.crf.state_dict().items()}
    second = _step(model, images, targets, optimizer)
    assert second["loss_instance"] > 0 and second["loss_semantic"] == 0
    assert any(not torch.equal(v, model.crf.state_dict()[k]) for k, v in crf_before.items())  # the CRF learns
    assert ("loss_classifier" in second) == (flags.get("detections", "detector") == "detector")
    assert int(model.steps_seen) == 2 and "steps_seen" in model.state_dict()


@pytest.mark.parametrize("training", ["piecewise", "end_to_end"])
def test_piecewise_second_phase_leaves_the_segmentation_net_unchanged(batch, training):
    images, targets = batch
    model = small_model(training=training, segmentation_steps=0, backbone_norm="bn").train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=1e-4)
    before = {k: v.clone() for k, v in model.segmentation.state_dict().items()}  # weights and BN statistics
    crf_before = model.crf.weights()
    for _ in range(2):
        _step(model, images, targets, optimizer)
    after = model.segmentation.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    if training == "piecewise":
        assert changed == []
    else:
        assert any("classifier" in k for k in changed) and any("trunk" in k for k in changed)
    assert model.crf.weights() != crf_before


@pytest.mark.parametrize("k", [50, 0.12])
def test_ohem_keeps_k_pixels(batch, monkeypatch, k):
    images, targets = batch
    crf_module = sys.modules[hungarian_matched_loss.__module__]  # where the matched loss looks OHEM up
    kept = []
    original = crf_module.ohem_reduce

    def spy(loss, ohem_k, valid=None, **kw):
        from hparse.ops.ohem import ohem_mask

        kept.append((ohem_k, int(ohem_mask(loss, ohem_k, valid, **kw).sum()), int(valid.sum())))
        return original(loss, ohem_k, valid, **kw)

    monkeypatch.setattr(crf_module, "ohem_reduce", spy)
    model = small_model(ohem=True, ohem_k=k, segmentation_steps=0).train()
    model(images, targets)
    (ohem_k, count, valid), = kept
    expected = k if isinstance(k, int) else math.ceil(k * valid)
    assert ohem_k == k and count == expected < valid  # K of the mini-batch's pixels, not per image
    kept.clear()
    small_model(ohem=False, segmentation_steps=0).train()(images, targets)
    assert kept[0][0] is None and kept[0][1] == kept[0][2]


def test_predictions_follow_the_contract(batch):
    images, targets = batch
    model = small_model(detections="gt").eval()
    with pytest.raises(ValueError, match="detections='gt'"):
        model(images)
    detections = [{"boxes": t["boxes"], "scores": torch.full((len(t["boxes"]),), 0.9)} for t in targets]
    preds = model(images, detections=detections)
    for pred, t in zip(preds, targets):
        n = len(t["boxes"])
        assert pred["semantic"].shape == (SIZE, SIZE) and pred["semantic"].dtype == torch.int64
        assert pred["person_parts"].shape == (n, SIZE, SIZE) and pred["person_parts"].dtype == torch.uint8
        assert pred["person_scores"].shape == (n,) and pred["person_boxes"].shape == (n, 4)
        assert pred["part_scores"].shape == (n, 20) and (pred["part_scores"][:, 0] == 0).all()
        assert (pred["part_scores"] >= 0).all() and (pred["part_scores"] <= 1).all()
        # §3.4: the semantic map is the CRF labelling's part, the persons' maps its (person, part) split.
        painted = pred["person_parts"].long().amax(0)
        assert torch.equal(painted, pred["semantic"])
    # The detector path gives the same contract (an untrained detector may find nobody).
    out = small_model().eval()(images)
    assert out[0]["part_scores"].shape[1] == 20 and out[0]["semantic"].shape == (SIZE, SIZE)


def test_detector_from_a_checkpoint(tmp_path, batch):
    from hparse.engine.checkpoint import save_checkpoint

    images, _ = batch
    plan = recipe("parsing_rcnn", get_profile("smoke"))
    torch.manual_seed(0)
    detector = build_model("parsing_rcnn", num_classes=20, **plan["model"])
    path = save_checkpoint(tmp_path / "det.pt", {"model": detector.state_dict(), "model_config": detector.build_config})
    model = small_model(detector_checkpoint=str(path), detection_score_thresh=0.0).eval()
    assert not model.train_detector and not any(p.requires_grad for p in model.detector.parameters())
    preds = model(images)
    assert len(preds) == 2 and all(len(p["person_scores"]) <= 6 for p in preds)


def test_dilated_trunk_keeps_the_output_stride():
    for stride in (8, 16):
        model = small_model(output_stride=stride)
        res5 = model.segmentation.features(torch.zeros(1, 3, SIZE, SIZE))
        assert res5.shape[-1] == SIZE // stride
    from torchvision.models import resnet50

    body = resnet50()
    dilate_resnet(body, 8)
    assert body.layer4[1].conv2.dilation == (4, 4) and body.layer4[0].conv2.dilation == (2, 2)


def test_jittered_boxes_stay_valid():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [10.0, 5.0, 60.0, 63.0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = jitter_boxes(boxes, 64, 64, 0.5, g)
        assert (out[:, 2] - out[:, 0] >= 1 - 1e-6).all() and (out[:, 3] - out[:, 1] >= 1 - 1e-6).all()
        assert (out >= 0).all() and (out <= 64).all()


@pytest.mark.slow
def test_trains_and_evaluates_through_the_engine(tmp_path):
    from hparse.engine import train
    from hparse.experiments.runner import synth_splits
    from hparse.recipes import with_iterations

    plan = with_iterations(recipe("holistic_crf", get_profile("smoke")), 4)
    train_set, val_set = synth_splits({**plan["data"], "val_images": 2})
    model = build_model("holistic_crf", num_classes=20, **plan["model"])
    summary = train(model, train_set, eval_dataset=val_set, out_dir=tmp_path, progress=False,
                    **{**plan["train"], "eval_every": 0})
    assert summary["step"] == 4 and int(model.steps_seen) == 4
    assert {"mIoU", "APr50", "APr60", "APr70", "APrvol"} <= set(summary["metrics"])
