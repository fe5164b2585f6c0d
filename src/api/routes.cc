#include "api/routes.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/string.hpp>

#include <charconv>
#include <utility>

#include "api/api_view.h"
#include "auth/webhook_signature.h"
#include "base/clock.h"
#include "base/ids.h"
#include "base/json.h"
#include "flow/inputs.h"

namespace flowd::api {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using net::ErrorResponse;
using net::JsonResponse;
using net::Request;
using net::Response;

namespace {

unsigned StatusFor(const std::string& code) {
  if (code == "not_found") return 404;
  if (code == "queue_full" || code == "rate_limited") return 429;
  if (code == "unavailable") return 503;
  if (code == "unsupported_media_type") return 415;
  if (code == "conflict") return 409;
  return 400;
}

Response Fail(const Error& e) {
  Response res = ErrorResponse(StatusFor(e.code), e);
  if (res.result_int() == 429 || res.result_int() == 503) res.set(http::field::retry_after, "1");
  return res;
}

Response NotFound() { return ErrorResponse(404, "not_found", "No such resource."); }

Response Unauthorized() {
  Response res = ErrorResponse(401, "unauthorized", "A valid API key is required: Authorization: Bearer <key>.");
  res.set(http::field::www_authenticate, "Bearer");
  return res;
}

Response MethodNotAllowed(std::string_view allow) {
  Response res = ErrorResponse(405, "method_not_allowed", "This route does not take that method.");
  res.set(http::field::allow, allow);
  return res;
}

std::vector<std::string_view> Split(std::string_view path) {
  std::vector<std::string_view> parts;
  size_t i = 1;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    parts.push_back(path.substr(i, j - i));
    i = j + 1;
  }
  return parts;
}

std::string_view QueryParam(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

// A JSON body is required to say so, when it says anything.
bool JsonContentType(const Request& req) {
  auto it = req.find(http::field::content_type);
  if (it == req.end()) return true;
  std::string_view v = it->value();
  v = v.substr(0, v.find(';'));
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  return beast::iequals(v, "application/json");
}

std::string SavedJson(const flow::SavedFlow& s) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("flow_id").String(s.flow_id).Key("version").Int(s.version);
  w.Key("saved_at").String(FormatTime(s.saved_at)).EndObject();
  return out;
}

constexpr int64_t kIdempotencyWindowMs = 24 * 3600 * 1000;

struct IdempotentRun {
  std::string run_id, flow_id, fingerprint;
  int64_t created_at = 0;
};

std::string EncodeIdempotent(const IdempotentRun& r) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("run_id").String(r.run_id).Key("flow_id").String(r.flow_id);
  w.Key("fingerprint").String(r.fingerprint).Key("created_at").Int(r.created_at).EndObject();
  return out;
}

bool DecodeIdempotent(std::string_view json, IdempotentRun& r) {
  simdjson::ondemand::parser parser;
  simdjson::padded_string padded(json);
  simdjson::ondemand::document doc;
  std::string_view run, flow, fp;
  if (parser.iterate(padded).get(doc) || doc["run_id"].get_string().get(run) || doc["flow_id"].get_string().get(flow) ||
      doc["fingerprint"].get_string().get(fp) || doc["created_at"].get_int64().get(r.created_at)) {
    return false;
  }
  r.run_id = run;
  r.flow_id = flow;
  r.fingerprint = fp;
  return true;
}

// The 202 body for a run, from its public object.
std::string AcceptedJson(const std::string& run_object) {
  simdjson::ondemand::parser parser;
  simdjson::padded_string padded(run_object);
  simdjson::ondemand::document doc;
  std::string_view run_id, flow_id, status, created_at;
  int64_t version = 0;
  if (parser.iterate(padded).get(doc) || doc["run_id"].get_string().get(run_id) ||
      doc["flow_id"].get_string().get(flow_id) || doc["flow_version"].get_int64().get(version) ||
      doc["status"].get_string().get(status) || doc["created_at"].get_string().get(created_at)) {
    return run_object;
  }
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("run_id").String(run_id).Key("flow_id").String(flow_id).Key("flow_version").Int(version);
  w.Key("status").String(status).Key("created_at").String(created_at).EndObject();
  return out;
}

