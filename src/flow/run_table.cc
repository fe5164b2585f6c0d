#include "flow/run_table.h"

#include <functional>

#include <boost/asio/post.hpp>

namespace flowd::flow {

void RunControl::Publish(std::string event_json, bool end) {
  std::vector<std::shared_ptr<boost::asio::steady_timer>> wake_up;
  {
    std::lock_guard lock(mu);
    if (!event_json.empty()) events.push_back(std::move(event_json));
    if (end) ended = true;
    wake_up.swap(waiters);
  }
  // A timer belongs to its waiter's executor: cancel it there.
  for (auto& t : wake_up) {
    boost::asio::post(t->get_executor(), [t] { t->cancel(); });
  }
}

std::string RunTable::Entry::Render() const {
  if (const std::string* done = final_json.load(std::memory_order_acquire)) return *done;
  RunRecord r;
  r.run_id = run_id;
  r.flow_id = flow_id;
  r.flow_version = flow_version;
  r.status = RunStatus::kPending;
  r.created_at = created_at;
  r.started_at = started_at.load(std::memory_order_relaxed);
  r.nodes_done = nodes_done.load(std::memory_order_relaxed);
  r.nodes_total = nodes_total;
  return RenderRun(r);
}

RunTable::RunTable(size_t capacity) {
  size_t n = 1024;
  while (n < capacity) n <<= 1;
  mask_ = n - 1;
  slots_ = std::make_unique<std::atomic<Entry*>[]>(n);
  for (size_t i = 0; i < n; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
}

RunTable::~RunTable() {
  for (size_t i = 0; i <= mask_; ++i) {
    Entry* e = slots_[i].load();
    if (e && e != Tombstone()) delete e;
  }
  for (auto& list : retired_) {
    for (Entry* e : list) delete e;
  }
}

size_t RunTable::Home(std::string_view run_id) const { return std::hash<std::string_view>{}(run_id) & mask_; }

RunTable::Entry* RunTable::Insert(std::unique_ptr<Entry> entry) {
  size_t i = Home(entry->run_id);
  for (size_t probe = 0; probe < kMaxProbe; ++probe, i = (i + 1) & mask_) {
    Entry* cur = slots_[i].load(std::memory_order_acquire);
    while (cur == nullptr || cur == Tombstone()) {
      if (slots_[i].compare_exchange_weak(cur, entry.get(), std::memory_order_release, std::memory_order_acquire)) {
        return entry.release();
      }
    }
  }
  return nullptr;
}

RunTable::ReadGuard::ReadGuard(const RunTable& t) : t_(t) {
  for (;;) {
    uint64_t e = t_.epoch_.load();
    parity_ = e & 1;
    t_.readers_[parity_].fetch_add(1);
    if (t_.epoch_.load() == e) return;
    t_.readers_[parity_].fetch_sub(1);  // the epoch moved under us: announce again
  }
}

RunTable::ReadGuard::~ReadGuard() { t_.readers_[parity_].fetch_sub(1); }

const RunTable::Entry* RunTable::FindLocked(std::string_view run_id) const {
  size_t i = Home(run_id);
  for (size_t probe = 0; probe < kMaxProbe; ++probe, i = (i + 1) & mask_) {
    const Entry* e = slots_[i].load(std::memory_order_acquire);
    if (e == nullptr) return nullptr;
    if (e != Tombstone() && e->run_id == run_id) return e;
  }
  return nullptr;
}

size_t RunTable::Sweep(int64_t now_ms) {
  uint64_t e = epoch_.load();
  size_t linked = 0;
  for (size_t i = 0; i <= mask_; ++i) {
    Entry* cur = slots_[i].load(std::memory_order_acquire);
    if (cur == nullptr || cur == Tombstone()) continue;
    int64_t at = cur->evictable_at.load(std::memory_order_acquire);
    if (at != 0 && at <= now_ms && slots_[i].compare_exchange_strong(cur, Tombstone())) {
      retired_[e & 1].push_back(cur);
    } else {
      ++linked;
    }
  }
  // Readers that entered two epochs ago share the parity of the next epoch. Once they are
  // gone, nothing unlinked before the current epoch began can still be held: free it and
  // move on. Otherwise try again at the next sweep.
  unsigned next = (e + 1) & 1;
  if (readers_[next].load() == 0) {
    for (Entry* old : retired_[next]) delete old;
    retired_[next].clear();
    epoch_.store(e + 1);
  }
  return linked;
}

}  // namespace flowd::flow
