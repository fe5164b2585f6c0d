// Fuzzes outbound URL parsing (net/url.h) and the SSRF guard's address classification
// (net/address_policy.h) on any bytes.
//
// Properties:
//   - ParseHttpUrl: an accepted URL yields a host, a port in 1-65535, a target starting
//     with "/", and no byte in host, Host header or target that could end a request line
//     or header (controls, space, DEL): whatever a flow author writes cannot inject a
//     header or a second request;
//   - Classify: when the host is a numeric IPv4 address in any spelling the resolver
//     accepts (inet_aton: 127.1, 0x7f.1, 0177.0.0.1, 2130706433), or an IPv6 literal,
//     its class agrees with a reference table written independently below, as CIDRs;
//     an IPv4 address and its IPv4-mapped IPv6 form get the same class;
//   - Refusal: the default policy refuses exactly the classified addresses, and
//     --webhook-allow-private refuses none.
// The input is read both as a URL and, when it has 16 bytes or more, as a raw IPv6 address
// (so the fuzzer also reaches every embedded-IPv4 form directly).
#include <arpa/inet.h>

#include <boost/asio/ip/address.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "net/address_policy.h"
#include "net/url.h"

namespace {

namespace ip = boost::asio::ip;
using flowd::fuzz::Check;
using flowd::net::AddressPolicy;
using flowd::net::Cidr;

struct Range {
  const char* cidr;
  const char* kind;
};

// Every IPv4 range that is not a public unicast address, in the order the guard checks
// them (the first match names the class).
constexpr Range kV4[] = {
    {"0.0.0.0/8", "unspecified"},     {"127.0.0.0/8", "loopback"},      {"10.0.0.0/8", "private"},
    {"172.16.0.0/12", "private"},     {"192.168.0.0/16", "private"},    {"169.254.0.0/16", "link-local"},
    {"100.64.0.0/10", "cgnat"},       {"224.0.0.0/4", "multicast"},     {"240.0.0.0/4", "reserved"},
    {"192.0.0.0/24", "reserved"},     {"192.0.2.0/24", "reserved"},     {"198.51.100.0/24", "reserved"},
    {"203.0.113.0/24", "reserved"},   {"198.18.0.0/15", "reserved"},
};

std::string ReferenceV4(const ip::address_v4& a) {
  for (const auto& r : kV4) {
    if (Cidr::Parse(r.cidr)->Contains(ip::address(a))) return r.kind;
  }
  return "";
}

ip::address_v4 V4At(const ip::address_v6::bytes_type& b, size_t at) {
  return ip::address_v4(ip::address_v4::bytes_type{b[at], b[at + 1], b[at + 2], b[at + 3]});
}

std::string ReferenceV6(const ip::address_v6& a) {
  const auto b = a.to_bytes();
  if (a.is_v4_mapped()) return ReferenceV4(V4At(b, 12));
  if (a.is_unspecified()) return "unspecified";
  if (a.is_loopback()) return "loopback";
  const Range kV6[] = {{"ff00::/8", "multicast"}, {"fe80::/10", "link-local"}, {"fec0::/10", "link-local"},
                       {"fc00::/7", "private"}};
  for (const auto& r : kV6) {
    if (Cidr::Parse(r.cidr)->Contains(ip::address(a))) return r.kind;
  }
  if (Cidr::Parse("64:ff9b::/96")->Contains(ip::address(a))) return ReferenceV4(V4At(b, 12));  // NAT64
  if (Cidr::Parse("2002::/16")->Contains(ip::address(a))) return ReferenceV4(V4At(b, 2));      // 6to4
  if (Cidr::Parse("::/96")->Contains(ip::address(a))) return ReferenceV4(V4At(b, 12));         // IPv4-compatible
  if (Cidr::Parse("2001:db8::/32")->Contains(ip::address(a))) return "reserved";
  return "";
}

void CheckAddress(const ip::address& a, const std::string& expected) {
  static const AddressPolicy kDefault;
  static const AddressPolicy kOpen(true, {});
  const std::string kind = AddressPolicy::Classify(a);
  Check(kind == expected, "Classify disagrees with the reference ranges");
  Check(kDefault.Refusal(a) == kind, "the default policy refuses other than what Classify names");
  Check(kOpen.Refusal(a).empty(), "--webhook-allow-private still refuses an address");
  if (a.is_v4()) {
    const auto mapped = ip::make_address_v6(ip::v4_mapped, a.to_v4());
    Check(AddressPolicy::Classify(mapped) == kind, "an IPv4-mapped address is classified unlike its IPv4 form");
  }
}

bool Unsafe(std::string_view s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c == 0x7F) return true;
  }
  return false;
}

void CheckUrl(std::string_view text) {
  auto url = flowd::net::ParseHttpUrl(text);
  if (!url) return;
  Check(!url->host.empty(), "an accepted URL has no host");
  Check(!url->target.empty() && url->target[0] == '/', "an accepted URL's target does not start with /");
  Check(!Unsafe(url->host) && !Unsafe(url->host_header) && !Unsafe(url->target),
        "an accepted URL holds a byte that could break a request line or header");
  Check(url->port.find_first_not_of("0123456789") == std::string::npos, "the port is not decimal");
  const unsigned long port = std::stoul(url->port);
  Check(port >= 1 && port <= 65535, "the port is out of range");
  Check(url->pool_key.starts_with(url->tls ? "https://" : "http://"), "the pool key lost the scheme");

  // Where the resolver would lead for a numeric host, without asking any resolver.
  in_addr v4{};
  if (inet_aton(url->host.c_str(), &v4) == 1) {
    ip::address_v4 a(ntohl(v4.s_addr));
    CheckAddress(ip::address(a), ReferenceV4(a));
  }
  boost::system::error_code ec;
  auto a6 = ip::make_address_v6(url->host, ec);
  if (!ec) CheckAddress(ip::address(a6), ReferenceV6(a6));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  CheckUrl(std::string_view(reinterpret_cast<const char*>(data), size));
  if (size >= 16) {
    ip::address_v6::bytes_type b;
    std::memcpy(b.data(), data, 16);
    ip::address_v6 a(b);
    CheckAddress(ip::address(a), ReferenceV6(a));
    CheckAddress(ip::address(V4At(b, 0)), ReferenceV4(V4At(b, 0)));
  }
  return 0;
}
