#include "flow/engine.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "base/clock.h"
#include "base/ids.h"
#include "base/log.h"
#include "base/spawn.h"
#include "flow/nodes.h"

namespace flowd::flow {
namespace asio = boost::asio;
using store::Cf;

Engine::Engine(asio::io_context& ioc, store::Store& store, Catalog& catalog, const EngineOptions& options)
    : ioc_(ioc), store_(store), catalog_(catalog), options_(options),
      // Live runs are capped at max_queued_runs; the rest of the room holds ended runs for a
      // while and keeps probe chains short.
      table_(options.max_queued_runs * 2 + 65536) {}

asio::awaitable<std::optional<Error>> Engine::Start(SavedFlow saved, RunRecord& rec) {
  if (live_.fetch_add(1) >= options_.max_queued_runs) {
    live_.fetch_sub(1);
    co_return Error{"queue_full", "Too many runs are waiting; retry later.", "", {}};
  }
  rec.run_id = NewUuidV4();
  rec.flow_id = saved.flow_id;
  rec.flow_version = saved.version;
  rec.created_at = NowMillis();
  rec.nodes_total = static_cast<uint32_t>(saved.flow->nodes.size());
  store::Batch batch;
  batch.Put(Cf::kRuns, rec.run_id, EncodeRecord(rec));
  batch.Put(Cf::kPendingRuns, rec.run_id, "");
  batch.Put(Cf::kRunsByFlow, store::RunsByFlowKey(rec.flow_id, rec.created_at, rec.run_id), "");
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  if (!status.ok()) {
    live_.fetch_sub(1);
    co_return Error{"unavailable", "The store cannot take writes right now.", "", {}};
  }
  RunTable::Entry* entry = table_.Insert(std::make_unique<RunTable::Entry>(rec));
  Launch(std::move(saved.flow), rec, entry);
  co_return std::nullopt;
}

void Engine::Launch(std::shared_ptr<const Flow> flow, RunRecord rec, RunTable::Entry* entry) {
  SpawnLogged(asio::make_strand(ioc_), Execute(std::move(flow), std::move(rec), entry), "run");
}

asio::awaitable<void> Engine::Execute(std::shared_ptr<const Flow> flow, RunRecord rec, RunTable::Entry* entry) {
  rec.started_at = NowMillis();
  if (entry) entry->started_at.store(rec.started_at, std::memory_order_relaxed);
  std::vector<Value> results(flow->nodes.size());
  std::vector<const Value*> wired;
  for (size_t i = 0; i < flow->nodes.size(); ++i) {
    const Node& node = flow->nodes[i];
    wired.clear();
    for (const auto& e : node.edges) wired.push_back(&results[e.from]);
    const Value* run_input = nullptr;
    if (node.type == "api-input") {
      const std::string& name = node.Field("api_input_name")->text;
      for (const auto& [k, v] : rec.inputs) {
        if (k == name) run_input = &v;
      }
    }
    results[i] = RunLocalNode(node, NodeInputs(node, wired), run_input);
    rec.nodes_done = static_cast<uint32_t>(i + 1);
    if (entry) entry->nodes_done.store(rec.nodes_done, std::memory_order_relaxed);
  }
  for (const auto& out : flow->outputs) rec.outputs.emplace_back(out.name, results[out.node]);
  rec.status = RunStatus::kComplete;
  co_await Finish(std::move(rec), entry);
}

asio::awaitable<void> Engine::Finish(RunRecord rec, RunTable::Entry* entry) {
  rec.finished_at = NowMillis();
  if (entry) {
    entry->final_json.store(new std::string(RenderRun(rec)), std::memory_order_release);
    entry->status.store(rec.status, std::memory_order_release);
  }
  live_.fetch_sub(1);
  RunRecord stored = rec;
  if (!rec.save) stored.outputs.clear();
  const std::string encoded = EncodeRecord(stored);
  // The final record must land, or the run would run again after a restart; a failing
  // store (full disk) is retried until it takes the write.
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int attempt = 0;; ++attempt) {
    store::Batch batch;
    batch.Put(Cf::kRuns, rec.run_id, encoded);
    batch.Delete(Cf::kPendingRuns, rec.run_id);
    auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
    if (status.ok()) break;
    timer.expires_after(std::chrono::milliseconds(std::min(100 << std::min(attempt, 6), 5000)));
    co_await timer.async_wait(asio::use_awaitable);
  }
  if (entry) entry->evictable_at.store(NowMillis() + options_.keep_ended_ms, std::memory_order_release);
}

