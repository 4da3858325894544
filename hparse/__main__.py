"""``python -m hparse`` is the ``hparse`` command."""

import sys

from .cli import main

sys.exit(main())
