// flowd_loadgen: an HTTP/1.1 load generator for what wrk cannot give: latency at a fixed
// offered rate (open loop), and an exact count of requests (for instruction counting).
//
// Open loop: request i is due at start + i / rate, whatever happened to the requests
// before it. A free connection takes the next due request, waits for its time and sends
// it; its latency runs from the time it was due, not from when a connection was free, so
// a stalled server shows up as latency instead of as a lower rate (no coordinated
// omission). --rate 0 is a closed loop instead: each connection sends its next request as
// soon as the previous answer arrives, and latency runs from the send.
//
//   flowd_loadgen --target 127.0.0.1:8080 --rate 20000 --duration 10 --connections 64
//                 --method POST --path /v1/flow/ID/run --body '{"topic":"cats"}'
//                 --header 'Authorization: Bearer fk_...' --header 'Content-Type: application/json'
//
// A body holding kStamp (16 '#') gets, in each request, the time the request was due as 16
// decimal digits of steady-clock microseconds (CLOCK_MONOTONIC, shared by every process),
// so a receiver downstream (flowd_webhook_sink) can time the whole path.
//
// Prints one line of key=value figures on stdout: requests (answered), errors (non-2xx,
// I/O failures, requests never sent before the hard stop), rate (answers per second),
// p50_us, p90_us, p99_us, max_us. --histogram adds the latency histogram.
//
// Bounded: only loopback targets; at most 600 s, 1024 connections, 10^8 requests; the run
// ends by itself at --duration plus 10 s of grace, whatever the server does.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/program_options.hpp>

#include "latency_histogram.h"

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace po = boost::program_options;
using tcp = asio::ip::tcp;
using asio::as_tuple;
using asio::use_awaitable;
using Clock = std::chrono::steady_clock;

