#include <catch2/catch.hpp>

#include <regex>
#include <set>

#include "auth/api_key.h"
#include "auth/webhook_signature.h"

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

namespace {
std::string HexOf(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (unsigned char b : bytes) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}
}  // namespace

TEST_CASE("webhook_signature: HMAC-SHA256 matches RFC 4231") {
  // Test case 2.
  CHECK(HexOf(HmacSha256("Jefe", "what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 1: key of 20 bytes 0x0b, "Hi There".
  CHECK(HexOf(HmacSha256(std::string(20, '\x0b'), "Hi There")) ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 6: a key longer than the block, hashed first; then a short key again (the
  // context is reused per thread and re-keyed at each use).
  CHECK(HexOf(HmacSha256(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")) ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  CHECK(HexOf(HmacSha256("Jefe", "what do ya want for nothing?")) ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

TEST_CASE("webhook_signature: the Standard Webhooks example vector") {
  auto key = WebhookKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  REQUIRE(key);
  CHECK(SignWebhook(*key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, R"({"test": 2432232314})") ==
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST_CASE("webhook_signature: secrets decode to their key bytes, and nothing else does") {
  std::string secret = GenerateWebhookSecret();
  auto key = WebhookKey(secret);
  REQUIRE(key);
  CHECK(key->size() == 32);
  CHECK(Base64(*key) == secret.substr(6));
  CHECK_FALSE(WebhookKey("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
  CHECK_FALSE(WebhookKey("whsec_"));
  CHECK_FALSE(WebhookKey("whsec_abc"));
}