// `Prefer: wait=N` (1 <= N <= 60) among the preferences; anything else is ignored.
std::optional<int> PreferWait(std::string_view v) {
  while (!v.empty()) {
    size_t comma = v.find(',');
    std::string_view pref = v.substr(0, comma);
    while (!pref.empty() && pref.front() == ' ') pref.remove_prefix(1);
    if (pref.starts_with("wait=")) {
      int n = 0;
      auto num = pref.substr(5);
      while (!num.empty() && num.back() == ' ') num.remove_suffix(1);
      auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
      if (end == num.data() + num.size() && !num.empty()) {
        if (ec == std::errc() && n >= 1) return std::min(n, 60);
        if (ec == std::errc::result_out_of_range && num.front() != '-') return 60;  // above 60 counts as 60
      }
    }
    if (comma == std::string_view::npos) break;
    v.remove_prefix(comma + 1);
  }
  return std::nullopt;
}

}  // namespace

std::string_view BearerToken(std::string_view v) {
  constexpr std::string_view kScheme = "bearer";
  if (v.size() <= kScheme.size() || !beast::iequals(v.substr(0, kScheme.size()), kScheme) || v[kScheme.size()] != ' ')
    return {};
  v.remove_prefix(kScheme.size());
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && v.back() == ' ') v.remove_suffix(1);
  return v;
}

struct Routes::Call {
  Request& req;
  std::vector<std::string_view> parts;  // path segments after "/v1"
  std::string_view query;
  std::shared_ptr<const KeyInfo> caller;
};

std::optional<net::Response> Routes::Precheck(const Request& head) {
  std::string_view target = head.target();
  if (!target.starts_with("/v1/")) return std::nullopt;
  auto auth = head.find(http::field::authorization);
  if (auth == head.end() || head.count(http::field::authorization) != 1 || !keys_.Authenticate(BearerToken(auth->value())))
    return Unauthorized();
  return std::nullopt;
}

namespace {

constexpr std::string_view kRouteNames[] = {"healthz",    "readyz",       "metrics",     "keys",        "webhook_secret",
                                            "flows",      "flow",         "flow_api",    "runs_list",   "run_start",
                                            "run_get",    "run_cancel",   "run_events",  "deliveries",  "delivery_retry",
                                            "other"};
constexpr unsigned kStatusCodes[] = {200, 201, 202, 204, 400, 401, 404, 405, 409,
                                     413, 415, 422, 429, 431, 500, 501, 503, 0};

// The route a path belongs to, by shape alone (ids are not checked here).
size_t RouteIndex(std::string_view path) {
  auto at = [](std::string_view name) {
    for (size_t i = 0; i < std::size(kRouteNames); ++i) {
      if (kRouteNames[i] == name) return i;
    }
    return std::size(kRouteNames) - 1;
  };
  if (path == "/healthz") return at("healthz");
  if (path == "/readyz") return at("readyz");
  if (path == "/metrics") return at("metrics");
  if (!path.starts_with("/v1/")) return at("other");
  auto p = Split(path.substr(3));
  if (p[0] == "keys") return at("keys");
  if (p[0] == "webhook-secret") return at("webhook_secret");
  if (p[0] != "flow") return at("other");
  switch (p.size()) {
    case 1: return at("flows");
    case 2: return at("flow");
    case 3: return at(p[2] == "api" ? "flow_api" : p[2] == "runs" ? "runs_list" : p[2] == "run" ? "run_start" : "other");
    case 4: return at("run_get");
    case 5: return at(p[4] == "cancel" ? "run_cancel" : p[4] == "events" ? "run_events" : p[4] == "deliveries" ? "deliveries" : "other");
    case 7: return at("delivery_retry");
    default: return at("other");
  }
}

size_t StatusIndex(unsigned status) {
  for (size_t i = 0; i + 1 < std::size(kStatusCodes); ++i) {
    if (kStatusCodes[i] == status) return i;
  }
  return std::size(kStatusCodes) - 1;
}

}  // namespace