namespace {

constexpr double kMaxSeconds = 600;
constexpr int kMaxConnections = 1024;
constexpr uint64_t kMaxRequests = 100'000'000;
constexpr auto kGrace = std::chrono::seconds(10);           // after --duration, before the hard stop
constexpr auto kRequestTimeout = std::chrono::seconds(10);  // one write or one read

constexpr std::string_view kStamp = "################";

// Writes `t` over the kStamp.size() bytes at `at`.
void WriteStamp(std::string& request, size_t at, Clock::time_point t) {
  auto us = static_cast<unsigned long long>(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
  for (size_t i = kStamp.size(); i-- > 0; us /= 10) request[at + i] = static_cast<char>('0' + us % 10);
}

struct Plan {
  tcp::endpoint target;
  std::string request;  // the serialized request, sent as is every time (but for the stamp)
  size_t stamp_at = std::string::npos;  // where the request holds kStamp
  double rate = 0;      // requests per second; 0: closed loop
  uint64_t total = 0;   // requests to send
  Clock::duration duration{};
  int connections = 64;
};

// State shared by the connection coroutines. They all run on one thread, so no locks.
struct Run {
  explicit Run(const Plan& p) : plan(p) {}
  const Plan& plan;
  Clock::time_point start;
  Clock::time_point schedule_end;  // nothing is due from here on (closed loop: time is up)
  Clock::time_point hard_stop;     // nothing is sent from here on
  uint64_t next = 0;  // index of the next request to take
  uint64_t errors = 0;
  Clock::time_point last_answer;
  flowd::bench::Histogram latency;
  std::string first_error;

  void Fail(const std::string& what) {
    ++errors;
    if (first_error.empty()) first_error = what;
  }
  // Open loop: when request i is due. Closed loop: now.
  Clock::time_point Due(uint64_t i) const {
    if (plan.rate <= 0) return Clock::now();
    return start + std::chrono::duration_cast<Clock::duration>(
                       std::chrono::duration<double>(static_cast<double>(i) / plan.rate));
  }
};

asio::awaitable<bool> Connect(beast::tcp_stream& stream, Run& run) {
  stream.expires_after(kRequestTimeout);
  auto [ec] = co_await stream.async_connect(run.plan.target, as_tuple(use_awaitable));
  if (ec) {
    run.Fail("connect: " + ec.message());
    co_return false;
  }
  stream.socket().set_option(tcp::no_delay(true), ec);
  co_return true;
}

// One keep-alive connection: takes due requests until none are left or time is up.
asio::awaitable<void> Connection(Run& run, beast::tcp_stream stream) {
  asio::steady_timer timer(stream.get_executor());
  beast::flat_buffer buffer;
  std::string request = run.plan.request;
  for (;;) {
    if (run.next >= run.plan.total) co_return;
    const Clock::time_point due = run.Due(run.next);
    if (due >= run.schedule_end) co_return;
    ++run.next;
    if (due > Clock::now()) {
      timer.expires_at(due);
      co_await timer.async_wait(as_tuple(use_awaitable));
    }
    if (Clock::now() >= run.hard_stop) {
      run.Fail("not sent before the hard stop");
      co_return;
    }
    const Clock::time_point sent = Clock::now();
    if (run.plan.stamp_at != std::string::npos) WriteStamp(request, run.plan.stamp_at, run.plan.rate > 0 ? due : sent);
    stream.expires_after(kRequestTimeout);
    auto [wec, wn] = co_await asio::async_write(stream, asio::buffer(request), as_tuple(use_awaitable));
    http::response<http::string_body> res;
    boost::system::error_code ec = wec;
    if (!ec) {
      stream.expires_after(kRequestTimeout);
      auto [rec, rn] = co_await http::async_read(stream, buffer, res, as_tuple(use_awaitable));
      ec = rec;
    }
    const Clock::time_point answered = Clock::now();
    if (ec) {
      run.Fail("i/o: " + ec.message());
    } else if (res.result_int() < 200 || res.result_int() > 299) {
      run.Fail("status " + std::to_string(res.result_int()) + ": " + res.body().substr(0, 200));
    } else {
      const auto from = run.plan.rate > 0 ? due : sent;
      run.latency.Add(std::chrono::duration_cast<std::chrono::microseconds>(answered - from).count());
      run.last_answer = answered;
    }
    if (ec || !res.keep_alive()) {
      beast::error_code ignored;
      stream.socket().close(ignored);
      buffer.clear();
      if (!co_await Connect(stream, run)) co_return;
    }
  }
}

asio::awaitable<void> Main(Run& run) {
  auto ex = co_await asio::this_coro::executor;
  // Every connection is open before the clock starts, so connecting is not measured.
  std::vector<beast::tcp_stream> streams;
  for (int c = 0; c < run.plan.connections; ++c) {
    beast::tcp_stream stream(ex);
    if (!co_await Connect(stream, run)) co_return;
    streams.push_back(std::move(stream));
  }
  run.start = run.last_answer = Clock::now();
  run.schedule_end = run.start + run.plan.duration;
  run.hard_stop = run.schedule_end + kGrace;
  for (auto& s : streams) asio::co_spawn(ex, Connection(run, std::move(s)), asio::detached);
}

bool ParseTarget(const std::string& s, tcp::endpoint& out, std::string& why) {
  auto colon = s.rfind(':');
  boost::system::error_code ec;
  auto address = asio::ip::make_address(s.substr(0, colon == std::string::npos ? 0 : colon), ec);
  unsigned port = 0;
  if (colon == std::string::npos || ec ||
      std::from_chars(s.data() + colon + 1, s.data() + s.size(), port).ec != std::errc() || port == 0 || port > 65535) {
    why = "--target: expected address:port, e.g. 127.0.0.1:8080";
    return false;
  }
  if (!address.is_loopback()) {
    why = "--target: only loopback addresses (127.0.0.0/8, ::1) may be loaded";
    return false;
  }
  out = {address, static_cast<unsigned short>(port)};
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target, method, path, body;
  std::vector<std::string> headers;
  double rate = 0, seconds = 10;
  uint64_t requests = 0;
  int connections = 64;
  po::options_description desc("flowd_loadgen options");
  desc.add_options()
      ("target", po::value(&target)->required(), "loopback address:port")
      ("rate", po::value(&rate)->default_value(0), "requests per second, open loop; 0: closed loop")
      ("duration", po::value(&seconds)->default_value(10), "seconds of sending (at most 600)")
      ("requests", po::value(&requests)->default_value(0), "requests to send; 0: rate x duration (closed loop: no cap)")
      ("connections", po::value(&connections)->default_value(64), "keep-alive connections (at most 1024)")
      ("method", po::value(&method)->default_value("GET"), "GET, POST, PUT or DELETE")
      ("path", po::value(&path)->default_value("/"), "request target")
      ("body", po::value(&body)->default_value(""), "request body")
      ("header", po::value(&headers), "'Name: value', repeatable")
      ("histogram", "also print the latency histogram")
      ("help", "this text");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "flowd_loadgen: " << e.what() << "\n" << desc;
    return 2;
  }

  Plan plan;
  std::string why;
  if (!ParseTarget(target, plan.target, why)) {
    std::cerr << "flowd_loadgen: " << why << "\n";
    return 2;
  }
  if (!(seconds > 0 && seconds <= kMaxSeconds) || rate < 0 || rate > 1e6 || connections < 1 ||
      connections > kMaxConnections || requests > kMaxRequests) {
    std::cerr << "flowd_loadgen: out of bounds: 0 < duration <= 600, 0 <= rate <= 10^6, 1 <= connections <= 1024, "
                 "requests <= 10^8\n";
    return 2;
  }
  const http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) {
    std::cerr << "flowd_loadgen: unknown --method " << method << "\n";
    return 2;
  }
  plan.rate = rate;
  plan.connections = connections;
  plan.duration = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  // Open loop: the schedule holds rate x duration requests (fewer with --requests).
  const uint64_t scheduled = rate > 0 ? static_cast<uint64_t>(rate * seconds) : kMaxRequests;
  plan.total = std::min({requests ? requests : scheduled, scheduled, kMaxRequests});

