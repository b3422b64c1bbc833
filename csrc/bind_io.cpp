// Binding of csrc/atomic_file.hpp.
#include "pybind11.hpp"

#include <stdexcept>
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
        [](const std::string& path, const std::vector<py::buffer>& pieces, int mode) {
            std::vector<py::buffer_info> views;  // keep the exported buffers alive and pinned
            views.reserve(pieces.size());
            std::vector<vortex::Chunk> chunks;
            chunks.reserve(pieces.size());
            for (const py::buffer& piece : pieces) {
                views.push_back(piece.request());
                const py::buffer_info& v = views.back();
                if (!PyBuffer_IsContiguous(v.view(), 'C'))
                    throw std::invalid_argument("write_file_atomic: every piece must be a contiguous buffer");
                chunks.push_back({static_cast<const char*>(v.ptr), static_cast<std::size_t>(v.size * v.itemsize)});
            }
            int rc;
            {
                // Safe without the GIL: each piece is an exported buffer held by `views` (its
                // owner cannot resize or free it) and the C++ side touches no Python object.
                py::gil_scoped_release release;
                rc = vortex::write_file_atomic(path, chunks, mode);
            }
            return rc;  // `views` released here, with the GIL held again
        },
        py::arg("path"), py::arg("pieces"), py::arg("mode") = -1,
        "Atomically replaces `path` with the concatenation of `pieces` (buffers); returns 0 or "
        "the errno of the failed step.");
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
