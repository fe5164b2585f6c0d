#include "net/http_server.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/serializer.hpp>

#include <sstream>

#include "base/log.h"
#include "base/spawn.h"
#include "net/http_read.h"

namespace flowd::net {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::as_tuple;
using asio::use_awaitable;

namespace {

constexpr size_t kMaxChunkExtensions = 1024;

// The refusal for a request the transport could not read, or nothing when the peer is
// simply gone (closed, reset, timed out).
std::optional<Response> RefusalFor(const boost::system::error_code& ec) {
  if (ec == http::error::body_limit) {
    return ErrorResponse(413, "payload_too_large", "The body is larger than this server accepts.");
  }
  if (ec == http::error::header_limit) {
    return ErrorResponse(431, "headers_too_large", "The request head is larger than this server accepts.");
  }
  static const auto& http_errors = boost::system::error_code(http::error::end_of_stream).category();
  if (ec.category() == http_errors && ec != http::error::end_of_stream &&
      ec != http::error::partial_message && ec != http::error::need_more && ec != http::error::need_buffer) {
    return ErrorResponse(400, "bad_request", "The request is not valid HTTP/1.1.");
  }
  return std::nullopt;
}

bool ExpectsContinue(const Request& req) {
  auto it = req.find(http::field::expect);
  return it != req.end() && beast::iequals(it->value(), "100-continue") && req.version() >= 11;
}

}  // namespace

Server::Server(asio::io_context& ioc, Handler& handler, const ServerOptions& options)
    : ioc_(ioc), handler_(handler), options_(options), acceptor_(asio::make_strand(ioc)) {}

bool Server::Listen(const tcp::endpoint& at, std::string* error) {
  boost::system::error_code ec;
  acceptor_.open(at.protocol(), ec);
  if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(at, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec && error) *error = ec.message();
  return !ec;
}

void Server::Start() { SpawnLogged(acceptor_.get_executor(), AcceptLoop(), "accept loop"); }

asio::awaitable<void> Server::AcceptLoop() {
  asio::steady_timer backoff(ioc_);
  while (!draining()) {
    auto [ec, socket] = co_await acceptor_.async_accept(asio::make_strand(ioc_), as_tuple(use_awaitable));
    if (ec == asio::error::operation_aborted || draining()) co_return;
    if (ec) {
      // Out of descriptors, most likely: wait rather than spin.
      Log(LogLevel::kWarn, "accept failed", {{"error", ec.message()}});
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(as_tuple(use_awaitable));
      continue;
    }
    socket.set_option(tcp::no_delay(true), ec);
    accepted_.Add();
    if (open_.load(std::memory_order_relaxed) >= options_.max_connections) {
      // Refuse politely without reading: a short answer, then close.
      static const std::string kBusy = [] {
        Response res = ErrorResponse(503, "unavailable", "Too many connections; retry later.");
        res.set(http::field::retry_after, "1");
        res.keep_alive(false);
        std::ostringstream os;
        os << res;
        return os.str();
      }();
      asio::write(socket, asio::buffer(kBusy), ec);
      socket.shutdown(tcp::socket::shutdown_both, ec);
      continue;
    }
    auto ex = socket.get_executor();
    SpawnLogged(ex, Session(std::move(socket)), "http session");
  }
}

asio::awaitable<void> Server::Session(tcp::socket socket) {
  open_.fetch_add(1, std::memory_order_relaxed);
  struct Open {
    std::atomic<size_t>& n;
    ~Open() { n.fetch_sub(1, std::memory_order_relaxed); }
  } open{open_};
  if (!options_.tls) {
    beast::tcp_stream stream(std::move(socket));
    co_await Serve(stream);
    co_return;
  }
  beast::ssl_stream<beast::tcp_stream> stream(std::move(socket), *options_.tls);
  beast::get_lowest_layer(stream).expires_after(options_.header_timeout);
  auto [ec] = co_await stream.async_handshake(asio::ssl::stream_base::server, as_tuple(use_awaitable));
  if (ec) co_return;  // not TLS, a bad client hello, or too slow: nothing to answer in
  co_await Serve(stream);
}

namespace {

// Ends what the server sends on a connection: TLS close_notify first when there is TLS.
asio::awaitable<void> CloseWrite(beast::tcp_stream& stream) {
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  co_return;
}

asio::awaitable<void> CloseWrite(beast::ssl_stream<beast::tcp_stream>& stream) {
  // A client that never answers our close_notify must not hold the coroutine.
  beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(1));
  co_await stream.async_shutdown(as_tuple(use_awaitable));
  boost::system::error_code ignored;
  beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_send, ignored);
}

}  // namespace

