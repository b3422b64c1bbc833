// The writer of a worker's shared-memory segment (plain C++17 + POSIX, no Python).
//
// One process writes a segment (its serving worker); any number of readers in other processes
// map the same file and read it without ever blocking the writer (shm_reader.hpp). The writer
// holds an exclusive flock on the file from before it has its public name until it closes or
// dies, which is how a reader knows, from the kernel, that nobody will write it again.
//
// Writing record n of the metric ring (record) — the order a reader relies on:
//   1. metric_begun = n + 1                      (relaxed)
//   2. slot.seq = 2n + 1                          (release: 1 is visible before it)
//   3. release fence; payload; slot.check         (a reader copying now fails its seq re-check)
//   4. slot.seq = 2n + 2                          (release: the record is complete)
//   5. the two histogram buckets += 1             (relaxed; single writer: load + store)
//   6. metric_count = n + 1                       (release: published)
// Pushing sample n of the sample ring: steps 2-4 on its slot, then sample_count = n + 1.
// The payload is copied with memcpy, not atomic words: a reader racing a write copies a mix and
// throws it away on its seq re-check (the classic seqlock; the C++ memory model calls such a
// race undefined, the compilers and CPUs Vortex builds for make it a plain copy).
// A writer killed anywhere leaves every record before n complete, record n torn (seq odd,
// ignored by readers) or complete, and the histograms counting exactly the complete records
// except possibly record n when its count was not yet published (the reader reconciles that:
// see SegmentReader::verify_static).
//
// Threads of the writing process are serialised by a process-local spinlock (uncontended under
// the GIL: one atomic exchange), so the segment has one writer whatever calls it.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include "atomic_file.hpp"
#include "log_buckets.hpp"
#include "metric_window.hpp"
#include "sample_ring.hpp"
#include "shm_layout.hpp"

