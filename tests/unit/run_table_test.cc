#include <catch2/catch.hpp>

#include <atomic>
#include <thread>
#include <vector>

#include "base/ids.h"
#include "flow/run_table.h"

using namespace flowd;
using namespace flowd::flow;

namespace {

std::unique_ptr<RunTable::Entry> NewEntry(const std::string& id) {
  RunRecord r;
  r.run_id = id;
  r.flow_id = "flow";
  r.account = "acct";
  r.nodes_total = 3;
  return std::make_unique<RunTable::Entry>(r, nullptr);
}

}  // namespace

TEST_CASE("run_table: insert, read, and sweep what was marked evictable") {
  RunTable t(1024);
  auto* a = t.Insert(NewEntry("a"));
  auto* b = t.Insert(NewEntry("b"));
  REQUIRE(a);
  REQUIRE(b);
  std::string seen;
  CHECK(t.Read("a", [&](const RunTable::Entry& e) { seen = e.run_id; }));
  CHECK(seen == "a");
  CHECK_FALSE(t.Read("zzz", [](const RunTable::Entry&) {}));

  a->evictable_at.store(100);
  CHECK(t.Sweep(50) == 2);  // not yet due
  CHECK(t.Sweep(100) == 1);
  CHECK_FALSE(t.Read("a", [](const RunTable::Entry&) {}));
  CHECK(t.Read("b", [](const RunTable::Entry&) {}));
  // Tombstones are reused and do not hide later entries.
  REQUIRE(t.Insert(NewEntry("a")));
  CHECK(t.Read("a", [](const RunTable::Entry&) {}));
}

TEST_CASE("run_table: a full neighbourhood refuses the insert instead of probing forever") {
  RunTable t(1024);
  size_t inserted = 0;
  for (int i = 0; i < 5000; ++i) {
    if (t.Insert(NewEntry("r" + std::to_string(i)))) ++inserted;
  }
  CHECK(inserted <= t.capacity());
  CHECK(inserted > t.capacity() / 2);
}

TEST_CASE("run_table: the final object is published before the status flips") {
  RunTable t(1024);
  auto* e = t.Insert(NewEntry("x"));
  REQUIRE(e);
  CHECK(e->Render().find("\"status\":\"pending\"") != std::string::npos);
  e->final_json.store(new std::string(R"({"status":"complete"})"));
  e->status.store(RunStatus::kComplete);
  CHECK(e->Render() == R"({"status":"complete"})");
}

// Writers insert, update and retire entries while readers look them up and render them.
// Under ThreadSanitizer (tools/test runs this file in a TSan build) a data race or a
// use-after-free in the reclamation would be reported; without it, a freed entry read by
// a reader shows up as a wrong id or a crash under ASan.
TEST_CASE("run_table: concurrent readers, writers and sweeps stay consistent") {
  RunTable t(4096);
  constexpr int kWriters = 2, kReaders = 3, kPerWriter = 3000;
  std::atomic<bool> stop{false};
  std::atomic<long> reads{0}, mismatches{0};
  std::vector<std::vector<std::string>> ids(kWriters);
  for (int w = 0; w < kWriters; ++w) {
    for (int i = 0; i < kPerWriter; ++i) ids[w].push_back(NewUuidV4());
  }
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kPerWriter; ++i) {
        RunTable::Entry* e = nullptr;
        while (!(e = t.Insert(NewEntry(ids[w][i])))) std::this_thread::yield();
        e->nodes_done.store(3);
        e->final_json.store(new std::string(ids[w][i]), std::memory_order_release);
        e->status.store(RunStatus::kComplete, std::memory_order_release);
        e->evictable_at.store(1, std::memory_order_release);  // due at once
      }
    });
  }
  for (int r = 0; r < kReaders; ++r) {
    threads.emplace_back([&, r] {
      size_t k = r;
      while (!stop.load()) {
        const std::string& id = ids[k % kWriters][(k / kWriters) % kPerWriter];
        t.Read(id, [&](const RunTable::Entry& e) {
          if (e.run_id != id) mismatches.fetch_add(1);
          // Status first: once it reads complete, the final object must be visible.
          bool complete = e.status.load() == RunStatus::kComplete;
          std::string shown = e.Render();
          if (complete && shown != id) mismatches.fetch_add(1);
          reads.fetch_add(1);
        });
        k += 7;
      }
    });
  }
  std::thread sweeper([&] {
    while (!stop.load()) {
      t.Sweep(2);
      std::this_thread::yield();
    }
  });
  for (int i = 0; i < kWriters; ++i) threads[i].join();
  stop.store(true);
  for (size_t i = kWriters; i < threads.size(); ++i) threads[i].join();
  sweeper.join();
  CHECK(mismatches.load() == 0);
  CHECK(reads.load() > 0);
  // Everything was due: after enough sweeps the table is empty and all memory freed.
  for (int i = 0; i < 4; ++i) t.Sweep(2);
  CHECK(t.Sweep(2) == 0);
}
