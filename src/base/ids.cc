#include "base/ids.h"

#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>
#include <string_view>

namespace flowd {

void RandomBytes(void* out, size_t n) {
  constexpr size_t kPool = 4096;
  thread_local unsigned char pool[kPool];
  thread_local size_t left = 0;
  auto* dst = static_cast<unsigned char*>(out);
  while (n > 0) {
    if (left == 0) {
      if (RAND_bytes(pool, kPool) != 1) std::abort();
      left = kPool;
    }
    size_t take = n < left ? n : left;
    std::memcpy(dst, pool + (kPool - left), take);
    // Never hand out the same bytes twice.
    std::memset(pool + (kPool - left), 0, take);
    left -= take;
    dst += take;
    n -= take;
  }
}

std::string NewUuidV4() {
  unsigned char b[16];
  RandomBytes(b, sizeof b);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += kHex[b[i] >> 4];
    s += kHex[b[i] & 15];
  }
  return s;
}

bool IsUuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < 36; ++i) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return s[14] == '4';
}

}  // namespace flowd
