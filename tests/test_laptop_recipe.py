"""The pieces that make the top-down models learn on a laptop: narrow ResNets, GroupNorm in the parsing branch, the
SynthCrowd-pretrained starting point, recipes in one module, and the variants x seeds runner."""

from __future__ import annotations

import json

import pytest
import torch

from hparse.data import SynthCrowd
from hparse.engine import get_profile
from hparse.experiments.runner import exceeds_spread, run_variants, spread_verdict, summarise
from hparse.models import build_model
from hparse.models.backbone import build_resnet_fpn
from hparse.models.heads.parsing_head import ParsingHead
from hparse.models.pretrain import PRETRAINED, SemanticPretrainer, load_pretrained, save_pretrained
from hparse.recipes import demo_recipe, recipe, warmup_steps, with_iterations


@pytest.mark.parametrize("width", [16, 24])
def test_narrow_resnet_has_the_stage_widths_and_pyramid(width):
    body = build_resnet_fpn("resnet18", width=width, fpn_channels=32)
    assert [b.conv1.out_channels for b in (body.body.layer1[0], body.body.layer2[0], body.body.layer3[0],
                                           body.body.layer4[0])] == [width, 2 * width, 4 * width, 8 * width]
    out = body(torch.zeros(1, 3, 64, 64))
    assert [tuple(out[k].shape) for k in ("0", "1", "2", "3", "pool")] == [
        (1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4), (1, 32, 2, 2), (1, 32, 1, 1)]
    # Width 64 is torchvision's own ResNet: the same parameter count.
    full = sum(p.numel() for p in build_resnet_fpn("resnet18", fpn_channels=32).body.parameters())
    assert full == sum(p.numel() for p in build_resnet_fpn("resnet18", width=64, fpn_channels=32).body.parameters())
    with pytest.raises(ValueError, match="width 64 only"):
        build_resnet_fpn("resnet18", "DEFAULT", width=width)


def test_parsing_head_group_norm_is_a_switch():
    plain = ParsingHead(16, gce=True, ipbc=True, gce_channels=16, conv_channels=16)
    normed = ParsingHead(16, gce=True, ipbc=True, gce_channels=16, conv_channels=16, norm="gn")
    count = lambda m: sum(isinstance(x, torch.nn.GroupNorm) for x in m.modules())
    assert count(plain) == 0 and count(normed) == 4 + 4 + 1  # IPBC convs, ASPP 1x1 + three atrous branches, ASPP fusion
    x = torch.randn(3, 16, 8, 8)
    assert normed(x).shape == plain(x).shape == (3, 16, 8, 8)
    with pytest.raises(ValueError, match="norm"):
        ParsingHead(16, norm="bn")


