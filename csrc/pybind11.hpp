// The one header that pulls in pybind11: every binding file includes it first, so the
// type casters (numpy, stl) are the same in every translation unit.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

namespace py = pybind11;
