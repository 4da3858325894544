"""Every error kind of every real-dataset loader, each on a corrupted copy of the fixture that the loader's own test
file writes (test_datasets_cihp, _mhp, _ppp, _densepose): a missing root, a listed image that is missing, a label map
whose size differs from its image, label values outside the label set, person ids that disagree between files, and
unreadable files. Each error must name the file; ``check`` (what ``hparse data verify`` runs) must list every
problem of an image, not only the first."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import test_datasets_cihp as cihp_fx
import test_datasets_densepose as dp_fx
import test_datasets_mhp as mhp_fx
import test_datasets_ppp as ppp_fx
from PIL import Image

from hparse.data import CIHP, DensePoseCOCO, MHPv2, PascalPersonPart
from hparse.data.io import DatasetError, DatasetNotFoundError
from hparse.data.verify import verify_split

GARBAGE = b"\x89PNG\r\n\x1a\n but nothing after the signature is an image"


@dataclass
class Broken:
    """What a corruption broke: ``path`` must start the message and ``fragment`` be in it.

    ``index``: the image that fails (``None``: the split cannot be opened at all). ``listed``: the construction-time
    file check finds it too. ``fast``: ``dataset[index]`` raises (else only the thorough ``check`` looks there).
    """

    path: Path
    fragment: str
    index: int | None = 0
    listed: bool = False
    fast: bool = True


def save_label(array, path: Path):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


# ------------------------------------------------------------------------------------------------ CIHP


def cihp_make(tmp_path):
    return cihp_fx.write_fixture(tmp_path / "instance-level_human_parsing",
                                 {"0000001": cihp_fx.scene(), "0000002": cihp_fx.scene()})


def cihp_file(root, kind, image_id, suffix=".png"):
    return root / "Validation" / kind / f"{image_id}{suffix}"


def cihp_missing_image(root):
    path = cihp_file(root, "Images", "0000002", ".jpg")
    path.unlink()
    return Broken(path, "is missing", 1, listed=True)


def cihp_size(root):
    path = cihp_file(root, "Human_ids", "0000002")
    save_label(np.zeros((cihp_fx.H, cihp_fx.W + 1)), path)
    return Broken(path, f"size {cihp_fx.W + 1}x{cihp_fx.H} differs from its image", 1)


def cihp_labels(root):
    _, cat, _ = cihp_fx.scene()
    cat[0, 0] = 20
    path = cihp_file(root, "Category_ids", "0000001")
    save_label(cat, path)
    return Broken(path, "category values 20 (1 px) are outside the cihp label set")


def cihp_ids(root):
    path = cihp_file(root, "Instance_ids", "0000002")
    inst = np.array(Image.open(path))
    inst[10, 20] = 3
    save_label(inst, path)
    return Broken(path, "Instance_ids disagrees with Category_ids/Human_ids at 1 pixels", 1, fast=False)


def cihp_unreadable_image(root):
    path = cihp_file(root, "Images", "0000001", ".jpg")
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")
    return Broken(path, "image is unreadable or corrupt")


def cihp_unreadable_label(root):
    path = cihp_file(root, "Human_ids", "0000002")
    path.write_bytes(GARBAGE)
    return Broken(path, "label PNG is unreadable or corrupt", 1)


# ------------------------------------------------------------------------------------------------ MHP v2.0


def mhp_make(tmp_path):
    return mhp_fx.write_fixture(tmp_path / "LV-MHP-v2", {"1": mhp_fx.persons(), "22": mhp_fx.persons()})


def mhp_missing_image(root):
    path = root / "val" / "images" / "22.jpg"
    path.unlink()
    return Broken(path, "is missing", 1, listed=True)


def mhp_size(root):
    path = root / "val" / "parsing_annos" / "22_02_02.png"
    save_label(np.zeros((mhp_fx.H + 2, mhp_fx.W)), path)
    return Broken(path, f"size {mhp_fx.W}x{mhp_fx.H + 2} differs from its image", 1)


def mhp_labels(root):
    parts = mhp_fx.persons()[0]
    parts[0, 0] = 59
    path = root / "val" / "parsing_annos" / "1_02_01.png"
    save_label(parts, path)
    return Broken(path, "part values 59 (1 px) are outside the mhp_v2 label set")


def mhp_ids(root):
    path = root / "val" / "pose_annos" / "22.mat"
    scipy.io.savemat(path, {"person_0": mhp_fx.pose_arrays(1)["person_0"]})
    return Broken(path, "has pose keys ['person_0'] but the image has 2 parsing files", 1)


def mhp_unreadable_image(root):
    path = root / "val" / "images" / "1.jpg"
    path.write_bytes(b"")
    return Broken(path, "image is unreadable or corrupt")


def mhp_unreadable_label(root):
    path = root / "val" / "parsing_annos" / "22_02_01.png"
    path.write_bytes(GARBAGE)
    return Broken(path, "label PNG is unreadable or corrupt", 1)


# ------------------------------------------------------------------------------------------------ PASCAL-Person-Part


def ppp_make(tmp_path):
    return ppp_fx.write_fixture(tmp_path / "ppp", ["2008_000001", "2008_000002"])


def ppp_label_path(root, image_id):
    return root / "pascal_person_part" / "pascal_person_part_gt" / f"{image_id}.png"


def ppp_missing_image(root):
    path = root / "JPEGImages" / "2008_000002.jpg"
    path.unlink()
    return Broken(path, "is missing", 1, listed=True)


def ppp_size(root):
    path = ppp_label_path(root, "2008_000002")
    save_label(np.zeros((ppp_fx.H - 1, ppp_fx.W)), path)
    return Broken(path, f"size {ppp_fx.W}x{ppp_fx.H - 1} differs from its image", 1)


def ppp_labels(root):
    sem, _ = ppp_fx.scene()
    sem[2, 3] = 7
    path = ppp_label_path(root, "2008_000001")
    save_label(sem, path)
    return Broken(path, "part values 7 (1 px) are outside the pascal_person_part label set")


def ppp_ids(root):
    sem, _ = ppp_fx.scene()
    sem[19, 29] = 2
    path = ppp_label_path(root, "2008_000002")
    save_label(sem, path)
    return Broken(path, "1 part pixels lie on no person silhouette", 1)


def ppp_unreadable_image(root):
    path = root / "JPEGImages" / "2008_000001.jpg"
    path.write_bytes(b"GIF89a")
    return Broken(path, "image is unreadable or corrupt")


def ppp_unreadable_label(root):
    path = ppp_label_path(root, "2008_000002")
    path.write_bytes(GARBAGE)
    return Broken(path, "label PNG is unreadable or corrupt", 1)


# ------------------------------------------------------------------------------------------------ DensePose-COCO


def dp_make(tmp_path):
    return dp_fx.write_fixture(tmp_path / "densepose")


def dp_json(root):
    return root / "annotations" / "densepose_minival2014.json"


def dp_image(root, number):
    return root / "val2014" / f"COCO_val2014_{number:012d}.jpg"


def dp_missing_image(root):
    path = dp_image(root, 9)
    path.unlink()
    return Broken(path, "is missing", 1, listed=True)


def dp_size(root):
    # DensePose's masks live in the json, in the box frame; what can disagree in size is the image and its entry.
    path = dp_image(root, 9)
    Image.fromarray(np.zeros((dp_fx.H, dp_fx.W + 1, 3), np.uint8)).save(path, format="PNG")
    return Broken(path, f"size {dp_fx.W + 1}x{dp_fx.H} differs from the annotation's {dp_fx.W}x{dp_fx.H}", 1)


def dp_labels(root):
    anns = dp_fx.annotations()
    anns[1]["dp_masks"] = anns[1]["dp_masks"] + [[]]  # a 15th entry would be label 15: not a DensePose part
    dp_fx.write_fixture(root, anns)
    return Broken(dp_json(root), "annotation 12 of image 7: dp_masks has 15 entries; DensePose has 14 coarse parts")


def dp_ids(root):
    anns = dp_fx.annotations()
    anns[0]["image_id"] = 99
    dp_fx.write_fixture(root, anns)
    return Broken(dp_json(root), "annotation 11 refers to image_id 99, which is not in 'images'", None)


def dp_unreadable_image(root):
    path = dp_image(root, 7)
    path.write_bytes(b"\xff\xd8\xff")
    return Broken(path, "image is unreadable or corrupt")


def dp_unreadable_label(root):
    dp_json(root).write_bytes(b'{"images": [\xff')
    return Broken(dp_json(root), "annotation file is unreadable or not valid JSON", None)


# ------------------------------------------------------------------------------------------------ the table


@dataclass
class Loader:
    cls: type
    split: str
    make: object
    corrupt: dict

    def open(self, root, **kwargs):
        return self.cls(root, self.split, **kwargs)


KINDS = ("missing_image", "size", "labels", "ids", "unreadable_image", "unreadable_label")
LOADERS = {
    "cihp": Loader(CIHP, "val", cihp_make, {k: globals()[f"cihp_{k}"] for k in KINDS}),
    "mhp": Loader(MHPv2, "val", mhp_make, {k: globals()[f"mhp_{k}"] for k in KINDS}),
    "ppp": Loader(PascalPersonPart, "val", ppp_make, {k: globals()[f"ppp_{k}"] for k in KINDS}),
    "densepose": Loader(DensePoseCOCO, "val", dp_make, {k: globals()[f"dp_{k}"] for k in KINDS}),
}


def names_the_file(message: str, broken: Broken) -> bool:
    return message.startswith(f"{broken.path}: ") and broken.fragment in message


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_missing_root_names_the_folder(name, tmp_path):
    loader, root = LOADERS[name], tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        loader.open(root)
    assert str(info.value).startswith(f"{root}: does not exist") and info.value.path == root
    with pytest.raises(DatasetNotFoundError, match="nowhere: does not exist"):
        verify_split(name, root, loader.split)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_each_error_names_the_file(name, kind, tmp_path):
    loader = LOADERS[name]
    root = loader.make(tmp_path)
    assert loader.open(root).check(0) == []
    broken = loader.corrupt[kind](root)
    if broken.index is None or broken.listed:
        with pytest.raises(DatasetError) as info:
            loader.open(root)
        assert names_the_file(str(info.value), broken), str(info.value)
        assert info.value.path == broken.path
    if broken.index is None:
        report = verify_split(name, root, loader.split)
        assert not report.ok and names_the_file(report.problems[0], broken)
        return
    dataset = loader.open(root, check_files=not broken.listed)
    if broken.fast:
        with pytest.raises(DatasetError) as info:
            dataset[broken.index]
        assert names_the_file(str(info.value), broken), str(info.value)
        assert info.value.path == broken.path
    else:
        dataset[broken.index]  # the fast path does not read that file
    problems = dataset.check(broken.index)
    assert len(problems) == 1 and names_the_file(problems[0], broken), problems
    assert dataset.check(1 - broken.index) == []


# ------------------------------------------------------------------------------------------------ several at once


def cihp_several(root):
    """Image 0000001: unreadable JPEG, a category value outside the set, and an Instance_ids pixel off."""
    broken = [cihp_unreadable_image(root), cihp_labels(root)]
    path = cihp_file(root, "Instance_ids", "0000001")
    inst = np.array(Image.open(path))
    inst[3, 4] = 1  # person 1's Face pixel: expected 20 * 0 + 13 = 13
    save_label(inst, path)
    return broken + [Broken(path, "instance id 1, expected 20*(human 1 - 1) + category 13 = 13")]


def mhp_several(root):
    """Image 1: person 1 has a value outside the set, person 2 the wrong size, and both poses bad flags."""
    broken = [mhp_labels(root)]
    path = root / "val" / "parsing_annos" / "1_02_02.png"
    save_label(np.zeros((mhp_fx.H, mhp_fx.W - 3)), path)
    broken.append(Broken(path, "differs from its image"))
    pose = root / "val" / "pose_annos" / "1.mat"
    arrays = mhp_fx.pose_arrays(2)
    arrays["person_0"][4, 2], arrays["person_1"][5, 2] = 3, 7
    scipy.io.savemat(pose, arrays)
    return broken + [Broken(pose, "person_0 has visibility flags"), Broken(pose, "person_1 has visibility flags")]


def ppp_several(root):
    """Image 2008_000001: its part PNG has the wrong size *and* a value outside the set; a silhouette the wrong
    size too."""
    sem = np.zeros((ppp_fx.H, ppp_fx.W + 2), np.uint8)
    sem[0, 0] = 9
    path = ppp_label_path(root, "2008_000001")
    save_label(sem, path)
    mat = root / "Annotations_Part" / "2008_000001.mat"
    ppp_fx.write_mat(mat, [("person", 15, np.ones((ppp_fx.H + 1, ppp_fx.W), np.uint8))])
    return [Broken(path, f"size {ppp_fx.W + 2}x{ppp_fx.H} differs from its image"),
            Broken(path, "part values 9 (1 px)"),
            Broken(mat, f"size {ppp_fx.W}x{ppp_fx.H + 1} differs from its image")]


def dp_several(root):
    """Image 7: the wrong size, and three of its annotations broken in three different ways."""
    anns = dp_fx.annotations()
    anns[0]["keypoints"] = [1, 2, 2]
    anns[1]["dp_masks"][2] = {"counts": "abc", "size": [128, 128]}
    anns[3].update({"dp_x": [10.0, 300.0], "dp_y": [5.0, 6.0], "dp_I": [0, 24], "dp_U": [0.5, 0.1],
                    "dp_V": [0.2, 0.3]})
    dp_fx.write_fixture(root, anns)
    image = dp_image(root, 7)
    Image.fromarray(np.zeros((dp_fx.H + 1, dp_fx.W, 3), np.uint8)).save(image, format="PNG")
    path = dp_json(root)
    return [Broken(image, f"size {dp_fx.W}x{dp_fx.H + 1} differs from the annotation's"),
            Broken(path, "annotation 11 of image 7 has 3 keypoint values"),
            Broken(path, "annotation 12 of image 7: dp_masks[2] is not an RLE of a 256x256 mask"),
            Broken(path, "annotation 14 of image 7: 1 DensePose points have dp_x/dp_y outside [0, 256]"),
            Broken(path, "annotation 14 of image 7: 1 DensePose points have dp_I outside the charts 1..24")]


SEVERAL = {"cihp": cihp_several, "mhp": mhp_several, "ppp": ppp_several, "densepose": dp_several}


@pytest.mark.parametrize("name", sorted(SEVERAL))
def test_check_lists_every_problem_of_an_image(name, tmp_path):
    loader = LOADERS[name]
    root = loader.make(tmp_path)
    expected = SEVERAL[name](root)
    dataset = loader.open(root)
    problems = dataset.check(0)
    assert len(problems) == len(expected), problems
    for line, broken in zip(problems, expected):
        assert names_the_file(line, broken), (line, broken)
    with pytest.raises(DatasetError) as info:  # loading still stops at the first, naming its file
        dataset[0]
    assert names_the_file(str(info.value), expected[0])
    assert dataset.check(1) == []
    report = verify_split(name, root, loader.split)
    assert report.problems == problems and report.checked == 2
    assert report.summary().endswith(f"{len(expected)} problems")