def test_pretrainer_learns_one_batch_and_its_weights_load_into_a_parser(tmp_path, monkeypatch):
    data = SynthCrowd("train", 2, 64, 1, 2, seed=3)
    samples = [data[0], data[1]]
    torch.manual_seed(0)
    model = SemanticPretrainer(20, width=8, fpn_channels=16)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    images, targets = [s["image"] for s in samples], [{"semantic": s["semantic"]} for s in samples]
    losses = []
    for _ in range(15):
        loss = model(images, targets)["loss_semantic"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    model.eval()
    assert model(images)[0]["semantic"].shape == (64, 64)

    # The shipped-weights path: a file written by save_pretrained loads into a Parsing R-CNN built on the name.
    arch = {"backbone": "resnet18", "width": 8, "fpn_channels": 16}
    monkeypatch.setitem(PRETRAINED, "test_weights", ("test.pt", arch))
    monkeypatch.setattr("hparse.models.pretrain.WEIGHTS_DIR", tmp_path)
    save_pretrained(model, tmp_path / "test.pt", arch, {"note": "test"})
    parser = build_model("parsing_rcnn", 20, backbone="resnet18", backbone_weights="test_weights", backbone_width=8,
                         fpn_channels=16, head_channels=8, gce_channels=8, train_sizes=None, test_size=None,
                         max_size=None)
    loaded = parser.backbone.body.conv1.weight
    assert torch.allclose(loaded, model.body.body.conv1.weight.half().float())
    assert isinstance(parser.backbone.body.bn1, torch.nn.Module) and "Frozen" in type(parser.backbone.body.bn1).__name__
    with pytest.raises(ValueError, match="width=8"):
        build_model("parsing_rcnn", 20, backbone="resnet18", backbone_weights="test_weights", backbone_width=16,
                    fpn_channels=16)
    body = build_resnet_fpn("resnet18", width=8, fpn_channels=16)
    (tmp_path / "test.pt").unlink()
    with pytest.raises(FileNotFoundError, match="hparse pretrain"):
        load_pretrained(body, "test_weights", arch)


def test_shipped_weights_match_their_architecture():
    """The file in hparse/weights is what PRETRAINED says (architecture and a size under 5 MB)."""
    from hparse.models.pretrain import pretrained_path

    path = pretrained_path("synthcrowd")
    if not path.exists():
        pytest.skip("the shipped weights are made by `hparse pretrain --install`")
    assert path.stat().st_size < 5 * 2**20
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["architecture"] == PRETRAINED["synthcrowd"][1]
    body = build_resnet_fpn("resnet18", "synthcrowd", width=24, fpn_channels=64)
    assert body.out_channels == 64


def test_recipes_are_one_table_and_keep_the_paper_flags():
    for name in ("smoke", "cpu", "gpu"):
        profile = get_profile(name)
        prcnn = recipe("parsing_rcnn", profile)
        assert {k: prcnn["model"][k] for k in ("pss", "roi_size", "gce", "ipbc")} == dict(
            pss=True, roi_size=32, gce=True, ipbc=True)
        assert set(prcnn) == {"model", "train", "data"}
        assert recipe("parsing_rcnn", profile, gce=False)["model"]["gce"] is False
        assert recipe("attention_rcnn", profile, attention=None)["model"]["attention"] is None
        demo = demo_recipe(profile)
        assert demo["model"]["gce"] is True and demo["train"]["iterations"] >= 1
    with pytest.raises(ValueError, match="no recipe"):
        recipe("nope", get_profile("cpu"))
    assert warmup_steps(100) == 10 and warmup_steps(100_000) == 500 and warmup_steps(3) == 1
    short = with_iterations(recipe("parsing_rcnn", get_profile("gpu")), 40)
    assert short["train"]["iterations"] == 40 and short["train"]["warmup"] == 4


def test_summarise_and_the_spread_rule():
    per_seed = {0: {"mIoU": 0.40, "APp50": 0.30}, 1: {"mIoU": 0.44, "APp50": 0.32}, 2: {"mIoU": 0.42}}
    s = summarise(per_seed)
    assert s["mean"]["mIoU"] == pytest.approx(0.42) and s["std"]["mIoU"] == pytest.approx(0.02)
    assert s["min"]["APp50"] == 0.30 and s["max"]["APp50"] == 0.32
    a = {"mean": {"m": 0.50}, "std": {"m": 0.01}}
    b = {"mean": {"m": 0.47}, "std": {"m": 0.01}}
    c = {"mean": {"m": 0.49}, "std": {"m": 0.01}}
    assert exceeds_spread(a, b, "m") and not exceeds_spread(a, c, "m")
    # What the book prints: one seed has no spread, whatever its gap.
    assert spread_verdict({**a, "seeds": [0, 1]}, {**b, "seeds": [0, 1]}, "m") == "exceeds the spread"
    assert spread_verdict({**a, "seeds": [0, 1]}, {**c, "seeds": [0, 1]}, "m") == "within the spread"
    assert spread_verdict({**a, "seeds": [0]}, {**b, "seeds": [0, 1]}, "m") == "one seed: no spread"


def test_run_variants_writes_one_record_per_variant_and_reuses_finished_runs(tmp_path, tmp_results):
    profile = get_profile("smoke").override(train_images=4, val_images=2, image_size=64)
    calls = []
    kwargs = dict(record_prefix="parsing_rcnn/test_", out_root=tmp_path, iterations=2, device="cpu",
                  on_run=lambda name, seed, metrics: calls.append((name, seed)))
    variants = [("plain", {"gce": False, "ipbc": False}), ("gce", {"gce": True, "ipbc": False})]
    out = run_variants("parsing_rcnn", variants, [0, 1], profile, **kwargs)
    assert set(out) == {"plain", "gce"} and calls == [("plain", 0), ("plain", 1), ("gce", 0), ("gce", 1)]
    record = json.loads((tmp_results / "smoke" / "parsing_rcnn" / "test_gce.json").read_text())
    assert set(record["metrics"]["per_seed"]) == {"0", "1"} and record["metrics"]["seeds"] == [0, 1]
    assert "mIoU" in record["metrics"]["mean"] and record["metrics"]["iterations"] == 2
    assert record["config"]["flags"] == {"gce": True, "ipbc": False}
    # A second call reuses the finished runs: no run folder gets a new checkpoint, and a record that already holds
    # every seed is left as written (its provenance names the run that measured it).
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")}
    written = (tmp_results / "smoke" / "parsing_rcnn" / "test_gce.json").stat().st_mtime_ns
    again = run_variants("parsing_rcnn", variants, [0, 1], profile, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("checkpoint.pt")} == stamps
    assert (tmp_results / "smoke" / "parsing_rcnn" / "test_gce.json").stat().st_mtime_ns == written
    assert again["gce"]["mean"] == pytest.approx(out["gce"]["mean"])
    # The records alone are enough: without the run folders nothing is retrained, and a new seed trains only itself.
    import shutil

    shutil.rmtree(tmp_path / "smoke")
    calls.clear()
    third = run_variants("parsing_rcnn", variants[:1], [0, 1, 2], profile, **kwargs)
    plain = tmp_path / "smoke" / "plain"
    assert not list(plain.glob("seed[01]")) and (plain / "seed2").exists()
    assert third["plain"]["seeds"] == [0, 1, 2] and len(third["plain"]["per_seed"]) == 3


def test_recipes_pin_the_shipped_starting_point():
    """A cpu recipe names the file it starts from (name@digest); a config pinned to another file fails to build
    with a message saying so, instead of silently loading the file shipped now."""
    from hparse.models.pretrain import pinned, split_pinned, weights_digest

    plan = recipe("parsing_rcnn", get_profile("cpu"))
    name, digest = split_pinned(plan["model"]["backbone_weights"])
    assert name == "synthcrowd" and digest == weights_digest("synthcrowd") and len(digest) == 12
    assert pinned("synthcrowd") == plan["model"]["backbone_weights"]
    build_resnet_fpn("resnet18", plan["model"]["backbone_weights"], width=24, fpn_channels=64)  # loads
    with pytest.raises(ValueError, match="another 'synthcrowd' file"):
        build_resnet_fpn("resnet18", "synthcrowd@000000000000", width=24, fpn_channels=64)


def test_pretraining_stages_chain_and_supervise_each_level(tmp_path):
    """Stage 2 starts from stage 1's weights (``init``), its loss supervises every level on its own, and the
    command's weights are the last stage's; a stage asked to start from a missing file says which one."""
    from hparse.engine.pretrain import pretrain_backbone
    from hparse.recipes import pretrain_recipe

    assert pretrain_recipe(get_profile("cpu"), 1)["model"]["supervision"] == "summed"
    assert pretrain_recipe(get_profile("cpu"), 2)["model"]["supervision"] == "per_level"
    with pytest.raises(ValueError, match="stage"):
        pretrain_recipe(get_profile("cpu"), 3)
    out = pretrain_backbone(get_profile("smoke"), tmp_path, iterations=1, progress=False)
    assert out["weights"] == [str(tmp_path / "stage2" / "backbone.pt")]
    blob = torch.load(tmp_path / "stage2" / "backbone.pt", weights_only=True)
    assert [s["stage"] for s in blob["provenance"]["stages"]] == [1, 2]
    assert blob["provenance"]["command"] == "hparse pretrain --profile smoke --stages 1 2 --iterations 1"
    assert blob["provenance"]["stages"][1]["init"] == str(tmp_path / "stage1" / "backbone.pt")
    # a run continuing from a file made by the command keeps that file's stages (as the shipped file's continuation)
    more = pretrain_backbone(get_profile("smoke"), tmp_path / "more", iterations=1, stages=(2,), progress=False,
                             init=tmp_path / "stage2" / "backbone.pt")
    chain = torch.load(more["weights"][0], weights_only=True)["provenance"]["stages"]
    assert [s["stage"] for s in chain] == [1, 2, 2]
    assert chain[0]["command"] == "hparse pretrain --profile smoke --stages 1 2 --iterations 1"
    with pytest.raises(FileNotFoundError, match="stage1"):
        pretrain_backbone(get_profile("smoke"), tmp_path / "other", iterations=1, stages=(2,), progress=False)

    # per-level loss: the mean of one cross-entropy per level, not the cross-entropy of their sum
    torch.manual_seed(0)
    model = SemanticPretrainer(20, width=8, fpn_channels=16).train()
    sample = SynthCrowd("train", 1, 64, max_people=2)[0]
    per_level = model([sample["image"]], [sample])["loss_semantic"]
    levels = model.level_logits(sample["image"][None])
    expected = sum(torch.nn.functional.cross_entropy(x, sample["semantic"][None], ignore_index=255)
                   for x in levels) / len(levels)
    assert torch.allclose(per_level, expected, atol=1e-5)
    model.supervision = "summed"
    assert not torch.allclose(model([sample["image"]], [sample])["loss_semantic"], per_level)


def test_branch_probe_writes_a_record_only_when_asked(tmp_results, capsys, monkeypatch):
    """Without ``--record`` the probe prints its rows and writes nothing; with it, the named record. (The probe
    itself is replaced by a stand-in: this is the command's bookkeeping, the probe has its own test below.)"""
    from hparse.experiments import branch_probe as bp

    monkeypatch.setattr(bp, "probe_branch", lambda *a, **k: {"curve": [(1, 0.5)], "mIoU": 0.5, "per_class_iou": [],
                                                             "steps": 1, "lr": 1e-3, "wall_time_s": 0.0})
    args = ["--profile", "smoke", "--weights", "ideal=perfect", "--probes", "branch", "--steps", "1"]
    assert bp.main(args) == 0
    assert "ideal/branch" in capsys.readouterr().out
    assert not tmp_results.exists() or not any(tmp_results.rglob("*.json"))
    assert bp.main(args + ["--record", "parsing_rcnn/probe_test"]) == 0
    assert (tmp_results / "smoke" / "parsing_rcnn" / "probe_test.json").exists()


def test_branch_probe_trains_the_branch_alone_on_frozen_features(tmp_path):
    """The probe trains only the parsing branch (the backbone's weights do not move) and scores RoI mIoU; perfect
    features are the one-hot part map at stride 4."""
    from hparse.engine.profiles import seed_everything
    from hparse.experiments import branch_probe as bp

    profile = get_profile("smoke")
    weights = tmp_path / "b.pt"
    torch.save({"state_dict": bp._model(profile, None)[0].backbone.state_dict()}, weights)
    seed_everything(0)  # as the probe does before building: the same initial branch
    model, _ = bp._model(profile, weights)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.parsing_head.state_dict().items()}
    out = bp.probe_branch(profile, weights, "branch", steps=2, train_images=4, val_images=2, eval_at=(1,),
                          return_model=True)
    assert [step for step, _ in out["curve"]] == [1, 2] and 0 <= out["mIoU"] <= 1
    trained = out["model"]
    assert all(torch.equal(before[k], v) for k, v in trained.backbone.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in trained.parsing_head.state_dict().items())
    seed_everything(0)
    rebuilt = bp._model(profile, weights)[0].parsing_head.state_dict()
    assert all(torch.equal(head_before[k], v) for k, v in rebuilt.items())  # the comparison above is a fair one
    sample = SynthCrowd("val", 1, 64, max_people=2)
    (features, _), = bp._features(model, sample, perfect=True)
    one_hot = features["0"][0, :20]
    assert torch.allclose(one_hot.sum(0), torch.ones_like(one_hot[0]))  # a distribution over the parts per cell
    with pytest.raises(ValueError, match="probe"):
        bp.probe_branch(profile, weights, "nonsense")

    # head_norm replaces the recipe's normalisation of the branch, and only that
    plain = bp._model(profile, weights)[0].parsing_head
    grouped = bp._model(profile, weights, "gn")[0].parsing_head
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in grouped.modules())
    convs = [[m.weight.shape for m in head.modules() if isinstance(m, torch.nn.Conv2d)] for head in (plain, grouped)]
    assert convs[0] == convs[1]  # the same convolutions either way
