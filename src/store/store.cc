#include "store/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <sys/statvfs.h>

#include <algorithm>

#include "base/log.h"

namespace flowd::store {
namespace {

Status FromRocks(const rocksdb::Status& s) {
  if (s.ok()) return {};
  if (s.IsNotFound()) return {Status::Code::kNotFound, "not found"};
  return {Status::Code::kUnavailable, s.ToString()};
}

}  // namespace

std::unique_ptr<Store> Store::Open(const Options& options, std::string* error) {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.keep_log_file_num = 3;
  // Writes come from one thread, already batched; RocksDB's own grouping adds nothing.
  db_options.enable_pipelined_write = false;
  // A WAL file lives until every family with data in it is flushed; families written
  // rarely would keep hundreds of MB of WAL alive, all replayed at the next start. Past
  // this total, RocksDB flushes those families: a start after a crash replays at most this.
  db_options.max_total_wal_size = 64 << 20;

  rocksdb::ColumnFamilyOptions cf_options;
  cf_options.OptimizeLevelStyleCompaction(64 << 20);

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, cf_options);
  for (const char* name : kCfNames) descriptors.emplace_back(name, cf_options);

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, options.path, descriptors, &handles, &raw);
  if (!s.ok()) {
    // A database written by a later flowd may hold column families this one does not know.
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(db_options, options.path, &existing).ok()) {
      for (const auto& name : existing) {
        bool known = name == rocksdb::kDefaultColumnFamilyName;
        for (const char* n : kCfNames) known = known || name == n;
        if (!known) descriptors.emplace_back(name, cf_options);
      }
      s = rocksdb::DB::Open(db_options, options.path, descriptors, &handles, &raw);
    }
  }
  if (!s.ok()) {
    if (error) *error = s.ToString();
    return nullptr;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  // handles[0] is the default family, then ours in Cf order, then any unknown ones.
  std::vector<rocksdb::ColumnFamilyHandle*> ours(handles.begin() + 1, handles.begin() + 1 + kCfCount);
  for (size_t i = 0; i < handles.size(); ++i) {
    if (i == 0 || i > kCfCount) db->DestroyColumnFamilyHandle(handles[i]);
  }
  return std::unique_ptr<Store>(new Store(options, db.release(), std::move(ours)));
}

uint64_t Store::FreeBytes() const {
  struct statvfs fs;
  if (statvfs(options_.path.c_str(), &fs) != 0) return UINT64_MAX;  // unknown: let RocksDB decide
  return static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
}

Store::Store(const Options& options, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> cfs)
    : options_(options), db_(db), cfs_(std::move(cfs)) {
  min_free_bytes_ = options_.min_free_bytes;
  if (min_free_bytes_ == 0) {
    struct statvfs fs;
    uint64_t total = statvfs(options_.path.c_str(), &fs) == 0 ? static_cast<uint64_t>(fs.f_blocks) * fs.f_frsize : 0;
    min_free_bytes_ = std::clamp<uint64_t>(total / 20, 4ull << 20, 256ull << 20);
  }
  writer_ = std::thread([this] { WriterLoop(); });
}

Store::~Store() { Close(); }

void Store::Close() {
  if (closed_) return;
  closed_ = true;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  writer_.join();
  pool_.join();
  // Flushed memtables need no WAL replay: a clean stop is followed by a quick start.
  rocksdb::FlushOptions flush;
  flush.wait = true;
  db_->Flush(flush, cfs_);
  for (auto* h : cfs_) db_->DestroyColumnFamilyHandle(h);
  db_->Close();
}

Status Store::GetSync(Cf cf, std::string_view key, std::string* value) {
  return FromRocks(db_->Get(rocksdb::ReadOptions(), Handle(cf), rocksdb::Slice(key.data(), key.size()), value));
}

Status Store::WriteSync(Batch batch) {
  std::promise<Status> done;
  auto result = done.get_future();
  Enqueue(std::move(batch), [&done](Status s) { done.set_value(std::move(s)); });
  return result.get();
}

