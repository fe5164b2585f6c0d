// flowd_ceiling: the ceiling that flowd's throughput is measured against. A Beast server
// built from the same parts as flowd's (Asio C++20 coroutines on one io_context thread,
// one coroutine per connection, Beast's parser and serializer, keep-alive, TCP_NODELAY)
// that does no work: every request gets the same small JSON reply, 202 for a POST (shaped
// like flowd's "run accepted") and 200 for anything else (shaped like a run object).
//
//   flowd_ceiling [--listen 127.0.0.1:0]
//
// When ready it prints `listening on <addr>:<port>` on stderr, like flowd. SIGINT or
// SIGTERM stops it.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>

#include "listen.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::as_tuple;
using asio::use_awaitable;

namespace {

// About the size of flowd's answers, so both servers put the same bytes on the wire.
constexpr std::string_view kAccepted =
    R"({"run_id":"6f1c2a9e-3b7d-4c1e-9a55-0d3e8b7f2c41","flow_id":"0b9d8c7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e",)"
    R"("flow_version":1,"status":"pending","created_at":"2026-01-01T00:00:00.000Z"})";
constexpr std::string_view kRun =
    R"({"run_id":"6f1c2a9e-3b7d-4c1e-9a55-0d3e8b7f2c41","flow_id":"0b9d8c7e-6f5a-4b3c-8d2e-1f0a9b8c7d6e",)"
    R"("flow_version":1,"status":"complete","created_at":"2026-01-01T00:00:00.000Z",)"
    R"("started_at":"2026-01-01T00:00:00.000Z","finished_at":"2026-01-01T00:00:00.001Z",)"
    R"("progress":{"nodes_done":4,"nodes_total":4},"outputs":{"text":"Write three short lines about cats."}})";

asio::awaitable<void> Session(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16 << 10);
    parser.body_limit(1 << 20);
    stream.expires_after(std::chrono::seconds(30));
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, as_tuple(use_awaitable));
    if (ec) co_return;  // closed, reset, timed out or not HTTP: nothing worth answering

    const auto& req = parser.get();
    const bool post = req.method() == http::verb::post;
    http::response<http::string_body> res{post ? http::status::accepted : http::status::ok, req.version()};
    res.set(http::field::content_type, "application/json");
    res.body() = post ? kAccepted : kRun;
    res.keep_alive(req.keep_alive());
    res.prepare_payload();
    stream.expires_after(std::chrono::seconds(10));
    auto [wec, wn] = co_await http::async_write(stream, res, as_tuple(use_awaitable));
    if (wec) co_return;
    if (!res.keep_alive()) {
      stream.socket().shutdown(tcp::socket::shutdown_send, wec);
      co_return;
    }
  }
}

void LogFailure(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    std::cerr << "flowd_ceiling: session failed: " << ex.what() << "\n";
  }
}

asio::awaitable<void> AcceptLoop(tcp::acceptor& acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(as_tuple(use_awaitable));
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) continue;  // a connection that died before it was accepted
    socket.set_option(tcp::no_delay(true), ec);
    asio::co_spawn(acceptor.get_executor(), Session(std::move(socket)), LogFailure);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen = argv[++i];
    } else {
      std::cerr << "usage: flowd_ceiling [--listen 127.0.0.1:0]\n";
      return 2;
    }
  }
  asio::io_context ioc(1);
  tcp::acceptor acceptor(ioc);
  std::string error;
  if (!flowd::bench::Listen(acceptor, listen, error)) {
    std::cerr << "flowd_ceiling: " << error << "\n";
    return 2;
  }
  asio::co_spawn(ioc, AcceptLoop(acceptor), LogFailure);

  asio::signal_set signals(ioc, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& e, int) {
    if (!e) ioc.stop();
  });

  auto ep = acceptor.local_endpoint();
  std::cerr << "listening on " << ep.address().to_string() << ":" << ep.port() << std::endl;
  ioc.run();
  return 0;
}
