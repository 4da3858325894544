"""MHP v2.0 loader and writer on fixtures written here in the official layout (list/, <split>/{images,
parsing_annos,pose_annos})."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from hparse.data import CIHP_LABELS, COCO17, MHP_V2_LABELS, MPII16, MHPv2, write_mhp
from hparse.data.contract import validate_sample
from hparse.data.io import DatasetError
from hparse.data.mhp import CIHP_TO_MHP_V2, cihp_to_mhp_v2, coco17_to_mpii16, parse_parsing_name

H, W = 24, 32


def persons():
    """Two overlapping persons (MHP labels): 1 = face/t-shirt, 2 = hair/pants; they share rows 10-14, cols 10-12."""
    p1 = np.zeros((H, W), np.uint8)
    p1[2:6, 3:13], p1[6:15, 3:13] = 3, 12
    p2 = np.zeros((H, W), np.uint8)
    p2[10:13, 10:21], p2[13:21, 10:21] = 4, 17
    return [p1, p2]


def pose_arrays(num):
    arrays = {}
    for k in range(num):
        rows = np.full((20, 3), -1.0)
        rows[:16, 2] = 2  # out of image
        rows[:16, :2] = -1
        arrays[f"person_{k}"] = rows
    arrays["person_0"][0] = (5, 6, 0)     # visible -> v 2
    arrays["person_0"][1] = (7, 8, 1)     # occluded with a position -> v 1
    arrays["person_0"][3] = (-1, -1, 1)   # occluded without a position -> absent
    arrays["person_0"][9] = (4.5, 2.5, 0)
    return arrays


def write_fixture(root: Path, images: dict, split="val", rgb=True):
    """{id: list of per-person label maps}; parsing files written 3-channel with the label in R (as officially)."""
    base = root / split
    for sub in ("images", "parsing_annos", "pose_annos"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for image_id, maps in images.items():
        yy, xx = np.mgrid[0:H, 0:W]
        image = np.stack([xx * 8, yy * 10, (xx + yy) * 4], axis=-1).astype(np.uint8)
        Image.fromarray(image).save(base / "images" / f"{image_id}.jpg", format="PNG")
        for kk, parts in enumerate(maps, start=1):
            data = np.stack([parts, np.zeros_like(parts), np.zeros_like(parts)], -1) if rgb else parts
            Image.fromarray(data).save(base / "parsing_annos" / f"{image_id}_{len(maps):02d}_{kk:02d}.png")
        scipy.io.savemat(base / "pose_annos" / f"{image_id}.mat", pose_arrays(len(maps)))
    (root / "list").mkdir(parents=True, exist_ok=True)
    (root / "list" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


@pytest.fixture
def mhp_root(tmp_path):
    return write_fixture(tmp_path / "LV-MHP-v2", {"1": persons(), "22": persons()})


def test_loads_persons_painted_in_order_with_own_boxes_and_pose(mhp_root):
    dataset = MHPv2(mhp_root, "val")
    assert len(dataset) == 2 and dataset.labels is MHP_V2_LABELS
    sample = dataset[0]
    validate_sample(sample, dataset.labels)
    p1, p2 = persons()
    expected_sem = np.where(p2 > 0, p2, p1)
    expected_inst = np.where(p2 > 0, 2, np.where(p1 > 0, 1, 0))
    assert np.array_equal(sample["semantic"].numpy(), expected_sem)
    assert np.array_equal(sample["instances"].numpy(), expected_inst)
    assert sample["boxes"].tolist() == [[3, 2, 13, 15], [10, 10, 21, 21]]  # person 1's box is not shrunk
    kps = sample["keypoints"]
    assert kps.shape == (2, 16, 3)
    assert kps[0, 0].tolist() == [5, 6, 2] and kps[0, 1].tolist() == [7, 8, 1]
    assert kps[0, 2].tolist() == [0, 0, 0] and kps[0, 3].tolist() == [0, 0, 0]
    assert kps[0, MPII16.index("head_top")].tolist() == [4.5, 2.5, 2]
    assert (kps[1, :, 2] == 0).all()
    assert sample["meta"]["person_files"] == [1, 2]
    assert dataset.check(1) == []


def test_single_channel_files_empty_persons_and_no_keypoints(tmp_path):
    maps = persons() + [np.zeros((H, W), np.uint8)]
    root = write_fixture(tmp_path / "mhp", {"5": maps}, split="train", rgb=False)
    sample = MHPv2(root, "train")[0]
    assert sample["meta"]["person_files"] == [1, 2] and sample["meta"]["num_person_files"] == 3
    assert sample["boxes"].shape == (2, 4) and sample["keypoints"].shape == (2, 16, 3)
    for path in (root / "train" / "pose_annos").iterdir():
        path.unlink()
    assert MHPv2(root, "train", keypoints=False)[0]["keypoints"].shape == (2, 0, 3)


def test_parse_parsing_name():
    assert parse_parsing_name("12_34_05_02.png") == ("12_34", 5, 2)
    assert parse_parsing_name("1_3_1.png") is None


# ------------------------------------------------------------------------------------- errors


def test_person_count_disagreeing_with_nn(mhp_root):
    folder = mhp_root / "val" / "parsing_annos"
    (folder / "1_02_02.png").rename(folder / "1_03_02.png")
    with pytest.raises(DatasetError, match=r"disagree on the number of persons NN: \[2, 3\]"):
        MHPv2(mhp_root, "val")[0]
    (folder / "1_02_01.png").rename(folder / "1_03_01.png")
    with pytest.raises(DatasetError, match=r"2 parsing files with person indices \[1, 2\], but their names say NN = 3"):
        MHPv2(mhp_root, "val")[0]


def test_pose_file_with_the_wrong_persons_or_flags(mhp_root):
    pose = mhp_root / "val" / "pose_annos" / "22.mat"
    scipy.io.savemat(pose, {"person_0": pose_arrays(1)["person_0"]})
    with pytest.raises(DatasetError, match=r"22\.mat: has pose keys \['person_0'\] but the image has 2 parsing"):
        MHPv2(mhp_root, "val")[1]
    arrays = pose_arrays(2)
    arrays["person_1"][4, 2] = 3
    scipy.io.savemat(pose, arrays)
    with pytest.raises(DatasetError, match=r"person_1 has visibility flags \[2\.0, 3\.0\]"):
        MHPv2(mhp_root, "val")[1]
    pose.write_bytes(b"MATLAB garbage")
    with pytest.raises(DatasetError, match=r"22\.mat: pose annotation is unreadable or corrupt"):
        MHPv2(mhp_root, "val")[1]


def test_missing_files_labels_and_sizes(mhp_root):
    (mhp_root / "val" / "pose_annos" / "22.mat").unlink()
    with pytest.raises(DatasetError, match=r"22\.mat: pose annotation is missing"):
        MHPv2(mhp_root, "val")
    (mhp_root / "val" / "images" / "1.jpg").unlink()
    with pytest.raises(DatasetError, match=r"images/1\.jpg: listed image is missing"):
        MHPv2(mhp_root, "val", keypoints=False)
    dataset = MHPv2(mhp_root, "val", check_files=False)
    assert "1.jpg: image is missing" in dataset.check(0)[0]
    assert "22.mat: pose annotation is missing" in dataset.check(1)[0]


def test_out_of_range_label_and_size_mismatch(mhp_root):
    folder = mhp_root / "val" / "parsing_annos"
    bad = persons()[0]
    bad[0, 0] = 59
    Image.fromarray(bad).save(folder / "1_02_01.png")
    with pytest.raises(DatasetError, match=r"1_02_01\.png: part values 59 \(1 px\) are outside the mhp_v2"):
        MHPv2(mhp_root, "val")[0]
    Image.fromarray(np.zeros((H + 2, W), np.uint8)).save(folder / "22_02_02.png")
    with pytest.raises(DatasetError, match=r"22_02_02\.png: size 32x26 differs from its image"):
        MHPv2(mhp_root, "val")[1]


# ------------------------------------------------------------------------------------- mappings


def test_cihp_to_mhp_mapping_is_one_to_one_and_commutes_with_flip():
    assert len(CIHP_TO_MHP_V2) == CIHP_LABELS.num_classes
    mapped = cihp_to_mhp_v2(np.arange(CIHP_LABELS.num_classes))
    assert len(set(mapped.tolist())) == CIHP_LABELS.num_classes and mapped[0] == 0
    cihp_flip, mhp_flip = np.array(CIHP_LABELS.flip_permutation), np.array(MHP_V2_LABELS.flip_permutation)
    assert np.array_equal(mhp_flip[mapped], mapped[cihp_flip])
    assert cihp_to_mhp_v2(np.array([255, 14, 2])).tolist() == [255, 5, 4]


def test_coco17_to_mpii16():
    coco = np.zeros((1, 17, 3), np.float32)
    coco[0, COCO17.index("left_hip")] = (10, 20, 2)
    coco[0, COCO17.index("right_hip")] = (14, 22, 1)
    coco[0, COCO17.index("left_shoulder")] = (9, 5, 2)
    coco[0, COCO17.index("right_wrist")] = (3, 4, 2)
    mpii = coco17_to_mpii16(coco)[0]
    assert mpii[MPII16.index("pelvis")].tolist() == [12, 21, 1]
    assert mpii[MPII16.index("thorax")].tolist() == [0, 0, 0]  # right shoulder absent
    assert mpii[MPII16.index("left_hip")].tolist() == [10, 20, 2]
    assert mpii[MPII16.index("right_wrist")].tolist() == [3, 4, 2]
    assert (mpii[[MPII16.index("upper_neck"), MPII16.index("head_top")], 2] == 0).all()
    # Flipping COCO joints then mapping = mapping then flipping MPII joints.
    rng = np.random.default_rng(0)
    kps = np.concatenate([rng.uniform(0, 50, (3, 17, 2)), rng.integers(0, 3, (3, 17, 1))], -1).astype(np.float32)
    flipped = coco17_to_mpii16(kps[:, list(COCO17.flip_permutation)])
    assert np.allclose(flipped, coco17_to_mpii16(kps)[:, list(MPII16.flip_permutation)])


# ------------------------------------------------------------------------------------- writer


def mhp_sample(image_id):
    p1, p2 = persons()
    instances = np.where(p2 > 0, 2, np.where(p1 > 0, 1, 0))
    kps = np.zeros((2, 16, 3), np.float32)
    kps[0, 0], kps[0, 7], kps[1, 15] = (5, 6, 2), (7.5, 8, 1), (12, 13, 2)
    return {"image": torch.full((3, H, W), 0.5),
            "semantic": torch.from_numpy(np.where(p2 > 0, p2, p1).astype(np.int64)),
            "instances": torch.from_numpy(instances.astype(np.int64)),
            "boxes": torch.tensor([[3, 2, 13, 15], [10, 10, 21, 21]], dtype=torch.float32),
            "keypoints": torch.from_numpy(kps), "meta": {"id": image_id, "dataset": "hand"}}


def test_writer_round_trip_in_mhp_labels(tmp_path):
    samples = [mhp_sample("7"), mhp_sample("8")]
    write_mhp(samples, tmp_path / "mhp", "train", source_labels=MHP_V2_LABELS)
    rgb = np.array(Image.open(tmp_path / "mhp" / "train" / "parsing_annos" / "7_02_01.png"))
    assert rgb.shape == (H, W, 3) and rgb[..., 1:].max() == 0 and rgb[3, 4, 0] == 3
    dataset = MHPv2(tmp_path / "mhp", "train")
    for original, loaded in zip(samples, dataset):
        assert torch.equal(original["semantic"], loaded["semantic"])
        assert torch.equal(original["instances"], loaded["instances"])
        # Person 1 is occluded by person 2 in the contract sample, so its written file (and box) is what is visible.
        assert loaded["boxes"].tolist() == [[3, 2, 13, 15], [10, 10, 21, 21]]
        assert torch.equal(original["keypoints"], loaded["keypoints"])
    pose = scipy.io.loadmat(tmp_path / "mhp" / "train" / "pose_annos" / "7.mat")
    assert pose["person_0"].shape == (20, 3) and pose["person_0"][2].tolist() == [-1, -1, 2]
    assert pose["person_1"][18:].tolist() == [[10, 10, -1], [21, 21, -1]]


def test_synthcrowd_export_round_trip(tmp_path):
    from hparse.data import SynthCrowd

    synth = SynthCrowd(split="val", num_images=3, image_size=96, min_people=2, max_people=4, seed=5)
    samples = [synth[i] for i in range(len(synth))]
    write_mhp(samples, tmp_path / "mhp", "val")
    dataset = MHPv2(tmp_path / "mhp", "val")
    for original, loaded in zip(samples, dataset):
        validate_sample(loaded, MHP_V2_LABELS)
        assert np.array_equal(cihp_to_mhp_v2(original["semantic"]), loaded["semantic"].numpy())
        assert torch.equal(original["instances"], loaded["instances"])
        assert torch.equal(original["boxes"], loaded["boxes"])
        assert np.allclose(coco17_to_mpii16(original["keypoints"]), loaded["keypoints"].numpy())


def test_flipping_a_loaded_sample_swaps_labels_and_joints(mhp_root):
    from hparse.data.transforms import hflip_sample

    sample = MHPv2(mhp_root, "val")[0]
    sample["semantic"][0, 0] = MHP_V2_LABELS.index("left-arm")
    flipped = hflip_sample(sample, MHP_V2_LABELS)
    validate_sample(flipped, MHP_V2_LABELS)
    assert flipped["semantic"][0, W - 1] == MHP_V2_LABELS.index("right-arm")
    # right_ankle (visible at x=5) becomes left_ankle at x = W - 5
    assert flipped["keypoints"][0, MPII16.index("left_ankle")].tolist() == [W - 5, 6, 2]
