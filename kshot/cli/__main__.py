"""``python -m kshot.cli``: the ``kshot`` command."""

import sys

from kshot.cli import main

sys.exit(main())
