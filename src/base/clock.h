// Wall-clock time as flowd stores and prints it: milliseconds since the Unix epoch, and
// RFC 3339 UTC text with milliseconds. Pure functions, any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace flowd {

int64_t NowMillis();

// 1764785051123 -> "2025-12-03T18:04:11.123Z"
std::string FormatTime(int64_t unix_ms);

// Parses durations such as "48h", "10s", "1500ms", "5m", "2d" into milliseconds.
std::optional<int64_t> ParseDurationMs(std::string_view s);

}  // namespace flowd
