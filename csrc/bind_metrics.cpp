// pybind11 binding of vortex::MetricWindow (csrc/metric_window.hpp) as vortex._core.MetricWindow.
// The per-request record path lives in Cython (src/vortex/_fast_metrics.pyx), which operates on the
// same C++ object through `_address()`.
#include "pybind11.hpp"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "metric_window.hpp"

namespace {

using vortex::MetricWindow;
using vortex::WindowStats;

// Above this many samples an analysis is long enough to be worth releasing the GIL.
constexpr std::size_t kReleaseGilAbove = 1 << 14;

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

void record_batch(MetricWindow& w, const py::handle& lat_obj, const py::handle& conf_obj,
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
    {
        // Safe without the GIL: only raw buffers of arrays this frame keeps alive are read,
        // and the window has its own lock.
        py::gil_scoped_release nogil;
        bad = vortex::find_invalid(lp, cp, ep, n);
        if (bad.index < 0) w.record_batch(lp, cp, ep, n);
    }
    if (bad.index >= 0)
        throw std::invalid_argument(std::string(kColumnNames[bad.column]) + "[" +
                                    std::to_string(bad.index) + "]=" + repr_double(bad.value) +
                                    ": " + kColumnRules[bad.column] +
                                    "; nothing was recorded");
}

WindowStats analyze(const MetricWindow& w, double threshold) {
    if (!(threshold == threshold)) throw std::invalid_argument("latency threshold must not be NaN");
    if (w.size() > kReleaseGilAbove) {
        // Safe without the GIL: pure C++ over the window's own buffer, under its lock.
        py::gil_scoped_release nogil;
        return w.analyze(threshold);
    }
    return w.analyze(threshold);
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
    py::class_<WindowStats>(m, "WindowStats",
                            "Statistics of one analysis pass over a MetricWindow "
                            "(recent = newest 10 samples, baseline = older half once >= 20).")
        .def_readonly("total_recorded", &WindowStats::total_recorded)
        .def_readonly("size", &WindowStats::size)
        .def_readonly("capacity", &WindowStats::capacity)
        .def_readonly("recent_count", &WindowStats::recent_count)
        .def_readonly("baseline_count", &WindowStats::baseline_count)
        .def_readonly("recent_latency_mean", &WindowStats::recent_latency_mean)
        .def_readonly("recent_latency_max", &WindowStats::recent_latency_max)
        .def_readonly("recent_over_threshold", &WindowStats::recent_over_threshold)
        .def_readonly("recent_over_latency_mean", &WindowStats::recent_over_latency_mean)
        .def_readonly("recent_confidence_mean", &WindowStats::recent_confidence_mean)
        .def_readonly("recent_error_count", &WindowStats::recent_error_count)
        .def_readonly("recent_error_mean", &WindowStats::recent_error_mean)
        .def_readonly("baseline_latency_mean", &WindowStats::baseline_latency_mean)
        .def_readonly("baseline_confidence_mean", &WindowStats::baseline_confidence_mean)
        .def_readonly("baseline_error_count", &WindowStats::baseline_error_count)
        .def_readonly("baseline_error_mean", &WindowStats::baseline_error_mean)
        .def_readonly("oldest_ns", &WindowStats::oldest_ns)
        .def_readonly("newest_ns", &WindowStats::newest_ns)
        .def_readonly("all_latency_sum", &WindowStats::all_latency_sum)
        .def_readonly("all_confidence_sum", &WindowStats::all_confidence_sum);

    py::class_<MetricWindow>(m, "MetricWindow",
                             "Fixed-capacity ring of (timestamp, latency, confidence, error) samples.")
        .def(py::init([](py::ssize_t capacity) {
                 if (capacity < 1)
                     throw std::invalid_argument("capacity=" + std::to_string(capacity) +
                                                 ": must be >= 1");
                 return new MetricWindow(static_cast<std::size_t>(capacity));
             }),
             py::arg("capacity"))
        .def_property_readonly_static("RECENT", [](py::object) { return MetricWindow::kRecent; })
        .def_property_readonly_static("MIN_BASELINE",
                                      [](py::object) { return MetricWindow::kMinBaseline; })
        .def_property_readonly_static("MIN_ANALYSIS",
                                      [](py::object) { return MetricWindow::kMinAnalysis; })
        .def(
            "record",
            [](MetricWindow& w, double lat, double conf, double err) {
                if (!vortex::valid_latency(lat))
                    throw std::invalid_argument("latency_ms=" + repr_double(lat) + ": " +
                                                kColumnRules[0]);
                if (!vortex::valid_confidence(conf))
                    throw std::invalid_argument("confidence=" + repr_double(conf) + ": " +
                                                kColumnRules[1]);
                if (!vortex::valid_error(err))
                    throw std::invalid_argument("prediction_error=" + repr_double(err) + ": " +
                                                kColumnRules[2]);
                return w.record(lat, conf, err);
            },
            py::arg("latency_ms"), py::arg("confidence"),
            py::arg("prediction_error") = std::numeric_limits<double>::quiet_NaN(),
            "Records one sample; returns its id (for set_error).")
        .def(
            "set_error",
            [](MetricWindow& w, uint64_t id, double err) {
                if (!(err >= 0.0 && err <= DBL_MAX))
                    throw std::invalid_argument("prediction_error=" + repr_double(err) +
                                                ": prediction error must be finite and >= 0");
                return w.set_error(id, err);
            },
            py::arg("sample_id"), py::arg("prediction_error"),
            "Attaches a late prediction error to sample `sample_id`; False if it left the window.")
        .def("record_batch", &record_batch, py::arg("latencies_ms"), py::arg("confidences"),
             py::arg("prediction_errors") = py::none())
        .def("analyze", &analyze, py::arg("latency_threshold_ms"))
        .def("snapshot", &snapshot,
             "The window's samples, oldest first, as a dict of NumPy arrays (timestamp_ns, "
             "latency_ms, confidence, error).")
        .def("resize",
             [](MetricWindow& w, py::ssize_t capacity) {
                 if (capacity < 1)
                     throw std::invalid_argument("capacity=" + std::to_string(capacity) +
                                                 ": must be >= 1");
                 w.resize(static_cast<std::size_t>(capacity));
             },
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
