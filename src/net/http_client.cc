#include "net/http_client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <optional>
#include <stdexcept>

#include "net/http_read.h"
#include "net/url.h"

namespace flowd::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using asio::as_tuple;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

namespace {
constexpr size_t kMaxResponseHead = 64 << 10;
}  // namespace


struct HttpClient::Connection {
  std::optional<beast::tcp_stream> plain;
  std::optional<beast::ssl_stream<beast::tcp_stream>> tls;
  beast::flat_buffer buffer;
  Clock::time_point idle_since;
  bool reused = false;
};

HttpClient::HttpClient(asio::io_context& ioc, ClientOptions options)
    : ioc_(ioc), options_(std::move(options)), tls_(ssl::context::tls_client) {
  tls_.set_default_verify_paths();
  if (!options_.ca_file.empty()) {
    boost::system::error_code ec;
    tls_.load_verify_file(options_.ca_file, ec);
    if (ec) throw std::runtime_error("cannot load CA file " + options_.ca_file + ": " + ec.message());
  }
  tls_.set_verify_mode(ssl::verify_peer);
  tls_.set_options(ssl::context::no_sslv2 | ssl::context::no_sslv3 | ssl::context::no_tlsv1 |
                   ssl::context::no_tlsv1_1);
}

HttpClient::~HttpClient() = default;

std::unique_ptr<HttpClient::Connection> HttpClient::TakeIdle(const std::string& key) {
  std::lock_guard lock(mu_);
  auto it = idle_.find(key);
  if (it == idle_.end()) return nullptr;
  auto& list = it->second;
  const auto now = Clock::now();
  while (!list.empty()) {
    auto c = std::move(list.back());
    list.pop_back();
    if (now - c->idle_since < options_.max_idle_age) {
      c->reused = true;
      return c;
    }
  }
  return nullptr;
}

void HttpClient::PutIdle(const std::string& key, std::unique_ptr<Connection> c) {
  c->idle_since = Clock::now();
  std::lock_guard lock(mu_);
  auto& list = idle_[key];
  if (list.size() < options_.max_idle_per_host) list.push_back(std::move(c));
}

asio::awaitable<std::unique_ptr<HttpClient::Connection>> HttpClient::Connect(const HttpUrl& t, bool guarded,
                                                                             Clock::time_point deadline,
                                                                             std::string& error) {
  using namespace asio::experimental::awaitable_operators;
  auto ex = co_await asio::this_coro::executor;
  auto stage = [&] { return std::min(deadline, Clock::now() + options_.connect_timeout); };

  tcp::resolver resolver(ex);
  asio::steady_timer timer(ex, stage());
  auto resolved = co_await (resolver.async_resolve(t.host, t.port, as_tuple(use_awaitable)) ||
                            timer.async_wait(as_tuple(use_awaitable)));
  if (resolved.index() == 1) {
    error = "timeout";
    co_return nullptr;
  }
  auto [rec, results] = std::get<0>(resolved);
  if (rec) {
    error = "resolve: " + rec.message();
    co_return nullptr;
  }
  std::vector<tcp::endpoint> allowed;
  std::string refused;
  for (const auto& r : results) {
    std::string why = guarded ? options_.policy.Refusal(r.endpoint().address()) : "";
    if (why.empty()) {
      allowed.push_back(r.endpoint());
    } else if (refused.empty()) {
      refused = why;
    }
  }
  if (allowed.empty()) {
    error = refused.empty() ? "resolve: no address" : "refused: " + refused + " address";
    co_return nullptr;
  }

  auto c = std::make_unique<Connection>();
  beast::tcp_stream stream(ex);
  stream.expires_at(stage());
  auto [cec, ep] = co_await stream.async_connect(allowed, as_tuple(use_awaitable));
  if (cec) {
    error = cec == beast::error::timeout ? "timeout" : "connect: " + cec.message();
    co_return nullptr;
  }
  boost::system::error_code ignored;
  stream.socket().set_option(tcp::no_delay(true), ignored);
  if (!t.tls) {
    c->plain.emplace(std::move(stream));
    co_return c;
  }
  c->tls.emplace(std::move(stream), tls_);
  boost::system::error_code ip_ec;
  asio::ip::make_address(t.host, ip_ec);
  if (ip_ec) SSL_set_tlsext_host_name(c->tls->native_handle(), t.host.c_str());  // SNI for names only
  c->tls->set_verify_callback(ssl::host_name_verification(t.host));
  beast::get_lowest_layer(*c->tls).expires_at(stage());
  auto [hec] = co_await c->tls->async_handshake(ssl::stream_base::client, as_tuple(use_awaitable));
  if (hec) {
    error = hec == beast::error::timeout ? "timeout" : "tls: " + hec.message();
    co_return nullptr;
  }
  co_return c;
}

