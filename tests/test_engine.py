"""Training engine: exact resume, determinism, NaN stop, sampler, flips, schedule, checkpoints, evaluate, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from hparse.data import CIHP_LABELS, SynthCrowd
from hparse.engine import evaluate, train
from hparse.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from hparse.engine.trainer import LRSchedule, PositionedDataset, StepSampler, build_optimizer, read_log
from hparse.models import build_model

TINY = dict(
    backbone="resnet18", train_sizes=None, test_size=None, max_size=None, anchor_sizes=(8, 16, 32, 64, 128),
    rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20,
    box_batch_size_per_image=32, box_detections_per_img=5, parsing_batch=2, head_channels=16, gce_channels=16,
    roi_size=8, box_representation_size=64,
)
FAST = dict(batch_size=2, lr=0.01, warmup=2, progress=False)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("parsing_rcnn", num_classes=20, **TINY)


def synth(num: int = 8, split: str = "train") -> SynthCrowd:
    return SynthCrowd(split, num_images=num, image_size=64, min_people=0, max_people=3, seed=0)


class ToyDataset(torch.utils.data.Dataset):
    """Data-contract samples with a left arm (14) on the image's left and upper clothes (5) on its right."""

    labels = CIHP_LABELS

    def __len__(self):
        return 6

    def __getitem__(self, index):
        semantic = torch.zeros(8, 8, dtype=torch.int64)
        semantic[2:6, 1:4], semantic[2:6, 4:7] = 14, 5
        return {"image": torch.full((3, 8, 8), index / 10), "semantic": semantic,
                "instances": (semantic > 0).long(), "boxes": torch.tensor([[1.0, 2.0, 7.0, 6.0]]),
                "keypoints": torch.zeros(1, 0, 3), "meta": {"id": str(index), "dataset": "toy"}}


