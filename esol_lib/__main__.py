"""``python -m esol_lib`` is the ``esol`` command."""

import sys

from esol_lib.cli import main

sys.exit(main())
