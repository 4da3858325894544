"""The multi-granularity bottom-up parser: targets, Hough voting, warping, Eq. 17, grouping, flags, oracle."""

import math

import pytest
import torch
import torch.nn.functional as F

from hparse.data import SynthCrowd
from hparse.data.labels import COCO17, MPII16, PPP14
from hparse.data.transforms import hflip_sample
from hparse.engine import get_profile
from hparse.metrics import ParsingEvaluator
from hparse.models import build_model
from hparse.models.mg_parser import Assembly, assemble, assign_pixels, group_joints, oracle_prediction
from hparse.models.mg_targets import (
    dense_skeleton,
    dspf_targets,
    keypoint_targets,
    limb_flip_permutation,
    limb_targets,
    skeleton_order,
)
from hparse.ops.hough import disk_cells, hough_map, hough_scores, point_nms
from hparse.ops.warp import flow_warp, upsample_field
from hparse.recipes import recipe

TINY = dict(backbone="resnet18", backbone_width=8, fpn_channels=16, decoder_channels=16, dspf_channels=8,
            disk_radius=6.0, limb_sigma=2.0)


def _keypoints(rows):
    """(N, 17, 3) COCO keypoints with the listed (person, type, x, y) visible, all others absent."""
    people = max(r[0] for r in rows) + 1
    out = torch.zeros(people, 17, 3)
    for n, k, x, y in rows:
        out[n, k] = torch.tensor([x, y, 2.0])
    return out


# ------------------------------------------------------------------------------------------------- targets


def test_dspf_target_two_people_by_hand():
    # Person 1 fills columns 0-3, person 2 columns 4-7 of an 8x8 image; person 1 has joints at (1, 1) and (1, 7),
    # person 2 one joint at (7, 4). At stride 1 every pixel centre points at its own person's nearest joint.
    instances = torch.zeros(1, 8, 8, dtype=torch.int64)
    instances[0, :, :4], instances[0, :, 4:] = 1, 2
    kps = _keypoints([(0, 0, 1.0, 1.0), (0, 1, 1.0, 7.0), (1, 0, 7.0, 4.0)])
    offsets, weight = dspf_targets(instances, [kps], stride=1)
    assert weight.all()
    # pixel (row 0, col 3), centre (3.5, 0.5): nearest own joint (1, 1) -> offset (-2.5, 0.5)
    torch.testing.assert_close(offsets[0, :, 0, 3], torch.tensor([-2.5, 0.5]))
    # pixel (row 6, col 0), centre (0.5, 6.5): nearest own joint (1, 7) -> (0.5, 0.5)
    torch.testing.assert_close(offsets[0, :, 6, 0], torch.tensor([0.5, 0.5]))
    # pixel (row 0, col 4) is nearer to person 1's joint (1, 1) but belongs to person 2 -> points at (7, 4)
    torch.testing.assert_close(offsets[0, :, 0, 4], torch.tensor([7.0 - 4.5, 4.0 - 0.5]))
    # at stride 4: cell (0, 0) centre (2, 2), of person 1 -> (1, 1)
    offsets4, weight4 = dspf_targets(instances, [kps], stride=4)
    assert offsets4.shape == (1, 2, 2, 2) and weight4.all()
    torch.testing.assert_close(offsets4[0, :, 0, 0], torch.tensor([-1.0, -1.0]))


def test_dspf_target_weight_zero_without_visible_joint():
    instances = torch.ones(1, 8, 8, dtype=torch.int64)
    kps = torch.zeros(1, 17, 3)
    kps[0, 0] = torch.tensor([3.0, 3.0, 1.0])  # occluded only
    _, weight = dspf_targets(instances, [kps], stride=1, min_visibility=2)
    assert not weight.any()
    _, weight = dspf_targets(instances, [kps], stride=1, min_visibility=1)
    assert weight.all()


def test_keypoint_and_limb_targets_flip_with_their_labels():
    sample = SynthCrowd("val", num_images=2, image_size=96, max_people=3)[1]
    flipped = hflip_sample(sample, SynthCrowd("val", 1, 96).labels)
    grid, stride, radius, sigma = (24, 24), 4, 8.0, 3.0
    limbs = dense_skeleton(COCO17.skeleton, 17)
    disks, offsets = keypoint_targets([sample["keypoints"]], grid, stride, radius)
    disks_f, offsets_f = keypoint_targets([flipped["keypoints"]], grid, stride, radius)
    perm = list(COCO17.flip_permutation)
    # flipping the image and its keypoints = mirroring the maps and swapping left/right channels
    torch.testing.assert_close(disks_f, disks[:, perm].flip(-1))
    mirrored = offsets[:, perm].flip(-1)
    mirrored[:, :, 0] = -mirrored[:, :, 0]
    torch.testing.assert_close(offsets_f, mirrored, atol=1e-4, rtol=0)
    heat = limb_targets([sample["keypoints"]], limbs, grid, stride, sigma)
    heat_f = limb_targets([flipped["keypoints"]], limbs, grid, stride, sigma)
    limb_perm = list(limb_flip_permutation(limbs, perm))
    torch.testing.assert_close(heat_f, heat[:, limb_perm].flip(-1), atol=1e-5, rtol=0)
    assert disks.sum() > 0 and heat.amax() > 0.9