class Routes::AdminHandler : public net::Handler {
 public:
  explicit AdminHandler(Routes& routes) : routes_(routes) {}
  std::optional<net::Response> Precheck(const Request&) override { return std::nullopt; }
  asio::awaitable<net::Reply> Handle(Request& req) override { return routes_.Answer(req, true); }

 private:
  Routes& routes_;
};

// Out of line: AdminHandler is complete only here.
Routes::Routes(KeyRing& keys, flow::Catalog& catalog, flow::Engine& engine, flow::Webhooks& webhooks,
               flow::WebhookSecrets& secrets, store::Store& store, std::function<bool()> ready, double rate_limit)
    : keys_(keys), catalog_(catalog), engine_(engine), webhooks_(webhooks), secrets_(secrets), store_(store),
      ready_(std::move(ready)), rate_limit_(rate_limit) {}
Routes::~Routes() = default;

net::Handler& Routes::Admin() {
  if (!admin_) admin_ = std::make_unique<AdminHandler>(*this);
  return *admin_;
}

asio::awaitable<net::Reply> Routes::Handle(Request& req) { return Answer(req, false); }

asio::awaitable<net::Reply> Routes::Answer(Request& req, bool admin) {
  const auto started = std::chrono::steady_clock::now();
  const size_t route = RouteIndex(req.target().substr(0, req.target().find('?')));
  net::Reply reply = co_await Dispatch(req, admin);
  RouteMetrics& m = route_metrics_[route];
  m.by_status[StatusIndex(reply.response.result_int())].Add();
  m.seconds.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  co_return reply;
}

std::string Routes::RenderMetrics() const {
  static_assert(std::size(kRouteNames) == kRoutes && std::size(kStatusCodes) == kStatuses);
  std::string out;
  MetricHeader(out, "flowd_http_requests_total", "counter", "Requests answered, by route and status.");
  for (size_t r = 0; r < kRoutes; ++r) {
    for (size_t s = 0; s < kStatuses; ++s) {
      uint64_t n = route_metrics_[r].by_status[s].value();
      if (n == 0) continue;
      std::string status = kStatusCodes[s] ? std::to_string(kStatusCodes[s]) : "other";
      MetricLine(out, "flowd_http_requests_total",
                 "route=\"" + std::string(kRouteNames[r]) + "\",status=\"" + status + "\"", static_cast<double>(n));
    }
  }
  MetricHeader(out, "flowd_http_request_seconds", "histogram", "Time from a request's head to its answer, by route.");
  for (size_t r = 0; r < kRoutes; ++r) {
    route_metrics_[r].seconds.Render(out, "flowd_http_request_seconds", "route=\"" + std::string(kRouteNames[r]) + "\"");
  }
  for (const auto& source : metric_sources_) source(out);
  return out;
}

