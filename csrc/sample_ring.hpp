// Columnar ring buffer of training samples (plain C++17, no Python).
//
// Columns: features (float32, fixed dimension, row-major), label (int64 or float32, chosen at
// construction), confidence (float32), error (float32, NaN = no ground truth yet), timestamp
// (float64, seconds since the epoch), episode (int64). The global sequence number is not stored:
// rows are numbered contiguously as they arrive, so the row in logical position k (0 = oldest)
// has seq = next_seq - size + k. That saves 8 bytes a row (a 10,000 x 32 ring is 1.6 MB).
//
// Thread safety: every mutation and every copy-out takes one mutex, so a reader never sees a
// row half written. size() and next_seq() are atomics readable without the lock.
// Validation happens before the lock and before anything is written: a bad batch changes nothing.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace vortex {

enum class LabelKind : int { Int64 = 0, Float32 = 1 };

inline double wall_clock_seconds() {
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

// OR of f(x[i]) over x[0..n). 32 independent accumulators, so the reduction is not one
// serial dependency chain and the compiler vectorises it: a validation pass then reads a batch
// at close to memory speed.
template <class Acc, class T, class F>
Acc or_reduce(const T* x, std::size_t n, F f) {
    constexpr std::size_t lanes = 32;
    Acc acc[lanes] = {};
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes)
        for (std::size_t k = 0; k < lanes; ++k) acc[k] |= f(x[i + k]);
    Acc all = 0;
    for (std::size_t k = 0; k < lanes; ++k) all |= acc[k];
    for (; i < n; ++i) all |= f(x[i]);
    return all;
}

// Bits of v * 0: +-0 for a finite v, a NaN (exponent all ones) for inf or NaN.
inline std::uint32_t times_zero_bits(float v) {
    const float z = v * 0.0f;
    std::uint32_t bits;
    std::memcpy(&bits, &z, sizeof bits);
    return bits;
}

inline std::uint64_t times_zero_bits(double v) {
    const double z = v * 0.0;
    std::uint64_t bits;
    std::memcpy(&bits, &z, sizeof bits);
    return bits;
}

// The feature check reads a whole batch; on x86-64 Linux it is compiled twice (AVX2 and
// baseline) and the loader picks the one the CPU runs (GCC/Clang function multiversioning).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define VORTEX_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define VORTEX_MULTIVERSION
#endif

VORTEX_MULTIVERSION static std::uint32_t or_times_zero_bits(const float* x, std::size_t n) {
    return or_reduce<std::uint32_t>(x, n, [](float v) { return times_zero_bits(v); });
}

static std::uint64_t or_times_zero_bits(const double* x, std::size_t n) {
    return or_reduce<std::uint64_t>(x, n, [](double v) { return times_zero_bits(v); });
}

// Index of the first inf or NaN in x[0..n), or n.
template <class T>
std::size_t first_non_finite(const T* x, std::size_t n) {
    using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    const Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
    const Bits any = or_times_zero_bits(x, n);
    if ((any & exponent) != exponent) return n;
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i])) return i;
    return n;
}

inline std::uint32_t outside_unit(float v) { return ((v >= 0.0f) & (v <= 1.0f)) ? 0u : 1u; }  // NaN too
inline std::uint32_t outside_unit_not_nan(float v) { return ((v < 0.0f) | (v > 1.0f)) ? 1u : 0u; }

// Index of the first x[i] with bad(x[i]) != 0, or n.
template <class F>
std::size_t first_bad(const float* x, std::size_t n, F bad) {
    if (or_reduce<std::uint32_t>(x, n, bad) == 0) return n;
    for (std::size_t i = 0; i < n; ++i)
        if (bad(x[i])) return i;
    return n;
}

// Numbers in error messages: as many digits as the type holds.
inline std::string format_number(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.15g", v);
    return buf;
}
inline std::string format_number(float v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.7g", static_cast<double>(v));
    return buf;
}

