#!/usr/bin/env python
"""Prepare DensePose-COCO for hparse: download the DensePose annotations and the COCO 2014 images, then verify.

Both have public direct links (detectron2's ``DENSEPOSE_DATASETS.md`` for the annotations, cocodataset.org for the
images). Into ``<data-dir>/DensePoseCOCO`` (``--data-dir`` defaults to ``$HPARSE_DATA`` or ``data/``)::

    annotations/densepose_{train2014,valminusminival2014,minival2014}.json
    train2014/   val2014/                       (from train2014.zip, val2014.zip)

Choose splits with ``--splits`` (default: all three; ``minival2014`` alone needs only the annotations of 31 MB
and ``val2014.zip``). An existing COCO 2014 image folder can be linked with ``--coco-dir`` instead of downloading;
archives already in ``<data-dir>/_downloads`` are not downloaded again. Sizes and SHA-256 of what was downloaded
are reported (no checksum is published: UNKNOWN). Then ``hparse data verify --dataset densepose`` runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common  # data_scripts/_common.py (the script's folder is on sys.path when it runs)

ANNOTATIONS_URL = "https://dl.fbaipublicfiles.com/densepose/annotations/coco/"
IMAGES_URL = "http://images.cocodataset.org/zips/"
SPLITS = {  # split -> (image folder, approximate annotation size from detectron2's documentation)
    "train2014": ("train2014", "526 MB"),
    "valminusminival2014": ("val2014", "105 MB"),
    "minival2014": ("val2014", "31 MB"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of all datasets (default: "
                        "$HPARSE_DATA or data/)")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=list(SPLITS))
    parser.add_argument("--coco-dir", type=Path, default=None,
                        help="an existing folder holding COCO's train2014/ and/or val2014/ (linked, not copied)")
    parser.add_argument("--annotations-only", action="store_true", help="do not fetch images (and do not verify)")
    parser.add_argument("--annotations-url", default=ANNOTATIONS_URL, help="base URL of the annotation files")
    parser.add_argument("--images-url", default=IMAGES_URL, help="base URL of the COCO image zips")
    parser.add_argument("--skip-verify", action="store_true", help="do not run hparse data verify")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or _common.default_data_dir()
    root = data_dir / "DensePoseCOCO"
    downloads = data_dir / "_downloads"
    for split in args.splits:
        name = f"densepose_{split}.json"
        target = root / "annotations" / name
        if not target.is_file():
            _common.say(f"DensePose annotations {name} (published size about {SPLITS[split][1]}; exact size UNKNOWN):")
            _common.download(args.annotations_url.rstrip("/") + "/" + name, target)
            _common.report_file(target)
    if args.annotations_only:
        return 0
    for folder in sorted({SPLITS[split][0] for split in args.splits}):
        if (root / folder).is_dir():
            continue
        if args.coco_dir is not None and (args.coco_dir / folder).is_dir():
            _common.link(args.coco_dir / folder, root / folder)
            continue
        archive = _common.download(args.images_url.rstrip("/") + f"/{folder}.zip", downloads / f"{folder}.zip")
        _common.install_from_archive(archive, (folder,), root / folder, data_dir / f"_{folder}_unpack",
                                     f"COCO {folder}", subfolder=folder)
    _common.say(f"DensePose-COCO root: {root}  (hparse.data.DensePoseCOCO({str(root)!r}, split))")
    return 0 if args.skip_verify else _common.verify("densepose", root, list(args.splits))


if __name__ == "__main__":
    sys.exit(main())
