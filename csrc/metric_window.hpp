// MetricWindow: the runtime detector's per-request data structure (plain C++17).
//
// A fixed-capacity ring of (monotonic timestamp ns, latency ms, confidence, error) samples,
// where error NaN means "no ground truth yet", plus an exact count of every sample ever
// recorded and all-time latency/confidence sums. `analyze()` computes, in one pass under the
// lock, every statistic the detector compares:
//   recent   = the newest kRecent (10) samples; for errors, the newest kRecent samples that
//              have ground truth (labels arrive for only some requests),
//   baseline = the older half of the window, once it holds >= kMinBaseline (20) samples,
// and analysis as a whole needs >= kMinAnalysis (10) samples (the caller checks `size`).
//
// Thread safety: every public method takes a small spinlock. Python callers hold the GIL on the
// per-request path, so the lock is uncontended there (one atomic exchange); it only matters
// against batch recording and large analyses, which the binding runs with the GIL released.
#pragma once

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

namespace vortex {

inline int64_t monotonic_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Test-and-test-and-set spinlock: one atomic exchange when uncontended (cheaper than a
// pthread mutex on the ~60 ns per-request path); yields to the scheduler when a long holder
// (a batch copy, an analysis of a huge window) keeps it.
class SpinLock {
public:
    void lock() noexcept {
        for (;;) {
            if (!locked_.exchange(true, std::memory_order_acquire)) return;
            unsigned spins = 0;
            while (locked_.load(std::memory_order_relaxed)) {
                if (++spins < 128) {
                    cpu_relax();
                } else {
                    std::this_thread::yield();
                    spins = 0;
                }
            }
        }
    }
    void unlock() noexcept { locked_.store(false, std::memory_order_release); }

private:
    static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
    }
    std::atomic<bool> locked_{false};
};

// Validation shared by every entry point (Cython, pybind11, batches).
inline bool valid_latency(double v) noexcept { return v >= 0.0 && v <= DBL_MAX; }  // NaN fails
inline bool valid_confidence(double v) noexcept { return v >= 0.0 && v <= 1.0; }
inline bool valid_error(double v) noexcept { return std::isnan(v) || (v >= 0.0 && v <= DBL_MAX); }

struct alignas(32) MetricSample {
    int64_t t_ns;
    double latency_ms;
    double confidence;
    double error;  // NaN: no ground truth
};

struct WindowStats {
    static constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    uint64_t total_recorded = 0;  // every sample ever recorded (exact)
    uint64_t size = 0;            // samples in the window now
    uint64_t capacity = 0;
    uint64_t recent_count = 0;    // min(kRecent, size)
    uint64_t baseline_count = 0;  // size / 2 once size >= kMinBaseline, else 0
    double recent_latency_mean = nan;
    double recent_latency_max = nan;
    uint64_t recent_over_threshold = 0;   // recent latencies > the threshold passed to analyze()
    double recent_over_latency_mean = nan;  // mean of those
    double recent_confidence_mean = nan;
    uint64_t recent_error_count = 0;      // newest samples with ground truth (<= kRecent)
    double recent_error_mean = nan;
    double baseline_latency_mean = nan;
    double baseline_confidence_mean = nan;
    uint64_t baseline_error_count = 0;
    double baseline_error_mean = nan;
    int64_t oldest_ns = 0;  // timestamps of the oldest and newest sample in the window
    int64_t newest_ns = 0;
    double all_latency_sum = 0.0;     // over every sample ever recorded
    double all_confidence_sum = 0.0;
};

// Where a batch failed validation: column 0 latency, 1 confidence, 2 error; index -1 if none.
struct BadValue {
    std::ptrdiff_t index = -1;
    int column = -1;
    double value = 0.0;
};

// First invalid value of a batch. Blocks are scanned branch-free (vectorisable); the exact
// position is searched only inside a block that failed.
inline BadValue find_invalid(const double* lat, const double* conf, const double* err,
                             std::size_t n) noexcept {
    constexpr std::size_t kBlock = 512;
    for (std::size_t b = 0; b < n; b += kBlock) {
        const std::size_t e = std::min(n, b + kBlock);
        bool bad = false;
        for (std::size_t i = b; i < e; ++i)
            bad |= !(lat[i] >= 0.0) | !(lat[i] <= DBL_MAX) | !(conf[i] >= 0.0) | !(conf[i] <= 1.0);
        if (err)
            for (std::size_t i = b; i < e; ++i) bad |= (err[i] < 0.0) | (err[i] > DBL_MAX);
        if (!bad) continue;
        for (std::size_t i = b; i < e; ++i) {
            if (!valid_latency(lat[i])) return {static_cast<std::ptrdiff_t>(i), 0, lat[i]};
            if (!valid_confidence(conf[i])) return {static_cast<std::ptrdiff_t>(i), 1, conf[i]};
            if (err && !valid_error(err[i])) return {static_cast<std::ptrdiff_t>(i), 2, err[i]};
        }
    }
    return {};
}

// Sum of a column with four independent accumulators (breaks the add latency chain).
inline double column_sum(const double* x, std::size_t n) noexcept {
    double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a0 += x[i];
        a1 += x[i + 1];
        a2 += x[i + 2];
        a3 += x[i + 3];
    }
    for (; i < n; ++i) a0 += x[i];
    return (a0 + a1) + (a2 + a3);
}

