// The fixed bucket scheme of the mergeable histograms (plain C++17, no Python).
//
// Every worker counts latencies (seconds) and confidences into the same buckets, so the control
// plane merges histograms by adding counts, and any merged histogram is exactly the histogram of
// the union of the observations.
//
// Boundaries: two significant decimal digits over nine decades,
//     b = m * 10^(d-1)   for d = -6 .. 2 and m = 10, 11, ..., 99,   and a last one 1e3,
// i.e. 1.0e-6, 1.1e-6, ..., 9.9e-6, 1.0e-5, ..., 9.9e2, 1.0e3 (kBounds = 811), each the double
// nearest to its decimal value (what float("1.1e-06") gives). Bucket i (0 <= i < kBounds)
// counts the values v with b[i-1] < v <= b[i] (upper bound included, as Prometheus' `le`);
// bucket 0 counts everything <= 1e-6 and bucket kBounds everything > 1e3 (+Inf).
//
// Why these: every bound of Prometheus' default buckets (.005, .01, .025, ..., 2.5, 5, 7.5, 10)
// and of any 1-2-5 or 1-2.5-5 series is one of them, so a classic histogram with a sensible
// `le` set is a plain prefix sum over this one. A bucket is at most 10% wide relative to its
// lower bound (1.0 -> 1.1) and at least 1% (9.9 -> 10), so a quantile reported as the midpoint of
// its bucket is within 5% of the true order statistic for 1e-6 < v <= 1e3.
//
// Indexing is exact and branch-light: the top 18 bits of the double (exponent and 7 mantissa
// bits) select a sub-octave at most 1/128 wide; a table gives the first bucket that sub-octave
// can fall into, and since every bucket is wider than a sub-octave (1% > 0.79%), one
// comparison with the true boundary (no branch, so no misprediction on random latencies)
// settles it. Both tables are computed at compile time, and a test checks every boundary.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace vortex::buckets {

inline constexpr int kFirstDecade = -6;  // the first bound is 1.0e-6
inline constexpr int kDecades = 9;       // ... the last 1.0e3
inline constexpr int kPerDecade = 90;    // mantissas 1.0, 1.1, ..., 9.9
inline constexpr std::size_t kBounds = kDecades * kPerDecade + 1;
inline constexpr std::size_t kBuckets = kBounds + 1;  // with the +Inf bucket

namespace detail {

constexpr double exact_pow10(int k) {  // exact for k <= 22
    double p = 1.0;
    for (int i = 0; i < k; ++i) p *= 10.0;
    return p;
}

constexpr double pow2(int e) {
    double p = 1.0;
    for (; e > 0; --e) p *= 2.0;
    for (; e < 0; ++e) p /= 2.0;
    return p;
}

// The double nearest to m * 10^(d-1): an exact integer divided (or multiplied) by an exact power
// of ten, one correctly rounded operation.
constexpr double bound_value(std::size_t i) {
    const int decade = kFirstDecade + static_cast<int>(i / kPerDecade);
    const double m = static_cast<double>(10 + i % kPerDecade);
    const int e = decade - 1;
    return e >= 0 ? m * exact_pow10(e) : m / exact_pow10(-e);
}

constexpr std::array<double, kBounds> make_bounds() {
    std::array<double, kBounds> b{};
    for (std::size_t i = 0; i < kBounds; ++i) b[i] = bound_value(i);
    return b;
}

// The top 18 bits of a positive normal double: 11 exponent bits, 7 mantissa bits.
constexpr std::uint32_t key_of(double v) {
    int e = 0;
    while (v >= pow2(e + 1)) ++e;
    while (v < pow2(e)) --e;
    const double m = v / pow2(e);  // [1, 2), exact
    return (static_cast<std::uint32_t>(e + 1023) << 7) | static_cast<std::uint32_t>((m - 1.0) * 128.0);
}

constexpr double key_start(std::uint32_t key) {  // the smallest double with this key
    return pow2(static_cast<int>(key >> 7) - 1023) * (1.0 + static_cast<double>(key & 127u) / 128.0);
}

}  // namespace detail

inline constexpr std::array<double, kBounds> kBound = detail::make_bounds();
inline constexpr std::uint32_t kKeyLo = detail::key_of(kBound[0]);
inline constexpr std::uint32_t kKeyHi = detail::key_of(kBound[kBounds - 1]);

namespace detail {
constexpr std::array<std::uint16_t, kKeyHi - kKeyLo + 1> make_first() {
    std::array<std::uint16_t, kKeyHi - kKeyLo + 1> first{};
    std::size_t i = 0;
    for (std::uint32_t k = kKeyLo; k <= kKeyHi; ++k) {
        const double lo = key_start(k);
        while (i + 1 < kBounds && kBound[i] < lo) ++i;
        first[k - kKeyLo] = static_cast<std::uint16_t>(i);
    }
    return first;
}
}  // namespace detail

// first[key - kKeyLo]: the bucket of the smallest double with that key.
inline constexpr auto kFirst = detail::make_first();

// The bucket of v (see the top of this file). NaN goes to bucket 0; callers validate first.
inline std::size_t bucket_index(double v) noexcept {
    if (!(v > kBound[0])) return 0;
    if (v > kBound[kBounds - 1]) return kBounds;
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    const std::size_t i = kFirst[static_cast<std::uint32_t>(bits >> 45) - kKeyLo];
    return i + (v > kBound[i]);  // at most one step (see the top of this file), without a branch
}

}  // namespace vortex::buckets
