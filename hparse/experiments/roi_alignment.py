"""How much part mIoU a parsing branch can reach through its RoIAlign, whatever it learns: the alignment bound.

A top-down parsing branch sees a person only through RoIAlign on a pyramid level, and is trained against the
person's part map cropped at the RoI's cells (:func:`hparse.models.targets.parsing_targets`). :func:`alignment_bound`
feeds it *perfect* features -- the one-hot part map of each person, average-pooled to the level's stride -- and
scores the arg-max of the pooled RoIs against the targets (RoI mIoU, the split-wide rule of
:class:`hparse.metrics.SemanticIoU`). What is lost is lost to the feature stride and to where RoIAlign samples:
torchvision's ``MultiScaleRoIAlign`` pools with ``aligned=False``, half a feature cell away from the cells the targets
are cut at (and that the paste writes back, :func:`hparse.models.inference.paste_part_probs`); at SynthCrowd's
laptop sizes, where a person is 10-45 cells of P2 tall, that half cell costs a third of the bound. hparse's
models therefore pool with ``aligned=True`` (:class:`hparse.models.detector.TopDownParser`, ``roi_aligned``)::

    python -m hparse.experiments.roi_alignment --profile cpu     # results/cpu/parsing_rcnn/roi_alignment.json
    python -m hparse.experiments.roi_alignment --profile cpu --image-size 320   # ..._320.json (the demo's size)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data import SynthCrowd
from ..data.contract import IGNORE_INDEX
from ..engine.profiles import Profile, get_profile
from ..engine.results import write_result
from ..metrics.semantic import SemanticIoU
from ..models.targets import parsing_targets
from ..ops.roi_align import roi_align

__all__ = ["alignment_bound"]


@torch.no_grad()
def alignment_bound(dataset, size: int = 128, strides: Sequence[int] = (1, 4), sampling_ratio: int = 2) -> dict:
    """RoI mIoU of perfect stride-``s`` features through RoIAlign, aligned and not, on every ground-truth person.

    Returns:
        ``{"stride_<s>": {"aligned": mIoU, "unaligned": mIoU}, "num_rois": R}``.
    """
    num_classes = dataset.labels.num_classes
    scores = {(s, a): SemanticIoU(num_classes, ignore_index=IGNORE_INDEX) for s in strides for a in (True, False)}
    rois = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        boxes = sample["boxes"].float()
        if len(boxes) == 0:
            continue
        ids = torch.arange(1, len(boxes) + 1)
        target = parsing_targets([sample["semantic"]], [sample["instances"]], [boxes], [ids], size)
        own = torch.where(sample["instances"][None] == ids.view(-1, 1, 1), sample["semantic"][None], 0)  # (N, H, W)
        one_hot = F.one_hot(own.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()
        rows = torch.cat([torch.arange(len(boxes), dtype=torch.float32)[:, None], boxes], 1)  # person n's own map
        for stride in strides:
            features = F.avg_pool2d(one_hot, stride) if stride > 1 else one_hot
            for aligned in (True, False):
                pooled = roi_align(features, rows, size, 1.0 / stride, sampling_ratio, aligned)
                scores[stride, aligned].update_checked(pooled.argmax(1), target)
        rois += len(boxes)
    out: dict = {f"stride_{s}": {("aligned" if a else "unaligned"): scores[s, a].compute()["mIoU"]
                                 for a in (True, False)} for s in strides}
    out["num_rois"] = rois
    return out


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, choices=("smoke", "cpu", "gpu"))
    parser.add_argument("--images", type=int, default=None, help="val images (default: the profile's)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="SynthCrowd image side (default: the profile's); the record is then "
                             "parsing_rcnn/roi_alignment_<side>")
    args = parser.parse_args(argv)
    profile: Profile = get_profile(args.profile)
    images = args.images or profile.val_images
    side = args.image_size or profile.image_size
    if side < 16:
        parser.error(f"--image-size must be at least 16 pixels, got {side}")
    dataset = SynthCrowd("val", images, side, 1, profile.max_people, seed=0)
    result = alignment_bound(dataset)
    name = "parsing_rcnn/roi_alignment" + (f"_{side}" if args.image_size else "")
    path = write_result(name, result, profile=profile.name,
                        config={"dataset": "synth", "split": "val", "val_images": images,
                                "image_size": side, "max_people": profile.max_people,
                                "output_size": 128, "sampling_ratio": 2},
                        notes="RoI mIoU of perfect (one-hot, average-pooled) features through RoIAlign")
    print(result)
    print(f"wrote {path}")


if __name__ == "__main__":
    _main()
