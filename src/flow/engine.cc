#include "flow/engine.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <charconv>

#include "base/clock.h"
#include "base/ids.h"
#include "base/log.h"
#include "base/spawn.h"
#include "flow/nodes.h"
#include "flow/webhooks.h"

namespace flowd::flow {
namespace asio = boost::asio;
using store::Cf;

Engine::Engine(asio::io_context& ioc, store::Store& store, Catalog& catalog, NodeEnv& nodes,
               const EngineOptions& options)
    : ioc_(ioc), store_(store), catalog_(catalog), nodes_(nodes), options_(options),
      // Live runs are capped at max_queued_runs; the rest of the room holds ended runs for a
      // while and keeps probe chains short.
      table_(options.max_queued_runs * 2 + 65536) {}

namespace {

std::string EventJson(std::string_view type, std::string_view node, const Error* error = nullptr,
                      std::string_view status = "") {
  std::string out;
  out.reserve(128 + node.size());  // one allocation for a typical event
  JsonWriter w(out);
  w.BeginObject().Key("type").String(type).Key("at").String(FormatTime(NowMillis()));
  if (!node.empty()) w.Key("node").String(node);
  if (error) w.Key("error").BeginObject().Key("code").String(error->code).Key("message").String(error->message).EndObject();
  if (!status.empty()) w.Key("status").String(status);
  w.EndObject();
  return out;
}

}  // namespace

asio::awaitable<std::optional<Error>> Engine::Start(SavedFlow saved, RunRecord& rec, BatchExtra with_run) {
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
  if (with_run) with_run(batch, rec);
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  if (!status.ok()) {
    live_.fetch_sub(1);
    co_return Error{"unavailable", "The store cannot take writes right now.", "", {}};
  }
  Launch(std::move(saved.flow), rec);
  co_return std::nullopt;
}

void Engine::Launch(std::shared_ptr<const Flow> flow, RunRecord rec, bool resumed) {
  auto strand = asio::make_strand(ioc_);
  auto control = std::make_shared<RunControl>();
  control->strand = strand;
  // A run that finds no room in the table still runs; readers then see its stored record.
  RunTable::Entry* entry = table_.Insert(std::make_unique<RunTable::Entry>(rec, control));
  SpawnLogged(strand, Execute(std::move(flow), std::move(rec), resumed, entry, std::move(control)), "run");
}

asio::awaitable<void> Engine::Execute(std::shared_ptr<const Flow> flow, RunRecord rec, bool resumed, RunTable::Entry* entry,
                                      std::shared_ptr<RunControl> control) {
  using namespace asio::experimental::awaitable_operators;
  auto strand = co_await asio::this_coro::executor;
  rec.started_at = NowMillis();
  if (entry) entry->started_at.store(rec.started_at, std::memory_order_relaxed);

  const size_t n = flow->nodes.size();
  std::vector<Value> results(n);
  std::vector<size_t> waiting(n, 0);
  std::vector<std::vector<size_t>> dependents(n);
  for (size_t i = 0; i < n; ++i) {
    for (const auto& e : flow->nodes[i].edges) {
      ++waiting[i];
      dependents[e.from].push_back(i);
    }
  }
  std::vector<size_t> ready;
  for (size_t i = n; i-- > 0;) {
    if (waiting[i] == 0) ready.push_back(i);
  }
  struct Finished {
    size_t node;
    NodeResult result;
  };
  std::vector<Finished> finished;
  // One signal per remote node; kept until the run ends, emitted only while it runs.
  std::vector<std::unique_ptr<asio::cancellation_signal>> cancels(n);
  std::vector<bool> in_flight(n, false);
  size_t running = 0;
  std::optional<Error> failure;
  bool canceled = false;
  asio::steady_timer wake(strand, std::chrono::steady_clock::time_point::max());
  control->wake = &wake;

  auto inputs_of = [&](size_t i) {
    std::vector<const Value*> wired;
    for (const auto& e : flow->nodes[i].edges) wired.push_back(&results[e.from]);
    return NodeInputs(flow->nodes[i], std::move(wired));
  };
  auto stop_running = [&] {
    for (size_t i = 0; i < n; ++i) {
      if (in_flight[i]) cancels[i]->emit(asio::cancellation_type::terminal);
    }
  };

  for (;;) {
    while (!ready.empty() && !failure && !canceled) {
      const size_t i = ready.back();
      ready.pop_back();
      const Node& node = flow->nodes[i];
      control->Publish(EventJson("node_started", node.name), false);
      if (node.kind->timeout.count() == 0) {
        const Value* run_input = nullptr;
        if (node.type == "api-input") {
          for (const auto& [k, v] : rec.inputs) {
            if (k == node.Field("api_input_name")->text) run_input = &v;
          }
        }
        finished.push_back({i, RunLocalNode(node, inputs_of(i), run_input)});
        continue;
      }
      const RunContext run{rec.run_id, rec.account, rec.flow_id, rec.save, resumed};
      cancels[i] = std::make_unique<asio::cancellation_signal>();
      in_flight[i] = true;
      ++running;
      auto task = [](const Node& node, NodeInputs in, RunContext run, NodeEnv& env) -> asio::awaitable<NodeResult> {
        asio::steady_timer limit(co_await asio::this_coro::executor, node.kind->timeout);
        auto outcome =
            co_await (RunRemoteNode(node, in, run, env) || limit.async_wait(asio::as_tuple(asio::use_awaitable)));
        if (outcome.index() == 0) co_return std::get<0>(std::move(outcome));
        co_return NodeResult{Value{}, Error{"node_timeout",
                                            "The node did not finish within " +
                                                std::to_string(node.kind->timeout.count() / 1000) + " s.",
                                            "", {}}};
      };
      asio::co_spawn(strand, task(node, inputs_of(i), run, nodes_),
                     asio::bind_cancellation_slot(cancels[i]->slot(), [&, i](std::exception_ptr e, NodeResult r) {
                       if (e) r = NodeResult{Value{}, Error{"node_failed", "The node stopped unexpectedly.", "", {}}};
                       finished.push_back({i, std::move(r)});
                       in_flight[i] = false;
                       --running;
                       wake.cancel();
                     }));
    }

    if (!finished.empty()) {
      auto batch = std::move(finished);
      finished.clear();
      for (auto& [i, r] : batch) {
        const Node& node = flow->nodes[i];
        if (r.error) {
          // A node stopped by the run (cancel, or another node's failure) reports that,
          // not what the interruption looked like from inside it ("Operation canceled").
          if (canceled || failure) {
            r.error = Error{"node_canceled",
                            canceled ? "Stopped: the run was canceled." : "Stopped: another node failed first.", "", {}};
          }
          control->Publish(EventJson("node_failed", node.name, &*r.error), false);
          if (!failure && !canceled) {
            failure = r.error;
            rec.error_node = node.name;
            stop_running();
          }
          continue;
        }
        results[i] = std::move(r.value);
        rec.nodes_done++;
        if (entry) entry->nodes_done.store(rec.nodes_done, std::memory_order_relaxed);
        control->Publish(EventJson("node_finished", node.name), false);
        for (size_t d : dependents[i]) {
          if (--waiting[d] == 0) ready.push_back(d);
        }
      }
      continue;
    }
    if (control->cancel_requested.load() && !canceled && !failure) {
      canceled = true;
      stop_running();
      continue;
    }
    if (running == 0 && (ready.empty() || failure || canceled)) break;
    wake.expires_at(std::chrono::steady_clock::time_point::max());
    co_await wake.async_wait(asio::as_tuple(asio::use_awaitable));
  }
  control->wake = nullptr;

  if (canceled) {
    rec.status = RunStatus::kCanceled;
    rec.error_node.clear();
  } else if (failure) {
    rec.status = RunStatus::kFailed;
    rec.error_code = failure->code;
    rec.error_message = failure->message;
  } else {
    for (const auto& out : flow->outputs) rec.outputs.emplace_back(out.name, results[out.node]);
    rec.status = RunStatus::kComplete;
  }
  co_await Finish(std::move(rec), entry, std::move(control));
}

asio::awaitable<void> Engine::Finish(RunRecord rec, RunTable::Entry* entry, std::shared_ptr<RunControl> control) {
  rec.finished_at = NowMillis();
  control->Publish(EventJson("run_finished", "", nullptr, StatusName(rec.status)), false);
  {
    std::lock_guard lock(control->mu);
    rec.events = control->events;
  }
  if (entry) {
    entry->final_json.store(new std::string(RenderRun(rec)), std::memory_order_release);
    entry->status.store(rec.status, std::memory_order_release);
  }
  control->Publish("", true);
  live_.fetch_sub(1);
  ended_[static_cast<size_t>(rec.status)].Add();
  // The global webhook gets the run object with its outputs, also when they are not kept.
  std::optional<Delivery> global;
  if (!rec.global_webhook_url.empty()) {
    global.emplace();
    global->delivery_id = Webhooks::DeliveryId(rec.run_id, "global");
    global->account = rec.account;
    global->run_id = rec.run_id;
    global->flow_id = rec.flow_id;
    global->kind = "global";
    global->url = rec.global_webhook_url;
    global->ai_flow_signature = rec.global_webhook_signature;
    const bool save = rec.save;
    rec.save = true;
    global->body = RenderRun(rec);
    rec.save = save;
    global->forget_body = !rec.save;
    global->created_at = global->next_at = NowMillis();
  }
  if (!rec.save) rec.outputs.clear();  // rendered above where they are shown; never stored
  const std::string encoded = EncodeRecord(rec);
  // The final record (with the global delivery) must land, or the run would run again
  // after a restart; a failing store (full disk) is retried until it takes the write.
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (int attempt = 0;; ++attempt) {
    store::Batch batch;
    batch.Put(Cf::kRuns, rec.run_id, encoded);
    batch.Delete(Cf::kPendingRuns, rec.run_id);
    batch.Put(Cf::kRunsByEnd, store::DueKey(rec.finished_at, rec.run_id),
              rec.flow_id + "/" + std::to_string(rec.created_at));
    if (global) Webhooks::Persist(batch, *global);
    auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
    if (status.ok()) break;
    timer.expires_after(std::chrono::milliseconds(std::min(100 << std::min(attempt, 6), 5000)));
    co_await timer.async_wait(asio::use_awaitable);
  }
  if (global) nodes_.webhooks.Launch(std::move(*global));
  if (entry) entry->evictable_at.store(NowMillis() + options_.keep_ended_ms, std::memory_order_release);
}

asio::awaitable<std::optional<Engine::RunView>> Engine::Find(std::string account, std::string flow_id,
                                                             std::string run_id) {
  std::optional<RunView> found;
  bool in_table = table_.Read(run_id, [&](const RunTable::Entry& e) {
    if (e.account != account || e.flow_id != flow_id) return;
    found.emplace();
    found->ended = IsTerminal(e.status.load(std::memory_order_acquire));
    found->object = e.Render();
    found->control = e.control;
  });
  if (in_table) co_return found;
  auto [s, json] = co_await store_.AsyncGet(Cf::kRuns, run_id, asio::as_tuple(asio::use_awaitable));
  if (!s.ok()) co_return std::nullopt;
  RunRecord rec;
  if (!DecodeRecord(json, rec) || rec.account != account || rec.flow_id != flow_id) co_return std::nullopt;
  found.emplace();
  found->ended = IsTerminal(rec.status);
  found->object = RenderRun(rec);
  // A run polled after it left the table is likely polled again: it goes back in, as a
  // recently ended run, while the table has room to spare (live runs come first).
  if (found->ended && table_linked_.load(std::memory_order_relaxed) < table_.capacity() / 4) {
    auto control = std::make_shared<RunControl>();
    control->strand = asio::make_strand(ioc_);
    control->ended = true;
    control->events = rec.events;
    auto entry = std::make_unique<RunTable::Entry>(rec, std::move(control));
    entry->final_json.store(new std::string(found->object), std::memory_order_release);
    entry->evictable_at.store(NowMillis() + options_.keep_ended_ms, std::memory_order_release);
    table_.Insert(std::move(entry));
  }
  found->stored_events = std::move(rec.events);
  co_return found;
}

asio::awaitable<bool> Engine::WaitForChange(std::shared_ptr<RunControl> control, size_t seen,
                                            std::chrono::steady_clock::time_point deadline) {
  auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor, deadline);
  {
    std::lock_guard lock(control->mu);
    if (control->ended || control->events.size() > seen) co_return true;
    control->waiters.push_back(timer);
  }
  auto [ec] = co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
  std::lock_guard lock(control->mu);
  std::erase(control->waiters, timer);
  co_return control->ended || control->events.size() > seen || std::chrono::steady_clock::now() < deadline;
}

