// Fuzzes the JSON helpers of base/json.h on any bytes.
//
// Properties:
//   - AppendJsonString: for any bytes, the text it writes is one JSON string that simdjson
//     (which checks UTF-8) reads, with nothing after it; for valid UTF-8 it reads back to
//     exactly the same bytes;
//   - ReadValue: when it accepts a document, its compact text is accepted again and compacts
//     to itself (the store and GET hand out that text, so it must be stable), with the same
//     kind. A scalar at the root is read inside "[...]", as flowd only ever hands ReadValue
//     values that sit inside an array or object.
#include <simdjson.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/json.h"
#include "fuzz_check.h"

namespace {

namespace ondemand = simdjson::ondemand;
using flowd::JsonError;
using flowd::Value;
using flowd::fuzz::Check;

void CheckStringRoundTrip(std::string_view bytes) {
  const bool utf8 = simdjson::validate_utf8(bytes.data(), bytes.size());
  std::string quoted;
  flowd::AppendJsonString(quoted, bytes);

  ondemand::parser parser;
  ondemand::document doc;
  std::string_view back;
  auto padded = flowd::Padded(quoted);
  Check(!parser.iterate(padded).get(doc), "AppendJsonString wrote text simdjson cannot iterate");
  Check(!doc.get_string().get(back), "AppendJsonString wrote text that is not a JSON string");
  Check(!utf8 || back == bytes, "AppendJsonString's text reads back as different bytes");
  Check(flowd::AtEnd(doc), "AppendJsonString wrote something after the string");
}

// Reads `text` as one document with ReadValue; kSyntax also for trailing content.
JsonError ReadDocument(std::string text, Value& out, bool& wrapped) {
  ondemand::parser parser;
  ondemand::document doc;
  ondemand::json_type type;
  if (parser.iterate(flowd::Padded(text)).get(doc) || doc.type().get(type)) return JsonError::kSyntax;
  if (type != ondemand::json_type::array && type != ondemand::json_type::object) {
    if (wrapped) return JsonError::kSyntax;
    wrapped = true;
    return ReadDocument("[" + text + "]", out, wrapped);
  }
  ondemand::value v;
  if (doc.get_value().get(v)) return JsonError::kSyntax;
  JsonError e = flowd::ReadValue(v, 1, out);
  if (e == JsonError::kNone && !flowd::AtEnd(doc)) return JsonError::kSyntax;
  return e;
}

void CheckCompactIsStable(std::string_view bytes) {
  Value first;
  bool wrapped = false;
  if (ReadDocument(std::string(bytes), first, wrapped) != JsonError::kNone) return;

  std::string compact = first.ToJson();
  Value second;
  bool rewrapped = false;
  Check(ReadDocument(compact, second, rewrapped) == JsonError::kNone, "ReadValue refused its own compact text");
  Check(!rewrapped, "ReadValue's compact text of a container is not a container");
  Check(second == first, "ReadValue's compact text does not compact to itself");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckStringRoundTrip(bytes);
  CheckCompactIsStable(bytes);
  return 0;
}
