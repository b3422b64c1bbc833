// A reader of a worker's shared-memory segment (plain C++17 + POSIX, no Python).
//
// Readers live in other processes than the writer (shm_writer.hpp) and never block it: they
// map the file read-only and copy what they need, checking each copy afterwards.
//
// Reader protocol, for record i of a ring (slot i % capacity):
//   s1 = slot.seq (acquire); copy check + payload; acquire fence; s2 = slot.seq
//   s1 == s2 == 2i+2  -> the copy is record i, whole (then its checksum must match, else the
//                        file is corrupt: a race cannot produce a stable seq with a bad sum)
//   seq < 2i+2        -> record i is not complete yet: stop here
//   seq > 2i+2        -> the writer lapped the reader: record j = seq/2-1 overwrote it, so every
//                        record <= j - capacity is gone; count them as lost and go on from there
// A reader learns how far the writer got from the published count (metric_count,
// sample_count) and reads from its cursor up to it, plus the one record after it when that
// record's slot is complete (a writer killed between completing a record and publishing it).
//
// A segment nobody writes any more (its flock is free) is checked whole once
// (verify_static): every slot's seq must be what the counters imply, every complete record must
// match its checksum, the histograms must count exactly the complete records. After that its
// figures are final.
//
// Thread safety: every public method takes the reader's mutex (close() included), so a read
// running without the GIL never finds the mapping gone. (One class, though long: the live
// protocol and the whole-file check share the ring geometry, the mapping and that mutex.)
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log_buckets.hpp"
#include "shm_layout.hpp"

namespace vortex::shm {

// The file is not a sound segment: what is wrong, and the byte offset where it was found.
class SegmentCorrupt : public std::runtime_error {
public:
    SegmentCorrupt(std::string path, const std::string& problem, std::size_t position)
        : std::runtime_error(problem), path(std::move(path)), position(position) {}
    std::string path;
    std::size_t position;
};

// A system call on the segment's file failed (open, fstat, pread, mmap, flock): its errno.
class SegmentOsError : public std::runtime_error {
public:
    SegmentOsError(int err, std::string path)
        : std::runtime_error(path + ": " + std::strerror(err)), err(err), path(std::move(path)) {}
    int err;
    std::string path;
};

// Counts and sums over a segment's metric records, and its two histograms.
struct Aggregate {
    std::array<std::uint64_t, buckets::kBuckets> latency{};     // seconds
    std::array<std::uint64_t, buckets::kBuckets> confidence{};
    std::uint64_t records = 0;  // metric records the sums below cover
    double latency_sum_s = 0.0;
    double confidence_sum = 0.0;
    double error_sum = 0.0;
    std::uint64_t error_count = 0;
    std::uint64_t failed_count = 0;  // requests that failed (an HTTP 5xx)
    std::uint64_t samples = 0;  // samples pushed
    std::int64_t newest_ns = 0;  // t_ns of the newest record the sums cover (0: none yet)
};

struct ReadResult {
    std::size_t n = 0;        // records copied out
    std::uint64_t next = 0;   // the cursor to read from next time
    std::uint64_t lost = 0;   // records overwritten before this reader got to them
};

struct Counters {
    std::uint64_t metric_begun = 0;
    std::uint64_t metric_count = 0;
    std::uint64_t sample_count = 0;
    bool closed = false;  // the writer closed it (a clean exit)
};

// Output columns of read_metrics, each with room for max_n values.
struct MetricColumns {
    std::int64_t* index;
    std::int64_t* t_ns;
    double* latency_ms;
    double* confidence;
    double* error;
    std::int64_t* request;
    std::int64_t* version;
};

// Output columns of read_samples, each with room for max_n rows.
struct SampleColumns {
    std::int64_t* seq;
    float* features;        // max_n x feature_dim
    unsigned char* labels;  // max_n x (8 for int64, 4 for float32)
    float* confidence;
    float* error;
    double* timestamp;
    std::int64_t* episode;
    std::uint64_t* worker;
    std::int64_t* request;
    std::int64_t* version;
    float* misclassified;
    float* nll;
};

class SegmentReader {
public:
    // Opens `path` and checks its header before mapping it: SegmentOsError for a file that
    // cannot be opened, SegmentCorrupt for one that is not a whole segment of this format.
    explicit SegmentReader(std::string path) : path_(std::move(path)) {
        fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd_ < 0) throw SegmentOsError(errno, path_);
        try {
            open_checked();
        } catch (...) {
            ::close(fd_);
            fd_ = -1;
            throw;
        }
        scratch_.resize(std::max(kMetricSlotSize, layout_.sample_slot()));
    }
    SegmentReader(const SegmentReader&) = delete;
    SegmentReader& operator=(const SegmentReader&) = delete;
    ~SegmentReader() { close(); }

