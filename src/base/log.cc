#include "base/log.h"

#include <atomic>
#include <cstdio>
#include <string>

#include "base/clock.h"
#include "base/json.h"

namespace flowd {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

bool ParseLogLevel(std::string_view s, LogLevel& out) {
  for (int i = 0; i < 4; ++i) {
    if (s == kNames[i]) {
      out = static_cast<LogLevel>(i);
      return true;
    }
  }
  return false;
}

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed); }

void Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  std::string line;
  JsonWriter w(line);
  w.BeginObject().Key("ts").String(FormatTime(NowMillis()));
  w.Key("level").String(kNames[static_cast<int>(level)]).Key("msg").String(msg);
  for (const auto& [k, v] : fields) w.Key(k).String(v);
  w.EndObject();
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);  // one call per line: lines never interleave
}

}  // namespace flowd
