"""Runs that cannot silently mix, overwrite or crash: resume checks, results per run, clean errors, input guards.

Each case is a mistake a new user makes or a fault a long run meets. "Before" is what hparse did without the guard;
every test below fails on that code. Add a row (and a test) for each new case.

Columns: item of the issue (1 resume, 2 records, 3 user errors, 4 bad files, 5 evaluation, 6 model inputs,
7 resources and run folders), case, before, now, test.

| # | case                             | before                   | now                            | test (test_...)   |
|---|----------------------------------|--------------------------|--------------------------------|-------------------|
| 1 | resume with another --roi-size,  | trained another model    | refused, each ``key: saved ->  | resume_refuses_   |
|   | --lr, --seed, --no-gce           | from the checkpoint,     | requested``; --no-resume,      | another_run       |
|   |                                  | rewrote the record       | --out                          |                   |
| 1 | CIHP run folder resumed on       | trained on               | refused: data.type,            | resume_refuses_   |
|   | SynthCrowd                       |                          | config.dataset                 | another_dataset   |
| 1 | resume to more iterations        | schedule-only message    | the same identity message      | test_engine.py    |
| 2 | demo --iterations 1 --out        | overwrote                | <out>/result.json only         | demo_writes_its_  |
|   | elsewhere                        | results/.../demo.json    |                                | record_into_its_  |
|   |                                  |                          |                                | run_folder        |
| 2 | two train runs with different    | shared one results/ file | one result.json per run folder | two_runs_keep_    |
|   | --out                            |                          |                                | their_own_records |
| 2 | --record onto a longer or        | replaced it              | refused before training;       | record_refuses_   |
|   | another run's record             |                          | --force replaces               | shorter_or_       |
|   |                                  |                          |                                | different_run,    |
|   |                                  |                          |                                | write_result_     |
|   |                                  |                          |                                | policy            |
| 3 | iterations, batch, lr, workers,  | traceback, or silently   | exit 2, one line naming the    | user_errors_exit_ |
|   | sizes, limits out of range;      | used                     | flag, before a model is built  | 2_with_one_line   |
|   | --out a file or not creatable;   |                          |                                |                   |
|   | --device nonsense                |                          |                                |                   |
| 3 | --device cuda without CUDA       | RuntimeError traceback   | exit 2, suggests --device cpu  | device_cuda_      |
|   |                                  |                          |                                | without_cuda      |
| 3 | HPARSE_PROFILE=bogus             | ValueError traceback     | exit 2 naming HPARSE_PROFILE   | bad_profile_from_ |
|   |                                  |                          |                                | the_environment   |
| 3 | zero-byte or truncated           | traceback                | exit 2 naming the file and     | broken_           |
|   | checkpoint                       |                          | --no-resume                    | checkpoint_is_a_  |
|   |                                  |                          |                                | user_error        |
| 3 | empty split                      | 'empty dataset'          | exit 2 naming the split        | empty_split_is_a_ |
|   |                                  | traceback                |                                | user_error        |
| 3 | --debug, HPARSE_DEBUG=1          | (no such flag)           | the traceback                  | debug_shows_the_  |
|   |                                  |                          |                                | traceback         |
| 4 | corrupt training image met       | traceback; steps since   | checkpoint at that step, error | bad_image_mid_    |
|   | mid-run (API and CLI);           | the last checkpoint lost | names the file; --skip-bad     | run_stops_with_a_ |
|   | --skip-bad                       |                          | replaces and lists it          | checkpoint,       |
|   |                                  |                          |                                | cli_bad_image_    |
|   |                                  |                          |                                | mid_run           |
| 5 | an id twice in a split list      | scored twice             | error naming the file and both | duplicate_ids_in_ |
|   |                                  |                          | lines                          | a_split_list      |
| 5 | an image twice in results.txt, a | last line won, scored    | error naming the file and line | duplicates_in_    |
|   | person id twice in a line, a     | twice                    |                                | mhp_results       |
|   | score of 1.5                     |                          |                                |                   |
| 5 | predictions of images not in the | ignored silently         | listed on stderr and in --json | evaluate_reports_ |
|   | ground truth                     |                          |                                | unmatched_and_    |
|   |                                  |                          |                                | refuses_raw_      |
|   |                                  |                          |                                | scores            |
| 5 | scores outside [0, 1]; NaN or    | scored                   | refused unless                 | evaluate_reports_ |
|   | out-of-range --score-thresh      |                          | --allow-raw-scores             | unmatched_and_    |
|   |                                  |                          |                                | refuses_raw_      |
|   |                                  |                          |                                | scores            |
| 5 | verify that checked nothing      | 'OK: 0 images checked',  | exit 1 (empty split), exit 2   | verify_of_        |
|   |                                  | exit 0                   | (--limit 0)                    | nothing_fails     |
| 6 | model(images): [], 0-size,       | '0 persons' or a deep    | ImageInputError naming the     | model_input_guard |
|   | uint8, float64, NaN, [0, 255],   | error                    | image and the fix ('divide it  |                   |
|   | normalised, a batch tensor       |                          | by 255')                       |                   |
| 7 | label size differs from its      | found after a full       | found from the headers first   | image_header_     |
|   | image                            | decode                   |                                | checked_before_   |
|   |                                  |                          |                                | decode            |
| 7 | header over MAX_IMAGE_PIXELS     | decoded                  | error naming the file and the  | image_header_     |
|   |                                  |                          | limit                          | checked_before_   |
|   |                                  |                          |                                | decode            |
| 7 | absurd --batch-size              | out of memory mid-run    | exit 2 with the estimated GiB  | user_errors_exit_ |
|   |                                  |                          |                                | 2_with_one_line   |
| 7 | two runs writing one --out       | interleaved checkpoints  | refused (the lock names the    | run_folder_lock   |
|   |                                  | and logs                 | process); a dead process's     |                   |
|   |                                  |                          | lock is taken over             |                   |
| 7 | orphaned .*.tmp checkpoint files | left forever             | removed at the next start      | orphaned_tmp_     |
|   |                                  |                          |                                | files_removed     |
| 7 | fresh start in a folder with a   | log deleted              | kept as train_log.<time>.jsonl | fresh_start_      |
|   | log                              |                          |                                | keeps_the_        |
|   |                                  |                          |                                | earlier_log       |
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import FAST, TINY, ToyDataset, ToyModel

from hparse.cli import main
from hparse.data import CIHP, SynthCrowd
from hparse.data.io import DatasetError, read_id_list
from hparse.engine import train
from hparse.engine.checkpoint import load_checkpoint, save_checkpoint
from hparse.engine.identity import RunMismatchError
from hparse.engine.results import ResultConflictError, write_result
from hparse.engine.rundir import RunLockedError
from hparse.engine.trainer import BadSampleError, StepSampler, read_log
from hparse.models import build_model
from hparse.models.inputs import ImageInputError

SMOKE = ["--profile", "smoke"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> bool:
    """One ``hparse: error:`` message on stderr (after any progress bar) and no traceback."""
    return sum(line.startswith("hparse: error: ") for line in err.splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def cihp_root(tmp_path_factory):
    """SynthCrowd exported in CIHP's layout: 6 train and 3 val images of 64 pixels."""
    root = tmp_path_factory.mktemp("cihp") / "instance-level_human_parsing"
    for split, num in (("train", 6), ("val", 3)):
        assert main(["data", "export", "--format", "cihp", "--out", str(root), "--split", split, "--num", str(num),
                     "--image-size", "64", "--max-people", "2"]) == 0
    return root


