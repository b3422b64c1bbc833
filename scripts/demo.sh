#!/usr/bin/env bash
# Sets everything up in ./.venv and runs Vortex's main job, the end-to-end demo. Arguments go
# to `vortex demo` (e.g. --quick, the shorter run CI makes on every submission).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh demo
vortex demo "$@"
