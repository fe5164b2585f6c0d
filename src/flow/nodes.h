// The node kinds flowd runs, and what each one does. Every kind is listed in one table
// (nodes.cc); a processorType that is not there is refused when a flow is saved.
// Node functions are pure and run on the run's strand.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/thread_pool.hpp>

#include <chrono>
#include <atomic>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "base/json.h"
#include "flow/flow.h"
#include "net/http_client.h"

namespace flowd::flow {

struct NodeKind {
  std::string_view type;
  // The field fed by an edge without inputName. "" means none; kPrimaryInputNames means
  // the node's config.inputNames, in order.
  std::string_view primary;
  std::vector<std::string_view> required;  // fields that must be set or wired
  uint32_t outputs = 1;
  std::chrono::milliseconds timeout{0};     // 0: runs in place, never suspends
};

inline constexpr std::string_view kPrimaryInputNames = "*inputNames";

const NodeKind* FindKind(std::string_view type);

// What a node sees when it runs: its configuration with the wired values laid over it.
class NodeInputs {
 public:
  NodeInputs(const Node& node, std::vector<const Value*> wired) : node_(node), wired_(std::move(wired)) {}
  const Value* Get(std::string_view field) const;
  std::string Text(std::string_view field, std::string_view fallback = "") const;

 private:
  const Node& node_;
  std::vector<const Value*> wired_;  // parallel to node_.edges
};

// merger-prompt: replaces ${input-1}, ${input-2}, ... with the texts of the node's inputs
// in one left-to-right pass, so text that a value brings in is never scanned again.
std::string RenderTemplate(std::string_view prompt, const std::vector<std::string>& values);

// Where model calls go: base URL and key per provider, from the environment
// (OPENAI_BASE_URL / OPENAI_API_KEY, OPENROUTER_*, DEEPSEEK_*, ANTHROPIC_*).
struct Provider {
  std::string base_url;
  std::string api_key;
};
struct Providers {
  Provider openai, openrouter, deepseek, anthropic;
  static Providers FromEnvironment();
};

class Webhooks;

// What nodes that reach outside the process use. Borrowed; outlives every run.
struct NodeEnv {
  net::HttpClient& http;
  const Providers& providers;
  Webhooks& webhooks;
  // Where CPU-heavy node work (regular expressions) runs, away from the event loop.
  boost::asio::thread_pool& compute;
  // Backoff before retrying a model call when the provider gives no Retry-After.
  std::chrono::milliseconds retry_base{500};
};

struct NodeResult {
  Value value;
  std::optional<Error> error;  // code node_failed or node_timeout; the message is safe to show
};

// The run a node belongs to, for nodes that act in its name (webhook).
struct RunContext {
  std::string run_id, account, flow_id;
  bool save = true;
  bool resumed = false;  // accepted before this process started
};

// Runs a node of a kind with a timeout (one that suspends), on the caller's executor.
boost::asio::awaitable<NodeResult> RunRemoteNode(const Node& node, const NodeInputs& in, const RunContext& run,
                                                 NodeEnv& env);

// Replaces every `key` (when non-empty) in `text` with "[redacted]".
std::string Redact(std::string text, std::string_view key);

// replace-text's settings, read on the run's strand so the work can go elsewhere.
struct ReplaceSpec {
  std::string text, search, replacement;
  bool all = true, case_sensitive = true, use_regex = false;
};
ReplaceSpec ReadReplaceSpec(const NodeInputs& in);

// replace-text. Fails (returns an error message) on a pattern that does not compile or a
// match that exceeds the regex engine's work limit (Boost.Regex gives up on catastrophic
// backtracking rather than running for ever). CPU-bound: runs on NodeEnv::compute.
// `stop` (any thread may set it) ends the work between two matches: one match is bounded
// by the engine's limit, but a text may hold a million of them.
std::optional<std::string> ReplaceText(const ReplaceSpec& spec, std::string& out,
                                       const std::atomic<bool>* stop = nullptr);

// Runs a node kind that needs nothing outside the process. `run_input` is the run's value
// for an api-input node (nullptr: use the default).
NodeResult RunLocalNode(const Node& node, const NodeInputs& in, const Value* run_input);

}  // namespace flowd::flow
