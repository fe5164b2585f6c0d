#include <catch2/catch.hpp>

#include <boost/asio/ip/address.hpp>

#include <string>

#include "net/address_policy.h"
#include "net/url.h"

using flowd::net::AddressPolicy;
using flowd::net::Cidr;
using flowd::net::ParseHttpUrl;

namespace {
std::string Split(const char* url) {
  auto u = ParseHttpUrl(url);
  if (!u) return "refused";
  return std::string(u->tls ? "tls " : "plain ") + u->host + " " + u->port + " " + u->host_header + " " + u->target +
         " " + u->pool_key;
}

std::string Class(const char* address) { return AddressPolicy::Classify(boost::asio::ip::make_address(address)); }
}  // namespace

TEST_CASE("url: splits an http(s) URL into what a request needs") {
  CHECK(Split("http://example.com") == "plain example.com 80 example.com / http://example.com:80");
  CHECK(Split("https://example.com/a/b?c=d") ==
        "tls example.com 443 example.com /a/b?c=d https://example.com:443");
  CHECK(Split("http://[::1]:8080/x") == "plain ::1 8080 [::1]:8080 /x http://::1:8080");
  CHECK(Split("HTTP://example.com:0081/") == "plain example.com 81 example.com:0081 / http://example.com:81");
}

TEST_CASE("url: refuses what is not an absolute http(s) URL with a host") {
  for (const char* bad : {"", "example.com", "ftp://example.com/", "http://", "http:///x", "http://u:p@example.com/",
                          "http://example.com/#frag", "http://example.com:0/", "http://example.com:65536/",
                          "http://example.com/a b", "http://example.com/\r\nX: y", "http://[v1.x]/"}) {
    INFO(bad);
    CHECK(Split(bad) == "refused");
  }
  CHECK(ParseHttpUrl("http://e.com/" + std::string(flowd::net::kMaxUrlLength - 13, 'a')).has_value());
  CHECK_FALSE(ParseHttpUrl("http://e.com/" + std::string(flowd::net::kMaxUrlLength - 12, 'a')).has_value());
}

// Boost.URL 1.81 reads these as a host followed by a path that does not start with "/":
// the host judged would not be the host written (found by fuzz_url_policy).
TEST_CASE("url: refuses a path glued to the authority instead of reading a shorter host") {
  for (const char* bad : {"http://100.64.0.1'", "http://1.2.3.4.5x", "http://[::1]x", "http://1.2.3.4:80x"}) {
    INFO(bad);
    CHECK(Split(bad) == "refused");
  }
}

TEST_CASE("url: header names are tokens and values hold no line break or control") {
  using flowd::net::IsHeaderName;
  using flowd::net::IsHeaderValue;
  CHECK(IsHeaderName("AI_FLOW_SIGNATURE"));
  CHECK(IsHeaderName("x-e2e.v1~!#$%&'*+^`|"));
  for (const char* bad : {"", "a b", "a:b", "a\r\nb", "caf\xC3\xA9", "(x)"}) {
    INFO(bad);
    CHECK_FALSE(IsHeaderName(bad));
  }
  CHECK(IsHeaderValue("sig 123\twith tab, caf\xC3\xA9"));
  CHECK(IsHeaderValue(""));
  for (const char* bad : {"a\rb", "a\nb", "a\x7F", "\x01"}) {
    INFO(bad);
    CHECK_FALSE(IsHeaderValue(bad));
  }
  CHECK_FALSE(IsHeaderValue(std::string("a\0b", 3)));
}

TEST_CASE("address_policy: classifies every non-public range and the IPv6 forms that embed one") {
  CHECK(Class("127.0.0.1") == "loopback");
  CHECK(Class("::1") == "loopback");
  CHECK(Class("10.1.2.3") == "private");
  CHECK(Class("172.31.0.1") == "private");
  CHECK(Class("192.168.0.1") == "private");
  CHECK(Class("169.254.169.254") == "link-local");
  CHECK(Class("100.64.0.1") == "cgnat");
  CHECK(Class("224.0.0.1") == "multicast");
  CHECK(Class("0.0.0.0") == "unspecified");
  CHECK(Class("::") == "unspecified");
  CHECK(Class("::ffff:127.0.0.1") == "loopback");
  CHECK(Class("64:ff9b::a00:1") == "private");   // NAT64 of 10.0.0.1
  CHECK(Class("2002:7f00:1::") == "loopback");   // 6to4 of 127.0.0.1
  CHECK(Class("fe80::1") == "link-local");
  CHECK(Class("fd00::1") == "private");
  CHECK(Class("8.8.8.8").empty());
  CHECK(Class("172.32.0.1").empty());
  CHECK(Class("2606:4700::1111").empty());
}

TEST_CASE("address_policy: the operator opens private targets altogether or by CIDR") {
  const auto loopback = boost::asio::ip::make_address("127.0.0.1");
  const auto private_v4 = boost::asio::ip::make_address("10.0.0.1");
  CHECK(AddressPolicy().Refusal(loopback) == "loopback");
  CHECK(AddressPolicy(true, {}).Refusal(loopback).empty());
  AddressPolicy only_loopback(false, {*Cidr::Parse("127.0.0.0/8")});
  CHECK(only_loopback.Refusal(loopback).empty());
  CHECK(only_loopback.Refusal(private_v4) == "private");
  CHECK_FALSE(Cidr::Parse("127.0.0.0/33").has_value());
  CHECK_FALSE(Cidr::Parse("nonsense").has_value());
}
