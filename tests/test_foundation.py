"""Label sets, the data contract, transforms, collate, profiles, results provenance and overlays."""

import json

import numpy as np
import pytest
import torch

from hparse.data import CIHP_LABELS, COCO17, DENSEPOSE_LABELS, MHP_V2_LABELS, MPII16, PASCAL_PERSON_PART_LABELS
from hparse.data.collate import collate_detection, targets_to
from hparse.data.contract import ContractError, person_part_maps, validate_sample
from hparse.data.labels import get_label_set, voc_palette
from hparse.data.transforms import ColorJitter, Compose, Normalize, RandomScale, Resize, hflip_sample, resize_sample
from hparse.engine import get_device, get_profile, load_result, write_result


def make_sample(height=20, width=30):
    """Two people: person 1 on the left with a left arm (14) and face (13), person 2 on the right with a right leg."""
    semantic = torch.zeros(height, width, dtype=torch.int64)
    instances = torch.zeros_like(semantic)
    semantic[2:8, 2:6], instances[2:8, 2:6] = 14, 1
    semantic[2:4, 6:9], instances[2:4, 6:9] = 13, 1
    semantic[10:18, 20:26], instances[10:18, 20:26] = 17, 2
    semantic[0, 0] = 255
    boxes = torch.tensor([[2, 2, 9, 8], [20, 10, 26, 18]], dtype=torch.float32)
    keypoints = torch.zeros(2, 17, 3)
    keypoints[0, 9] = torch.tensor([3.0, 5.0, 2.0])  # left wrist of person 1
    keypoints[1, 16] = torch.tensor([23.0, 17.0, 1.0])  # right ankle of person 2, occluded
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    return {"image": image, "semantic": semantic, "instances": instances, "boxes": boxes, "keypoints": keypoints,
            "meta": {"id": "toy", "dataset": "test"}}


# ------------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("labels, n", [(CIHP_LABELS, 20), (MHP_V2_LABELS, 59), (PASCAL_PERSON_PART_LABELS, 7),
                                       (DENSEPOSE_LABELS, 15)])
def test_label_sets_have_official_sizes_and_involutive_flips(labels, n):
    assert labels.num_classes == n and labels.palette.shape == (n, 3)
    perm = labels.flip_permutation
    assert [perm[p] for p in perm] == list(range(n))
    for a, b in labels.flip_pairs:  # every pair is a left/right pair by name
        left, right = labels.names[a].lower(), labels.names[b].lower()
        assert ("left" in left and "right" in right) or ("left" in right and "right" in left), (left, right)


def test_official_orders_spot_checks():
    assert CIHP_LABELS.names[5] == "Upper-clothes" and CIHP_LABELS.names[10] == "Torso-skin"
    assert CIHP_LABELS.index("left-shoe") == 18
    assert MHP_V2_LABELS.names[58] == "other-lower-body-clothes" and MHP_V2_LABELS.index("face") == 3
    assert DENSEPOSE_LABELS.flip_permutation == (0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 14)
    assert PASCAL_PERSON_PART_LABELS.flip_pairs == ()
    assert get_label_set("synth") is CIHP_LABELS
    with pytest.raises(KeyError, match="unknown label set"):
        get_label_set("nope")
    with pytest.raises(KeyError, match="no part named"):
        CIHP_LABELS.index("tail")


def test_keypoint_sets():
    assert COCO17.num_keypoints == 17 and len(COCO17.skeleton) == 19
    assert MPII16.num_keypoints == 16
    for kset in (COCO17, MPII16):
        for a, b in kset.flip_pairs:
            names = {kset.names[a], kset.names[b]}
            assert {n.replace("left", "right") for n in names} == {n.replace("right", "left").replace("left", "right")
                                                                 for n in names} and len(names) == 2
        assert all(0 <= a < kset.num_keypoints and 0 <= b < kset.num_keypoints for a, b in kset.skeleton)


def test_voc_palette_known_values():
    palette = voc_palette(4)
    assert palette.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


# ------------------------------------------------------------------------------------------------ contract


def test_valid_sample_passes_and_person_parts_are_derived():
    sample = validate_sample(make_sample(), CIHP_LABELS)
    parts = person_part_maps(sample["semantic"], sample["instances"])
    assert parts.shape == (2, 20, 30)
    assert set(parts[0].unique().tolist()) == {0, 13, 14} and set(parts[1].unique().tolist()) == {0, 17}
    assert parts[0, 0, 0] == 0  # ignore pixels are not a part


