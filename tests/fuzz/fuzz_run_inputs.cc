// Fuzzes the run request body: DecodeRunRequest on any bytes, against one fixed flow with a
// required input (`topic`), an optional one (`tone`, default "neutral"), an optional URL
// input (`link`, is_file_url) feeding a merger-prompt, and an api-output.
//
// Properties:
//   - a refusal always names one of the documented codes;
//   - an accepted body names each input once, only inputs the flow has, every required one,
//     and a URL input only as an http(s) string;
//   - the stored record round-trips: EncodeRecord then DecodeRecord gives back the inputs
//     (names, kinds and texts, in order) and run_options.save exactly.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "flow/flow.h"
#include "flow/inputs.h"
#include "flow/run.h"
#include "fuzz_check.h"

namespace {

// The scheme, compared without case (RFC 3986 3.1), written apart from net::ParseHttpUrl.
bool HasHttpScheme(std::string_view s) {
  auto lower = [](std::string_view p) {
    std::string out(p);
    for (char& c : out) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    return out;
  };
  return lower(s.substr(0, 7)) == "http://" || lower(s.substr(0, 8)) == "https://";
}

using flowd::fuzz::Check;

constexpr const char* kFlow = R"([
  {"name": "intopic01#api-input", "processorType": "api-input", "inputs": [],
   "api_input_name": "topic"},
  {"name": "intone001#api-input", "processorType": "api-input", "inputs": [],
   "api_input_name": "tone", "default_value": "neutral"},
  {"name": "inlink001#api-input", "processorType": "api-input", "inputs": [],
   "api_input_name": "link", "default_value": "https://example.com/", "is_file_url": true},
  {"name": "merge0001#merger-prompt", "processorType": "merger-prompt",
   "inputs": [
     {"inputName": "input-1", "inputNode": "intopic01#api-input", "inputNodeOutputKey": 0},
     {"inputName": "input-2", "inputNode": "intone001#api-input", "inputNodeOutputKey": 0},
     {"inputName": "input-3", "inputNode": "inlink001#api-input", "inputNodeOutputKey": 0}],
   "prompt": "Topic: ${input-1} / Tone: ${input-2} / Link: ${input-3}",
   "config": {"inputNames": ["input-1", "input-2", "input-3"]}},
  {"name": "outtext01#api-output", "processorType": "api-output",
   "inputs": [{"inputNode": "merge0001#merger-prompt", "inputNodeOutputKey": 0}],
   "api_output_name": "text"}
])";

std::shared_ptr<const flowd::flow::Flow> ParseFixedFlow() {
  std::string text = kFlow;
  flowd::Error error;
  auto flow = flowd::flow::ParseFlow(text, error);
  Check(flow != nullptr, "the fixed flow does not parse");
  Check(flow->inputs.size() == 3, "the fixed flow does not have three inputs");
  return flow;
}

bool IsDocumentedCode(const std::string& code) {
  return code == "invalid_json" || code == "invalid_body" || code == "unknown_input" || code == "missing_input" ||
         code == "invalid_input";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto flow = ParseFixedFlow();

  std::string body(reinterpret_cast<const char*>(data), size);
  flowd::flow::RunRecord rec;
  if (auto error = flowd::flow::DecodeRunRequest(*flow, body, rec)) {
    Check(IsDocumentedCode(error->code), "DecodeRunRequest refused with an undocumented code");
    return 0;
  }

  for (size_t i = 0; i < rec.inputs.size(); ++i) {
    const auto& [name, value] = rec.inputs[i];
    const auto* in = flow->FindInput(name);
    Check(in != nullptr, "an accepted body holds an input the flow does not have");
    for (size_t j = 0; j < i; ++j) Check(rec.inputs[j].first != name, "an accepted body names an input twice");
    if (in->is_file_url) {
      Check(value.kind == flowd::Value::Kind::kString && HasHttpScheme(value.text),
            "an accepted URL input is not an http(s) string");
    }
  }
  for (const auto& in : flow->inputs) {
    if (in.default_value) continue;
    bool given = false;
    for (const auto& [name, _] : rec.inputs) given = given || name == in.name;
    Check(given, "an accepted body lacks a required input");
  }

  rec.run_id = "5f0c8a8e-2a57-4c4e-9f6e-3d1b8f7a0c11";
  rec.flow_id = "0b7c5d1e-9a3f-4e2b-8c6d-7f1a2b3c4d5e";
  rec.account = "fuzz";
  rec.flow_version = 1;
  rec.created_at = 1700000000000;
  rec.nodes_total = static_cast<uint32_t>(flow->nodes.size());
  std::string stored = flowd::flow::EncodeRecord(rec);

  flowd::flow::RunRecord back;
  back.save = !rec.save;  // so that a lost "save" shows
  Check(flowd::flow::DecodeRecord(stored, back), "DecodeRecord refused what EncodeRecord wrote");
  Check(back.inputs == rec.inputs, "the stored inputs do not round-trip");
  Check(back.save == rec.save, "run_options.save does not round-trip");
  Check(back.run_id == rec.run_id && back.flow_id == rec.flow_id && back.flow_version == rec.flow_version,
        "the stored record's ids do not round-trip");
  Check(flowd::flow::EncodeRecord(back) == stored, "re-encoding a decoded record gives different text");
  return 0;
}
