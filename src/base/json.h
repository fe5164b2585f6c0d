// JSON helpers shared by every module: a compact writer, and a reader that turns any
// JSON value parsed by simdjson into a flowd::Value (its compact text).
//
// Value is how the engine, the store and the HTTP handlers pass JSON around: a string is
// kept decoded (so a text field receives its characters), everything else is kept as
// compact JSON text. Numbers keep the digits the client wrote, so integers beyond 64 bits
// are never rounded. All functions here are pure and safe to call from any thread.
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <charconv>
#include <string>
#include <string_view>

namespace flowd {

// Appends `s` as a quoted JSON string: control characters, '"' and '\\' are escaped,
// well-formed UTF-8 is written as is, and each byte that is not part of one becomes U+FFFD.
// The result is valid JSON in UTF-8 whatever `s` holds (a log field, an HTTP body).
void AppendJsonString(std::string& out, std::string_view s);

struct Value {
  enum class Kind : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  std::string text = "null";  // decoded characters for kString, compact JSON otherwise

  static Value String(std::string s) { return {Kind::kString, std::move(s)}; }
  // What a text field receives: the characters of a string, the JSON text of the rest.
  const std::string& AsText() const { return text; }
  void AppendJson(std::string& out) const;
  std::string ToJson() const;
  bool operator==(const Value&) const = default;
};

// Why a JSON document was refused. kTooDeep and kDuplicateKey are distinct so that
// callers can name them; both are client errors.
enum class JsonError { kNone, kSyntax, kTooDeep, kDuplicateKey };

// Nesting allowed in any document flowd reads (request bodies and flows). Deeper input is
// refused, so nothing downstream (rendering, storage, webhooks) recurses without bound.
inline constexpr int kMaxJsonDepth = 128;

const char* JsonErrorMessage(JsonError e);

// Reads one value, validating all of it (syntax, numbers, duplicate keys at every level).
// `depth` is the nesting level of `v` itself (1 for a top-level value).
JsonError ReadValue(simdjson::ondemand::value v, int depth, Value& out);

// Checks that nothing but whitespace follows the top-level value.
bool AtEnd(simdjson::ondemand::document& doc);

// A body buffer with simdjson's padding, without copying when capacity allows.
simdjson::padded_string_view Padded(std::string& body);

// Minimal streaming writer; it trusts the caller to nest correctly.
class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}
  JsonWriter& BeginObject() { Sep(); out_ += '{'; first_ = true; return *this; }
  JsonWriter& EndObject() { out_ += '}'; first_ = false; return *this; }
  JsonWriter& BeginArray() { Sep(); out_ += '['; first_ = true; return *this; }
  JsonWriter& EndArray() { out_ += ']'; first_ = false; return *this; }
  JsonWriter& Key(std::string_view k) {
    Sep();
    AppendJsonString(out_, k);
    out_ += ':';
    first_ = true;  // the value that follows takes no comma
    return *this;
  }
  JsonWriter& String(std::string_view s) { Sep(); AppendJsonString(out_, s); return *this; }
  JsonWriter& Int(int64_t v) {
    Sep();
    char buf[24];
    out_.append(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
    return *this;
  }
  JsonWriter& Bool(bool b) { Sep(); out_ += b ? "true" : "false"; return *this; }
  JsonWriter& Null() { Sep(); out_ += "null"; return *this; }
  JsonWriter& Raw(std::string_view json) { Sep(); out_ += json; return *this; }
  JsonWriter& Val(const Value& v) { Sep(); v.AppendJson(out_); return *this; }

 private:
  void Sep() {
    if (!first_) out_ += ',';
    first_ = false;
  }
  std::string& out_;
  bool first_ = true;
};

}  // namespace flowd
