"""``python -m vortex``: the ``vortex`` command."""

import sys

from .cli import main

sys.exit(main())
