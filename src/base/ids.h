// Random identifiers. Bytes come from OpenSSL's CSPRNG, drawn in blocks into a
// per-thread pool so that the hot path does not pay for one RAND_bytes call per id.
// Any thread; aborts if the CSPRNG fails, since no id may ever be guessable.
#pragma once

#include <cstddef>
#include <string>

namespace flowd {

void RandomBytes(void* out, size_t n);

// A UUID version 4 in its canonical lower-case text form.
std::string NewUuidV4();

// True for a canonical lower-case UUID v4 text, the only flow and run ids flowd issues.
bool IsUuid(std::string_view s);

}  // namespace flowd
