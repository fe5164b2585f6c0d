#include "flow/run.h"

#include <simdjson.h>

#include "base/clock.h"

namespace flowd::flow {
namespace ondemand = simdjson::ondemand;

std::string_view StatusName(RunStatus s) {
  switch (s) {
    case RunStatus::kPending: return "pending";
    case RunStatus::kComplete: return "complete";
    case RunStatus::kFailed: return "failed";
    case RunStatus::kCanceled: return "canceled";
  }
  return "pending";
}

bool IsTerminal(RunStatus s) { return s != RunStatus::kPending; }

namespace {

void WriteValues(JsonWriter& w, std::string_view key, const NamedValues& values) {
  w.Key(key).BeginObject();
  for (const auto& [k, v] : values) w.Key(k).Val(v);
  w.EndObject();
}

bool ReadValues(ondemand::value v, NamedValues& out) {
  ondemand::object obj;
  if (v.get_object().get(obj)) return false;
  for (auto f : obj) {
    std::string_view k;
    ondemand::value fv;
    if (f.unescaped_key().get(k) || f.value().get(fv)) return false;
    Value val;
    if (ReadValue(fv, 2, val) != JsonError::kNone) return false;
    out.emplace_back(std::string(k), std::move(val));
  }
  return true;
}

}  // namespace

std::string EncodeRecord(const RunRecord& r) {
  std::string out;
  out.reserve(256);
  JsonWriter w(out);
  w.BeginObject();
  w.Key("run_id").String(r.run_id).Key("flow_id").String(r.flow_id).Key("account").String(r.account);
  w.Key("flow_version").Int(r.flow_version).Key("status").String(StatusName(r.status));
  w.Key("created_at").Int(r.created_at).Key("started_at").Int(r.started_at).Key("finished_at").Int(r.finished_at);
  w.Key("nodes_done").Int(r.nodes_done).Key("nodes_total").Int(r.nodes_total).Key("save").Bool(r.save);
  if (!r.global_webhook_url.empty()) {
    w.Key("global_webhook_url").String(r.global_webhook_url);
    w.Key("global_webhook_signature").String(r.global_webhook_signature);
  }
  WriteValues(w, "inputs", r.inputs);
  WriteValues(w, "outputs", r.outputs);
  w.Key("events").BeginArray();
  for (const auto& e : r.events) w.Raw(e);
  w.EndArray();
  if (!r.error_code.empty()) {
    w.Key("error_code").String(r.error_code).Key("error_message").String(r.error_message);
    w.Key("error_node").String(r.error_node);
  }
  w.EndObject();
  return out;
}

bool DecodeRecord(std::string_view json, RunRecord& r) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  ondemand::object obj;
  if (parser.iterate(padded).get(doc) || doc.get_object().get(obj)) return false;
  for (auto f : obj) {
    std::string_view k;
    ondemand::value v;
    if (f.unescaped_key().get(k) || f.value().get(v)) return false;
    std::string_view s;
    int64_t n = 0;
    if (k == "run_id" || k == "flow_id" || k == "account" || k == "status" || k == "error_code" ||
        k == "error_message" || k == "error_node" || k == "global_webhook_url" || k == "global_webhook_signature") {
      if (v.get_string().get(s)) return false;
      if (k == "run_id") r.run_id = s;
      else if (k == "global_webhook_url") r.global_webhook_url = s;
      else if (k == "global_webhook_signature") r.global_webhook_signature = s;
      else if (k == "flow_id") r.flow_id = s;
      else if (k == "account") r.account = s;
      else if (k == "error_code") r.error_code = s;
      else if (k == "error_message") r.error_message = s;
      else if (k == "error_node") r.error_node = s;
      else if (s == "complete") r.status = RunStatus::kComplete;
      else if (s == "failed") r.status = RunStatus::kFailed;
      else if (s == "canceled") r.status = RunStatus::kCanceled;
      else r.status = RunStatus::kPending;
    } else if (k == "save") {
      bool b;
      if (v.get_bool().get(b)) return false;
      r.save = b;
    } else if (k == "events") {
      ondemand::array arr;
      if (v.get_array().get(arr)) return false;
      for (auto e : arr) {
        Value ev;
        ondemand::value ev_value;
        if (e.get(ev_value) || ReadValue(ev_value, 2, ev) != JsonError::kNone) return false;
        r.events.push_back(std::move(ev.text));
      }
    } else if (k == "inputs" || k == "outputs") {
      if (!ReadValues(v, k == "inputs" ? r.inputs : r.outputs)) return false;
    } else {
      if (v.get_int64().get(n)) return false;
      if (k == "flow_version") r.flow_version = static_cast<uint32_t>(n);
      else if (k == "created_at") r.created_at = n;
      else if (k == "started_at") r.started_at = n;
      else if (k == "finished_at") r.finished_at = n;
      else if (k == "nodes_done") r.nodes_done = static_cast<uint32_t>(n);
      else if (k == "nodes_total") r.nodes_total = static_cast<uint32_t>(n);
    }
  }
  return true;
}

std::string RenderRun(const RunRecord& r) {
  std::string out;
  out.reserve(256);
  JsonWriter w(out);
  w.BeginObject();
  w.Key("run_id").String(r.run_id).Key("flow_id").String(r.flow_id).Key("flow_version").Int(r.flow_version);
  w.Key("status").String(StatusName(r.status)).Key("created_at").String(FormatTime(r.created_at));
  if (r.started_at) w.Key("started_at").String(FormatTime(r.started_at));
  if (r.finished_at) w.Key("finished_at").String(FormatTime(r.finished_at));
  w.Key("progress").BeginObject().Key("nodes_done").Int(r.nodes_done).Key("nodes_total").Int(r.nodes_total).EndObject();
  if (r.status == RunStatus::kComplete && r.save) WriteValues(w, "outputs", r.outputs);
  if (r.status == RunStatus::kFailed) {
    w.Key("error").BeginObject().Key("code").String(r.error_code).Key("message").String(r.error_message);
    if (!r.error_node.empty()) w.Key("node").String(r.error_node);
    w.EndObject();
  }
  w.EndObject();
  return out;
}

}  // namespace flowd::flow