asio::awaitable<net::Reply> Routes::Dispatch(Request& req, bool admin) {
  std::string_view target = req.target();
  size_t q = target.find('?');
  std::string_view path = target.substr(0, q);
  std::string_view query = q == std::string_view::npos ? "" : target.substr(q + 1);

  // With an admin listener the operations routes live only there, and the API only here.
  const bool ops = path == "/healthz" || path == "/readyz" || path == "/metrics";
  if (admin != ops && (admin || admin_)) co_return NotFound();
  if (path == "/healthz" || path == "/readyz") {
    if (req.method() != http::verb::get && req.method() != http::verb::head) co_return MethodNotAllowed("GET, HEAD");
    if (path == "/readyz" && !(store_.healthy() && ready_())) {
      Response res = ErrorResponse(503, "unavailable", "Not accepting runs right now.");
      res.set(http::field::retry_after, "1");
      co_return res;
    }
    co_return JsonResponse(200, R"({"status":"ok"})");
  }
  if (path == "/metrics") {
    if (req.method() != http::verb::get) co_return MethodNotAllowed("GET");
    Response res{http::status::ok, 11};
    res.set(http::field::content_type, "text/plain; version=0.0.4");
    res.body() = RenderMetrics();
    res.prepare_payload();
    co_return res;
  }
  if (!path.starts_with("/v1/")) co_return NotFound();

  // One Authorization header, one bearer token; everything else reads as unauthorized.
  auto auth = req.find(http::field::authorization);
  if (auth == req.end() || req.count(http::field::authorization) != 1) co_return Unauthorized();
  Call call{req, Split(path.substr(3)), query, keys_.Authenticate(BearerToken(auth->value()))};
  if (!call.caller) co_return Unauthorized();
  if (rate_limit_ > 0) {
    if (int64_t wait_ms = call.caller->TakeToken(rate_limit_, NowMillis())) {
      Response res = ErrorResponse(429, "rate_limited", "This key is over its request rate; retry later.");
      res.set(http::field::retry_after, std::to_string((wait_ms + 999) / 1000));
      co_return res;
    }
  }

  if ((req.method() == http::verb::post || req.method() == http::verb::put) && !req.body().empty() &&
      !JsonContentType(req)) {
    co_return ErrorResponse(415, "unsupported_media_type", "Send the body as Content-Type: application/json.");
  }
  const auto& p = call.parts;
  if (p.empty()) co_return NotFound();
  if (p[0] == "keys") co_return co_await Keys(call);
  if (p[0] == "webhook-secret") co_return co_await WebhookSecret(call);
  if (p[0] == "flow" && p.size() >= 3 && (p[2] == "run" || p[2] == "runs")) co_return co_await Runs(call);
  if (p[0] == "flow") co_return co_await Flows(call);
  co_return NotFound();
}

asio::awaitable<Response> Routes::Keys(Call& c) {
  const auto& p = c.parts;
  const auto method = c.req.method();
  if (p.size() == 1) {
    if (method == http::verb::post) {
      std::string name;
      if (!c.req.body().empty()) {
        simdjson::ondemand::parser parser;
        simdjson::ondemand::document doc;
        simdjson::ondemand::object obj;
        if (parser.iterate(Padded(c.req.body())).get(doc) || doc.get_object().get(obj)) {
          co_return ErrorResponse(400, "invalid_json", "The body must be a JSON object.");
        }
        bool seen = false;
        for (auto f : obj) {
          std::string_view k, v;
          if (f.unescaped_key().get(k)) co_return ErrorResponse(400, "invalid_json", "The body is not valid JSON.");
          if (k != "name") co_return ErrorResponse(400, "invalid_body", "Unknown field \"" + std::string(k) + "\".");
          if (std::exchange(seen, true)) co_return ErrorResponse(400, "invalid_json", JsonErrorMessage(JsonError::kDuplicateKey));
          if (f.value().get_string().get(v) || v.size() > 200) {
            co_return ErrorResponse(400, "invalid_body", "name must be a string of at most 200 characters.");
          }
          name = v;
        }
        if (!AtEnd(doc)) co_return ErrorResponse(400, "invalid_json", "The body is not valid JSON.");
      }
      auto created = co_await keys_.Create(c.caller->account, name);
      if (!created) co_return Fail({"unavailable", "The store cannot take writes right now.", "", {}});
      std::string out;
      JsonWriter w(out);
      w.BeginObject().Key("key_id").String(created->info->key_id).Key("name").String(created->info->name);
      w.Key("key").String(created->key).Key("prefix").String(created->info->prefix);
      w.Key("created_at").String(FormatTime(created->info->created_at)).EndObject();
      co_return JsonResponse(201, std::move(out));
    }
    if (method == http::verb::get) {
      std::string out;
      JsonWriter w(out);
      w.BeginObject().Key("keys").BeginArray();
      for (const auto& k : keys_.List(c.caller->account)) {
        w.BeginObject().Key("key_id").String(k->key_id).Key("name").String(k->name).Key("prefix").String(k->prefix);
        w.Key("created_at").String(FormatTime(k->created_at)).Key("last_used_at");
        int64_t used = k->last_used_at.load(std::memory_order_relaxed);
        used ? w.String(FormatTime(used)) : w.Null();
        w.EndObject();
      }
      w.EndArray().EndObject();
      co_return JsonResponse(200, std::move(out));
    }
    co_return MethodNotAllowed("GET, POST");
  }
  if (p.size() == 2 && !p[1].empty()) {
    if (method != http::verb::delete_) co_return MethodNotAllowed("DELETE");
    bool stored = false;
    if (!co_await keys_.Revoke(c.caller->account, std::string(p[1]), &stored)) co_return NotFound();
    if (!stored) co_return Fail({"unavailable", "The key was revoked in memory but the store refused the change.", "", {}});
    Response res{http::status::no_content, 11};
    co_return res;
  }
  co_return NotFound();
}

