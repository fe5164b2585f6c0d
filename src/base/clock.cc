#include "base/clock.h"

#include <algorithm>
#include <charconv>
#include <chrono>

namespace flowd {

int64_t NowMillis() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string FormatTime(int64_t unix_ms) {
  using namespace std::chrono;
  const sys_time<milliseconds> t{milliseconds{unix_ms}};
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const int64_t ms_of_day = (t - day).count();
  // By hand: snprintf cost about 3,000 instructions a call, and every run formats a
  // dozen times (created, started, finished, one per event).
  char buf[24];
  auto put = [&buf](int at, int64_t v, int width) {
    for (int i = at + width - 1; i >= at; --i, v /= 10) buf[i] = static_cast<char>('0' + v % 10);
  };
  put(0, std::clamp(int(ymd.year()), 0, 9999), 4);
  buf[4] = '-';
  put(5, unsigned(ymd.month()), 2);
  buf[7] = '-';
  put(8, unsigned(ymd.day()), 2);
  buf[10] = 'T';
  put(11, ms_of_day / 3'600'000, 2);
  buf[13] = ':';
  put(14, ms_of_day / 60'000 % 60, 2);
  buf[16] = ':';
  put(17, ms_of_day / 1000 % 60, 2);
  buf[19] = '.';
  put(20, ms_of_day % 1000, 3);
  buf[23] = 'Z';
  return std::string(buf, sizeof buf);
}

std::optional<int64_t> ParseDurationMs(std::string_view s) {
  int64_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || n < 0) return std::nullopt;
  std::string_view unit(end, s.data() + s.size() - end);
  int64_t mult = 0;
  if (unit == "ms") mult = 1;
  else if (unit == "s" || unit.empty()) mult = 1000;
  else if (unit == "m") mult = 60'000;
  else if (unit == "h") mult = 3'600'000;
  else if (unit == "d") mult = 86'400'000;
  else return std::nullopt;
  if (n > INT64_MAX / mult) return std::nullopt;
  return n * mult;
}

}  // namespace flowd
