#!/usr/bin/env bash
# Sets everything up in ./.venv, runs the quality gate (ruff: lint and NumPy docstrings; mypy;
# both configured in pyproject.toml, on src/), then the test suite, then every benchmark once
# without timing so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh test
ruff check src
mypy
pytest
pytest benchmarks --benchmark-disable -q
