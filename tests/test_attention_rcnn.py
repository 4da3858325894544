"""RoI attention framework: fusion names, max-fused RoIAlign, heads, targets, Eq. 1, every variant, experiments."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from hparse.models import build_model
from hparse.models.attention_rcnn import AttentionRCNN
from hparse.models.heads.attention import (
    ATTENTION_VARIANTS,
    AttentionFusion,
    AttentionHead,
    AttentionParsingHead,
    FusionSpec,
    MaxFusedRoIAlign,
    UpsamplePredictor,
    attention_loss,
    attention_targets,
    parse_attention,
)
from hparse.recipes import attention_rcnn_recipe as synth_recipe

NUM_CLASSES = 20
SIZE = 64

TINY = dict(
    backbone="resnet18", train_sizes=None, test_size=None, max_size=None, anchor_sizes=(8, 16, 32, 64, 128),
    rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
    box_batch_size_per_image=32, box_detections_per_img=5, parsing_batch=3, head_channels=16, attention_channels=16,
    box_conv_channels=16, box_representation_size=64,
)


def crowd_sample(seed: int = 0, people: int = 2, width: int = SIZE) -> tuple[torch.Tensor, dict]:
    """Overlapping people: person 2 stands in front of person 1, inside person 1's (visible-extent) box.

    Person 1 occupies x 6..28, y 6..54, person 2 x 20..42, y 18..58 drawn on top; person 1 keeps its head band
    (y 6..18) at full width, so its box x 6..28 contains person 2's pixels at x 20..28. Person 3 (if any) stands
    apart. Parts are four horizontal bands per person with random labels, painted in one colour per label.
    """
    g = torch.Generator().manual_seed(seed)
    instances = torch.zeros(SIZE, width, dtype=torch.int64)
    semantic = torch.zeros(SIZE, width, dtype=torch.int64)
    rects = [(6, 6, 28, 54), (20, 18, 42, 58), (46, 10, 60, 50)][:people]
    for k, (x0, y0, x1, y1) in enumerate(rects):
        instances[y0:y1, x0:x1] = k + 1
        bands = torch.randint(1, NUM_CLASSES, (4,), generator=g)
        edges = torch.linspace(y0, y1, 5).round().long().tolist()
        for b in range(4):
            semantic[edges[b] : edges[b + 1], x0:x1] = bands[b]
    boxes = []
    for k in range(1, people + 1):
        ys, xs = (instances == k).nonzero(as_tuple=True)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    target = {"semantic": semantic, "instances": instances,
              "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "keypoints": torch.zeros(people, 0, 3), "meta": {"id": f"crowd{seed}", "dataset": "test"}}
    # Each part label has its own colour (plus noise), so appearance tells the parts apart as in a real photo.
    colours = torch.rand(NUM_CLASSES, 3, generator=torch.Generator().manual_seed(123))
    image = 0.8 * colours[semantic].permute(2, 0, 1) + 0.2 * torch.rand(3, SIZE, width, generator=g)
    return image, target


def tiny_model(**flags) -> AttentionRCNN:
    torch.manual_seed(0)
    return build_model("attention_rcnn", num_classes=NUM_CLASSES, **{**TINY, **flags})


def batch(people=(2, 3)):
    images, targets = zip(*[crowd_sample(i, n) for i, n in enumerate(people)])
    return list(images), list(targets)


# --------------------------------------------------------------------------------------------- fusion names


def test_parse_attention_names():
    assert parse_attention(None) is None
    assert parse_attention("concat_after_conv4") == FusionSpec("concat_after_conv4", "concat", 4, None)
    assert parse_attention("concat_after_conv4_trans") == FusionSpec("concat_after_conv4_trans", "concat", 4, "trans")
    assert parse_attention("dot_after_conv3_sum") == FusionSpec("dot_after_conv3_sum", "dot", 3, "sum")
    assert parse_attention("dot_after_conv4_sum").after == 4
    assert ATTENTION_VARIANTS[0] is None and len(ATTENTION_VARIANTS) == 5
    with pytest.raises(ValueError, match="conv1..conv4"):
        parse_attention("concat_after_conv5")
    with pytest.raises(ValueError, match="'_trans' goes with concat"):
        parse_attention("dot_after_conv4_trans")
    with pytest.raises(ValueError, match="'_sum' goes with dot"):
        parse_attention("concat_after_conv4_sum")
    with pytest.raises(ValueError, match="attention must be None or"):
        parse_attention("attention_please")


# ------------------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("aligned", [True, False])
def test_max_fused_roi_align_is_the_max_over_levels(aligned):
    g = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32)
    features = {str(i): torch.randn(2, 3, 64 // s, 64 // s, generator=g) for i, s in enumerate(strides)}
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 60.0], [0.0, 0.0, 64.0, 64.0]]), torch.tensor([[10.5, 3.0, 30.0, 21.0]])]
    pooled = MaxFusedRoIAlign(("0", "1", "2", "3"), 7, aligned=aligned)(features, boxes, [(64, 64), (60, 50)])
    per_level = torch.stack([roi_align(features[str(i)], boxes, 7, 1 / s, 2, aligned)
                             for i, s in enumerate(strides)])
    assert pooled.shape == (3, 3, 7, 7)
    assert torch.equal(pooled, per_level.amax(0))
    # Every level wins somewhere: the fusion really draws on all of them.
    assert set(per_level.argmax(0).unique().tolist()) == {0, 1, 2, 3}
    empty = MaxFusedRoIAlign(("0", "1"), 5)(features, [torch.zeros(0, 4), torch.zeros(0, 4)], [(64, 64)] * 2)
    assert empty.shape == (0, 3, 5, 5)
    with pytest.raises(KeyError, match="missing"):
        MaxFusedRoIAlign(("0", "7"), 5)(features, boxes, [(64, 64)] * 2)


# --------------------------------------------------------------------------------------------------- heads


def test_fusion_arithmetic():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 8, 8, generator=g)
    a = torch.rand(3, 1, 8, 8, generator=g)
    assert torch.allclose(AttentionFusion(parse_attention("dot_after_conv4_sum"), 6)(x, a), x * (1 + a))
    assert torch.allclose(AttentionFusion(parse_attention("dot_after_conv4"), 6)(x, a), x * a)
    concat = AttentionFusion(parse_attention("concat_after_conv4"), 6)
    out = concat(x, a)
    assert concat.out_channels == 7 and torch.equal(out[:, :6], x) and torch.equal(out[:, 6:], a)
    trans = AttentionFusion(parse_attention("concat_after_conv4_trans"), 6, gn_groups=2)
    assert trans.out_channels == 6 and trans(x, a).shape == (3, 6, 8, 8)
    assert torch.allclose(trans(x, a), trans.transition(torch.cat((x, a), 1)))
    # A 4x4 map on an 8x8 feature is resized (bilinear: a constant map stays constant).
    assert torch.allclose(AttentionFusion(parse_attention("dot_after_conv3"), 6)(x, torch.full((3, 1, 4, 4), 0.5)),
                          x * 0.5)
    with pytest.raises(ValueError, match=r"\(R, 1, S, S\)"):
        concat(x, a.expand(3, 2, 8, 8))


def test_head_shapes_and_paper_widths():
    assert AttentionHead(8, 16)(torch.randn(2, 8, 14, 14)).shape == (2, 1, 28, 28)
    assert UpsamplePredictor(17, 16, NUM_CLASSES)(torch.randn(2, 17, 28, 28)).shape == (2, NUM_CLASSES, 56, 56)
    for name, channels in [(None, 16), ("concat_after_conv4", 17), ("concat_after_conv4_trans", 16),
                           ("dot_after_conv3_sum", 16), ("dot_after_conv4_sum", 16), ("concat_after_conv3", 16)]:
        head = AttentionParsingHead(8, 16, fusion=parse_attention(name))
        assert head.out_channels == channels, name
        attention = None if name is None else torch.rand(2, 1, 28, 28)
        assert head(torch.randn(2, 8, 28, 28), attention).shape == (2, channels, 28, 28)
    # Concatenating after conv3 widens conv4's input by the one attention channel.
    assert AttentionParsingHead(8, 16, fusion=parse_attention("concat_after_conv3")).convs[3][0].in_channels == 17
    paper = AttentionParsingHead()
    gns = [m for m in paper.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(paper.convs) == 4 and len(gns) == 4 and all(g.num_groups == 32 and g.num_channels == 256 for g in gns)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in AttentionParsingHead(group_norm=False).modules())
    with pytest.raises(ValueError, match="exactly when"):
        AttentionParsingHead(8, 16)(torch.randn(1, 8, 28, 28), torch.rand(1, 1, 28, 28))


def test_dot_fusion_with_zero_attention():
    """``x (1 + a)`` with a = 0 is the head without attention; the plain gate ``x a`` erases the feature."""
    torch.manual_seed(0)
    plain = AttentionParsingHead(8, 16)
    with_sum = AttentionParsingHead(8, 16, fusion=parse_attention("dot_after_conv3_sum"))
    with_sum.convs.load_state_dict(plain.convs.state_dict())
    x, zero = torch.randn(2, 8, 28, 28), torch.zeros(2, 1, 28, 28)
    assert torch.allclose(with_sum(x, zero), plain(x))
    gate = AttentionParsingHead(8, 16, fusion=parse_attention("dot_after_conv4"))
    assert gate(x, zero).abs().sum() == 0
    assert not torch.allclose(with_sum(x, torch.ones_like(zero)), plain(x))


# -------------------------------------------------------------------------------------------- targets, loss


def test_attention_target_is_the_person_mask():
    _, t = crowd_sample()
    box = t["boxes"][0:1]  # person 1's box also holds person 2's pixels
    target = attention_targets([t["instances"]], [box], [torch.tensor([1])], 28)[0]
    x0, y0, x1, y1 = box[0].tolist()
    centres = (torch.arange(28) + 0.5) / 28
    xs = (x0 + centres * (x1 - x0)).floor().long()
    ys = (y0 + centres * (y1 - y0)).floor().long()
    crop = t["instances"][ys][:, xs]
    assert torch.equal(target, (crop == 1).float())
    assert (crop == 2).any() and target[crop == 2].sum() == 0  # the occluding neighbour is background
    whole = attention_targets([t["instances"]], [torch.tensor([[0.0, 0.0, 64.0, 64.0]])], [torch.tensor([2])], 64)
    assert torch.equal(whole[0], (t["instances"] == 2).float())
    with pytest.raises(ValueError, match="image 0 has 1 RoIs but 2 person ids"):
        attention_targets([t["instances"]], [box], [torch.tensor([1, 2])], 28)


def test_attention_loss_values():
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    target = (torch.rand(3, 8, 8) > 0.5).float()
    assert torch.allclose(attention_loss(logits, target), F.binary_cross_entropy_with_logits(logits[:, 0], target))
    assert torch.allclose(attention_loss(logits, target, 2.0), 2 * attention_loss(logits, target))
    empty = attention_loss(torch.zeros(0, 1, 8, 8, requires_grad=True), torch.zeros(0, 8, 8))
    assert empty.item() == 0 and empty.requires_grad
    with pytest.raises(ValueError, match="do not match"):
        attention_loss(logits, target[:, :4])


# ------------------------------------------------------------------------------------- model, every variant

DETECTOR_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_variant_train_and_eval(attention):
    model = tiny_model(attention=attention, return_masks=True)
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    expected = DETECTOR_LOSSES | {"loss_parsing"} | ({"loss_attention"} if attention else set())
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_parsing"] > 0
    total.backward()
    assert model.parsing_predictor.logits.weight.grad.abs().sum() > 0
    if attention is None:
        assert model.attention_head is None and model.parsing_head.fusion is None
    else:
        assert 0 < losses["loss_attention"] < 5
        assert model.attention_head.convs[0].weight.grad.abs().sum() > 0
        assert model.parsing_head.fusion.spec.name == attention
        if model.parsing_head.fusion.transition is not None:
            assert model.parsing_head.fusion.transition[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        preds = model(images)
    for pred in preds:
        n = len(pred["person_scores"])
        assert 1 <= n <= 5
        assert pred["semantic"].shape == (SIZE, SIZE) and pred["semantic"].dtype == torch.int64
        assert pred["person_parts"].shape == (n, SIZE, SIZE) and int(pred["person_parts"].max()) < NUM_CLASSES
        assert pred["person_boxes"].shape == (n, 4) and pred["person_scores"].dtype == torch.float32
        assert pred["person_masks"].shape == (n, SIZE, SIZE) and pred["person_masks"].dtype == torch.bool
        # A person's mask and parts lie inside its (expanded) box.
        x1, y1, x2, y2 = pred["person_boxes"][0].tolist()
        outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
        pad = max(x2 - x1, y2 - y1) / 28 + 1
        outside[max(int(y1 - pad), 0): int(y2 + pad) + 1, max(int(x1 - pad), 0): int(x2 + pad) + 1] = False
        assert not pred["person_parts"][0][outside].any() and not pred["person_masks"][0][outside].any()


def test_training_attention_target_is_matched_person_mask():
    """The attention targets of the detector's positive RoIs are the masks of the persons they are matched to."""
    model = tiny_model(parsing_batch=None)
    images, targets = batch()
    seen = {}
    original = model.branch_targets

    def spy(rois, targets_, device):
        parts, masks = original(rois, targets_, device)
        seen.update(rois=rois, parts=parts, masks=masks)
        return parts, masks

    model.branch_targets = spy
    model.train()
    model(images, targets)
    rois, masks = seen["rois"], seen["masks"]
    assert masks.shape == (rois.num_rois, 28, 28) and seen["parts"].shape == (rois.num_rois, 56, 56)
    r = 0
    crowded = 0
    for t, boxes, ids in zip(targets, rois.original_boxes(), rois.person_ids):
        for box, k in zip(boxes, ids):
            centres = (torch.arange(28) + 0.5) / 28
            xs = (box[0] + centres * (box[2] - box[0])).floor().long().clamp(0, SIZE - 1)
            ys = (box[1] + centres * (box[3] - box[1])).floor().long().clamp(0, SIZE - 1)
            crop = t["instances"][ys][:, xs]
            assert torch.equal(masks[r], (crop == k).float()), f"RoI {r}"
            crowded += int(((crop > 0) & (crop != k)).any())
            r += 1
    assert crowded > 0  # some RoIs hold other people, who must read as background


