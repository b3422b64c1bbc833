#!/usr/bin/env bash
# Developer loop: build the compiled extensions in place (into src/vortex/) without pip, so
# `PYTHONPATH=src pytest` runs against the working tree. Needs the build tools in the active
# environment (pip install scikit-build-core pybind11 cython cmake ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${VORTEX_BUILD_DIR:-build/dev}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} \
      -DSKBUILD_PROJECT_VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/vortex/__init__.py)" \
      -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$build"
cmake --install "$build" --prefix src >/dev/null
