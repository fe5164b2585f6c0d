#include "flow/flow.h"

#include <simdjson.h>

#include <unordered_map>

#include "flow/nodes.h"
#include "net/url.h"

namespace flowd::flow {
namespace ondemand = simdjson::ondemand;

const Value* Node::Field(std::string_view field) const {
  for (const auto& [k, v] : fields) {
    if (k == field) return &v;
  }
  return nullptr;
}

const ApiInput* Flow::FindInput(std::string_view name) const {
  for (const auto& in : inputs) {
    if (in.name == name) return &in;
  }
  return nullptr;
}

namespace {

struct RawEdge {
  std::string input_name;
  std::string input_node;
  int64_t output = 0;
  bool output_ok = true;
};

struct RawNode {
  Node node;
  std::vector<RawEdge> edges;
};

void Add(std::vector<Problem>& problems, std::string node, std::string field, std::string problem) {
  problems.push_back({std::move(node), std::move(field), std::move(problem)});
}

// Reads the structure of one node out of already-validated JSON.
bool ReadNode(ondemand::object obj, size_t index, RawNode& raw, std::vector<Problem>& problems) {
  Node& n = raw.node;
  std::string label = "#" + std::to_string(index);
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return false;
    ondemand::value v;
    if (field.value().get(v)) return false;
    if (key == "name" || key == "processorType") {
      std::string_view s;
      if (v.get_string().get(s)) {
        Add(problems, label, std::string(key), "must be a string");
        continue;
      }
      (key == "name" ? n.name : n.type) = std::string(s);
    } else if (key == "inputs") {
      ondemand::array arr;
      if (v.get_array().get(arr)) {
        Add(problems, label, "inputs", "must be an array");
        continue;
      }
      for (auto item : arr) {
        ondemand::object e;
        if (item.get_object().get(e)) {
          Add(problems, label, "inputs", "each input must be an object");
          continue;
        }
        RawEdge edge;
        for (auto ef : e) {
          std::string_view ek;
          if (ef.unescaped_key().get(ek)) return false;
          ondemand::value ev;
          if (ef.value().get(ev)) return false;
          std::string_view s;
          if (ek == "inputName") {
            if (!ev.get_string().get(s)) edge.input_name = std::string(s);
          } else if (ek == "inputNode") {
            if (!ev.get_string().get(s)) edge.input_node = std::string(s);
          } else if (ek == "inputNodeOutputKey") {
            int64_t k;
            if (ev.get_int64().get(k)) {
              // AI-Flow also writes the index as a string.
              if (ev.get_string().get(s) || s.empty() || s.size() > 9 ||
                  s.find_first_not_of("0123456789") != std::string_view::npos) {
                edge.output_ok = false;
              } else {
                edge.output = std::stoll(std::string(s));
              }
            } else {
              edge.output = k;
            }
          }
        }
        raw.edges.push_back(std::move(edge));
      }
    } else if (key == "config") {
      ondemand::object cfg;
      if (v.get_object().get(cfg)) continue;
      for (auto cf : cfg) {
        std::string_view ck;
        if (cf.unescaped_key().get(ck)) return false;
        if (ck != "inputNames") continue;
        ondemand::array names;
        if (cf.value().get_array().get(names)) {
          Add(problems, label, "config.inputNames", "must be an array of strings");
          continue;
        }
        for (auto nm : names) {
          std::string_view s;
          if (nm.get_string().get(s)) {
            Add(problems, label, "config.inputNames", "must be an array of strings");
            break;
          }
          n.input_names.emplace_back(s);
        }
      }
    } else {
      Value val;
      if (ReadValue(v, 3, val) != JsonError::kNone) return false;
      n.fields.emplace_back(std::string(key), std::move(val));
    }
  }
  return true;
}

std::shared_ptr<const Flow> Build(std::string name, std::string nodes_json, Error& error) {
  auto flow = std::make_shared<Flow>();
  flow->name = std::move(name);
  flow->nodes_json = std::move(nodes_json);
  std::vector<Problem> problems;

  ondemand::parser parser;
  simdjson::padded_string padded(flow->nodes_json);
  ondemand::document doc;
  ondemand::array arr;
  if (parser.iterate(padded).get(doc) || doc.get_array().get(arr)) {
    error = {"invalid_flow", "A flow is an array of nodes, or an object with a \"nodes\" array.", "nodes", {}};
    return nullptr;
  }
  std::vector<RawNode> raw;
  for (auto item : arr) {
    ondemand::object obj;
    size_t index = raw.size();
    raw.emplace_back();
    if (item.get_object().get(obj)) {
      Add(problems, "#" + std::to_string(index), "", "not_an_object");
      continue;
    }
    if (!ReadNode(obj, index, raw.back(), problems)) {
      error = {"invalid_json", "The flow is not valid JSON.", "", {}};
      return nullptr;
    }
  }
  if (raw.size() > kMaxNodes) {
    error = {"invalid_flow", "A flow may hold at most 1000 nodes.", "nodes", {}};
    return nullptr;
  }

  // Names, kinds and required fields.
  std::unordered_map<std::string, size_t> by_name;
  std::unordered_map<std::string, std::string> input_names, output_names;
  for (size_t i = 0; i < raw.size(); ++i) {
    Node& n = raw[i].node;
    std::string label = n.name.empty() ? "#" + std::to_string(i) : n.name;
    if (n.name.empty()) {
      Add(problems, label, "name", "missing_field");
    } else if (!by_name.emplace(n.name, i).second) {
      Add(problems, label, "name", "duplicate_name");
    }
    if (n.type.empty()) {
      Add(problems, label, "processorType", "missing_field");
      continue;
    }
    n.kind = FindKind(n.type);
    if (!n.kind) {
      Add(problems, label, "processorType", "unsupported_node");
      continue;
    }
    // An API name is the flow's interface: it must be a string on the node itself.
    for (std::string_view field : {"api_input_name", "api_output_name"}) {
      if (n.type != (field == "api_input_name" ? "api-input" : "api-output")) continue;
      for (const auto& e : raw[i].edges) {
        if (e.input_name == field) Add(problems, label, std::string(field), "cannot_be_wired");
      }
      const Value* v = n.Field(field);
      if (v && v->kind != Value::Kind::kString) Add(problems, label, std::string(field), "must_be_a_string");
    }
    for (auto field : n.kind->required) {
      bool wired = false;
      for (const auto& e : raw[i].edges) wired = wired || e.input_name == field;
      if (field == "api_input_name" || field == "api_output_name") wired = false;
      const Value* v = n.Field(field);
      bool empty = !v || v->kind == Value::Kind::kNull ||
                   (v->kind == Value::Kind::kString && v->text.empty());
      if (empty && !wired) Add(problems, label, std::string(field), "missing_field");
    }
    auto unique_name = [&](std::string_view field, std::unordered_map<std::string, std::string>& seen) {
      const Value* v = n.Field(field);
      if (!v || v->kind != Value::Kind::kString || v->text.empty()) return;  // reported above
      if (!seen.emplace(v->text, label).second) Add(problems, label, std::string(field), "duplicate_name");
    };
    // A URL set in the flow itself must be one the client can call; a wired one is
    // judged when its value arrives.
    if (const char* url_field = n.type == "webhook"               ? "webhook_url"
                                : n.type == "http-get-processor" ? "url"
                                                                  : nullptr) {
      const Value* url = n.Field(url_field);
      bool wired = false;
      for (const auto& e : raw[i].edges) {
        wired = wired || e.input_name == url_field || (e.input_name.empty() && n.kind->primary == url_field);
      }
      if (!wired && url && !url->text.empty() &&
          (url->kind != Value::Kind::kString || !net::ParseHttpUrl(url->text))) {
        Add(problems, label, url_field, "invalid_url");
      }
    }
    // A signature written in the flow goes into a request header as it is.
    if (n.type == "webhook") {
      const Value* sig = n.Field("ai_flow_signature_header_value");
      if (sig && sig->kind == Value::Kind::kString && !net::IsHeaderValue(sig->text)) {
        Add(problems, label, "ai_flow_signature_header_value", "invalid_header_value");
      }
    }
    if (n.type == "api-input") unique_name("api_input_name", input_names);
    if (n.type == "api-output") unique_name("api_output_name", output_names);
    if (n.kind->primary == kPrimaryInputNames && n.input_names.empty()) {
      n.input_names = {"input-1", "input-2"};
    }
  }

  // Edges.
  for (size_t i = 0; i < raw.size(); ++i) {
    Node& n = raw[i].node;
    std::string label = n.name.empty() ? "#" + std::to_string(i) : n.name;
    size_t unnamed = 0;
    for (const auto& e : raw[i].edges) {
      auto it = by_name.find(e.input_node);
      if (e.input_node.empty() || it == by_name.end()) {
        Add(problems, label, "inputs", "unknown_node");
        continue;
      }
      const Node& src = raw[it->second].node;
      uint32_t outputs = src.kind ? src.kind->outputs : 1;
      if (!e.output_ok || e.output < 0 || e.output >= outputs) {
        Add(problems, label, "inputs", "invalid_output_key");
        continue;
      }
      Edge edge{e.input_name, it->second, static_cast<uint32_t>(e.output)};
      if (edge.field.empty() && n.kind) {
        if (n.kind->primary == kPrimaryInputNames) {
          edge.field = unnamed < n.input_names.size() ? n.input_names[unnamed] : "input-" + std::to_string(unnamed + 1);
          ++unnamed;
        } else if (n.kind->primary.empty()) {
          Add(problems, label, "inputs", "no_primary_input");
          continue;
        } else {
          edge.field = n.kind->primary;
        }
      }
      n.edges.push_back(std::move(edge));
    }
  }

  // Dependency order (Kahn); whatever cannot be ordered lies on or behind a cycle.
  std::vector<size_t> order, indegree(raw.size(), 0);
  std::vector<std::vector<size_t>> dependents(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    for (const auto& e : raw[i].node.edges) {
      dependents[e.from].push_back(i);
      ++indegree[i];
    }
  }
  for (size_t i = 0; i < raw.size(); ++i) {
    if (indegree[i] == 0) order.push_back(i);
  }
  for (size_t k = 0; k < order.size(); ++k) {
    for (size_t d : dependents[order[k]]) {
      if (--indegree[d] == 0) order.push_back(d);
    }
  }
  if (order.size() != raw.size()) {
    for (size_t i = 0; i < raw.size(); ++i) {
      if (indegree[i] > 0) Add(problems, raw[i].node.name, "inputs", "cycle");
    }
  }

  if (!problems.empty()) {
    error = {"invalid_flow", "The flow has " + std::to_string(problems.size()) + " problem(s); see details.", "",
             std::move(problems)};
    return nullptr;
  }

  std::vector<size_t> position(raw.size());
  for (size_t k = 0; k < order.size(); ++k) position[order[k]] = k;
  for (size_t k = 0; k < order.size(); ++k) {
    Node n = std::move(raw[order[k]].node);
    for (auto& e : n.edges) e.from = position[e.from];
    flow->nodes.push_back(std::move(n));
  }
  for (size_t i = 0; i < flow->nodes.size(); ++i) {
    const Node& n = flow->nodes[i];
    if (n.type == "api-input") {
      ApiInput in{n.Field("api_input_name")->text, i, std::nullopt, false};
      if (const Value* d = n.Field("default_value"); d && d->kind != Value::Kind::kNull) in.default_value = *d;
      if (const Value* f = n.Field("is_file_url"); f && f->text == "true") in.is_file_url = true;
      flow->inputs.push_back(std::move(in));
    } else if (n.type == "api-output") {
      ApiOutput out{n.Field("api_output_name")->text, i, ""};
      if (!n.edges.empty()) out.source = flow->nodes[n.edges.back().from].name;
      flow->outputs.push_back(std::move(out));
    }
  }
  return flow;
}

}  // namespace

