#include <catch2/catch.hpp>

#include "base/clock.h"
#include "base/ids.h"
#include "base/json.h"

using namespace flowd;
namespace ondemand = simdjson::ondemand;

namespace {

// Reads `text` as one document; returns the error and fills `out`.
JsonError Read(std::string text, Value& out) {
  ondemand::parser parser;
  ondemand::document doc;
  ondemand::value v;
  auto padded = Padded(text);
  if (parser.iterate(padded).get(doc)) return JsonError::kSyntax;
  ondemand::json_type t;
  if (doc.type().get(t)) return JsonError::kSyntax;
  if (t != ondemand::json_type::array && t != ondemand::json_type::object) {
    // Scalars at the root are read through a wrapping array.
    return Read("[" + text + "]", out);
  }
  if (doc.get_value().get(v)) return JsonError::kSyntax;
  auto e = ReadValue(v, 1, out);
  if (e == JsonError::kNone && !AtEnd(doc)) return JsonError::kSyntax;
  return e;
}

}  // namespace

TEST_CASE("json: strings are escaped so that any parser reads them back") {
  std::string out;
  AppendJsonString(out, std::string("a\"b\\c\n\t\x01\x1f", 9) + std::string(1, '\0') + "é👋\u2028");
  CHECK(out == "\"a\\\"b\\\\c\\n\\t\\u0001\\u001f\\u0000é👋\u2028\"");
}

TEST_CASE("json: bytes that are not UTF-8 become U+FFFD, so the text stays valid JSON") {
  auto quoted = [](std::string_view s) {
    std::string out;
    AppendJsonString(out, s);
    return out;
  };
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  CHECK(quoted("a\xFF" "b") == "\"a" + r + "b\"");
  CHECK(quoted("\xC3") == "\"" + r + "\"");                      // a sequence cut short
  CHECK(quoted("\xC0\xAF") == "\"" + r + r + "\"");             // an overlong '/'
  CHECK(quoted("\xED\xA0\x80") == "\"" + r + r + r + "\"");   // a UTF-16 surrogate
  CHECK(quoted("\xF4\x90\x80\x80") == "\"" + r + r + r + r + "\"");  // past U+10FFFF
  CHECK(quoted("\xF0\x9F\x91\x8B\"\x80") == "\"\xF0\x9F\x91\x8B\\\"" + r + "\"");  // 👋, quote, stray byte
}

TEST_CASE("json: values are kept compact, numbers keep their digits") {
  Value v;
  REQUIRE(Read(R"([ 1 , {"a" : [true,null, "x\u0041"]}, 18446744073709551616, -0, 1E2, 0.1 ])", v) == JsonError::kNone);
  CHECK(v.kind == Value::Kind::kArray);
  CHECK(v.text == R"([1,{"a":[true,null,"xA"]},18446744073709551616,-0,1E2,0.1])");
}

TEST_CASE("json: duplicate keys are refused at every level, also when escaped") {
  Value v;
  CHECK(Read(R"({"a":1,"a":2})", v) == JsonError::kDuplicateKey);
  CHECK(Read(R"({"x":{"t\u006fpic":1,"topic":2}})", v) == JsonError::kDuplicateKey);
  CHECK(Read(R"({"a":1,"b":{"a":2}})", v) == JsonError::kNone);
}

TEST_CASE("json: nesting beyond the cap is refused without recursion trouble") {
  Value v;
  CHECK(Read(std::string(100000, '[') + std::string(100000, ']'), v) == JsonError::kTooDeep);
  CHECK(Read(std::string(127, '[') + std::string(127, ']'), v) == JsonError::kNone);
}

TEST_CASE("json: malformed documents are syntax errors") {
  Value v;
  CHECK(Read("[1,]", v) == JsonError::kSyntax);
  CHECK(Read("[01]", v) == JsonError::kSyntax);
  CHECK(Read("[1] x", v) == JsonError::kSyntax);
  CHECK(Read("[\"abc]", v) == JsonError::kSyntax);
  CHECK(Read("[tru]", v) == JsonError::kSyntax);
}

TEST_CASE("json: the writer nests and separates") {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("a").Int(1).Key("b").BeginArray().String("x").Null().Bool(true).EndArray();
  w.Key("c").BeginObject().EndObject().EndObject();
  CHECK(out == R"({"a":1,"b":["x",null,true],"c":{}})");
}

TEST_CASE("clock: RFC 3339 with milliseconds, and durations") {
  CHECK(FormatTime(0) == "1970-01-01T00:00:00.000Z");
  CHECK(FormatTime(1796320451123) == "2026-12-03T17:54:11.123Z");
  CHECK(FormatTime(951782400000) == "2000-02-29T00:00:00.000Z");
  CHECK(FormatTime(1704067199999) == "2023-12-31T23:59:59.999Z");
  CHECK(FormatTime(4102444800001) == "2100-01-01T00:00:00.001Z");
  CHECK(ParseDurationMs("48h") == 48 * 3600 * 1000);
  CHECK(ParseDurationMs("1500ms") == 1500);
  CHECK(ParseDurationMs("10s") == 10000);
  CHECK_FALSE(ParseDurationMs("ten"));
  CHECK_FALSE(ParseDurationMs("-1s"));
}

TEST_CASE("ids: UUID v4 form and uniqueness") {
  std::string a = NewUuidV4(), b = NewUuidV4();
  CHECK(IsUuid(a));
  CHECK(a != b);
  CHECK(a[14] == '4');
  CHECK((a[19] == '8' || a[19] == '9' || a[19] == 'a' || a[19] == 'b'));
  CHECK_FALSE(IsUuid("../../etc"));
  CHECK_FALSE(IsUuid(std::string(36, 'a')));
}
