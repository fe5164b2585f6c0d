// Every column family flowd keeps and the layout of its keys, in one place.
// Values are JSON documents written and read by the modules that own them; the store
// treats them as bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace flowd::store {

enum class Cf : uint8_t {
  kKeys,         // SHA-256 of the API key (32 bytes) -> key record
  kFlows,        // flow_id + '/' + be32(version) -> saved flow version
  kFlowHeads,    // flow_id -> owner, latest version, deleted flag
  kRuns,         // run_id -> run record
  kPendingRuns,  // run_id -> "" for every accepted run not yet ended: the restart index
  kCount
};

inline constexpr const char* kCfNames[] = {"keys", "flows", "flow_heads", "runs", "pending_runs"};
inline constexpr size_t kCfCount = static_cast<size_t>(Cf::kCount);
static_assert(sizeof(kCfNames) / sizeof(kCfNames[0]) == static_cast<size_t>(Cf::kCount));

inline void PutBigEndian32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xFF);
}

inline uint32_t GetBigEndian32(std::string_view in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(in[i]);
  return v;
}

// Versions sort numerically under their flow, so the latest is the last key of the prefix.
inline std::string FlowVersionKey(std::string_view flow_id, uint32_t version) {
  std::string k(flow_id);
  k += '/';
  PutBigEndian32(k, version);
  return k;
}

}  // namespace flowd::store
