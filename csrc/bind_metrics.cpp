// pybind11 binding of vortex::MetricWindow (csrc/metric_window.hpp) as vortex._core.MetricWindow:
// construction, the batch record, snapshot, resize, clear. Each C++ method has one binding: the
// per-request ones (record, set_error, analyze) are bound only in Cython
// (src/vortex/_fast_metrics.pyx, MetricRecorder), which operates on this very object through
// `_address()`, so their argument checks are written once.
#include "pybind11.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "metric_window.hpp"

namespace {

using vortex::MetricWindow;

std::string repr_double(double v) { return py::repr(py::float_(v)).cast<std::string>(); }

// A 1-D float array as contiguous float64 (floating dtypes only; anything else is a ValueError).
py::array_t<double, py::array::c_style> float_column(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        throw std::invalid_argument(std::string(name) + " must be a NumPy array, got " +
                                    py::repr(py::type::of(obj)).cast<std::string>());
    auto arr = py::reinterpret_borrow<py::array>(obj);
    if (arr.ndim() != 1)
        throw std::invalid_argument(std::string(name) + " must be 1-D, got shape " +
                                    py::repr(arr.attr("shape")).cast<std::string>());
    if (arr.dtype().kind() != 'f')
        throw std::invalid_argument(std::string(name) + " must have a floating dtype, got " +
                                    py::str(arr.dtype()).cast<std::string>());
    return py::array_t<double, py::array::c_style>::ensure(arr);
}

const char* const kColumnNames[] = {"latencies_ms", "confidences", "prediction_errors"};
const char* const kColumnRules[] = {"latency must be finite and >= 0",
                                    "confidence must be in [0, 1]",
                                    "prediction error must be NaN (unknown) or finite and >= 0"};

// Validates every value, then records them all (GIL released); returns the first id.
uint64_t record_batch(MetricWindow& w, const py::handle& lat_obj, const py::handle& conf_obj,
                      const py::handle& err_obj) {
    auto lat = float_column(lat_obj, kColumnNames[0]);
    auto conf = float_column(conf_obj, kColumnNames[1]);
    py::array_t<double, py::array::c_style> err;
    const bool has_err = !err_obj.is_none();
    if (has_err) err = float_column(err_obj, kColumnNames[2]);
    const std::size_t n = static_cast<std::size_t>(lat.shape(0));
    if (static_cast<std::size_t>(conf.shape(0)) != n ||
        (has_err && static_cast<std::size_t>(err.shape(0)) != n))
        throw std::invalid_argument(
            "latencies_ms, confidences and prediction_errors must have the same length, got " +
            std::to_string(n) + ", " + std::to_string(conf.shape(0)) +
            (has_err ? ", " + std::to_string(err.shape(0)) : std::string()));
    const double* lp = lat.data();
    const double* cp = conf.data();
    const double* ep = has_err ? err.data() : nullptr;
    vortex::BadValue bad;
    uint64_t first = 0;
    {
        // Safe without the GIL: only raw buffers of arrays this frame keeps alive are read,
        // and the window has its own lock.
        py::gil_scoped_release nogil;
        bad = vortex::find_invalid(lp, cp, ep, n);
        if (bad.index < 0) first = w.record_batch(lp, cp, ep, n);
    }
    if (bad.index >= 0)
        throw std::invalid_argument(std::string(kColumnNames[bad.column]) + "[" +
                                    std::to_string(bad.index) + "]=" + repr_double(bad.value) +
                                    ": " + kColumnRules[bad.column] +
                                    "; nothing was recorded");
    return first;
}

std::size_t checked_capacity(py::ssize_t capacity) {
    if (capacity < 1)
        throw std::invalid_argument("capacity=" + std::to_string(capacity) + ": must be >= 1");
    return static_cast<std::size_t>(capacity);
}

py::dict snapshot(const MetricWindow& w) {
    // Sized for the samples there now; a concurrent record or resize changes which samples
    // are the newest, never how many fit (snapshot copies at most `room`).
    const std::size_t room = w.size();
    const auto len = static_cast<py::ssize_t>(room);
    py::array_t<int64_t> t(len);
    py::array_t<double> lat(len), conf(len), err(len);
    std::size_t n;
    {
        // Safe without the GIL: the four arrays were just allocated and are not shared yet.
        py::gil_scoped_release nogil;
        n = w.snapshot(t.mutable_data(), lat.mutable_data(), conf.mutable_data(),
                       err.mutable_data(), room);
    }
    py::slice head(0, static_cast<py::ssize_t>(n), 1);
    py::dict out;
    out["timestamp_ns"] = t[head];
    out["latency_ms"] = lat[head];
    out["confidence"] = conf[head];
    out["error"] = err[head];
    return out;
}

}  // namespace

void bind_metrics(py::module_& m) {
    py::class_<MetricWindow>(m, "MetricWindow",
                             "Fixed-capacity ring of (timestamp, latency, confidence, error) samples.")
        .def(py::init([](py::ssize_t capacity) {
                 return new MetricWindow(checked_capacity(capacity));
             }),
             py::arg("capacity"))
        .def_property_readonly_static("RECENT", [](py::object) { return MetricWindow::kRecent; })
        .def_property_readonly_static("MIN_BASELINE",
                                      [](py::object) { return MetricWindow::kMinBaseline; })
        .def_property_readonly_static("MIN_ANALYSIS",
                                      [](py::object) { return MetricWindow::kMinAnalysis; })
        .def("record_batch", &record_batch, py::arg("latencies_ms"), py::arg("confidences"),
             py::arg("prediction_errors") = py::none(),
             "Records n samples (validated first: ValueError and nothing recorded on a bad one); "
             "returns the id of the first, the others follow it.")
        .def("snapshot", &snapshot,
             "The window's samples, oldest first, as a dict of NumPy arrays (timestamp_ns, "
             "latency_ms, confidence, error).")
        .def("resize",
             [](MetricWindow& w, py::ssize_t capacity) { w.resize(checked_capacity(capacity)); },
             py::arg("capacity"))
        .def("clear", &MetricWindow::clear)
        .def("__len__", &MetricWindow::size)
        .def_property_readonly("capacity", &MetricWindow::capacity)
        .def_property_readonly("total", &MetricWindow::total)
        .def("memory_bytes", &MetricWindow::memory_bytes,
             "Bytes owned by the window: sizeof(MetricWindow) + its ring allocation.")
        .def("_address",
             [](MetricWindow& w) { return reinterpret_cast<std::uintptr_t>(&w); },
             "Raw pointer for vortex._fast_metrics (which keeps a reference to this object).");
}
