#include "net/http_message.h"

#include "base/json.h"

namespace flowd::net {
namespace http = boost::beast::http;

Response JsonResponse(unsigned status, std::string body) {
  Response res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, "application/json");
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

Response ErrorResponse(unsigned status, const Error& error) {
  std::string body;
  JsonWriter w(body);
  w.BeginObject().Key("error").BeginObject();
  w.Key("code").String(error.code).Key("message").String(error.message);
  if (!error.field.empty()) w.Key("field").String(error.field);
  if (!error.details.empty()) {
    w.Key("details").BeginArray();
    for (const auto& p : error.details) {
      w.BeginObject().Key("node").String(p.node).Key("field").String(p.field).Key("problem").String(p.problem).EndObject();
    }
    w.EndArray();
  }
  w.EndObject().EndObject();
  return JsonResponse(status, std::move(body));
}

Response ErrorResponse(unsigned status, std::string_view code, std::string_view message) {
  return ErrorResponse(status, Error{std::string(code), std::string(message), "", {}});
}

}  // namespace flowd::net
