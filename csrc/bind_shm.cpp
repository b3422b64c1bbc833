// pybind11 binding of the shared-memory segments (csrc/shm_writer.hpp, csrc/shm_reader.hpp) and
// their bucket scheme (csrc/log_buckets.hpp): vortex._core.ShmWriter, ShmReader, bucket_bounds,
// bucket_indices. The writer's per-request calls (record, push) live in
// src/vortex/_fast_shm.pyx, which drives the same C++ object through `_address()`.
#include "pybind11.hpp"

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "log_buckets.hpp"
#include "shm_reader.hpp"
#include "shm_writer.hpp"

namespace {

using vortex::shm::Aggregate;
using vortex::shm::Layout;
using vortex::shm::SegmentCorrupt;
using vortex::shm::SegmentReader;
using vortex::shm::SegmentWriter;
namespace buckets = vortex::buckets;

void set_os_error(int err, const std::string& path) {
    errno = err;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, path.c_str());  // picks the OSError subclass
}

[[noreturn]] void raise_os_error(int err, const std::string& path) {
    set_os_error(err, path);
    throw py::error_already_set();
}

template <class T>
py::array_t<T> counts_array(const T* data, std::size_t n) {
    py::array_t<T> out(static_cast<py::ssize_t>(n));
    std::memcpy(out.mutable_data(), data, n * sizeof(T));
    return out;
}

py::dict aggregate_dict(const Aggregate& a) {
    py::dict d;
    d["latency"] = counts_array(a.latency.data(), a.latency.size());
    d["confidence"] = counts_array(a.confidence.data(), a.confidence.size());
    d["records"] = a.records;
    d["latency_sum_s"] = a.latency_sum_s;
    d["confidence_sum"] = a.confidence_sum;
    d["error_sum"] = a.error_sum;
    d["error_count"] = a.error_count;
    d["failed_count"] = a.failed_count;
    d["samples"] = a.samples;
    d["newest_ns"] = a.newest_ns;
    return d;
}

py::dict info_dict(const SegmentReader& r) {
    const auto& h = r.info();
    py::dict d;
    d["version"] = h.version;
    d["file_size"] = h.file_size;
    d["feature_dim"] = h.feature_dim;
    d["label_kind"] = h.label_kind;
    d["metric_capacity"] = h.metric_capacity;
    d["sample_capacity"] = h.sample_capacity;
    d["writer_pid"] = h.writer_pid;
    d["writer_start_ticks"] = h.writer_start_ticks;
    d["created_unix_ns"] = h.created_unix_ns;
    d["created_mono_ns"] = h.created_mono_ns;
    d["segment_id"] = h.segment_id;
    return d;
}

// Rows to make room for before a read (the read never returns more): the caller's limit, what
// the writer has published past the cursor now plus the record it may have completed since,
// and never more than a ring holds plus that one.
std::size_t read_room(std::size_t max_n, std::uint64_t capacity, std::uint64_t published, std::uint64_t cursor) {
    const std::uint64_t fresh = published >= cursor ? published - cursor + 1 : 1;
    return static_cast<std::size_t>(std::min<std::uint64_t>({max_n, capacity + 1, fresh}));
}

template <class A>
py::object head(const A& a, std::size_t n) {
    return a[py::slice(0, static_cast<py::ssize_t>(n), 1)];
}

