#include "flow/webhooks.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <simdjson.h>

#include <charconv>

#include "auth/api_key.h"
#include "auth/webhook_signature.h"
#include "base/clock.h"
#include "base/ids.h"
#include "base/json.h"
#include "base/log.h"
#include "base/spawn.h"

namespace flowd::flow {
namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace ondemand = simdjson::ondemand;
using store::Cf;

namespace {

const char* StatusText(Delivery::Status s) {
  switch (s) {
    case Delivery::Status::kPending: return "pending";
    case Delivery::Status::kDelivered: return "delivered";
    case Delivery::Status::kFailed: return "failed";
  }
  return "pending";
}

std::string EncodeSecrets(const AccountSecrets& s) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("current").String(s.current).Key("previous").String(s.previous);
  w.Key("previous_until").Int(s.previous_until).EndObject();
  return out;
}

bool DecodeSecrets(std::string_view json, AccountSecrets& s) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  std::string_view cur, prev;
  if (parser.iterate(padded).get(doc) || doc["current"].get_string().get(cur) ||
      doc["previous"].get_string().get(prev) || doc["previous_until"].get_int64().get(s.previous_until)) {
    return false;
  }
  s.current = cur;
  s.previous = prev;
  return true;
}

void WriteAttempts(JsonWriter& w, const Delivery& d, bool public_form) {
  w.Key("attempts").BeginArray();
  for (const auto& a : d.attempts) {
    w.BeginObject();
    if (public_form) {
      w.Key("at").String(FormatTime(a.at));
    } else {
      w.Key("at").Int(a.at);
    }
    if (a.status_code) w.Key("status_code").Int(a.status_code);
    if (!a.error.empty()) w.Key("error").String(a.error);
    w.Key("duration_ms").Int(a.duration_ms).EndObject();
  }
  w.EndArray();
}

// Retry-After in seconds, when the receiver sent one.
std::optional<std::chrono::milliseconds> RetryAfter(const net::Inbound& r) {
  auto it = r.headers.find(http::field::retry_after);
  if (it == r.headers.end()) return std::nullopt;
  std::string_view v = it->value();
  unsigned secs = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return std::chrono::milliseconds(int64_t{secs} * 1000);
}

bool Retryable(const net::Inbound& r) {
  if (r.status == 0) {
    return !r.error.starts_with("refused") && !r.error.starts_with("invalid url") &&
           !r.error.starts_with("invalid header");
  }
  return r.status == 408 || r.status == 409 || r.status == 425 || r.status == 429 || r.status >= 500;
}

}  // namespace

std::string EncodeDelivery(const Delivery& d) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("delivery_id").String(d.delivery_id).Key("account").String(d.account);
  w.Key("run_id").String(d.run_id).Key("flow_id").String(d.flow_id).Key("kind").String(d.kind);
  w.Key("node").String(d.node).Key("url").String(d.url).Key("ai_flow_signature").String(d.ai_flow_signature);
  w.Key("body").String(d.body).Key("forget_body").Bool(d.forget_body).Key("status").String(StatusText(d.status));
  w.Key("created_at").Int(d.created_at).Key("next_at").Int(d.next_at);
  WriteAttempts(w, d, false);
  w.EndObject();
  return out;
}

