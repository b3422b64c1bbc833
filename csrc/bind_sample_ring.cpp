// pybind11 binding of vortex::SampleRing as vortex._core.SampleRing (construction, snapshots,
// sampling, restore). The per-request push and the batch extend live in src/vortex/_fast_ring.pyx,
// which drives the same C++ object through the address returned by _address().
#include "pybind11.hpp"

#include <memory>
#include <vector>

#include "sample_ring.hpp"

namespace {

using vortex::LabelKind;
using vortex::SampleRing;

template <class T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

py::dtype label_dtype(const SampleRing& r) {
    return r.label_kind() == LabelKind::Int64 ? py::dtype::of<std::int64_t>() : py::dtype::of<float>();
}

// Fresh output columns for n rows.
struct Columns {
    py::array_t<float> features;
    py::array labels;
    py::array_t<float> confidence, error;
    py::array_t<double> timestamp;
    py::array_t<std::int64_t> episode, seq;

    Columns(const SampleRing& r, std::size_t n)
        : features({n, r.feature_dim()}), labels(label_dtype(r), std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)}), confidence(n), error(n),
          timestamp(n), episode(n), seq(n) {}

    py::tuple as_tuple(std::size_t n) const {
        auto cut = [n](const py::array& a) -> py::object {
            return a.shape(0) == static_cast<py::ssize_t>(n) ? py::object(a)
                                                              : a[py::slice(0, n, 1)];
        };
        return py::make_tuple(cut(features), cut(labels), cut(confidence), cut(error),
                              cut(timestamp), cut(seq), cut(episode));
    }
};

}  // namespace

void bind_sample_ring(py::module_& m) {
    py::class_<SampleRing>(m, "SampleRing",
                           "Columnar ring of training samples (see vortex.training.SampleBuffer).")
        .def(py::init([](std::size_t feature_dim, std::size_t capacity, int label_kind,
                         std::int64_t next_seq) {
                 if (label_kind != 0 && label_kind != 1)
                     throw std::invalid_argument("label_kind must be 0 (int64) or 1 (float32)");
                 return std::make_unique<SampleRing>(feature_dim, capacity,
                                                     static_cast<LabelKind>(label_kind), next_seq);
             }),
             py::arg("feature_dim"), py::arg("capacity"), py::arg("label_kind"),
             py::arg("next_seq") = 0)
        .def_property_readonly("feature_dim", &SampleRing::feature_dim)
        .def_property_readonly("capacity", &SampleRing::capacity)
        .def_property_readonly("label_kind", [](const SampleRing& r) { return static_cast<int>(r.label_kind()); })
        .def_property_readonly("next_seq", &SampleRing::next_seq)
        .def_property_readonly("nbytes", &SampleRing::nbytes)
        .def("__len__", &SampleRing::size)
        .def("_address", [](SampleRing& r) { return reinterpret_cast<std::uintptr_t>(&r); },
             "Address of the C++ object, for vortex._fast_ring (which keeps this owner alive).")
        .def("clear", &SampleRing::clear)
        .def("snapshot",
             [](const SampleRing& r, std::size_t max_rows) {
                 Columns c(r, std::min(max_rows, r.size()));
                 const std::size_t want = static_cast<std::size_t>(c.seq.shape(0));
                 std::int64_t first = 0;
                 std::size_t n;
                 {
                     // Only the ring (own mutex) and the fresh arrays above are touched.
                     py::gil_scoped_release nogil;
                     n = r.copy_newest(want, c.features.mutable_data(), c.labels.mutable_data(),
                                       c.confidence.mutable_data(), c.error.mutable_data(),
                                       c.timestamp.mutable_data(), c.episode.mutable_data(), &first);
                     std::int64_t* seq = c.seq.mutable_data();
                     for (std::size_t i = 0; i < n; ++i) seq[i] = first + static_cast<std::int64_t>(i);
                 }
                 py::list out(c.as_tuple(n));
                 out.append(first + static_cast<std::int64_t>(n));  // next_seq at copy time
                 return py::tuple(out);
             },
             py::arg("max_rows"),
             "Newest rows, oldest first: (features, labels, confidence, error, timestamp, seq, "
             "episode, next_seq).")
        .def("sample_uniform",
             [](const SampleRing& r, const carray<double>& u) {
                 if (u.ndim() != 1) throw std::invalid_argument("u must be 1-D");
                 const std::size_t n = static_cast<std::size_t>(u.shape(0));
                 const double* pu = u.data();
                 for (std::size_t k = 0; k < n; ++k)
                     if (!(pu[k] >= 0.0 && pu[k] < 1.0))
                         throw std::invalid_argument("u[" + std::to_string(k) + "] is outside [0, 1)");
                 Columns c(r, n);
                 std::size_t size;
                 {
                     // Only the ring (own mutex), u (kept alive by this frame) and fresh arrays.
                     py::gil_scoped_release nogil;
                     size = r.gather_uniform(n, u.data(), c.features.mutable_data(),
                                             c.labels.mutable_data(), c.confidence.mutable_data(),
                                             c.error.mutable_data(), c.timestamp.mutable_data(),
                                             c.episode.mutable_data(), c.seq.mutable_data());
                 }
                 if (size == 0 && n > 0) throw std::invalid_argument("cannot sample from an empty buffer");
                 return c.as_tuple(n);
             },
             py::arg("u"), "Rows floor(u * len) (with replacement), as snapshot() returns them.")
        .def("replace",
             [](SampleRing& r, const carray<float>& features, const py::array& labels,
                const carray<float>& confidence, const carray<float>& error,
                const carray<double>& timestamp, const carray<std::int64_t>& episode,
                std::int64_t next_seq) {
                 const py::ssize_t n = features.ndim() == 2 ? features.shape(0) : -1;
                 if (n < 0 || features.shape(1) != static_cast<py::ssize_t>(r.feature_dim()))
                     throw std::invalid_argument("features must have shape (n, feature_dim)");
                 py::array lab = py::array::ensure(labels, py::array::c_style);
                 if (!lab || !lab.dtype().is(label_dtype(r)))
                     throw std::invalid_argument("labels have the wrong dtype for this buffer");
                 const py::array* columns[] = {&lab, &confidence, &error, &timestamp, &episode};
                 for (const py::array* a : columns)
                     if (a->ndim() != 1 || a->shape(0) != n)
                         throw std::invalid_argument("every column must have n = " + std::to_string(n) + " rows");
                 // Raw buffers of arrays held by this frame; the ring has its own mutex.
                 py::gil_scoped_release nogil;
                 r.replace(static_cast<std::size_t>(n), features.data(), lab.data(), confidence.data(),
                           error.data(), timestamp.data(), episode.data(), next_seq);
             },
             py::arg("features"), py::arg("labels"), py::arg("confidence"), py::arg("error"),
             py::arg("timestamp"), py::arg("episode"), py::arg("next_seq"),
             "Replace the content with a saved buffer's rows (seqs next_seq - n .. next_seq - 1).");
}
