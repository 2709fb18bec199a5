"""`python -m pipeline.tools.services start | stop | reset | status | logs`."""

import sys

from pipeline.tools.services import main

sys.exit(main())