// Validation of one sample, shared by every ring that stores samples (this one and the
// shared-memory segment): throws std::invalid_argument naming the first bad value.
inline void check_sample_row(std::size_t dim, LabelKind kind, const float* features, const void* label,
                             double confidence, double error, double timestamp) {
    const std::size_t bad = first_non_finite(features, dim);
    if (bad != dim)
        throw std::invalid_argument("features[" + std::to_string(bad) + "]=" + format_number(features[bad]) +
                                    ": features must be finite (no NaN or inf)");
    if (!(confidence >= 0.0 && confidence <= 1.0))
        throw std::invalid_argument("confidence=" + format_number(confidence) + " is outside [0, 1]");
    if (!std::isnan(error) && !(error >= 0.0 && error <= 1.0))
        throw std::invalid_argument("error=" + format_number(error) +
                                    " is outside [0, 1] (use NaN for 'no ground truth')");
    if (!std::isfinite(timestamp))
        throw std::invalid_argument("timestamp=" + format_number(timestamp) + " is not finite");
    if (kind == LabelKind::Float32) {
        float v;
        std::memcpy(&v, label, sizeof v);
        if (!std::isfinite(v)) throw std::invalid_argument("label=" + format_number(v) + " is not finite");
    }
}

class SampleRing {
public:
    SampleRing(std::size_t feature_dim, std::size_t capacity, LabelKind label_kind,
               std::int64_t next_seq = 0)
        : dim_(feature_dim), cap_(capacity), kind_(label_kind),
          label_size_(label_kind == LabelKind::Int64 ? 8 : 4) {
        if (dim_ == 0) throw std::invalid_argument("feature_dim must be >= 1, got 0");
        if (cap_ == 0) throw std::invalid_argument("capacity must be >= 1, got 0");
        if (dim_ > (std::size_t(1) << 20) || cap_ > (std::size_t(1) << 32))
            throw std::invalid_argument("feature_dim or capacity too large");
        if (next_seq < 0) throw std::invalid_argument("next_seq must be >= 0");
        features_.resize(cap_ * dim_);
        labels_.resize(cap_ * label_size_);
        confidence_.resize(cap_);
        error_.resize(cap_);
        timestamp_.resize(cap_);
        episode_.resize(cap_);
        next_seq_.store(next_seq, std::memory_order_relaxed);
    }
    SampleRing(const SampleRing&) = delete;
    SampleRing& operator=(const SampleRing&) = delete;

    std::size_t feature_dim() const { return dim_; }
    std::size_t capacity() const { return cap_; }
    LabelKind label_kind() const { return kind_; }
    std::size_t label_size() const { return label_size_; }
    std::size_t size() const { return size_.load(std::memory_order_acquire); }
    std::int64_t next_seq() const { return next_seq_.load(std::memory_order_acquire); }

    // Bytes held: the column storage plus the object itself.
    std::size_t nbytes() const {
        return features_.capacity() * sizeof(float) + labels_.capacity() +
               (confidence_.capacity() + error_.capacity()) * sizeof(float) +
               timestamp_.capacity() * sizeof(double) +
               episode_.capacity() * sizeof(std::int64_t) + sizeof(*this);
    }

    // One sample. `label` points at an int64 or a float32 (label_kind). Returns its seq.
    std::int64_t push(const float* features, const void* label, double confidence, double error,
                      double timestamp, std::int64_t episode) {
        check_sample_row(dim_, kind_, features, label, confidence, error, timestamp);
        std::lock_guard<std::mutex> lock(mu_);
        const std::size_t slot = head_;
        std::memcpy(&features_[slot * dim_], features, dim_ * sizeof(float));
        std::memcpy(&labels_[slot * label_size_], label, label_size_);
        confidence_[slot] = static_cast<float>(confidence);
        error_[slot] = static_cast<float>(error);
        timestamp_[slot] = timestamp;
        episode_[slot] = episode;
        return commit(1);
    }

