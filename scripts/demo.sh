#!/usr/bin/env bash
# Sets everything up in ./.venv and runs Vortex's main job, the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh demo
vortex demo