namespace vortex::shm {

// Who writes a segment: the process (pid and kernel start time) and a random id.
struct Identity {
    std::uint64_t pid = 0;
    std::uint64_t start_ticks = 0;
    std::uint64_t segment_id = 0;
};

inline std::int64_t realtime_ns() noexcept {
    timespec ts;
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

class SegmentWriter {
public:
    SegmentWriter(const SegmentWriter&) = delete;
    SegmentWriter& operator=(const SegmentWriter&) = delete;
    ~SegmentWriter() { close(); }

    // Creates `dir`/`name`: a locked temporary file (the protocol of atomic_file.hpp, so a
    // creator killed half-way leaves a file remove_orphan_temps deletes), sized with
    // posix_fallocate (on tmpfs a full /dev/shm is ENOSPC here, not a SIGBUS on some later
    // write), mapped shared and prefaulted, its header written, then renamed to `name`: a
    // reader never sees a segment without its header, nor one its writer does not lock.
    // Returns 0 and sets *out, or the errno of the failed step (nothing left behind).
    static int create(const std::string& dir, const std::string& name, const Layout& layout,
                      const Identity& id, std::unique_ptr<SegmentWriter>* out) {
        if (!layout.valid()) return EINVAL;
        std::unique_ptr<SegmentWriter> w(new SegmentWriter(layout));
        std::string tmp;
        const int fd = create_locked_temp(dir, name, &tmp);
        if (fd < 0) return -fd;
        const std::size_t size = layout.file_size();
        void* base = MAP_FAILED;
        auto fail = [&](int err) {
            if (base != MAP_FAILED) ::munmap(base, size);
            ::close(fd);
            ::unlink(tmp.c_str());
            return err;
        };
        int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
        if (rc == EOPNOTSUPP || rc == EINVAL) rc = ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : errno;
        if (rc != 0) return fail(rc);
        base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (base == MAP_FAILED) return fail(errno);
        auto* bytes = static_cast<unsigned char*>(base);
        write_header(bytes, layout, id);
        if (::rename(tmp.c_str(), (dir + "/" + name).c_str()) != 0) return fail(errno);
        w->base_ = bytes;
        w->size_ = size;
        w->fd_ = fd;
        w->hist_ = &word_at(bytes, layout.hist_offset());
        w->metric_ring_ = bytes + layout.metric_offset();
        w->sample_ring_ = bytes + layout.sample_offset();
        *out = std::move(w);
        return 0;
    }

    // One validated request sample (callers check valid_latency/confidence/error, as for
    // MetricWindow::record); `failed`: the request failed (an HTTP 5xx), counted apart from
    // prediction errors; `request`, `version`: the worker's request number and the model
    // version that answered (kNoRequest, kNoVersion). Returns false, storing nothing, once the
    // writer is closed.
    bool record(double latency_ms, double confidence, double error, bool failed = false,
                std::int64_t request = kNoRequest, std::int64_t version = kNoVersion) noexcept {
        const std::int64_t t = monotonic_ns();
        const double seconds = latency_ms / 1000.0;  // correctly rounded: 5 ms is exactly 0.005
        const std::size_t li = buckets::bucket_index(seconds);
        const std::size_t ci = buckets::bucket_index(confidence);
        std::lock_guard<SpinLock> g(lock_);
        if (base_ == nullptr) return false;
        const std::uint64_t n = metric_next_;
        lat_sum_ += seconds;
        conf_sum_ += confidence;
        if (error == error) {
            err_sum_ += error;
            ++err_count_;
        }
        failed_count_ += failed;
        lat_check_ += kBucketWeight[li];
        conf_check_ += kBucketWeight[ci];
        const MetricPayload p{t,         latency_ms, confidence, error,         request,    version,
                              lat_sum_,  conf_sum_,  err_sum_,   err_count_,    failed_count_, lat_check_,
                              conf_check_};
        word_at(base_, kMetricBegunAt).store(n + 1, std::memory_order_relaxed);
        unsigned char* slot = metric_ring_ + metric_head_ * kMetricSlotSize;
        begin_slot(slot, n);
        std::memcpy(slot + kSlotWords, &p, sizeof p);
        end_slot(slot, n, checksum64(reinterpret_cast<const unsigned char*>(&p), sizeof p, n));
        bump(hist_ + li);
        bump(hist_ + buckets::kBuckets + ci);
        word_at(base_, kMetricCountAt).store(n + 1, std::memory_order_release);
        metric_next_ = n + 1;
        if (++metric_head_ == layout_.metric_capacity) metric_head_ = 0;  // no division per record
        return true;
    }

    // One sample; validated here like SampleRing::push (std::invalid_argument naming the bad
    // value, nothing stored). `label` points at an int64 or a float32 (label_kind); `origin`:
    // the request it labels (its figures checked by the caller). Returns its seq (0, 1, ...
    // within this segment), or -1 once the writer is closed.
    std::int64_t push(const float* features, const void* label, double confidence, double error,
                      double timestamp, std::int64_t episode, const Origin& origin = Origin{}) {
        const LabelKind kind = static_cast<LabelKind>(layout_.label_kind);
        check_sample_row(layout_.feature_dim, kind, features, label, confidence, error, timestamp);
        SampleHead head{};
        head.timestamp = timestamp;
        head.episode = episode;
        std::memcpy(head.label, label, kind == LabelKind::Int64 ? 8 : 4);
        head.confidence = static_cast<float>(confidence);
        head.error = static_cast<float>(error);
        head.worker = origin.worker;
        head.request = origin.request;
        head.version = origin.version;
        head.misclassified = origin.misclassified;
        head.nll = origin.nll;
        const std::size_t feature_bytes = layout_.feature_dim * sizeof(float);
        std::lock_guard<SpinLock> g(lock_);
        if (base_ == nullptr) return -1;
        const std::uint64_t n = sample_next_;
        const std::size_t slot_size = layout_.sample_slot();
        unsigned char* slot = sample_ring_ + sample_head_ * slot_size;
        begin_slot(slot, n);
        std::memcpy(slot + kSlotWords, &head, sizeof head);
        std::memcpy(slot + kSlotWords + sizeof head, features, feature_bytes);  // padding stays 0
        end_slot(slot, n, checksum64(slot + kSlotWords, slot_size - kSlotWords, n));
        word_at(base_, kSampleCountAt).store(n + 1, std::memory_order_release);
        sample_next_ = n + 1;
        if (++sample_head_ == layout_.sample_capacity) sample_head_ = 0;
        return static_cast<std::int64_t>(n);
    }

    // Marks the segment closed (a clean exit, as opposed to a crash), unmaps it and releases
    // the lock: from then on readers treat it as a dead worker's, to read to its end and fold.
    void close() noexcept {
        std::lock_guard<SpinLock> g(lock_);
        if (base_ == nullptr) return;
        word_at(base_, kClosedAt).store(kClosedMark, std::memory_order_release);
        release();
    }

    // In a child forked after the segment was created: drop this process's mapping and its
    // copy of the descriptor without touching the file. The parent's lock stays (it is on the
    // open file description the parent still holds) and the child can no longer write.
    void abandon() noexcept {
        std::lock_guard<SpinLock> g(lock_);
        if (base_ == nullptr) return;
        release();
    }

    bool is_open() const noexcept { return base_ != nullptr; }
    const Layout& layout() const noexcept { return layout_; }
    std::uint64_t records() const noexcept { return metric_next_; }
    std::uint64_t samples() const noexcept { return sample_next_; }

private:
    explicit SegmentWriter(const Layout& layout) : layout_(layout) {}

    static void write_header(unsigned char* base, const Layout& layout, const Identity& id) noexcept {
        HeaderInfo h{};
        std::memcpy(h.magic, kMagic, sizeof h.magic);
        h.version = kVersion;
        h.header_size = kHeaderSize;
        h.file_size = layout.file_size();
        h.feature_dim = static_cast<std::uint32_t>(layout.feature_dim);
        h.label_kind = static_cast<std::uint32_t>(layout.label_kind);
        h.metric_capacity = layout.metric_capacity;
        h.sample_capacity = layout.sample_capacity;
        h.metric_slot_size = kMetricSlotSize;
        h.sample_slot_size = static_cast<std::uint32_t>(layout.sample_slot());
        h.hist_offset = layout.hist_offset();
        h.metric_offset = layout.metric_offset();
        h.sample_offset = layout.sample_offset();
        h.bucket_first_decade = buckets::kFirstDecade;
        h.bucket_decades = buckets::kDecades;
        h.bucket_per_decade = buckets::kPerDecade;
        h.bucket_count = buckets::kBuckets;
        h.writer_pid = id.pid;
        h.writer_start_ticks = id.start_ticks;
        h.created_unix_ns = realtime_ns();
        h.created_mono_ns = monotonic_ns();
        h.segment_id = id.segment_id;
        std::memcpy(base, &h, sizeof h);
        const std::uint64_t check = checksum64(base, kHeaderCheckAt, 0);
        std::memcpy(base + kHeaderCheckAt, &check, sizeof check);
    }

    // Steps 2-3 of the protocol: the odd seq (a release store: a reader that sees it also sees
    // metric_begun and the previous record's count), then a fence so that no payload store is
    // seen before it.
    static void begin_slot(unsigned char* slot, std::uint64_t n) noexcept {
        word_at(slot, 0).store(seq_writing(n), std::memory_order_release);
        std::atomic_thread_fence(std::memory_order_release);
    }

    // Step 3's checksum (of the payload now in place) and step 4.
    static void end_slot(unsigned char* slot, std::uint64_t n, std::uint64_t check) noexcept {
        word_at(slot, 8).store(check, std::memory_order_relaxed);
        word_at(slot, 0).store(seq_done(n), std::memory_order_release);
    }

    // One more in a counter only this process writes: a plain load and store, no locked add.
    static void bump(std::atomic<std::uint64_t>* counter) noexcept {
        counter->store(counter->load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }

    void release() noexcept {  // lock_ held
        ::munmap(base_, size_);
        ::close(fd_);  // drops this descriptor's reference to the flock'ed file description
        base_ = nullptr;
        hist_ = nullptr;
    }

    unsigned char* base_ = nullptr;
    std::size_t size_ = 0;
    int fd_ = -1;
    const Layout layout_;
    std::atomic<std::uint64_t>* hist_ = nullptr;  // latency buckets, then confidence buckets
    unsigned char* metric_ring_ = nullptr;
    unsigned char* sample_ring_ = nullptr;
    std::uint64_t metric_head_ = 0;  // slot of the next record: metric_next_ % capacity
    std::uint64_t sample_head_ = 0;
    SpinLock lock_;
    std::uint64_t metric_next_ = 0;
    std::uint64_t sample_next_ = 0;
    double lat_sum_ = 0.0;  // running totals and histogram checks, copied into every record
    double conf_sum_ = 0.0;
    double err_sum_ = 0.0;
    std::uint64_t err_count_ = 0;
    std::uint64_t failed_count_ = 0;
    std::uint64_t lat_check_ = 0;
    std::uint64_t conf_check_ = 0;
};

}  // namespace vortex::shm
