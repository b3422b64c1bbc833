// The layout of a worker's shared-memory segment, shared by its writer and its readers
// (plain C++17, no Python). docs/SHM.md describes the format for people; this file is its
// definition.
//
//   offset 0      Header (256 bytes): immutable part (checksummed), then the writer's counters
//   hist_offset   two histograms of kBuckets uint64 counts: latency (seconds), confidence
//   metric_offset metric ring: metric_capacity slots of 120 bytes
//   sample_offset sample ring: sample_capacity slots of 80 + 4*feature_dim bytes (8-aligned)
//
// Every slot starts with two words: `seq` (its seqlock: 0 never written, 2n+1 while record n is
// being written, 2n+2 once it is complete) and `check` (checksum64 of the payload, seeded with
// n). Record n lives in slot n % capacity. Native byte order (little-endian on every platform
// Vortex builds for); std::atomic<uint64_t> words are placed directly in the mapping, which is
// sound because they are lock-free (asserted below) and so hold no hidden state.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "log_buckets.hpp"

namespace vortex::shm {

static_assert(std::atomic<std::uint64_t>::is_always_lock_free,
              "shared-memory counters need lock-free 64-bit atomics");

inline constexpr char kMagic[8] = {'V', 'T', 'X', 'S', 'H', 'M', 'S', 'G'};
// 2: failed_count in the metric payload; 3: the request's identity and model version in both
// payloads (so the control plane links a feedback to exactly its request)
inline constexpr std::uint32_t kVersion = 3;
inline constexpr std::size_t kHeaderSize = 256;
inline constexpr std::uint64_t kClosedMark = 0x21216465736f6c63ull;  // "closed!!"
inline constexpr std::size_t kMaxFeatureDim = std::size_t(1) << 20;
inline constexpr std::uint64_t kMaxCapacity = std::uint64_t(1) << 32;

// The immutable part, written once before the segment gets its public name.
struct HeaderInfo {
    char magic[8];
    std::uint32_t version;
    std::uint32_t header_size;
    std::uint64_t file_size;
    std::uint32_t feature_dim;
    std::uint32_t label_kind;  // 0 int64, 1 float32 (vortex::LabelKind)
    std::uint64_t metric_capacity;
    std::uint64_t sample_capacity;
    std::uint32_t metric_slot_size;
    std::uint32_t sample_slot_size;
    std::uint64_t hist_offset;
    std::uint64_t metric_offset;
    std::uint64_t sample_offset;
    std::int32_t bucket_first_decade;  // the bucket scheme (log_buckets.hpp), so a reader built
    std::uint32_t bucket_decades;      // with another one refuses instead of merging wrongly
    std::uint32_t bucket_per_decade;
    std::uint32_t bucket_count;
    std::uint64_t writer_pid;
    std::uint64_t writer_start_ticks;  // /proc/<pid>/stat field 22: with the pid, names a process
    std::int64_t created_unix_ns;
    std::int64_t created_mono_ns;      // CLOCK_MONOTONIC, the clock of the metric timestamps
    std::uint64_t segment_id;          // random: tells two segments of one name apart
};
static_assert(sizeof(HeaderInfo) == 136);

// Byte offsets of the header's words.
inline constexpr std::size_t kHeaderCheckAt = 136;   // checksum64 of bytes [0, 136)
inline constexpr std::size_t kMetricBegunAt = 192;   // own cache line: the writer's counters
inline constexpr std::size_t kMetricCountAt = 200;
inline constexpr std::size_t kSampleCountAt = 208;
inline constexpr std::size_t kClosedAt = 216;
// [144, 192) and [224, 256) are reserved and zero.

struct MetricPayload {
    std::int64_t t_ns;  // CLOCK_MONOTONIC
    double latency_ms;
    double confidence;
    double error;  // NaN: no ground truth
    std::int64_t request;  // the worker's request number (kNoRequest: never reached the model)
    std::int64_t version;  // the model version that answered (kNoVersion: none, or unversioned)
    // Totals over records 0..n, so a reader gets totals consistent with the newest complete
    // record from that record alone (a header total could not say which records it counts).
    double latency_sum_s;
    double confidence_sum;
    double error_sum;
    std::uint64_t error_count;
    std::uint64_t failed_count;  // requests that failed (an HTTP 5xx), apart from prediction errors
    // Weighted sums over records 0..n of bucket_weight(bucket) per histogram: what the two
    // histograms must hold, checkable (see bucket_weight) once the writer is gone.
    std::uint64_t latency_hist_check;
    std::uint64_t confidence_hist_check;
};
static_assert(sizeof(MetricPayload) == 104);

struct SampleHead {  // the sample payload before its features
    double timestamp;  // seconds since the epoch
    std::int64_t episode;
    unsigned char label[8];  // int64, or float32 followed by four zero bytes
    float confidence;
    float error;  // NaN: no ground truth
    // The request the label belongs to, wherever it was answered: the answering worker's
    // segment id, its request number there and the model version that answered (kNoRequest,
    // kNoVersion: not known); then the figures the control plane's change board takes with the
    // error (NaN: not measured; nll for regression).
    std::uint64_t worker;
    std::int64_t request;
    std::int64_t version;
    float misclassified;  // 0 or 1
    float nll;            // -log p(label)
};
static_assert(sizeof(SampleHead) == 64);

inline constexpr std::int64_t kNoRequest = -1;
inline constexpr std::int64_t kNoVersion = -1;

// Where a labelled sample's request was answered (SampleHead's identity and figures).
struct Origin {
    std::uint64_t worker = 0;
    std::int64_t request = kNoRequest;
    std::int64_t version = kNoVersion;
    float misclassified = std::numeric_limits<float>::quiet_NaN();
    float nll = std::numeric_limits<float>::quiet_NaN();
};

inline constexpr std::size_t kSlotWords = 16;  // seq + check before every payload
inline constexpr std::size_t kMetricSlotSize = kSlotWords + sizeof(MetricPayload);

constexpr std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

inline constexpr std::size_t sample_slot_size(std::size_t feature_dim) {
    return kSlotWords + sizeof(SampleHead) + align_up(feature_dim * sizeof(float), 8);
}

inline constexpr std::size_t kHistBytes = 2 * buckets::kBuckets * sizeof(std::uint64_t);

// Where everything goes for a given shape; a reader recomputes it and compares with the header.
struct Layout {
    std::size_t feature_dim = 0;
    int label_kind = 0;
    std::uint64_t metric_capacity = 0;
    std::uint64_t sample_capacity = 0;

