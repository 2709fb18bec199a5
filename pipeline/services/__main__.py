"""`python -m pipeline.services start | stop | reset | status | logs`."""

import sys

from pipeline.services import main

sys.exit(main())
