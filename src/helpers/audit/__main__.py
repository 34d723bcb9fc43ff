"""``python -m helpers.audit``: the audit command (:mod:`helpers.audit.cli`)."""

import sys

from .cli import main

sys.exit(main())