py::tuple read_metrics(SegmentReader& r, std::uint64_t cursor, std::size_t max_n) {
    const std::size_t room = read_room(max_n, r.layout().metric_capacity, r.counters().metric_count, cursor);
    const auto len = static_cast<py::ssize_t>(room);
    py::array_t<std::int64_t> index(len), t(len), request(len), version(len);
    py::array_t<double> lat(len), conf(len), err(len);
    const vortex::shm::MetricColumns out{index.mutable_data(), t.mutable_data(),       lat.mutable_data(),
                                         conf.mutable_data(),  err.mutable_data(),     request.mutable_data(),
                                         version.mutable_data()};
    vortex::shm::ReadResult res;
    {
        // Safe without the GIL: the reader has its own mutex (close() waits for us) and writes
        // only into the arrays above, which nothing else references yet.
        py::gil_scoped_release nogil;
        res = r.read_metrics(cursor, room, out);
    }
    return py::make_tuple(head(index, res.n), head(t, res.n), head(lat, res.n), head(conf, res.n),
                          head(err, res.n), head(request, res.n), head(version, res.n), res.next, res.lost);
}

py::tuple read_samples(SegmentReader& r, std::uint64_t cursor, std::size_t max_n) {
    const Layout& l = r.layout();
    const std::size_t room = read_room(max_n, l.sample_capacity, r.counters().sample_count, cursor);
    const auto len = static_cast<py::ssize_t>(room);
    py::array_t<std::int64_t> seq(len), episode(len), request(len), version(len);
    py::array_t<std::uint64_t> worker(len);
    py::array_t<float> features({len, static_cast<py::ssize_t>(l.feature_dim)}), conf(len), err(len),
        misclassified(len), nll(len);
    py::array labels = l.label_kind == 0 ? py::array(py::array_t<std::int64_t>(len)) : py::array(py::array_t<float>(len));
    py::array_t<double> ts(len);
    const vortex::shm::SampleColumns out{seq.mutable_data(), features.mutable_data(),
                                         static_cast<unsigned char*>(labels.mutable_data()), conf.mutable_data(),
                                         err.mutable_data(), ts.mutable_data(), episode.mutable_data(),
                                         worker.mutable_data(), request.mutable_data(), version.mutable_data(),
                                         misclassified.mutable_data(), nll.mutable_data()};
    vortex::shm::ReadResult res;
    {
        py::gil_scoped_release nogil;  // as in read_metrics
        res = r.read_samples(cursor, room, out);
    }
    return py::make_tuple(head(seq, res.n), head(features, res.n), head(labels, res.n), head(conf, res.n),
                          head(err, res.n), head(ts, res.n), head(episode, res.n), head(worker, res.n),
                          head(request, res.n), head(version, res.n), head(misclassified, res.n),
                          head(nll, res.n), res.next, res.lost);
}

}  // namespace

