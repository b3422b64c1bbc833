#!/usr/bin/env bash
# Sets everything up in ./.venv and runs the test suite, then every benchmark once without
# timing so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh test
pytest
pytest benchmarks --benchmark-disable -q
