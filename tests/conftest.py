"""Shared test setup: lets tests import helper modules that live in tests/ (naive.py)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
