#include "flow/catalog.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <simdjson.h>

#include "base/clock.h"

namespace flowd::flow {
namespace asio = boost::asio;
namespace ondemand = simdjson::ondemand;
using store::Cf;

namespace {

std::string EncodeHead(const std::string& account, uint32_t latest, bool deleted) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("account").String(account).Key("latest").Int(latest).Key("deleted").Bool(deleted).EndObject();
  return out;
}

bool DecodeHead(std::string_view json, std::string& account, uint32_t& latest, bool& deleted) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  std::string_view a;
  int64_t l = 0;
  if (parser.iterate(padded).get(doc) || doc["account"].get_string().get(a) || doc["latest"].get_int64().get(l) ||
      doc["deleted"].get_bool().get(deleted)) {
    return false;
  }
  account = a;
  latest = static_cast<uint32_t>(l);
  return true;
}

}  // namespace

std::string EncodeFlowVersion(const SavedFlow& f, const std::string& account) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("account").String(account).Key("version").Int(f.version).Key("saved_at").Int(f.saved_at);
  w.Key("name").String(f.flow->name).Key("nodes").Raw(f.flow->nodes_json).EndObject();
  return out;
}

bool DecodeFlowVersion(std::string_view json, SavedFlow& f, std::string& account, std::string& nodes_json,
                       std::string& name) {
  ondemand::parser parser;
  simdjson::padded_string padded(json);
  ondemand::document doc;
  ondemand::object obj;
  if (parser.iterate(padded).get(doc) || doc.get_object().get(obj)) return false;
  for (auto field : obj) {
    std::string_view k, s;
    ondemand::value v;
    if (field.unescaped_key().get(k) || field.value().get(v)) return false;
    int64_t n = 0;
    if (k == "account") {
      if (v.get_string().get(s)) return false;
      account = s;
    } else if (k == "name") {
      if (v.get_string().get(s)) return false;
      name = s;
    } else if (k == "version") {
      if (v.get_int64().get(n)) return false;
      f.version = static_cast<uint32_t>(n);
    } else if (k == "saved_at") {
      if (v.get_int64().get(f.saved_at)) return false;
    } else if (k == "nodes") {
      Value nodes;
      if (ReadValue(v, 2, nodes) != JsonError::kNone) return false;
      nodes_json = std::move(nodes.text);
    }
  }
  return true;
}

asio::awaitable<std::optional<Catalog::Head>> Catalog::LoadHead(const std::string& flow_id) {
  {
    std::lock_guard lock(mu_);
    if (auto it = heads_.find(flow_id); it != heads_.end()) co_return it->second;
  }
  auto [s, json] = co_await store_.AsyncGet(Cf::kFlowHeads, flow_id, asio::as_tuple(asio::use_awaitable));
  if (!s.ok()) co_return std::nullopt;
  Head head;
  if (!DecodeHead(json, head.account, head.latest, head.deleted)) co_return std::nullopt;
  // Saves write their head in the order they were queued, which may trail the highest
  // version when two saves raced: the versions themselves are the truth.
  for (;;) {
    auto [next, _] = co_await store_.AsyncGet(Cf::kFlows, store::FlowVersionKey(flow_id, head.latest + 1),
                                              asio::as_tuple(asio::use_awaitable));
    if (!next.ok()) break;
    ++head.latest;
  }
  if (head.latest > 0) {
    auto [vs, vjson] = co_await store_.AsyncGet(Cf::kFlows, store::FlowVersionKey(flow_id, head.latest),
                                                asio::as_tuple(asio::use_awaitable));
    SavedFlow saved;
    std::string account, nodes, name;
    Error error;
    if (vs.ok() && DecodeFlowVersion(vjson, saved, account, nodes, name)) {
      saved.flow_id = flow_id;
      saved.flow = LoadFlow(std::move(name), std::move(nodes), error);
      if (saved.flow) head.published = std::move(saved);
    }
  }
  std::lock_guard lock(mu_);
  auto [it, inserted] = heads_.emplace(flow_id, head);
  co_return it->second;
}