template <class Stream>
asio::awaitable<void> Server::Serve(Stream& stream) {
  auto& tcp_layer = beast::get_lowest_layer(stream);
  // One buffer per connection. Only framing (the head, chunk lines, trailers) ever waits in
  // it unparsed, and that is capped at the head limit: the buffer never holds more than
  // that plus one read.
  beast::flat_buffer buffer(options_.max_header + kReadSize);
  auto send = [&](Response& res) -> asio::awaitable<bool> {
    tcp_layer.expires_after(options_.write_timeout);
    auto [ec, n] = co_await http::async_write(stream, res, as_tuple(use_awaitable));
    co_return !ec;
  };
  auto refuse = [&](Response res) -> asio::awaitable<void> {
    switch (res.result_int()) {
      case 400: refused_[0].Add(); break;
      case 413: refused_[1].Add(); break;
      case 431: refused_[2].Add(); break;
      case 501: refused_[3].Add(); break;
      default: break;
    }
    res.keep_alive(false);
    if (co_await send(res)) co_await CloseWrite(stream);
  };
  // Chunk extensions are framing, not data: a flood of them is refused like a huge head.
  auto on_chunk = [](std::uint64_t, std::string_view extensions, boost::system::error_code& ec) {
    if (extensions.size() > kMaxChunkExtensions) ec = http::error::header_limit;
  };

  for (;;) {
    if (draining()) co_return;
    // Idle: a kept-alive connection waits for the first byte of its next request.
    if (buffer.size() == 0) {
      tcp_layer.expires_after(options_.idle_timeout);
      auto [ec, n] = co_await stream.async_read_some(buffer.prepare(kReadSize), as_tuple(use_awaitable));
      if (ec) co_return;
      buffer.commit(n);
    }

    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(options_.max_header));
    parser.body_limit(options_.max_body);
    parser.on_chunk_header(on_chunk);

    const auto head_deadline = std::chrono::steady_clock::now() + options_.header_timeout;
    auto hec = co_await ReadParsed(stream, buffer, parser, options_.max_header, [&] { return head_deadline; },
                                   [&] { return parser.is_header_done(); });
    if (hec) {
      if (auto res = RefusalFor(hec)) co_await refuse(std::move(*res));
      co_return;
    }
    // An HTTP/1.1 request names exactly one Host (RFC 9112 3.2): two could route
    // differently at a proxy in front than here.
    if (parser.get().version() >= 11 && parser.get().count(http::field::host) != 1) {
      co_await refuse(ErrorResponse(400, "bad_request", "An HTTP/1.1 request carries exactly one Host header."));
      co_return;
    }
    // chunked is the only transfer coding flowd decodes; guessing at others would hand the
    // handler bytes it cannot read.
    if (auto te = parser.get().find(http::field::transfer_encoding);
        te != parser.get().end() && !beast::iequals(te->value(), "chunked")) {
      co_await refuse(ErrorResponse(501, "not_implemented", "The only transfer coding accepted is chunked."));
      co_return;
    }
    // Only a chunked body has trailers: the others skip their checks below.
    const bool chunked = parser.chunked();
    const auto head_fields =
        chunked ? static_cast<size_t>(std::distance(parser.get().begin(), parser.get().end())) : size_t{0};
    busy_.fetch_add(1);
    struct Idle {
      std::atomic<int>& busy;
      ~Idle() { busy.fetch_sub(1); }
    } idle{busy_};

    if (ExpectsContinue(parser.get()) && !parser.is_done()) {
      if (auto res = handler_.Precheck(parser.get())) {
        co_await refuse(std::move(*res));
        co_return;
      }
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      tcp_layer.expires_after(options_.write_timeout);
      auto [ec, n] = co_await asio::async_write(stream, asio::buffer(kContinue), as_tuple(use_awaitable));
      if (ec) co_return;
    }

    // The body deadline grows with what has arrived: slow but steady uploads go on, a
    // trickle runs out of time.
    const auto body_started = std::chrono::steady_clock::now();
    parser.eager(true);
    auto bec = co_await ReadParsed(
        stream, buffer, parser, options_.max_header,
        [&] {
          size_t received = parser.get().body().size();
          return body_started + options_.body_grace +
                 std::chrono::milliseconds(received * 1000 / options_.body_min_rate);
        },
        [&] { return parser.is_done(); });
    if (bec) {
      if (auto res = RefusalFor(bec)) co_await refuse(std::move(*res));
      co_return;
    }

    // Beast adds a chunked body's trailers to the head's fields. They count against the
    // head limit, and are then dropped: no trailer may stand in for a header (RFC 9110
    // 6.5.1), or an Authorization sent after the body would be read as the request's.
    if (chunked) {
      size_t head_bytes = 0;
      for (const auto& f : parser.get()) head_bytes += f.name_string().size() + f.value().size() + 4;
      if (head_bytes > options_.max_header) {
        co_await refuse(ErrorResponse(431, "headers_too_large", "The request head is larger than this server accepts."));
        co_return;
      }
      for (auto it = std::next(parser.get().begin(), static_cast<std::ptrdiff_t>(head_fields)); it != parser.get().end();) {
        it = parser.get().erase(it);
      }
    }

    Request req = parser.release();
    std::optional<Reply> reply;
    bool failed = false;
    try {
      reply.emplace(co_await handler_.Handle(req));
    } catch (const std::exception& e) {
      Log(LogLevel::kError, "request handler failed", {{"error", e.what()}, {"target", std::string(req.target())}});
      failed = true;
    }
    if (failed) {
      co_await refuse(ErrorResponse(500, "internal", "The server failed to answer this request."));
      co_return;
    }
    Response& res = reply->response;
    res.version(req.version());
    if (reply->stream) {
      co_await StreamBody(stream, res, reply->stream);
      co_return;
    }
    res.keep_alive(req.keep_alive() && !draining() && res.keep_alive());
    if (req.method() == http::verb::head) {
      // The head a GET would get, and no body: the next response follows at once.
      const auto length = res.body().size();
      res.body().clear();
      res.content_length(length);
    }
    if (!co_await send(res)) co_return;
    if (!res.keep_alive()) {
      co_await CloseWrite(stream);
      co_return;
    }
  }
}