@pytest.fixture
def cihp_copy(cihp_root, tmp_path):
    """A private copy of the CIHP fixture, free to corrupt."""
    return Path(shutil.copytree(cihp_root, tmp_path / "instance-level_human_parsing"))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A finished 2-step smoke run of Parsing R-CNN on SynthCrowd (its folder is only read by the tests)."""
    out = tmp_path_factory.mktemp("smoke_run") / "run"
    assert main(["train", *SMOKE, "--iterations", "2", "--out", str(out)]) == 0
    return out


def tiny_model():
    torch.manual_seed(0)
    return build_model("parsing_rcnn", num_classes=20, **TINY)


# ------------------------------------------------------------------------------------------- 1. resume identity


@pytest.mark.parametrize("flags, difference", [
    (["--roi-size", "14"], "model.roi_size: 32 -> 14"),
    (["--lr", "0.5"], "train.lr: 0.0025 -> 0.5"),
    (["--seed", "1"], "train.seed: 0 -> 1"),
    (["--no-gce"], "model.gce: True -> False"),
])
def test_resume_refuses_another_run(smoke_run, capsys, flags, difference):
    before = load_checkpoint(smoke_run)
    code, _, err = run_cli(["train", *SMOKE, "--iterations", "2", "--out", str(smoke_run), *flags], capsys)
    assert code == 2 and one_line_error(err), err
    assert difference in err and "--no-resume" in err and "--out" in err
    after = load_checkpoint(smoke_run)
    assert after["step"] == before["step"] == 2  # the run was not touched
    assert all(torch.equal(after["model"][k], before["model"][k]) for k in before["model"])


def test_resume_refuses_another_dataset(cihp_root, tmp_path):
    train(tiny_model(), CIHP(cihp_root, "train"), iterations=1, out_dir=tmp_path, config={"dataset": "cihp"}, **FAST)
    synth = SynthCrowd("train", num_images=6, image_size=64, max_people=2)
    with pytest.raises(RunMismatchError) as info:
        train(tiny_model(), synth, iterations=1, out_dir=tmp_path, config={"dataset": "synth"}, **FAST)
    message = str(info.value)
    assert "data.type: 'CIHP' -> 'SynthCrowd'" in message and "config.dataset: 'cihp' -> 'synth'" in message


# -------------------------------------------------------------------------------------------- 2. results per run


def fake_record(tmp_results, name, iterations, config=None):
    path = write_result(name, {"iterations": iterations, "mIoU": 0.5}, profile="smoke",
                        config=config or {"train": {"iterations": iterations}}, root=tmp_results)
    return path, path.read_text()


def test_demo_writes_its_record_into_its_run_folder(tmp_path, tmp_results, capsys):
    committed, text = fake_record(tmp_results, "parsing_rcnn/demo", 500)
    out = tmp_path / "elsewhere"
    code, _, err = run_cli(["demo", *SMOKE, "--iterations", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert committed.read_text() == text  # the 500-step record is untouched
    assert json.loads((out / "result.json").read_text())["metrics"]["iterations"] == 1


def test_two_runs_keep_their_own_records(smoke_run, tmp_path, tmp_results):
    first = (smoke_run / "result.json").read_text()
    out = tmp_path / "second"
    assert main(["train", *SMOKE, "--iterations", "1", "--out", str(out)]) == 0
    assert (smoke_run / "result.json").read_text() == first
    assert json.loads(first)["metrics"]["iterations"] == 2
    assert json.loads((out / "result.json").read_text())["metrics"]["iterations"] == 1
    assert not tmp_results.exists() or not any(tmp_results.rglob("*.json"))  # nothing under results/ unasked


def test_record_refuses_shorter_or_different_run(tmp_path, tmp_results, capsys):
    path, text = fake_record(tmp_results, "test/train", 500)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *SMOKE, "--iterations", "1", "--out", str(out), "--record", "test/train"],
                           capsys)
    assert code == 2 and one_line_error(err)
    assert str(path) in err and "iterations: 500 -> 1 (a shorter run)" in err and "--force" in err
    assert path.read_text() == text and not (out / "checkpoint.pt").exists()  # refused before training
    assert main(["train", *SMOKE, "--iterations", "1", "--out", str(out), "--result-name", "test/train",
                 "--force"]) == 0
    assert json.loads(path.read_text())["metrics"]["iterations"] == 1


def test_write_result_policy(tmp_results):
    config = {"model": {"roi_size": 32}, "train": {"iterations": 100, "num_workers": 2}}
    path = write_result("t/x", {"iterations": 100}, profile="smoke", config=config)
    longer = {"model": {"roi_size": 32}, "train": {"iterations": 200, "num_workers": 8}}
    write_result("t/x", {"iterations": 200}, profile="smoke", config=longer)  # longer, same run: allowed
    with pytest.raises(ResultConflictError, match=r"iterations: 200 -> 100 \(a shorter run\)"):
        write_result("t/x", {"iterations": 100}, profile="smoke", config=config)
    other = {"model": {"roi_size": 14}, "train": {"iterations": 200}}
    with pytest.raises(ResultConflictError, match=r"model.roi_size: 32 -> 14"):
        write_result("t/x", {"iterations": 200}, profile="smoke", config=other)
    write_result("t/x", {"iterations": 200}, profile="smoke", config=other, force=True)
    assert json.loads(path.read_text())["config"]["model"]["roi_size"] == 14


# ------------------------------------------------------------------------------------------------ 3. user errors


def _a_file(tmp_path):
    path = tmp_path / "a_file.txt"
    path.write_text("x")
    return path


BAD_ARGUMENTS = [
    (["train", *SMOKE, "--iterations", "0"], "--iterations: must be >= 1"),
    (["train", *SMOKE, "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", *SMOKE, "--lr", "0"], "--lr: must be > 0"),
    (["train", *SMOKE, "--lr", "nan"], "--lr: must be a finite number"),
    (["train", *SMOKE, "--workers", "-1"], "--workers: must be >= 0"),
    (["train", *SMOKE, "--roi-size", "0"], "--roi-size: must be >= 1"),
    (["train", *SMOKE, "--parsing-batch", "-2"], "--parsing-batch: must be >= 1"),
    (["demo", *SMOKE, "--iterations", "-3"], "--iterations: must be >= 1"),
    (["evaluate", "--checkpoint", "x", "--num", "0"], "--num: must be >= 1"),
    (["evaluate", "--checkpoint", "x", "--test-scales", "0.75,0"], "--test-scales: must be > 0"),
    (["predict", "--checkpoint", "x", "--test-scales", "big", "a.png"], "--test-scales: 'big' is not a number"),
    (["data", "verify", "--dataset", "cihp", "--root", ".", "--limit", "0"], "--limit: must be >= 1"),
    (["data", "export", "--format", "cihp", "--out", "x", "--num", "0"], "--num: must be >= 1"),
    (["data", "export", "--format", "cihp", "--out", "{tmp}/x", "--image-size", "8"], "image_size must be at least"),
    (["data", "preview", "--out", "{tmp}/g.png", "--min-people", "3", "--max-people", "1"], "min_people"),
    (["train", *SMOKE, "--out", "{file}"], "is a file, not a folder"),
    (["train", *SMOKE, "--out", "{file}/run"], "cannot be created"),
    (["train", *SMOKE, "--device", "nonsense", "--out", "{tmp}/run"], "--device nonsense"),
    (["train", *SMOKE, "--batch-size", "100000000", "--out", "{tmp}/run"], "GiB to train at 96x96 pixels"),
    (["evaluate", "--checkpoint", "{tmp}/none.pt", "--device", "cpu"], "does not exist"),
]


@pytest.mark.parametrize("argv, fragment", BAD_ARGUMENTS, ids=[" ".join(a[:4]) for a, _ in BAD_ARGUMENTS])
def test_user_errors_exit_2_with_one_line(argv, fragment, tmp_path, capsys, monkeypatch):
    import hparse.models.registry

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(hparse.models.registry, "build_model", no_model)
    monkeypatch.setattr(hparse.models, "build_model", no_model)
    argv = [a.format(tmp=tmp_path, file=_a_file(tmp_path)) for a in argv]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_line_error(err), err
    assert fragment in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(tmp_path, capsys):
    code, _, err = run_cli(["train", *SMOKE, "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and one_line_error(err) and "--device cuda" in err and "--device cpu" in err


def test_bad_profile_from_the_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HPARSE_PROFILE", "bogus")
    code, _, err = run_cli(["train", "--iterations", "1", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and one_line_error(err) and "unknown profile 'bogus' (HPARSE_PROFILE)" in err


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a whole checkpoint"], ids=["zero-byte", "truncated"])
def test_broken_checkpoint_is_a_user_error(tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    code, _, err = run_cli(["train", *SMOKE, "--iterations", "1", "--out", str(out)], capsys)
    assert code == 2 and one_line_error(err), err
    assert str(out / "checkpoint.pt") in err and "--no-resume" in err
    code, _, err = run_cli(["evaluate", "--checkpoint", str(out), "--device", "cpu"], capsys)
    assert code == 2 and one_line_error(err) and "checkpoint" in err


def test_empty_split_is_a_user_error(cihp_copy, tmp_path, capsys):
    (cihp_copy / "Training" / "train_id.txt").write_text("")
    code, _, err = run_cli(["train", *SMOKE, "--dataset", "cihp", "--root", str(cihp_copy), "--out",
                            str(tmp_path / "r")], capsys)
    assert code == 2 and one_line_error(err) and "cihp train split" in err and "lists no images" in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    from hparse.cli import UserError

    with pytest.raises(UserError, match="--iterations"):
        main(["--debug", "train", *SMOKE, "--iterations", "0"])
    with pytest.raises(UserError, match="unknown profile"):
        monkeypatch.setenv("HPARSE_PROFILE", "bogus")
        main(["train", "--debug"])
    monkeypatch.setenv("HPARSE_DEBUG", "1")
    monkeypatch.setenv("HPARSE_PROFILE", "smoke")
    with pytest.raises(UserError):
        main(["train", "--batch-size", "0"])


# --------------------------------------------------------------------------------------- 4. a bad file mid-run


def _corrupt_at_step(root: Path, step: int, seed: int = 0) -> Path:
    """Truncate the JPEG of the training image met at ``step`` (batch size 1) and return its path."""
    dataset = CIHP(root, "train")
    sampler = iter(StepSampler(len(dataset), seed))
    index = [next(sampler)[1] for _ in range(step)][-1]
    path = dataset.image_path(dataset.ids[index])
    path.write_bytes(path.read_bytes()[:200])
    return path


def test_bad_image_mid_run_stops_with_a_checkpoint(cihp_copy, tmp_path):
    bad = _corrupt_at_step(cihp_copy, 3)
    run = dict(iterations=4, batch_size=1, lr=0.01, warmup=1, progress=False, checkpoint_every=100)
    with pytest.raises(BadSampleError) as info:
        train(tiny_model(), CIHP(cihp_copy, "train"), out_dir=tmp_path, **run)
    assert str(bad) in str(info.value) and "--skip-bad" in str(info.value) and info.value.step == 2
    assert load_checkpoint(tmp_path)["step"] == 2  # the two steps trained are kept
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    done = train(tiny_model(), CIHP(cihp_copy, "train"), out_dir=tmp_path, skip_bad=True, **run)
    assert done["step"] == 4 and [s["file"] for s in done["skipped"]] == [str(bad)]
    assert [r["file"] for r in read_log(tmp_path, "skip")] == [str(bad)]
    assert json.loads((tmp_path / "result.json").read_text())["metrics"]["skipped_bad_images"] == 1


def test_cli_bad_image_mid_run(cihp_copy, tmp_path, capsys):
    bad = _corrupt_at_step(cihp_copy, 1)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", *SMOKE, "--dataset", "cihp", "--root", str(cihp_copy), "--iterations", "2",
                            "--batch-size", "1", "--out", str(out)], capsys)
    assert code == 2 and one_line_error(err), err
    assert str(bad) in err and "--skip-bad" in err and (out / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------- 5. evaluation


def test_duplicate_ids_in_a_split_list(cihp_copy, tmp_path, capsys):
    listing = cihp_copy / "Validation" / "val_id.txt"
    ids = listing.read_text().split()
    listing.write_text("\n".join([*ids, ids[0]]) + "\n")
    with pytest.raises(DatasetError, match=rf"line {len(ids) + 1}: '{ids[0]}' is already listed on line 1"):
        read_id_list(listing, "a list")
    code, _, err = run_cli(["evaluate", "--pred", str(tmp_path), "--gt", str(cihp_copy), "--dataset", "synth"],
                           capsys)
    assert code == 2 and one_line_error(err) and str(listing) in err and "already listed" in err


def _mhp_prediction(folder: Path, lines: list[str]) -> None:
    for kind in ("global_seg", "global_tag"):
        (folder / kind).mkdir(parents=True)
        Image.fromarray(np.ones((4, 4), np.uint8), "L").save(folder / kind / "a.png")
    (folder / "results.txt").write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize("lines, fragment", [
    (["a 1 0.9", "a 1 0.8"], "line 2: image 'a' is already listed on line 1"),
    (["a 1 0.9 1 0.8"], "line 1: person id 1 of image 'a' is listed more than once"),
    (["a 1 1.5"], "line 1: score 1.5 is outside [0, 1]"),
])
def test_duplicates_in_mhp_results(tmp_path, lines, fragment):
    from hparse.metrics.io import PredictionFormatError, PredictionReader

    _mhp_prediction(tmp_path, lines)
    with pytest.raises(PredictionFormatError) as info:
        PredictionReader(tmp_path, 59, "mhp").read("a", (4, 4))
    assert fragment in str(info.value) and str(tmp_path / "results.txt") in str(info.value)


def test_evaluate_reports_unmatched_and_refuses_raw_scores(cihp_root, tmp_path, capsys):
    from hparse.metrics.io import write_predictions

    dataset = CIHP(cihp_root, "val")
    pred = tmp_path / "pred"
    for image_id in [*dataset.ids, "stray_image"]:
        sample_hw = (64, 64)
        parts = torch.zeros((1, *sample_hw), dtype=torch.int64)
        parts[0, 10:20, 10:20] = 1
        write_predictions({"person_parts": parts, "person_scores": torch.tensor([0.9])}, pred, image_id)
    argv = ["evaluate", "--pred", str(pred), "--gt", str(cihp_root), "--dataset", "synth"]
    code, _, err = run_cli([*argv, "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0 and "1 predictions" in err and "stray_image" in err
    assert json.loads((tmp_path / "m.json").read_text())["unmatched_predictions"] == ["stray_image"]

    txt = pred / "person_parsing" / f"{dataset.ids[0]}.txt"
    txt.write_text("1 3.5\n")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_line_error(err) and f"{txt}, line 1: score 3.5 is outside [0, 1]" in err
    assert run_cli([*argv, "--allow-raw-scores"], capsys)[0] == 0
    for thresh, fragment in (("nan", "must be a finite number"), ("5", "--score-thresh 5.0 is outside [0, 1]")):
        code, _, err = run_cli([*argv, "--score-thresh", thresh], capsys)
        assert code == 2 and one_line_error(err) and fragment in err


def test_verify_of_nothing_fails(cihp_copy, capsys):
    (cihp_copy / "Validation" / "val_id.txt").write_text("")
    code, out, _ = run_cli(["data", "verify", "--dataset", "cihp", "--root", str(cihp_copy), "--split", "val"],
                           capsys)
    assert code == 1 and "nothing checked" in out


# --------------------------------------------------------------------------------------------- 6. model inputs


@pytest.fixture(scope="module")
def eval_model():
    return tiny_model().eval()


@pytest.mark.parametrize("images, fragment", [
    ([], "empty list"),
    ([torch.rand(3, 0, 16)], "has no pixels"),
    ([torch.rand(3, 32, 32).double()], "torch.float64"),
    ([(torch.rand(3, 32, 32) * 255).to(torch.uint8)], "image.float() / 255"),
    ([torch.rand(3, 32, 32), torch.full((3, 32, 32), float("nan"))], "image 1 has 3072 NaN"),
    ([torch.rand(3, 32, 32) * 255], "divide it by 255"),
    ([torch.rand(3, 32, 32) - 0.5], "do not apply a mean/std normalisation"),
    ([torch.rand(1, 32, 32)], "(3, H, W)"),
    (torch.rand(2, 3, 32, 32), "takes a list"),
])
def test_model_input_guard(eval_model, images, fragment):
    with torch.no_grad(), pytest.raises(ImageInputError) as info:
        eval_model(images)
    assert fragment in str(info.value)


def test_model_accepts_contract_images(eval_model):
    with torch.no_grad():
        assert len(eval_model([torch.rand(3, 48, 40), torch.zeros(3, 32, 32)])) == 2


# ---------------------------------------------------------------------------------- 7. resources, run folders


def test_image_header_checked_before_decode(cihp_copy, monkeypatch):
    import hparse.data.cihp
    import hparse.data.io

    dataset = CIHP(cihp_copy, "train")
    label = dataset.label_path("Category_ids", dataset.ids[0])
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(label)

    def no_decode(path):
        raise AssertionError(f"{path} was decoded before its header was checked")

    monkeypatch.setattr(hparse.data.cihp, "read_image", no_decode)
    with pytest.raises(DatasetError, match=r"size 12x10 differs from its image .* \(64x64\)") as info:
        dataset[0]
    assert info.value.path == label
    monkeypatch.setattr(hparse.data.io, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetError, match=r"header says 64x64 pixels, more than hparse.data.io.MAX_IMAGE_PIXELS"):
        dataset[1]


def test_run_folder_lock(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = {"pid": live.pid, "host": socket.gethostname(), "started": "now"}
        (tmp_path / ".lock").write_text(json.dumps(lock))
        with pytest.raises(RunLockedError, match=rf"in use by another run \(process {live.pid} on"):
            train(ToyModel(), ToyDataset(), iterations=2, out_dir=tmp_path, **FAST)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        live.kill()
        live.wait()
    # Its process is gone (killed): the next run takes the folder over and releases the lock at the end.
    assert train(ToyModel(), ToyDataset(), iterations=2, out_dir=tmp_path, **FAST)["step"] == 2
    assert not (tmp_path / ".lock").exists()


def test_orphaned_tmp_files_removed(tmp_path):
    save_checkpoint(tmp_path / "unrelated.pt", {"step": 0})  # written atomically: leaves no .tmp
    orphan = tmp_path / ".checkpoint.pt.k3j2h1.tmp"
    orphan.write_bytes(b"half a checkpoint")
    train(ToyModel(), ToyDataset(), iterations=1, out_dir=tmp_path, **FAST)
    assert not orphan.exists() and not list(tmp_path.glob(".*.tmp"))


def test_fresh_start_keeps_the_earlier_log(tmp_path):
    train(ToyModel(), ToyDataset(), iterations=3, out_dir=tmp_path, **FAST)
    train(ToyModel(), ToyDataset(), iterations=2, out_dir=tmp_path, resume=False, **FAST)
    kept = sorted(tmp_path.glob("train_log.*.jsonl"))
    assert len(kept) == 1
    assert [json.loads(line)["step"] for line in kept[0].read_text().splitlines()] == [1, 2, 3]
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2]
    assert len(list(tmp_path.glob("result.*.json"))) == 1  # the earlier run's record too


def test_bench_force_replaces_a_record_of_other_settings(tmp_results, monkeypatch, capsys):
    """A benchmark whose settings changed is refused in one line naming --force, which `hparse bench` accepts."""
    import sys
    import types

    from hparse import benchmarks
    from hparse.cli import main

    module = types.ModuleType("hparse_test_bench")
    settings = {"size": 1}

    def run(profile, device):
        write_result("bench/toy", {"value": 1.0}, profile=profile.name, config=dict(settings))
        return {"value": 1.0}

    module.run = run
    monkeypatch.setitem(sys.modules, "hparse_test_bench", module)
    monkeypatch.setitem(benchmarks.BENCHMARKS, "toy", "hparse_test_bench")
    assert main(["bench", "toy", "--profile", "smoke", "--device", "cpu"]) == 0
    settings["size"] = 2  # the benchmark's settings change
    capsys.readouterr()
    assert main(["bench", "toy", "--profile", "smoke", "--device", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["bench", "toy", "--profile", "smoke", "--device", "cpu", "--force"]) == 0
    record = json.loads((tmp_results / "smoke" / "bench" / "toy.json").read_text())
    assert record["config"]["size"] == 2