asio::awaitable<std::optional<std::string>> Engine::Find(std::string account, std::string flow_id,
                                                         std::string run_id) {
  std::optional<std::string> found;
  bool in_table = table_.Read(run_id, [&](const RunTable::Entry& e) {
    if (e.account == account && e.flow_id == flow_id) found = e.Render();
  });
  if (in_table) co_return found;
  auto [s, json] = co_await store_.AsyncGet(Cf::kRuns, run_id, asio::as_tuple(asio::use_awaitable));
  if (!s.ok()) co_return std::nullopt;
  RunRecord rec;
  if (!DecodeRecord(json, rec) || rec.account != account || rec.flow_id != flow_id) co_return std::nullopt;
  co_return RenderRun(rec);
}

asio::awaitable<Engine::Page> Engine::List(std::string flow_id,
                                           std::optional<RunStatus> status, size_t limit, std::string cursor) {
  Page page;
  const std::string prefix = store::RunsByFlowPrefix(flow_id);
  std::string after = cursor.empty() ? "" : prefix + cursor;
  // A status filter may skip rows: keep reading until the page is full or the flow ends.
  for (int rounds = 0; page.runs.size() < limit && rounds < 50; ++rounds) {
    const size_t want = limit - page.runs.size();
    auto rows = co_await store_.AsyncScan(Cf::kRunsByFlow, prefix, after, want, asio::use_awaitable);
    if (rows.empty()) {
      after.clear();
      break;
    }
    std::vector<std::string> ids;
    for (const auto& row : rows) ids.push_back(row.key.substr(row.key.rfind('/') + 1));
    auto records = co_await store_.AsyncMultiGet(Cf::kRuns, ids, asio::use_awaitable);
    for (size_t i = 0; i < rows.size(); ++i) {
      after = rows[i].key;
      // A live run's table entry is fresher than its stored record.
      std::optional<std::string> shown;
      std::optional<RunStatus> live_status;
      table_.Read(ids[i], [&](const RunTable::Entry& e) {
        shown = e.Render();
        live_status = e.status.load(std::memory_order_acquire);
      });
      RunRecord rec;
      if (!shown) {
        if (!records[i] || !DecodeRecord(*records[i], rec)) continue;
        live_status = rec.status;
        shown = RenderRun(rec);
      }
      if (status && live_status != *status) continue;
      page.runs.push_back(std::move(*shown));
    }
    if (rows.size() < want) {
      after.clear();
      break;
    }
  }
  if (!after.empty()) page.next_cursor = after.substr(prefix.size());
  co_return page;
}

size_t Engine::Resume() {
  std::vector<std::string> ids;
  store_.ScanSync(Cf::kPendingRuns, "", [&](std::string_view key, std::string_view) {
    ids.emplace_back(key);
    return true;
  });
  size_t resumed = 0;
  for (const auto& id : ids) {
    std::string json;
    RunRecord rec;
    if (!store_.GetSync(Cf::kRuns, id, &json).ok() || !DecodeRecord(json, rec)) {
      Log(LogLevel::kError, "pending run has no readable record", {{"run_id", id}});
      continue;
    }
    auto flow = catalog_.LoadVersionSync(rec.flow_id, rec.flow_version);
    live_.fetch_add(1);
    if (!flow) {
      rec.status = RunStatus::kFailed;
      rec.error_code = "flow_unavailable";
      rec.error_message = "The flow version this run was accepted with could not be loaded.";
      SpawnLogged(ioc_, Finish(rec, table_.Insert(std::make_unique<RunTable::Entry>(rec))), "finish");
      continue;
    }
    // A resumed run starts over: outputs and progress from the lost attempt are dropped.
    rec.status = RunStatus::kPending;
    rec.outputs.clear();
    rec.nodes_done = 0;
    RunTable::Entry* entry = table_.Insert(std::make_unique<RunTable::Entry>(rec));
    Launch(std::move(flow), std::move(rec), entry);
    ++resumed;
  }
  return resumed;
}

void Engine::StartSweeper() { SpawnLogged(ioc_, Sweeper(), "run table sweeper"); }

asio::awaitable<void> Engine::Sweeper() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    timer.expires_after(std::chrono::milliseconds(250));
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    table_.Sweep(NowMillis());
  }
}

}  // namespace flowd::flow
