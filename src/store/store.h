// The persistent store: RocksDB with flowd's column families, and the only code that
// calls RocksDB.
//
// Ownership: main owns the Store; everything else holds a reference. Writes go to one
// writer thread that drains every queued Batch into a single rocksdb::WriteBatch and one
// WAL fsync (group commit: the more concurrent writers, the fewer syncs per write). Reads
// run on a small reader pool. Both complete on the caller's executor, so a coroutine on
// the io_context never blocks on disk. The *Sync functions block and are for start-up,
// offline commands and tests only.
//
// Failure: a failed write (disk full, I/O error) completes with kUnavailable and changes
// nothing; the next write is tried afresh, so service resumes when the cause goes away.
// A full disk is kept from RocksDB altogether: the RocksDB 7.8.3 that Debian ships aborts
// the process when it appends to its log after a failed append, so the writer refuses
// groups while free space is under Options::min_free_bytes.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/metrics.h"
#include "store/schema.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace flowd::store {

struct Status {
  enum class Code { kOk, kNotFound, kUnavailable };
  Code code = Code::kOk;
  std::string message;  // for logs; never contains user data

  bool ok() const { return code == Code::kOk; }
  bool not_found() const { return code == Code::kNotFound; }
};

// A set of changes applied atomically.
class Batch {
 public:
  void Put(Cf cf, std::string key, std::string value) {
    ops_.push_back({cf, false, std::move(key), std::move(value)});
  }
  void Delete(Cf cf, std::string key) { ops_.push_back({cf, true, std::move(key), {}}); }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }

 private:
  friend class Store;
  struct Op {
    Cf cf;
    bool del;
    std::string key;
    std::string value;
  };
  std::vector<Op> ops_;
};

struct Options {
  std::string path;      // the data folder; created if missing
  bool sync = true;      // fsync the WAL before a write completes
  size_t max_group = 512;  // most batches merged into one write
  size_t max_group_bytes = 4 << 20;  // ... and most bytes (one batch may exceed it alone)
  // Writes are refused (kUnavailable) while the data folder's file system has less free
  // space than this, so RocksDB never meets a full disk (0: 5 % of the file system,
  // between 4 MiB and 256 MiB).
  uint64_t min_free_bytes = 0;
};

struct KeyValue {
  std::string key;
  std::string value;
};

class Store {
 public:
  static std::unique_ptr<Store> Open(const Options& options, std::string* error);
  ~Store();  // Close()

  // Writes what is queued, stops the threads and closes the database; later calls
  // complete at once with kUnavailable. Idempotent. Call it before destroying the
  // io_context that completions are posted to.
  void Close();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Blocking calls: start-up, offline commands and tests.
  Status GetSync(Cf cf, std::string_view key, std::string* value);
  Status WriteSync(Batch batch);
  // Calls fn for each key starting with `prefix`, in order, until it returns false.
  void ScanSync(Cf cf, std::string_view prefix,
                const std::function<bool(std::string_view key, std::string_view value)>& fn);

  // Queues `batch` for the writer thread; completes with its Status once written (and
  // synced when Options::sync).
  template <typename Token>
  auto AsyncWrite(Batch batch, Token&& token) {
    return boost::asio::async_initiate<Token, void(Status)>(
        [this](auto handler, Batch b) {
          auto ex = boost::asio::get_associated_executor(handler, pool_.get_executor());
          Enqueue(std::move(b), [h = std::move(handler), ex](Status s) mutable {
            boost::asio::post(ex, [h = std::move(h), s = std::move(s)]() mutable { std::move(h)(std::move(s)); });
          });
        },
        token, std::move(batch));
  }

