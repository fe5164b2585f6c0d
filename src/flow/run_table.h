// The run table: live runs (and recently ended ones), readable by any thread without a
// lock while the engine updates them.
//
// Layout: a fixed array of atomic slots with bounded linear probing. A slot is empty,
// a tombstone, or points at an Entry. Insert claims a free slot with compare-and-swap;
// Find probes at most kMaxProbe slots. Entries leave only through Sweep(), and are freed
// only when no reader can still hold them: readers announce themselves in one of two
// epoch counters, and Sweep frees what it unlinked two epochs ago once the readers of that
// epoch are gone (epoch-based reclamation, no locks on either side).
//
// Threads: Insert, Find/Read and the Entry atomics from any thread. Sweep from one
// caller at a time (the engine's sweeper). The engine owns the lifecycle of an entry
// until it marks it evictable; the table owns the memory.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flow/run.h"

namespace flowd::flow {

// What others may ask of a live run, and what they may wait for: its events, its end, a
// cancel. Shared by the run's coroutine and the entry that readers find (so a reader that
// holds it may outlive the entry). `mu` guards the fields marked so; `wake` belongs to the
// run's strand.
struct RunControl {
  std::atomic<bool> cancel_requested{false};

  std::mutex mu;
  bool ended = false;                  // guarded by mu
  std::vector<std::string> events;     // guarded by mu; event N is events[N-1]
  std::vector<std::shared_ptr<boost::asio::steady_timer>> waiters;  // guarded by mu

  boost::asio::any_io_executor strand;              // the run's
  boost::asio::steady_timer* wake = nullptr;        // strand only: interrupts the scheduler

  // Records an event (or the end) and wakes every waiter on its own executor.
  void Publish(std::string event_json, bool end);
};

class RunTable {
 public:
  struct Entry {
    Entry(const RunRecord& r, std::shared_ptr<RunControl> c)
        : run_id(r.run_id), flow_id(r.flow_id), account(r.account), flow_version(r.flow_version),
          created_at(r.created_at), nodes_total(r.nodes_total), control(std::move(c)), status(r.status) {}
    ~Entry() { delete final_json.load(); }

    const std::string run_id, flow_id, account;
    const uint32_t flow_version;
    const int64_t created_at;
    const uint32_t nodes_total;
    const std::shared_ptr<RunControl> control;  // null for an ended run read back from the store
    std::atomic<RunStatus> status;
    std::atomic<int64_t> started_at{0};
    std::atomic<uint32_t> nodes_done{0};
    // The whole run object, set once when the run ends (before `status` changes).
    std::atomic<const std::string*> final_json{nullptr};
    // 0 while the run needs its entry; else the time (Unix ms) after which Sweep may drop it.
    std::atomic<int64_t> evictable_at{0};

    // The public run object as of now.
    std::string Render() const;
  };

  static constexpr size_t kMaxProbe = 64;

  // `capacity` is rounded up to a power of two.
  explicit RunTable(size_t capacity);
  ~RunTable();
  RunTable(const RunTable&) = delete;
  RunTable& operator=(const RunTable&) = delete;

  // Takes ownership. Returns the entry, or nullptr when no slot near its home is free
  // (the table is too full; the entry is deleted).
  Entry* Insert(std::unique_ptr<Entry> entry);

  // Calls fn(const Entry&) while the entry cannot be freed. False when absent.
  template <typename Fn>
  bool Read(std::string_view run_id, Fn&& fn) const {
    ReadGuard guard(*this);
    const Entry* e = FindLocked(run_id);
    if (!e) return false;
    fn(*e);
    return true;
  }

  // Unlinks entries whose evictable_at has passed and frees those unlinked two epochs
  // ago. Returns how many entries remain linked.
  size_t Sweep(int64_t now_ms);

  size_t capacity() const { return mask_ + 1; }

 private:
  class ReadGuard {
   public:
    explicit ReadGuard(const RunTable& t);
    ~ReadGuard();

   private:
    const RunTable& t_;
    unsigned parity_;
  };
  const Entry* FindLocked(std::string_view run_id) const;
  size_t Home(std::string_view run_id) const;

  static Entry* Tombstone() { return reinterpret_cast<Entry*>(uintptr_t{1}); }

  size_t mask_;
  std::unique_ptr<std::atomic<Entry*>[]> slots_;
  mutable std::atomic<uint64_t> epoch_{0};
  mutable std::atomic<int64_t> readers_[2] = {0, 0};
  std::vector<Entry*> retired_[2];  // Sweep's own: unlinked during an epoch of that parity
};

}  // namespace flowd::flow
