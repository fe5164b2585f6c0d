#include "base/metrics.h"

#include <cstdio>

namespace flowd {

Histogram::Histogram(std::initializer_list<double> bounds) : Histogram(std::span<const double>(bounds.begin(), bounds.size())) {}

Histogram::Histogram(std::span<const double> bounds) {
  for (double b : bounds) {
    if (n_ < kMaxBuckets) bounds_[n_++] = b;
  }
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < n_ && v > bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<uint64_t>(v * 1e6 + 0.5), std::memory_order_relaxed);
}

namespace {
std::string Number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

void MetricLine(std::string& out, std::string_view name, std::string_view labels, double value) {
  out += name;
  if (!labels.empty()) {
    out += '{';
    out += labels;
    out += '}';
  }
  out += ' ';
  out += Number(value);
  out += '\n';
}

void MetricHeader(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void Histogram::Render(std::string& out, std::string_view name, std::string_view labels) const {
  const std::string bucket = std::string(name) + "_bucket";
  const std::string sep = labels.empty() ? "" : std::string(labels) + ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= n_; ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    std::string le = i < n_ ? Number(bounds_[i]) : "+Inf";
    MetricLine(out, bucket, sep + "le=\"" + le + "\"", static_cast<double>(cumulative));
  }
  MetricLine(out, std::string(name) + "_sum", labels, sum_micros_.load(std::memory_order_relaxed) / 1e6);
  MetricLine(out, std::string(name) + "_count", labels, static_cast<double>(cumulative));
}

}  // namespace flowd
