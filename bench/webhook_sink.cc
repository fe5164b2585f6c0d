// flowd_webhook_sink: the webhook receiver of the benchmarks. A keep-alive HTTP/1.1 server
// (same parts as flowd_ceiling) that answers every request 200 at once and counts them:
// deliveries per second from the first arrival to the last, and, for bodies that carry a
// flowd_loadgen stamp (`"out":"<16 digits>"`: steady-clock µs when the run was submitted),
// the latency from submit to arrival.
//
//   flowd_webhook_sink [--listen 127.0.0.1:0] --expect N [--idle 10] [--max-seconds 300]
//
// Prints `listening on <addr>:<port>` on stderr when ready. Stops after N requests, or
// when none came for --idle seconds after the first, or after --max-seconds; then prints
// one line of key=value figures on stdout (deliveries, seconds, rate, stamped, p50_us,
// p90_us, p99_us, max_us) and exits 0 only if all N arrived.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>

#include "latency_histogram.h"
#include "listen.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::as_tuple;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

namespace {

// Everything runs on the one io_context thread: no locks.
struct Tally {
  uint64_t expect = 0;
  uint64_t count = 0;
  Clock::time_point first, last;
  flowd::bench::Histogram latency;
  bool done() const { return count >= expect; }

  void Record(std::string_view body) {
    const auto now = Clock::now();
    if (count++ == 0) first = now;
    last = now;
    static constexpr std::string_view kField = "\"out\":\"";
    auto at = body.find(kField);
    if (at == std::string_view::npos || body.size() < at + kField.size() + 16) return;
    long long stamp = 0;
    const char* digits = body.data() + at + kField.size();
    auto [end, ec] = std::from_chars(digits, digits + 16, stamp);
    if (ec != std::errc() || end != digits + 16) return;
    const long long now_us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
    if (now_us >= stamp) latency.Add(static_cast<uint64_t>(now_us - stamp));
  }
};

asio::awaitable<void> Session(tcp::socket socket, Tally& tally) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(1 << 20);
    stream.expires_after(std::chrono::seconds(60));
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, as_tuple(use_awaitable));
    if (ec) co_return;
    tally.Record(parser.get().body());
    http::response<http::string_body> res{http::status::ok, parser.get().version()};
    res.keep_alive(parser.get().keep_alive());
    res.prepare_payload();
    stream.expires_after(std::chrono::seconds(10));
    auto [wec, wn] = co_await http::async_write(stream, res, as_tuple(use_awaitable));
    if (wec || !res.keep_alive()) co_return;
  }
}

asio::awaitable<void> AcceptLoop(tcp::acceptor& acceptor, Tally& tally) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(as_tuple(use_awaitable));
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) continue;
    socket.set_option(tcp::no_delay(true), ec);
    asio::co_spawn(acceptor.get_executor(), Session(std::move(socket), tally), asio::detached);
  }
}

// Stops the io_context once every expected request came, none came for `idle` (after the
// first), or `max` passed.
asio::awaitable<void> Watch(asio::io_context& ioc, Tally& tally, Clock::duration idle, Clock::duration max) {
  asio::steady_timer timer(ioc);
  const auto started = Clock::now();
  while (!tally.done() && Clock::now() - started < max &&
         (tally.count == 0 || Clock::now() - tally.last < idle)) {
    timer.expires_after(std::chrono::milliseconds(5));
    co_await timer.async_wait(as_tuple(use_awaitable));
  }
  ioc.stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  Tally tally;
  double idle_s = 10, max_s = 300;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (a == "--listen" && v) listen = argv[++i];
    else if (a == "--expect" && v) tally.expect = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--idle" && v) idle_s = std::strtod(argv[++i], nullptr);
    else if (a == "--max-seconds" && v) max_s = std::strtod(argv[++i], nullptr);
    else {
      std::cerr << "usage: flowd_webhook_sink [--listen 127.0.0.1:0] --expect N [--idle 10] [--max-seconds 300]\n";
      return 2;
    }
  }
  if (tally.expect == 0 || !(idle_s > 0) || !(max_s > 0 && max_s <= 3600)) {
    std::cerr << "flowd_webhook_sink: --expect must be positive, 0 < --idle, 0 < --max-seconds <= 3600\n";
    return 2;
  }

  asio::io_context ioc(1);
  tcp::acceptor acceptor(ioc);
  std::string error;
  if (!flowd::bench::Listen(acceptor, listen, error)) {
    std::cerr << "flowd_webhook_sink: " << error << "\n";
    return 2;
  }
  asio::co_spawn(ioc, AcceptLoop(acceptor, tally), asio::detached);
  auto seconds = [](double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); };
  asio::co_spawn(ioc, Watch(ioc, tally, seconds(idle_s), seconds(max_s)), asio::detached);
  auto ep = acceptor.local_endpoint();
  std::cerr << "listening on " << ep.address().to_string() << ":" << ep.port() << std::endl;
  ioc.run();

  const double elapsed = std::chrono::duration<double>(tally.last - tally.first).count();
  const double rate = elapsed > 0 ? static_cast<double>(tally.count - 1) / elapsed : 0;
  std::printf("deliveries=%llu seconds=%.2f rate=%.0f stamped=%llu p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu\n",
              static_cast<unsigned long long>(tally.count), elapsed, rate,
              static_cast<unsigned long long>(tally.latency.count()),
              static_cast<unsigned long long>(tally.latency.Percentile(50)),
              static_cast<unsigned long long>(tally.latency.Percentile(90)),
              static_cast<unsigned long long>(tally.latency.Percentile(99)),
              static_cast<unsigned long long>(tally.latency.max()));
  return tally.done() ? 0 : 1;
}
