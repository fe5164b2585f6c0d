// Shared by the micro-benchmarks: the bench flow (bench/flow_4node.json, the flow that
// tools/bench saves and loads) parsed once, and a run record like the ones POST /run makes.
// Benchmark code only; single-threaded use.
#pragma once

#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include "base/ids.h"
#include "flow/flow.h"
#include "flow/run.h"

namespace flowd::bench {

inline const flow::Flow& BenchFlow() {
  static const std::shared_ptr<const flow::Flow> flow = [] {
    std::ifstream in(FLOWD_BENCH_FLOW);
    std::stringstream text;
    text << in.rdbuf();
    std::string body = text.str();
    Error error;
    auto f = flow::ParseFlow(body, error);
    if (!f) throw std::runtime_error("bench flow does not parse: " + error.message);
    return f;
  }();
  return *flow;
}

// What POST /run stores for the body {"topic":"cats"}.
inline flow::RunRecord BenchRecord() {
  flow::RunRecord rec;
  rec.run_id = NewUuidV4();
  rec.flow_id = NewUuidV4();
  rec.account = "bench";
  rec.flow_version = 1;
  rec.created_at = 1767225600000;
  rec.nodes_total = 4;
  rec.inputs.emplace_back("topic", Value::String("cats"));
  return rec;
}

}  // namespace flowd::bench
