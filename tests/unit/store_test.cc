#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <filesystem>
#include <random>

#include "store/store.h"

using namespace flowd::store;
namespace asio = boost::asio;

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("flowd-store-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST_CASE("store: keys encode so that versions sort numerically") {
  CHECK(FlowVersionKey("f", 2) < FlowVersionKey("f", 10));
  CHECK(FlowVersionKey("f", 255) < FlowVersionKey("f", 256));
  CHECK(GetBigEndian32(FlowVersionKey("f", 0x01020304).substr(2)) == 0x01020304u);
}

TEST_CASE("store: writes are durable across a reopen") {
  TempDir dir;
  std::string error;
  {
    auto s = Store::Open({dir.path.string(), true}, &error);
    REQUIRE(s);
    Batch b;
    b.Put(Cf::kRuns, "r1", "one");
    b.Put(Cf::kPendingRuns, "r1", "");
    REQUIRE(s->WriteSync(std::move(b)).ok());
  }
  auto s = Store::Open({dir.path.string(), true}, &error);
  REQUIRE(s);
  std::string v;
  REQUIRE(s->GetSync(Cf::kRuns, "r1", &v).ok());
  CHECK(v == "one");
  CHECK(s->GetSync(Cf::kRuns, "r2", &v).not_found());
  // Families are separate key spaces.
  CHECK(s->GetSync(Cf::kFlows, "r1", &v).not_found());
}

TEST_CASE("store: a second open of the same folder is refused") {
  TempDir dir;
  std::string error;
  auto a = Store::Open({dir.path.string(), true}, &error);
  REQUIRE(a);
  auto b = Store::Open({dir.path.string(), true}, &error);
  CHECK_FALSE(b);
  CHECK_FALSE(error.empty());
}

TEST_CASE("store: concurrent async writes all complete on the caller's executor, in one group") {
  TempDir dir;
  std::string error;
  auto s = Store::Open({dir.path.string(), true}, &error);
  REQUIRE(s);
  asio::io_context ioc;
  constexpr int kWriters = 200;
  int done = 0;
  bool wrong_thread = false;
  const auto loop_thread = std::this_thread::get_id();
  for (int i = 0; i < kWriters; ++i) {
    asio::co_spawn(ioc, [&, i]() -> asio::awaitable<void> {
      Batch b;
      b.Put(Cf::kRuns, "k" + std::to_string(i), std::to_string(i));
      Status st = co_await s->AsyncWrite(std::move(b), asio::use_awaitable);
      if (std::this_thread::get_id() != loop_thread) wrong_thread = true;
      if (st.ok()) ++done;
    }, asio::detached);
  }
  ioc.run();
  CHECK(done == kWriters);
  CHECK_FALSE(wrong_thread);
  // 200 writers queued at once share syncs: group commit.
  CHECK(s->groups_written() < kWriters / 2);
  int found = 0;
  s->ScanSync(Cf::kRuns, "k", [&](std::string_view, std::string_view) {
    ++found;
    return true;
  });
  CHECK(found == kWriters);
  // The writer thread may still be returning from its post into ioc: stop it before ioc
  // goes, as main does.
  s->Close();
}

TEST_CASE("store: async reads and scans") {
  TempDir dir;
  std::string error;
  auto s = Store::Open({dir.path.string(), true}, &error);
  REQUIRE(s);
  Batch b;
  for (int i = 0; i < 5; ++i) b.Put(Cf::kFlows, "p/" + std::to_string(i), "v" + std::to_string(i));
  b.Put(Cf::kFlows, "q/0", "other");
  REQUIRE(s->WriteSync(std::move(b)).ok());
  asio::io_context ioc;
  std::string got;
  Status got_status;
  std::vector<KeyValue> page;
  asio::co_spawn(ioc, [&]() -> asio::awaitable<void> {
    auto [st, v] = co_await s->AsyncGet(Cf::kFlows, "p/3", asio::as_tuple(asio::use_awaitable));
    got_status = st;
    got = v;
    page = co_await s->AsyncScan(Cf::kFlows, "p/", "p/1", 2, asio::use_awaitable);
  }, asio::detached);
  ioc.run();
  s->Close();
  CHECK(got_status.ok());
  CHECK(got == "v3");
  REQUIRE(page.size() == 2);
  CHECK(page[0].key == "p/2");
  CHECK(page[1].key == "p/3");
}

TEST_CASE("store: writes after Close complete with unavailable") {
  TempDir dir;
  std::string error;
  auto s = Store::Open({dir.path.string(), true}, &error);
  REQUIRE(s);
  s->Close();
  Batch b;
  b.Put(Cf::kRuns, "x", "y");
  CHECK(s->WriteSync(std::move(b)).code == Status::Code::kUnavailable);
}
