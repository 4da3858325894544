#!/usr/bin/env python
"""Prepare PASCAL-Person-Part (instance level) for hparse from its three public releases, then verify it.

``hparse.data.PascalPersonPart`` reads the part labels and split lists of the DeepLab release, the person
silhouettes of the Pascal-Part annotations and the VOC2010 images (see data_scripts/README.md for the tree):

- ``pascal_person_part.zip`` - from the DeepLab project page (no direct link is recorded here; pass it with
  ``--release-zip``);
- Pascal-Part ``trainval.tar.gz`` - downloaded from ``--pascal-part-url`` unless ``--pascal-part-archive`` is given;
- VOC2010 ``VOCtrainval_03-May-2010.tar`` - downloaded from ``--voc-url`` unless ``--voc-archive`` is given, or
  ``--voc-dir`` points to an existing ``JPEGImages`` folder (VOC2010 or VOC2012; it is linked, not copied).

Everything lands in ``<data-dir>/PascalPersonPart`` (``--data-dir`` defaults to ``$HPARSE_DATA`` or ``data/``);
archive sizes and SHA-256 are reported (none is published: UNKNOWN); then ``hparse data verify --dataset ppp``
runs on train and val.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common  # data_scripts/_common.py (the script's folder is on sys.path when it runs)

PASCAL_PART_URL = "http://roozbehm.info/pascal-parts/trainval.tar.gz"
VOC2010_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar"

WHERE = """The PASCAL-Person-Part label release has no direct link recorded here. Get pascal_person_part.zip from
the DeepLab project page, http://liangchiehchen.com/projects/DeepLab.html (size and checksum UNKNOWN), then run:
  python data_scripts/pascal_person_part.py --release-zip PATH/TO/pascal_person_part.zip
The script then downloads the Pascal-Part annotations ({pascal_part}) and the VOC2010 images ({voc}), unless
you pass --pascal-part-archive / --voc-archive / --voc-dir. Target folder: {root}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of all datasets (default: "
                        "$HPARSE_DATA or data/)")
    parser.add_argument("--release-zip", type=Path, default=None,
                        help="pascal_person_part.zip (DeepLab release: part PNGs and split lists)")
    parser.add_argument("--pascal-part-archive", type=Path, default=None, help="Pascal-Part trainval.tar.gz, "
                        "or a folder holding Annotations_Part/ (default: download it)")
    parser.add_argument("--pascal-part-url", default=PASCAL_PART_URL, help="where to download Pascal-Part")
    parser.add_argument("--voc-archive", type=Path, default=None, help="VOCtrainval_03-May-2010.tar, or a folder "
                        "holding JPEGImages/ (default: download it)")
    parser.add_argument("--voc-url", default=VOC2010_URL, help="where to download the VOC2010 images")
    parser.add_argument("--voc-dir", type=Path, default=None, help="an existing VOC JPEGImages folder to link")
    parser.add_argument("--skip-verify", action="store_true", help="do not run hparse data verify")
    return parser


def _fetch(archive: Path | None, url: str, downloads: Path) -> Path:
    return archive if archive is not None else _common.download(url, downloads / url.rsplit("/", 1)[-1])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or _common.default_data_dir()
    root = data_dir / "PascalPersonPart"
    downloads = data_dir / "_downloads"
    release = root / "pascal_person_part"
    if not (release / "pascal_person_part_trainval_list").is_dir():
        if args.release_zip is None:
            _common.say(WHERE.format(pascal_part=args.pascal_part_url, voc=args.voc_url, root=root))
            return 1
        _common.install_from_archive(args.release_zip, ("pascal_person_part_trainval_list",), release,
                                     data_dir / "_ppp_release", "PASCAL-Person-Part release")
    if not (root / "Annotations_Part").is_dir():
        archive = _fetch(args.pascal_part_archive, args.pascal_part_url, downloads)
        _common.install_from_archive(archive, ("Annotations_Part",), root / "Annotations_Part",
                                     data_dir / "_pascal_part_unpack", "Pascal-Part", subfolder="Annotations_Part")
    if not (root / "JPEGImages").is_dir():
        if args.voc_dir is not None:
            _common.link(args.voc_dir, root / "JPEGImages")
        else:
            archive = _fetch(args.voc_archive, args.voc_url, downloads)
            _common.install_from_archive(archive, ("JPEGImages",), root / "JPEGImages", data_dir / "_voc_unpack",
                                         "VOC2010", subfolder="JPEGImages")
    _common.say(f"PASCAL-Person-Part root: {root}  (hparse.data.PascalPersonPart({str(root)!r}, 'train' | 'val'))")
    return 0 if args.skip_verify else _common.verify("ppp", root, ["train", "val"])


if __name__ == "__main__":
    sys.exit(main())
