// Fuzzes the real HTTP/1.1 session of flowd::net::Server with raw bytes from a client.
//
// One Server listens on 127.0.0.1 (a free port) for the whole process, its io_context run
// by a background thread; libFuzzer calls the target many times in one process, so this
// state is created once and never torn down. Its Handler answers 200 with the length of
// the body it got (or refuses, or throws, by target prefix, to reach those paths too). All
// deadlines are 200 ms and the limits small, so the refusals are within the fuzzer's reach.
//
// For each input: connect, write the bytes, shut down the write side, read until the
// server closes (or resets), bounded by a deadline.
//
// Properties:
//   - the server never crashes (ASan and UBSan watch its thread too) and always closes the
//     connection after the client's end of input, well within the deadline;
//   - what it wrote splits cleanly into responses: each starts with "HTTP/1.1 " (or
//     "HTTP/1.0 ", the version flowd answers an HTTP/1.0 request with), a 3-digit status
//     and a space; a final response has Content-Length and all of its body; 1xx is only
//     100 Continue; nothing follows a response that said Connection: close;
//   - a response to HEAD on a kept-alive connection carries no content, whatever the
//     handler returned (the handler here, like flowd's routes, answers HEAD as GET), since a
//     client would read that content as the start of the next response;
//   - the handler never sees a body over max_body.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/log.h"
#include "fuzz_check.h"
#include "net/http_message.h"
#include "net/http_server.h"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using flowd::fuzz::Check;
using flowd::net::Request;
using flowd::net::Response;

constexpr size_t kMaxBody = 2048;
constexpr size_t kMaxHeader = 2048;
constexpr std::chrono::milliseconds kServerTimeout{200};
// Far beyond every server deadline: reaching it means the server kept a finished
// connection open.
constexpr std::chrono::milliseconds kClientDeadline{5000};

class LengthHandler final : public flowd::net::Handler {
 public:
  std::optional<Response> Precheck(const Request& head) override {
    if (head.target().starts_with("/refuse")) return flowd::net::ErrorResponse(401, "unauthorized", "Refused.");
    return std::nullopt;
  }

  asio::awaitable<flowd::net::Reply> Handle(Request& req) override {
    Check(req.body().size() <= kMaxBody, "the handler got a body over max_body");
    if (req.target().starts_with("/throw")) throw std::runtime_error("the fuzz handler throws on /throw");
    co_return flowd::net::JsonResponse(200, std::to_string(req.body().size()));
  }
};

flowd::net::ServerOptions FuzzOptions() {
  flowd::net::ServerOptions o;
  o.max_body = kMaxBody;
  o.max_header = kMaxHeader;
  o.idle_timeout = kServerTimeout;
  o.header_timeout = kServerTimeout;
  o.body_grace = kServerTimeout;
  o.write_timeout = kServerTimeout;
  return o;
}

struct Harness {
  asio::io_context ioc{1};
  asio::executor_work_guard<asio::io_context::executor_type> work = asio::make_work_guard(ioc);
  LengthHandler handler;
  flowd::net::Server server{ioc, handler, FuzzOptions()};
  uint16_t port = 0;
  std::thread loop;
};

// Never destroyed: the loop thread runs until the process exits.
Harness& RunningServer() {
  static Harness* harness = [] {
    auto* h = new Harness;
    std::string error;
    Check(h->server.Listen({asio::ip::make_address("127.0.0.1"), 0}, &error), "the server cannot listen");
    h->port = h->server.local_endpoint().port();
    h->server.Start();
    h->loop = std::thread([h] { h->ioc.run(); });
    return h;
  }();
  return *harness;
}

struct Exchange {
  std::string received;
  bool reset = false;  // the server reset the connection: the tail may be cut off
};

// Writes `request`, half-closes, and reads until the server closes.
Exchange Converse(uint16_t port, std::string_view request) {
  const auto deadline = std::chrono::steady_clock::now() + kClientDeadline;
  auto ms_left = [&] {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    Check(left.count() > 0, "the exchange did not end within the client deadline (server hung?)");
    return static_cast<int>(left.count());
  };

  // Non-blocking from the start: libFuzzer's timers send signals, and a blocking connect()
  // that one interrupts cannot simply be retried.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  Check(fd >= 0, "socket() failed");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    if (err == EINPROGRESS || err == EINTR) {
      pollfd p{fd, POLLOUT, 0};
      while (::poll(&p, 1, ms_left()) <= 0) {
      }
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    }
    if (err != 0) {
      std::fprintf(stderr, "connect: %s\n", std::strerror(err));
      Check(false, "cannot connect to the server");
    }
  }

  Exchange ex;
  size_t written = 0;
  bool write_done = false;
  auto finish_writing = [&] {
    ::shutdown(fd, SHUT_WR);
    write_done = true;
  };
  if (request.empty()) finish_writing();
  char chunk[16 << 10];
  for (;;) {
    pollfd p{fd, static_cast<short>(POLLIN | (write_done ? 0 : POLLOUT)), 0};
    int ready = ::poll(&p, 1, ms_left());
    if (ready < 0 && errno == EINTR) continue;
    Check(ready >= 0, "poll() failed");
    if (ready == 0) continue;
    if (!write_done && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      ssize_t n = ::send(fd, request.data() + written, request.size() - written, MSG_NOSIGNAL);
      if (n > 0) {
        written += static_cast<size_t>(n);
        if (written == request.size()) finish_writing();
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        write_done = true;  // the server stopped reading and closed: read what it said
      }
    }
    if (p.revents & (POLLIN | POLLERR | POLLHUP)) {
      ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n > 0) {
        ex.received.append(chunk, static_cast<size_t>(n));
      } else if (n == 0) {
        return ex;
      } else if (errno != EAGAIN && errno != EINTR) {
        ex.reset = true;
        return ex;
      }
    }
  }
}

