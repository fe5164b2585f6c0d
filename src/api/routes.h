// The REST layer: decodes each /v1 request, calls the catalog, the engine or the key
// ring, and encodes the answer or the error of API.md. This is the only module that knows
// both HTTP and flows; main constructs it with references to the parts it wires.
//
// Runs on the connection's strand, on any io_context thread.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <unordered_set>

#include "api/key_ring.h"
#include "base/metrics.h"
#include "flow/catalog.h"
#include "flow/engine.h"
#include "flow/webhooks.h"
#include "net/http_server.h"
#include "store/store.h"

namespace flowd::api {

class Routes : public net::Handler {
 public:
  // `ready` says whether the server accepts runs (false while draining).
  Routes(KeyRing& keys, flow::Catalog& catalog, flow::Engine& engine, flow::Webhooks& webhooks,
         flow::WebhookSecrets& secrets, store::Store& store, std::function<bool()> ready, double rate_limit = 0);
  ~Routes() override;

  // What /metrics shows besides the request metrics kept here (store, engine, webhooks,
  // transport). Call before serving.
  void AddMetricsSource(std::function<void(std::string&)> render) { metric_sources_.push_back(std::move(render)); }

  std::optional<net::Response> Precheck(const net::Request& head) override;
  boost::asio::awaitable<net::Reply> Handle(net::Request& req) override;

  // For --admin-listen: the handler of a second net::Server that answers /healthz,
  // /readyz and /metrics (404 for the rest). Once asked for, this handler answers those
  // three with 404. Call before serving; the handler lives as long as this object.
  net::Handler& Admin();

 private:
  class AdminHandler;
  struct Call;
  boost::asio::awaitable<net::Reply> Answer(net::Request& req, bool admin);
  boost::asio::awaitable<net::Response> Keys(Call& c);
  boost::asio::awaitable<net::Response> Flows(Call& c);
  boost::asio::awaitable<net::Reply> Runs(Call& c);
  boost::asio::awaitable<net::Reply> OneRun(Call& c, const std::string& flow_id);
  boost::asio::awaitable<net::Response> Deliveries(Call& c, const std::string& flow_id);
  boost::asio::awaitable<net::Response> WebhookSecret(Call& c);
  boost::asio::awaitable<net::Reply> Dispatch(net::Request& req, bool admin);
  std::string RenderMetrics() const;

  static constexpr size_t kRoutes = 16;
  static constexpr size_t kStatuses = 18;
  struct RouteMetrics {
    Counter by_status[kStatuses];
    Histogram seconds{std::span<const double>(kLatencyBounds)};
  };
  RouteMetrics route_metrics_[kRoutes];
  std::vector<std::function<void(std::string&)>> metric_sources_;
  std::unique_ptr<AdminHandler> admin_;  // set by Admin(): the operations routes live there

  KeyRing& keys_;
  flow::Catalog& catalog_;
  flow::Engine& engine_;
  flow::Webhooks& webhooks_;
  flow::WebhookSecrets& secrets_;
  store::Store& store_;
  std::function<bool()> ready_;
  double rate_limit_;  // requests per second per key; 0: unlimited
  std::mutex idempotency_mu_;
  std::unordered_set<std::string> idempotency_in_flight_;  // guarded by idempotency_mu_
};

// The bearer token of an Authorization value ("Bearer <token>", scheme in any case, one
// or more spaces), or "" when the value is not of that form.
std::string_view BearerToken(std::string_view authorization);

}  // namespace flowd::api