bool DecodeDelivery(std::string_view json, Delivery& d) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  ondemand::object obj;
  if (parser.iterate(padded).get(doc) || doc.get_object().get(obj)) return false;
  for (auto f : obj) {
    std::string_view k, s;
    ondemand::value v;
    if (f.unescaped_key().get(k) || f.value().get(v)) return false;
    if (k == "attempts") {
      ondemand::array arr;
      if (v.get_array().get(arr)) return false;
      for (auto item : arr) {
        Delivery::Attempt a;
        ondemand::object o;
        if (item.get_object().get(o)) return false;
        for (auto af : o) {
          std::string_view ak;
          ondemand::value av;
          if (af.unescaped_key().get(ak) || af.value().get(av)) return false;
          int64_t n = 0;
          if (ak == "error") {
            std::string_view e;
            if (av.get_string().get(e)) return false;
            a.error = e;
          } else if (!av.get_int64().get(n)) {
            if (ak == "at") a.at = n;
            else if (ak == "status_code") a.status_code = static_cast<unsigned>(n);
            else if (ak == "duration_ms") a.duration_ms = n;
          }
        }
        d.attempts.push_back(std::move(a));
      }
    } else if (k == "created_at" || k == "next_at") {
      if (v.get_int64().get(k == "created_at" ? d.created_at : d.next_at)) return false;
    } else if (k == "forget_body") {
      if (v.get_bool().get(d.forget_body)) return false;
    } else {
      if (v.get_string().get(s)) return false;
      if (k == "delivery_id") d.delivery_id = s;
      else if (k == "account") d.account = s;
      else if (k == "run_id") d.run_id = s;
      else if (k == "flow_id") d.flow_id = s;
      else if (k == "kind") d.kind = s;
      else if (k == "node") d.node = s;
      else if (k == "url") d.url = s;
      else if (k == "ai_flow_signature") d.ai_flow_signature = s;
      else if (k == "body") d.body = s;
      else if (k == "status") {
        d.status = s == "delivered" ? Delivery::Status::kDelivered
                   : s == "failed"  ? Delivery::Status::kFailed
                                    : Delivery::Status::kPending;
      }
    }
  }
  return true;
}

std::string RenderDelivery(const Delivery& d) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("delivery_id").String(d.delivery_id).Key("kind").String(d.kind);
  if (!d.node.empty()) w.Key("node").String(d.node);
  w.Key("url").String(d.url).Key("status").String(StatusText(d.status));
  w.Key("created_at").String(FormatTime(d.created_at));
  if (d.status == Delivery::Status::kPending) w.Key("next_attempt_at").String(FormatTime(d.next_at));
  WriteAttempts(w, d, true);
  w.EndObject();
  return out;
}

asio::awaitable<std::optional<AccountSecrets>> WebhookSecrets::Get(std::string account) {
  {
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(account); it != cache_.end()) co_return it->second;
  }
  auto [s, json] = co_await store_.AsyncGet(Cf::kAccounts, account, asio::as_tuple(asio::use_awaitable));
  AccountSecrets secrets;
  if (s.ok() && DecodeSecrets(json, secrets)) {
    std::lock_guard lock(mu_);
    co_return cache_.try_emplace(account, secrets).first->second;
  }
  if (!s.not_found()) co_return std::nullopt;
  secrets.current = auth::GenerateWebhookSecret();
  store::Batch batch;
  batch.Put(Cf::kAccounts, account, EncodeSecrets(secrets));
  // Two first uses at once could each make a secret: the cache keeps the first, and the
  // store ends with the last; so write only if still absent from the cache.
  {
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(account); it != cache_.end()) co_return it->second;
    cache_[account] = secrets;
  }
  if (!(co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable)).ok()) {
    std::lock_guard lock(mu_);
    cache_.erase(account);
    co_return std::nullopt;
  }
  co_return secrets;
}

asio::awaitable<std::optional<AccountSecrets>> WebhookSecrets::Rotate(std::string account) {
  auto old = co_await Get(account);
  if (!old) co_return std::nullopt;
  AccountSecrets next{auth::GenerateWebhookSecret(), old->current, NowMillis() + grace_.count()};
  store::Batch batch;
  batch.Put(Cf::kAccounts, account, EncodeSecrets(next));
  if (!(co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable)).ok()) co_return std::nullopt;
  std::lock_guard lock(mu_);
  cache_[account] = next;
  co_return next;
}

Webhooks::Webhooks(asio::io_context& ioc, store::Store& store, net::HttpClient& http, WebhookSecrets& secrets,
                   WebhookOptions options)
    : ioc_(ioc), store_(store), http_(http), secrets_(secrets), options_(std::move(options)) {}

std::string Webhooks::DeliveryId(std::string_view run_id, std::string_view purpose) {
  std::string material(run_id);
  material += '/';
  material += purpose;
  auto h = auth::HashKey(material);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "msg_";
  for (int i = 0; i < 16; ++i) {
    id += kHex[h[i] >> 4];
    id += kHex[h[i] & 15];
  }
  return id;
}

