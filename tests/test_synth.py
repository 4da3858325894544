"""SynthCrowd: the data contract, determinism, flips, occlusion, scale range, keypoints, statistics and the CLI."""

import numpy as np
import pytest
import torch

from hparse.cli import main
from hparse.data import CIHP_LABELS, SynthCrowd
from hparse.data.contract import validate_sample
from hparse.data.synth import synth_statistics
from hparse.data.transforms import hflip_sample

L_ARM, R_ARM = CIHP_LABELS.index("Left-arm"), CIHP_LABELS.index("Right-arm")
KP = CIHP_LABELS.keypoints


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("image", "semantic", "instances", "boxes", "keypoints"))


@pytest.mark.parametrize("kwargs", [
    dict(seed=0, crowding=0.5, image_size=96),
    dict(seed=3, crowding=0.0, image_size=64, split="val"),
    dict(seed=1, crowding=1.0, image_size=128, max_people=8, split="test"),
    dict(seed=2, crowding=0.8, image_size=48, min_people=3, max_people=3),
    dict(seed=4, crowding=0.3, image_size=80, min_people=0, max_people=2),
])
def test_every_sample_meets_the_contract(kwargs):
    ds = SynthCrowd(num_images=8, **kwargs)
    assert ds.labels is CIHP_LABELS and len(ds) == 8
    for i in range(len(ds)):
        s = validate_sample(ds[i], ds.labels)
        n = len(s["boxes"])
        size = kwargs["image_size"]
        assert s["image"].shape == (3, size, size)
        assert s["keypoints"].shape == (n, 17, 3)
        assert s["meta"]["dataset"] == "synth" and s["meta"]["id"].startswith("synth-")
        # every id 1..N has pixels, and there is no ignore label
        assert torch.equal(torch.unique(s["instances"]), torch.arange(0 if (s["instances"] == 0).any() else 1, n + 1))
        assert int(s["semantic"].max()) < CIHP_LABELS.num_classes
        # person pixels carry a part label and background pixels none
        assert torch.equal(s["semantic"] > 0, s["instances"] > 0)
        assert n + len(s["meta"]["dropped"]) == s["meta"]["num_rendered"]
        assert kwargs.get("min_people", 1) <= s["meta"]["num_rendered"] <= kwargs.get("max_people", 6)
        for key in ("pose", "view", "depth", "scale", "visible_fraction", "truncated_fraction", "amodal_boxes"):
            assert len(s["meta"][key]) == n, key


def test_nobody_is_a_valid_image():
    ds = SynthCrowd(num_images=3, image_size=64, min_people=0, max_people=0)
    for i in range(3):
        s = validate_sample(ds[i], ds.labels)
        assert s["boxes"].shape == (0, 4) and s["keypoints"].shape == (0, 17, 3)
        assert int(s["instances"].max()) == 0 and int(s["semantic"].max()) == 0
        assert float(s["image"].std()) > 0.01  # still a cluttered background


def test_determinism_independent_of_order_and_length():
    a = SynthCrowd(split="train", num_images=6, image_size=64, seed=5)
    b = SynthCrowd(split="train", num_images=40, image_size=64, seed=5)
    forward = [a[i] for i in range(6)]
    backward = [b[i] for i in reversed(range(6))][::-1]
    for x, y in zip(forward, backward):
        assert _equal(x, y) and x["meta"] == y["meta"]
    assert _equal(a[2], a[2])
    assert _equal(a[-1], a[5])
    val = SynthCrowd(split="val", num_images=6, image_size=64, seed=5)
    other_seed = SynthCrowd(split="train", num_images=6, image_size=64, seed=6)
    for i in range(6):
        assert not torch.equal(a[i]["image"], val[i]["image"])
        assert not torch.equal(a[i]["image"], other_seed[i]["image"])
    assert len({a[i]["meta"]["id"] for i in range(6)} | {val[i]["meta"]["id"] for i in range(6)}) == 12


def test_crowding_sweep_keeps_the_people():
    # Same people (poses, views, outfits, sizes), only placed differently: the chapter's sweep relies on it.
    sparse = SynthCrowd(num_images=4, image_size=64, crowding=0.0, min_people=3).scene(1)
    dense = SynthCrowd(num_images=4, image_size=64, crowding=1.0, min_people=3).scene(1)
    assert sorted((p.pose, p.view, p.outfit["upper"], p.height) for p in sparse.people) == \
        sorted((p.pose, p.view, p.outfit["upper"], p.height) for p in dense.people)
    assert sorted(p.x for p in sparse.people) != sorted(p.x for p in dense.people)


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="split"):
        SynthCrowd(split="training")
    with pytest.raises(ValueError, match="crowding"):
        SynthCrowd(crowding=1.5)
    with pytest.raises(ValueError, match="min_people"):
        SynthCrowd(min_people=4, max_people=2)
    with pytest.raises(IndexError, match="out of range"):
        SynthCrowd(num_images=3, image_size=32)[3]