asio::awaitable<Response> Routes::Flows(Call& c) {
  const auto& p = c.parts;
  const auto method = c.req.method();
  const std::string& account = c.caller->account;
  if (p.size() == 1) {
    if (method != http::verb::post) co_return MethodNotAllowed("POST");
    Error error;
    auto flow = flow::ParseFlow(c.req.body(), error);
    if (!flow) co_return Fail(error);
    auto result = co_await catalog_.Save(account, NewUuidV4(), std::move(flow));
    if (result.error) co_return Fail(*result.error);
    co_return JsonResponse(201, SavedJson(result.saved));
  }
  if (p.size() == 3 && p[2] == "api" && IsUuid(p[1])) {
    if (method != http::verb::get) co_return MethodNotAllowed("GET");
    auto saved = co_await catalog_.Get(account, std::string(p[1]));
    if (!saved) co_return NotFound();
    std::string host = "127.0.0.1:8080";
    if (auto h = c.req.find(http::field::host); h != c.req.end() && !h->value().empty() &&
        h->value().find_first_of(" '\"\\`$<>\r\n") == std::string_view::npos) {
      host = std::string(h->value());
    }
    co_return JsonResponse(200, RenderApiView(*saved, "http://" + host));
  }
  if (p.size() != 2 || !IsUuid(p[1])) co_return NotFound();
  std::string flow_id(p[1]);
  if (method == http::verb::put) {
    Error error;
    auto flow = flow::ParseFlow(c.req.body(), error);
    if (!flow) co_return Fail(error);
    auto result = co_await catalog_.Save(account, flow_id, std::move(flow));
    if (result.error) co_return Fail(*result.error);
    co_return JsonResponse(result.created ? 201 : 200, SavedJson(result.saved));
  }
  if (method == http::verb::get) {
    std::optional<uint32_t> version;
    if (std::string_view v = QueryParam(c.query, "version"); !v.empty()) {
      uint32_t n = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc() || end != v.data() + v.size() || n == 0) {
        co_return ErrorResponse(400, "invalid_query", "version must be a positive integer.");
      }
      version = n;
    }
    auto saved = co_await catalog_.Get(account, flow_id, version);
    if (!saved) co_return NotFound();
    std::string out;
    JsonWriter w(out);
    w.BeginObject().Key("flow_id").String(flow_id).Key("version").Int(saved->version);
    w.Key("saved_at").String(FormatTime(saved->saved_at)).Key("name").String(saved->flow->name);
    w.Key("nodes").Raw(saved->flow->nodes_json).EndObject();
    co_return JsonResponse(200, std::move(out));
  }
  if (method == http::verb::delete_) {
    bool found = false;
    auto error = co_await catalog_.Delete(account, flow_id, &found);
    if (error) co_return Fail(*error);
    if (!found) co_return NotFound();
    co_return Response{http::status::no_content, 11};
  }
  co_return MethodNotAllowed("GET, PUT, DELETE");
}

