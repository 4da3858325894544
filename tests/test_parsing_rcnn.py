"""Parsing R-CNN: targets, loss, paste, heads, every flag combination, empty images, overfitting, registry."""

from __future__ import annotations

import itertools
import json
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from hparse.models import build_model
from hparse.models.backbone import build_resnet_fpn
from hparse.models.detector import DetectionTransform, scaled_anchor_sizes
from hparse.models.heads import ASPP, GCE, NonLocal2d, ParsingHead, ParsingPredictor
from hparse.models.inference import expand_boxes, paint_semantic, paste_part_probs
from hparse.models.parsing_rcnn import ParsingRCNN
from hparse.models.targets import parsing_loss, parsing_targets, sample_label_maps
from hparse.recipes import demo_recipe
from hparse.recipes import recipe as method_recipe

NUM_CLASSES = 20
SIZE = 64

# A tiny detector: resnet18, no resizing, few proposals and RoIs, narrow heads (the paper's structure, fewer channels).
TINY = dict(
    backbone="resnet18", train_sizes=None, test_size=None, max_size=None, anchor_sizes=(8, 16, 32, 64, 128),
    rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
    box_batch_size_per_image=32, box_detections_per_img=5, parsing_batch=2, head_channels=32, gce_channels=32,
    box_representation_size=64,
)


def make_sample(people: int, seed: int = 0, height: int = SIZE, width: int = SIZE) -> tuple[torch.Tensor, dict]:
    """A data-contract sample with ``people`` standing rectangles of random part labels."""
    g = torch.Generator().manual_seed(seed)
    instances = torch.zeros(height, width, dtype=torch.int64)
    semantic = torch.zeros(height, width, dtype=torch.int64)
    boxes = []
    for k in range(people):
        x0, y0 = 4 + 22 * k, 8
        instances[y0 : y0 + 44, x0 : x0 + 18] = k + 1
        # Parts in four horizontal bands (a head, a torso, two legs side by side), labels drawn per person.
        bands = torch.randint(1, NUM_CLASSES, (4,), generator=g)
        semantic[y0 : y0 + 11, x0 : x0 + 18] = bands[0]
        semantic[y0 + 11 : y0 + 26, x0 : x0 + 18] = bands[1]
        semantic[y0 + 26 : y0 + 44, x0 : x0 + 9] = bands[2]
        semantic[y0 + 26 : y0 + 44, x0 + 9 : x0 + 18] = bands[3]
        boxes.append([x0, y0, x0 + 18, y0 + 44])
    target = {
        "semantic": semantic,
        "instances": instances,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "keypoints": torch.zeros(people, 0, 3),
        "meta": {"id": f"s{seed}", "dataset": "test"},
    }
    return torch.rand(3, height, width, generator=g), target


def tiny_model(**flags) -> ParsingRCNN:
    torch.manual_seed(0)
    return build_model("parsing_rcnn", num_classes=NUM_CLASSES, **{**TINY, **flags})


# ------------------------------------------------------------------------------------------------------ targets


def test_nearest_crop_of_known_map_is_exact():
    labels = torch.arange(40 * 50).view(40, 50) % 251  # every pixel its own (small) label
    # A box of exactly the output size: the target is the slice itself.
    box = torch.tensor([[7.0, 5.0, 15.0, 13.0]])
    out = sample_label_maps([labels[None]], [box], 8)[0, 0]
    assert torch.equal(out, labels[5:13, 7:15])
    # A box three times the output size: cell j's centre x1 + 3j + 1.5 lies in pixel x1 + 3j + 1.
    box = torch.tensor([[10.0, 4.0, 34.0, 28.0]])
    out = sample_label_maps([labels[None]], [box], 8)[0, 0]
    assert torch.equal(out, labels[5:28:3, 11:34:3])