asio::awaitable<Catalog::SaveResult> Catalog::Save(std::string account, std::string flow_id,
                                                    std::shared_ptr<const Flow> flow) {
  SaveResult result;
  co_await LoadHead(flow_id);  // a head kept in the store comes into memory first
  uint32_t version = 0;
  {
    std::lock_guard lock(mu_);
    // The head in memory decides, under the lock: the save that creates it owns the id,
    // also when another account's save of the same new id raced it here.
    auto [it, inserted] = heads_.try_emplace(flow_id);
    Head& h = it->second;
    if (inserted) {
      h.account = account;
    } else if (h.account != account) {
      result.error = Error{"not_found", "No flow with this id.", "", {}};
      co_return result;
    }
    result.created = inserted || h.deleted || h.latest == 0;
    h.deleted = false;
    version = ++h.latest;
  }
  SavedFlow saved{flow_id, version, NowMillis(), std::move(flow)};
  store::Batch batch;
  batch.Put(Cf::kFlows, store::FlowVersionKey(flow_id, version), EncodeFlowVersion(saved, account));
  batch.Put(Cf::kFlowHeads, flow_id, EncodeHead(account, version, false));
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  if (!status.ok()) {
    result.error = Error{"unavailable", "The store cannot take writes right now.", "", {}};
    co_return result;
  }
  {
    std::lock_guard lock(mu_);
    Head& h = heads_[flow_id];
    if (h.published.version < version) h.published = saved;
  }
  result.saved = std::move(saved);
  co_return result;
}

asio::awaitable<std::optional<SavedFlow>> Catalog::Get(std::string account, std::string flow_id,
                                                       std::optional<uint32_t> version) {
  auto head = co_await LoadHead(flow_id);
  if (!head || head->account != account || head->deleted || !head->published.flow) co_return std::nullopt;
  if (!version || *version == head->published.version) co_return head->published;
  if (*version == 0 || *version > head->latest) co_return std::nullopt;
  auto [s, json] = co_await store_.AsyncGet(Cf::kFlows, store::FlowVersionKey(flow_id, *version),
                                            asio::as_tuple(asio::use_awaitable));
  if (!s.ok()) co_return std::nullopt;
  SavedFlow saved;
  std::string owner, nodes, name;
  Error error;
  if (!DecodeFlowVersion(json, saved, owner, nodes, name)) co_return std::nullopt;
  saved.flow_id = flow_id;
  saved.flow = LoadFlow(std::move(name), std::move(nodes), error);
  if (!saved.flow) co_return std::nullopt;
  co_return saved;
}

asio::awaitable<std::optional<Error>> Catalog::Delete(std::string account, std::string flow_id, bool* found) {
  auto head = co_await LoadHead(flow_id);
  *found = head && head->account == account && !head->deleted && head->latest > 0;
  if (!*found) co_return std::nullopt;
  uint32_t latest = 0;
  {
    std::lock_guard lock(mu_);
    Head& h = heads_[flow_id];
    h.deleted = true;
    latest = h.latest;
  }
  store::Batch batch;
  batch.Put(Cf::kFlowHeads, flow_id, EncodeHead(account, latest, true));
  auto status = co_await store_.AsyncWrite(std::move(batch), asio::use_awaitable);
  if (!status.ok()) co_return Error{"unavailable", "The store cannot take writes right now.", "", {}};
  co_return std::nullopt;
}

std::shared_ptr<const Flow> Catalog::LoadVersionSync(const std::string& flow_id, uint32_t version) {
  std::string json;
  if (!store_.GetSync(Cf::kFlows, store::FlowVersionKey(flow_id, version), &json).ok()) return nullptr;
  SavedFlow saved;
  std::string account, nodes, name;
  Error error;
  if (!DecodeFlowVersion(json, saved, account, nodes, name)) return nullptr;
  return LoadFlow(std::move(name), std::move(nodes), error);
}

}  // namespace flowd::flow
