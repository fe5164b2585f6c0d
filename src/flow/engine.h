// The engine: accepts runs durably, executes them, and answers where each run stands.
//
// A run is accepted only once its record and its entry in the pending-runs index are in
// the store (synced under --durability sync); only then is it published in the RunTable
// and started. Each run executes as one coroutine on its own strand. When it ends, the
// final record replaces the first and the index entry goes, in one batch; until that
// write lands the run stays in the index, so a crash at any moment re-runs it from the
// start at the next Resume() (node execution is at least once).
//
// Ownership: main owns the Engine, the RunTable, the Catalog and the Store, and keeps
// them alive until the io_context has stopped. Methods are safe from any io_context
// thread.
//
// Inside a run, a node starts as soon as every node it reads from has finished, so
// independent branches overlap; nodes of kinds that run in place execute inline, the
// others as child coroutines on the run's strand, each under its kind's timeout. The
// first failure (or a cancel) cancels the nodes still running and starts no new one.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/error.h"
#include "base/metrics.h"
#include "flow/catalog.h"
#include "flow/flow.h"
#include "flow/nodes.h"
#include "flow/run.h"
#include "flow/run_table.h"
#include "store/store.h"

namespace flowd::flow {

struct EngineOptions {
  size_t max_queued_runs = 100000;  // live (not yet ended) runs before 429 queue_full
  int64_t keep_ended_ms = 5000;     // how long an ended run stays in the RunTable
  int64_t retention_ms = 48LL * 3600 * 1000;  // --retention: ended runs are deleted after this
};

class Engine {
 public:
  Engine(boost::asio::io_context& ioc, store::Store& store, Catalog& catalog, NodeEnv& nodes,
         const EngineOptions& options);

  // Persists and starts a run described by `rec` (inputs and options already decoded).
  // On success fills in the run's id and times; errors: queue_full, unavailable.
  // `with_run`, when set, adds records that must be written atomically with the run.
  using BatchExtra = std::function<void(store::Batch&, const RunRecord&)>;
  boost::asio::awaitable<std::optional<Error>> Start(SavedFlow flow, RunRecord& rec, BatchExtra with_run = {});

  // What the API may ask of one run.
  struct RunView {
    std::string object;                     // the public run object, as of now
    bool ended = false;
    std::shared_ptr<RunControl> control;    // null once the run has left the table
    std::vector<std::string> stored_events; // the events, when read back from the store
  };
  // `run_id` if it is a run of `flow_id` owned by `account`.
  boost::asio::awaitable<std::optional<RunView>> Find(std::string account, std::string flow_id,
                                                      std::string run_id);

  // Waits until the run has ended, or its events pass `seen`, or `deadline`. False only
  // when the deadline came first; callers look at the run again either way.
  static boost::asio::awaitable<bool> WaitForChange(std::shared_ptr<RunControl> control, size_t seen,
                                                    std::chrono::steady_clock::time_point deadline);

  // Asks a live run to stop: it ends `canceled` unless it ends first.
  static void Cancel(const std::shared_ptr<RunControl>& control);

  struct Page {
    std::vector<std::string> runs;  // public run objects, newest first
    std::string next_cursor;        // "" at the end
  };
  // One page of a flow's runs. The caller checks that the flow is the caller's: a flow id
  // never changes owner, so its runs are all its owner's. `status`: nullopt for all.
  boost::asio::awaitable<Page> List(std::string flow_id, std::optional<RunStatus> status,
                                    size_t limit, std::string cursor);

  // Start-up, before serving (blocking store reads): restarts every run left pending.
  size_t Resume();

  // Starts the periodic RunTable sweep and the retention sweep (which deletes ended runs,
  // their events and ended deliveries once --retention has passed, through the store's
  // reader pool and writer: never on the event loop). Both end when the io_context stops.
  void StartSweeper();

  size_t live_runs() const { return live_.load(std::memory_order_relaxed); }
  void RenderMetrics(std::string& out) const;
  RunTable& table() { return table_; }

 private:
  // Registers the run in the table and starts it on a new strand. `resumed`: the run was
  // accepted before this process started (it may have made webhook deliveries already).
  void Launch(std::shared_ptr<const Flow> flow, RunRecord rec, bool resumed = false);
  boost::asio::awaitable<void> Execute(std::shared_ptr<const Flow> flow, RunRecord rec, bool resumed, RunTable::Entry* entry,
                                       std::shared_ptr<RunControl> control);
  boost::asio::awaitable<void> Finish(RunRecord rec, RunTable::Entry* entry, std::shared_ptr<RunControl> control);
  boost::asio::awaitable<void> Sweeper();
  boost::asio::awaitable<void> RetentionSweeper();
  boost::asio::awaitable<size_t> DeleteExpired(int64_t cutoff);

  boost::asio::io_context& ioc_;
  store::Store& store_;
  Catalog& catalog_;
  NodeEnv& nodes_;
  EngineOptions options_;
  RunTable table_;
  std::atomic<size_t> live_{0};
  std::atomic<size_t> table_linked_{0};  // entries in table_ at the last sweep
  Counter ended_[4];  // by RunStatus
};

}  // namespace flowd::flow
