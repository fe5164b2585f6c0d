// The outbound HTTP/1.1 client used by model nodes, http-get-processor and webhooks.
//
// Coroutines on the caller's executor. Each request resolves the host, keeps only the
// addresses the AddressPolicy allows, connects to one of those (never to a name that might
// resolve differently a second time), verifies TLS against the system CA store plus an
// optional CA file, writes, and reads the response into a size-capped body. Every stage
// has its own deadline within the request's total. Redirects are returned as they are,
// never followed. Idle keep-alive connections are pooled per scheme, host and port.
//
// Ownership: main owns the client; callers borrow it. Fetch may be called from any
// io_context thread concurrently; the pool is guarded by a mutex.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/verb.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "net/address_policy.h"
#include "net/url.h"

namespace flowd::net {

struct ClientOptions {
  std::chrono::milliseconds connect_timeout{5000};  // each of resolve, connect, TLS handshake
  size_t max_idle_per_host = 16;
  std::chrono::milliseconds max_idle_age{30000};
  std::string ca_file;  // added to the system store when set
  AddressPolicy policy;
  std::string user_agent = "flowd";
};

struct Outbound {
  boost::beast::http::verb method = boost::beast::http::verb::get;
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::chrono::milliseconds timeout{15000};  // the whole exchange
  size_t max_response = 2 << 20;
  bool guarded = true;  // apply the AddressPolicy; false only for endpoints the operator configured
};

struct Inbound {
  unsigned status = 0;  // 0: no response (see error)
  // Why there is no response: "refused: loopback", "timeout", "connect: …", "tls: …",
  // "response too large", "invalid url", …. Never holds request headers.
  std::string error;
  boost::beast::http::fields headers;
  std::string body;
};

class HttpClient {
 public:
  // Throws std::runtime_error when the CA file cannot be loaded.
  HttpClient(boost::asio::io_context& ioc, ClientOptions options);
  ~HttpClient();

  boost::asio::awaitable<Inbound> Fetch(Outbound request);

  const AddressPolicy& policy() const { return options_.policy; }

 private:
  struct Connection;
  std::unique_ptr<Connection> TakeIdle(const std::string& key);
  void PutIdle(const std::string& key, std::unique_ptr<Connection> c);
  boost::asio::awaitable<std::unique_ptr<Connection>> Connect(const HttpUrl& t, bool guarded,
                                                               std::chrono::steady_clock::time_point deadline,
                                                               std::string& error);

  boost::asio::io_context& ioc_;
  ClientOptions options_;
  boost::asio::ssl::context tls_;
  std::mutex mu_;
  std::unordered_map<std::string, std::vector<std::unique_ptr<Connection>>> idle_;  // guarded by mu_
};

}  // namespace flowd::net
