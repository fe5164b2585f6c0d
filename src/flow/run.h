// A run as it is stored and shown: the record kept in the store's `runs` family, and the
// public run object of API.md. Plain data; any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/json.h"

namespace flowd::flow {

enum class RunStatus : uint8_t { kPending, kComplete, kFailed, kCanceled };

std::string_view StatusName(RunStatus s);
bool IsTerminal(RunStatus s);

using NamedValues = std::vector<std::pair<std::string, Value>>;

struct RunRecord {
  std::string run_id;
  std::string flow_id;
  std::string account;
  uint32_t flow_version = 0;
  RunStatus status = RunStatus::kPending;
  int64_t created_at = 0;   // Unix ms
  int64_t started_at = 0;   // 0: not yet
  int64_t finished_at = 0;  // 0: not yet
  uint32_t nodes_done = 0;
  uint32_t nodes_total = 0;
  bool save = true;      // run_options.save: false keeps outputs out of the store
  std::string global_webhook_url;        // run_options.global_webhook: gets the run object at the end
  std::string global_webhook_signature;  // its AI_FLOW_SIGNATURE value
  NamedValues inputs;    // as the client sent them (defaults are applied when it runs)
  NamedValues outputs;   // by api_output_name
  std::string error_code, error_message, error_node;
  std::vector<std::string> events;  // each a JSON object; event N is events[N-1]
};

// The stored form (all fields, inputs included).
std::string EncodeRecord(const RunRecord& r);
bool DecodeRecord(std::string_view json, RunRecord& r);

// The public run object of API.md.
std::string RenderRun(const RunRecord& r);

}  // namespace flowd::flow
