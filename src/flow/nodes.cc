#include "flow/nodes.h"

#include <array>

namespace flowd::flow {
namespace {

// Every node kind flowd accepts. A kind joins this table only when it runs.
const std::array<NodeKind, 6> kKinds = {{
    {"api-input", "", {"api_input_name"}},
    {"api-output", "input", {"api_output_name"}},
    {"input-text", "", {}},
    {"transition", "input", {}},
    {"display", "input", {}},
    {"merger-prompt", kPrimaryInputNames, {}},
}};

}  // namespace

const NodeKind* FindKind(std::string_view type) {
  for (const auto& k : kKinds) {
    if (k.type == type) return &k;
  }
  return nullptr;
}

const Value* NodeInputs::Get(std::string_view field) const {
  // The last edge into a field wins, as in AI-Flow.
  for (size_t i = node_.edges.size(); i-- > 0;) {
    if (node_.edges[i].field == field && wired_[i]) return wired_[i];
  }
  return node_.Field(field);
}

std::string NodeInputs::Text(std::string_view field, std::string_view fallback) const {
  const Value* v = Get(field);
  if (!v || v->kind == Value::Kind::kNull) return std::string(fallback);
  return v->AsText();
}

std::string RenderTemplate(std::string_view prompt, const std::vector<std::string>& values) {
  static constexpr std::string_view kOpen = "${input-";
  std::string out;
  out.reserve(prompt.size());
  size_t i = 0;
  while (i < prompt.size()) {
    size_t at = prompt.find(kOpen, i);
    if (at == std::string_view::npos) break;
    size_t digits = at + kOpen.size(), end = digits;
    while (end < prompt.size() && end - digits < 6 && prompt[end] >= '0' && prompt[end] <= '9') ++end;
    size_t index = 0;
    bool ok = end > digits && end < prompt.size() && prompt[end] == '}' && prompt[digits] != '0';
    if (ok) {
      index = std::stoul(std::string(prompt.substr(digits, end - digits)));
      ok = index >= 1 && index <= values.size();
    }
    if (!ok) {
      out.append(prompt.substr(i, digits - i));
      i = digits;
      continue;
    }
    out.append(prompt.substr(i, at - i));
    out.append(values[index - 1]);
    i = end + 1;
  }
  out.append(prompt.substr(i));
  return out;
}

Value RunLocalNode(const Node& node, const NodeInputs& in, const Value* run_input) {
  const std::string& t = node.type;
  if (t == "api-input") {
    if (run_input) return *run_input;
    const Value* d = node.Field("default_value");
    return d ? *d : Value::String("");
  }
  if (t == "input-text") return Value::String(in.Text("inputText"));
  if (t == "api-output" || t == "transition" || t == "display") {
    const Value* v = in.Get("input");
    return v ? *v : Value{};
  }
  if (t == "merger-prompt") {
    std::vector<std::string> values;
    values.reserve(node.input_names.size());
    for (const auto& name : node.input_names) values.push_back(in.Text(name));
    return Value::String(RenderTemplate(in.Text("prompt"), values));
  }
  return Value{};
}

}  // namespace flowd::flow
