// The catalog of saved flows ("Cloud Save"): every save is a new immutable version in the
// store's `flows` family, and the head of each flow (owner, latest version, deleted) is
// cached in memory with its latest parsed version.
//
// Ownership: main owns the Catalog; the REST layer and the engine hold references. Its
// coroutines may run on any thread of the io_context; the cache is guarded by a mutex
// that is never held across a suspension. Existence never leaks across accounts: every
// lookup takes the caller's account, and another account's flow reads as absent.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "base/error.h"
#include "flow/flow.h"
#include "store/store.h"

namespace flowd::flow {

struct SavedFlow {
  std::string flow_id;
  uint32_t version = 0;
  int64_t saved_at = 0;
  std::shared_ptr<const Flow> flow;
};

class Catalog {
 public:
  explicit Catalog(store::Store& store) : store_(store) {}

  struct SaveResult {
    std::optional<Error> error;  // not_found (another account's id) or unavailable
    SavedFlow saved;
    bool created = false;
  };
  // Stores `flow` as the next version of `flow_id`; completes once it is durable.
  boost::asio::awaitable<SaveResult> Save(std::string account, std::string flow_id,
                                          std::shared_ptr<const Flow> flow);

  // The latest version, or `version`. nullopt: absent, deleted, or another account's.
  boost::asio::awaitable<std::optional<SavedFlow>> Get(std::string account, std::string flow_id,
                                                       std::optional<uint32_t> version = std::nullopt);

  // False when absent; throws nothing. Error when the store refuses.
  boost::asio::awaitable<std::optional<Error>> Delete(std::string account, std::string flow_id, bool* found);

  // Start-up only (blocking): one stored version, for resuming runs.
  std::shared_ptr<const Flow> LoadVersionSync(const std::string& flow_id, uint32_t version);

 private:
  struct Head {
    std::string account;
    uint32_t latest = 0;     // highest version handed out
    bool deleted = false;
    SavedFlow published;     // latest durable version
  };
  boost::asio::awaitable<std::optional<Head>> LoadHead(const std::string& flow_id);

  store::Store& store_;
  std::mutex mu_;
  std::unordered_map<std::string, Head> heads_;  // guarded by mu_
};

// Stored forms, exposed for tests.
std::string EncodeFlowVersion(const SavedFlow& f, const std::string& account);
bool DecodeFlowVersion(std::string_view json, SavedFlow& f, std::string& account, std::string& nodes_json,
                       std::string& name);

}  // namespace flowd::flow
