// The latency histogram that flowd_loadgen and flowd_webhook_sink report from.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ostream>

namespace flowd::bench {

// Latencies in microseconds, log-linear: exact below 128 µs, then 64 buckets per power of
// two (at most 1.6 % above the true value). Fixed size; no allocation while recording.
class Histogram {
 public:
  void Add(uint64_t us) {
    us = std::min<uint64_t>(us, uint64_t{1} << 40);
    ++counts_[Index(us)];
    ++count_;
    max_ = std::max(max_, us);
  }
  uint64_t count() const { return count_; }
  uint64_t max() const { return max_; }

  // The upper edge of the bucket that holds the value at `percent`.
  uint64_t Percentile(double percent) const {
    if (count_ == 0) return 0;
    const auto rank = static_cast<uint64_t>(std::ceil(percent / 100.0 * static_cast<double>(count_)));
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= std::max<uint64_t>(rank, 1)) return std::min(Upper(i), max_);
    }
    return max_;
  }

  void Print(std::ostream& out) const {
    uint64_t seen = 0;
    out << "# latency histogram: upper_us count cumulative_percent\n";
    for (size_t i = 0; i < counts_.size(); ++i) {
      if (counts_[i] == 0) continue;
      seen += counts_[i];
      out << Upper(i) << ' ' << counts_[i] << ' ' << 100.0 * static_cast<double>(seen) / static_cast<double>(count_)
          << '\n';
    }
  }

 private:
  static constexpr int kSubBits = 6;
  static constexpr size_t kExact = size_t{2} << kSubBits;  // 0..127 have a bucket each

  static size_t Index(uint64_t v) {
    if (v < kExact) return v;
    const int shift = std::bit_width(v) - (kSubBits + 1);  // v >> shift is in [64, 127]
    return (static_cast<size_t>(shift + 1) << kSubBits) + ((v >> shift) - (uint64_t{1} << kSubBits));
  }
  static uint64_t Upper(size_t i) {
    if (i < kExact) return i;
    const size_t shift = (i >> kSubBits) - 1;
    const uint64_t mantissa = (i & ((size_t{1} << kSubBits) - 1)) + (uint64_t{1} << kSubBits);
    return ((mantissa + 1) << shift) - 1;
  }

  std::array<uint64_t, 64 << kSubBits> counts_{};
  uint64_t count_ = 0;
  uint64_t max_ = 0;
};

}  // namespace flowd::bench