    // n samples from contiguous columns (features row-major n x dim). Null optional columns
    // take their defaults: confidence 1, error NaN, timestamp now, episode 0. Everything is
    // validated first; a bad value throws std::invalid_argument naming the row and nothing is
    // stored. Returns the seq of the first row (next_seq when n == 0).
    std::int64_t extend(std::size_t n, const float* features, const void* labels,
                        const float* confidence, const float* error, const double* timestamp,
                        const std::int64_t* episode) {
        validate_batch(n, features, labels, confidence, error, timestamp);
        const double now = timestamp ? 0.0 : wall_clock_seconds();
        std::lock_guard<std::mutex> lock(mu_);
        if (n == 0) return next_seq_.load(std::memory_order_relaxed);
        // Only the newest `cap_` rows of an oversized batch can survive: skip the rest, but
        // still number them so seq stays "one per sample pushed".
        const std::size_t skip = n > cap_ ? n - cap_ : 0;
        std::size_t done = skip;
        while (done < n) {
            const std::size_t slot = (head_ + (done - skip)) % cap_;
            const std::size_t run = std::min(n - done, cap_ - slot);
            std::memcpy(&features_[slot * dim_], features + done * dim_, run * dim_ * sizeof(float));
            std::memcpy(&labels_[slot * label_size_],
                        static_cast<const unsigned char*>(labels) + done * label_size_,
                        run * label_size_);
            fill(confidence_.data() + slot, confidence ? confidence + done : nullptr, run, 1.0f);
            fill(error_.data() + slot, error ? error + done : nullptr, run, std::nanf(""));
            fill(timestamp_.data() + slot, timestamp ? timestamp + done : nullptr, run, now);
            fill(episode_.data() + slot, episode ? episode + done : nullptr, run, std::int64_t(0));
            done += run;
        }
        const std::int64_t first = next_seq_.load(std::memory_order_relaxed);
        head_ = (head_ + (n - skip)) % cap_;
        size_.store(std::min(cap_, size_.load(std::memory_order_relaxed) + (n - skip)),
                    std::memory_order_release);
        next_seq_.store(first + static_cast<std::int64_t>(n), std::memory_order_release);
        return first;
    }

    // Copies the newest min(max_rows, size) rows, oldest first, into the output columns (each
    // sized for max_rows). Returns the number of rows copied; *first_seq gets the seq of the
    // first of them.
    std::size_t copy_newest(std::size_t max_rows, float* features, void* labels, float* confidence,
                            float* error, double* timestamp, std::int64_t* episode,
                            std::int64_t* first_seq) const {
        std::lock_guard<std::mutex> lock(mu_);
        const std::size_t size = size_.load(std::memory_order_relaxed);
        const std::size_t n = std::min(max_rows, size);
        const std::size_t start = (head_ + cap_ - n) % cap_;
        std::size_t done = 0;
        while (done < n) {
            const std::size_t slot = (start + done) % cap_;
            const std::size_t run = std::min(n - done, cap_ - slot);
            std::memcpy(features + done * dim_, &features_[slot * dim_], run * dim_ * sizeof(float));
            std::memcpy(static_cast<unsigned char*>(labels) + done * label_size_,
                        &labels_[slot * label_size_], run * label_size_);
            std::memcpy(confidence + done, &confidence_[slot], run * sizeof(float));
            std::memcpy(error + done, &error_[slot], run * sizeof(float));
            std::memcpy(timestamp + done, &timestamp_[slot], run * sizeof(double));
            std::memcpy(episode + done, &episode_[slot], run * sizeof(std::int64_t));
            done += run;
        }
        *first_seq = next_seq_.load(std::memory_order_relaxed) - static_cast<std::int64_t>(n);
        return n;
    }

    // Uniform sampling with replacement: row k of the output is the buffered row
    // floor(u[k] * size) (u in [0, 1), oldest = 0). Returns the size sampled from (0 = empty,
    // nothing written).
    std::size_t gather_uniform(std::size_t n, const double* u, float* features, void* labels,
                               float* confidence, float* error, double* timestamp,
                               std::int64_t* episode, std::int64_t* seq) const {
        std::lock_guard<std::mutex> lock(mu_);
        const std::size_t size = size_.load(std::memory_order_relaxed);
        if (size == 0) return 0;
        const std::size_t oldest = (head_ + cap_ - size) % cap_;
        const std::int64_t first = next_seq_.load(std::memory_order_relaxed) -
                                   static_cast<std::int64_t>(size);
        const auto* lab = labels_.data();
        auto* lab_out = static_cast<unsigned char*>(labels);
        for (std::size_t k = 0; k < n; ++k) {
            std::size_t idx = static_cast<std::size_t>(u[k] * static_cast<double>(size));
            if (idx >= size) idx = size - 1;  // u rounding up to 1.0
            std::size_t slot = oldest + idx;
            if (slot >= cap_) slot -= cap_;
            std::memcpy(features + k * dim_, &features_[slot * dim_], dim_ * sizeof(float));
            std::memcpy(lab_out + k * label_size_, lab + slot * label_size_, label_size_);
            confidence[k] = confidence_[slot];
            error[k] = error_[slot];
            timestamp[k] = timestamp_[slot];
            episode[k] = episode_[slot];
            seq[k] = first + static_cast<std::int64_t>(idx);
        }
        return size;
    }

