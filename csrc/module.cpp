// Wires the per-area bindings into the private module `vortex._core`.
// Nothing else lives here: each area has csrc/<area>.hpp (plain C++) and
// csrc/bind_<area>.cpp defining bind_<area>(py::module_&).
#include "pybind11.hpp"

void bind_sample_ring(py::module_& m);
void bind_metrics(py::module_& m);
void bind_io(py::module_& m);
void bind_shm(py::module_& m);

// Free-threading ready (py::mod_gil_not_used(); a no-op on an interpreter with a GIL): nothing
// here relies on the GIL. Every bound object serialises its own state (MetricWindow and
// ShmWriter with a spinlock, SampleRing and ShmReader with a mutex), because their C++ work
// already runs with the GIL released and the Cython fast paths reach the same objects; the
// free functions (atomic file writes, bucket bounds) touch only their arguments; and nothing
// keeps Python objects in static storage.
PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "Vortex compiled core (private; use the public vortex.* modules).";
    m.attr("__version__") = VORTEX_VERSION;
#if defined(__clang__)
    m.attr("compiler") = "clang " __clang_version__;
#elif defined(__GNUC__)
    m.attr("compiler") = "gcc " __VERSION__;
#else
    m.attr("compiler") = "unknown";
#endif
    bind_sample_ring(m);
    bind_metrics(m);
    bind_io(m);
    bind_shm(m);
}