def test_equation_1_weights():
    """L = Ld + La + alpha Lp: alpha scales only the parsing term; the default alpha is 5."""
    images, targets = batch()
    losses = {}
    for alpha in (1.0, 5.0):
        model = tiny_model(parsing_loss_weight=alpha)
        model.train()
        torch.manual_seed(3)
        losses[alpha] = model(images, targets)
    assert torch.allclose(losses[5.0]["loss_parsing"], 5 * losses[1.0]["loss_parsing"])
    for name in DETECTOR_LOSSES | {"loss_attention"}:
        assert torch.allclose(losses[5.0][name], losses[1.0][name]), name
    assert AttentionRCNN(NUM_CLASSES, backbone="resnet18").parsing_loss_weight == 5.0


def test_parsing_loss_trains_the_attention_branch_through_the_fusion():
    model = tiny_model(attention_loss_weight=0.0)
    images, targets = batch()
    model.train()
    losses = model(images, targets)
    assert losses["loss_attention"].item() == 0
    losses["loss_parsing"].backward()
    assert model.attention_head.convs[0].weight.grad.abs().sum() > 0


def test_component_flags():
    model = tiny_model(roi_fusion="level", box_head="2fc", group_norm=False)
    assert isinstance(model.parsing_pool, MultiScaleRoIAlign) and isinstance(model.attention_pool, MultiScaleRoIAlign)
    assert isinstance(model.roi_heads.box_head, TwoMLPHead)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.parsing_head.modules())
    images, targets = batch()
    model.train()
    assert torch.isfinite(sum(model(images, targets).values()))
    with pytest.raises(ValueError, match="roi_fusion must be one of"):
        tiny_model(roi_fusion="mean")
    with pytest.raises(ValueError, match="box_head must be one of"):
        tiny_model(box_head="8conv")
    with pytest.raises(ValueError, match="attention must be None or"):
        tiny_model(attention="concat")


