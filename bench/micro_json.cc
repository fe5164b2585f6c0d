// Micro-benchmarks, JSON: decoding the body of POST /v1/flow/{id}/run against the bench
// flow (flowd::flow::DecodeRunRequest), and parsing a whole flow as PUT /v1/flow does.
#include <benchmark/benchmark.h>

#include <fstream>
#include <sstream>

#include "flow/inputs.h"
#include "micro_common.h"

namespace {

using flowd::bench::BenchFlow;

void DecodeRun(benchmark::State& state, const std::string& body) {
  const auto& flow = BenchFlow();
  for (auto _ : state) {
    std::string copy = body;  // DecodeRunRequest pads the body in place, as the server's is
    flowd::flow::RunRecord rec;
    auto error = flowd::flow::DecodeRunRequest(flow, copy, rec);
    if (error) state.SkipWithError(error->message.c_str());
    benchmark::DoNotOptimize(rec);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * body.size()));
}

// The body that tools/bench posts (bench/post_run.lua).
void BM_DecodeRunRequest_Small(benchmark::State& state) { DecodeRun(state, R"({"topic":"cats"})"); }
BENCHMARK(BM_DecodeRunRequest_Small);

void BM_DecodeRunRequest_Options(benchmark::State& state) {
  DecodeRun(state, R"({"topic": "cats", "run_options": {"save": true}})");
}
BENCHMARK(BM_DecodeRunRequest_Options);

void BM_DecodeRunRequest_4KiBText(benchmark::State& state) {
  DecodeRun(state, R"({"topic":")" + std::string(4096, 'x') + R"("})");
}
BENCHMARK(BM_DecodeRunRequest_4KiBText);

void BM_ParseFlow(benchmark::State& state) {
  std::ifstream in(FLOWD_BENCH_FLOW);
  std::stringstream text;
  text << in.rdbuf();
  const std::string body = text.str();
  for (auto _ : state) {
    std::string copy = body;
    flowd::Error error;
    auto flow = flowd::flow::ParseFlow(copy, error);
    benchmark::DoNotOptimize(flow);
  }
}
BENCHMARK(BM_ParseFlow);

}  // namespace
