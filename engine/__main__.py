"""``python -m engine`` is the ``cinderblock`` command."""

import sys

from .cli import main

sys.exit(main())