asio::awaitable<net::Reply> Routes::Runs(Call& c) {
  const auto& p = c.parts;  // flow, {id}, run[, {run_id}]
  const auto method = c.req.method();
  if (!IsUuid(p[1])) co_return NotFound();
  std::string flow_id(p[1]);
  if (p[2] == "runs") {
    if (p.size() != 3) co_return NotFound();
    if (method != http::verb::get) co_return MethodNotAllowed("GET");
    size_t limit = 20;
    if (std::string_view v = QueryParam(c.query, "limit"); !v.empty()) {
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), limit);
      if (ec != std::errc() || end != v.data() + v.size() || limit < 1 || limit > 100) {
        co_return ErrorResponse(400, "invalid_query", "limit must be an integer from 1 to 100.");
      }
    }
    std::optional<flow::RunStatus> status;
    if (std::string_view v = QueryParam(c.query, "status"); !v.empty()) {
      for (auto s : {flow::RunStatus::kPending, flow::RunStatus::kComplete, flow::RunStatus::kFailed,
                     flow::RunStatus::kCanceled}) {
        if (flow::StatusName(s) == v) status = s;
      }
      if (!status) co_return ErrorResponse(400, "invalid_query", "status must be pending, complete, failed or canceled.");
    }
    std::string_view cursor = QueryParam(c.query, "cursor");
    if (cursor.size() > 64 || cursor.find_first_not_of("0123456789abcdef-/") != std::string_view::npos) {
      co_return ErrorResponse(400, "invalid_query", "cursor is not one this server issued.");
    }
    if (!co_await catalog_.Get(c.caller->account, flow_id)) co_return NotFound();
    auto page = co_await engine_.List(flow_id, status, limit, std::string(cursor));
    std::string out;
    JsonWriter w(out);
    w.BeginObject().Key("runs").BeginArray();
    for (const auto& r : page.runs) w.Raw(r);
    w.EndArray().Key("next_cursor");
    page.next_cursor.empty() ? w.Null() : w.String(page.next_cursor);
    w.EndObject();
    co_return JsonResponse(200, std::move(out));
  }
  if (p.size() >= 4) co_return co_await OneRun(c, flow_id);
  if (method != http::verb::post) co_return MethodNotAllowed("POST");
  auto saved = co_await catalog_.Get(c.caller->account, flow_id);
  if (!saved) co_return NotFound();
  flow::RunRecord rec;
  rec.account = c.caller->account;
  if (auto error = flow::DecodeRunRequest(*saved->flow, c.req.body(), rec)) co_return Fail(*error);
  if (!ready_()) co_return Fail({"unavailable", "The server is shutting down.", "", {}});
  std::optional<int> wait_seconds;
  if (auto prefer = c.req.find("Prefer"); prefer != c.req.end()) {
    wait_seconds = PreferWait(prefer->value());
  }

  // Idempotency-Key: the same key and body within 24 h give back the first run.
  flow::Engine::BatchExtra remember;
  std::string idem_key;
  struct InFlight {
    Routes* routes;
    std::string key;
    ~InFlight() {
      if (key.empty()) return;
      std::lock_guard lock(routes->idempotency_mu_);
      routes->idempotency_in_flight_.erase(key);
    }
  } in_flight{this, ""};
  if (auto idem = c.req.find("Idempotency-Key"); idem != c.req.end()) {
    std::string_view v = idem->value();
    if (v.empty() || v.size() > 255) {
      co_return ErrorResponse(400, "invalid_request", "Idempotency-Key must be 1 to 255 characters.");
    }
    idem_key = c.caller->account + "\n" + std::string(v);
    {
      std::lock_guard lock(idempotency_mu_);
      if (!idempotency_in_flight_.insert(idem_key).second) {
        co_return ErrorResponse(409, "conflict", "A request with this Idempotency-Key is still in progress.");
      }
    }
    in_flight.key = idem_key;
    const auto digest = auth::HashKey(flow_id + "\n" + c.req.body());
    const std::string fingerprint = auth::Base64(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
    auto [s, stored] = co_await store_.AsyncGet(store::Cf::kIdempotency, idem_key, asio::as_tuple(asio::use_awaitable));
    IdempotentRun prior;
    if (s.ok() && DecodeIdempotent(stored, prior) && prior.created_at + kIdempotencyWindowMs > NowMillis()) {
      if (prior.fingerprint != fingerprint) {
        co_return ErrorResponse(422, "idempotency_key_reused",
                                "This Idempotency-Key was used with a different request.");
      }
      if (auto view = co_await engine_.Find(c.caller->account, prior.flow_id, prior.run_id)) {
        Response res = JsonResponse(202, AcceptedJson(view->object));
        res.set(http::field::location, "/v1/flow/" + prior.flow_id + "/run/" + prior.run_id);
        res.set("Idempotency-Replayed", "true");
        co_return res;
      }
    }
    remember = [idem_key, fingerprint](store::Batch& batch, const flow::RunRecord& r) {
      batch.Put(store::Cf::kIdempotency, idem_key, EncodeIdempotent({r.run_id, r.flow_id, fingerprint, r.created_at}));
    };
  }
  if (auto error = co_await engine_.Start(std::move(*saved), rec, std::move(remember))) co_return Fail(*error);
  if (wait_seconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(*wait_seconds);
    for (;;) {
      auto view = co_await engine_.Find(c.caller->account, flow_id, rec.run_id);
      if (!view || view->ended || !view->control) {
        if (view && view->ended) co_return JsonResponse(200, std::move(view->object));
        break;
      }
      if (!co_await flow::Engine::WaitForChange(view->control, SIZE_MAX, deadline)) break;
    }
  }
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("run_id").String(rec.run_id).Key("flow_id").String(rec.flow_id);
  w.Key("flow_version").Int(rec.flow_version).Key("status").String("pending");
  w.Key("created_at").String(FormatTime(rec.created_at)).EndObject();
  Response res = JsonResponse(202, std::move(out));
  res.set(http::field::location, "/v1/flow/" + rec.flow_id + "/run/" + rec.run_id);
  co_return res;
}

