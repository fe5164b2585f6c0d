#include <catch2/catch.hpp>

#include <regex>
#include <set>

#include "auth/api_key.h"

using namespace flowd::auth;

namespace {
std::string Hex(const KeyHash& h) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char b : h) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}
}  // namespace

TEST_CASE("api_key: CRC32 and SHA-256 match their published check values") {
  CHECK(Crc32("123456789") == 0xCBF43926u);
  CHECK(Hex(HashKey("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("api_key: generated keys have the documented shape and a valid checksum") {
  std::set<std::string> seen;
  const std::regex shape("^fk_[0-9A-Za-z]{38}$");
  for (int i = 0; i < 200; ++i) {
    std::string k = GenerateKey();
    CHECK(std::regex_match(k, shape));
    CHECK(HasValidFormat(k));
    CHECK(k.substr(35) == ChecksumText(k.substr(0, 35)));
    seen.insert(k);
  }
  CHECK(seen.size() == 200);
}

TEST_CASE("api_key: near-misses fail the offline check") {
  std::string k = GenerateKey();
  std::string flipped = k;
  for (size_t i = 3; i < flipped.size(); ++i) {
    char c = flipped[i];
    if (c >= 'a' && c <= 'z') {
      flipped[i] = static_cast<char>(c - 32);
      break;
    }
    if (c >= 'A' && c <= 'Z') {
      flipped[i] = static_cast<char>(c + 32);
      break;
    }
  }
  CHECK_FALSE(HasValidFormat(flipped));
  CHECK_FALSE(HasValidFormat(k.substr(0, k.size() - 1)));
  CHECK_FALSE(HasValidFormat(k + "x"));
  CHECK_FALSE(HasValidFormat(""));
  CHECK_FALSE(HasValidFormat("Bearer " + k));
  CHECK_FALSE(HasValidFormat("fk_" + std::string(38, '!')));
}

TEST_CASE("api_key: the checksum is 6 base62 digits, zero-padded") {
  // CRC32("") is 0, which must still read as six digits.
  CHECK(ChecksumText("") == "000000");
  CHECK(ChecksumText("123456789").size() == 6);
}

TEST_CASE("api_key: digests compare equal only when equal") {
  CHECK(DigestEqual(HashKey("a"), HashKey("a")));
  CHECK_FALSE(DigestEqual(HashKey("a"), HashKey("b")));
}

TEST_CASE("api_key: webhook secrets are whsec_ and 32 bytes of base64") {
  std::string s = GenerateWebhookSecret();
  CHECK(s.rfind("whsec_", 0) == 0);
  CHECK(s.size() == 6 + 44);
}
