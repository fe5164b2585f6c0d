// Decoding the body of POST /v1/flow/{id}/run against a flow's API inputs: every client
// mistake becomes an Error (invalid_json, invalid_body, unknown_input, missing_input,
// invalid_input) before anything is stored. Pure; any thread.
#pragma once

#include <optional>
#include <string>

#include "base/error.h"
#include "flow/flow.h"
#include "flow/run.h"

namespace flowd::flow {

// Fills rec.inputs and rec.save. `body` gets simdjson padding in its capacity.
std::optional<Error> DecodeRunRequest(const Flow& flow, std::string& body, RunRecord& rec);

}  // namespace flowd::flow