class MetricWindow {
public:
    static constexpr std::size_t kRecent = 10;
    static constexpr std::size_t kMinBaseline = 20;
    static constexpr std::size_t kMinAnalysis = 10;

    explicit MetricWindow(std::size_t capacity) : ring_(capacity) {}

    // One validated sample (callers check valid_*; the Cython fast path does so inline).
    // Returns its id: the number of samples recorded before it (see set_error).
    uint64_t record(double latency_ms, double confidence, double error) noexcept {
        const int64_t t = monotonic_ns();
        std::lock_guard<SpinLock> g(lock_);
        MetricSample& s = ring_[head_];
        s.t_ns = t;
        s.latency_ms = latency_ms;
        s.confidence = confidence;
        s.error = error;
        if (++head_ == ring_.size()) head_ = 0;
        if (size_ < ring_.size()) ++size_;
        lat_sum_ += latency_ms;
        conf_sum_ += confidence;
        const uint64_t id = total_.load(std::memory_order_relaxed);
        total_.store(id + 1, std::memory_order_relaxed);
        return id;
    }

    // Attaches ground truth that arrived after the request: the prediction error of the
    // sample `id` returned by record(). Returns false if that sample has already left the
    // window (its error can no longer count) or was never recorded.
    bool set_error(uint64_t id, double error) noexcept {
        std::lock_guard<SpinLock> g(lock_);
        const uint64_t total = total_.load(std::memory_order_relaxed);
        if (id >= total || total - id > size_) return false;
        ring_[(oldest_index() + (size_ - (total - id))) % ring_.size()].error = error;
        return true;
    }

    // n validated samples stamped with one timestamp; `err` may be null (no ground truth).
    // Only the newest `capacity` of them stay in the window; all count in the totals.
    // Returns the id of the first (the others follow it: one batch's ids are contiguous, as
    // if record() had been called n times under one lock).
    uint64_t record_batch(const double* lat, const double* conf, const double* err,
                          std::size_t n) noexcept {
        const int64_t t = monotonic_ns();
        const double ls = column_sum(lat, n), cs = column_sum(conf, n);
        std::lock_guard<SpinLock> g(lock_);
        const std::size_t cap = ring_.size();
        const std::size_t skip = n > cap ? n - cap : 0;
        // at most two contiguous runs of the ring: [head_, cap) then [0, ...)
        std::size_t i = skip, h = head_;
        while (i < n) {
            const std::size_t run = std::min(n - i, cap - h);
            store_run(ring_.data() + h, t, lat + i, conf + i, err ? err + i : nullptr, run);
            i += run;
            h += run;
            if (h == cap) h = 0;
        }
        head_ = h;
        size_ = std::min(cap, size_ + (n - skip));
        lat_sum_ += ls;
        conf_sum_ += cs;
        const uint64_t first = total_.load(std::memory_order_relaxed);
        total_.store(first + n, std::memory_order_relaxed);
        return first;
    }

