// Which addresses outbound requests (webhooks, http-get-processor) may reach. By default
// everything that is not a public unicast address is refused: loopback, private,
// link-local, CGNAT, multicast, unspecified, reserved, and IPv6 forms that embed such an
// IPv4 address (IPv4-mapped, NAT64, 6to4). The operator may allow private targets
// altogether or by CIDR. The check applies to resolved addresses, so every spelling of a
// host (127.1, 0x7f.1, 2130706433, a DNS name) is judged by where it really leads, and
// the client connects only to the addresses that passed. Immutable after construction;
// any thread.
#pragma once

#include <boost/asio/ip/address.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace flowd::net {

struct Cidr {
  boost::asio::ip::address network;
  unsigned prefix = 0;

  static std::optional<Cidr> Parse(std::string_view text);
  bool Contains(const boost::asio::ip::address& a) const;
};

class AddressPolicy {
 public:
  AddressPolicy() = default;
  AddressPolicy(bool allow_private, std::vector<Cidr> allowed)
      : allow_private_(allow_private), allowed_(std::move(allowed)) {}

  // Empty when `a` may be reached; else why not ("loopback", "private", ...).
  std::string Refusal(const boost::asio::ip::address& a) const;

  // The class of a non-public address, or "" for a public one.
  static std::string Classify(const boost::asio::ip::address& a);

 private:
  bool allow_private_ = false;
  std::vector<Cidr> allowed_;
};

}  // namespace flowd::net