def test_paper_defaults_build():
    """Sec. 3.2: 28x28 max-fused parsing RoIs, four GN convs, x2 to 56; 14x14 attention to 28; 14x14 4-conv boxes."""
    model = AttentionRCNN(NUM_CLASSES, backbone="resnet18")
    assert model.attention == "concat_after_conv4" and model.output_size == 56 and model.attention_size == 28
    assert isinstance(model.parsing_pool, MaxFusedRoIAlign) and model.parsing_pool.output_size == 28
    assert model.parsing_pool.featmap_names == ["0", "1", "2", "3"]
    assert model.attention_pool.output_size == 14 and len(model.attention_head.convs) == 8  # 4 x (conv, ReLU)
    assert model.parsing_head.out_channels == 257  # 256 features + the attention map
    assert isinstance(model.roi_heads.box_head, FastRCNNConvFCHead)
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.roi_heads.box_head.modules()) == 4
    assert model.transform.train_sizes == (800,) and model.transform.test_size == 800
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 512 and model.branch_batch_per_image is None
    assert model.rpn.post_nms_top_n() == 2000 and model.attention_loss_weight == 1.0


def test_empty_images_train_and_predict_empty():
    model = tiny_model(return_masks=True)
    images, targets = batch(people=(0, 0))
    model.train()
    losses = model(images, targets)
    for name in ("loss_parsing", "loss_attention"):
        assert losses[name].item() == 0 and losses[name].requires_grad
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.score_thresh = 1.0  # nothing passes: the empty prediction path
    with torch.no_grad():
        preds = model(images)
    for pred in preds:
        assert pred["semantic"].shape == (SIZE, SIZE) and pred["semantic"].sum() == 0
        assert pred["person_parts"].shape == (0, SIZE, SIZE) and pred["person_masks"].shape == (0, SIZE, SIZE)
        assert pred["person_scores"].shape == (0,) and pred["person_boxes"].shape == (0, 4)


