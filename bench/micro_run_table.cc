// Micro-benchmarks, run table: publishing a run (Insert, as POST /run does once the run is
// durable) and reading one (Read + Render, as GET /run does for a live or recent run).
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "flow/run_table.h"
#include "micro_common.h"

namespace {

using flowd::flow::RunTable;

// flowd's table for --max-queued-runs 100000 (capacity 2 x 100000 + 65536).
constexpr size_t kCapacity = 2 * 100000 + 65536;

std::vector<flowd::flow::RunRecord> Records(size_t n) {
  std::vector<flowd::flow::RunRecord> recs;
  for (size_t i = 0; i < n; ++i) recs.push_back(flowd::bench::BenchRecord());
  return recs;
}

// Inserts into a table that holds state.range(0) runs already (the load a busy server has).
void BM_RunTableInsert(benchmark::State& state) {
  const size_t resident = static_cast<size_t>(state.range(0));
  constexpr size_t kBatch = 65536;  // inserts between two refills
  const auto recs = Records(resident + kBatch);
  auto table = std::make_unique<RunTable>(kCapacity);
  size_t next = 0;
  auto refill = [&] {
    table = std::make_unique<RunTable>(kCapacity);
    for (size_t i = 0; i < resident; ++i) {
      table->Insert(std::make_unique<RunTable::Entry>(recs[kBatch + i], nullptr));
    }
    next = 0;
  };
  refill();
  for (auto _ : state) {
    if (next == kBatch) {
      state.PauseTiming();
      refill();
      state.ResumeTiming();
    }
    if (!table->Insert(std::make_unique<RunTable::Entry>(recs[next++], nullptr))) state.SkipWithError("table full");
  }
}
BENCHMARK(BM_RunTableInsert)->Arg(0)->Arg(100000);

void BM_RunTableRead(benchmark::State& state) {
  const auto recs = Records(static_cast<size_t>(state.range(0)));
  RunTable table(kCapacity);
  for (const auto& r : recs) table.Insert(std::make_unique<RunTable::Entry>(r, nullptr));
  size_t i = 0;
  for (auto _ : state) {
    std::string json;
    bool found = table.Read(recs[i].run_id, [&](const RunTable::Entry& e) { json = e.Render(); });
    if (!found) state.SkipWithError("run not found");
    benchmark::DoNotOptimize(json);
    if (++i == recs.size()) i = 0;
  }
}
BENCHMARK(BM_RunTableRead)->Arg(1000)->Arg(100000);

}  // namespace