void Webhooks::Persist(store::Batch& batch, const Delivery& d) {
  batch.Put(Cf::kDeliveries, d.delivery_id, EncodeDelivery(d));
  batch.Put(Cf::kDueDeliveries, store::DueKey(d.next_at, d.delivery_id), "");
  batch.Put(Cf::kRunDeliveries, d.run_id + "/" + d.delivery_id, "");
}

void Webhooks::Launch(Delivery d) { SpawnLogged(asio::make_strand(ioc_), Worker(std::move(d)), "webhook delivery"); }

asio::awaitable<bool> Webhooks::Enqueue(Delivery d, bool may_exist) {
  if (may_exist) {
    auto [s, existing] = co_await store_.AsyncGet(Cf::kDeliveries, d.delivery_id, asio::as_tuple(asio::use_awaitable));
    if (s.ok()) co_return true;  // made before a restart; ResumeSync runs it if it has not ended
    if (!s.not_found()) co_return false;
  }
  store::Batch batch;
  Persist(batch, d);
  if (!(co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable)).ok()) co_return false;
  Launch(std::move(d));
  co_return true;
}

size_t Webhooks::ResumeSync() {
  std::vector<std::string> ids;
  store_.ScanSync(Cf::kDueDeliveries, "", [&](std::string_view key, std::string_view) {
    ids.emplace_back(key.substr(8));
    return true;
  });
  size_t resumed = 0;
  for (const auto& id : ids) {
    std::string json;
    Delivery d;
    if (!store_.GetSync(Cf::kDeliveries, id, &json).ok() || !DecodeDelivery(json, d) ||
        d.status != Delivery::Status::kPending) {
      continue;
    }
    Launch(std::move(d));
    ++resumed;
  }
  return resumed;
}

asio::awaitable<void> Webhooks::Save(const Delivery& d, int64_t old_due) {
  Delivery stored = d;
  if (d.status != Delivery::Status::kPending && d.forget_body) stored.body.clear();
  for (int attempt = 0;; ++attempt) {
    store::Batch batch;
    batch.Put(Cf::kDeliveries, d.delivery_id, EncodeDelivery(stored));
    batch.Delete(Cf::kDueDeliveries, store::DueKey(old_due, d.delivery_id));
    if (d.status == Delivery::Status::kPending) batch.Put(Cf::kDueDeliveries, store::DueKey(d.next_at, d.delivery_id), "");
    if ((co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable)).ok()) co_return;
    // A full disk: the attempt stays unrecorded until it can be (a resend after a crash is
    // allowed, a lost delivery is not).
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(std::min(100 << std::min(attempt, 6), 5000)));
    co_await t.async_wait(asio::as_tuple(asio::use_awaitable));
  }
}

