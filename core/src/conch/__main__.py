"""``python -m conch`` is the ``conch`` command."""

import sys

from conch.cli import main

sys.exit(main())