    WindowStats analyze(double latency_threshold_ms) const noexcept {
        std::lock_guard<SpinLock> g(lock_);
        WindowStats st;
        st.total_recorded = total_.load(std::memory_order_relaxed);
        st.size = size_;
        st.capacity = ring_.size();
        st.all_latency_sum = lat_sum_;
        st.all_confidence_sum = conf_sum_;
        if (size_ == 0) return st;
        st.oldest_ns = at(0).t_ns;
        st.newest_ns = at(size_ - 1).t_ns;

        // recent: the newest kRecent samples
        const std::size_t rn = std::min(kRecent, size_);
        double lsum = 0.0, lmax = -1.0, csum = 0.0, osum = 0.0;
        uint64_t over = 0;
        for (std::size_t i = size_ - rn; i < size_; ++i) {
            const MetricSample& s = at(i);
            lsum += s.latency_ms;
            lmax = std::max(lmax, s.latency_ms);
            csum += s.confidence;
            if (s.latency_ms > latency_threshold_ms) {
                ++over;
                osum += s.latency_ms;
            }
        }
        st.recent_count = rn;
        st.recent_latency_mean = lsum / double(rn);
        st.recent_latency_max = lmax;
        st.recent_confidence_mean = csum / double(rn);
        st.recent_over_threshold = over;
        if (over) st.recent_over_latency_mean = osum / double(over);

        // recent errors: the newest kRecent samples with ground truth (walks back only as far
        // as it needs to; "the last 10 requests" would often hold one or two labels)
        double esum = 0.0;
        uint64_t ecount = 0;
        for (std::size_t i = size_; i-- > 0 && ecount < kRecent;) {
            const double e = at(i).error;
            if (e == e) {
                ++ecount;
                esum += e;
            }
        }
        st.recent_error_count = ecount;
        if (ecount) st.recent_error_mean = esum / double(ecount);

        // baseline: the older half, walked as (at most) two contiguous spans of the ring
        if (size_ >= kMinBaseline) {
            const std::size_t bn = size_ / 2;
            const std::size_t cap = ring_.size();
            const std::size_t start = oldest_index();
            const std::size_t first = std::min(bn, cap - start);
            Sums a = sum_span(ring_.data() + start, first);
            Sums b = sum_span(ring_.data(), bn - first);
            const double en = double(a.ecount + b.ecount);
            st.baseline_count = bn;
            st.baseline_latency_mean = (a.lat + b.lat) / double(bn);
            st.baseline_confidence_mean = (a.conf + b.conf) / double(bn);
            st.baseline_error_count = a.ecount + b.ecount;
            if (st.baseline_error_count) st.baseline_error_mean = (a.err + b.err) / en;
        }
        return st;
    }

    // Copies the newest min(size(), max_n) samples, oldest first, into the four arrays (each
    // of length >= max_n); returns the number copied.
    std::size_t snapshot(int64_t* t, double* lat, double* conf, double* err,
                         std::size_t max_n) const noexcept {
        std::lock_guard<SpinLock> g(lock_);
        const std::size_t n = std::min(size_, max_n);
        for (std::size_t i = 0; i < n; ++i) {
            const MetricSample& s = at(size_ - n + i);
            t[i] = s.t_ns;
            lat[i] = s.latency_ms;
            conf[i] = s.confidence;
            err[i] = s.error;
        }
        return n;
    }

