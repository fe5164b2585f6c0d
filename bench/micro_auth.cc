// Micro-benchmarks, auth: what every /v1 request pays to check its key before the map
// lookup: the format and CRC32 check, then SHA-256 (flowd::auth::HashKey).
#include <benchmark/benchmark.h>

#include "auth/api_key.h"

namespace {

void BM_HasValidFormat(benchmark::State& state) {
  const std::string key = flowd::auth::GenerateKey();
  for (auto _ : state) benchmark::DoNotOptimize(flowd::auth::HasValidFormat(key));
}
BENCHMARK(BM_HasValidFormat);

void BM_HashKey(benchmark::State& state) {
  const std::string key = flowd::auth::GenerateKey();
  for (auto _ : state) benchmark::DoNotOptimize(flowd::auth::HashKey(key));
}
BENCHMARK(BM_HashKey);

}  // namespace