std::shared_ptr<const Flow> ParseFlow(std::string& body, Error& error) {
  ondemand::parser parser;
  ondemand::document doc;
  ondemand::json_type type;
  if (parser.iterate(Padded(body)).get(doc) || doc.type().get(type)) {
    error = {"invalid_json", "The body is not valid JSON.", "", {}};
    return nullptr;
  }
  std::string name;
  Value nodes;
  JsonError je = JsonError::kNone;
  if (type == ondemand::json_type::array) {
    ondemand::value v;
    if (doc.get_value().get(v)) {
      je = JsonError::kSyntax;
    } else {
      je = ReadValue(v, 1, nodes);
    }
  } else if (type == ondemand::json_type::object) {
    ondemand::object obj;
    if (doc.get_object().get(obj)) {
      je = JsonError::kSyntax;
    } else {
      Value whole;
      std::vector<std::string> seen;
      for (auto field : obj) {
        std::string_view key;
        ondemand::value v;
        if (field.unescaped_key().get(key) || field.value().get(v)) {
          je = JsonError::kSyntax;
          break;
        }
        Value val;
        je = ReadValue(v, 2, val);
        if (je != JsonError::kNone) break;
        for (const auto& s : seen) {
          if (s == key) je = JsonError::kDuplicateKey;
        }
        if (je != JsonError::kNone) break;
        seen.emplace_back(key);
        if (key == "name" && val.kind == Value::Kind::kString) name = val.text;
        if (key == "nodes") nodes = std::move(val);
      }
    }
  } else {
    error = {"invalid_flow", "A flow is an array of nodes, or an object with a \"nodes\" array.", "", {}};
    return nullptr;
  }
  if (je == JsonError::kNone && !AtEnd(doc)) je = JsonError::kSyntax;
  if (je != JsonError::kNone) {
    error = {"invalid_json", JsonErrorMessage(je), "", {}};
    return nullptr;
  }
  if (nodes.kind != Value::Kind::kArray) {
    error = {"invalid_flow", "A flow is an array of nodes, or an object with a \"nodes\" array.", "nodes", {}};
    return nullptr;
  }
  return Build(std::move(name), std::move(nodes.text), error);
}

std::shared_ptr<const Flow> LoadFlow(std::string name, std::string nodes_json, Error& error) {
  return Build(std::move(name), std::move(nodes_json), error);
}

}  // namespace flowd::flow