@pytest.mark.parametrize("breaker, message", [
    (lambda s: s.update(semantic=s["semantic"].clamp(max=25) + (s["semantic"] == 17) * 8), "outside 0..19"),
    (lambda s: s.update(instances=s["instances"] * 2), "instances has ids"),
    (lambda s: s.update(boxes=s["boxes"] + 10), "outside the 30x20 image"),
    (lambda s: s.update(image=s["image"] * 3), r"\[0, 1\]"),
    (lambda s: s.update(keypoints=s["keypoints"][:, :5]), "K=5"),
    (lambda s: s.pop("meta"), "missing key 'meta'"),
])
def test_contract_violations_name_the_sample_and_the_field(breaker, message):
    sample = make_sample()
    breaker(sample)
    with pytest.raises(ContractError, match=message):
        validate_sample(sample, CIHP_LABELS, where="toy sample")


# ---------------------------------------------------------------------------------------------- transforms


def test_hflip_swaps_left_right_labels_keypoints_and_is_an_involution():
    sample = make_sample()
    flipped = hflip_sample(sample, CIHP_LABELS)
    validate_sample(flipped, CIHP_LABELS)
    # left arm (14) becomes right arm (15) on the mirrored side; right leg (17) becomes left leg (16)
    assert (flipped["semantic"][2:8, 30 - 6:30 - 2] == 15).all()
    assert (flipped["semantic"][10:18, 30 - 26:30 - 20] == 16).all()
    assert (flipped["semantic"] == 13).sum() == (sample["semantic"] == 13).sum()
    assert flipped["boxes"][0].tolist() == [21, 2, 28, 8]
    # the left wrist (9) becomes the right wrist (10), mirrored in x
    assert flipped["keypoints"][0, 10].tolist() == [27.0, 5.0, 2.0] and flipped["keypoints"][0, 9, 2] == 0
    twice = hflip_sample(flipped, CIHP_LABELS)
    for key in ("image", "semantic", "instances", "boxes", "keypoints"):
        assert torch.equal(twice[key], sample[key]), key


def test_hflip_refuses_keypoints_it_cannot_swap():
    sample = make_sample()
    sample["keypoints"] = sample["keypoints"][:, :5]  # 5 keypoints, but CIHP's skeleton is COCO-17
    with pytest.raises(ValueError, match="5 keypoints per person.*defines 17"):
        hflip_sample(sample, CIHP_LABELS)
    sample["keypoints"] = sample["keypoints"][:, :0]  # datasets without keypoints flip fine
    assert hflip_sample(sample, CIHP_LABELS)["keypoints"].shape[1] == 0


def test_label_downscale_samples_block_centres():
    sample = make_sample()
    stripes = (torch.arange(30) % 3 == 1).long().expand(20, 30).clone()  # label 1 on the middle column of each 3
    sample["semantic"] = stripes
    out = resize_sample(sample, (20, 10))  # 3x down in x: each output pixel's centre is a middle column
    assert (out["semantic"] == 1).all()


def test_resize_uses_nearest_for_labels_and_scales_geometry():
    sample = make_sample()
    out = resize_sample(sample, (40, 60))
    validate_sample(out, CIHP_LABELS)
    assert set(out["semantic"].unique().tolist()) <= set(sample["semantic"].unique().tolist())
    assert out["boxes"][1].tolist() == [40, 20, 52, 36]
    assert out["keypoints"][0, 9, :2].tolist() == [6.0, 10.0]
    short = Resize(10, max_size=12)(sample)
    assert tuple(short["image"].shape[-2:]) == (8, 12)  # capped by max_size
    assert tuple(RandomScale([40])(sample)["image"].shape[-2:]) == (40, 60)


def test_photometric_transforms_keep_labels_and_range():
    sample = make_sample()
    out = Compose([ColorJitter(0.5, 0.5, 0.5)])(sample)
    assert torch.equal(out["semantic"], sample["semantic"]) and 0 <= out["image"].min() and out["image"].max() <= 1
    normalized = Normalize()(sample)["image"]
    assert torch.allclose(normalized[0] * 0.229 + 0.485, sample["image"][0], atol=1e-6)


