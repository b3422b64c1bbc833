"""Lets the fault suites import the shared harness (``harness.py``) and their loaders."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