def test_predictions_and_roi_maps_at_original_resolution_after_resize():
    model = tiny_model(train_sizes=(96,), test_size=96, max_size=200)
    image, target = crowd_sample(width=80)
    model.train()
    assert torch.isfinite(sum(model([image], [target]).values()))
    model.eval()
    with torch.no_grad():
        pred = model([image])[0]
    assert pred["semantic"].shape == (64, 80) and pred["person_parts"].shape[1:] == (64, 80)
    assert (pred["person_boxes"][:, 2] <= 80 + 1e-3).all() and (pred["person_boxes"][:, 3] <= 64 + 1e-3).all()
    model.train()
    maps = model.roi_maps([image], [target["boxes"]])
    assert model.training  # the mode is restored
    assert maps[0]["attention"].shape == (2, 28, 28) and maps[0]["parsing"].shape == (2, NUM_CLASSES, 56, 56)
    assert ((maps[0]["attention"] >= 0) & (maps[0]["attention"] <= 1)).all()
    assert torch.allclose(maps[0]["parsing"].sum(1), torch.ones(2, 56, 56))
    assert "attention" not in tiny_model(attention=None).roi_maps([image], [target["boxes"]])[0]


@pytest.mark.slow
def test_fixed_batch_overfits():
    """Losses fall a lot on one fixed batch: targets, both branches and the fusion learn together.

    The trainer's optimiser (SGD, momentum 0.9, lr 0.02, gradient clipping at 10). About 40 s on an idle CPU core,
    several times that on a busy machine, hence ``slow``.
    """
    from hparse.engine.trainer import build_optimizer

    model = tiny_model(parsing_batch=2)
    images, targets = batch()
    optimizer = build_optimizer(model, "sgd", 0.02)
    model.train()
    history = []
    for _ in range(40):
        torch.manual_seed(1)  # the same RoI samples every step: a truly fixed batch
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        history.append(torch.stack([total, losses["loss_parsing"], losses["loss_attention"]]).detach())
    history = torch.stack(history)  # (steps, 3): total, parsing, attention
    first, last = history[0], history[-5:].mean(0)  # the last five steps: the RoIs move with the detector
    assert (last < torch.tensor([0.65, 0.65, 0.75]) * first).all(), history[::5].tolist()


