// Crash-safe file writes (plain C++17 + POSIX): replacing a file's contents, and appending a
// record to a log under a lock.
//
// Replacement follows the same protocol as src/vortex/_io.py: a temporary file
// ".vtx-<name>.<pid>-XXXXXX.tmp" in the destination's directory, flock'ed by its writer for its
// whole life, fully written and fsynced, renamed over the destination, then the directory
// fsynced. The pid and the lock let a later process tell the temporary file of a killed writer
// (removable) from one a live writer is filling (see remove_orphan_temps in _io.py). Doing all
// of it in one native call lets the binding release the GIL once instead of around each of the
// half-dozen syscalls: on a busy multi-threaded server every GIL re-acquisition is a forced
// hand-over that delays a request thread.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vortex {

// A piece of the new contents: the file is the concatenation of the chunks, in order.
struct Chunk {
    const char* data;
    std::size_t size;
};

// Creates the temporary file of a write of `name` in `dir` (".vtx-<name>.<pid>-XXXXXX.tmp",
// mode 0600, close-on-exec) and takes its exclusive flock, held until the descriptor is closed:
// it marks the file as a live writer's (the kernel releases it on a kill), which is how
// remove_orphan_temps in _io.py tells a killed writer's leftovers from a live one's. Returns
// the descriptor and the path in *tmp, or -errno (nothing left behind).
inline int create_locked_temp(const std::string& dir, const std::string& name, std::string* tmp) noexcept {
    std::string tmpl = dir + "/.vtx-" + name + "." + std::to_string(::getpid()) + "-XXXXXX.tmp";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const int fd = mkostemps(buf.data(), 4, O_CLOEXEC);
    if (fd < 0) return -errno;
    *tmp = buf.data();
    while (::flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            const int err = errno;
            ::close(fd);
            ::unlink(tmp->c_str());
            return -err;
        }
    }
    return fd;
}

// Returns 0 on success, else the errno of the first failing step (the temporary file is
// removed and the destination left untouched). `mode` < 0 keeps mkstemp's 0600.
inline int write_file_atomic(const std::string& path, const std::vector<Chunk>& chunks,
                             int mode) noexcept {
    const std::size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash == 0 ? 1 : slash);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    std::string tmp;
    const int fd = create_locked_temp(dir, name, &tmp);
    if (fd < 0) return -fd;
    auto fail = [&](int err) {
        ::close(fd);
        ::unlink(tmp.c_str());
        return err;
    };
    for (const Chunk& chunk : chunks) {
        for (std::size_t done = 0; done < chunk.size;) {
            const ssize_t w = ::write(fd, chunk.data + done, chunk.size - done);
            if (w < 0) {
                if (errno == EINTR) continue;
                return fail(errno);
            }
            done += static_cast<std::size_t>(w);
        }
    }
    if (::fsync(fd) != 0) return fail(errno);
    if (mode >= 0 && ::fchmod(fd, static_cast<mode_t>(mode)) != 0) return fail(errno);
    // Renamed while still open (and locked), so the temporary name never exists unlocked.
    if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(errno);
    if (::close(fd) != 0) return errno;
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd < 0) return errno;
    const int rc = ::fsync(dfd) == 0 ? 0 : errno;
    ::close(dfd);
    return rc;
}

// What a reader remembers of a file to notice that it changed: (inode, mtime, size); all zero
// for a missing file.
struct FileKey {
    std::uint64_t ino = 0;
    std::int64_t mtime_ns = 0;
    std::int64_t size = 0;
    bool operator==(const FileKey& o) const noexcept {
        return ino == o.ino && mtime_ns == o.mtime_ns && size == o.size;
    }
};

inline FileKey key_of(const struct stat& st) noexcept {
    return {static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
            static_cast<std::int64_t>(st.st_size)};
}

// Returned by append_if_unchanged when a watched file no longer has the caller's key.
constexpr int kStale = -1;

// Appends a record to a log file under the writers' lock, if nothing the caller read changed.
//
// Under an exclusive flock of `lock_fd`: if every file in `watched` still has the key the
// caller read it with, writes `data` at `offset` of `path` (the end of its last complete
// record: whatever follows is a torn write and is dropped), fdatasyncs it and stores its new
// key in `out`. Returns 0, kStale (nothing written: re-read and retry), or an errno. `path`
// must exist. This is optimistic concurrency in one GIL-free call: a writer that trusts its
// cached view pays for one lock round trip instead of a stat per file and a lock and unlock.
inline int append_if_unchanged(int lock_fd, const std::string& path, std::int64_t offset,
                               const char* data, std::size_t n,
                               const std::vector<std::pair<std::string, FileKey>>& watched,
                               FileKey& out) noexcept {
    while (::flock(lock_fd, LOCK_EX) != 0) {
        if (errno != EINTR) return errno;
    }
    const auto unlock_with = [lock_fd](int rc) {
        ::flock(lock_fd, LOCK_UN);
        return rc;
    };
    for (const auto& [file, expected] : watched) {
        struct stat st;
        FileKey now;
        if (::stat(file.c_str(), &st) == 0) {
            now = key_of(st);
        } else if (errno != ENOENT) {
            return unlock_with(errno);
        }
        if (!(now == expected)) return unlock_with(kStale);
    }
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return unlock_with(errno);
    const auto close_with = [&](int rc) {
        ::close(fd);
        return unlock_with(rc);
    };
    for (std::size_t done = 0; done < n;) {
        const ssize_t w = ::pwrite(fd, data + done, n - done, static_cast<off_t>(offset + done));
        if (w < 0) {
            if (errno == EINTR) continue;
            return close_with(errno);
        }
        done += static_cast<std::size_t>(w);
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) return close_with(errno);
    const auto end = static_cast<off_t>(offset + static_cast<std::int64_t>(n));
    if (st.st_size > end) {  // a torn tail was longer than the record that replaced it
        if (::ftruncate(fd, end) != 0 || ::fstat(fd, &st) != 0) return close_with(errno);
    }
    if (::fdatasync(fd) != 0) return close_with(errno);
    out = key_of(st);
    return unlock_with(::close(fd) == 0 ? 0 : errno);
}

}  // namespace vortex
