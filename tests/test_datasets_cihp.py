"""CIHP loader and writer on fixtures written here in the official layout (Training|Validation/{Images,...})."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hparse.data import CIHP, CIHP_LABELS, write_cihp
from hparse.data.cihp import instance_part_ids
from hparse.data.contract import validate_sample
from hparse.data.io import DatasetError, DatasetNotFoundError

H, W = 24, 32


def scene():
    """Two persons: person 1 = Face over Upper-clothes, person 2 = Hair over Pants. Returns (image, cat, human)."""
    cat = np.zeros((H, W), np.uint8)
    human = np.zeros((H, W), np.uint8)
    cat[2:6, 3:11], cat[6:14, 3:11] = 13, 5
    human[2:14, 3:11] = 1
    cat[8:11, 14:28], cat[11:22, 14:28] = 2, 9
    human[8:22, 14:28] = 2
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 8, yy * 10, (xx + yy) * 4], axis=-1).astype(np.uint8)  # smooth, so JPEG keeps it
    return image, cat, human


def write_fixture(root: Path, images: dict, split="val", image_format="PNG"):
    """Write {id: (image, cat, human)} in the official layout; images are PNG data under a .jpg name by default,
    so pixels survive exactly."""
    folder = {"train": "Training", "val": "Validation"}[split]
    base = root / folder
    for sub in ("Images", "Category_ids", "Human_ids", "Instance_ids"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (image, cat, human) in images.items():
        Image.fromarray(image).save(base / "Images" / f"{image_id}.jpg", format=image_format)
        Image.fromarray(cat).save(base / "Category_ids" / f"{image_id}.png")
        Image.fromarray(human).save(base / "Human_ids" / f"{image_id}.png")
        inst = np.where((cat > 0) & (human > 0), 20 * (human.astype(int) - 1) + cat, 0).astype(np.uint8)
        Image.fromarray(inst).save(base / "Instance_ids" / f"{image_id}.png")
    (base / f"{split}_id.txt").write_text("".join(f"{i}\n" for i in images))
    return root


@pytest.fixture
def cihp_root(tmp_path):
    return write_fixture(tmp_path / "instance-level_human_parsing", {"0000001": scene(), "0000002": scene()})


def test_loads_the_official_layout_exactly(cihp_root):
    image, cat, human = scene()
    dataset = CIHP(cihp_root, "val")
    assert len(dataset) == 2 and dataset.labels is CIHP_LABELS
    sample = dataset[0]
    validate_sample(sample, dataset.labels)
    assert sample["meta"]["id"] == "0000001" and sample["meta"]["dataset"] == "cihp"
    assert torch.equal(sample["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert torch.equal(sample["semantic"], torch.from_numpy(cat.astype(np.int64)))
    assert torch.equal(sample["instances"], torch.from_numpy(human.astype(np.int64)))
    assert sample["boxes"].tolist() == [[3, 2, 11, 14], [14, 8, 28, 22]]
    assert sample["keypoints"].shape == (2, 0, 3)
    assert dataset.check(1) == []


def test_list_file_next_to_the_split_folders_and_train_split(tmp_path):
    root = write_fixture(tmp_path / "cihp", {"0000007": scene()}, split="train")
    (root / "Training" / "train_id.txt").rename(root / "train_id.txt")
    assert CIHP(root, "train").ids == ["0000007"]


def test_palette_pngs_are_read_as_indices(tmp_path):
    image, cat, human = scene()
    root = write_fixture(tmp_path / "cihp", {"0000001": (image, cat, human)})
    pal = Image.fromarray(cat, "P")
    pal.putpalette(CIHP_LABELS.palette.ravel().tolist())
    pal.save(root / "Validation" / "Category_ids" / "0000001.png")
    assert torch.equal(CIHP(root, "val")[0]["semantic"], torch.from_numpy(cat.astype(np.int64)))


def test_person_ids_with_a_gap_are_compacted(tmp_path):
    image, cat, human = scene()
    human = np.where(human == 2, 5, human).astype(np.uint8)
    root = write_fixture(tmp_path / "cihp", {"0000001": (image, cat, human)})
    sample = CIHP(root, "val")[0]
    assert sample["instances"].unique().tolist() == [0, 1, 2]
    assert sample["meta"]["person_ids"] == [1, 5]
    assert sample["boxes"].tolist() == [[3, 2, 11, 14], [14, 8, 28, 22]]


def test_instance_part_ids_encoding():
    cat = np.array([[0, 5, 19, 13, 255]])
    human = np.array([[1, 1, 3, 13, 2]])
    assert instance_part_ids(cat, human).tolist() == [[0, 5, 59, 0, 0]]


# ------------------------------------------------------------------------------------- errors


def test_missing_root_and_missing_list(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        CIHP(tmp_path / "nowhere", "val")
    (tmp_path / "cihp" / "Validation").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="val_id.txt"):
        CIHP(tmp_path / "cihp", "val")
    with pytest.raises(ValueError, match="test split"):
        CIHP(tmp_path / "cihp", "test")


def test_a_listed_image_that_is_missing_fails_at_construction(cihp_root):
    (cihp_root / "Validation" / "Images" / "0000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"Images/0000002\.jpg: listed in val but its Images file is missing"):
        CIHP(cihp_root, "val")
    dataset = CIHP(cihp_root, "val", check_files=False)
    assert "0000002.jpg: image is missing" in dataset.check(1)[0]


def test_size_mismatch_names_the_label_file(cihp_root):
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(cihp_root / "Validation" / "Human_ids" / "0000002.png")
    with pytest.raises(DatasetError, match=r"Human_ids/0000002\.png: size 33x24 differs from its image"):
        CIHP(cihp_root, "val")[1]


def test_label_values_outside_the_label_set(cihp_root):
    image, cat, human = scene()
    cat[0, 0], cat[0, 1] = 20, 254
    Image.fromarray(cat).save(cihp_root / "Validation" / "Category_ids" / "0000001.png")
    with pytest.raises(DatasetError, match=r"Category_ids/0000001\.png: category values 20 \(1 px\), 254 \(1 px\)"):
        CIHP(cihp_root, "val")[0]


def test_inconsistent_instance_ids_are_caught_by_the_thorough_check(cihp_root):
    path = cihp_root / "Validation" / "Instance_ids" / "0000002.png"
    inst = np.array(Image.open(path))
    inst[10, 20] = 3  # person 2's Hair pixel (expected 20 * 1 + 2 = 22)
    Image.fromarray(inst).save(path)
    dataset = CIHP(cihp_root, "val")
    dataset[1]  # the fast path does not read Instance_ids
    problems = dataset.check(1)
    assert len(problems) == 1 and "Instance_ids/0000002.png" in problems[0]
    assert "1 pixels, e.g. (x=20, y=10): instance id 3, expected 20*(human 2 - 1) + category 2 = 22" in problems[0]


def test_corrupt_image_and_corrupt_png(cihp_root):
    jpg = cihp_root / "Validation" / "Images" / "0000001.jpg"
    Image.fromarray(scene()[0]).save(jpg, format="JPEG")
    jpg.write_bytes(jpg.read_bytes()[:200])  # truncated
    png = cihp_root / "Validation" / "Category_ids" / "0000002.png"
    png.write_bytes(b"not a png at all")
    dataset = CIHP(cihp_root, "val")
    with pytest.raises(DatasetError, match=r"0000001\.jpg: image is unreadable or corrupt"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"Category_ids/0000002\.png: label PNG is unreadable or corrupt"):
        dataset[1]


def test_colour_visualisation_in_place_of_labels(cihp_root):
    image, cat, human = scene()
    Image.fromarray(CIHP_LABELS.colorize(cat)).save(cihp_root / "Validation" / "Category_ids" / "0000001.png")
    with pytest.raises(DatasetError, match="is a colour .* not a label map"):
        CIHP(cihp_root, "val")[0]


# ------------------------------------------------------------------------------------- writer


def contract_sample(image_id="0000001"):
    image, cat, human = scene()
    return {"image": torch.from_numpy(image).permute(2, 0, 1).float() / 255,
            "semantic": torch.from_numpy(cat.astype(np.int64)), "instances": torch.from_numpy(human.astype(np.int64)),
            "boxes": torch.tensor([[3, 2, 11, 14], [14, 8, 28, 22]], dtype=torch.float32),
            "keypoints": torch.zeros(2, 17, 3), "meta": {"id": image_id, "dataset": "hand"}}


def test_writer_round_trip_and_official_encoding(tmp_path):
    samples = [contract_sample("a1"), contract_sample("b2")]
    list_path = write_cihp(samples, tmp_path / "out", "train")
    assert list_path == tmp_path / "out" / "Training" / "train_id.txt" and list_path.read_text() == "a1\nb2\n"
    inst = np.array(Image.open(tmp_path / "out" / "Training" / "Instance_ids" / "b2.png"))
    assert inst[3, 4] == 13 and inst[7, 4] == 5 and inst[9, 15] == 22 and inst[20, 20] == 29 and inst[0, 0] == 0
    dataset = CIHP(tmp_path / "out", "train")
    for original, loaded in zip(samples, dataset):
        assert torch.equal(original["semantic"], loaded["semantic"])
        assert torch.equal(original["instances"], loaded["instances"])
        assert torch.equal(original["boxes"], loaded["boxes"])
        assert (original["image"] - loaded["image"]).abs().mean() < 0.02  # JPEG
    assert dataset.check(0) == [] and dataset.check(1) == []


def test_synthcrowd_export_round_trip(tmp_path):
    from hparse.data import SynthCrowd

    synth = SynthCrowd(split="val", num_images=3, image_size=96, min_people=2, max_people=4, seed=3)
    samples = [synth[i] for i in range(len(synth))]
    write_cihp(samples, tmp_path / "cihp", "val")
    dataset = CIHP(tmp_path / "cihp", "val")
    assert len(dataset) == 3
    for original, loaded in zip(samples, dataset):
        validate_sample(loaded, CIHP_LABELS)
        assert loaded["meta"]["id"] == original["meta"]["id"]
        assert torch.equal(original["semantic"], loaded["semantic"])
        assert torch.equal(original["instances"], loaded["instances"])
        assert torch.equal(original["boxes"], loaded["boxes"])
