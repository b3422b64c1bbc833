// Crash-safe replacement of a file's contents (plain C++17 + POSIX).
//
// The same protocol as vortex/_io.py: a temporary file ".vtx-<name>.XXXXXX.tmp" in the
// destination's directory, fully written and fsynced, renamed over the destination, then the
// directory fsynced. Doing all of it in one native call lets the binding release the GIL once
// instead of around each of the half-dozen syscalls: on a busy multi-threaded server every
// GIL re-acquisition is a forced hand-over that delays a request thread.
#pragma once

#include <cerrno>
#include <cstddef>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vortex {

// Returns 0 on success, else the errno of the first failing step (the temporary file is
// removed and the destination left untouched). `mode` < 0 keeps mkstemp's 0600.
inline int write_file_atomic(const std::string& path, const char* data, std::size_t n,
                             int mode) noexcept {
    const std::size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string tmpl = dir + "/.vtx-" + name + ".XXXXXX.tmp";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const int fd = mkstemps(buf.data(), 4);
    if (fd < 0) return errno;
    const std::string tmp(buf.data());
    auto fail = [&](int err) {
        ::close(fd);
        ::unlink(tmp.c_str());
        return err;
    };
    for (std::size_t done = 0; done < n;) {
        const ssize_t w = ::write(fd, data + done, n - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            return fail(errno);
        }
        done += static_cast<std::size_t>(w);
    }
    if (::fsync(fd) != 0) return fail(errno);
    if (mode >= 0 && ::fchmod(fd, static_cast<mode_t>(mode)) != 0) return fail(errno);
    if (::close(fd) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return err;
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        return err;
    }
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd < 0) return errno;
    const int rc = ::fsync(dfd) == 0 ? 0 : errno;
    ::close(dfd);
    return rc;
}

}  // namespace vortex
