"""``python -m ghl_async``: the same as the ``ghl-async`` command."""

import sys

from .cli import main

sys.exit(main())