    const std::string& path() const noexcept { return path_; }
    const HeaderInfo& info() const noexcept { return info_; }
    const Layout& layout() const noexcept { return layout_; }

    // True while a process holds the writer's lock (its writer, or a child it forked): the
    // segment may still change. False proves that nobody will write it again.
    bool writer_alive() {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        if (held_exclusive_) return false;
        if (flock_nb(LOCK_SH)) {
            ::flock(fd_, LOCK_UN);
            return false;
        }
        return true;
    }

    // Takes the file's lock exclusively (false if the writer or another reader holds it): while
    // held, no other reader folds or removes the segment. Released by unlock() or close().
    bool lock_exclusive() {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        if (!held_exclusive_) held_exclusive_ = flock_nb(LOCK_EX);
        return held_exclusive_;
    }
    void unlock() {
        std::lock_guard<std::mutex> g(mu_);
        if (held_exclusive_ && fd_ >= 0) ::flock(fd_, LOCK_UN);
        held_exclusive_ = false;
    }

    Counters counters() const {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        Counters c;
        c.metric_begun = word(kMetricBegunAt).load(std::memory_order_acquire);
        c.metric_count = word(kMetricCountAt).load(std::memory_order_acquire);
        c.sample_count = word(kSampleCountAt).load(std::memory_order_acquire);
        c.closed = word(kClosedAt).load(std::memory_order_acquire) == kClosedMark;
        return c;
    }

    // Copies metric records from `cursor` on (at most max_n) into `out`.
    ReadResult read_metrics(std::uint64_t cursor, std::size_t max_n, const MetricColumns& out) {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        return read_ring(metric_ring(), cursor, max_n, [&](std::size_t k, std::uint64_t i, const unsigned char* p) {
            MetricPayload m;
            std::memcpy(&m, p, sizeof m);
            out.index[k] = static_cast<std::int64_t>(i);
            out.t_ns[k] = m.t_ns;
            out.latency_ms[k] = m.latency_ms;
            out.confidence[k] = m.confidence;
            out.error[k] = m.error;
            out.request[k] = m.request;
            out.version[k] = m.version;
        });
    }

    // Copies samples from `cursor` on (at most max_n) into `out`.
    ReadResult read_samples(std::uint64_t cursor, std::size_t max_n, const SampleColumns& out) {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        const std::size_t dim = layout_.feature_dim;
        const std::size_t label_size = layout_.label_kind == 0 ? 8 : 4;
        return read_ring(sample_ring(), cursor, max_n, [&](std::size_t k, std::uint64_t i, const unsigned char* p) {
            SampleHead h;
            std::memcpy(&h, p, sizeof h);
            out.seq[k] = static_cast<std::int64_t>(i);
            std::memcpy(out.features + k * dim, p + sizeof h, dim * sizeof(float));
            std::memcpy(out.labels + k * label_size, h.label, label_size);
            out.confidence[k] = h.confidence;
            out.error[k] = h.error;
            out.timestamp[k] = h.timestamp;
            out.episode[k] = h.episode;
            out.worker[k] = h.worker;
            out.request[k] = h.request;
            out.version[k] = h.version;
            out.misclassified[k] = h.misclassified;
            out.nll[k] = h.nll;
        });
    }

    // The histograms and totals now. While the writer runs, the two histograms count at least
    // the published records and at most the ones begun (a record in flight may be in one and
    // not yet the other), and the sums are those of the newest published record. After
    // verify_static, the exact final figures.
    Aggregate aggregate() {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        if (static_) return final_;
        Aggregate a;
        const std::uint64_t published = word(kMetricCountAt).load(std::memory_order_acquire);
        const std::uint64_t s_lat = copy_hist(0, a.latency.data());
        const std::uint64_t s_conf = copy_hist(buckets::kBuckets, a.confidence.data());
        std::atomic_thread_fence(std::memory_order_acquire);
        const std::uint64_t begun = word(kMetricBegunAt).load(std::memory_order_relaxed);
        for (const std::uint64_t s : {s_lat, s_conf})
            if (s < published || s > begun)
                throw corrupt("a histogram counts " + std::to_string(s) + " records, outside the " +
                                  std::to_string(published) + ".." + std::to_string(begun) +
                                  " the writer's counters allow",
                              layout_.hist_offset());
        newest_totals(published, a);
        a.samples = word(kSampleCountAt).load(std::memory_order_acquire);
        return a;
    }

