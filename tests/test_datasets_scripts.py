"""data_scripts/: safe to import and to run with --help; unpack local archives into the loaders' layouts and verify.

No network: archives are made here from SynthCrowd exports, and the download steps read ``file://`` URLs.
"""

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from hparse.data import SynthCrowd, write_cihp, write_densepose_coco, write_mhp, write_pascal_person_part
from hparse.data.densepose_coco import synth_to_densepose
from hparse.data.pascal_person_part import synth_to_pascal_person_part

SCRIPTS = Path(__file__).resolve().parents[1] / "data_scripts"
NAMES = ["cihp", "mhp_v2", "pascal_person_part", "densepose_coco"]


def load(name):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(f"data_script_{name}", SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


def synth(split, num=2):
    return SynthCrowd(split=split, num_images=num, image_size=48, min_people=2, max_people=3, seed=7)


@pytest.mark.parametrize("name", NAMES)
def test_import_does_nothing_and_help_works(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = load(name)
    assert callable(module.main) and capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
    run = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0 and "usage:" in run.stdout and list(tmp_path.iterdir()) == []


def test_cihp_without_archive_says_where_to_get_it(tmp_path, capsys):
    assert load("cihp").main(["--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1HdqA8yWVxZ8od0hngKzZTziHx_ONzCWj" in out and "UNKNOWN" in out
    assert str(tmp_path / "CIHP" / "instance-level_human_parsing") in out


def test_cihp_archive_is_unpacked_and_verified(tmp_path, capsys):
    src = tmp_path / "src" / "instance-level_human_parsing"
    for split in ("train", "val"):
        data = synth(split)
        write_cihp([data[i] for i in range(len(data))], src, split)
    archive = tmp_path / "instance-level_human_parsing.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="instance-level_human_parsing")
    assert load("cihp").main(["--data-dir", str(tmp_path / "data"), "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "published checksum UNKNOWN" in out
    assert (tmp_path / "data" / "CIHP" / "instance-level_human_parsing" / "Training" / "train_id.txt").is_file()
    assert not (tmp_path / "data" / "CIHP" / "_unpacked").exists()


def test_mhp_zip_is_unpacked_and_a_broken_file_fails_verify(tmp_path):
    src = tmp_path / "src" / "LV-MHP-v2"
    for split in ("train", "val"):
        data = synth(split)
        write_mhp([data[i] for i in range(len(data))], src, split)
    victim = sorted((src / "val" / "pose_annos").iterdir())[0]
    victim.write_bytes(b"broken")
    archive = tmp_path / "LV-MHP-v2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*"):
            zf.write(path, path.relative_to(src.parent))
    assert load("mhp_v2").main(["--data-dir", str(tmp_path / "data"), "--archive", str(archive)]) == 1
    assert (tmp_path / "data" / "LV-MHP-v2" / "list" / "val.txt").is_file()


def test_pascal_person_part_from_three_sources(tmp_path):
    src = tmp_path / "src"
    for split in ("train", "val"):
        data = synth(split)
        write_pascal_person_part([synth_to_pascal_person_part(data, i) for i in range(len(data))], src, split)
    release = tmp_path / "pascal_person_part.zip"
    with zipfile.ZipFile(release, "w") as zf:
        for path in (src / "pascal_person_part").rglob("*"):
            zf.write(path, path.relative_to(src))
    parts = tmp_path / "dl" / "trainval.tar.gz"
    parts.parent.mkdir()
    with tarfile.open(parts, "w:gz") as tf:
        tf.add(src / "Annotations_Part", arcname="Annotations_Part")
    argv = ["--data-dir", str(tmp_path / "data"), "--release-zip", str(release), "--voc-dir", str(src / "JPEGImages"),
            "--pascal-part-url", parts.as_uri()]
    assert load("pascal_person_part").main(argv) == 0
    root = tmp_path / "data" / "PascalPersonPart"
    assert (root / "JPEGImages").is_symlink() and (root / "Annotations_Part").is_dir()


def test_densepose_downloads_from_a_mirror_and_verifies(tmp_path):
    data = synth("val")
    mirror = tmp_path / "mirror"
    write_densepose_coco([synth_to_densepose(data, i) for i in range(len(data))], mirror, "minival2014")
    (mirror / "annotations" / "densepose_minival2014.json").rename(mirror / "densepose_minival2014.json")
    with zipfile.ZipFile(mirror / "val2014.zip", "w") as zf:
        for path in (mirror / "val2014").iterdir():
            zf.write(path, Path("val2014") / path.name)
    argv = ["--data-dir", str(tmp_path / "data"), "--splits", "minival2014", "--annotations-url", mirror.as_uri(),
            "--images-url", mirror.as_uri()]
    assert load("densepose_coco").main(argv) == 0
    assert (tmp_path / "data" / "DensePoseCOCO" / "val2014").is_dir()