def _front_person(ds):
    """(sample, k) of a front-facing person whose two arms are both clearly visible."""
    for i in range(len(ds)):
        s = ds[i]
        for k, view in enumerate(s["meta"]["view"]):
            mine = s["instances"] == k + 1
            left, right = (s["semantic"] == L_ARM) & mine, (s["semantic"] == R_ARM) & mine
            if view == "front" and left.sum() > 20 and right.sum() > 20 and s["meta"]["visible_fraction"][k] > 0.9:
                return s, k
    raise AssertionError("no clearly visible front-facing person found in the sample set")


def _mean_x(mask: torch.Tensor) -> float:
    return float(mask.nonzero()[:, 1].float().mean())


def test_left_right_is_the_persons_own_and_survives_a_flip():
    ds = SynthCrowd(split="val", num_images=40, image_size=128, max_people=3, crowding=0.0)
    s, k = _front_person(ds)
    mine = s["instances"] == k + 1
    # the person faces the camera: their left arm is on the image's right
    assert _mean_x((s["semantic"] == L_ARM) & mine) > _mean_x((s["semantic"] == R_ARM) & mine)
    f = hflip_sample(s, ds.labels)
    validate_sample(f, ds.labels)
    width = s["image"].shape[-1]
    # pixels move to the mirrored column and left/right labels swap
    assert torch.equal(f["semantic"][:, (width - 1) - torch.arange(width)] == L_ARM, s["semantic"] == R_ARM)
    assert torch.equal(f["instances"], s["instances"].flip(-1))
    # the mirrored person still faces the camera, so their (new) left arm is again on the image's right
    fmine = f["instances"] == k + 1
    assert _mean_x((f["semantic"] == L_ARM) & fmine) > _mean_x((f["semantic"] == R_ARM) & fmine)
    # keypoints: flipped left wrist = mirrored right wrist
    lw, rw = KP.index("left_wrist"), KP.index("right_wrist")
    src = s["keypoints"][:, rw]
    dst = f["keypoints"][:, lw]
    assert torch.equal(dst[:, 2], src[:, 2])
    on = src[:, 2] > 0
    assert torch.allclose(dst[on, 0], width - src[on, 0]) and torch.equal(dst[on, 1], src[on, 1])
    _keypoints_agree_with_instances(f)
    # twice = identity (keypoint x goes through W - (W - x): equal up to float rounding)
    twice = hflip_sample(f, ds.labels)
    assert all(torch.equal(twice[k], s[k]) for k in ("image", "semantic", "instances", "boxes"))
    assert torch.allclose(twice["keypoints"], s["keypoints"], atol=1e-4, rtol=0)


def _keypoints_agree_with_instances(s):
    size = s["image"].shape[-1]
    for k, person in enumerate(s["keypoints"]):
        for x, y, v in person.tolist():
            if v == 2:  # a visible keypoint sits on its own person's pixels
                assert s["instances"][int(y), int(x)] == k + 1
            if v > 0:
                assert 0 <= x < size and 0 <= y < size
            else:
                assert x == 0 and y == 0


def test_keypoint_visibility_matches_the_instance_map():
    ds = SynthCrowd(split="test", num_images=12, image_size=96, crowding=0.9, max_people=6)
    counts = np.zeros(3, dtype=int)
    for i in range(len(ds)):
        s = ds[i]
        _keypoints_agree_with_instances(s)
        counts += np.bincount(s["keypoints"][..., 2].long().flatten().numpy(), minlength=3)
    assert counts[2] > 0 and counts[1] > 0  # crowds produce both visible and occluded keypoints


def test_back_view_shows_no_face_and_hides_the_nose():
    ds = SynthCrowd(split="val", num_images=30, image_size=96, crowding=0.0, max_people=3)
    face, nose = CIHP_LABELS.index("Face"), KP.index("nose")
    backs = fronts = 0
    for i in range(len(ds)):
        s = ds[i]
        for k, view in enumerate(s["meta"]["view"]):
            mine = s["instances"] == k + 1
            if view == "back":
                backs += 1
                assert int(s["keypoints"][k, nose, 2]) != 2
                assert int(((s["semantic"] == face) & mine).sum()) < 0.02 * int(mine.sum()) + 3
            elif (view == "front" and s["meta"]["visible_fraction"][k] > 0.95 and int(mine.sum()) > 400
                  and s["meta"]["truncated_fraction"][k] < 0.05):  # whole, unoccluded, front-facing
                fronts += 1
                assert int(((s["semantic"] == face) & mine).sum()) > 0
    assert backs > 0 and fronts > 0


