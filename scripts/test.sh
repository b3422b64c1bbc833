#!/usr/bin/env bash
# Sets everything up in ./.venv (torch CPU build first, then Vortex built from source with
# its test extras) and runs the test suite, then every benchmark once without timing so
# they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet ".[test]"
pytest
pytest benchmarks --benchmark-disable -q
