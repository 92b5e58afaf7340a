"""``python -m fleet_core`` is ``fleet-deploy``."""

import sys

from fleet_core.cli import main

sys.exit(main())
