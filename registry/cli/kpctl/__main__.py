"""``python -m registry.cli.kpctl``: what the ``kpctl`` console script runs."""

import sys

from registry.cli.kpctl import main

sys.exit(main())
