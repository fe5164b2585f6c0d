#include "api/key_ring.h"

#include <boost/asio/use_awaitable.hpp>

#include <simdjson.h>

#include <algorithm>
#include <mutex>

#include "base/clock.h"
#include "base/ids.h"
#include "base/json.h"
#include "base/log.h"

namespace flowd::api {
namespace asio = boost::asio;
namespace ondemand = simdjson::ondemand;
using store::Cf;

namespace {

std::string DigestKey(const auth::KeyHash& h) { return std::string(reinterpret_cast<const char*>(h.data()), h.size()); }

std::string Encode(const KeyInfo& k) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("key_id").String(k.key_id).Key("account").String(k.account).Key("name").String(k.name);
  w.Key("prefix").String(k.prefix).Key("created_at").Int(k.created_at).EndObject();
  return out;
}

std::shared_ptr<KeyInfo> Decode(std::string_view json) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  auto k = std::make_shared<KeyInfo>();
  std::string_view id, account, name, prefix;
  if (parser.iterate(padded).get(doc) || doc["key_id"].get_string().get(id) ||
      doc["account"].get_string().get(account) || doc["name"].get_string().get(name) ||
      doc["prefix"].get_string().get(prefix) || doc["created_at"].get_int64().get(k->created_at)) {
    return nullptr;
  }
  k->key_id = id;
  k->account = account;
  k->name = name;
  k->prefix = prefix;
  return k;
}

}  // namespace

int64_t KeyInfo::TakeToken(double rate, int64_t now_ms) const {
  std::lock_guard lock(bucket_mu_);
  if (tokens_ < 0) {
    tokens_ = rate;
    refilled_at_ = now_ms;
  }
  tokens_ = std::min(rate, tokens_ + (now_ms - refilled_at_) * rate / 1000.0);
  refilled_at_ = now_ms;
  if (tokens_ >= 1) {
    tokens_ -= 1;
    return 0;
  }
  return static_cast<int64_t>((1 - tokens_) * 1000.0 / rate) + 1;
}

void KeyRing::LoadSync() {
  std::unique_lock lock(mu_);
  store_.ScanSync(Cf::kKeys, "", [&](std::string_view digest, std::string_view value) {
    if (auto k = Decode(value)) {
      by_hash_[std::string(digest)] = std::move(k);
    } else {
      Log(LogLevel::kError, "unreadable key record skipped");
    }
    return true;
  });
}

std::shared_ptr<const KeyInfo> KeyRing::Authenticate(std::string_view key) {
  if (!auth::HasValidFormat(key)) return nullptr;
  const std::string digest = DigestKey(auth::HashKey(key));
  std::shared_ptr<KeyInfo> info;
  {
    std::shared_lock lock(mu_);
    auto it = by_hash_.find(digest);
    if (it == by_hash_.end()) return nullptr;
    info = it->second;
  }
  info->last_used_at.store(NowMillis(), std::memory_order_relaxed);
  return info;
}

std::pair<std::string, std::string> KeyRing::NewRecord(const std::string& account, const std::string& name,
                                                       std::string* key, std::shared_ptr<KeyInfo>* info) {
  *key = auth::GenerateKey();
  auto k = std::make_shared<KeyInfo>();
  k->key_id = "key_" + NewUuidV4().substr(0, 8) + NewUuidV4().substr(24);
  k->account = account;
  k->name = name;
  k->prefix = key->substr(0, auth::kKeyShownPrefix);
  k->created_at = NowMillis();
  *info = k;
  return {DigestKey(auth::HashKey(*key)), Encode(*k)};
}

asio::awaitable<std::optional<KeyRing::Created>> KeyRing::Create(std::string account, std::string name) {
  Created created;
  std::shared_ptr<KeyInfo> info;
  auto [digest, record] = NewRecord(account, name, &created.key, &info);
  store::Batch batch;
  batch.Put(Cf::kKeys, digest, std::move(record));
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  if (!status.ok()) co_return std::nullopt;
  {
    std::unique_lock lock(mu_);
    by_hash_[digest] = info;
  }
  created.info = std::move(info);
  co_return created;
}

asio::awaitable<bool> KeyRing::Revoke(std::string account, std::string key_id, bool* stored) {
  std::string digest;
  {
    std::unique_lock lock(mu_);
    for (auto it = by_hash_.begin(); it != by_hash_.end(); ++it) {
      if (it->second->key_id == key_id && it->second->account == account) {
        digest = it->first;
        by_hash_.erase(it);
        break;
      }
    }
  }
  if (digest.empty()) co_return false;
  store::Batch batch;
  batch.Delete(Cf::kKeys, digest);
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  *stored = status.ok();
  co_return true;
}

std::vector<std::shared_ptr<const KeyInfo>> KeyRing::List(const std::string& account) const {
  std::vector<std::shared_ptr<const KeyInfo>> out;
  {
    std::shared_lock lock(mu_);
    for (const auto& [_, k] : by_hash_) {
      if (k->account == account) out.push_back(k);
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a->created_at != b->created_at ? a->created_at < b->created_at : a->key_id < b->key_id;
  });
  return out;
}

std::string KeyRing::CreateSync(store::Store& store, const std::string& account, const std::string& name) {
  std::string key;
  std::shared_ptr<KeyInfo> info;
  auto [digest, record] = NewRecord(account, name, &key, &info);
  store::Batch batch;
  batch.Put(Cf::kKeys, digest, std::move(record));
  return store.WriteSync(std::move(batch)).ok() ? key : "";
}

}  // namespace flowd::api
