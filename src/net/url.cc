#include "net/url.h"

#include <boost/url/parse.hpp>

#include <charconv>

namespace flowd::net {

std::optional<HttpUrl> ParseHttpUrl(std::string_view url) {
  if (url.empty() || url.size() > kMaxUrlLength) return std::nullopt;
  // Boost.URL rejects raw controls and spaces already; the check stays here so that the
  // promise above does not rest on another library's grammar.
  for (unsigned char c : url) {
    if (c <= 0x20 || c == 0x7F) return std::nullopt;
  }
  auto parsed = boost::urls::parse_uri(url);
  if (!parsed) return std::nullopt;
  const bool tls = parsed->scheme_id() == boost::urls::scheme::https;
  if (!tls && parsed->scheme_id() != boost::urls::scheme::http) return std::nullopt;
  if (parsed->encoded_host().empty() || parsed->has_userinfo() || parsed->has_fragment()) return std::nullopt;
  if (parsed->host_type() == boost::urls::host_type::ipvfuture) return std::nullopt;
  // After an authority the path is empty or starts with "/" (RFC 3986 path-abempty).
  // Boost.URL 1.81 also accepts "http://1.2.3.4.5x" as host 1.2.3.4 with path ".5x" (and
  // "http://[::1]x", "http://h:80x"): the host it reports is then not the one the author
  // wrote, and the target is no valid request target.
  if (auto path = parsed->encoded_path(); !path.empty() && path.front() != '/') return std::nullopt;

  HttpUrl u;
  u.tls = tls;
  if (parsed->has_port()) {
    auto port = parsed->port();
    unsigned n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || n == 0 || n > 65535) {
      return std::nullopt;
    }
    u.port = std::to_string(n);
  } else {
    u.port = tls ? "443" : "80";
  }
  u.host = parsed->host_type() == boost::urls::host_type::ipv6 ? std::string(parsed->host_address())
                                                                : std::string(parsed->encoded_host());
  u.host_header = std::string(parsed->encoded_host_and_port());
  u.target = parsed->encoded_path().empty() ? "/" : std::string(parsed->encoded_path());
  if (parsed->has_query()) u.target += "?" + std::string(parsed->encoded_query());
  u.pool_key = std::string(tls ? "https" : "http") + "://" + u.host + ":" + u.port;
  return u;
}

bool IsHeaderName(std::string_view name) {
  // RFC 9110 token characters.
  static constexpr std::string_view kSpecial = "!#$%&'*+-.^_`|~";
  if (name.empty()) return false;
  for (unsigned char c : name) {
    const bool alnum = (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
    if (!alnum && kSpecial.find(static_cast<char>(c)) == std::string_view::npos) return false;
  }
  return true;
}

bool IsHeaderValue(std::string_view value) {
  for (unsigned char c : value) {
    if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
  }
  return true;
}

}  // namespace flowd::net