def test_registry_and_recipe():
    model = tiny_model(attention="dot_after_conv4_sum")
    assert model.build_config["name"] == "attention_rcnn" and model.build_config["attention"] == "dot_after_conv4_sum"
    with pytest.raises(TypeError, match="attention_rcnn"):
        build_model("attention_rcnn", num_classes=NUM_CLASSES, backbone="resnet18", not_a_flag=1)
    from hparse.engine import get_profile

    for name in ("smoke", "cpu", "gpu"):
        recipe = synth_recipe(get_profile(name), attention=None)
        assert recipe["model"]["attention"] is None and recipe["train"]["milestones"] == (100 / 130, 115 / 130)
    assert "head_channels" not in synth_recipe(get_profile("gpu"))["model"]  # the paper's widths


# ------------------------------------------------------------------------------------------------- experiments


def test_other_person_fraction():
    from hparse.experiments.attention_ablation import other_person_fraction

    _, t = crowd_sample(people=3)
    fractions = other_person_fraction(t)
    box = t["boxes"][0].long()
    window = t["instances"][box[1] : box[3], box[0] : box[2]]
    assert torch.isclose(fractions[0], ((window > 0) & (window != 1)).float().mean())
    assert fractions[0] > 0 and fractions[2] == 0
    assert other_person_fraction({"instances": t["instances"], "boxes": torch.zeros(0, 4)}).shape == (0,)


