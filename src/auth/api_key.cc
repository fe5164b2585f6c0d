#include "auth/api_key.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstdlib>

#include "base/ids.h"

namespace flowd::auth {
namespace {

constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool IsBase62(char c) {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

// The SHA-256 implementation is fetched once, not per key (fetching costs more than hashing
// a key).
const EVP_MD* Sha256() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md;
}

}  // namespace

uint32_t Crc32(std::string_view data) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : data) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

std::string ChecksumText(std::string_view data) {
  uint64_t v = Crc32(data);
  std::string out(kKeyChecksumChars, '0');
  for (size_t i = kKeyChecksumChars; i-- > 0;) {
    out[i] = kBase62[v % 62];
    v /= 62;
  }
  return out;
}

std::string GenerateKey() {
  std::string key(kKeyPrefix);
  while (key.size() < kKeyPrefix.size() + kKeyRandomChars) {
    unsigned char buf[48];
    RandomBytes(buf, sizeof buf);
    for (unsigned char b : buf) {
      // 248 = 4 * 62: rejecting the top values keeps every character equally likely.
      if (b < 248 && key.size() < kKeyPrefix.size() + kKeyRandomChars) key += kBase62[b % 62];
    }
  }
  key += ChecksumText(key);
  return key;
}

bool HasValidFormat(std::string_view key) {
  if (key.size() != kKeyLength || key.substr(0, 3) != kKeyPrefix) return false;
  for (char c : key.substr(3)) {
    if (!IsBase62(c)) return false;
  }
  const size_t body = kKeyLength - kKeyChecksumChars;
  return ChecksumText(key.substr(0, body)) == key.substr(body);
}

KeyHash HashKey(std::string_view key) {
  KeyHash out{};
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx || !EVP_DigestInit_ex(ctx, Sha256(), nullptr) ||
      !EVP_DigestUpdate(ctx, key.data(), key.size()) || !EVP_DigestFinal_ex(ctx, out.data(), &len)) {
    std::abort();  // a broken libcrypto must never let a key through
  }
  EVP_MD_CTX_free(ctx);
  return out;
}

bool DigestEqual(const KeyHash& a, const KeyHash& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string GenerateWebhookSecret() {
  unsigned char raw[32];
  RandomBytes(raw, sizeof raw);
  unsigned char b64[64];
  int n = EVP_EncodeBlock(b64, raw, sizeof raw);
  return "whsec_" + std::string(reinterpret_cast<char*>(b64), n);
}

}  // namespace flowd::auth