@pytest.mark.parametrize("kset", [COCO17, MPII16, PPP14])
def test_skeletons_dense_sets_flip_and_order(kset):
    limbs = dense_skeleton(kset.skeleton, kset.num_keypoints)
    assert limbs[: len(kset.skeleton)] == tuple(kset.skeleton)
    perm = limb_flip_permutation(limbs, kset.flip_permutation)
    assert sorted(perm) == list(range(len(limbs)))
    order = skeleton_order(limbs, kset.num_keypoints, 0, len(kset.skeleton))
    assert sorted(e for e, _, _ in order) == list(range(len(limbs)))
    assert all(e < len(kset.skeleton) for e, _, _ in order[: len(kset.skeleton)])  # skeleton first


# ------------------------------------------------------------------------------------------------------- ops


def test_flow_warp_zero_flow_is_bilinear_upsampling_and_flow_shifts():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    flow = torch.zeros(2, 2, 10, 14, dtype=torch.float64)
    torch.testing.assert_close(flow_warp(x, flow), F.interpolate(x, size=(10, 14), mode="bilinear",
                                                                 align_corners=False))
    # same grid, flow of one cell to the right: out(u) = x(u + 1) away from the border
    flow = torch.zeros(2, 2, 5, 7, dtype=torch.float64)
    flow[:, 0] = 1.0
    torch.testing.assert_close(flow_warp(x, flow)[..., :-1], x[..., 1:])
    field = torch.ones(1, 2, 4, 4)
    torch.testing.assert_close(upsample_field(field, (8, 8)), torch.full((1, 2, 8, 8), 2.0))


def test_hough_voting_recovers_keypoint_from_disk_and_offsets():
    # a disk of radius 3 cells around p = (9.3, 6.7) on a 16x16 grid whose cells vote exactly for p
    p = torch.tensor([9.3, 6.7])
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    centres = torch.stack((xs, ys), -1).view(-1, 2)
    inside = ((centres - p) ** 2).sum(-1) <= 9.0
    votes = (centres + (p - centres))[None]  # every cell votes for p
    weights = inside.float()[None]
    score = hough_scores(votes, weights, p[None], radius=3.0, size=(16, 16))
    torch.testing.assert_close(score, torch.ones(1, 1))
    area = hough_scores(votes, weights, p[None], radius=3.0)  # Eq. 8 as printed: / πR²
    torch.testing.assert_close(area, inside.sum().float().view(1, 1) / (math.pi * 9))
    # the local maximum of the splatted map sits at the node next to p, and equals Eq. 8 at the nodes
    heat = hough_map(votes, weights, (16, 16), radius=3.0)
    node = divmod(int(heat[0].argmax()), 16)
    assert node == (6, 9)
    nodes = centres[None].expand(1, -1, -1)[0]
    torch.testing.assert_close(hough_scores(votes, weights, nodes, radius=3.0).view(1, 16, 16), heat)
    # noisy offsets still give one candidate after NMS
    noisy = votes + 0.2 * torch.randn(votes.shape, generator=torch.Generator().manual_seed(0))
    queries = p + 0.3 * torch.randn(20, 2, generator=torch.Generator().manual_seed(1))
    scores = hough_scores(noisy, weights, queries, radius=3.0, size=(16, 16))
    keep = point_nms(queries[None], scores, radius=1.0, valid=scores > 0.2)
    assert int(keep.sum()) == 1


def test_disk_cells_matches_brute_force():
    points = torch.tensor([[0.2, 0.3], [5.5, 5.5], [15.9, 3.2], [8.0, 15.0]])
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    centres = torch.stack((xs, ys), -1).view(-1, 2)
    for radius in (1.0, 2.5, 3.0):
        brute = (((centres[None] - points[:, None]) ** 2).sum(-1) <= radius * radius).sum(1).float()
        torch.testing.assert_close(disk_cells(points, radius, (16, 16)), brute)


# ------------------------------------------------------------------------------------------------- assembly


