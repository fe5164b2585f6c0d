// Structured logging: one JSON object per line on stderr. Callers pass already-safe values;
// secrets (keys, provider tokens) are never handed to the logger. Any thread.
#pragma once

#include <initializer_list>
#include <string_view>
#include <utility>

namespace flowd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

bool ParseLogLevel(std::string_view s, LogLevel& out);
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);

using LogField = std::pair<std::string_view, std::string_view>;
void Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});

}  // namespace flowd