asio::awaitable<net::Reply> Routes::OneRun(Call& c, const std::string& flow_id) {
  const auto& p = c.parts;  // flow, {id}, run, {run_id}[, cancel | events | deliveries[, {id}, retry]]
  const auto method = c.req.method();
  if (p.size() >= 5 && p[4] == "deliveries") co_return co_await Deliveries(c, flow_id);
  if (p[3].empty() || p.size() > 5) co_return NotFound();
  const std::string_view action = p.size() == 5 ? p[4] : "";
  if (!action.empty() && action != "cancel" && action != "events") co_return NotFound();
  const auto allowed = action == "cancel" ? http::verb::post : http::verb::get;
  if (method != allowed) co_return MethodNotAllowed(action == "cancel" ? "POST" : "GET");

  auto view = co_await engine_.Find(c.caller->account, flow_id, std::string(p[3]));
  if (!view) co_return NotFound();
  if (action.empty()) co_return JsonResponse(200, std::move(view->object));

  if (action == "cancel") {
    if (!view->ended && view->control) {
      flow::Engine::Cancel(view->control);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (co_await flow::Engine::WaitForChange(view->control, SIZE_MAX, deadline)) {
        std::lock_guard lock(view->control->mu);
        if (view->control->ended) break;
      }
      if (auto now = co_await engine_.Find(c.caller->account, flow_id, std::string(p[3]))) view = std::move(now);
    }
    co_return JsonResponse(200, std::move(view->object));
  }

  // Server-Sent Events: everything after Last-Event-ID, then what comes, until the run ends.
  size_t from = 0;
  if (auto last = c.req.find("Last-Event-ID"); last != c.req.end()) {
    std::string_view v = last->value();
    std::from_chars(v.data(), v.data() + v.size(), from);
  }
  Response head{http::status::ok, 11};
  head.set(http::field::content_type, "text/event-stream");
  head.set(http::field::cache_control, "no-cache");
  net::Reply reply(std::move(head));
  reply.stream = [view = std::move(*view), from](net::StreamSink& sink) mutable -> asio::awaitable<void> {
    auto frame = [](size_t id, const std::string& event) {
      // The type is the event's own "type" field; the data is the whole event.
      std::string type = "message";
      if (auto at = event.find("\"type\":\""); at != std::string::npos) {
        at += 8;
        type = event.substr(at, event.find('"', at) - at);
      }
      return "id: " + std::to_string(id) + "\nevent: " + type + "\ndata: " + event + "\n\n";
    };
    size_t next = from;  // events sent so far, by id
    if (!view.control) {
      for (size_t i = next; i < view.stored_events.size(); ++i) {
        if (!co_await sink.Write(frame(i + 1, view.stored_events[i]))) co_return;
      }
      co_return;
    }
    for (;;) {
      std::vector<std::string> batch;
      bool ended = false;
      {
        std::lock_guard lock(view.control->mu);
        for (size_t i = next; i < view.control->events.size(); ++i) batch.push_back(view.control->events[i]);
        ended = view.control->ended;
      }
      for (auto& e : batch) {
        if (!co_await sink.Write(frame(++next, e))) co_return;
      }
      if (ended || sink.stopping()) co_return;
      const auto ping_at = std::chrono::steady_clock::now() + std::chrono::seconds(15);
      if (!co_await flow::Engine::WaitForChange(view.control, next, ping_at)) {
        if (!co_await sink.Write(": ping\n\n")) co_return;
      }
    }
  };
  co_return reply;
}