  http::request<http::string_body> req{verb, path, 11};
  req.set(http::field::host, target);
  req.set(http::field::user_agent, "flowd_loadgen");
  for (const auto& h : headers) {
    auto colon = h.find(':');
    if (colon == std::string::npos) {
      std::cerr << "flowd_loadgen: --header must be 'Name: value'\n";
      return 2;
    }
    std::string_view value = std::string_view(h).substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    req.insert(h.substr(0, colon), value);
  }
  req.body() = body;
  req.keep_alive(true);
  if (verb != http::verb::get || !body.empty()) req.prepare_payload();
  std::ostringstream wire;
  wire << req;
  plan.request = wire.str();
  if (auto at = body.find(kStamp); at != std::string::npos) plan.stamp_at = plan.request.size() - body.size() + at;

  asio::io_context ioc(1);
  Run run(plan);
  asio::co_spawn(ioc, Main(run), asio::detached);
  ioc.run();

  // Open loop: every scheduled request that the hard stop left untaken counts against the run.
  if (plan.rate > 0 && run.next < plan.total) {
    run.Fail("not sent before the hard stop");
    run.errors += plan.total - run.next - 1;
  }
  const double elapsed = std::chrono::duration<double>(run.last_answer - run.start).count();
  const double achieved = elapsed > 0 ? static_cast<double>(run.latency.count()) / elapsed : 0;
  if (!run.first_error.empty()) std::cerr << "flowd_loadgen: first error: " << run.first_error << "\n";
  std::printf("requests=%llu errors=%llu seconds=%.2f rate=%.0f p50_us=%llu p90_us=%llu p99_us=%llu max_us=%llu\n",
              static_cast<unsigned long long>(run.latency.count()), static_cast<unsigned long long>(run.errors), elapsed,
              achieved, static_cast<unsigned long long>(run.latency.Percentile(50)),
              static_cast<unsigned long long>(run.latency.Percentile(90)),
              static_cast<unsigned long long>(run.latency.Percentile(99)),
              static_cast<unsigned long long>(run.latency.max()));
  if (vm.count("histogram")) run.latency.Print(std::cout);
  return run.errors == 0 ? 0 : 1;
}