bool AllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The methods of the requests in `input`, in order, for as long as it reads as a series of
// complete requests (Beast's parser with no head limit: the server may refuse sooner, and
// then closes, so it never answers past the point where the two disagree).
std::vector<http::verb> RequestMethods(std::string_view input) {
  std::vector<http::verb> methods;
  while (!input.empty()) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(std::numeric_limits<std::uint32_t>::max());
    parser.body_limit(input.size());  // a longer body is cut off anyway, so is never answered
    parser.eager(true);
    boost::system::error_code ec;
    try {
      while (!parser.is_done()) {
        size_t used = parser.put(asio::buffer(input.data(), input.size()), ec);
        input.remove_prefix(used);
        if (ec == http::error::need_more && input.size() > 0 && used > 0) continue;
        if (ec == http::error::need_more) parser.put_eof(ec);
        if (ec) return methods;
        if (used == 0 && !parser.is_done()) return methods;
      }
    } catch (const std::exception&) {
      return methods;
    }
    methods.push_back(parser.get().method());
  }
  return methods;
}

// Walks the responses in `ex.received`, checking each one's framing. `methods` are those of
// the requests sent, to which the final responses answer in order.
void CheckResponses(const Exchange& ex, const std::vector<http::verb>& methods) {
  std::string_view rest = ex.received;
  size_t answered = 0;  // final responses so far
  while (!rest.empty()) {
    size_t head_end = rest.find("\r\n\r\n");
    if (head_end == std::string_view::npos) {
      Check(ex.reset, "a response head is cut off");
      return;
    }
    std::string_view head = rest.substr(0, head_end + 2);
    Check(head.starts_with("HTTP/1.1 ") || head.starts_with("HTTP/1.0 "),
          "a response does not start with HTTP/1.1 (or HTTP/1.0)");
    Check(head.size() > 13 && AllDigits(head.substr(9, 3)) && head[12] == ' ',
          "a response's status is not 3 digits and a space");
    unsigned status = std::stoul(std::string(head.substr(9, 3)));
    Check(status >= 100 && status <= 599, "a response's status is outside 100-599");

    std::string_view fields = head.substr(head.find("\r\n") + 2);
    bool has_length = false, closes = false;
    size_t length = 0;
    while (!fields.empty()) {
      size_t eol = fields.find("\r\n");
      std::string_view line = fields.substr(0, eol);
      fields.remove_prefix(eol + 2);
      size_t colon = line.find(':');
      Check(colon != std::string_view::npos && colon > 0, "a response header line has no name");
      std::string_view name = line.substr(0, colon);
      std::string_view value = Trim(line.substr(colon + 1));
      if (beast::iequals(name, "Content-Length")) {
        Check(!has_length, "a response has two Content-Length headers");
        Check(AllDigits(value) && value.size() < 10, "a response's Content-Length is not a small number");
        has_length = true;
        length = std::stoul(std::string(value));
      } else if (beast::iequals(name, "Connection")) {
        closes = closes || beast::iequals(value, "close");
      }
    }
    rest.remove_prefix(head_end + 4);
    if (status < 200) {
      Check(status == 100, "an interim response other than 100 Continue");
      continue;
    }
    Check(has_length, "a final response without Content-Length");
    bool to_head = answered < methods.size() && methods[answered] == http::verb::head;
    ++answered;
    if (to_head) {
      // Content-Length says what GET would send; the content itself must not follow, or a
      // client reads it as the start of the next response. Before a close it does no harm.
      if (closes && rest.size() == length) rest = {};
      Check(rest.empty() || (!closes && rest.starts_with("HTTP/")), "a response to HEAD carries content");
      continue;
    }
    if (rest.size() < length) {
      Check(ex.reset, "a response body is cut off");
      return;
    }
    rest.remove_prefix(length);
    if (closes) Check(rest.empty(), "bytes after a response that said Connection: close");
  }
}

// Waits until the server's thread has finished what it was doing (ending the session whose
// close the client just saw), so that all the server does for an input falls within that
// input's run: libFuzzer credits the coverage it sees during a run to that run's input.
void SettleServer() {
  std::promise<void> done;
  asio::post(RunningServer().ioc, [&done] { done.set_value(); });
  done.get_future().wait();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  flowd::SetLogLevel(flowd::LogLevel::kWarn);
  RunningServer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // For triage: FLOWD_FUZZ_SHOW=1 prints what the server wrote for each input.
  static const bool show = std::getenv("FLOWD_FUZZ_SHOW") != nullptr;
  Exchange ex = Converse(RunningServer().port, std::string_view(reinterpret_cast<const char*>(data), size));
  if (show) {
    std::fprintf(stderr, "---- %zu bytes in, %zu bytes out%s\n", size, ex.received.size(), ex.reset ? ", reset" : "");
    std::fwrite(ex.received.data(), 1, ex.received.size(), stderr);
    std::fputc('\n', stderr);
  }
  CheckResponses(ex, RequestMethods(std::string_view(reinterpret_cast<const char*>(data), size)));
  SettleServer();
  return 0;
}
