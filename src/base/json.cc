#include "base/json.h"

#include <algorithm>
#include <array>
#include <vector>

namespace flowd {
namespace ondemand = simdjson::ondemand;

namespace {
// The bytes a JSON string cannot hold as they are: controls, '"' and '\\'.
constexpr auto kEscape = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) t[c] = true;
  t['"'] = t['\\'] = true;
  return t;
}();
// Those, and every non-ASCII byte: what sends a string off the fast path.
constexpr auto kLook = [] {
  std::array<bool, 256> t = kEscape;
  for (int c = 0x80; c < 0x100; ++c) t[c] = true;
  return t;
}();

// The length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlongs, no
// surrogates, nothing past U+10FFFF), or 0.
size_t Utf8Sequence(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return at(k) >= lo && at(k) <= hi; };
  const unsigned c = at(0);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const bool second = c == 0xE0 ? cont(1, 0xA0) : c == 0xED ? cont(1, 0x80, 0x9F) : cont(1);
    return second && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const bool second = c == 0xF0 ? cont(1, 0x90) : c == 0xF4 ? cont(1, 0x80, 0x8F) : cont(1);
    return second && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}
}  // namespace

void AppendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  size_t i = 0;
  while (i < s.size() && !kLook[static_cast<unsigned char>(s[i])]) ++i;
  if (i == s.size()) {  // the common case: one append of the whole string and its quotes
    const size_t at = out.size();
    out.resize(at + s.size() + 2);
    char* p = out.data() + at;
    *p = '"';
    s.copy(p + 1, s.size());
    p[s.size() + 1] = '"';
    return;
  }
  out += '"';
  size_t run = 0;  // start of the current stretch that needs no escaping
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      // Well-formed UTF-8 passes as it is; anything else becomes U+FFFD, so that every
      // JSON text flowd writes is valid UTF-8 whatever the bytes came from.
      if (const size_t n = Utf8Sequence(s, i)) {
        i += n;
        continue;
      }
      out.append(s.data() + run, i - run);
      out += "\xEF\xBF\xBD";
      run = ++i;
      continue;
    }
    if (!kEscape[c]) {
      ++i;
      continue;
    }
    out.append(s.data() + run, i - run);
    run = ++i;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

void Value::AppendJson(std::string& out) const {
  if (kind == Kind::kString) {
    AppendJsonString(out, text);
  } else {
    out += text;
  }
}

std::string Value::ToJson() const {
  std::string out;
  AppendJson(out);
  return out;
}

const char* JsonErrorMessage(JsonError e) {
  switch (e) {
    case JsonError::kNone: return "ok";
    case JsonError::kSyntax: return "the body is not valid JSON";
    case JsonError::kTooDeep: return "the JSON nests deeper than 128 levels";
    case JsonError::kDuplicateKey: return "the JSON repeats a key within one object";
  }
  return "invalid JSON";
}

namespace {

// RFC 8259 number grammar; simdjson only checks a number when it is converted, and we
// keep the text instead.
bool IsJsonNumber(std::string_view s) {
  size_t i = 0, n = s.size();
  auto digits = [&] {
    size_t start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    return i > start;
  };
  if (i < n && s[i] == '-') ++i;
  if (i < n && s[i] == '0') {
    ++i;
  } else if (!digits()) {
    return false;
  }
  if (i < n && s[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == n;
}

std::string_view TrimRight(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

JsonError Compact(ondemand::value v, int depth, std::string& out);

JsonError CompactObject(ondemand::object obj, int depth, std::string& out) {
  std::vector<std::string> keys;
  out += '{';
  bool first = true;
  for (auto field : obj) {
    std::string_view key;
    if (field.error() || field.unescaped_key().get(key)) return JsonError::kSyntax;
    keys.emplace_back(key);
    if (!first) out += ',';
    first = false;
    AppendJsonString(out, key);
    out += ':';
    ondemand::value child;
    if (field.value().get(child)) return JsonError::kSyntax;
    if (auto e = Compact(child, depth + 1, out); e != JsonError::kNone) return e;
  }
  out += '}';
  std::sort(keys.begin(), keys.end());
  if (std::adjacent_find(keys.begin(), keys.end()) != keys.end()) return JsonError::kDuplicateKey;
  return JsonError::kNone;
}

JsonError Compact(ondemand::value v, int depth, std::string& out) {
  if (depth > kMaxJsonDepth) return JsonError::kTooDeep;
  ondemand::json_type type;
  if (v.type().get(type)) return JsonError::kSyntax;
  switch (type) {
    case ondemand::json_type::object: {
      ondemand::object obj;
      if (v.get_object().get(obj)) return JsonError::kSyntax;
      return CompactObject(obj, depth, out);
    }
    case ondemand::json_type::array: {
      ondemand::array arr;
      if (v.get_array().get(arr)) return JsonError::kSyntax;
      out += '[';
      bool first = true;
      for (auto el : arr) {
        ondemand::value child;
        if (el.get(child)) return JsonError::kSyntax;
        if (!first) out += ',';
        first = false;
        if (auto e = Compact(child, depth + 1, out); e != JsonError::kNone) return e;
      }
      out += ']';
      return JsonError::kNone;
    }
    case ondemand::json_type::string: {
      std::string_view s;
      if (v.get_string().get(s)) return JsonError::kSyntax;
      AppendJsonString(out, s);
      return JsonError::kNone;
    }
    case ondemand::json_type::number: {
      std::string_view token = TrimRight(v.raw_json_token());
      if (!IsJsonNumber(token)) return JsonError::kSyntax;
      out += token;
      return JsonError::kNone;
    }
    case ondemand::json_type::boolean: {
      bool b;
      if (v.get_bool().get(b)) return JsonError::kSyntax;
      out += b ? "true" : "false";
      return JsonError::kNone;
    }
    case ondemand::json_type::null: {
      bool is_null = false;
      if (v.is_null().get(is_null) || !is_null) return JsonError::kSyntax;
      out += "null";
      return JsonError::kNone;
    }
  }
  return JsonError::kSyntax;
}

}  // namespace

JsonError ReadValue(ondemand::value v, int depth, Value& out) {
  ondemand::json_type type;
  if (v.type().get(type)) return JsonError::kSyntax;
  if (type == ondemand::json_type::string) {
    std::string_view s;
    if (v.get_string().get(s)) return JsonError::kSyntax;
    out = Value::String(std::string(s));
    return JsonError::kNone;
  }
  out.text.clear();
  switch (type) {
    case ondemand::json_type::object: out.kind = Value::Kind::kObject; break;
    case ondemand::json_type::array: out.kind = Value::Kind::kArray; break;
    case ondemand::json_type::number: out.kind = Value::Kind::kNumber; break;
    case ondemand::json_type::boolean: out.kind = Value::Kind::kBool; break;
    default: out.kind = Value::Kind::kNull; break;
  }
  return Compact(v, depth, out.text);
}

bool AtEnd(ondemand::document& doc) {
  return doc.current_location().error() == simdjson::OUT_OF_BOUNDS;
}

simdjson::padded_string_view Padded(std::string& body) {
  if (body.capacity() < body.size() + simdjson::SIMDJSON_PADDING) {
    body.reserve(body.size() + simdjson::SIMDJSON_PADDING);
  }
  return simdjson::padded_string_view(body.data(), body.size(), body.capacity());
}

}  // namespace flowd