void Store::ScanSync(Cf cf, std::string_view prefix,
                     const std::function<bool(std::string_view, std::string_view)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), Handle(cf)));
  for (it->Seek(rocksdb::Slice(prefix.data(), prefix.size())); it->Valid(); it->Next()) {
    auto k = it->key();
    if (!k.starts_with(rocksdb::Slice(prefix.data(), prefix.size()))) break;
    if (!fn(std::string_view(k.data(), k.size()), std::string_view(it->value().data(), it->value().size())))
      break;
  }
}

std::vector<KeyValue> Store::ScanPage(Cf cf, std::string_view prefix, std::string_view after, size_t limit) {
  std::vector<KeyValue> rows;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), Handle(cf)));
  std::string_view start = after.empty() ? prefix : after;
  it->Seek(rocksdb::Slice(start.data(), start.size()));
  if (!after.empty() && it->Valid() && it->key() == rocksdb::Slice(after.data(), after.size())) it->Next();
  for (; it->Valid() && rows.size() < limit; it->Next()) {
    auto k = it->key();
    if (!k.starts_with(rocksdb::Slice(prefix.data(), prefix.size()))) break;
    rows.push_back({k.ToString(), it->value().ToString()});
  }
  return rows;
}

void Store::RenderMetrics(std::string& out) const {
  MetricHeader(out, "flowd_store_group_batches", "histogram", "Batches merged into one store write (group commit).");
  group_batches_.Render(out, "flowd_store_group_batches", "");
  MetricHeader(out, "flowd_store_write_seconds", "histogram", "Time to write (and sync) one group.");
  write_seconds_.Render(out, "flowd_store_write_seconds", options_.sync ? "sync=\"true\"" : "sync=\"false\"");
  MetricHeader(out, "flowd_store_write_failures_total", "counter", "Group writes the store refused.");
  MetricLine(out, "flowd_store_write_failures_total", "", static_cast<double>(write_failures_.value()));
}

void Store::Enqueue(Batch batch, boost::asio::any_completion_handler<void(Status)> done) {
  {
    std::lock_guard lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(batch), std::move(done)});
      cv_.notify_one();
      return;
    }
  }
  std::move(done)(Status{Status::Code::kUnavailable, "store is closing"});
}

void Store::WriterLoop() {
  std::vector<Pending> group;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything queued has been written
      size_t bytes = 0;
      while (!queue_.empty() && group.size() < options_.max_group && (group.empty() || bytes < options_.max_group_bytes)) {
        for (const auto& op : queue_.front().batch.ops_) bytes += op.key.size() + op.value.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    if (const uint64_t free = FreeBytes(); free < min_free_bytes_) {
      Status s{Status::Code::kUnavailable, "the data folder's disk is nearly full"};
      if (healthy_.exchange(false)) {
        Log(LogLevel::kError, "store refuses writes: disk nearly full",
            {{"free_bytes", std::to_string(free)}, {"reserve_bytes", std::to_string(min_free_bytes_)}});
      }
      write_failures_.Add();
      for (auto& p : group) std::move(p.done)(s);
      group.clear();
      continue;
    }
    rocksdb::WriteBatch wb;
    for (auto& p : group) {
      for (auto& op : p.batch.ops_) {
        if (op.del) {
          wb.Delete(Handle(op.cf), op.key);
        } else {
          wb.Put(Handle(op.cf), op.key, op.value);
        }
      }
    }
    rocksdb::WriteOptions wo;
    wo.sync = options_.sync;
    const auto started = std::chrono::steady_clock::now();
    Status s = FromRocks(db_->Write(wo, &wb));
    write_seconds_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    group_batches_.Observe(static_cast<double>(group.size()));
    if (!s.ok()) write_failures_.Add();
    if (!s.ok()) {
      // RocksDB stops accepting writes after some errors until it has recovered; Resume()
      // asks for that now rather than at the next flush.
      Log(LogLevel::kError, "store write failed", {{"error", s.message}});
      db_->Resume();
    }
    healthy_.store(s.ok(), std::memory_order_relaxed);
    groups_.fetch_add(1, std::memory_order_relaxed);
    for (auto& p : group) std::move(p.done)(s);
    group.clear();
  }
}

}  // namespace flowd::store
