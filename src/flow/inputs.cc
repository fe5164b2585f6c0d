#include "flow/inputs.h"

#include <simdjson.h>

#include <algorithm>

#include "net/url.h"

namespace flowd::flow {
namespace ondemand = simdjson::ondemand;

namespace {

Error Invalid(std::string code, std::string message, std::string field = "") {
  return Error{std::move(code), std::move(message), std::move(field), {}};
}

std::optional<Error> DecodeOptions(ondemand::value v, RunRecord& rec) {
  ondemand::object obj;
  if (v.get_object().get(obj)) return Invalid("invalid_body", "run_options must be an object.", "run_options");
  std::vector<std::string> seen;
  for (auto f : obj) {
    std::string_view k;
    ondemand::value fv;
    if (f.unescaped_key().get(k) || f.value().get(fv)) return Invalid("invalid_json", "The body is not valid JSON.");
    if (std::find(seen.begin(), seen.end(), k) != seen.end())
      return Invalid("invalid_json", JsonErrorMessage(JsonError::kDuplicateKey));
    seen.emplace_back(k);
    if (k == "save") {
      bool b;
      if (fv.get_bool().get(b)) return Invalid("invalid_body", "run_options.save must be a boolean.", "run_options.save");
      rec.save = b;
    } else if (k == "global_webhook") {
      ondemand::object hook;
      if (fv.get_object().get(hook)) {
        return Invalid("invalid_body", "run_options.global_webhook must be an object.", "run_options.global_webhook");
      }
      std::vector<std::string> hook_keys;
      for (auto hf : hook) {
        std::string_view hk, hv;
        if (hf.unescaped_key().get(hk)) return Invalid("invalid_json", "The body is not valid JSON.");
        if (std::find(hook_keys.begin(), hook_keys.end(), hk) != hook_keys.end())
          return Invalid("invalid_json", JsonErrorMessage(JsonError::kDuplicateKey));
        hook_keys.emplace_back(hk);
        if ((hk != "url" && hk != "signature") || hf.value().get_string().get(hv)) {
          return Invalid("invalid_body", "run_options.global_webhook takes a string url and an optional string signature.",
                         "run_options.global_webhook");
        }
        (hk == "url" ? rec.global_webhook_url : rec.global_webhook_signature) = std::string(hv);
      }
      if (!net::IsHeaderValue(rec.global_webhook_signature)) {
        return Invalid("invalid_body", "run_options.global_webhook.signature must not hold line breaks or controls.",
                       "run_options.global_webhook.signature");
      }
      if (!net::ParseHttpUrl(rec.global_webhook_url)) {
        return Invalid("invalid_body", "run_options.global_webhook.url must be an http(s) URL.",
                       "run_options.global_webhook.url");
      }
    } else {
      return Invalid("invalid_body", "run_options has no option named \"" + std::string(k) + "\".",
                     "run_options." + std::string(k));
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<Error> DecodeRunRequest(const Flow& flow, std::string& body, RunRecord& rec) {
  bool blank = std::all_of(body.begin(), body.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
  if (!blank) {
    thread_local ondemand::parser parser;
    ondemand::document doc;
    ondemand::json_type type;
    if (parser.iterate(Padded(body)).get(doc) || doc.type().get(type)) {
      return Invalid("invalid_json", "The body is not valid JSON.");
    }
    if (type != ondemand::json_type::object) {
      // Still insist on valid JSON before calling it the wrong shape.
      ondemand::value v;
      Value ignored;
      if (type == ondemand::json_type::array && (doc.get_value().get(v) || ReadValue(v, 1, ignored) != JsonError::kNone)) {
        return Invalid("invalid_json", "The body is not valid JSON.");
      }
      return Invalid("invalid_body", "The body must be a JSON object of named inputs.");
    }
    ondemand::object obj;
    if (doc.get_object().get(obj)) return Invalid("invalid_json", "The body is not valid JSON.");
    bool options_seen = false;
    for (auto f : obj) {
      std::string_view key;
      ondemand::value v;
      if (f.unescaped_key().get(key) || f.value().get(v)) return Invalid("invalid_json", "The body is not valid JSON.");
      if (key == "run_options") {
        if (options_seen) return Invalid("invalid_json", JsonErrorMessage(JsonError::kDuplicateKey));
        options_seen = true;
        if (auto e = DecodeOptions(v, rec)) return e;
        continue;
      }
      const ApiInput* in = flow.FindInput(key);
      if (!in) return Invalid("unknown_input", "The flow has no input named \"" + std::string(key) + "\".", std::string(key));
      for (const auto& [name, _] : rec.inputs) {
        if (name == key) return Invalid("invalid_json", JsonErrorMessage(JsonError::kDuplicateKey));
      }
      Value value;
      JsonError je = ReadValue(v, 2, value);
      if (je == JsonError::kTooDeep) {
        return Invalid("invalid_input", "Input \"" + std::string(key) + "\" nests deeper than 128 levels.", std::string(key));
      }
      if (je != JsonError::kNone) return Invalid("invalid_json", JsonErrorMessage(je));
      if (in->is_file_url && (value.kind != Value::Kind::kString || !net::ParseHttpUrl(value.text))) {
        return Invalid("invalid_input", "Input \"" + std::string(key) + "\" must be an http(s) URL.", std::string(key));
      }
      rec.inputs.emplace_back(std::string(key), std::move(value));
    }
    if (!AtEnd(doc)) return Invalid("invalid_json", "The body is not valid JSON.");
  }
  Error missing{"missing_input", "", "", {}};
  for (const auto& in : flow.inputs) {
    if (in.default_value) continue;
    bool given = std::any_of(rec.inputs.begin(), rec.inputs.end(), [&](const auto& p) { return p.first == in.name; });
    if (!given) missing.details.push_back({flow.nodes[in.node].name, in.name, "missing_input"});
  }
  if (!missing.details.empty()) {
    missing.field = missing.details.front().field;
    missing.message = "Input \"" + missing.field + "\" is required.";
    return missing;
  }
  return std::nullopt;
}

}  // namespace flowd::flow