def test_ablation_and_crowding_sweep_write_results(tmp_path, tmp_results):
    from hparse.engine import get_profile
    from hparse.experiments.attention_ablation import ablation, crowding_sweep, saved_ablation
    from hparse.experiments.runner import load_predictions, saved_artefacts

    profile = get_profile("smoke").override(train_images=4, val_images=2)
    results = ablation(profile, "cpu", seeds=(0, 1), variants=(None, "concat_after_conv4"), iterations=1,
                       out_root=tmp_path)
    assert set(results) == {"none", "concat_after_conv4"}
    record = json.loads((tmp_results / "smoke" / "attention_rcnn" / "ablation_concat_after_conv4.json").read_text())
    assert record["config"]["model"]["attention"] == "concat_after_conv4" and record["metrics"]["iterations"] == 1
    metrics = record["metrics"]
    assert metrics["seeds"] == [0, 1] and set(metrics["per_seed"]) == {"0", "1"}
    assert "APr50" in metrics["per_seed"]["1"] and metrics["std"]["mIoU"] >= 0 and "no GPU" in record["notes"]
    assert (tmp_path / "smoke" / "none" / "seed1" / "checkpoint.pt").exists()
    # The first seed's artefacts beside the record: its log and predictions with the attention maps of the gt boxes.
    found = saved_artefacts("attention_rcnn", "concat_after_conv4", profiles=("smoke",))
    assert found["log"].stat().st_size < 1_000_000 and found["predictions"].stat().st_size < 500_000
    saved = load_predictions(found["predictions"])
    assert saved["seed"] == 0 and saved["iterations"] == 1 and len(saved["predictions"]) == 2
    pred, maps = saved["predictions"][0], saved["roi_maps"][0]
    assert pred["person_parts"].dtype == torch.uint8 and pred["person_parts"].shape[1:] == saved["images"][0].shape[1:]
    assert maps["attention"].shape[1:] == (28, 28) and len(maps["boxes"]) == len(saved["targets"][0]["boxes"])
    assert saved_ablation(("smoke",)) is None  # three variants have no record: no table mixes sources
    with pytest.raises(ValueError, match="unknown variants"):
        ablation(profile, "cpu", variants=("concat",))
    # The sweep reuses every seed's finished run (no training) and evaluates each crowding.
    sweep = crowding_sweep(profile, "cpu", seeds=(0, 1), crowdings=(0.0, 1.0), iterations=1, out_root=tmp_path)
    record = json.loads((tmp_results / "smoke" / "attention_rcnn" / "crowding.json").read_text())
    assert record["metrics"]["crowding"] == [0.0, 1.0] == sweep["crowding"] and sweep["seeds"] == [0, 1]
    assert set(sweep["variants"]) == set(sweep["std"]) == set(sweep["per_seed"]) == {"none", "concat_after_conv4"}
    assert len(sweep["variants"]["none"]["APp50"]) == 2 and len(sweep["other_person_fraction"]) == 2
    assert set(sweep["per_seed"]["none"]) == {"0", "1"} and len(sweep["per_seed"]["none"]["1"]["APr50"]) == 2
    first = [sweep["per_seed"]["none"][s]["mIoU"][0] for s in ("0", "1")]
    assert sweep["variants"]["none"]["mIoU"][0] == pytest.approx(sum(first) / 2)
    assert sweep["std"]["none"]["mIoU"][0] == pytest.approx(abs(first[0] - first[1]) / 2 ** 0.5)
    assert sweep["other_person_fraction"][1] >= sweep["other_person_fraction"][0]
    assert record["config"]["models"]["none"]["train"]["iterations"] == 1


