"""``python -m codeclm.cli ...`` is ``codeclm ...``."""

import sys

from codeclm.cli import main

sys.exit(main())
