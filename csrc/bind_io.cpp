// Binding of csrc/atomic_file.hpp.
#include "pybind11.hpp"

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "atomic_file.hpp"

namespace {

using KeyTuple = std::tuple<std::uint64_t, std::int64_t, std::int64_t>;

vortex::FileKey to_key(const KeyTuple& t) { return {std::get<0>(t), std::get<1>(t), std::get<2>(t)}; }

std::pair<const char*, std::size_t> bytes_view(const py::bytes& data) {
    char* ptr = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(data.ptr(), &ptr, &n) != 0) throw py::error_already_set();
    return {ptr, static_cast<std::size_t>(n)};
}

}  // namespace

void bind_io(py::module_& m) {
    m.def(
        "write_file_atomic",
        [](const std::string& path, const py::bytes& data, int mode) {
            const auto [ptr, n] = bytes_view(data);
            // Safe without the GIL: `data` is an immutable bytes object the caller holds a
            // reference to for the whole call, and the C++ side touches no Python object.
            py::gil_scoped_release release;
            return vortex::write_file_atomic(path, ptr, n, mode);
        },
        py::arg("path"), py::arg("data"), py::arg("mode") = -1,
        "Atomically replaces `path` with `data`; returns 0 or the errno of the failed step.");
    m.def(
        "append_if_unchanged",
        [](int lock_fd, const std::string& path, std::int64_t offset, const py::bytes& data,
           const std::vector<std::pair<std::string, KeyTuple>>& watched) {
            std::vector<std::pair<std::string, vortex::FileKey>> keys;
            keys.reserve(watched.size());
            for (const auto& [file, key] : watched) keys.emplace_back(file, to_key(key));
            const auto [ptr, n] = bytes_view(data);
            vortex::FileKey out;
            int rc;
            {
                py::gil_scoped_release release;  // as above: only C++ objects from here
                rc = vortex::append_if_unchanged(lock_fd, path, offset, ptr, n, keys, out);
            }
            return std::make_pair(rc, KeyTuple{out.ino, out.mtime_ns, out.size});
        },
        py::arg("lock_fd"), py::arg("path"), py::arg("offset"), py::arg("data"), py::arg("watched"),
        "Under an exclusive flock of `lock_fd`, if every (path, (ino, mtime_ns, size)) in "
        "`watched` is unchanged, writes `data` at `offset` of `path`, drops what followed and "
        "fdatasyncs; returns (0 | -1 if stale | errno, new key of `path`).");
}
