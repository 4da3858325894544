"""DensePose-COCO loader and writer on fixtures written here: a COCO-style json with ``dp_masks`` (COCO RLE of
256 x 256 box-frame masks, made with pycocotools) and the COCO image folder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from hparse.data import DENSEPOSE_LABELS, DensePoseCOCO, write_densepose_coco
from hparse.data.contract import validate_sample
from hparse.data.densepose_coco import dp_grid_from_parts, paste_dp_masks
from hparse.data.io import DatasetError, DatasetNotFoundError

H, W = 40, 50


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"counts": encoded["counts"].decode(), "size": list(encoded["size"])}


def dp_masks(parts: dict):
    """{entry index: 256x256 bool} -> the 14-entry dp_masks list (empty entries as [])."""
    return [rle(parts[i]) if i in parts else [] for i in range(14)]


def grids():
    top, bottom, hand, full, left, right = (np.zeros((256, 256), bool) for _ in range(6))
    top[:128], bottom[128:], hand[200:, :128], full[:], left[:, :128], right[:, 128:] = (True,) * 6
    return top, bottom, hand, full, left, right


def annotations():
    top, bottom, hand, full, left, right = grids()
    kps = np.zeros((17, 3))
    kps[0], kps[5] = (10, 6, 2), (8, 15, 1)
    return [
        {"id": 11, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [5.7, 4.2, 16.9, 20.5],
         "dp_masks": dp_masks({13: top, 0: bottom, 1: hand}), "keypoints": kps.ravel().tolist(), "num_keypoints": 2},
        {"id": 12, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [18, 15, 10, 10],
         "dp_masks": dp_masks({9: full})},
        {"id": 13, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [3, 3, 4, 4]},  # no DensePose
        {"id": 14, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": [40, 30, 20, 20],
         "dp_masks": dp_masks({3: left, 4: right})},
    ]


def write_fixture(root: Path, anns=None, json_name="densepose_minival2014.json", folder="val2014"):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / folder).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 5, yy * 6, (xx + yy) * 2], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(root / folder / "COCO_val2014_000000000007.jpg", format="PNG")
    Image.fromarray(image).save(root / folder / "COCO_val2014_000000000009.jpg", format="PNG")
    data = {"images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": H, "width": W},
                       {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": H, "width": W}],
            "annotations": annotations() if anns is None else anns, "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations" / json_name).write_text(json.dumps(data))
    return root


def expected_maps():
    sem = np.zeros((H, W), np.int64)
    inst = np.zeros((H, W), np.int64)
    # person 1: box x 5..21 (16 px), y 4..24 (20 px); grid row floor(i * 12.8) < 128 for i <= 9 -> Head (14)
    sem[4:14, 5:21], sem[14:24, 5:21] = 14, 1
    sem[20:24, 5:13] = 2  # Right Hand (entry 1, after Torso): grid rows >= 200 for i >= 16, cols < 128 for j <= 7
    inst[4:24, 5:21] = 1
    sem[15:25, 18:28], inst[15:25, 18:28] = 10, 2  # person 2 on top of person 1
    # person 3 (the 4th annotation): box clipped to x 40..50, y 30..40 and the whole grid squeezed into it
    sem[30:40, 40:45], sem[30:40, 45:50], inst[30:40, 40:50] = 4, 5, 3
    return sem, inst


@pytest.fixture
def dp_root(tmp_path):
    return write_fixture(tmp_path / "densepose")


def test_pastes_parts_as_the_reference_code_does(dp_root):
    dataset = DensePoseCOCO(dp_root, "val")  # val = minival2014
    assert dataset.split == "minival2014" and dataset.ids == ["7", "9"] and dataset.labels is DENSEPOSE_LABELS
    sample = dataset[0]
    validate_sample(sample, dataset.labels)
    sem, inst = expected_maps()
    assert np.array_equal(sample["semantic"].numpy(), sem)
    assert np.array_equal(sample["instances"].numpy(), inst)
    assert torch.allclose(sample["boxes"], torch.tensor([[5.7, 4.2, 22.6, 24.7], [18, 15, 28, 25],
                                                         [40, 30, 50, 40]]))
    assert sample["keypoints"].shape == (3, 17, 3)
    assert sample["keypoints"][0, 0].tolist() == [10, 6, 2] and sample["keypoints"][0, 5].tolist() == [8, 15, 1]
    assert (sample["keypoints"][1:, :, 2] == 0).all()
    assert sample["meta"]["annotation_ids"] == [11, 12, 14] and sample["meta"]["skipped_persons"] == 1
    empty = dataset[1]
    assert empty["boxes"].shape == (0, 4) and empty["keypoints"].shape == (0, 17, 3) and dataset.check(1) == []


def test_grid_from_parts_inverts_the_paste():
    rng = np.random.default_rng(0)
    for h, w in ((1, 1), (7, 13), (128, 256), (255, 3)):
        parts = rng.integers(0, 15, (h, w))
        patch, origin = paste_dp_masks(dp_grid_from_parts(parts), [2.5, 1.0, w + 0.4, h + 0.9], (300, 300))
        assert origin == (2, 1) and np.array_equal(patch, parts)


def bad(anns_update, dp_root):
    anns = annotations()
    anns_update(anns)
    write_fixture(dp_root, anns)
    return DensePoseCOCO(dp_root, "minival2014").check(0)


def test_broken_annotations_are_named(dp_root):
    json_path = "densepose_minival2014.json: annotation 12 of image 7"
    problems = bad(lambda a: a[1]["dp_masks"].__setitem__(2, {"counts": "abc", "size": [128, 128]}), dp_root)
    assert json_path in problems[0] and "dp_masks[2] is not an RLE of a 256x256 mask (size [128, 128])" in problems[0]
    problems = bad(lambda a: a[1].__setitem__("dp_masks", a[1]["dp_masks"] + [[]]), dp_root)
    assert "dp_masks has 15 entries; DensePose has 14 coarse parts" in problems[0]
    problems = bad(lambda a: a[0].__setitem__("keypoints", [1, 2, 2]), dp_root)
    assert "annotation 11 of image 7 has 3 keypoint values; expected 51" in problems[0]
    problems = bad(lambda a: a[1].__setitem__("bbox", [60, 50, 5, 5]), dp_root)
    assert "bbox [60, 50, 5, 5] lies outside the 50x40 image" in problems[0]
    problems = bad(lambda a: a[1]["dp_masks"].__setitem__(0, {"counts": 12, "size": [256, 256]}), dp_root)
    assert "dp_masks[0] RLE cannot be decoded" in problems[0]
    points = {"dp_x": [10.0, 300.0], "dp_y": [5.0, 6.0], "dp_I": [1, 24], "dp_U": [0.5, 0.1], "dp_V": [0.2, 0.3]}
    problems = bad(lambda a: a[1].update(points), dp_root)
    assert "annotation 12 of image 7: 1 DensePose points have dp_x/dp_y outside [0, 256]" in problems[0]
    problems = bad(lambda a: a[1].update({**points, "dp_x": [1.0, 2.0], "dp_I": [0, 3]}), dp_root)
    assert "1 DensePose points have dp_I outside the charts 1..24" in problems[0]
    problems = bad(lambda a: a[1].update({**points, "dp_x": [1.0], "dp_I": [2, 3]}), dp_root)
    assert "point lists differ in length" in problems[0]
    assert bad(lambda a: a[1].update({**points, "dp_x": [1.0, 2.0]}), dp_root) == []
    problems = bad(lambda a: a[1].__setitem__("bbox", ["x", 15, 10, 10]), dp_root)  # nothing foresaw this one
    assert problems == ["DensePose-COCO minival2014 image '7': unexpected ValueError while loading: could not "
                        "convert string to float: 'x'"]


def test_files_missing_corrupt_or_the_wrong_size(dp_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="densepose_train2014.json: does not exist"):
        DensePoseCOCO(dp_root, "train")
    image = dp_root / "val2014" / "COCO_val2014_000000000009.jpg"
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(image, format="PNG")
    problems = DensePoseCOCO(dp_root, "val").check(1)
    assert "000000000009.jpg: size 51x40 differs from the annotation's 50x40" in problems[0]
    image.unlink()
    with pytest.raises(DatasetError, match=r"000000000009\.jpg: image listed in the annotations is missing"):
        DensePoseCOCO(dp_root, "val")
    assert "000000000009.jpg: image is missing" in DensePoseCOCO(dp_root, "val", check_files=False).check(1)[0]
    (dp_root / "annotations" / "densepose_minival2014.json").write_text("{ not json")
    with pytest.raises(DatasetError, match="annotation file is unreadable or not valid JSON"):
        DensePoseCOCO(dp_root, "val")
    anns = annotations()
    anns[0]["image_id"] = 99
    write_fixture(dp_root, anns)
    with pytest.raises(DatasetError, match="annotation 11 refers to image_id 99"):
        DensePoseCOCO(dp_root, "val")


def test_writer_round_trip(tmp_path):
    sem, inst = expected_maps()
    # Person 1 is partly covered by person 2; give the contract sample tight integer boxes of the visible masks.
    sample = {"image": torch.full((3, H, W), 0.5), "semantic": torch.from_numpy(sem),
              "instances": torch.from_numpy(inst),
              "boxes": torch.tensor([[5, 4, 21, 24], [18, 15, 28, 25], [40, 30, 50, 40]], dtype=torch.float32),
              "keypoints": torch.zeros(3, 17, 3), "meta": {"id": "p7", "dataset": "hand"}}
    sample["keypoints"][2, 16] = torch.tensor([45.25, 33.5, 2])
    path = write_densepose_coco([sample], tmp_path / "dp", "train")
    assert path == tmp_path / "dp" / "annotations" / "densepose_train2014.json"
    loaded = DensePoseCOCO(tmp_path / "dp", "train")[0]
    for key in ("semantic", "instances", "boxes", "keypoints"):
        assert torch.equal(sample[key], loaded[key]), key


def test_synthcrowd_export_round_trip(tmp_path):
    from hparse.data import SynthCrowd
    from hparse.data.densepose_coco import synth_to_densepose

    synth = SynthCrowd(split="val", num_images=2, image_size=96, min_people=2, max_people=3, seed=4)
    samples = [synth_to_densepose(synth, i) for i in range(len(synth))]
    write_densepose_coco(samples, tmp_path / "dp", "val")
    for original, loaded in zip(samples, DensePoseCOCO(tmp_path / "dp", "val")):
        validate_sample(loaded, DENSEPOSE_LABELS)
        for key in ("semantic", "instances", "boxes", "keypoints"):
            assert torch.equal(original[key], loaded[key]), key


def test_train_mg_parser_on_densepose_from_the_command_line(tmp_path):
    """``hparse train --model mg_parser --dataset densepose --root R`` trains on DensePose-COCO's layout (here
    SynthCrowd written in it): the bottom-up parser's COCO-17 keypoints come from the dataset."""
    from hparse.cli import main
    from hparse.data import SynthCrowd
    from hparse.data.densepose_coco import synth_to_densepose

    for split, seed in (("train", 1), ("val", 2)):
        synth = SynthCrowd(split="val", num_images=2, image_size=96, min_people=1, max_people=2, seed=seed)
        write_densepose_coco([synth_to_densepose(synth, i) for i in range(len(synth))], tmp_path / "dp", split)
    out = tmp_path / "run"
    assert main(["train", "--model", "mg_parser", "--dataset", "densepose", "--root", str(tmp_path / "dp"),
                 "--profile", "smoke", "--iterations", "1", "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())
    assert record["config"]["dataset"] == "densepose" and record["config"]["model"]["keypoints"] == "coco17"