    // Changes the capacity, keeping the newest min(size, capacity) samples and all totals.
    void resize(std::size_t capacity) {
        std::vector<MetricSample> fresh(capacity);  // allocate before taking the lock
        std::lock_guard<SpinLock> g(lock_);
        const std::size_t keep = std::min(size_, capacity);
        for (std::size_t i = 0; i < keep; ++i) fresh[i] = at(size_ - keep + i);
        ring_.swap(fresh);
        size_ = keep;
        head_ = keep == capacity ? 0 : keep;
    }

    void clear() noexcept {
        std::lock_guard<SpinLock> g(lock_);
        size_ = 0;
        head_ = 0;
    }

    std::size_t size() const noexcept {
        std::lock_guard<SpinLock> g(lock_);
        return size_;
    }
    std::size_t capacity() const noexcept {
        std::lock_guard<SpinLock> g(lock_);
        return ring_.size();
    }
    uint64_t total() const noexcept { return total_.load(std::memory_order_relaxed); }

    // Bytes owned: the object itself plus its heap allocation (the ring).
    std::size_t memory_bytes() const noexcept {
        std::lock_guard<SpinLock> g(lock_);
        return sizeof(MetricWindow) + ring_.capacity() * sizeof(MetricSample);
    }

private:
    struct Sums {
        double lat = 0.0, conf = 0.0, err = 0.0;
        uint64_t ecount = 0;
    };

    static void store_run(MetricSample* dst, int64_t t, const double* lat, const double* conf,
                          const double* err, std::size_t n) noexcept {
        if (err) {
            for (std::size_t i = 0; i < n; ++i) dst[i] = {t, lat[i], conf[i], err[i]};
        } else {
            const double nan = std::numeric_limits<double>::quiet_NaN();
            for (std::size_t i = 0; i < n; ++i) dst[i] = {t, lat[i], conf[i], nan};
        }
    }

    // Branch-free (NaN errors are masked, not skipped) with four accumulators per column, so
    // the pass runs at memory speed instead of waiting on add latency and mispredictions.
    static Sums sum_span(const MetricSample* p, std::size_t n) noexcept {
        double l[4] = {}, c[4] = {}, e[4] = {};
        uint64_t k[4] = {};
        std::size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            for (int j = 0; j < 4; ++j) {
                const MetricSample& s = p[i + j];
                const bool known = s.error == s.error;  // not NaN
                l[j] += s.latency_ms;
                c[j] += s.confidence;
                e[j] += known ? s.error : 0.0;
                k[j] += known;
            }
        }
        for (; i < n; ++i) {
            const bool known = p[i].error == p[i].error;
            l[0] += p[i].latency_ms;
            c[0] += p[i].confidence;
            e[0] += known ? p[i].error : 0.0;
            k[0] += known;
        }
        Sums s;
        s.lat = (l[0] + l[1]) + (l[2] + l[3]);
        s.conf = (c[0] + c[1]) + (c[2] + c[3]);
        s.err = (e[0] + e[1]) + (e[2] + e[3]);
        s.ecount = (k[0] + k[1]) + (k[2] + k[3]);
        return s;
    }

    std::size_t oldest_index() const noexcept {
        return head_ >= size_ ? head_ - size_ : head_ + ring_.size() - size_;
    }
    // i-th sample counted from the oldest one in the window
    const MetricSample& at(std::size_t i) const noexcept {
        std::size_t k = oldest_index() + i;
        if (k >= ring_.size()) k -= ring_.size();
        return ring_[k];
    }

    std::vector<MetricSample> ring_;
    std::size_t head_ = 0;  // next slot to write
    std::size_t size_ = 0;
    double lat_sum_ = 0.0;
    double conf_sum_ = 0.0;
    std::atomic<uint64_t> total_{0};
    mutable SpinLock lock_;
};

}  // namespace vortex
