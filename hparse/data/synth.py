"""SynthCrowd: an offline, procedural multi-person parsing dataset on CIHP labels, hard where crowds are hard.

Every test, chapter and benchmark of hparse stands on this dataset, so it needs no download and renders the same
image for the same ``(split, seed, index)`` on every machine. It is not a toy in the ways that matter for
instance-level human parsing: articulated people in four poses and three views, parts drawn as shaped regions,
clothing with patterns, background clutter painted in skin, hair and clothing colours, people occluding each other
(controlled by ``crowding``), people cut by the image border, a 4.75x range of person scales, blur and noise.
How an image is drawn is described in :mod:`hparse.data.synth_render`; this module turns a rendered scene into the
data contract of DESIGN.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels import CIHP_LABELS, LabelSet
from .synth_render import (
    KEYPOINT_SEGMENTS,
    POSES,
    SEGMENT_SHIFT,
    SLOT_SHIFT,
    VIEWS,
    Raster,
    Scene,
    rasterize,
    sample_scene,
    shade,
)

__all__ = ["SynthCrowd", "SPLITS", "RECIPE_SEED", "synth_statistics"]

# Split -> stream code. Splits draw from disjoint random streams, so "val" and "test" never repeat "train" images.
SPLITS = {"train": 0, "val": 1, "test": 2}
#: The SynthCrowd seed of the images every recipe trains and validates on (``hparse train``, ``hparse demo``, the
#: experiments). A run's own seed changes its initialisation, data order and augmentation, never its images, so that
#: runs of different seeds are scored on the same validation images.
RECIPE_SEED = 0
_SALT = 0x5C0D  # first word of every SynthCrowd seed, keeping its streams apart from other (split, seed, index) seeds

_PEOPLE, _PLACE, _PHOTO = 0, 1, 2  # independent random streams of one image

# (17, 32) table: may keypoint k be marked visible when the pixel under it was drawn by segment s?
_KEYPOINT_ALLOWED = np.zeros((17, 32), dtype=bool)
for _k, _segments in enumerate(KEYPOINT_SEGMENTS):
    _KEYPOINT_ALLOWED[_k, list(_segments)] = True


class SynthCrowd(Dataset):
    """Procedurally rendered crowds with CIHP part labels and COCO-17 keypoints, returning the data contract.

    Fixed evaluation splits (what the benchmarks and the book use):

    - ``val  = SynthCrowd(split="val",  num_images=500, image_size=256, seed=0)``
    - ``test = SynthCrowd(split="test", num_images=500, image_size=256, seed=0)``

    Image ``i`` of a split depends only on ``(split, seed, i)`` (and on ``image_size``, ``crowding`` and the
    people-count bounds that shape it): not on ``num_images`` nor on the order of access, so the first 100 images of
    the 500-image val split are the 100-image val split. ``split`` selects a disjoint random stream (train 0, val 1,
    test 2), so no split repeats another's images whatever the seeds.

    Conventions (see also :mod:`hparse.data.synth_render`):

    - **Left/right** are the person's own: a front-facing person's ``Left-arm`` lies on the image's right.
      :func:`hparse.data.transforms.hflip_sample` swaps labels and keypoints so the convention survives a flip.
    - **Ground truth is z-buffered**: ``semantic`` and ``instances`` hold visible pixels only; no pixel is 255
      (ignore) -- labels are crisp, the image is blurred afterwards.
    - **Person ids** 1..N follow depth, far to near (id 1 is the farthest person still visible).
    - **Boxes** are *visible-extent* boxes: the tight xyxy box of the person's visible pixels (as boxes derived from
      CIHP masks), in continuous coordinates (``x2 = last column + 1``). The amodal box of the whole,
      unoccluded person is in ``meta["amodal_boxes"]``.
    - **Hidden people**: a person with no visible pixel (fully occluded, or standing outside the image) is dropped
      and the rest renumbered 1..N; ``meta["dropped"]`` records each one (pose, view, depth, reason).
    - **Keypoints** (N, 17, 3) in continuous pixel coordinates: ``v = 2`` when the pixel under the keypoint shows
      its own person and a body segment adjacent to that joint (a wrist on its forearm); ``v = 1`` inside the image
      but hidden (by another person, a foreground object, or the person's own body -- a knee under a skirt, a nose
      seen from behind); ``v = 0`` outside the image, with ``x = y = 0`` as in COCO.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_images: length of the dataset.
        image_size: side of the square images, pixels.
        min_people, max_people: bounds (inclusive) of the number of people *rendered* per image; fully hidden
            people are dropped afterwards, so an image may hold fewer. ``min_people=0`` allows empty images.
        crowding: in [0, 1]; 0 places people in the emptiest spots, 1 piles them on each other.
        seed: selects another family of images within the split.
        transform: applied to each sample dict last (e.g. :class:`hparse.data.transforms.Compose`).

    ``meta`` holds ``id``, ``dataset="synth"``, ``split``, ``seed``, ``index``, ``crowding``, ``num_rendered``, and
    per kept person (lists, row k = person k+1): ``pose``, ``view``, ``yaw_deg``, ``depth`` (0 far .. 1 near),
    ``scale`` (standing height in pixels), ``visible_fraction`` (visible pixels / pixels of the person inside the
    image when drawn alone), ``truncated_fraction`` (share of the person outside the image), ``outfit``,
    ``amodal_boxes``; and ``dropped``. Meta describes the rendered scene before any transform.
    """

    def __init__(self, split: str = "train", num_images: int = 1000, image_size: int = 256, min_people: int = 1,
                 max_people: int = 6, crowding: float = 0.5, seed: int = 0,
                 transform: Callable[[dict], dict] | None = None):
        if split not in SPLITS:
            raise ValueError(f"SynthCrowd: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if num_images < 0:
            raise ValueError(f"SynthCrowd: num_images must be >= 0, got {num_images}")
        if image_size < 16:
            raise ValueError(f"SynthCrowd: image_size must be at least 16 pixels, got {image_size}")
        if not 0 <= min_people <= max_people:
            raise ValueError(f"SynthCrowd: need 0 <= min_people <= max_people, got min_people={min_people}, "
                             f"max_people={max_people}")
        if max_people > 30:
            raise ValueError(f"SynthCrowd: max_people is at most 30 (got {max_people})")
        if not 0.0 <= crowding <= 1.0:
            raise ValueError(f"SynthCrowd: crowding must lie in [0, 1], got {crowding}")
        if seed < 0:
            raise ValueError(f"SynthCrowd: seed must be >= 0, got {seed}")
        self.split, self.num_images, self.image_size = split, int(num_images), int(image_size)
        self.min_people, self.max_people = int(min_people), int(max_people)
        self.crowding, self.seed, self.transform = float(crowding), int(seed), transform
        self.labels: LabelSet = CIHP_LABELS

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"SynthCrowd(split={self.split!r}, num_images={self.num_images}, image_size={self.image_size}, "
                f"min_people={self.min_people}, max_people={self.max_people}, crowding={self.crowding}, "
                f"seed={self.seed})")

    # ------------------------------------------------------------------------------------------ rendering

    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"{self!r}: index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"{self!r}: index {index} out of range 0..{self.num_images - 1}")
        return int(index)

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([_SALT, SPLITS[self.split], self.seed, index, stream])

    def scene(self, index: int) -> Scene:
        """The scene description of image ``index``: people (far to near), clutter, photometric settings."""
        index = self._check_index(index)
        rng_people = self._rng(index, _PEOPLE)
        count = int(rng_people.integers(self.min_people, self.max_people + 1))
        return sample_scene(self.image_size, count, self.crowding, rng_people, self._rng(index, _PLACE),
                            self._rng(index, _PHOTO))

    def stages(self, index: int) -> dict:
        """The intermediate results of rendering image ``index`` (for the data chapter).

        Returns a dict with ``scene``, ``raster`` (:class:`~hparse.data.synth_render.Raster`) and the images
        ``flat``, ``textured``, ``lit`` and ``final`` (each (H, W, 3) float32 in [0, 1]).
        """
        scene = self.scene(index)
        raster = rasterize(scene)
        return {"scene": scene, "raster": raster, **shade(scene, raster.code, raster.codes, stages=True)}

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        scene = self.scene(index)
        raster = rasterize(scene)
        image = shade(scene, raster.code, raster.codes)
        sample = self._to_contract(index, scene, raster, image)
        return self.transform(sample) if self.transform is not None else sample

    # ---------------------------------------------------------------------------------- data contract

    def _to_contract(self, index: int, scene: Scene, raster: Raster, image: np.ndarray) -> dict:
        size = self.image_size
        code = raster.code
        slot = code >> SLOT_SHIFT  # (segments and labels are decoded where needed: at keypoints, and below)
        num = len(scene.people)
        # Person k's visible pixels lie inside their amodal box (nobody else draws their slot), so each person is
        # looked for in that window only, not in the whole image.
        visible = np.zeros(num, dtype=np.int64)
        boxes = np.zeros((num, 4), dtype=np.float32)
        for k, (bx0, by0, bx1, by1) in enumerate(raster.amodal_boxes.tolist()):
            x0, y0 = max(int(bx0), 0), max(int(by0), 0)
            mine = slot[y0:max(int(by1), y0), x0:max(int(bx1), x0)] == k + 1
            visible[k] = np.count_nonzero(mine)
            if visible[k]:
                rows, cols = np.flatnonzero(mine.any(1)), np.flatnonzero(mine.any(0))
                boxes[k] = (cols[0] + x0, rows[0] + y0, cols[-1] + x0 + 1, rows[-1] + y0 + 1)
        kept = [k for k in range(num) if visible[k] > 0]
        boxes = boxes[kept]
        if len(kept) == num:  # nobody dropped: ids stay the slots
            instances = slot.astype(np.int64)
        else:
            renumber = np.zeros(num + 1, dtype=np.int64)
            renumber[[k + 1 for k in kept]] = np.arange(1, len(kept) + 1)
            instances = renumber[slot]
        keypoints = self._keypoints(raster.keypoints[kept], np.array(kept) + 1, code)

        people = [scene.people[k] for k in kept]
        in_image = raster.amodal_in_image
        vis_frac = visible / np.maximum(in_image, 1)
        trunc = 1.0 - in_image / np.maximum(raster.amodal_area, 1)
        dropped = [
            {"pose": p.pose, "view": p.view, "depth": round(p.depth, 4), "scale": round(p.height, 2),
             "truncated_fraction": round(float(trunc[k]), 4),
             "reason": "outside the image" if in_image[k] == 0 else "fully occluded"}
            for k, p in enumerate(scene.people) if visible[k] == 0
        ]
        meta = {
            "id": f"synth-{self.split}-s{self.seed}-{index:06d}",
            "dataset": "synth",
            "split": self.split,
            "seed": self.seed,
            "index": index,
            "image_size": size,
            "crowding": self.crowding,
            "num_rendered": num,
            "pose": [p.pose for p in people],
            "view": [p.view for p in people],
            "yaw_deg": [round(float(np.degrees(p.yaw)), 2) for p in people],
            "depth": [round(p.depth, 4) for p in people],
            "scale": [round(p.height, 2) for p in people],
            "visible_fraction": [round(float(vis_frac[k]), 4) for k in kept],
            "truncated_fraction": [round(float(trunc[k]), 4) for k in kept],
            "outfit": [{"upper": p.outfit["upper"], "lower": p.outfit["lower"], "hair": p.outfit["hair"]}
                       for p in people],
            "amodal_boxes": raster.amodal_boxes[kept].tolist(),
            "dropped": dropped,
        }
        return {
            "image": torch.from_numpy(image),
            "semantic": torch.from_numpy((code & 31).astype(np.int64)),  # the label bits of the code
            "instances": torch.from_numpy(instances),
            "boxes": torch.from_numpy(boxes),
            "keypoints": torch.from_numpy(keypoints),
            "meta": meta,
        }

    def _keypoints(self, kps: np.ndarray, slot_ids: np.ndarray, code: np.ndarray) -> np.ndarray:
        """(N, 17, 4) projected keypoints -> (N, 17, 3) x, y, v with visibility read off the z-buffer ``code``."""
        size = self.image_size
        x, y = kps[..., 0], kps[..., 1]
        inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
        px = np.clip(np.floor(x), 0, size - 1).astype(np.int64)
        py = np.clip(np.floor(y), 0, size - 1).astype(np.int64)
        under = code[py, px]  # the code of the pixel under each keypoint
        own = (under >> SLOT_SHIFT) == slot_ids.reshape(-1, 1)
        own &= _KEYPOINT_ALLOWED[np.arange(17), (under >> SEGMENT_SHIFT) & 31] & (kps[..., 3] == 0)
        v = np.where(inside, np.where(own, 2.0, 1.0), 0.0)
        out = np.stack([np.where(inside, x, 0.0), np.where(inside, y, 0.0), v], axis=-1)
        return out.astype(np.float32).reshape(len(kps), 17, 3)


# ------------------------------------------------------------------------------------------- statistics


def synth_statistics(dataset: SynthCrowd, limit: int | None = None) -> dict:
    """Statistics of the first ``limit`` images (all by default), as plain Python values for tables and plots.

    Returns a dict with:
        ``images``; ``people_per_image`` (list, kept people); ``rendered_per_image``; ``dropped`` (count);
        ``visible_fraction`` (list over kept people) and ``mean_visible_fraction`` / ``occlusion_ratio``
        (1 - mean visible fraction, counting dropped people as fully hidden); ``truncated_fraction`` (list);
        ``scale`` (list, standing heights in pixels) and ``scale_range`` (max / min);
        ``part_pixels`` (CIHP name -> share of person pixels), ``part_presence`` (CIHP name -> share of people
        showing that part); ``poses`` and ``views`` (name -> count of kept people); ``keypoint_visibility``
        (share of keypoints with v = 0, 1, 2).
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    labels = dataset.labels
    pixels = np.zeros(labels.num_classes, dtype=np.int64)
    presence = np.zeros(labels.num_classes, dtype=np.int64)
    people, rendered, dropped = [], [], 0
    vis, trunc, scales = [], [], []
    poses, views = Counter(), Counter()
    kp_vis = np.zeros(3, dtype=np.int64)
    for i in range(count):
        sample = dataset[i]
        meta = sample["meta"]
        semantic, instances = sample["semantic"].numpy(), sample["instances"].numpy()
        n = len(sample["boxes"])
        people.append(n)
        rendered.append(meta["num_rendered"])
        dropped += len(meta["dropped"])
        vis += meta["visible_fraction"]
        trunc += meta["truncated_fraction"]
        scales += meta["scale"]
        poses.update(meta["pose"])
        views.update(meta["view"])
        pixels += np.bincount(semantic[instances > 0].ravel(), minlength=labels.num_classes)[: labels.num_classes]
        if n:
            # (N, C) table: does person k show part c? One bincount over combined (person, label) codes.
            combined = instances.ravel() * labels.num_classes + semantic.ravel()
            table = np.bincount(combined, minlength=(n + 1) * labels.num_classes).reshape(n + 1, -1)[1:]
            presence += (table > 0).sum(0)
        kp_vis += np.bincount(sample["keypoints"][..., 2].numpy().astype(np.int64).ravel(), minlength=3)[:3]
    total_people = max(sum(people), 1)
    all_vis = vis + [0.0] * dropped
    names = labels.names
    return {
        "images": count,
        "people_per_image": people,
        "rendered_per_image": rendered,
        "dropped": dropped,
        "visible_fraction": vis,
        "mean_visible_fraction": float(np.mean(all_vis)) if all_vis else float("nan"),
        "occlusion_ratio": 1.0 - float(np.mean(all_vis)) if all_vis else float("nan"),
        "truncated_fraction": trunc,
        "scale": scales,
        "scale_range": float(max(scales) / min(scales)) if scales else float("nan"),
        "part_pixels": {names[c]: float(pixels[c] / max(pixels[1:].sum(), 1)) for c in range(1, len(names))},
        "part_presence": {names[c]: float(presence[c] / total_people) for c in range(1, len(names))},
        "poses": {p: poses.get(p, 0) for p in POSES},
        "views": {v: views.get(v, 0) for v in VIEWS},
        "keypoint_visibility": (kp_vis / max(kp_vis.sum(), 1)).tolist(),
    }
