// The one assertion the fuzz targets use: a property that does not hold prints what broke
// and aborts, so libFuzzer stops and writes the input to its artifact folder as a crash.
// Unlike assert(), it is never compiled out.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace flowd::fuzz {

inline void Check(bool holds, const char* property) {
  if (holds) return;
  std::fprintf(stderr, "fuzz property failed: %s\n", property);
  std::abort();
}

}  // namespace flowd::fuzz
