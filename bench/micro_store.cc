// Micro-benchmarks, store: run records written through the store's group-commit writer
// thread (flowd::store::Store::AsyncWrite), with --durability sync (WAL fsync per group)
// and async (no fsync), and 1 to 256 batches in flight at once.
//
// Each iteration queues `inflight` batches shaped like the one Engine::Start writes for a
// new run and waits for all of them on an io_context, as the server does. The counter
// batches_per_group is batches / group writes: 1 with one batch in flight, and close to
// `inflight` when group commit works (many runs, one WriteBatch and one fsync). The
// database lives in a fresh folder under $TMPDIR (tools/bench points it at the disk).
#include <benchmark/benchmark.h>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <filesystem>
#include <random>
#include <vector>

#include "micro_common.h"
#include "store/store.h"

namespace {

namespace asio = boost::asio;
namespace store = flowd::store;

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("flowd-microbench-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

struct NewRun {
  std::string run_id, record, by_flow;
};

void BM_StoreWrite(benchmark::State& state) {
  const bool sync = state.range(0) != 0;
  const int inflight = static_cast<int>(state.range(1));
  TempDir dir;
  std::string error;
  auto db = store::Store::Open({dir.path.string(), sync}, &error);
  if (!db) {
    state.SkipWithError(error.c_str());
    return;
  }
  // Made up front, so the loop measures the store and not the encoder.
  std::vector<NewRun> runs(4096);
  for (auto& r : runs) {
    auto rec = flowd::bench::BenchRecord();
    r = {rec.run_id, flowd::flow::EncodeRecord(rec), store::RunsByFlowKey(rec.flow_id, rec.created_at, rec.run_id)};
  }

  asio::io_context ioc(1);
  size_t next = 0;
  bool failed = false;
  const uint64_t groups_before = db->groups_written();
  for (auto _ : state) {
    auto work = asio::make_work_guard(ioc);
    int pending = inflight;
    for (int i = 0; i < inflight; ++i) {
      const NewRun& r = runs[next++ % runs.size()];
      store::Batch batch;
      batch.Put(store::Cf::kRuns, r.run_id, r.record);
      batch.Put(store::Cf::kPendingRuns, r.run_id, "");
      batch.Put(store::Cf::kRunsByFlow, r.by_flow, "");
      db->AsyncWrite(std::move(batch), asio::bind_executor(ioc, [&](store::Status s) {
                       failed |= !s.ok();
                       if (--pending == 0) work.reset();
                     }));
    }
    ioc.run();
    ioc.restart();
  }
  if (failed) state.SkipWithError("a store write failed");
  const double batches = static_cast<double>(state.iterations()) * inflight;
  const double groups = static_cast<double>(db->groups_written() - groups_before);
  state.counters["batches_per_group"] = groups > 0 ? batches / groups : 0;
  state.SetItemsProcessed(static_cast<int64_t>(batches));
}
BENCHMARK(BM_StoreWrite)
    ->ArgNames({"sync", "inflight"})
    ->ArgsProduct({{1, 0}, {1, 4, 16, 64, 256}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