template <class Stream>
class Server::Sink : public StreamSink {
 public:
  Sink(Stream& stream, const Server& server) : stream_(stream), server_(server) {}
  asio::awaitable<bool> Write(std::string_view bytes) override {
    beast::get_lowest_layer(stream_).expires_after(server_.options_.write_timeout);
    auto [ec, n] = co_await asio::async_write(stream_, asio::buffer(bytes), as_tuple(use_awaitable));
    co_return !ec;
  }
  bool stopping() const override { return server_.draining(); }

 private:
  Stream& stream_;
  const Server& server_;
};

template <class Stream>
asio::awaitable<void> Server::StreamBody(Stream& stream, const Response& head_fields,
                                         const std::function<asio::awaitable<void>(StreamSink&)>& produce) {
  http::response<http::empty_body> head{head_fields.result(), head_fields.version()};
  for (const auto& f : head_fields) {
    if (f.name() != http::field::content_length) head.set(f.name_string(), f.value());
  }
  head.keep_alive(false);
  http::response_serializer<http::empty_body> serializer{head};
  beast::get_lowest_layer(stream).expires_after(options_.write_timeout);
  auto [ec, n] = co_await http::async_write_header(stream, serializer, as_tuple(use_awaitable));
  if (!ec) {
    Sink<Stream> sink(stream, *this);
    co_await produce(sink);
  }
  co_await CloseWrite(stream);
}

void Server::RenderMetrics(std::string& out) const {
  MetricHeader(out, "flowd_http_connections_total", "counter", "Connections accepted.");
  MetricLine(out, "flowd_http_connections_total", "", static_cast<double>(accepted_.value()));
  MetricHeader(out, "flowd_http_transport_refusals_total", "counter",
               "Requests refused before reaching a route (framing, limits), by status.");
  const char* codes[] = {"400", "413", "431", "501"};
  for (int i = 0; i < 4; ++i) {
    MetricLine(out, "flowd_http_transport_refusals_total", std::string("status=\"") + codes[i] + "\"",
               static_cast<double>(refused_[i].value()));
  }
}

asio::awaitable<void> Server::Drain(std::chrono::milliseconds timeout) {
  draining_.store(true);
  // The acceptor lives on its own strand; close it there, never beside a pending accept.
  asio::dispatch(acceptor_.get_executor(), [this] {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
  });
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (busy_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(10));
    co_await timer.async_wait(as_tuple(use_awaitable));
  }
}

}  // namespace flowd::net
