// The API Builder view of a saved flow (GET /v1/flow/{id}/api): its inputs with their
// defaults, its outputs with the node that feeds each, its webhooks, and complete client
// programs (curl, Python, JavaScript) that start a run with the defaults and poll it to
// the end. The key never appears in a snippet: they read FLOWD_API_KEY. Pure; any thread.
#pragma once

#include <string>
#include <string_view>

#include "flow/catalog.h"

namespace flowd::api {

// `base_url` is where the caller reached this server, e.g. "http://127.0.0.1:8080".
std::string RenderApiView(const flow::SavedFlow& saved, std::string_view base_url);

}  // namespace flowd::api
