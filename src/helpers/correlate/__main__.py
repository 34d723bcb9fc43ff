"""``python -m helpers.correlate``: the audit command (:mod:`helpers.correlate.cli`)."""

import sys

from .cli import main

sys.exit(main())
