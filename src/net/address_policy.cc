#include "net/address_policy.h"

#include <charconv>

namespace flowd::net {
namespace ip = boost::asio::ip;

std::optional<Cidr> Cidr::Parse(std::string_view text) {
  size_t slash = text.find('/');
  boost::system::error_code ec;
  auto addr = ip::make_address(std::string(text.substr(0, slash)), ec);
  if (ec) return std::nullopt;
  unsigned max = addr.is_v4() ? 32 : 128, prefix = max;
  if (slash != std::string_view::npos) {
    auto rest = text.substr(slash + 1);
    auto [end, err] = std::from_chars(rest.data(), rest.data() + rest.size(), prefix);
    if (err != std::errc() || end != rest.data() + rest.size() || prefix > max) return std::nullopt;
  }
  return Cidr{addr, prefix};
}

namespace {

bool PrefixMatch(const unsigned char* a, const unsigned char* b, unsigned bits) {
  for (unsigned i = 0; i < bits / 8; ++i) {
    if (a[i] != b[i]) return false;
  }
  unsigned rest = bits % 8;
  if (rest == 0) return true;
  unsigned char mask = static_cast<unsigned char>(0xFF << (8 - rest));
  return (a[bits / 8] & mask) == (b[bits / 8] & mask);
}

std::string ClassifyV4(const ip::address_v4& a) {
  auto b = a.to_bytes();
  uint32_t v = (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
  auto in = [v](uint32_t net, unsigned bits) { return bits == 0 || (v >> (32 - bits)) == (net >> (32 - bits)); };
  if (in(0x00000000, 8)) return "unspecified";
  if (in(0x7F000000, 8)) return "loopback";
  if (in(0x0A000000, 8) || in(0xAC100000, 12) || in(0xC0A80000, 16)) return "private";
  if (in(0xA9FE0000, 16)) return "link-local";
  if (in(0x64400000, 10)) return "cgnat";
  if (in(0xE0000000, 4)) return "multicast";
  if (in(0xF0000000, 4)) return "reserved";  // 240/4 and the broadcast address
  if (in(0xC0000000, 24) || in(0xC0000200, 24) || in(0xC6336400, 24) || in(0xCB007100, 24) || in(0xC6120000, 15))
    return "reserved";  // IETF, documentation and benchmarking ranges
  return "";
}

}  // namespace

bool Cidr::Contains(const ip::address& a) const {
  if (a.is_v4() && network.is_v4()) {
    auto x = a.to_v4().to_bytes(), n = network.to_v4().to_bytes();
    return PrefixMatch(x.data(), n.data(), prefix);
  }
  if (a.is_v6() && network.is_v6()) {
    auto x = a.to_v6().to_bytes(), n = network.to_v6().to_bytes();
    return PrefixMatch(x.data(), n.data(), prefix);
  }
  if (a.is_v6() && a.to_v6().is_v4_mapped()) return Contains(ip::make_address_v4(ip::v4_mapped, a.to_v6()));
  return false;
}

std::string AddressPolicy::Classify(const ip::address& a) {
  if (a.is_v4()) return ClassifyV4(a.to_v4());
  const ip::address_v6 v6 = a.to_v6();
  auto b = v6.to_bytes();
  if (v6.is_v4_mapped()) return ClassifyV4(ip::make_address_v4(ip::v4_mapped, v6));
  if (v6.is_unspecified()) return "unspecified";
  if (v6.is_loopback()) return "loopback";
  if (v6.is_multicast()) return "multicast";
  if (v6.is_link_local() || (b[0] == 0xFE && (b[1] & 0xC0) == 0xC0)) return "link-local";  // fe80::/10, fec0::/10
  if ((b[0] & 0xFE) == 0xFC) return "private";                                             // fc00::/7
  // Forms that carry an IPv4 address inside: judge the address they lead to.
  static const unsigned char kNat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  if (PrefixMatch(b.data(), kNat64, 96)) {
    return ClassifyV4(ip::address_v4(ip::address_v4::bytes_type{b[12], b[13], b[14], b[15]}));
  }
  if (b[0] == 0x20 && b[1] == 0x02) {  // 6to4
    return ClassifyV4(ip::address_v4(ip::address_v4::bytes_type{b[2], b[3], b[4], b[5]}));
  }
  bool v4_compatible = true;  // ::a.b.c.d, deprecated but still routed by some stacks
  for (int i = 0; i < 12; ++i) v4_compatible = v4_compatible && b[i] == 0;
  if (v4_compatible) return ClassifyV4(ip::address_v4(ip::address_v4::bytes_type{b[12], b[13], b[14], b[15]}));
  if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return "reserved";  // documentation
  return "";
}

std::string AddressPolicy::Refusal(const ip::address& a) const {
  std::string kind = Classify(a);
  if (kind.empty() || allow_private_) return "";
  for (const auto& c : allowed_) {
    if (c.Contains(a)) return "";
  }
  return kind;
}

}  // namespace flowd::net