asio::awaitable<Response> Routes::Deliveries(Call& c, const std::string& flow_id) {
  const auto& p = c.parts;  // flow, {id}, run, {run_id}, deliveries[, {delivery_id}, retry]
  const auto method = c.req.method();
  const bool retry = p.size() == 7 && p[6] == "retry" && !p[5].empty();
  if (p.size() != 5 && !retry) co_return NotFound();
  if (method != (retry ? http::verb::post : http::verb::get)) co_return MethodNotAllowed(retry ? "POST" : "GET");
  const std::string run_id(p[3]);
  if (!co_await engine_.Find(c.caller->account, flow_id, run_id)) co_return NotFound();
  if (retry) {
    flow::Delivery d;
    if (auto error = co_await webhooks_.Retry(run_id, std::string(p[5]), &d)) {
      co_return Fail(*error);
    }
    co_return JsonResponse(202, flow::RenderDelivery(d));
  }
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("deliveries").BeginArray();
  auto deliveries = co_await webhooks_.ListForRun(run_id);
  for (const auto& d : deliveries) w.Raw(flow::RenderDelivery(d));
  w.EndArray().EndObject();
  co_return JsonResponse(200, std::move(out));
}

asio::awaitable<Response> Routes::WebhookSecret(Call& c) {
  const auto& p = c.parts;  // webhook-secret[, rotate]
  const bool rotate = p.size() == 2 && p[1] == "rotate";
  if (p.size() != 1 && !rotate) co_return NotFound();
  if (c.req.method() != (rotate ? http::verb::post : http::verb::get)) co_return MethodNotAllowed(rotate ? "POST" : "GET");
  std::optional<flow::AccountSecrets> secrets;  // (no co_await inside ?: — GCC 12 miscompiles it)
  if (rotate) {
    secrets = co_await secrets_.Rotate(c.caller->account);
  } else {
    secrets = co_await secrets_.Get(c.caller->account);
  }
  if (!secrets) co_return Fail({"unavailable", "The store cannot take writes right now.", "", {}});
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("secret").String(secrets->current);
  if (!secrets->previous.empty() && secrets->previous_until > NowMillis()) {
    w.Key("previous_valid_until").String(FormatTime(secrets->previous_until));
  }
  w.EndObject();
  co_return JsonResponse(200, std::move(out));
}

}  // namespace flowd::api
