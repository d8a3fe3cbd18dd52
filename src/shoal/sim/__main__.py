"""`python -m shoal.sim`: the fleet simulator's command line."""

import sys

from shoal.sim.cli import main

sys.exit(main())
