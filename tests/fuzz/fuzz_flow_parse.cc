// Fuzzes flow parsing: ParseFlow on any bytes.
//
// Properties:
//   - a refusal always names a code (invalid_json or invalid_flow);
//   - an accepted flow is sorted (every edge from an earlier node), and its API input and
//     output names are non-empty and unique (FLOWS.md);
//   - a saved flow loads back: LoadFlow(name, nodes_json) succeeds, keeps nodes_json byte for
//     byte and builds the same graph (what a restart does with every stored version);
//   - nodes_json is a fixed point: saving the nodes array that GET returns gives the same
//     text and the same graph again.
#include <cstddef>
#include <cstdint>
#include <string>

#include "flow/flow.h"
#include "fuzz_check.h"

namespace {

using flowd::fuzz::Check;
using flowd::flow::Flow;

bool SameGraph(const Flow& a, const Flow& b) {
  if (a.nodes.size() != b.nodes.size() || a.inputs.size() != b.inputs.size() ||
      a.outputs.size() != b.outputs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    const auto& x = a.nodes[i];
    const auto& y = b.nodes[i];
    if (x.name != y.name || x.type != y.type || x.kind != y.kind || x.fields != y.fields ||
        x.input_names != y.input_names || x.edges.size() != y.edges.size()) {
      return false;
    }
    for (size_t e = 0; e < x.edges.size(); ++e) {
      const auto& p = x.edges[e];
      const auto& q = y.edges[e];
      if (p.field != q.field || p.from != q.from || p.output != q.output) return false;
    }
  }
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i];
    const auto& y = b.inputs[i];
    if (x.name != y.name || x.node != y.node || x.default_value != y.default_value ||
        x.is_file_url != y.is_file_url) {
      return false;
    }
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    const auto& x = a.outputs[i];
    const auto& y = b.outputs[i];
    if (x.name != y.name || x.node != y.node || x.source != y.source) return false;
  }
  return true;
}

// FLOWS.md: api_input_name and api_output_name are required and unique.
bool NamesUnique(const Flow& f) {
  for (size_t i = 0; i < f.inputs.size(); ++i) {
    if (f.inputs[i].name.empty()) return false;
    for (size_t j = 0; j < i; ++j) {
      if (f.inputs[j].name == f.inputs[i].name) return false;
    }
  }
  for (size_t i = 0; i < f.outputs.size(); ++i) {
    if (f.outputs[i].name.empty()) return false;
    for (size_t j = 0; j < i; ++j) {
      if (f.outputs[j].name == f.outputs[i].name) return false;
    }
  }
  return true;
}

// Dependencies first: every edge comes from an earlier node.
bool Sorted(const Flow& f) {
  for (size_t i = 0; i < f.nodes.size(); ++i) {
    for (const auto& e : f.nodes[i].edges) {
      if (e.from >= i) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string body(reinterpret_cast<const char*>(data), size);
  flowd::Error error;
  auto flow = flowd::flow::ParseFlow(body, error);
  if (!flow) {
    Check(error.code == "invalid_json" || error.code == "invalid_flow", "ParseFlow refused without a known code");
    return 0;
  }
  Check(flow->nodes.size() <= flowd::flow::kMaxNodes, "ParseFlow accepted more than kMaxNodes nodes");
  Check(Sorted(*flow), "ParseFlow left a node before one it reads from");
  Check(NamesUnique(*flow), "ParseFlow accepted an empty or repeated api_input_name or api_output_name");

  flowd::Error load_error;
  auto loaded = flowd::flow::LoadFlow(flow->name, flow->nodes_json, load_error);
  Check(loaded != nullptr, "LoadFlow refused the nodes_json that ParseFlow accepted");
  Check(loaded->name == flow->name, "LoadFlow changed the name");
  Check(loaded->nodes_json == flow->nodes_json, "LoadFlow changed nodes_json");
  Check(SameGraph(*flow, *loaded), "LoadFlow built a different graph");

  std::string resaved = flow->nodes_json;
  flowd::Error resave_error;
  auto again = flowd::flow::ParseFlow(resaved, resave_error);
  Check(again != nullptr, "ParseFlow refused the nodes_json it produced");
  Check(again->nodes_json == flow->nodes_json, "nodes_json is not a fixed point of ParseFlow");
  Check(SameGraph(*flow, *again), "re-saving nodes_json built a different graph");
  return 0;
}