void bind_shm(py::module_& m) {
    // SegmentCorrupt -> vortex.errors.SegmentCorruptError(path, problem, position=...);
    // SegmentOsError (open, mmap, flock) -> OSError with its errno and the file name.
    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const SegmentCorrupt& e) {
            py::object cls = py::module_::import("vortex.errors").attr("SegmentCorruptError");
            py::object err = cls(e.path, e.what(), py::arg("position") = e.position);
            PyErr_SetObject(cls.ptr(), err.ptr());
        } catch (const vortex::shm::SegmentOsError& e) {
            set_os_error(e.err, e.path);
        }
    });

    m.attr("SHM_BUCKETS") = buckets::kBuckets;
    m.def("bucket_bounds", [] { return counts_array(buckets::kBound.data(), buckets::kBounds); },
          "Upper bounds of the histogram buckets 0 .. SHM_BUCKETS - 2 (the last bucket is +Inf).");
    m.def(
        "bucket_indices",
        [](const py::array_t<double, py::array::c_style | py::array::forcecast>& values) {
            py::array_t<std::int64_t> out(values.size());
            const double* v = values.data();
            std::int64_t* o = out.mutable_data();
            const auto n = static_cast<std::size_t>(values.size());
            for (std::size_t i = 0; i < n; ++i) o[i] = static_cast<std::int64_t>(buckets::bucket_index(v[i]));
            return out;
        },
        py::arg("values"), "The bucket of each value (flattened), as the writers count them.");

    py::class_<SegmentWriter>(m, "ShmWriter",
                              "Writer of a worker's shared-memory segment (see vortex.shm.WorkerSegment).")
        .def(py::init([](const std::string& dir, const std::string& name, std::size_t feature_dim,
                         int label_kind, std::uint64_t metric_capacity, std::uint64_t sample_capacity,
                         std::uint64_t pid, std::uint64_t start_ticks, std::uint64_t segment_id) {
                 const Layout layout{feature_dim, label_kind, metric_capacity, sample_capacity};
                 if (!layout.valid())
                     throw std::invalid_argument("segment shape out of range: feature_dim " + std::to_string(feature_dim) +
                                                 ", label_kind " + std::to_string(label_kind) + ", capacities " +
                                                 std::to_string(metric_capacity) + " and " +
                                                 std::to_string(sample_capacity));
                 std::unique_ptr<SegmentWriter> w;
                 int rc;
                 {
                     // Safe without the GIL: only C++ strings and the new file; prefaulting a
                     // segment of megabytes is worth letting other threads run.
                     py::gil_scoped_release nogil;
                     rc = SegmentWriter::create(dir, name, layout, {pid, start_ticks, segment_id}, &w);
                 }
                 if (rc != 0) raise_os_error(rc, dir + "/" + name);
                 return w;
             }),
             py::arg("dir"), py::arg("name"), py::arg("feature_dim"), py::arg("label_kind"),
             py::arg("metric_capacity"), py::arg("sample_capacity"), py::arg("pid"), py::arg("start_ticks"),
             py::arg("segment_id"))
        .def("close", &SegmentWriter::close, "Mark the segment closed, unmap it and release its lock.")
        .def("abandon", &SegmentWriter::abandon, "In a forked child: drop the mapping without touching the file.")
        .def_property_readonly("is_open", &SegmentWriter::is_open)
        .def_property_readonly("records", &SegmentWriter::records)
        .def_property_readonly("samples", &SegmentWriter::samples)
        .def_property_readonly("file_size", [](const SegmentWriter& w) { return w.layout().file_size(); })
        .def("_address", [](SegmentWriter& w) { return reinterpret_cast<std::uintptr_t>(&w); },
             "Address of the C++ object, for vortex._fast_shm (which keeps this owner alive).");

    py::class_<SegmentReader>(m, "ShmReader", "Reader of a worker's shared-memory segment (see vortex.shm).")
        .def(py::init<std::string>(), py::arg("path"))
        .def_property_readonly("path", &SegmentReader::path)
        .def("info", &info_dict, "The header's immutable fields.")
        .def("counters",
             [](const SegmentReader& r) {
                 const auto c = r.counters();
                 return py::make_tuple(c.metric_begun, c.metric_count, c.sample_count, c.closed);
             },
             "(metric_begun, metric_count, sample_count, closed) now.")
        .def("writer_alive", &SegmentReader::writer_alive)
        .def("lock_exclusive", &SegmentReader::lock_exclusive)
        .def("unlock", &SegmentReader::unlock)
        .def("read_metrics", &read_metrics, py::arg("cursor"), py::arg("max_n"),
             "(index, t_ns, latency_ms, confidence, error, request, version, next_cursor, lost)")
        .def("read_samples", &read_samples, py::arg("cursor"), py::arg("max_n"),
             "(seq, features, labels, confidence, error, timestamp, episode, worker, request, version, "
             "misclassified, nll, next_cursor, lost)")
        .def("aggregate", [](SegmentReader& r) { return aggregate_dict(r.aggregate()); })
        .def("verify_static",
             [](SegmentReader& r) {
                 Aggregate a;
                 {
                     // Safe without the GIL: reads the mapping under the reader's own mutex.
                     py::gil_scoped_release nogil;
                     a = r.verify_static();
                 }
                 return aggregate_dict(a);
             })
        .def_property_readonly("is_static", &SegmentReader::is_static)
        .def("close", &SegmentReader::close);
}