def test_sweep_spread_reads_old_and_new_records():
    from hparse.experiments.attention_ablation import sweep_spread

    old = {"crowding": [0.0, 1.0], "variants": {"none": {"APr50": [0.1, None]}}}
    assert sweep_spread(old, "none", "APr50") == ([0.1, None], [0.0, None])
    new = {**old, "std": {"none": {"APr50": [0.02, None]}}}
    assert sweep_spread(new, "none", "APr50") == ([0.1, None], [0.02, None])


class _OracleParser(torch.nn.Module):
    """A stand-in with ``roi_maps``: the labels it returns are a function of the true target, so ``roi_noise``'s
    numbers are known in advance."""

    def __init__(self, mode: str, size: int = 56):
        super().__init__()
        self.mode, self.size, self.samples = mode, size, {}

    def roi_maps(self, images, boxes):
        from hparse.models.targets import parsing_targets, sample_label_maps

        out = []
        for image, b in zip(images, boxes):
            sample = self.samples[id(image)]
            ids = torch.arange(1, len(b) + 1)
            target = parsing_targets([sample["semantic"]], [sample["instances"]], [b], [ids], self.size)
            if self.mode == "perfect":
                labels = torch.where(target == 255, torch.zeros_like(target), target)
            elif self.mode == "everyone":  # every person's parts, own or not: the noise attention should remove
                labels = sample_label_maps([sample["semantic"][None]], [b], self.size)[:, 0]
            else:  # "one": a part label everywhere
                labels = torch.ones_like(target)
            probs = F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()
            out.append({"parsing": probs, "labels": labels})
        return out


class _Samples(torch.utils.data.Dataset):
    def __init__(self, model, people=(2, 3, 1)):
        self.items = []
        for i, n in enumerate(people):
            image, target = crowd_sample(i, n)
            target["image"] = image
            model.samples[id(image)] = target
            self.items.append(target)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("mode", ["perfect", "everyone", "one"])
def test_roi_noise_scores_oracle_parsers(mode):
    from hparse.experiments.attention_ablation import roi_noise

    model = _OracleParser(mode)
    scores = roi_noise(model, _Samples(model), batch_size=2, device="cpu")
    assert scores["num_rois"] == 6 and scores["other_cells"] > 0  # person 2 reaches into person 1's box
    if mode == "perfect":
        assert scores["other_leakage"] == 0 and scores["own_recall"] == 1
        assert scores["roi_mIoU"] == pytest.approx(1.0) and scores["roi_pixel_acc"] == pytest.approx(1.0)
    elif mode == "everyone":  # other people's parts are labelled: all of them leak, own parts are right
        assert scores["other_leakage"] == 1 and scores["own_recall"] == 1
        assert scores["roi_mIoU"] < 1
    else:
        assert scores["other_leakage"] == 1 and scores["roi_pixel_acc"] < 0.5


def test_roi_noise_sweep_writes_results(tmp_path, tmp_results):
    from hparse.engine import get_profile
    from hparse.experiments.attention_ablation import ROI_NOISE_KEYS, roi_noise_sweep

    profile = get_profile("smoke").override(train_images=4, val_images=2, iterations=1)
    sweep = roi_noise_sweep(profile, "cpu", seeds=(0, 1), crowdings=(0.0, 1.0), out_root=tmp_path)
    record = json.loads((tmp_results / "smoke" / "attention_rcnn" / "roi_noise.json").read_text())
    assert record["metrics"]["crowding"] == [0.0, 1.0] and record["metrics"]["seeds"] == [0, 1]
    assert set(sweep["per_seed"]["concat_after_conv4"]) == {"0", "1"}
    assert all(s is None or s >= 0 for s in sweep["std"]["none"]["other_leakage"])
    for key in ("none", "concat_after_conv4"):
        rows = sweep["variants"][key]
        assert set(ROI_NOISE_KEYS) <= set(rows) and rows["num_rois"][0] > 0
        assert all(v is None or 0 <= v <= 1 for name in ROI_NOISE_KEYS for v in rows[name])


# ------------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_train_and_eval_amp_channels_last():
    device = torch.device("cuda")
    model = tiny_model().to(device).to(memory_format=torch.channels_last)
    model.channels_last = True
    images, targets = batch()
    images = [i.to(device) for i in images]
    targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        preds = model(images)
    assert preds[0]["semantic"].device.type == "cuda" and preds[0]["semantic"].shape == (SIZE, SIZE)