void Engine::Cancel(const std::shared_ptr<RunControl>& control) {
  control->cancel_requested.store(true);
  asio::post(control->strand, [control] {
    if (control->wake) control->wake->cancel();
  });
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
      auto control = std::make_shared<RunControl>();
      control->strand = ioc_.get_executor();
      auto* entry = table_.Insert(std::make_unique<RunTable::Entry>(rec, control));
      SpawnLogged(ioc_, Finish(rec, entry, std::move(control)), "finish");
      continue;
    }
    // A resumed run starts over: outputs and progress from the lost attempt are dropped.
    rec.status = RunStatus::kPending;
    rec.outputs.clear();
    rec.nodes_done = 0;
    rec.events.clear();
    rec.error_code.clear();
    Launch(std::move(flow), std::move(rec), /*resumed=*/true);
    ++resumed;
  }
  return resumed;
}

void Engine::RenderMetrics(std::string& out) const {
  MetricHeader(out, "flowd_runs_live", "gauge", "Accepted runs that have not ended (the queue).");
  MetricLine(out, "flowd_runs_live", "", static_cast<double>(live_runs()));
  MetricHeader(out, "flowd_runs_ended_total", "counter", "Runs that ended since start, by status.");
  for (auto s : {RunStatus::kComplete, RunStatus::kFailed, RunStatus::kCanceled}) {
    MetricLine(out, "flowd_runs_ended_total", "status=\"" + std::string(StatusName(s)) + "\"",
               static_cast<double>(ended_[static_cast<size_t>(s)].value()));
  }
}