def test_targets_never_blend_labels_and_keep_ignore():
    g = torch.Generator().manual_seed(1)
    sizes = [(48, 40), (30, 60), (20, 20)]
    semantic, instances, boxes, ids = [], [], [], []
    for i, (h, w) in enumerate(sizes):
        sem = torch.randint(0, NUM_CLASSES, (h, w), generator=g)
        sem[torch.rand(h, w, generator=g) < 0.1] = 255
        inst = torch.randint(0, 4, (h, w), generator=g)
        semantic.append(sem)
        instances.append(inst)
        n = 0 if i == 2 else 5  # the last image has no RoI at all
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 2 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        boxes.append(torch.cat((xy, xy + wh), 1))  # fractional coordinates
        ids.append(torch.randint(1, 4, (n,), generator=g))
    target, fg = parsing_targets(semantic, instances, boxes, ids, 16, return_foreground=True)
    assert target.shape == (10, 16, 16) and target.dtype == torch.int64 and fg.dtype == torch.bool
    allowed = set(range(NUM_CLASSES)) | {255}
    assert set(target.unique().tolist()) <= allowed
    # Check every RoI against a direct nearest lookup of the person's part map.
    r = 0
    for sem, inst, b, pid in zip(semantic, instances, boxes, ids):
        for box, k in zip(b, pid):
            centres = (torch.arange(16) + 0.5) / 16
            xs = (box[0] + centres * (box[2] - box[0])).floor().long()
            ys = (box[1] + centres * (box[3] - box[1])).floor().long()
            inside = (xs[None] < sem.shape[1]) & (ys[:, None] < sem.shape[0])
            s = sem[ys.clamp(max=sem.shape[0] - 1)][:, xs.clamp(max=sem.shape[1] - 1)]
            i = inst[ys.clamp(max=sem.shape[0] - 1)][:, xs.clamp(max=sem.shape[1] - 1)]
            expected = torch.where(s == 255, 255, torch.where(i == k, s, 0))
            expected = torch.where(inside, expected, 0)
            assert torch.equal(target[r], expected), f"RoI {r}"
            assert torch.equal(fg[r], (i == k) & inside)
            r += 1


def test_targets_mask_other_people():
    _, t = make_sample(2)
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    target = parsing_targets([t["semantic"]], [t["instances"]], [box], [torch.tensor([2])], 64)[0]
    assert torch.equal(target, t["semantic"] * (t["instances"] == 2))
    assert (target[t["instances"] == 1] == 0).all() and (target[t["instances"] == 2] > 0).all()


def test_parsing_loss_values():
    logits = torch.randn(3, NUM_CLASSES, 8, 8, requires_grad=True)
    target = torch.randint(0, NUM_CLASSES, (3, 8, 8))
    target[0, :2] = 255
    expected = 2.0 * F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(parsing_loss(logits, target, 2.0), expected)
    # No RoI: exactly zero and still part of the graph.
    empty = torch.zeros(0, NUM_CLASSES, 8, 8, requires_grad=True)
    loss = parsing_loss(empty, torch.zeros(0, 8, 8, dtype=torch.int64))
    assert loss.item() == 0 and loss.requires_grad
    # Only ignore pixels: zero, not NaN.
    assert parsing_loss(logits, torch.full((3, 8, 8), 255)).item() == 0


# -------------------------------------------------------------------------------------------------- inference


def test_paste_places_parts_inside_the_box():
    probs = torch.zeros(2, 4, 8, 8)
    probs[0, 2] = 1.0  # person 0 is part 2 everywhere in its RoI
    probs[1, 3] = 1.0
    probs[1, 3, :, :4] = 0.0
    probs[1, 1, :, :4] = 1.0  # person 1: left half part 1, right half part 3
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0], [40.0, 0.0, 56.0, 16.0]])
    parts = paste_part_probs(probs, boxes, (48, 64))
    assert parts.shape == (2, 48, 64) and parts.dtype == torch.uint8
    assert (parts[0, 11:39, 11:29] == 2).all()
    assert (parts[0, :, :8] == 0).all() and (parts[0, 42:] == 0).all() and (parts[1, 20:] == 0).all()
    assert (parts[1, 1:15, 41:47] == 1).all() and (parts[1, 1:15, 49:55] == 3).all()
    assert set(parts.unique().tolist()) <= {0, 1, 2, 3}
    big = expand_boxes(boxes, 10 / 8)
    assert torch.allclose(big[0], torch.tensor([7.5, 6.25, 32.5, 43.75]))


