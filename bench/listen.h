// Opening the listening socket of a benchmark server (flowd_ceiling, flowd_webhook_sink)
// from an `address:port` flag, the way flowd's --listen reads it.
#pragma once

#include <boost/asio/ip/tcp.hpp>

#include <charconv>
#include <string>
#include <string_view>

namespace flowd::bench {

// Binds and listens on `at` ("127.0.0.1:0" takes a free port); false with `error` set.
inline bool Listen(boost::asio::ip::tcp::acceptor& acceptor, std::string_view at, std::string& error) {
  namespace asio = boost::asio;
  auto colon = at.rfind(':');
  boost::system::error_code ec;
  unsigned port = 0;
  asio::ip::address address;
  if (colon != std::string_view::npos) {
    address = asio::ip::make_address(std::string(at.substr(0, colon)), ec);
    auto [end, pec] = std::from_chars(at.data() + colon + 1, at.data() + at.size(), port);
    if (pec != std::errc() || end != at.data() + at.size()) ec = asio::error::invalid_argument;
  }
  if (colon == std::string_view::npos || ec || port > 65535) {
    error = "--listen: expected address:port, e.g. 127.0.0.1:0";
    return false;
  }
  const asio::ip::tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) error = "cannot listen on " + std::string(at) + ": " + ec.message();
  return !ec;
}

}  // namespace flowd::bench