asio::awaitable<Inbound> HttpClient::Fetch(Outbound request) {
  Inbound out;
  const auto deadline = Clock::now() + request.timeout;

  auto parsed = ParseHttpUrl(request.url);
  if (!parsed) {
    out.error = "invalid url: expected http(s)://host[:port]/path";
    co_return out;
  }
  const HttpUrl& t = *parsed;
  // Header names and values come from flows and run options: one with a line break (or
  // NUL, or a name that is not a token) would let its author add headers or a second
  // request. Refused here, for every caller.
  for (const auto& [k, v] : request.headers) {
    if (!IsHeaderName(k) || !IsHeaderValue(v)) {
      out.error = "invalid header: names must be tokens, values must not hold line breaks or controls";
      co_return out;
    }
  }
  // Connections made for a guarded request were checked against the SSRF policy when they
  // were opened; unguarded ones (model providers) never were. They never share a pool.
  const std::string pool_key = (request.guarded ? "guarded " : "open ") + t.pool_key;

  http::request<http::string_body> req{request.method, t.target, 11};
  req.set(http::field::host, t.host_header);
  req.set(http::field::user_agent, options_.user_agent);
  for (const auto& [k, v] : request.headers) req.set(k, v);
  req.body() = std::move(request.body);
  req.prepare_payload();
  req.keep_alive(true);

  for (int attempt = 0; attempt < 2; ++attempt) {
    std::unique_ptr<Connection> c = TakeIdle(pool_key);
    if (!c) {
      c = co_await Connect(t, request.guarded, deadline, out.error);
      if (!c) co_return out;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(request.max_response);
    parser.header_limit(kMaxResponseHead);
    if (request.method == http::verb::head) parser.skip(true);

    auto exchange = [&](auto& stream) -> asio::awaitable<boost::system::error_code> {
      beast::get_lowest_layer(stream).expires_at(deadline);
      auto [wec, n] = co_await http::async_write(stream, req, as_tuple(use_awaitable));
      if (wec) co_return wec;
      co_return co_await ReadParsed(stream, c->buffer, parser, kMaxResponseHead,
                                    [&] { return deadline; }, [&] { return parser.is_done(); });
    };
    boost::system::error_code ec;  // (no co_await inside ?: — GCC 12 miscompiles it)
    if (c->tls) {
      ec = co_await exchange(*c->tls);
    } else {
      ec = co_await exchange(*c->plain);
    }
    if (ec) {
      // A pooled connection the server had already closed: try once on a fresh one.
      bool stale = c->reused && !parser.got_some() &&
                   (ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
                    ec == http::error::end_of_stream || ec == asio::ssl::error::stream_truncated);
      if (stale && attempt == 0) continue;
      if (ec == beast::error::timeout) out.error = "timeout";
      else if (ec == http::error::body_limit) out.error = "response too large";
      else if (ec.category() == asio::error::get_ssl_category()) out.error = "tls: " + ec.message();
      else out.error = "read: " + ec.message();
      co_return out;
    }
    auto& res = parser.get();
    out.status = res.result_int();
    bool keep = res.keep_alive() && parser.is_done();
    out.body = std::move(res.body());
    for (const auto& f : res) out.headers.insert(f.name_string(), f.value());
    if (keep) PutIdle(pool_key, std::move(c));
    co_return out;
  }
  co_return out;
}

}  // namespace flowd::net