class ToyModel(nn.Module):
    """torchvision convention, one parameter; records what it was fed; its loss turns NaN at ``nan_at``."""

    def __init__(self, nan_at: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls, self.nan_at, self.seen = 0, nan_at, []

    def forward(self, images, targets=None):
        self.calls += 1
        self.seen.append([(t["meta"]["id"], t["meta"].get("hflip", False), int(t["semantic"][3, 1]),
                           int(t["semantic"][3, 6])) for t in targets])
        loss = (self.weight * torch.stack([i.mean() for i in images]).sum()) ** 2
        bad = loss * float("nan") if self.calls == self.nan_at else loss * 0
        return {"loss_main": loss, "loss_bad": bad}


# --------------------------------------------------------------------------------------------- resume, determinism


def test_kill_and_resume_reproduces_the_loss_curve(tmp_path):
    dataset = synth()
    run = dict(iterations=6, checkpoint_every=3, seed=3, **FAST)
    full = train(tiny_model(), dataset, out_dir=tmp_path / "full", **run)

    class Crash(Exception):
        pass

    def crash(step, record):
        if step == 4:  # dies after step 4, whose work is past the last checkpoint (step 3)
            raise Crash

    with pytest.raises(Crash):
        train(tiny_model(), dataset, out_dir=tmp_path / "crashed", on_step=crash, **run)
    assert [r["step"] for r in read_log(tmp_path / "crashed")] == [1, 2, 3, 4]
    assert load_checkpoint(tmp_path / "crashed")["step"] == 3
    # A fresh process would build a fresh model: resume must not depend on the weights it starts from.
    resumed = train(tiny_model(seed=99), dataset, out_dir=tmp_path / "crashed", **run)
    losses = [[r[k] for k in ("loss", "loss_parsing", "loss_classifier")] for r in full["history"]]
    assert [r["step"] for r in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    assert [[r[k] for k in ("loss", "loss_parsing", "loss_classifier")] for r in resumed["history"]] == losses
    assert len({round(r["loss"], 6) for r in full["history"]}) == 6  # the losses really change from step to step
    a, b = load_checkpoint(tmp_path / "full")["model"], load_checkpoint(tmp_path / "crashed")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_schedule(tmp_path):
    train(ToyModel(), ToyDataset(), iterations=4, out_dir=tmp_path, checkpoint_every=2, **FAST)
    # Continuing the finished 4-step run to 8 steps would keep its 4-step schedule (warm-up, decay points).
    with pytest.raises(ValueError, match=r"train.iterations: 4 -> 8"):
        train(ToyModel(), ToyDataset(), iterations=8, out_dir=tmp_path, checkpoint_every=2, **FAST)
    again = train(ToyModel(), ToyDataset(), iterations=4, out_dir=tmp_path, checkpoint_every=2, **FAST)
    assert again["step"] == 4  # the same settings load the finished run
    fresh = train(ToyModel(), ToyDataset(), iterations=8, out_dir=tmp_path, checkpoint_every=2, resume=False, **FAST)
    assert fresh["step"] == 8


def test_nan_loss_names_step_and_term(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 2: loss term 'loss_bad' is nan"):
        train(ToyModel(nan_at=2), ToyDataset(), iterations=4, out_dir=tmp_path, **FAST)


def test_training_path_flips_and_swaps_parts(tmp_path):
    model = ToyModel()
    train(model, ToyDataset(), iterations=8, out_dir=tmp_path, checkpoint_every=100, **FAST)
    seen = [item for batch in model.seen for item in batch]
    flipped = [s for s in seen if s[1]]
    assert 0 < len(flipped) < len(seen)
    # A flip mirrors the pixels and renames the left arm (14) a right arm (15); unpaired labels (5) stay.
    assert all((left, right) == ((5, 15) if hflip else (14, 5)) for _, hflip, left, right in seen)
    model2 = ToyModel()
    train(model2, ToyDataset(), iterations=8, out_dir=tmp_path / "again", checkpoint_every=100, **FAST)
    assert model2.seen == model.seen  # same seed: same samples, same flips
    model3 = ToyModel()
    train(model3, ToyDataset(), iterations=8, out_dir=tmp_path / "noflip", hflip=0, checkpoint_every=100, **FAST)
    assert not any(h for batch in model3.seen for _, h, _, _ in batch)


def test_flip_needs_labels(tmp_path):
    class NoLabels(ToyDataset):
        labels = None

    with pytest.raises(ValueError, match="dataset.labels"):
        train(ToyModel(), NoLabels(), iterations=1, out_dir=tmp_path, **FAST)


# ------------------------------------------------------------------------------------------------ data order


def test_step_sampler_resumes_and_shards():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(StepSampler(5, seed=1), 12)
    assert sorted(i for _, i in full[:5]) == list(range(5)) and sorted(i for _, i in full[5:10]) == list(range(5))
    assert take(StepSampler(5, seed=1, start=7), 5) == full[7:12]
    assert take(StepSampler(5, seed=2), 5) != full[:5]
    ranks = [take(StepSampler(5, seed=1, rank=r, world_size=2), 6) for r in (0, 1)]
    merged = sorted(ranks[0] + ranks[1])
    assert merged == sorted(full)  # the two processes split the global order without overlap
    with pytest.raises(ValueError, match="empty"):
        StepSampler(0, seed=0)


def test_positioned_dataset_is_deterministic_and_leaves_global_rng_alone():
    from hparse.data.transforms import RandomHorizontalFlip

    data = PositionedDataset(ToyDataset(), seed=5, transform=RandomHorizontalFlip(CIHP_LABELS))
    before = torch.get_rng_state()
    flips = [data[(p, 0)]["meta"].get("hflip", False) for p in range(20)]
    assert torch.equal(torch.get_rng_state(), before)
    assert flips == [data[(p, 0)]["meta"].get("hflip", False) for p in range(20)] and 0 < sum(flips) < 20


# ----------------------------------------------------------------------------------------- optimiser, schedule


def test_lr_schedule_warmup_steps_cosine():
    s = LRSchedule(90, warmup=10, warmup_factor=0.01, schedule="step")
    assert s(0) == pytest.approx(0.01) and s(5) == pytest.approx(0.505) and s(10) == 1.0
    assert s(59) == 1.0 and s(60) == pytest.approx(0.1) and s(80) == pytest.approx(0.01)
    c = LRSchedule(100, warmup=0, schedule="cosine")
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    assert LRSchedule(100, warmup=0, milestones=(30,))(30) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        LRSchedule(10, schedule="poly")


def test_optimizer_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    by_decay = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in sgd.param_groups}
    assert by_decay == {(0.1, 1e-4): 1, (0.1, 0.0): 1, (0.2, 0.0): 2}  # conv weight; BN scale; the two biases
    assert isinstance(build_optimizer(model, "adamw", lr=1e-3), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, "lion", lr=1.0)


# --------------------------------------------------------------------------------------------------- checkpoint


def test_checkpoint_atomic_and_rng_roundtrip(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "rng": [rng_state()]})
    state = load_checkpoint(path)["rng"][0]
    expected = torch.rand(3)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # and no temporary file is left behind
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_load_model_and_evaluate_and_result_file(tmp_path, tmp_results):
    train_set, val_set = synth(4), synth(3, "val")
    out = train(tiny_model(), train_set, iterations=2, out_dir=tmp_path, eval_dataset=val_set,
                result_name="test/parsing_rcnn", profile="smoke", config={"note": "test"}, **FAST)
    metrics = out["metrics"]
    for key in ("mIoU", "APp50", "APpvol", "PCP50", "APr50"):
        assert key in metrics and (metrics[key] != metrics[key] or 0.0 <= metrics[key] <= 1.0)
    assert metrics["num_images"] == 3
    assert read_log(tmp_path, "eval")[-1]["step"] == 2
    record = json.loads((tmp_results / "smoke" / "test" / "parsing_rcnn.json").read_text())
    assert record["metrics"]["iterations"] == 2 and record["config"] == {"note": "test"}
    assert record["provenance"]["torch"] == torch.__version__
    model, checkpoint = load_model(tmp_path, device="cpu")
    assert checkpoint["step"] == 2 and not model.training
    again = evaluate(model, val_set, batch_size=2)
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], nan_ok=True)
    assert again["APp50"] == pytest.approx(metrics["APp50"], nan_ok=True)


