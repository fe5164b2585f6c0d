// API key format and hashing. Knows nothing of storage or HTTP.
//
// A key is "fk_" + 32 base62 characters of CSPRNG output + 6 base62 characters holding the
// CRC32 of everything before them, so a scanner (or flowd itself) can tell a real key from
// a look-alike offline. flowd stores only KeyHash(key); the key text itself lives only in
// the response that creates it. Pure functions, any thread.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace flowd::auth {

inline constexpr std::string_view kKeyPrefix = "fk_";
inline constexpr size_t kKeyRandomChars = 32;
inline constexpr size_t kKeyChecksumChars = 6;
inline constexpr size_t kKeyLength = 3 + kKeyRandomChars + kKeyChecksumChars;
// What listings show of a key: enough to recognise it, far too little to use it.
inline constexpr size_t kKeyShownPrefix = 11;

using KeyHash = std::array<unsigned char, 32>;  // SHA-256

std::string GenerateKey();

// Shape and checksum only; says nothing about whether the key was ever issued.
bool HasValidFormat(std::string_view key);

KeyHash HashKey(std::string_view key);

uint32_t Crc32(std::string_view data);

// CRC32 as exactly 6 base62 digits, most significant first.
std::string ChecksumText(std::string_view data);

// Timing-safe equality of two digests.
bool DigestEqual(const KeyHash& a, const KeyHash& b);

// 32 random bytes as "whsec_" + base64, the Standard Webhooks secret form.
std::string GenerateWebhookSecret();

}  // namespace flowd::auth
