// The node kinds flowd runs, and what each one does. Every kind is listed in one table
// (nodes.cc); a processorType that is not there is refused when a flow is saved.
// Node functions are pure and run on the run's strand.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "flow/flow.h"

namespace flowd::flow {

struct NodeKind {
  std::string_view type;
  // The field fed by an edge without inputName. "" means none; kPrimaryInputNames means
  // the node's config.inputNames, in order.
  std::string_view primary;
  std::vector<std::string_view> required;  // fields that must be set or wired
  uint32_t outputs = 1;
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

// Runs a node kind that needs nothing outside the process. `run_input` is the run's value
// for an api-input node (nullptr: use the default).
Value RunLocalNode(const Node& node, const NodeInputs& in, const Value* run_input);

}  // namespace flowd::flow