    // Drops every row; the seq numbering continues.
    void clear() {
        std::lock_guard<std::mutex> lock(mu_);
        size_.store(0, std::memory_order_release);
    }

    // Replaces the whole content with n rows (n <= capacity) whose seqs are
    // next_seq - n .. next_seq - 1 (a saved buffer). Validated like extend; on error nothing
    // changes.
    void replace(std::size_t n, const float* features, const void* labels, const float* confidence,
                 const float* error, const double* timestamp, const std::int64_t* episode,
                 std::int64_t next_seq) {
        if (n > cap_)
            throw std::invalid_argument("replace: " + std::to_string(n) + " rows exceed capacity " +
                                        std::to_string(cap_));
        if (next_seq < static_cast<std::int64_t>(n))
            throw std::invalid_argument("replace: next_seq " + std::to_string(next_seq) +
                                        " is smaller than the row count");
        validate_batch(n, features, labels, confidence, error, timestamp);
        std::lock_guard<std::mutex> lock(mu_);
        std::memcpy(features_.data(), features, n * dim_ * sizeof(float));
        std::memcpy(labels_.data(), labels, n * label_size_);
        std::memcpy(confidence_.data(), confidence, n * sizeof(float));
        std::memcpy(error_.data(), error, n * sizeof(float));
        std::memcpy(timestamp_.data(), timestamp, n * sizeof(double));
        std::memcpy(episode_.data(), episode, n * sizeof(std::int64_t));
        head_ = n % cap_;
        size_.store(n, std::memory_order_release);
        next_seq_.store(next_seq, std::memory_order_release);
    }

private:
    template <class T>
    static void fill(T* dst, const T* src, std::size_t n, T value) {
        if (src)
            std::memcpy(dst, src, n * sizeof(T));
        else
            std::fill(dst, dst + n, value);
    }

    void validate_batch(std::size_t n, const float* features, const void* labels,
                        const float* confidence, const float* error, const double* timestamp) const {
        const std::size_t total = n * dim_;
        const std::size_t bad = first_non_finite(features, total);
        if (bad != total)
            throw std::invalid_argument("features[" + std::to_string(bad / dim_) + ", " +
                                        std::to_string(bad % dim_) + "]=" + format_number(features[bad]) +
                                        ": features must be finite (no NaN or inf)");
        if (kind_ == LabelKind::Float32) {
            const auto* lab = static_cast<const float*>(labels);
            const std::size_t b = first_non_finite(lab, n);
            if (b != n)
                throw std::invalid_argument("labels[" + std::to_string(b) + "]=" + format_number(lab[b]) +
                                            " is not finite");
        }
        std::size_t b;
        if (confidence && (b = first_bad(confidence, n, outside_unit)) != n)
            throw std::invalid_argument("confidences[" + std::to_string(b) + "]=" +
                                        format_number(confidence[b]) + " is outside [0, 1]");
        if (error && (b = first_bad(error, n, outside_unit_not_nan)) != n)
            throw std::invalid_argument("errors[" + std::to_string(b) + "]=" + format_number(error[b]) +
                                        " is outside [0, 1] (use NaN for 'no ground truth')");
        if (timestamp && (b = first_non_finite(timestamp, n)) != n)
            throw std::invalid_argument("timestamps[" + std::to_string(b) + "]=" +
                                        format_number(timestamp[b]) + " is not finite");
    }

    // Called with mu_ held after row(s) were written at head_: advances the ring.
    std::int64_t commit(std::size_t n) {
        head_ += n;
        if (head_ >= cap_) head_ -= cap_;
        const std::size_t size = size_.load(std::memory_order_relaxed);
        if (size < cap_) size_.store(size + n > cap_ ? cap_ : size + n, std::memory_order_release);
        const std::int64_t seq = next_seq_.load(std::memory_order_relaxed);
        next_seq_.store(seq + static_cast<std::int64_t>(n), std::memory_order_release);
        return seq;
    }

    const std::size_t dim_;
    const std::size_t cap_;
    const LabelKind kind_;
    const std::size_t label_size_;
    std::vector<float> features_;
    std::vector<unsigned char> labels_;
    std::vector<float> confidence_;
    std::vector<float> error_;
    std::vector<double> timestamp_;
    std::vector<std::int64_t> episode_;
    std::size_t head_ = 0;  // slot the next row goes to
    std::atomic<std::size_t> size_{0};
    std::atomic<std::int64_t> next_seq_{0};
    mutable std::mutex mu_;
};

}  // namespace vortex