def test_boxes_are_tight_around_visible_pixels():
    ds = SynthCrowd(split="train", num_images=10, image_size=96, crowding=0.7, seed=11)
    for i in range(len(ds)):
        s = ds[i]
        for k, (x1, y1, x2, y2) in enumerate(s["boxes"].tolist()):
            ys, xs = (s["instances"] == k + 1).nonzero(as_tuple=True)
            assert (x1, y1, x2, y2) == (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1)
            ax1, ay1, ax2, ay2 = s["meta"]["amodal_boxes"][k]  # the unoccluded person contains the visible one
            assert ax1 <= x1 + 1e-4 and ay1 <= y1 + 1e-4 and ax2 >= x2 - 1e-4 and ay2 >= y2 - 1e-4


def test_crowding_increases_occlusion():
    means = []
    for crowding in (0.0, 0.5, 1.0):
        ds = SynthCrowd(split="val", num_images=24, image_size=64, crowding=crowding, min_people=3, max_people=5)
        means.append(synth_statistics(ds)["mean_visible_fraction"])
    assert means[0] > means[1] + 0.03 > means[2] + 0.06, means
    assert means[0] > 0.85


def test_scale_range_and_all_parts_occur():
    ds = SynthCrowd(split="train", num_images=150, image_size=64, max_people=6, seed=2)
    stats = synth_statistics(ds)
    assert stats["scale_range"] >= 4.0
    # Rendered (amodal) heights of standing people span the same range, not just the recorded scale.
    heights = []
    for i in range(40):
        s = ds[i]
        for pose, (_, y1, _, y2) in zip(s["meta"]["pose"], s["meta"]["amodal_boxes"]):
            if pose in ("standing", "walking"):
                heights.append(y2 - y1)
    assert max(heights) / min(heights) > 3.5
    missing = [name for name, share in stats["part_presence"].items() if share == 0]
    assert not missing, f"parts never drawn: {missing}"
    assert abs(sum(stats["part_pixels"].values()) - 1) < 1e-6
    assert sum(stats["people_per_image"]) == len(stats["visible_fraction"])
    assert all(stats["poses"][p] > 0 for p in stats["poses"]) and all(stats["views"][v] > 0 for v in stats["views"])
    assert stats["dropped"] >= 0 and 0 < stats["occlusion_ratio"] < 1


def test_hidden_people_are_dropped_and_recorded():
    ds = SynthCrowd(split="train", num_images=60, image_size=48, crowding=1.0, min_people=6, max_people=8)
    for i in range(len(ds)):
        s = ds[i]
        if s["meta"]["dropped"]:
            validate_sample(s, ds.labels)
            assert s["meta"]["dropped"][0]["reason"] in ("fully occluded", "outside the image")
            assert len(s["boxes"]) == s["meta"]["num_rendered"] - len(s["meta"]["dropped"])
            return
    raise AssertionError("no image with a fully hidden person in 60 crowded images")


def test_transform_and_stages():
    ds = SynthCrowd(num_images=2, image_size=64, transform=lambda s: hflip_sample(s, CIHP_LABELS))
    plain = SynthCrowd(num_images=2, image_size=64)
    assert torch.equal(ds[0]["image"], plain[0]["image"].flip(-1))
    stages = plain.stages(0)
    for key in ("flat", "textured", "lit", "final"):
        assert stages[key].shape == (64, 64, 3)
    np.testing.assert_allclose(stages["final"].transpose(2, 0, 1), plain[0]["image"].numpy(), atol=1e-6)


def _textbook_blur(x: np.ndarray) -> np.ndarray:
    """The [1, 2, 1] / 4 blur of an (H, W) array written the obvious way, axis by axis."""
    y = x.copy()
    y[1:-1] = x[1:-1] * 0.5 + (x[:-2] + x[2:]) * 0.25
    z = y.copy()
    z[:, 1:-1] = y[:, 1:-1] * 0.5 + (y[:, :-2] + y[:, 2:]) * 0.25
    return z


def test_fast_shading_steps_round_exactly_like_the_textbook_ones():
    from hparse.data.synth_render import _blur, _edge_darkening

    rng = np.random.default_rng(0)
    image = rng.uniform(-0.2, 1.2, (3, 37, 29)).astype(np.float32)
    blurred = _blur(image)
    for ch in range(3):  # bit for bit, not just close
        assert blurred[ch].tobytes() == _textbook_blur(image[ch]).tobytes()
    code = rng.integers(0, 4, (31, 23)).astype(np.int32) * 1024
    edge = np.zeros(code.shape, np.float32)
    edge[:, 1:] += code[:, 1:] != code[:, :-1]
    edge[:, :-1] += code[:, 1:] != code[:, :-1]
    edge[1:] += code[1:] != code[:-1]
    edge[:-1] += code[1:] != code[:-1]
    expected = 1 - 0.23 * _textbook_blur(np.minimum(edge, 1.0))
    assert _edge_darkening(code, 0.23).tobytes() == expected.tobytes()


def test_cli_preview_writes_a_png(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["data", "preview", "--dataset", "synth", "--out", str(out), "--num", "2", "--image-size", "64"])
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SynthCrowd" in capsys.readouterr().out
