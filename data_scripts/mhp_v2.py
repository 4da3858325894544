#!/usr/bin/env python
"""Prepare MHP v2.0 for hparse: unpack ``LV-MHP-v2.zip`` into the layout ``hparse.data.MHPv2`` reads, then verify.

MHP v2.0 has no public direct download link (Google Drive; the Baidu link is reported dead). Download
``LV-MHP-v2.zip`` yourself, then::

    python data_scripts/mhp_v2.py --archive ~/Downloads/LV-MHP-v2.zip

It unpacks to ``<data-dir>/LV-MHP-v2`` (``--data-dir`` defaults to ``$HPARSE_DATA`` or ``data/``), reports the
archive's size and SHA-256 (no checksum is published: UNKNOWN), and runs ``hparse data verify --dataset mhp`` on
the train and val splits (the test split's labels are not released).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common  # data_scripts/_common.py (the script's folder is on sys.path when it runs)

WHERE = """MHP v2.0 is not downloadable by a direct link. Get it from:
  home page:     https://lv-mhp.github.io
  Google Drive:  file 1YVBGMru0dlwB8zu1OoErOazZoc8ISSJn (LV-MHP-v2.zip); if you use gdown:
                 gdown 1YVBGMru0dlwB8zu1OoErOazZoc8ISSJn
  Baidu:         1BvdoyKgm-RlINBGghmvrOQ (password uxrb), reported dead in issues #39 and #46 of
                 github.com/ZhaoJ9014/Multi-Human-Parsing (a user re-share is posted in #46)
Archive size and checksum: UNKNOWN (none published).
Then run:  python data_scripts/mhp_v2.py --archive PATH/TO/LV-MHP-v2.zip
It will be unpacked to {root}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of all datasets (default: "
                        "$HPARSE_DATA or data/)")
    parser.add_argument("--archive", type=Path, default=None,
                        help="the downloaded LV-MHP-v2.zip (or a folder already holding list/, train/ and val/)")
    parser.add_argument("--skip-verify", action="store_true", help="do not run hparse data verify")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or _common.default_data_dir()
    root = data_dir / "LV-MHP-v2"
    required = ("list", "train", "val")
    if not all((root / name).is_dir() for name in required):
        if args.archive is None:
            _common.say(WHERE.format(root=root))
            return 1
        _common.install_from_archive(args.archive, required, root, data_dir / "_LV-MHP-v2_unpacked", "MHP v2.0")
    _common.say(f"MHP v2.0 root: {root}  (hparse.data.MHPv2({str(root)!r}, 'train' | 'val'))")
    return 0 if args.skip_verify else _common.verify("mhp", root, ["train", "val"])


if __name__ == "__main__":
    sys.exit(main())
