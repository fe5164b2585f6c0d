// Webhook deliveries: signed, durable, at least once.
//
// A delivery is written to the store (its record, its place in the due index, and its
// link to the run) before its first attempt, and every attempt's outcome is written
// before the next is scheduled, so after any crash ResumeSync() finds every delivery that
// has not ended and sends it again with the same webhook-id. Each delivery has its own
// coroutine: a slow or dead receiver only ever delays itself.
//
// Each attempt carries Content-Type, User-Agent, AI_FLOW_SIGNATURE (when set) and the
// Standard Webhooks headers webhook-id, webhook-timestamp and webhook-signature, signed
// with the account's secret (and, during a rotation's grace period, the previous one).
//
// Ownership: main owns Webhooks and WebhookSecrets and keeps them alive until the
// io_context has stopped. Methods are safe from any io_context thread.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/error.h"
#include "base/metrics.h"
#include "net/http_client.h"
#include "store/store.h"

namespace flowd::flow {

struct WebhookOptions {
  std::vector<std::chrono::milliseconds> schedule{std::chrono::seconds(5),  std::chrono::minutes(5),
                                                  std::chrono::minutes(30), std::chrono::hours(2),
                                                  std::chrono::hours(5),    std::chrono::hours(10),
                                                  std::chrono::hours(10)};
  std::chrono::milliseconds timeout{15000};           // one attempt
  std::chrono::milliseconds secret_grace{86'400'000};  // the old secret still signs this long after a rotation
};

struct AccountSecrets {
  std::string current;         // "whsec_..."
  std::string previous;        // "" when none
  int64_t previous_until = 0;  // Unix ms
};

// Each account's webhook secret, created on first use, cached, persisted in `accounts`.
class WebhookSecrets {
 public:
  WebhookSecrets(store::Store& store, std::chrono::milliseconds grace) : store_(store), grace_(grace) {}
  // nullopt only when the store fails.
  boost::asio::awaitable<std::optional<AccountSecrets>> Get(std::string account);
  boost::asio::awaitable<std::optional<AccountSecrets>> Rotate(std::string account);

 private:
  store::Store& store_;
  std::chrono::milliseconds grace_;
  std::mutex mu_;
  std::unordered_map<std::string, AccountSecrets> cache_;  // guarded by mu_
};

struct Delivery {
  enum class Status { kPending, kDelivered, kFailed };
  struct Attempt {
    int64_t at = 0;            // Unix ms
    unsigned status_code = 0;  // 0: no HTTP answer, see error
    std::string error;
    int64_t duration_ms = 0;
  };
  std::string delivery_id;  // also the webhook-id header
  std::string account, run_id, flow_id;
  std::string kind;  // "node" or "global"
  std::string node;  // the webhook node, for kind "node"
  std::string url;
  std::string ai_flow_signature;  // AI_FLOW_SIGNATURE header value, "" for none
  std::string body;               // the exact bytes sent (and signed)
  bool forget_body = false;       // run_options.save false: drop the body once the delivery ends
  Status status = Status::kPending;
  int64_t created_at = 0;
  int64_t next_at = 0;
  std::vector<Attempt> attempts;
};

std::string EncodeDelivery(const Delivery& d);
bool DecodeDelivery(std::string_view json, Delivery& d);
std::string RenderDelivery(const Delivery& d);  // public form: no body, no signature value

class Webhooks {
 public:
  Webhooks(boost::asio::io_context& ioc, store::Store& store, net::HttpClient& http, WebhookSecrets& secrets,
           WebhookOptions options);

  // The same run and purpose always give the same id, so a run executed twice (after a
  // crash) never makes a second delivery.
  static std::string DeliveryId(std::string_view run_id, std::string_view purpose);

  // Adds what makes `d` durable to `batch`; the caller writes it, then calls Launch.
  static void Persist(store::Batch& batch, const Delivery& d);
  void Launch(Delivery d);

  // Persists `d` and launches it. With `may_exist` (a run resumed after a restart), a
  // delivery with its id made before the restart is left as it is instead. False when
  // the store refused.
  boost::asio::awaitable<bool> Enqueue(Delivery d, bool may_exist);

  // Start-up (blocking reads): restarts every delivery that has not ended.
  size_t ResumeSync();

  boost::asio::awaitable<std::vector<Delivery>> ListForRun(std::string run_id);

  // Sends a failed delivery again, on a fresh schedule. Errors: not_found, conflict.
  boost::asio::awaitable<std::optional<Error>> Retry(std::string run_id, std::string delivery_id, Delivery* out);

  void RenderMetrics(std::string& out) const;

 private:
  boost::asio::awaitable<void> Worker(Delivery d);
  Counter attempts_delivered_, attempts_retried_, attempts_failed_;
  boost::asio::awaitable<void> Save(const Delivery& d, int64_t old_due);

  boost::asio::io_context& ioc_;
  store::Store& store_;
  net::HttpClient& http_;
  WebhookSecrets& secrets_;
  WebhookOptions options_;
};

}  // namespace flowd::flow
