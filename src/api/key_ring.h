// The API keys of every account, as the server checks them: loaded from the store's
// `keys` family at start, looked up by SHA-256 of the presented key, changed through the
// store's writer. The key text itself is never stored, logged or kept in memory.
//
// Ownership: main owns the KeyRing; the REST layer borrows it. Authenticate and List are
// safe from any thread (a shared mutex guards the map, never across a suspension).
// Revocation removes a key from the map before its deletion is written, so it stops
// working at once, on every connection.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "auth/api_key.h"
#include "store/store.h"

namespace flowd::api {

struct KeyInfo {
  std::string key_id;
  std::string account;
  std::string name;
  std::string prefix;  // the first characters of the key, safe to show
  int64_t created_at = 0;
  mutable std::atomic<int64_t> last_used_at{0};  // in memory since start; 0 = not used

  // Token bucket for --rate-limit: `rate` requests per second, bursts up to `rate`.
  // Returns 0 when a request may go, else the milliseconds until one may.
  int64_t TakeToken(double rate, int64_t now_ms) const;

 private:
  mutable std::mutex bucket_mu_;
  mutable double tokens_ = -1;  // -1: full, not yet used
  mutable int64_t refilled_at_ = 0;
};

class KeyRing {
 public:
  explicit KeyRing(store::Store& store) : store_(store) {}

  void LoadSync();  // start-up

  // The key's owner, or nullptr for a malformed, unknown or revoked key. The checksum is
  // checked first, so look-alikes never reach the map.
  std::shared_ptr<const KeyInfo> Authenticate(std::string_view key);

  struct Created {
    std::shared_ptr<const KeyInfo> info;
    std::string key;  // shown once
  };
  // nullopt: the store refused the write.
  boost::asio::awaitable<std::optional<Created>> Create(std::string account, std::string name);
  // False when `key_id` is not a key of `account`. Sets *stored to whether the deletion was written.
  boost::asio::awaitable<bool> Revoke(std::string account, std::string key_id, bool* stored);

  std::vector<std::shared_ptr<const KeyInfo>> List(const std::string& account) const;

  // Offline bootstrap (`flowd keys create`): returns the key, or "" on a store failure.
  static std::string CreateSync(store::Store& store, const std::string& account, const std::string& name);

 private:
  static std::pair<std::string, std::string> NewRecord(const std::string& account, const std::string& name,
                                                       std::string* key, std::shared_ptr<KeyInfo>* info);
  store::Store& store_;
  mutable std::shared_mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<KeyInfo>> by_hash_;  // 32-byte digest -> key
};

}  // namespace flowd::api