  // Reads one key on the reader pool.
  template <typename Token>
  auto AsyncGet(Cf cf, std::string key, Token&& token) {
    return boost::asio::async_initiate<Token, void(Status, std::string)>(
        [this, cf](auto handler, std::string k) {
          auto ex = boost::asio::get_associated_executor(handler, pool_.get_executor());
          boost::asio::post(pool_, [this, cf, k = std::move(k), h = std::move(handler), ex]() mutable {
            std::string value;
            Status s = GetSync(cf, k, &value);
            boost::asio::post(ex, [h = std::move(h), s = std::move(s), v = std::move(value)]() mutable {
              std::move(h)(std::move(s), std::move(v));
            });
          });
        },
        token, std::move(key));
  }

  // Reads several keys at once on the reader pool; a missing key yields nullopt.
  template <typename Token>
  auto AsyncMultiGet(Cf cf, std::vector<std::string> keys, Token&& token) {
    using Result = std::vector<std::optional<std::string>>;
    return boost::asio::async_initiate<Token, void(Result)>(
        [this, cf](auto handler, std::vector<std::string> ks) {
          auto ex = boost::asio::get_associated_executor(handler, pool_.get_executor());
          boost::asio::post(pool_, [this, cf, ks = std::move(ks), h = std::move(handler), ex]() mutable {
            Result values(ks.size());
            for (size_t i = 0; i < ks.size(); ++i) {
              std::string v;
              if (GetSync(cf, ks[i], &v).ok()) values[i] = std::move(v);
            }
            boost::asio::post(ex, [h = std::move(h), values = std::move(values)]() mutable {
              std::move(h)(std::move(values));
            });
          });
        },
        token, std::move(keys));
  }

  // Reads up to `limit` entries under `prefix`, starting after `start_after` (or at the
  // first when empty), on the reader pool.
  template <typename Token>
  auto AsyncScan(Cf cf, std::string prefix, std::string start_after, size_t limit, Token&& token) {
    return boost::asio::async_initiate<Token, void(std::vector<KeyValue>)>(
        [this, cf, limit](auto handler, std::string p, std::string after) {
          auto ex = boost::asio::get_associated_executor(handler, pool_.get_executor());
          boost::asio::post(pool_, [this, cf, limit, p = std::move(p), after = std::move(after),
                                    h = std::move(handler), ex]() mutable {
            auto rows = ScanPage(cf, p, after, limit);
            boost::asio::post(ex, [h = std::move(h), rows = std::move(rows)]() mutable {
              std::move(h)(std::move(rows));
            });
          });
        },
        token, std::move(prefix), std::move(start_after));
  }

  // How many group writes (one WriteBatch, one sync each) have been made.
  uint64_t groups_written() const { return groups_.load(std::memory_order_relaxed); }

  // Group sizes, write-and-sync latency and failures, in Prometheus text.
  void RenderMetrics(std::string& out) const;

  // False after a write failed, until one succeeds again.
  bool healthy() const { return healthy_.load(std::memory_order_relaxed); }

 private:
  Store(const Options& options, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> cfs);
  struct Pending {
    Batch batch;
    boost::asio::any_completion_handler<void(Status)> done;  // called on the writer thread
  };
  void Enqueue(Batch batch, boost::asio::any_completion_handler<void(Status)> done);
  void WriterLoop();
  std::vector<KeyValue> ScanPage(Cf cf, std::string_view prefix, std::string_view after, size_t limit);
  rocksdb::ColumnFamilyHandle* Handle(Cf cf) const { return cfs_[static_cast<size_t>(cf)]; }
  uint64_t FreeBytes() const;

  Options options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;  // owned; closed before db_
  std::atomic<bool> healthy_{true};
  uint64_t min_free_bytes_ = 0;
  std::atomic<uint64_t> groups_{0};
  Histogram group_batches_{1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
  Histogram write_seconds_{std::span<const double>(kLatencyBounds)};
  Counter write_failures_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;  // guarded by mu_
  bool stopping_ = false;      // guarded by mu_
  std::thread writer_;
  boost::asio::thread_pool pool_{2};
  bool closed_ = false;  // Close() has run; only main calls it
};

}  // namespace flowd::store
