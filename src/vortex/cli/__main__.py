"""``python -m vortex.cli``: the ``vortex`` command."""

import sys

from . import main

sys.exit(main())
