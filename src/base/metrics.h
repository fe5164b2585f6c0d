// Metric types for the Prometheus text format. Each module owns its own metrics as
// members and the REST layer renders them all at GET /metrics; there is no global
// registry. Updates are relaxed atomic adds (no locks, no allocation), safe from any
// thread; rendering reads a consistent-enough snapshot, as Prometheus expects.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>

namespace flowd {

class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A histogram over fixed bucket bounds, in the unit the caller chooses (seconds for
// latencies, plain counts for sizes).
class Histogram {
 public:
  static constexpr size_t kMaxBuckets = 16;
  // `bounds` are ascending upper bounds; +Inf is implied.
  Histogram(std::initializer_list<double> bounds);
  explicit Histogram(std::span<const double> bounds);
  void Observe(double v);

  // Appends `name_bucket{labels,le="…"}`, `name_sum` and `name_count` lines. `labels`
  // is "" or `key="value",…` without braces.
  void Render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::array<double, kMaxBuckets> bounds_{};
  size_t n_ = 0;
  std::array<std::atomic<uint64_t>, kMaxBuckets + 1> counts_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum * 1e6, so it can be an atomic integer
};

// Latency buckets in seconds, 100 µs to 10 s.
inline constexpr double kLatencyBounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                            0.05,   0.1,     0.25,   0.5,   1,      2.5,   10};

// `# HELP` and `# TYPE` lines.
void MetricHeader(std::string& out, std::string_view name, std::string_view type, std::string_view help);
// One sample line: `name{labels} value`.
void MetricLine(std::string& out, std::string_view name, std::string_view labels, double value);

}  // namespace flowd
