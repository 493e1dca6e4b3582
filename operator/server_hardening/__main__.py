"""``python -m server_hardening`` is ``hardening``."""

import sys

from server_hardening.cli import main

sys.exit(main())