    std::size_t sample_slot() const { return sample_slot_size(feature_dim); }
    std::size_t hist_offset() const { return kHeaderSize; }
    std::size_t metric_offset() const { return align_up(hist_offset() + kHistBytes, 64); }
    std::size_t sample_offset() const {
        return align_up(metric_offset() + metric_capacity * kMetricSlotSize, 64);
    }
    std::size_t file_size() const {
        return align_up(sample_offset() + sample_capacity * sample_slot(), 64);
    }
    bool valid() const {
        return feature_dim >= 1 && feature_dim <= kMaxFeatureDim && (label_kind == 0 || label_kind == 1) &&
               metric_capacity >= 1 && metric_capacity <= kMaxCapacity && sample_capacity >= 1 &&
               sample_capacity <= kMaxCapacity;
    }
};

// A 64-bit checksum of n bytes (n a multiple of 8): the sum of word[i] * K(i) (mod 2^64) with
// K(i) = C * (2i + 1), odd. Linear in every word with an invertible coefficient, so any damage
// confined to one 64-bit word always changes it; damage to several escapes with probability
// ~2^-64. The products are independent (four accumulators), so it costs a few cycles rather
// than a chain of multiplications on the request path. The seed (the record number) makes a
// payload valid for one record only.
inline std::uint64_t checksum64(const unsigned char* p, std::size_t n, std::uint64_t seed) noexcept {
    constexpr std::uint64_t C = 0x9E3779B97F4A7C15ull;  // odd
    std::uint64_t h[4] = {seed * 0xC2B2AE3D27D4EB4Full, 0, 0, 0};
    std::uint64_t k = C;  // K(0); K(i + 1) = K(i) + 2C
    const std::size_t words = n / 8;
    std::size_t i = 0;
    for (; i + 4 <= words; i += 4, k += 8 * C) {
        for (int j = 0; j < 4; ++j) {
            std::uint64_t w;
            std::memcpy(&w, p + 8 * (i + j), 8);
            h[j] += w * (k + 2 * C * static_cast<std::uint64_t>(j));
        }
    }
    for (; i < words; ++i, k += 2 * C) {
        std::uint64_t w;
        std::memcpy(&w, p + 8 * i, 8);
        h[0] += w * k;
    }
    return (h[0] + h[1]) + (h[2] + h[3]);
}

// The weight of a histogram bucket in the check words of MetricPayload: odd, so that a
// histogram whose counts differ from the records' by d in one bucket (any d != 0) has a
// weighted sum sum(count[i] * weight[i]) (mod 2^64) that differs by d * weight != 0; and
// pseudo-random (splitmix64), so that no bucket's weight is another's times a power of two,
// so a flipped bit in one count can never pass for a single observation in another bucket.
constexpr std::uint64_t bucket_weight_of(std::uint64_t i) {
    std::uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (z ^ (z >> 31)) | 1u;
}

constexpr std::array<std::uint64_t, buckets::kBuckets> make_bucket_weights() {
    std::array<std::uint64_t, buckets::kBuckets> w{};
    for (std::size_t i = 0; i < buckets::kBuckets; ++i) w[i] = bucket_weight_of(i);
    return w;
}
inline constexpr auto kBucketWeight = make_bucket_weights();

// The atomic 64-bit word at `offset` of a mapping.
inline std::atomic<std::uint64_t>& word_at(unsigned char* base, std::size_t offset) noexcept {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(base + offset);
}
inline const std::atomic<std::uint64_t>& word_at(const unsigned char* base, std::size_t offset) noexcept {
    return *reinterpret_cast<const std::atomic<std::uint64_t>*>(base + offset);
}

constexpr std::uint64_t seq_done(std::uint64_t n) { return 2 * n + 2; }
constexpr std::uint64_t seq_writing(std::uint64_t n) { return 2 * n + 1; }
// The record a nonzero seq names (being written or complete).
constexpr std::uint64_t seq_record(std::uint64_t seq) { return (seq - 1) / 2; }

}  // namespace vortex::shm