    // Checks the whole segment of a writer that is gone (writer_alive() false) and returns its
    // final figures, the histograms reconciled with the records (see the top of the file);
    // SegmentCorrupt on the first inconsistency. From then on aggregate() returns them.
    Aggregate verify_static() {
        std::lock_guard<std::mutex> g(mu_);
        require_open();
        if (static_) return final_;
        const std::uint64_t begun = word(kMetricBegunAt).load(std::memory_order_acquire);
        const std::uint64_t published = word(kMetricCountAt).load(std::memory_order_acquire);
        const std::uint64_t samples = word(kSampleCountAt).load(std::memory_order_acquire);
        const std::uint64_t closed = word(kClosedAt).load(std::memory_order_acquire);
        check_count(published, kMetricCountAt);
        check_count(begun, kMetricBegunAt);
        check_count(samples, kSampleCountAt);
        if (closed != 0 && closed != kClosedMark)
            throw corrupt("the closed mark holds " + hex(closed), kClosedAt);
        if (begun != published && begun != published + 1)
            throw corrupt("begun count " + std::to_string(begun) + " and published count " +
                              std::to_string(published) + " differ by more than the record in flight",
                          kMetricBegunAt);
        const bool in_flight = begun == published + 1;
        if (closed && in_flight) throw corrupt("a closed segment has a record in flight", kMetricBegunAt);
        const std::uint64_t records = check_static_ring(metric_ring(), published, in_flight);
        const std::uint64_t pushed = check_static_ring(sample_ring(), samples, !closed);

        Aggregate a;
        a.records = records;
        a.samples = pushed;
        const std::uint64_t s_lat = copy_hist(0, a.latency.data());
        const std::uint64_t s_conf = copy_hist(buckets::kBuckets, a.confidence.data());
        MetricPayload last{};
        if (records > 0) {
            std::memcpy(&last, slot_of(metric_ring(), records - 1) + kSlotWords, sizeof last);
            a.latency_sum_s = last.latency_sum_s;
            a.confidence_sum = last.confidence_sum;
            a.error_sum = last.error_sum;
            a.error_count = last.error_count;
            a.failed_count = last.failed_count;
            a.newest_ns = last.t_ns;
        }
        // A record completed but not published may be missing from either histogram (the
        // writer died between step 4 and 6): add it where it is missing.
        const bool unpublished = records == published + 1;
        const std::size_t hist_at = layout_.hist_offset();
        reconcile(a.latency, s_lat, records, unpublished, buckets::bucket_index(last.latency_ms / 1000.0),
                  last.latency_hist_check, hist_at);
        reconcile(a.confidence, s_conf, records, unpublished, buckets::bucket_index(last.confidence),
                  last.confidence_hist_check, hist_at + buckets::kBuckets * 8);
        final_ = a;
        static_ = true;
        return a;
    }

    bool is_static() const {
        std::lock_guard<std::mutex> g(mu_);
        return static_;
    }

    void close() noexcept {
        std::lock_guard<std::mutex> g(mu_);
        if (base_ != nullptr) ::munmap(base_, size_);
        base_ = nullptr;
        if (fd_ >= 0) ::close(fd_);  // drops our lock, if any
        fd_ = -1;
        held_exclusive_ = false;
    }

private:
    struct Ring {
        std::size_t offset;
        std::uint64_t capacity;
        std::size_t slot_size;
        std::size_t count_at;  // the published count
        std::size_t bound_at;  // a count every seq seen must stay below (+ bound_slack)
        std::uint64_t bound_slack;
    };
    Ring metric_ring() const {
        // record j's seq is stored after metric_begun = j + 1
        return {layout_.metric_offset(), layout_.metric_capacity, kMetricSlotSize, kMetricCountAt, kMetricBegunAt, 0};
    }
    Ring sample_ring() const {
        // sample j's seq is stored after sample_count = j (the previous push's publication)
        return {layout_.sample_offset(), layout_.sample_capacity, layout_.sample_slot(), kSampleCountAt, kSampleCountAt, 1};
    }
    const unsigned char* slot_of(const Ring& r, std::uint64_t i) const noexcept {
        return base_ + r.offset + (i % r.capacity) * r.slot_size;
    }
    const std::atomic<std::uint64_t>& word(std::size_t offset) const noexcept { return word_at(base_, offset); }

