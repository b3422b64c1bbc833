#!/usr/bin/env bash
# Sets everything up in ./.venv and runs Vortex's main job, the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet ".[demo]"
vortex demo
