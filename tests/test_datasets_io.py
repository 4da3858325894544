"""Shared reading and checking helpers of the real-dataset loaders (hparse.data.io)."""

import numpy as np
import pytest
from PIL import Image

from hparse.data import CIHP_LABELS
from hparse.data.io import (
    DatasetError,
    boxes_from_instances,
    check_label_values,
    compact_ids,
    read_image,
    read_label_png,
)


def test_boxes_from_instances_match_a_per_person_loop():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (17, 23)) * (rng.random((17, 23)) < 0.3)
    ids[ids == 3] = 0  # person 3 has no pixel
    boxes = boxes_from_instances(ids, 5)
    for k in range(1, 6):
        ys, xs = np.nonzero(ids == k)
        expected = [0, 0, 0, 0] if k == 3 else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert boxes[k - 1].tolist() == expected
    assert boxes_from_instances(ids, 0).shape == (0, 4)


def test_compact_ids():
    ids = np.array([[0, 4, 4], [9, 0, 2]])
    compact, original = compact_ids(ids)
    assert compact.tolist() == [[0, 2, 2], [3, 0, 1]] and original.tolist() == [2, 4, 9]
    assert compact_ids(np.zeros((2, 2), np.int64))[1].tolist() == []


def test_read_label_png_modes(tmp_path):
    labels = np.array([[0, 3], [19, 255]], np.uint8)
    Image.fromarray(labels.astype(np.uint16) * 3).save(tmp_path / "a.png")  # 16-bit grey
    assert read_label_png(tmp_path / "a.png").tolist() == (labels.astype(np.int64) * 3).tolist()
    Image.fromarray(np.repeat(labels[..., None], 3, -1)).save(tmp_path / "b.png")
    assert read_label_png(tmp_path / "b.png").tolist() == labels.tolist()
    rgb = np.stack([labels, labels // 2, labels * 0], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert read_label_png(tmp_path / "c.png", channel=0).tolist() == labels.tolist()
    with pytest.raises(DatasetError, match="c.png: is a colour"):
        read_label_png(tmp_path / "c.png")
    with pytest.raises(DatasetError, match="d.png: label PNG is missing"):
        read_label_png(tmp_path / "d.png")


def test_read_image_converts_to_rgb(tmp_path):
    Image.fromarray(np.full((3, 4), 7, np.uint8)).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8 and (image == 7).all()


def test_check_label_values_allows_ignore_only():
    check_label_values(np.array([[0, 19, 255]]), CIHP_LABELS, "x.png")
    with pytest.raises(DatasetError, match=r"x.png: label values 20 \(2 px\), 200 \(1 px\) are outside the cihp"):
        check_label_values(np.array([[20, 20, 200, 255]]), CIHP_LABELS, "x.png")
