#!/usr/bin/env python
"""Prepare CIHP for hparse: unpack the official archive into the layout ``hparse.data.CIHP`` reads, then verify it.

CIHP has no public direct download link: it is shared through Google Drive and Baidu (see ``--help`` or
data_scripts/README.md). Download ``instance-level_human_parsing.tar.gz`` yourself, then::

    python data_scripts/cihp.py --archive ~/Downloads/instance-level_human_parsing.tar.gz

It unpacks to ``<data-dir>/CIHP/instance-level_human_parsing`` (``--data-dir`` defaults to ``$HPARSE_DATA`` or
``data/``), reports the archive's size and SHA-256 (no checksum is published: UNKNOWN), and runs
``hparse data verify --dataset cihp`` on the train and val splits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _common  # data_scripts/_common.py (the script's folder is on sys.path when it runs)

WHERE = """CIHP is not downloadable by a direct link. Get it from:
  home page:     http://sysu-hcp.net/lip
  Google Drive:  folder 0BzvH3bSnp3E9QjVYZlhWSjltSWM (resourcekey 0-nkS8bDVjPs3bEw3UZW-omA), as listed in the
                 CIHP_PGN README; the archive instance-level_human_parsing.tar.gz has the Drive file id
                 1HdqA8yWVxZ8od0hngKzZTziHx_ONzCWj (listed by a third-party README; if you use gdown:
                 gdown 1HdqA8yWVxZ8od0hngKzZTziHx_ONzCWj)
  Baidu:         pan.baidu.com/s/1nvqmZBN
Archive size and checksum: UNKNOWN (none published).
Then run:  python data_scripts/cihp.py --archive PATH/TO/instance-level_human_parsing.tar.gz
It will be unpacked to {root}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of all datasets (default: "
                        "$HPARSE_DATA or data/)")
    parser.add_argument("--archive", type=Path, default=None, help="the downloaded instance-level_human_parsing"
                        ".tar.gz (or a folder already holding the unpacked Training/ and Validation/)")
    parser.add_argument("--skip-verify", action="store_true", help="do not run hparse data verify")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = args.data_dir or _common.default_data_dir()
    root = data_dir / "CIHP" / "instance-level_human_parsing"
    required = ("Training", "Validation")
    if not all((root / name).is_dir() for name in required):
        if args.archive is None:
            _common.say(WHERE.format(root=root))
            return 1
        _common.install_from_archive(args.archive, required, root, data_dir / "CIHP" / "_unpacked", "CIHP")
    _common.say(f"CIHP root: {root}  (hparse.data.CIHP({str(root)!r}, 'train' | 'val'))")
    return 0 if args.skip_verify else _common.verify("cihp", root, ["train", "val"])


if __name__ == "__main__":
    sys.exit(main())