def test_eq17_assigns_by_normalised_distance():
    # two people: A with joints at (0, 0) and (10, 0) (scores 1), B with one joint at (20, 0) (score 0.5);
    # A's scale sqrt(10 * 0) floored at 5, B's 5.
    joints = torch.tensor([[[0.0, 0.0], [10.0, 0.0]], [[20.0, 0.0], [0.0, 0.0]]])
    scores = torch.tensor([[1.0, 1.0], [0.5, 0.0]])
    present = torch.tensor([[True, True], [True, False]])
    points = torch.tensor([[1.0, 0.0], [14.0, 0.0], [17.0, 0.0], [19.0, 0.0]])
    owner = assign_pixels(points, joints, scores, present, min_scale=5.0)
    # psi_A(14) = 4 / (2 * 5) = 0.4, psi_B(14) = 6 / (1 * 5) = 1.2 -> A; psi_A(17) = 0.7, psi_B(17) = 0.6 -> B
    assert owner.tolist() == [0, 0, 1, 1]
    assert assign_pixels(points, joints[:0], scores[:0], present[:0]).tolist() == [-1] * 4


def test_grouping_merges_along_limbs_and_refuses_two_joints_of_one_type():
    limbs = ((0, 1), (1, 2), (0, 2))  # a triangle: the cycle can try to merge two people
    order = skeleton_order(limbs, 3, 0)
    count = 2
    assignment = torch.zeros(3, 2, 2, dtype=torch.bool)
    # breadth-first from joint 0, limbs (0, 1) and (0, 2) are visited before (1, 2)
    assert [e for e, _, _ in order] == [0, 2, 1]
    assignment[0, 0, 0] = assignment[2, 0, 0] = True  # person a: joints 0-1 and 0-2, candidates 0
    assignment[0, 1, 1] = True  # person b: joints 0-1, candidates 1
    assignment[1, 1, 0] = True  # a wrong limb (1, 2): b's joint 1 to a's joint 2 would give one person two 0s
    scores = assignment.float()
    groups = group_joints(assignment, scores, limbs, order, count, nodes=[0, 1, 2, 3, 4])
    groups = sorted(sorted(g) for g in groups)
    assert groups == [[0, 2, 4], [1, 3]]


