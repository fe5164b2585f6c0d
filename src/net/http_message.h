// The HTTP message types flowd's server speaks, and the JSON error shape every 4xx/5xx
// carries ({"error": {"code", "message", ...}}). Pure helpers; any thread.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <string>
#include <string_view>

#include "base/error.h"

namespace flowd::net {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;

// A response with a JSON body; sets Content-Type and Content-Length.
Response JsonResponse(unsigned status, std::string body);

// The error shape of API.md.
Response ErrorResponse(unsigned status, const Error& error);
Response ErrorResponse(unsigned status, std::string_view code, std::string_view message);

}  // namespace flowd::net
