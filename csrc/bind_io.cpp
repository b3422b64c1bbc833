// Binding of csrc/atomic_file.hpp.
#include "pybind11.hpp"

#include <string>

#include "atomic_file.hpp"

void bind_io(py::module_& m) {
    m.def(
        "write_file_atomic",
        [](const std::string& path, const py::bytes& data, int mode) {
            char* ptr = nullptr;
            Py_ssize_t n = 0;
            if (PyBytes_AsStringAndSize(data.ptr(), &ptr, &n) != 0) throw py::error_already_set();
            int err;
            {
                // Safe without the GIL: `data` is an immutable bytes object the caller holds a
                // reference to for the whole call, and the C++ side touches no Python object.
                py::gil_scoped_release release;
                err = vortex::write_file_atomic(path, ptr, static_cast<std::size_t>(n), mode);
            }
            return err;
        },
        py::arg("path"), py::arg("data"), py::arg("mode") = -1,
        "Atomically replaces `path` with `data`; returns 0 or the errno of the failed step.");
}
