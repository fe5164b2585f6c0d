// The HTTP/1.1 server: an accept loop and one coroutine per connection, on the
// io_context that main runs (on one or more threads; each connection on its own strand).
//
// A connection owns its socket and one read buffer; each request gets a fresh parser
// with explicit header and body limits. Deadlines, all in ServerOptions:
//   idle    waiting for the first byte of the next request on a kept-alive connection;
//   header  from that first byte to the end of the head;
//   body    body_grace plus the time the body takes at body_min_rate, so an upload that
//           keeps moving is never cut off while a trickle is;
//   write   each response.
// Refusals the transport can decide alone (413 over --max-body, 431 over the head limit,
// 400 malformed framing) get the JSON error shape and close the connection.
//
// The Handler (the REST layer) is borrowed and must outlive the Server.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string_view>

#include "base/metrics.h"
#include "net/http_message.h"

namespace flowd::net {

struct ServerOptions {
  size_t max_body = 1 << 20;     // --max-body
  size_t max_header = 16 << 10;  // request line and headers together
  std::chrono::milliseconds idle_timeout{30'000};
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_grace{10'000};
  size_t body_min_rate = 8 << 10;  // bytes per second
  std::chrono::milliseconds write_timeout{10'000};
  size_t max_connections = 10000;  // beyond this a new connection gets 503 and is closed
  // --tls-cert/--tls-key: serve HTTPS with this context (borrowed; it must outlive the
  // Server). nullptr: plain HTTP. The TLS handshake counts against header_timeout.
  boost::asio::ssl::context* tls = nullptr;
};

// Where a streamed body goes (Server-Sent Events). Runs on the connection's strand.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // False once the client is gone or too slow (the write deadline passed).
  virtual boost::asio::awaitable<bool> Write(std::string_view bytes) = 0;
  // True when the server is shutting down: producers should finish.
  virtual bool stopping() const = 0;
};

// A handler's answer: a complete response, or a head whose body `stream` produces over
// time. A streamed response has no Content-Length; the connection closes after it.
struct Reply {
  Reply(Response r) : response(std::move(r)) {}  // NOLINT: every plain response is a Reply
  Response response;
  std::function<boost::asio::awaitable<void>(StreamSink&)> stream;
};

class Handler {
 public:
  virtual ~Handler() = default;
  // Called before answering `Expect: 100-continue`: a response refuses the request
  // without reading its body (the connection then closes).
  virtual std::optional<Response> Precheck(const Request& head) = 0;
  // Answers one request. Runs on the connection's strand. An escaped exception becomes
  // a 500 and closes the connection.
  virtual boost::asio::awaitable<Reply> Handle(Request& req) = 0;
};

class Server {
 public:
  Server(boost::asio::io_context& ioc, Handler& handler, const ServerOptions& options);

  // Binds and listens; false with `error` filled on failure.
  bool Listen(const boost::asio::ip::tcp::endpoint& at, std::string* error);
  boost::asio::ip::tcp::endpoint local_endpoint() const { return acceptor_.local_endpoint(); }
  void Start();

  // Stops accepting, lets requests in flight finish for up to `timeout`, and closes
  // idle connections as they come back to wait.
  boost::asio::awaitable<void> Drain(std::chrono::milliseconds timeout);

  bool draining() const { return draining_.load(std::memory_order_relaxed); }

  // Connections accepted and requests the transport refused itself, in Prometheus text.
  void RenderMetrics(std::string& out) const;

 private:
  boost::asio::awaitable<void> AcceptLoop();
  boost::asio::awaitable<void> Session(boost::asio::ip::tcp::socket socket);
  // The request loop of one connection over a beast::tcp_stream or a TLS stream on one.
  template <class Stream>
  boost::asio::awaitable<void> Serve(Stream& stream);
  template <class Stream>
  class Sink;
  template <class Stream>
  boost::asio::awaitable<void> StreamBody(Stream& stream, const Response& head,
                                          const std::function<boost::asio::awaitable<void>(StreamSink&)>& produce);

  boost::asio::io_context& ioc_;
  Handler& handler_;
  ServerOptions options_;
  boost::asio::ip::tcp::acceptor acceptor_;
  std::atomic<bool> draining_{false};
  std::atomic<int> busy_{0};  // connections with a request between head and response
  Counter accepted_;
  std::atomic<size_t> open_{0};  // connections being served
  Counter refused_[4];  // 400, 413, 431, 501
};

}  // namespace flowd::net
