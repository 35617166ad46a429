"""``python -m ghl_async``: the same as the ``ghl-async`` command."""

import sys

from ghl_async.cli.main import main

sys.exit(main())
