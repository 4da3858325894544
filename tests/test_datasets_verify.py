"""``hparse data export`` (SynthCrowd in the official layouts) and ``hparse data verify`` (every problem, exit code)."""

import numpy as np
import pytest
from PIL import Image

from hparse.cli import main
from hparse.data.verify import DEFAULT_SPLITS, dataset_key, verify_split


def export(fmt, out, num=3, split="val"):
    return main(["data", "export", "--format", fmt, "--out", str(out), "--num", str(num), "--image-size", "64",
                 "--min-people", "2", "--max-people", "3", "--split", split, "--seed", "1"])


@pytest.mark.parametrize("fmt", ["cihp", "mhp", "ppp", "densepose"])
def test_every_export_verifies_clean(fmt, tmp_path, capsys):
    assert export(fmt, tmp_path / fmt) == 0
    assert "wrote 3 SynthCrowd val images" in capsys.readouterr().out
    split = "minival2014" if fmt == "densepose" else "val"
    assert main(["data", "verify", "--dataset", fmt, "--root", str(tmp_path / fmt), "--split", split]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 images checked, OK" in out and out.rstrip().endswith("0 problems")


@pytest.fixture
def broken_cihp(tmp_path):
    root = tmp_path / "cihp"
    assert export("cihp", root, num=4) == 0
    ids = (root / "Validation" / "val_id.txt").read_text().split()
    val = root / "Validation"
    (val / "Images" / f"{ids[0]}.jpg").unlink()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(val / "Category_ids" / f"{ids[1]}.png")
    inst_path = val / "Instance_ids" / f"{ids[3]}.png"
    inst = np.array(Image.open(inst_path))
    inst[inst > 0] += 1
    Image.fromarray(inst).save(inst_path)
    return root, ids


def test_verify_lists_every_problem_and_fails(broken_cihp, capsys):
    root, ids = broken_cihp
    assert main(["data", "verify", "--dataset", "cihp", "--root", str(root), "--split", "val"]) == 1
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(lines) == 3
    assert lines[0].endswith(f"Images/{ids[0]}.jpg: image is missing")
    assert f"Category_ids/{ids[1]}.png: size 10x10 differs from its image" in lines[1]
    assert f"Instance_ids/{ids[3]}.png: Instance_ids disagrees with Category_ids/Human_ids" in lines[2]
    assert "CIHP val: 4 of 4 images checked, 3 problems" in out
    assert out.rstrip().endswith("FAILED: 4 images checked in 1 split(s) of " + str(root) + ", 3 problems")


def test_verify_in_worker_processes_finds_the_same(broken_cihp):
    root, _ = broken_cihp
    serial = verify_split("cihp", root, "val")
    parallel = verify_split("cihp", root, "val", workers=2)
    assert parallel.problems == serial.problems and parallel.checked == 4
    assert verify_split("cihp", root, "val", limit=1).checked == 1


def test_verify_default_splits_report_a_missing_split(tmp_path, capsys):
    assert export("mhp", tmp_path / "mhp", num=2) == 0
    assert main(["data", "verify", "--dataset", "mhp_v2", "--root", str(tmp_path / "mhp")]) == 1
    out = capsys.readouterr().out
    assert "MHP v2.0 train: 0 of 0 images checked, 1 problem" in out and "MHP v2.0 val: 2 of 2" in out
    assert DEFAULT_SPLITS[dataset_key("pascal_person_part")] == ("train", "val")


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["data", "verify", "--dataset", "cihp", "--root", str(tmp_path / "missing")]) == 2
    assert "missing: does not exist" in capsys.readouterr().err
    assert main(["data", "verify", "--dataset", "lip", "--root", str(tmp_path)]) == 2
    assert "unknown dataset 'lip'" in capsys.readouterr().err
    assert export("cihp", tmp_path / "x", split="test") == 2
    assert "--split must be train or val" in capsys.readouterr().err