@pytest.mark.gpu
def test_cuda_training_amp_channels_last(tmp_path):
    model = tiny_model()
    out = train(model, synth(4), iterations=2, out_dir=tmp_path, device="cuda", eval_dataset=synth(2, "val"),
                **FAST)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in out["history"])
    assert model.channels_last and next(model.parameters()).device.type == "cuda"
    assert out["metrics"]["num_images"] == 2


# ------------------------------------------------------------------------------------------------ distributed

_DDP_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from hparse.data import SynthCrowd
from hparse.engine import train
from hparse.models import build_model
out = sys.argv[1]
torch.manual_seed(0)
model = build_model("parsing_rcnn", num_classes=20, **{tiny})
data = SynthCrowd("train", num_images=8, image_size=64, min_people=1, max_people=3, seed=0)
val = SynthCrowd("val", num_images=2, image_size=64, min_people=1, max_people=3, seed=0)
result = train(model, data, iterations=2, batch_size=1, lr=0.01, warmup=1, out_dir=out, progress=False,
               eval_dataset=val)
checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
rank = int(os.environ["RANK"])
with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
    json.dump({{"checksum": checksum, "step": result["step"], "metrics": result["metrics"] is not None}}, f)
"""


@pytest.mark.distributed
def test_ddp_two_cpu_processes_with_gloo(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT.format(tiny=repr(TINY))))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9, abs=1e-9)  # DDP kept them in sync
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["metrics"] and not ranks[1]["metrics"]  # evaluation runs on the main process
    checkpoint = load_checkpoint(out)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
    assert [r["step"] for r in read_log(out)] == [1, 2]


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_demo_train_and_evaluate_checkpoint(tmp_path, tmp_results, capsys):
    from hparse.cli import main

    demo = tmp_path / "demo"
    assert main(["demo", "--profile", "smoke", "--iterations", "2", "--out", str(demo)]) == 0
    assert (demo / "overlay.png").stat().st_size > 1000 and (demo / "checkpoint.pt").exists()
    record = json.loads((demo / "result.json").read_text())  # the run's own record, in its run folder
    assert not (tmp_results / "smoke" / "parsing_rcnn" / "demo.json").exists()  # results/ only with --record
    assert record["metrics"]["iterations"] == 2 and 0 <= record["metrics"]["mIoU"] <= 1
    assert record["config"]["model"]["gce"] is True and record["provenance"]["git_commit"] is not None

    out_json = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(demo), "--num", "2", "--profile", "smoke",
                 "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["metrics"]["num_images"] == 2
    assert "APp50" in capsys.readouterr().out
    # Parsing R-CNN's test-time augmentation (Table 8 †): the record says it was on
    assert main(["evaluate", "--checkpoint", str(demo), "--num", "2", "--profile", "smoke", "--test-flip",
                 "--test-scales", "0.75,1.25", "--record", "test/demo_tta"]) == 0
    tta = json.loads((tmp_results / "smoke" / "test" / "demo_tta.json").read_text())
    assert tta["config"]["test_time"] == {"test_flip": True, "test_scales": [0.75, 1.25]}
    assert tta["metrics"]["num_images"] == 2
    assert main(["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--dataset", "cihp",
                 "--test-flip"]) == 2
    assert "use them with --checkpoint" in capsys.readouterr().err

    run = tmp_path / "baseline"
    assert main(["train", "--profile", "smoke", "--iterations", "1", "--no-pss", "--roi-size", "14", "--no-gce",
                 "--no-ipbc", "--out", str(run), "--result-name", "test/baseline"]) == 0
    config = load_checkpoint(run)["model_config"]
    assert (config["pss"], config["roi_size"], config["gce"], config["ipbc"]) == (False, 14, False, False)
    assert (tmp_results / "smoke" / "test" / "baseline.json").exists()


def test_training_commands_let_idle_openmp_threads_sleep():
    """Before torch is imported, the training commands ask OpenMP for a passive wait policy unless the user set one."""
    code = ("import os, sys; from hparse.cli import _passive_cpu_threads; assert 'torch' not in sys.modules; "
            "_passive_cpu_threads(); print(os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_cli_errors_are_one_line(tmp_path, capsys):
    from hparse.cli import main

    assert main(["evaluate"]) == 2
    assert "--pred, --gt and --dataset" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--profile", "smoke", "--dataset", "cihp", "--out", str(tmp_path)]) == 2
    assert "needs --root" in capsys.readouterr().err


def test_seeds_of_a_recipe_share_their_images(tmp_path):
    """A run's seed changes its model and data order, never its SynthCrowd images: two seeds are scored on the same
    validation images (the same ground-truth people) and train on the same ones."""
    from hparse.cli import main

    records = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        assert main(["train", "--profile", "smoke", "--iterations", "1", "--seed", str(seed), "--out", str(out)]) == 0
        records.append(json.loads((out / "result.json").read_text()))
    assert records[0]["metrics"]["num_gt_persons"] == records[1]["metrics"]["num_gt_persons"]
    assert records[0]["config"]["seed"] == 0 and records[1]["config"]["seed"] == 1
