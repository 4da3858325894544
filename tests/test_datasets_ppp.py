"""PASCAL-Person-Part loader and writer on fixtures written here: the DeepLab release's part PNGs and lists, the
Pascal-Part ``Annotations_Part/<id>.mat`` person silhouettes and VOC ``JPEGImages``."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from hparse.data import PASCAL_PERSON_PART_LABELS, PascalPersonPart, write_pascal_person_part
from hparse.data.contract import validate_sample
from hparse.data.io import DatasetError, DatasetNotFoundError

H, W = 20, 30
OBJ = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
PART = [("part_name", "O"), ("mask", "O")]


def scene():
    """Part labels and silhouettes of two persons (objects 1 and 3), and a dog (object 2)."""
    sem = np.zeros((H, W), np.uint8)
    sem[1:4, 2:6], sem[4:12, 2:6], sem[12:18, 2:6] = 1, 2, 6  # person A: head, torso, lower legs
    sem[5:8, 20:27], sem[8:15, 20:27] = 3, 4  # person B: upper arms, lower arms
    a = np.zeros((H, W), np.uint8)
    a[0:19, 1:7] = 1  # silhouette larger than its parts
    b = np.zeros((H, W), np.uint8)
    b[5:15, 20:27] = 1
    dog = np.zeros((H, W), np.uint8)
    dog[15:20, 10:18] = 1
    return sem, [("person", 15, a), ("dog", 12, dog), ("person", 15, b)]


def write_mat(path: Path, objects):
    array = np.empty((1, len(objects)), dtype=OBJ)
    for k, (cls, ind, mask) in enumerate(objects):
        parts = np.empty((1, 1), dtype=PART)
        parts[0, 0] = ("head", mask)
        array[0, k] = (cls, ind, mask, parts)
    scipy.io.savemat(path, {"anno": {"imname": path.stem, "objects": array}})


def write_fixture(root: Path, ids, split="val", label_dir="pascal_person_part_gt"):
    sem, objects = scene()
    for sub in ("JPEGImages", "Annotations_Part", f"pascal_person_part/{label_dir}",
                "pascal_person_part/pascal_person_part_trainval_list"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 8, yy * 12, (xx + yy) * 4], axis=-1).astype(np.uint8)
    for image_id in ids:
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", format="PNG")
        Image.fromarray(sem).save(root / "pascal_person_part" / label_dir / f"{image_id}.png")
        write_mat(root / "Annotations_Part" / f"{image_id}.mat", objects)
    name = "train.txt" if split == "train" else "val.txt"
    lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png\n" for i in ids)
    (root / "pascal_person_part" / "pascal_person_part_trainval_list" / name).write_text(lines)
    return root


@pytest.fixture
def ppp_root(tmp_path):
    return write_fixture(tmp_path / "ppp", ["2008_000001", "2008_000002"])


def test_parts_from_the_release_and_persons_from_pascal_part(ppp_root):
    dataset = PascalPersonPart(ppp_root, "test")  # "test" reads val.txt
    assert dataset.ids == ["2008_000001", "2008_000002"] and dataset.labels is PASCAL_PERSON_PART_LABELS
    sample = dataset[0]
    validate_sample(sample, dataset.labels)
    sem, objects = scene()
    assert np.array_equal(sample["semantic"].numpy(), sem)
    expected = objects[0][2] * 1 + objects[2][2] * 2  # the dog is not a person
    assert np.array_equal(sample["instances"].numpy(), expected)
    assert sample["boxes"].tolist() == [[1, 0, 7, 19], [20, 5, 27, 15]]
    assert sample["keypoints"].shape == (2, 0, 3)
    assert dataset.check(1) == []


def test_single_object_file_and_segmentation_part_folder(tmp_path):
    root = write_fixture(tmp_path / "ppp", ["a"], split="train", label_dir="SegmentationPart")
    sem, objects = scene()
    sem[:, 15:] = 0
    Image.fromarray(sem).save(root / "pascal_person_part" / "SegmentationPart" / "a.png")
    write_mat(root / "Annotations_Part" / "a.mat", objects[:1])  # one object: MATLAB stores a plain struct
    sample = PascalPersonPart(root, "train")[0]
    assert sample["boxes"].tolist() == [[1, 0, 7, 19]]


def test_part_pixels_on_no_silhouette(ppp_root):
    sem, _ = scene()
    sem[19, 29] = 2
    Image.fromarray(sem).save(ppp_root / "pascal_person_part" / "pascal_person_part_gt" / "2008_000002.png")
    with pytest.raises(DatasetError, match=r"2008_000002\.png: 1 part pixels lie on no person silhouette .* "
                                           r"\(first at x=29, y=19\)"):
        PascalPersonPart(ppp_root, "val")[1]
    sample = PascalPersonPart(ppp_root, "val", unassigned="ignore")[1]
    assert sample["semantic"][19, 29] == 255 and sample["meta"]["unassigned_pixels"] == 1


def test_errors_name_the_file(ppp_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="pascal_person_part.zip"):
        PascalPersonPart(tmp_path, "val")
    (ppp_root / "Annotations_Part" / "2008_000002.mat").unlink()
    with pytest.raises(DatasetError, match=r"Annotations_Part/2008_000002\.mat: listed Pascal-Part annotation is "
                                           "missing"):
        PascalPersonPart(ppp_root, "val")
    dataset = PascalPersonPart(ppp_root, "val", check_files=False)
    assert "2008_000002.mat: Pascal-Part annotation is missing" in dataset.check(1)[0]
    mat = ppp_root / "Annotations_Part" / "2008_000001.mat"
    mat.write_bytes(b"\x00" * 64)
    assert "2008_000001.mat: Pascal-Part annotation is unreadable or corrupt" in dataset.check(0)[0]
    scipy.io.savemat(mat, {"other": np.ones(2)})
    assert "has no 'anno' struct" in dataset.check(0)[0]
    sem, objects = scene()
    write_mat(mat, [("person", 15, np.ones((H, W + 1), np.uint8))])
    assert "2008_000001.mat: size 31x20 differs from its image" in dataset.check(0)[0]


def test_label_value_outside_the_six_parts(ppp_root):
    sem, _ = scene()
    sem[2, 3] = 7
    Image.fromarray(sem).save(ppp_root / "pascal_person_part" / "pascal_person_part_gt" / "2008_000001.png")
    with pytest.raises(DatasetError, match=r"2008_000001\.png: part values 7 \(1 px\)"):
        PascalPersonPart(ppp_root, "val")[0]


def test_writer_round_trip(tmp_path):
    sem, objects = scene()
    instances = objects[0][2].astype(np.int64) + 2 * objects[2][2]
    sample = {"image": torch.full((3, H, W), 0.25), "semantic": torch.from_numpy(sem.astype(np.int64)),
              "instances": torch.from_numpy(instances),
              "boxes": torch.tensor([[1, 0, 7, 19], [20, 5, 27, 15]], dtype=torch.float32),
              "keypoints": torch.zeros(2, 0, 3), "meta": {"id": "x1", "dataset": "hand"}}
    write_pascal_person_part([sample], tmp_path / "out", "train")
    loaded = PascalPersonPart(tmp_path / "out", "train")[0]
    for key in ("semantic", "instances", "boxes"):
        assert torch.equal(sample[key], loaded[key]), key


def test_synthcrowd_export_round_trip(tmp_path):
    from hparse.data import SynthCrowd
    from hparse.data.pascal_person_part import synth_to_pascal_person_part

    synth = SynthCrowd(split="val", num_images=2, image_size=96, min_people=2, max_people=3, seed=2)
    samples = [synth_to_pascal_person_part(synth, i) for i in range(len(synth))]
    assert all(set(s["semantic"].unique().tolist()) <= set(range(7)) for s in samples)
    assert all((s["semantic"] > 0).sum() == (synth[i]["semantic"] > 0).sum() for i, s in enumerate(samples))
    write_pascal_person_part(samples, tmp_path / "ppp", "val")
    for original, loaded in zip(samples, PascalPersonPart(tmp_path / "ppp", "val")):
        validate_sample(loaded, PASCAL_PERSON_PART_LABELS)
        for key in ("semantic", "instances", "boxes"):
            assert torch.equal(original[key], loaded[key]), key
