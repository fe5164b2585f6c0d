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
  kRunsByFlow,   // RunsByFlowKey(flow_id, created_at, run_id) -> "": listing, newest first
  kAccounts,     // account -> webhook secrets
  kDeliveries,   // delivery_id -> webhook delivery record (with its attempts)
  kDueDeliveries,  // DueKey(next_attempt_at, delivery_id) -> "": undelivered, in due order
  kRunDeliveries,  // run_id + '/' + delivery_id -> "": a run's deliveries
  kIdempotency,    // account + '\n' + Idempotency-Key -> the run it started
  kRunsByEnd,      // DueKey(finished_at, run_id) -> flow_id: ended runs, oldest first, for retention
  kCount
};

inline constexpr const char* kCfNames[] = {"keys", "flows", "flow_heads", "runs", "pending_runs", "runs_by_flow",
                                        "accounts",    "deliveries", "due_deliveries", "run_deliveries",
                                        "idempotency", "runs_by_end"};
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

inline void PutBigEndian64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xFF);
}

// Due deliveries sort by the time of their next attempt; ended runs by their end.
inline std::string DueKey(int64_t due_ms, std::string_view delivery_id) {
  std::string k;
  PutBigEndian64(k, static_cast<uint64_t>(due_ms));
  k += delivery_id;
  return k;
}

// flow_id + '/' + 16 hex digits of the inverted creation time + '/' + run_id, so that a
// forward scan of one flow's prefix yields its newest runs first. The part after the
// prefix doubles as the listing cursor.
inline std::string RunsByFlowPrefix(std::string_view flow_id) {
  std::string k(flow_id);
  k += '/';
  return k;
}

inline std::string RunsByFlowKey(std::string_view flow_id, int64_t created_at_ms, std::string_view run_id) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string k = RunsByFlowPrefix(flow_id);
  uint64_t inverted = ~static_cast<uint64_t>(created_at_ms);
  for (int shift = 60; shift >= 0; shift -= 4) k += kHex[(inverted >> shift) & 15];
  k += '/';
  k += run_id;
  return k;
}

}  // namespace flowd::store
