// The flow model: the node graph that AI-Flow's editor exports, parsed, validated and
// sorted. A Flow is immutable once built and is shared (shared_ptr<const Flow>) by the
// catalog and every run that uses that version, from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"
#include "base/json.h"

namespace flowd::flow {

struct NodeKind;

struct Edge {
  std::string field;  // the field it replaces; the kind's primary input already resolved
  size_t from = 0;    // index of the source node in Flow::nodes
  uint32_t output = 0;
};

struct Node {
  std::string name;
  std::string type;             // processorType
  const NodeKind* kind = nullptr;
  std::vector<std::pair<std::string, Value>> fields;  // the node's own configuration
  std::vector<std::string> input_names;               // config.inputNames
  std::vector<Edge> edges;

  const Value* Field(std::string_view field) const;
};

struct ApiInput {
  std::string name;
  size_t node = 0;
  std::optional<Value> default_value;  // present: the input is optional
  bool is_file_url = false;
};

struct ApiOutput {
  std::string name;
  size_t node = 0;
  std::string source;  // name of the node that feeds it, "" when unwired
};

struct Flow {
  std::string name;
  std::string nodes_json;  // the nodes array as saved, compact; what GET returns
  std::vector<Node> nodes;  // dependencies first
  std::vector<ApiInput> inputs;
  std::vector<ApiOutput> outputs;

  const ApiInput* FindInput(std::string_view name) const;
};

// Limits on what a saved flow may hold.
inline constexpr size_t kMaxNodes = 1000;

// Parses a flow document (`[nodes...]` or `{"name", "nodes"}`) and validates all of it.
// On failure returns nullptr and fills `error` (invalid_json or invalid_flow with every
// problem found). `body` gets simdjson padding appended to its capacity.
std::shared_ptr<const Flow> ParseFlow(std::string& body, Error& error);

// Rebuilds a flow from its stored parts (already validated when it was saved).
std::shared_ptr<const Flow> LoadFlow(std::string name, std::string nodes_json, Error& error);

}  // namespace flowd::flow