void Engine::StartSweeper() {
  SpawnLogged(ioc_, Sweeper(), "run table sweeper");
  SpawnLogged(ioc_, RetentionSweeper(), "retention sweeper");
}

asio::awaitable<void> Engine::RetentionSweeper() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto every = std::chrono::milliseconds(std::clamp<int64_t>(options_.retention_ms / 4, 250, 60'000));
  for (;;) {
    timer.expires_after(every);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    const int64_t cutoff = NowMillis() - options_.retention_ms;
    while (co_await DeleteExpired(cutoff) > 0) {
    }
  }
}

asio::awaitable<size_t> Engine::DeleteExpired(int64_t cutoff) {
  constexpr size_t kPage = 256;
  auto rows = co_await store_.AsyncScan(Cf::kRunsByEnd, "", "", kPage, asio::use_awaitable);
  store::Batch batch;
  size_t deleted = 0;
  for (const auto& row : rows) {
    int64_t ended = 0;
    for (int i = 0; i < 8; ++i) ended = (ended << 8) | static_cast<unsigned char>(row.key[i]);
    if (ended > cutoff) break;
    const std::string run_id = row.key.substr(8);
    const size_t slash = row.value.rfind('/');
    const std::string flow_id = row.value.substr(0, slash);
    int64_t created_at = 0;
    std::from_chars(row.value.data() + slash + 1, row.value.data() + row.value.size(), created_at);
    batch.Delete(Cf::kRuns, run_id);
    batch.Delete(Cf::kRunsByFlow, store::RunsByFlowKey(flow_id, created_at, run_id));
    batch.Delete(Cf::kRunsByEnd, row.key);
    // Its deliveries go too, except one still being retried (it keeps its own record).
    auto links = co_await store_.AsyncScan(Cf::kRunDeliveries, run_id + "/", "", 1000, asio::use_awaitable);
    std::vector<std::string> ids;
    for (const auto& l : links) ids.push_back(l.key.substr(run_id.size() + 1));
    auto records = co_await store_.AsyncMultiGet(Cf::kDeliveries, ids, asio::use_awaitable);
    for (size_t i = 0; i < ids.size(); ++i) {
      Delivery d;
      if (records[i] && DecodeDelivery(*records[i], d) && d.status == Delivery::Status::kPending) continue;
      batch.Delete(Cf::kDeliveries, ids[i]);
      batch.Delete(Cf::kRunDeliveries, links[i].key);
    }
    ++deleted;
  }
  if (deleted == 0) co_return 0;
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  co_return status.ok() ? deleted : 0;
}

asio::awaitable<void> Engine::Sweeper() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    timer.expires_after(std::chrono::milliseconds(250));
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    table_linked_.store(table_.Sweep(NowMillis()), std::memory_order_relaxed);
  }
}

}  // namespace flowd::flow
