// Micro-benchmarks, engine: the work of one run of the bench flow without the store: each
// node's step (flowd::flow::RunLocalNode, wired as the engine wires it), the merger-prompt
// render alone, and the record and run object that the engine encodes when a run ends.
#include <benchmark/benchmark.h>

#include <vector>

#include "flow/nodes.h"
#include "micro_common.h"

namespace {

using flowd::Value;
namespace flow = flowd::flow;

// The node steps of Engine::Execute over the bench flow, for the body {"topic":"cats"}: the
// flow's nodes come sorted, so running them in order is a valid schedule. (The engine also
// publishes a node_started and a node_finished event per node; not measured here.)
std::vector<Value> ExecuteAll(const flow::Flow& f, const flow::RunRecord& rec) {
  std::vector<Value> results(f.nodes.size());
  std::vector<const Value*> wired;
  for (size_t i = 0; i < f.nodes.size(); ++i) {
    const flow::Node& node = f.nodes[i];
    wired.clear();
    for (const auto& e : node.edges) wired.push_back(&results[e.from]);
    const Value* run_input = nullptr;
    if (node.type == "api-input") {
      const std::string& name = node.Field("api_input_name")->text;
      for (const auto& [k, v] : rec.inputs) {
        if (k == name) run_input = &v;
      }
    }
    results[i] = flow::RunLocalNode(node, flow::NodeInputs(node, wired), run_input).value;
  }
  return results;
}

void BM_EngineRun4Nodes(benchmark::State& state) {
  const auto& f = flowd::bench::BenchFlow();
  const auto rec = flowd::bench::BenchRecord();
  for (auto _ : state) benchmark::DoNotOptimize(ExecuteAll(f, rec));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * f.nodes.size()));
}
BENCHMARK(BM_EngineRun4Nodes);

void BM_MergerPromptRender(benchmark::State& state) {
  const std::vector<std::string> values = {"cats"};
  for (auto _ : state) {
    benchmark::DoNotOptimize(flow::RenderTemplate("Write three short lines about ${input-1}.", values));
  }
}
BENCHMARK(BM_MergerPromptRender);

// What Engine::Finish encodes: the stored record and the public run object.
void BM_EncodeFinishedRun(benchmark::State& state) {
  auto rec = flowd::bench::BenchRecord();
  rec.status = flow::RunStatus::kComplete;
  rec.started_at = rec.created_at + 1;
  rec.finished_at = rec.created_at + 2;
  rec.nodes_done = 4;
  rec.outputs.emplace_back("text", Value::String("Write three short lines about cats."));
  for (auto _ : state) {
    benchmark::DoNotOptimize(flow::EncodeRecord(rec));
    benchmark::DoNotOptimize(flow::RenderRun(rec));
  }
}
BENCHMARK(BM_EncodeFinishedRun);

}  // namespace
