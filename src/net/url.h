// Outbound requests' rules: the one place that decides whether a string is an http(s)
// URL flowd may call (and how it splits into what a request needs), and which header
// names and values a request may carry. Flow validation, run inputs, the nodes and the
// HTTP client all ask here, so what is accepted at save or submit time is what the client
// sends, and what it refuses is refused early with the same rule.
//
// Pure functions; any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace flowd::net {

inline constexpr size_t kMaxUrlLength = 2048;

struct HttpUrl {
  bool tls = false;
  std::string host;         // for the resolver and certificate checks (IPv6 without brackets)
  std::string port;         // decimal; 80 or 443 when the URL has none
  std::string host_header;  // host[:port] as the URL spelled it
  std::string target;       // path and query, "/" at least
  std::string pool_key;     // scheme://host:port: connections to one key are interchangeable
};

// An absolute http or https URL with a host, no user info, no fragment, at most
// kMaxUrlLength bytes, nothing that could break a request line or header (control
// characters, spaces), and a port within 1-65535. nullopt otherwise.
std::optional<HttpUrl> ParseHttpUrl(std::string_view url);

// A header name flowd may send (an RFC 9110 token) and value (no line break, NUL or other
// control but tab): anything else would let its author add headers or a second request.
bool IsHeaderName(std::string_view name);
bool IsHeaderValue(std::string_view value);

}  // namespace flowd::net