def test_paint_semantic_highest_score_wins():
    parts = torch.zeros(3, 4, 4, dtype=torch.uint8)
    parts[0, :2] = 1
    parts[1, 1:3] = 2
    parts[2] = 5
    scores = torch.tensor([0.5, 0.9, 0.1])  # person 2 is below the painting threshold
    semantic = paint_semantic(parts, scores, 0.3)
    assert semantic.tolist() == [[1] * 4, [2] * 4, [2] * 4, [0] * 4]
    assert paint_semantic(parts[:0], scores[:0]).shape == (4, 4)


def test_models_and_metrics_paint_ties_alike():
    """One painting rule: of two overlapping persons with equal scores, the later-listed one owns the overlap, in
    the model's semantic map and in the evaluator's painted map alike (they used to break ties oppositely)."""
    from hparse.metrics.painting import paint_persons, painted_maps, person_pixels

    parts = torch.zeros(3, 5, 5, dtype=torch.int64)
    parts[0, :3] = 1
    parts[1, 2:] = 2
    parts[2, :, 2] = 3
    for scores in (torch.tensor([0.8, 0.8, 0.8]), torch.tensor([0.8, 0.8, 0.5]), torch.tensor([0.5, 0.8, 0.8])):
        model_map = paint_semantic(parts, scores, 0.3)
        metric_map, _ = painted_maps(paint_persons(person_pixels(parts), scores, 0.3))
        assert torch.equal(model_map, metric_map)
    assert paint_semantic(parts[:2], torch.tensor([0.7, 0.7]))[2].tolist() == [2] * 5  # the later person wins


# ------------------------------------------------------------------------------------------------------- heads


@pytest.mark.parametrize("gce,ipbc,channels", [
    (False, False, 32), (True, False, 16), ("aspp", "before", 16), ("nonlocal", False, 8), (True, "both", 32),
])
def test_parsing_head_shapes(gce, ipbc, channels):
    head = ParsingHead(8, gce=gce, ipbc=ipbc, gce_channels=16, conv_channels=32)
    assert head.out_channels == channels
    y = head(torch.randn(3, 8, 14, 14))
    assert y.shape == (3, channels, 14, 14)
    assert ParsingPredictor(channels, 7)(y).shape == (3, 7, 56, 56)


def test_gce_components():
    x = torch.randn(2, 8, 32, 32)
    assert ASPP(8, 16).branches[3][0].dilation == (18, 18)
    block = NonLocal2d(8, 8)
    assert torch.equal(block.eval()(x), x)  # zero-initialised BN scale: starts as the identity
    assert GCE(8, 16)(x).shape == (2, 16, 32, 32)
    with pytest.raises(ValueError, match="at least one"):
        GCE(8, 16, aspp=False, nonlocal_=False)


# ------------------------------------------------------------------------------------- model, flag combinations