    SegmentCorrupt corrupt(const std::string& problem, std::size_t position) const {
        return SegmentCorrupt(path_, problem, position);
    }
    static std::string hex(std::uint64_t v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
        return buf;
    }

    void require_open() const {
        if (base_ == nullptr) throw std::invalid_argument("segment reader of " + path_ + " is closed");
    }

    // A count no writer reaches (2^62 records) is damage, and would overflow 2n + 2.
    std::uint64_t check_count(std::uint64_t count, std::size_t at) const {
        if (count >= (std::uint64_t(1) << 62)) throw corrupt("count " + std::to_string(count) + " is impossible", at);
        return count;
    }

    bool flock_nb(int op) {
        for (;;) {
            if (::flock(fd_, op | LOCK_NB) == 0) return true;
            if (errno == EWOULDBLOCK) return false;
            if (errno != EINTR) throw SegmentOsError(errno, path_);
        }
    }

    void open_checked() {
        struct stat st;
        if (::fstat(fd_, &st) != 0) throw SegmentOsError(errno, path_);
        if (!S_ISREG(st.st_mode)) throw corrupt("not a regular file", 0);
        const auto file_size = static_cast<std::uint64_t>(st.st_size);
        if (file_size < kHeaderSize)
            throw corrupt("truncated to " + std::to_string(file_size) + " bytes, less than a header", file_size);
        unsigned char head[kHeaderSize];
        for (std::size_t got = 0; got < kHeaderSize;) {
            const ssize_t r = ::pread(fd_, head + got, kHeaderSize - got, static_cast<off_t>(got));
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) throw SegmentOsError(errno, path_);
            if (r == 0) throw corrupt("truncated while being read", got);
            got += static_cast<std::size_t>(r);
        }
        std::memcpy(&info_, head, sizeof info_);
        if (std::memcmp(info_.magic, kMagic, sizeof kMagic) != 0)
            throw corrupt("not a Vortex shared-memory segment (bad magic)", 0);
        if (info_.version != kVersion)
            throw corrupt("format version " + std::to_string(info_.version) + ", this Vortex reads version " +
                              std::to_string(kVersion),
                          offsetof(HeaderInfo, version));
        std::uint64_t check;
        std::memcpy(&check, head + kHeaderCheckAt, sizeof check);
        if (checksum64(head, kHeaderCheckAt, 0) != check) throw corrupt("the header fails its checksum", kHeaderCheckAt);
        for (std::size_t i = kHeaderCheckAt + 8; i < kHeaderSize; ++i) {
            const bool counter = i >= kMetricBegunAt && i < kClosedAt + 8;
            if (!counter && head[i] != 0) throw corrupt("reserved header byte is not zero", i);
        }
        // A checksummed header written by this format can still describe a shape this build
        // cannot read (another bucket scheme); and the file must be exactly as long as it says.
        layout_.feature_dim = info_.feature_dim;
        layout_.label_kind = static_cast<int>(info_.label_kind);
        layout_.metric_capacity = info_.metric_capacity;
        layout_.sample_capacity = info_.sample_capacity;
        if (info_.header_size != kHeaderSize || !layout_.valid() || info_.metric_slot_size != kMetricSlotSize ||
            info_.sample_slot_size != layout_.sample_slot() || info_.hist_offset != layout_.hist_offset() ||
            info_.metric_offset != layout_.metric_offset() || info_.sample_offset != layout_.sample_offset() ||
            info_.file_size != layout_.file_size())
            throw corrupt("the header's layout is inconsistent", offsetof(HeaderInfo, file_size));
        if (info_.bucket_first_decade != buckets::kFirstDecade || info_.bucket_decades != buckets::kDecades ||
            info_.bucket_per_decade != buckets::kPerDecade || info_.bucket_count != buckets::kBuckets)
            throw corrupt("histogram buckets of another scheme", offsetof(HeaderInfo, bucket_first_decade));
        if (file_size != info_.file_size)
            throw corrupt("the file is " + std::to_string(file_size) + " bytes, its header says " +
                              std::to_string(info_.file_size),
                          std::min(file_size, static_cast<std::uint64_t>(info_.file_size)));
        void* base = ::mmap(nullptr, info_.file_size, PROT_READ, MAP_SHARED, fd_, 0);
        if (base == MAP_FAILED) throw SegmentOsError(errno, path_);
        base_ = static_cast<unsigned char*>(base);
        size_ = info_.file_size;
    }

    template <class Emit>
    ReadResult read_ring(const Ring& r, std::uint64_t cursor, std::size_t max_n, Emit emit) {
        const std::uint64_t cap = r.capacity;
        const std::size_t payload = r.slot_size - kSlotWords;
        std::uint64_t published = word(r.count_at).load(std::memory_order_acquire);
        check_count(published, r.count_at);
        if (cursor > published + 1)
            throw std::invalid_argument("cursor " + std::to_string(cursor) + " is beyond the writer's count " +
                                        std::to_string(published));
        ReadResult res;
        std::uint64_t i = cursor;
        if (published > cap && i < published - cap) {
            res.lost += published - cap - i;
            i = published - cap;
        }
        std::uint64_t end = published + 1;  // + the completed, unpublished record, if any
        unsigned char* scratch = scratch_.data();
        while (i < end && res.n < max_n) {
            const unsigned char* slot = slot_of(r, i);
            const std::atomic<std::uint64_t>& seq = word_at(slot, 0);
            std::uint64_t s = seq.load(std::memory_order_acquire);
            if (s == seq_done(i)) {
                std::memcpy(scratch, slot + 8, 8 + payload);  // check + payload
                std::atomic_thread_fence(std::memory_order_acquire);
                if (seq.load(std::memory_order_relaxed) == s) {
                    std::uint64_t check;
                    std::memcpy(&check, scratch, 8);
                    if (checksum64(scratch + 8, payload, i) != check)
                        throw corrupt("record " + std::to_string(i) + " fails its checksum",
                                      static_cast<std::size_t>(slot - base_));
                    emit(res.n, i, scratch + 8);
                    ++res.n;
                    ++i;
                    continue;
                }
                s = seq.load(std::memory_order_acquire);  // overwritten while we copied
            }
            if (s < seq_done(i)) {
                if (i < published)
                    throw corrupt("record " + std::to_string(i) + " is published but its slot holds seq " +
                                      std::to_string(s),
                                  static_cast<std::size_t>(slot - base_));
                break;  // record i is not complete yet
            }
            // The writer lapped us: record j is in this slot, so records <= j - cap are gone.
            const std::uint64_t j = seq_record(s);
            const std::uint64_t bound = check_count(word(r.bound_at).load(std::memory_order_acquire), r.bound_at) +
                                        r.bound_slack;
            if (j % cap != i % cap || j >= bound)
                throw corrupt("slot of record " + std::to_string(i) + " holds seq " + std::to_string(s) +
                                  ", not a later record of this slot",
                              static_cast<std::size_t>(slot - base_));
            res.lost += j - cap + 1 - i;
            i = j - cap + 1;
            published = check_count(word(r.count_at).load(std::memory_order_acquire), r.count_at);
            end = std::max(end, published + 1);
        }
        res.next = i;
        return res;
    }

    // Every slot of a ring nobody writes against `published`: returns the number of complete
    // records (published, or one more when the writer died between completing a record and
    // publishing it). `may_be_in_flight`: the writer may have died while writing record
    // `published` (its slot odd) or after completing it.
    std::uint64_t check_static_ring(const Ring& r, std::uint64_t published, bool may_be_in_flight) const {
        const std::uint64_t cap = r.capacity;
        const std::size_t payload = r.slot_size - kSlotWords;
        const std::uint64_t next_seq = word_at(slot_of(r, published), 0).load(std::memory_order_acquire);
        bool torn = false;
        std::uint64_t complete = published;
        if (may_be_in_flight && next_seq == seq_writing(published)) torn = true;
        if (may_be_in_flight && next_seq == seq_done(published)) complete = published + 1;
        for (std::uint64_t k = 0; k < cap; ++k) {
            const unsigned char* slot = base_ + r.offset + k * r.slot_size;
            const auto at = static_cast<std::size_t>(slot - base_);
            const std::uint64_t s = word_at(slot, 0).load(std::memory_order_relaxed);
            if (torn && k == published % cap) continue;  // half-written: never read
            if (k >= complete) {  // never written (record k would be its first): all zero
                for (std::size_t b = 0; b < r.slot_size; ++b)
                    if (slot[b] != 0) throw corrupt("a slot never written is not zero", at + b);
                continue;
            }
            const std::uint64_t last = complete - 1;
            const std::uint64_t j = last - ((last % cap + cap - k) % cap);  // newest record of slot k
            if (s != seq_done(j))
                throw corrupt("slot " + std::to_string(k) + " holds seq " + std::to_string(s) + ", the count " +
                                  std::to_string(published) + " implies " + std::to_string(seq_done(j)),
                              at);
            std::uint64_t check;
            std::memcpy(&check, slot + 8, 8);
            if (checksum64(slot + kSlotWords, payload, j) != check)
                throw corrupt("record " + std::to_string(j) + " fails its checksum", at);
        }
        return complete;
    }

    std::uint64_t copy_hist(std::size_t first, std::uint64_t* out) const noexcept {
        std::uint64_t sum = 0;
        const std::size_t at = layout_.hist_offset() + first * 8;
        for (std::size_t b = 0; b < buckets::kBuckets; ++b) {
            out[b] = word(at + b * 8).load(std::memory_order_relaxed);
            sum += out[b];
        }
        return sum;
    }

    // A histogram of a writer that is gone must count exactly the `records` complete records,
    // and match their check word (the weighted sum, see kBucketWeight); one that misses only
    // the last record, completed but not published, gets it added (its bucket: `last_bucket`).
    void reconcile(std::array<std::uint64_t, buckets::kBuckets>& counts, std::uint64_t sum, std::uint64_t records,
                   bool unpublished, std::size_t last_bucket, std::uint64_t check, std::size_t at) const {
        if (unpublished && sum + 1 == records) {
            ++counts[last_bucket];
            ++sum;
        }
        std::uint64_t weighted = 0;
        for (std::size_t b = 0; b < buckets::kBuckets; ++b) weighted += counts[b] * kBucketWeight[b];
        if (sum != records)
            throw corrupt("a histogram counts " + std::to_string(sum) + " records, the ring holds " +
                              std::to_string(records),
                          at);
        if (weighted != check) throw corrupt("a histogram does not match the buckets of its records", at);
    }

    // Totals of the newest published record, read under its seqlock (retried if the writer
    // overwrote it meanwhile, which needs a whole lap of the ring).
    void newest_totals(std::uint64_t published, Aggregate& a) {
        const Ring r = metric_ring();
        for (;;) {
            a.records = published;
            if (published == 0) return;
            const unsigned char* slot = slot_of(r, published - 1);
            const std::atomic<std::uint64_t>& seq = word_at(slot, 0);
            const std::uint64_t s = seq.load(std::memory_order_acquire);
            MetricPayload p;
            std::uint64_t check;
            std::memcpy(&check, slot + 8, 8);
            std::memcpy(&p, slot + kSlotWords, sizeof p);
            std::atomic_thread_fence(std::memory_order_acquire);
            if (s == seq_done(published - 1) && seq.load(std::memory_order_relaxed) == s) {
                if (checksum64(reinterpret_cast<const unsigned char*>(&p), sizeof p, published - 1) != check)
                    throw corrupt("record " + std::to_string(published - 1) + " fails its checksum",
                                  static_cast<std::size_t>(slot - base_));
                a.latency_sum_s = p.latency_sum_s;
                a.confidence_sum = p.confidence_sum;
                a.error_sum = p.error_sum;
                a.error_count = p.error_count;
                a.failed_count = p.failed_count;
                a.newest_ns = p.t_ns;
                return;
            }
            if (s < seq_done(published - 1))
                throw corrupt("record " + std::to_string(published - 1) + " is published but its slot holds seq " +
                                  std::to_string(s),
                              static_cast<std::size_t>(slot - base_));
            published = word(kMetricCountAt).load(std::memory_order_acquire);
        }
    }

    std::string path_;
    int fd_ = -1;
    unsigned char* base_ = nullptr;
    std::size_t size_ = 0;
    HeaderInfo info_{};
    Layout layout_;
    std::vector<unsigned char> scratch_;
    bool held_exclusive_ = false;
    bool static_ = false;
    Aggregate final_;
    mutable std::mutex mu_;
};

}  // namespace vortex::shm