def test_empty_maps_and_empty_images_give_empty_predictions():
    cfg = Assembly(COCO17, 20, disk_radius=6.0)
    e = len(cfg.limbs)
    probs = torch.zeros(20, 32, 32)
    probs[0] = 1
    pred = assemble(cfg, probs, torch.zeros(2, 32, 32), human=torch.zeros(8, 8, dtype=torch.bool),
                    dspf_grid=torch.zeros(2, 8, 8), disks=torch.zeros(17, 8, 8), offsets=torch.zeros(17, 2, 8, 8),
                    limbs=torch.zeros(e, 8, 8))
    assert pred["person_parts"].shape == (0, 32, 32) and pred["keypoints"].shape == (0, 17, 3)
    # people but no visible joint: human pixels, no candidate
    probs[1, :16] = 1
    probs[0, :16] = 0
    pred = assemble(cfg, probs, torch.zeros(2, 32, 32), human=torch.ones(8, 8, dtype=torch.bool),
                    dspf_grid=torch.zeros(2, 8, 8), disks=torch.zeros(17, 8, 8), offsets=torch.zeros(17, 2, 8, 8),
                    limbs=torch.zeros(e, 8, 8))
    assert len(pred["person_scores"]) == 0 and int((pred["semantic"] > 0).sum()) == 16 * 32
    empty = SynthCrowd("val", num_images=4, image_size=64, min_people=0, max_people=0)[0]
    assert len(oracle_prediction(empty)["person_scores"]) == 0
    model = build_model("mg_parser", num_classes=20, **TINY)
    model.eval()
    out = model([empty["image"], torch.rand(3, 50, 70)])
    assert out[0]["person_parts"].shape[1:] == (64, 64) and out[1]["semantic"].shape == (50, 70)
    model.train()
    losses = model([empty["image"]], [empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_oracle_groups_synthcrowd_people():
    data = SynthCrowd("val", num_images=12, image_size=192, max_people=5)
    evaluator = ParsingEvaluator(20, metrics=("app",))
    for i in range(len(data)):
        sample = data[i]
        pred = oracle_prediction(sample)
        assert pred["part_scores"].shape == (len(pred["person_scores"]), 20)
        assert pred["keypoints"].shape == (len(pred["person_scores"]), 17, 3)
        evaluator.update(pred, sample)
    assert evaluator.compute()["APp50"] >= 0.8  # the 100-image figure is in results/cpu/mg_parser/oracle.json


# ------------------------------------------------------------------------------------------------- the model

FLAGS = [
    dict(dspf="single", warp=False),
    dict(dspf="incremental", warp=False),
    dict(dspf="incremental", warp=True),
    dict(dspf="residual", warp=False),
    dict(dspf="residual", warp=True, uncertainty=False, loss_weights={"limb": 2.0}),
    dict(matching="hungarian", limbs="skeleton", hough_norm="area"),
    dict(matching="greedy", decoder_norm="bn", min_visibility=1),
]


@pytest.mark.parametrize("flags", FLAGS, ids=[str(i) for i in range(len(FLAGS))])
def test_each_flag_builds_and_trains_a_step(flags):
    torch.manual_seed(0)
    model = build_model("mg_parser", num_classes=20, **{**TINY, **flags})
    data = SynthCrowd("train", num_images=2, image_size=64, max_people=3)
    samples = [data[0], data[1]]
    model.train()
    losses = model([s["image"] for s in samples], samples)
    assert set(losses) == {"loss_semantic", "loss_dspf", "loss_disk", "loss_offset", "loss_limb"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        pred = model([samples[0]["image"]])[0]
    assert pred["semantic"].shape == (64, 64)


def test_bad_flags_are_refused():
    with pytest.raises(ValueError, match="dspf"):
        build_model("mg_parser", num_classes=20, **TINY, dspf="pyramid")
    with pytest.raises(ValueError, match="warp"):
        build_model("mg_parser", num_classes=20, **TINY, dspf="single", warp=True)
    with pytest.raises(ValueError, match="matching"):
        build_model("mg_parser", num_classes=20, **TINY, matching="auction")


def test_overfits_a_few_images():
    torch.manual_seed(0)
    model = build_model("mg_parser", num_classes=20, **{**TINY, "decoder_channels": 24})
    data = SynthCrowd("train", num_images=2, image_size=64, max_people=2)
    samples = [data[0], data[1]]
    images = [s["image"] for s in samples]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(40):
        losses = model(images, samples)
        raw = {k: float(v.detach()) for k, v in losses.items()}
        first = first or raw
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert raw["loss_semantic"] < 0.6 * first["loss_semantic"]
    assert raw["loss_dspf"] < first["loss_dspf"]
    assert raw["loss_disk"] < 0.5 * first["loss_disk"]


@pytest.mark.parametrize("dataset", ["synth", "densepose", "mhp", "ppp"])
def test_recipes_build_for_every_dataset(dataset):
    rec = recipe("mg_parser", get_profile("smoke"), dataset)
    model = build_model("mg_parser", num_classes={"synth": 20, "densepose": 15, "mhp": 59, "ppp": 7}[dataset],
                        **rec["model"])
    assert model.kset.num_keypoints == {"synth": 17, "densepose": 17, "mhp": 16, "ppp": 14}[dataset]
    with pytest.raises(ValueError, match="keypoints"):
        recipe("mg_parser", get_profile("smoke"), "cihp")


def test_cli_trains_and_evaluates_mg_parser(tmp_path, tmp_results, capsys):
    from hparse.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "mg_parser", "--profile", "smoke", "--iterations", "2", "--workers", "0",
                 "--out", str(out)]) == 0
    assert (out / "checkpoint.pt").exists()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--num", "2", "--profile", "smoke"]) == 0
    assert "APp50" in capsys.readouterr().out
    assert main(["train", "--model", "mg_parser", "--profile", "smoke", "--gce", "off", "--out",
                 str(tmp_path / "x")]) == 2  # a user error: top-down flags do not apply
    assert "do not apply to mg_parser" in capsys.readouterr().err


def test_dspf_ablation_rows_records_and_refusal(tmp_path):
    """Table 4's rows train through the runner, one record name per row (what chapter 08 reads); the last row is
    the recipe's own model; an unknown row is refused by name."""
    from hparse.engine import get_profile
    from hparse.experiments.dspf_ablation import ROWS, dspf_ablation, record_name
    from hparse.recipes import recipe

    assert [record_name(**flags) for _, flags in ROWS] == [
        "mg_parser/dspf_single_bilinear", "mg_parser/dspf_incremental_bilinear", "mg_parser/dspf_residual_bilinear",
        "mg_parser/dspf_residual_warp"]
    full = recipe("mg_parser", get_profile("cpu"))["model"]
    assert (full["dspf"], full["warp"]) == (ROWS[-1][1]["dspf"], ROWS[-1][1]["warp"])
    out = dspf_ablation(get_profile("smoke"), "cpu", seeds=(0,), iterations=1, rows=["single_bilinear"],
                        out_root=tmp_path, write=False)
    assert list(out) == ["single_bilinear"] and out["single_bilinear"]["seeds"] == [0]
    with pytest.raises(ValueError, match="nonsense"):
        dspf_ablation(get_profile("smoke"), "cpu", rows=["nonsense"], out_root=tmp_path, write=False)
