"""SynthCrowd written in a real dataset's on-disk layout (``hparse data export``).

Every loader of :mod:`hparse.data` reads its dataset's official layout; writing SynthCrowd in that layout gives each
loader, the evaluation and the data scripts a dataset they can read with no download. :func:`export_synth` writes one
split in one of :data:`EXPORT_FORMATS` and reads it back with that dataset's loader, so what it returns is what a user
of the real dataset would get.
"""

from __future__ import annotations

import os

from .io import ParsingDataset
from .synth import SynthCrowd
from .verify import open_dataset

__all__ = ["EXPORT_FORMATS", "export_synth"]

#: Layouts SynthCrowd can be written in: CIHP, MHP v2.0, PASCAL-Person-Part and DensePose-COCO.
EXPORT_FORMATS = ("cihp", "mhp", "ppp", "densepose")


def export_synth(dataset: SynthCrowd, fmt: str, out: str | os.PathLike, split: str) -> ParsingDataset:
    """Write every image of ``dataset`` into ``out`` in the layout ``fmt`` as ``split``; return the written split
    read back by that dataset's loader.

    Raises:
        ValueError: an unknown format, or a split other than train and val (the real datasets' test splits have no
            labels).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if split not in ("train", "val"):
        raise ValueError(f"--split must be train or val for an export (the real datasets' test splits have no "
                         f"labels), got {split!r}")
    samples = (dataset[i] for i in range(len(dataset)))
    if fmt == "cihp":
        from .cihp import write_cihp

        write_cihp(samples, out, split)
    elif fmt == "mhp":
        from .mhp import write_mhp

        write_mhp(samples, out, split)
    elif fmt == "ppp":
        from .pascal_person_part import synth_to_pascal_person_part, write_pascal_person_part

        write_pascal_person_part((synth_to_pascal_person_part(dataset, i) for i in range(len(dataset))), out, split)
    else:
        from .densepose_coco import synth_to_densepose, write_densepose_coco

        write_densepose_coco((synth_to_densepose(dataset, i) for i in range(len(dataset))), out, split)
    return open_dataset(fmt, out, split)