def _train_and_eval(model: ParsingRCNN, people=(2, 1)):
    images, targets = zip(*[make_sample(n, seed=i) for i, n in enumerate(people)])
    model.train()
    losses = model(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_parsing"}
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_parsing"] > 0
    total.backward()
    assert model.parsing_predictor.deconv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        preds = model(list(images))
    for pred, image in zip(preds, images):
        height, width = image.shape[-2:]
        n = len(pred["person_scores"])
        assert pred["semantic"].shape == (height, width) and pred["semantic"].dtype == torch.int64
        assert pred["person_parts"].shape == (n, height, width)
        assert pred["person_boxes"].shape == (n, 4) and pred["person_scores"].dtype == torch.float32
        assert int(pred["semantic"].max()) < NUM_CLASSES
    return losses, preds


_COMBOS = list(itertools.product([True, False, "p2_only"], [14, 32], [True, False, "aspp", "nonlocal"],
                                 [True, False, "before", "both"]))
# Default run: the 8 on/off combinations of PSS, GCE, IPBC (ERR alternating 14/32), then every other flag value once;
# the full product is marked slow.
_FAST = [(pss, [14, 32][i % 2], gce, ipbc) for i, (pss, gce, ipbc) in
         enumerate(itertools.product([True, False], [True, False], [True, False]))] + [
    ("p2_only", 14, "aspp", "before"), (True, 32, "nonlocal", "both"), (False, 14, "aspp", "after"),
    (True, 64, "nonlocal", False),
]


@pytest.mark.parametrize("pss,roi_size,gce,ipbc", _FAST)
def test_flag_combination_train_and_eval(pss, roi_size, gce, ipbc):
    model = tiny_model(pss=pss, roi_size=roi_size, gce=gce, ipbc=ipbc)
    assert model.output_size == 4 * roi_size
    assert model.parsing_roi_pool.featmap_names == (["0"] if pss else ["0", "1", "2", "3"])
    assert model.roi_heads.box_roi_pool.featmap_names == (["0"] if pss == "p2_only" else ["0", "1", "2", "3"])
    _train_and_eval(model)


@pytest.mark.slow
@pytest.mark.parametrize("pss,roi_size,gce,ipbc", _COMBOS)
def test_all_flag_combinations(pss, roi_size, gce, ipbc):
    _train_and_eval(tiny_model(pss=pss, roi_size=roi_size, gce=gce, ipbc=ipbc))


def test_paper_widths_build():
    """The default (paper) configuration: GCE 256-d, IPBC four 512-d convs, 32x32 RoIs -> 128x128 output."""
    model = ParsingRCNN(NUM_CLASSES, backbone="resnet18")
    assert model.output_size == 128 and model.parsing_head.out_channels == 512
    assert model.parsing_head.context.aspp.out_channels == 256
    assert [m.out_channels for m in model.parsing_head.after if isinstance(m, torch.nn.Conv2d)] == [512] * 4
    assert model.branch_batch_per_image == 32 and model.loss_weight == 2.0
    baseline = ParsingRCNN(NUM_CLASSES, backbone="resnet18", pss=False, roi_size=14, gce=False, ipbc=False)
    convs = [m for m in baseline.parsing_head.context if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.out_channels == 512 for c in convs) and baseline.output_size == 56


def test_parsing_batch_is_decoupled():
    model = tiny_model(parsing_batch=3)
    boxes = [torch.arange(40.0).view(10, 4), torch.arange(8.0).view(2, 4)]
    ids = [torch.arange(10) + 100, torch.tensor([1, 2])]
    kept_boxes, kept_ids = model.sample_branch_rois(boxes, ids)
    assert [len(b) for b in kept_boxes] == [3, 2]
    # Boxes and their person ids stay paired (box row r of image 0 is [4r, ..., 4r + 3] with id 100 + r).
    assert torch.equal(kept_boxes[0][:, 0] / 4 + 100, kept_ids[0].float()) and len(set(kept_ids[0].tolist())) == 3
    seen = {}
    original = model.branch_losses

    def spy(features, rois, image_sizes, targets):
        seen["counts"] = [len(b) for b in rois.boxes]
        seen["ids"] = [set(p.tolist()) for p in rois.person_ids]
        return original(features, rois, image_sizes, targets)

    model.branch_losses = spy
    images, targets = zip(*[make_sample(2, 0), make_sample(1, 1)])
    model.train()
    model(list(images), list(targets))
    assert all(1 <= c <= 3 for c in seen["counts"])  # ground-truth boxes are always positives
    assert seen["ids"][0] <= {1, 2} and seen["ids"][1] == {1}


def test_empty_image_train_and_eval():
    model = tiny_model()
    images, targets = zip(*[make_sample(0, 0), make_sample(0, 1)])
    model.train()
    losses = model(list(images), list(targets))
    assert losses["loss_parsing"].item() == 0 and losses["loss_parsing"].requires_grad
    assert torch.isfinite(sum(losses.values()))
    sum(losses.values()).backward()
    model.eval()
    model.roi_heads.score_thresh = 1.0  # nothing passes: the empty prediction path
    with torch.no_grad():
        preds = model(list(images))
    for pred in preds:
        assert pred["semantic"].shape == (SIZE, SIZE) and pred["semantic"].sum() == 0
        assert pred["person_parts"].shape == (0, SIZE, SIZE)
        assert pred["person_scores"].shape == (0,) and pred["person_boxes"].shape == (0, 4)


def test_mixed_empty_and_degenerate_boxes():
    model = tiny_model()
    image, target = make_sample(2, 0)
    target["boxes"] = torch.cat((target["boxes"], torch.tensor([[5.0, 5.0, 5.0, 9.0]])))  # a person with no area
    empty_image, empty_target = make_sample(0, 1)
    model.train()
    losses = model([image, empty_image], [target, empty_target])
    assert losses["loss_parsing"] > 0 and torch.isfinite(sum(losses.values()))


def test_predictions_at_original_resolution_after_resize():
    model = tiny_model(train_sizes=(96, 128), test_size=96, max_size=200)
    image, target = make_sample(2, 0, height=64, width=80)
    model.train()
    assert torch.isfinite(sum(model([image], [target]).values()))
    model.eval()
    with torch.no_grad():
        pred = model([image])[0]
    assert pred["semantic"].shape == (64, 80) and pred["person_parts"].shape[1:] == (64, 80)
    assert (pred["person_boxes"][:, 2] <= 80 + 1e-3).all() and (pred["person_boxes"][:, 3] <= 64 + 1e-3).all()


def test_detection_transform_sizes():
    transform = DetectionTransform((96,), 48, 100)
    image = torch.rand(3, 32, 64)
    target = {"boxes": torch.tensor([[0.0, 0.0, 64.0, 32.0]])}
    out, t = transform.train().resize(image, dict(target))
    assert out.shape[-2:] == (50, 100) and torch.allclose(t["boxes"], torch.tensor([[0.0, 0.0, 100.0, 50.0]]))
    out, _ = transform.eval().resize(image, None)
    assert out.shape[-2:] == (48, 96)
    same = DetectionTransform(None, None, None)
    assert same.resize(image, None)[0].shape == image.shape
    assert scaled_anchor_sizes(200) == (8, 16, 32, 64, 128)


def test_fixed_batch_overfits():
    """Loss falls a lot on one fixed batch: the whole pipeline (targets, heads, box branch) can learn."""
    model = tiny_model(roi_size=14, gce=True, ipbc=True)
    images, targets = zip(*[make_sample(2, 0), make_sample(1, 1)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(30):
        torch.manual_seed(1)  # the same RoI samples every step: a truly fixed batch
        losses = model(list(images), list(targets))
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append((total.item(), losses["loss_parsing"].item()))
    # Mean of the last five steps (single steps are noisy: the RPN and box sampling still move).
    last = [sum(h[i] for h in history[-5:]) / 5 for i in (0, 1)]
    assert last[0] < 0.4 * history[0][0], history[::5]
    assert last[1] < 0.3 * history[0][1], history[::5]


# ------------------------------------------------------------------------------------- registry and backbone


def test_registry_errors_and_config():
    with pytest.raises(ValueError, match="unknown model 'nope'.*parsing_rcnn"):
        build_model("nope", num_classes=20)
    with pytest.raises(ValueError, match="gce must be one of"):
        build_model("parsing_rcnn", num_classes=20, backbone="resnet18", gce="big")
    with pytest.raises(ValueError, match="pss must be"):
        build_model("parsing_rcnn", num_classes=20, backbone="resnet18", pss="p3")
    with pytest.raises(TypeError, match="parsing_rcnn"):
        build_model("parsing_rcnn", num_classes=20, backbone="resnet18", not_a_flag=1)
    model = tiny_model(gce="aspp")
    assert model.build_config["name"] == "parsing_rcnn" and model.build_config["gce"] == "aspp"


@pytest.mark.parametrize("depth,channels", [("resnet18", 64), (50, 256)])
def test_backbone_depths(depth, channels):
    body = build_resnet_fpn(depth)
    assert body.body.layer1[0].conv1.in_channels == 64 and body.fpn.inner_blocks[0][0].in_channels == channels
    features = body(torch.rand(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]
    assert isinstance(body.body.bn1, torch.nn.BatchNorm2d)  # from scratch: trainable BN


def test_narrow_fpn_keeps_body_and_levels():
    """fpn_channels narrows every pyramid level (and so the RPN and RoI heads on top); the ResNet body is unchanged."""
    body = build_resnet_fpn("resnet18", fpn_channels=32)
    assert body.out_channels == 32 and body.fpn.inner_blocks[0][0].in_channels == 64
    assert [b[0].in_channels for b in body.fpn.inner_blocks] == [64, 128, 256, 512]
    features = body(torch.rand(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[1:]) for f in features.values()] == [(32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2),
                                                              (32, 1, 1)]
    with pytest.raises(ValueError, match="fpn_channels"):
        build_resnet_fpn("resnet18", fpn_channels=0)
    model = tiny_model(fpn_channels=32)
    assert model.backbone.out_channels == 32 and model.rpn.head.conv[0][0].in_channels == 32
    assert model.build_config["fpn_channels"] == 32
    _train_and_eval(model)


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_demo_recipe_keeps_the_paper_flags_and_only_shrinks(name):
    from hparse.engine import get_profile

    profile = get_profile(name)
    demo = demo_recipe(profile)
    model, train, data = demo["model"], demo["train"], demo["data"]
    # The Parsing R-CNN recipe at the demo's image size (the cpu demo uses larger images than its profile's).
    full = method_recipe("parsing_rcnn", profile.override(image_size=data["image_size"]))
    assert (model["pss"], model["roi_size"], model["gce"], model["ipbc"]) == (True, 32, True, True)
    assert set(data) == {"image_size", "max_people", "train_images", "val_images"}
    assert data["image_size"] <= profile.image_size or name == "cpu"
    assert train["warmup"] <= max(train["iterations"] // 10, 1)
    for key in ("head_channels", "gce_channels", "box_batch_size_per_image", "box_representation_size"):
        assert model.get(key, 1 << 20) <= full["model"].get(key, 1 << 20), key
    # Anchors and the FPN level assignment follow the demo's image size, as training_recipe does for any size.
    assert model["anchor_sizes"] == scaled_anchor_sizes(data["image_size"])
    assert model["canonical_scale"] == max(1, round(224 * data["image_size"] / 800))
    if name == "smoke":
        assert train["iterations"] == 4 and model == full["model"]
    from hparse.models.pretrain import pinned

    if name == "cpu":  # the cpu recipe itself (the laptop's means), evaluated along the way for the learning curve
        assert model == full["model"] and model["backbone_weights"] == pinned("synthcrowd")
        assert train["optimizer"] == "adamw"
        assert 0 < train["eval_every"] < train["iterations"]
    else:
        assert train["eval_every"] == 0


def test_backbone_weights_failure_is_explained(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="backbone_weights=None"):
        build_resnet_fpn("resnet18", "DEFAULT")
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_resnet_fpn("vgg16")


# ------------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_train_and_eval_amp_channels_last():
    device = torch.device("cuda")
    model = tiny_model().to(device).to(memory_format=torch.channels_last)
    model.channels_last = True
    images, targets = zip(*[make_sample(2, 0), make_sample(1, 1)])
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


# ------------------------------------------------------------------------------------------------------ ladder


def test_table6_ladder_writes_one_result_per_rung(tmp_path, tmp_results):
    from hparse.engine import get_profile
    from hparse.experiments.parsing_rcnn_ladder import LADDER, ladder

    assert [name for name, _ in LADDER] == ["baseline", "pss", "err", "gce", "ipbc"]
    results = ladder(get_profile("smoke"), "cpu", seeds=(0,), iterations=1, rungs=("baseline", "ipbc"),
                     out_root=tmp_path)
    assert set(results) == {"baseline", "ipbc"}
    base = json.loads((tmp_results / "smoke" / "parsing_rcnn" / "ladder_baseline.json").read_text())
    full = json.loads((tmp_results / "smoke" / "parsing_rcnn" / "ladder_ipbc.json").read_text())
    assert base["config"]["flags"] == {"pss": False, "roi_size": 14, "gce": False, "ipbc": False,
                                       "parsing_batch": None}  # coupled to the detection sample before ERR
    assert full["config"]["model"]["roi_size"] == 32 and full["metrics"]["iterations"] == 1
    assert full["config"]["model"]["parsing_batch"] is not None  # ERR's decoupled batch
    assert "mIoU" in full["metrics"]["mean"] and "no GPU" in full["notes"]
    with pytest.raises(ValueError, match="unknown ladder rungs"):
        ladder(get_profile("smoke"), "cpu", rungs=("nope",))


# ------------------------------------------------------------------------------------- test-time augmentation


def test_mirrored_roi_pooling_is_exact():
    """The box mirror of the flip view (x -> W - x across the padded width) pools, from the mirrored features,
    exactly the mirror image of what the box pools from the features: the view and the image agree cell by cell."""
    model = tiny_model(test_flip=True)
    features = {"0": torch.randn(1, 8, 16, 16)}
    boxes = [torch.tensor([[5.0, 3.0, 41.0, 60.0], [0.0, 10.5, 22.25, 30.0]])]
    width = 64
    mirrored = [torch.stack([width - boxes[0][:, 2], boxes[0][:, 1], width - boxes[0][:, 0], boxes[0][:, 3]], 1)]
    pooled = model.parsing_roi_pool(features, boxes, [(64, 64)])
    pooled_mirror = model.parsing_roi_pool({"0": features["0"].flip(-1)}, mirrored, [(64, 64)])
    assert torch.allclose(pooled_mirror.flip(-1), pooled, atol=1e-6)


def test_flip_view_averages_to_a_flip_equivariant_parse():
    """Table 8's flip testing: the averaged probabilities are a distribution per cell, differ from the plain ones,
    and mirroring the image (its boxes mirrored) mirrors them with left and right swapped -- exactly, since both
    views enter the average."""
    model = tiny_model(test_flip=True).eval()
    assert model.flip_permutation[14].item() == 15 and model.flip_permutation[1].item() == 1
    image, target = make_sample(2, 0)
    tensors, _ = model.transform([image], None)
    x = tensors.tensors
    width = x.shape[-1]
    boxes = [target["boxes"]]
    mirrored = [torch.stack([width - boxes[0][:, 2], boxes[0][:, 1], width - boxes[0][:, 0], boxes[0][:, 3]], 1)]
    sizes = [tuple(x.shape[-2:])]
    with torch.no_grad():
        probs = model.parsing_probs(model.backbone(x), boxes, sizes, x)
        probs_mirror = model.parsing_probs(model.backbone(x.flip(-1)), mirrored, sizes, x.flip(-1))
        model.set_test_views(test_flip=False)
        plain = model.parsing_probs(model.backbone(x), boxes, sizes, x)
    assert torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5)
    assert not torch.allclose(probs, plain, atol=1e-4)
    assert torch.allclose(probs_mirror.flip(-1)[:, model.flip_permutation], probs, atol=1e-5)


def test_test_time_views_run_end_to_end_and_refuse_bad_settings():
    model = tiny_model(test_flip=True, test_scales=(0.75, 1.25)).eval()
    image, _ = make_sample(2, 0)
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        pred = model([image])[0]
    assert pred["person_parts"].shape[1:] == (SIZE, SIZE) and len(pred["person_scores"]) > 0
    with pytest.raises(ValueError, match="test_scales"):
        tiny_model(test_scales=(0.0,))
    with pytest.raises(ValueError, match="flip_pairs"):
        build_model("parsing_rcnn", num_classes=5, **{**TINY, "test_flip": True})
    assert build_model("parsing_rcnn", num_classes=5, **{**TINY, "test_flip": True, "flip_pairs": ((1, 2),)}
                       ).flip_permutation.tolist() == [0, 2, 1, 3, 4]
    later = build_model("parsing_rcnn", num_classes=5, **TINY)  # switched on after building: checked the same way
    with pytest.raises(ValueError, match="flip_pairs"):
        later.set_test_views(test_flip=True)