asio::awaitable<void> Webhooks::Worker(Delivery d) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (d.status == Delivery::Status::kPending) {
    int64_t wait = d.next_at - NowMillis();
    if (wait > 0) {
      timer.expires_after(std::chrono::milliseconds(wait));
      auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
    }
    auto secrets = co_await secrets_.Get(d.account);
    net::Outbound req;
    req.method = http::verb::post;
    req.url = d.url;
    req.body = d.body;
    req.timeout = options_.timeout;
    req.max_response = 64 << 10;
    const int64_t ts = NowMillis() / 1000;
    std::string signature;
    if (secrets) {
      if (auto key = auth::WebhookKey(secrets->current)) signature = auth::SignWebhook(*key, d.delivery_id, ts, d.body);
      if (!secrets->previous.empty() && secrets->previous_until > NowMillis()) {
        if (auto key = auth::WebhookKey(secrets->previous)) signature += " " + auth::SignWebhook(*key, d.delivery_id, ts, d.body);
      }
    }
    req.headers = {{"Content-Type", "application/json"},
                   {"webhook-id", d.delivery_id},
                   {"webhook-timestamp", std::to_string(ts)},
                   {"webhook-signature", signature}};
    if (!d.ai_flow_signature.empty()) req.headers.push_back({"AI_FLOW_SIGNATURE", d.ai_flow_signature});

    Delivery::Attempt attempt;
    attempt.at = NowMillis();
    // (No co_await inside ?: — GCC 12 miscompiles it.)
    net::Inbound res;
    if (secrets) {
      res = co_await http_.Fetch(req);
    } else {
      res.error = "the account secret is unavailable";
    }
    attempt.duration_ms = NowMillis() - attempt.at;
    attempt.status_code = res.status;
    attempt.error = res.error;
    if (res.status >= 300 && res.status < 400) attempt.error = "redirects are not followed";
    d.attempts.push_back(std::move(attempt));

    const int64_t old_due = d.next_at;
    const size_t retries_used = d.attempts.size() - 1;
    if (res.status >= 200 && res.status < 300) {
      d.status = Delivery::Status::kDelivered;
      attempts_delivered_.Add();
    } else if (Retryable(res) && retries_used < options_.schedule.size()) {
      // ±20 % jitter spreads retries to one receiver that failed many deliveries at once.
      unsigned char r;
      RandomBytes(&r, 1);
      const double factor = 0.8 + 0.4 * (r / 255.0);
      auto delay = std::chrono::milliseconds(static_cast<int64_t>(options_.schedule[retries_used].count() * factor));
      if (auto ra = RetryAfter(res); ra && *ra > delay) delay = *ra;
      d.next_at = NowMillis() + delay.count();
      attempts_retried_.Add();
    } else {
      d.status = Delivery::Status::kFailed;
      attempts_failed_.Add();
    }
    co_await Save(d, old_due);
  }
}

void Webhooks::RenderMetrics(std::string& out) const {
  MetricHeader(out, "flowd_webhook_attempts_total", "counter", "Webhook delivery attempts, by outcome.");
  MetricLine(out, "flowd_webhook_attempts_total", "outcome=\"delivered\"", static_cast<double>(attempts_delivered_.value()));
  MetricLine(out, "flowd_webhook_attempts_total", "outcome=\"retry\"", static_cast<double>(attempts_retried_.value()));
  MetricLine(out, "flowd_webhook_attempts_total", "outcome=\"failed\"", static_cast<double>(attempts_failed_.value()));
}

asio::awaitable<std::vector<Delivery>> Webhooks::ListForRun(std::string run_id) {
  auto rows = co_await store_.AsyncScan(Cf::kRunDeliveries, run_id + "/", "", 1000, asio::use_awaitable);
  std::vector<std::string> ids;
  for (const auto& r : rows) ids.push_back(r.key.substr(run_id.size() + 1));
  auto records = co_await store_.AsyncMultiGet(Cf::kDeliveries, ids, asio::use_awaitable);
  std::vector<Delivery> out;
  for (auto& rec : records) {
    Delivery d;
    if (rec && DecodeDelivery(*rec, d)) out.push_back(std::move(d));
  }
  std::sort(out.begin(), out.end(), [](const Delivery& a, const Delivery& b) {
    return a.created_at != b.created_at ? a.created_at < b.created_at : a.delivery_id < b.delivery_id;
  });
  co_return out;
}

asio::awaitable<std::optional<Error>> Webhooks::Retry(std::string run_id, std::string delivery_id, Delivery* out) {
  auto [s, json] = co_await store_.AsyncGet(Cf::kDeliveries, delivery_id, asio::as_tuple(asio::use_awaitable));
  Delivery d;
  if (!s.ok() || !DecodeDelivery(json, d) || d.run_id != run_id) {
    co_return Error{"not_found", "No such delivery.", "", {}};
  }
  if (d.status != Delivery::Status::kFailed) {
    co_return Error{"conflict", "Only a failed delivery can be sent again.", "", {}};
  }
  if (d.body.empty()) co_return Error{"conflict", "This run's outputs were not kept, so its delivery cannot be sent again.", "", {}};
  d.status = Delivery::Status::kPending;
  d.next_at = NowMillis();
  store::Batch batch;
  Persist(batch, d);
  if (!(co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable)).ok()) {
    co_return Error{"unavailable", "The store cannot take writes right now.", "", {}};
  }
  *out = d;
  Launch(std::move(d));
  co_return std::nullopt;
}

}  // namespace flowd::flow
