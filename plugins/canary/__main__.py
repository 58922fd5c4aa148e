"""``python -m canary``."""

from __future__ import annotations

import sys

from canary.cli import main

sys.exit(main())