def test_collate_keeps_images_separate_and_moves_targets():
    images, targets = collate_detection([make_sample(), make_sample(10, 12)])
    assert [tuple(i.shape) for i in images] == [(3, 20, 30), (3, 10, 12)]
    assert "image" not in targets[0] and targets[1]["meta"]["id"] == "toy"
    moved = targets_to(targets, torch.device("cpu"))
    assert moved[0]["boxes"].device.type == "cpu" and moved[0]["meta"] == targets[0]["meta"]


# -------------------------------------------------------------------------------------- profiles, results


def test_profiles(monkeypatch):
    monkeypatch.setenv("HPARSE_PROFILE", "cpu")
    assert get_profile().name == "cpu"
    assert get_profile("smoke").image_size < get_profile("gpu").image_size
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")
    assert get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            get_device("cuda")


def test_results_carry_provenance_and_are_atomic(tmp_results):
    path = write_result("unit/example", {"mIoU": np.float32(0.5), "curve": torch.tensor([1.0, float("nan")])},
                        profile="smoke", config={"lr": 0.1}, wall_time_s=1.5)
    record = json.loads(path.read_text())
    assert path == tmp_results / "smoke" / "unit" / "example.json"
    assert record["metrics"] == {"mIoU": 0.5, "curve": [1.0, None]}
    for key in ("git_commit", "device", "torch", "date"):
        assert key in record["provenance"]
    assert load_result("unit/example", "smoke")["config"] == {"lr": 0.1}
    assert load_result("unit/missing", "smoke") is None
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="relative path"):
        write_result("../escape", {}, profile="smoke")


def test_provenance_dirty_flag_ignores_results_files(tmp_path, monkeypatch):
    import subprocess

    from hparse.engine import results

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text("{}\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(results, "_REPO_ROOT", tmp_path)
    assert results.provenance()["git_dirty"] is False
    (tmp_path / "results" / "run.json").write_text('{"metrics": 1}\n')  # a rerun rewrites a committed result
    assert results.provenance()["git_dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")  # changed code is what makes a run dirty
    assert results.provenance()["git_dirty"] is True


# ------------------------------------------------------------------------------------------------- viz


def test_overlays_colour_only_foreground():
    from hparse.viz import overlay_instances, overlay_person_parts, overlay_semantic, show_sample

    sample = make_sample()
    base = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    sem = overlay_semantic(sample["image"], sample["semantic"], CIHP_LABELS, alpha=1.0)
    assert sem.shape == (20, 30, 3) and sem.dtype == np.uint8
    assert (sem[5, 3] == CIHP_LABELS.palette[14]).all() and (sem[19, 0] == base[19, 0]).all()
    inst = overlay_instances(sample["image"], sample["instances"], alpha=1.0)
    assert not (inst[12, 22] == inst[5, 3]).all()
    parts = overlay_person_parts(sample["image"], person_part_maps(sample["semantic"], sample["instances"]),
                                 CIHP_LABELS)
    assert parts.shape == (20, 30, 3)
    fig = show_sample(sample, CIHP_LABELS)
    assert len(fig.axes) == 3


def test_person_outline_does_not_wrap_around_the_image_border():
    from hparse.viz.overlay import _mask_edge

    mask = np.zeros((6, 8), bool)
    mask[:, :3] = True  # touches the top, bottom and left borders
    edge = _mask_edge(mask)
    assert edge[:, 0].all() and edge[0, :3].all() and edge[-1, :3].all() and edge[:, 2].all()
    assert not edge[1:-1, 1].any() and not edge[:, 3:].any()


def test_cli_bench_rejects_unknown_names(capsys):
    from hparse.cli import main

    assert main(["bench", "no-such-benchmark", "--profile", "smoke"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_explorers_draw_into_an_image_widget_without_output_capture():
    pytest.importorskip("ipywidgets")
    from hparse.viz import slider_explorer
    from hparse.viz.widgets import figure_explorer

    drawn = []
    box = slider_explorer(lambda i, ax: (drawn.append(i), ax.plot([0, i])), 3, start=1)
    slider, image = box.children[0].children[0], box.children[1]
    assert drawn == [1] and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    slider.value = 2
    assert drawn == [1, 2]
    import ipywidgets as widgets

    calls = []
    figure_explorer(lambda fig, a, b: calls.append((a, b)), {"a": widgets.IntSlider(value=1),
                                                           "b": widgets.Dropdown(options=["x", "y"], value="x")})
    assert calls == [(1, "x")]
