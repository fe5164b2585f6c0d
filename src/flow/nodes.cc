#include "flow/nodes.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/regex.hpp>

#include <simdjson.h>

#include <array>

#include "base/clock.h"
#include "flow/webhooks.h"
#include "net/url.h"
#include <charconv>
#include <cstdlib>

namespace flowd::flow {
namespace asio = boost::asio;
namespace http = boost::beast::http;
namespace ondemand = simdjson::ondemand;
using namespace std::chrono_literals;

namespace {

// Every node kind flowd accepts. A kind joins this table only when it runs.
const std::array<NodeKind, 12> kKinds = {{
    {"api-input", "", {"api_input_name"}},
    {"api-output", "input", {"api_output_name"}},
    {"input-text", "", {}},
    {"transition", "input", {}},
    {"display", "input", {}},
    {"merger-prompt", kPrimaryInputNames, {}},
    {"replace-text", "input_text", {}, 1, 10s},
    {"http-get-processor", "url", {"url"}, 1, 5s},
    {"llm-prompt", "context", {}, 1, 120s},
    {"openrouter-processor", "context", {}, 1, 120s},
    {"deepseek-processor", "context", {}, 1, 120s},
    {"webhook", "webhook_output_data", {"webhook_url", "webhook_output_field_name"}, 1, 10s},
}};
// claude-anthropic-processor is listed separately only to keep the table's size honest.
const NodeKind kClaude{"claude-anthropic-processor", "context", {}, 1, 120s};

constexpr size_t kMaxReplaceInput = 1 << 20;
constexpr int kModelRetries = 3;

NodeResult Failed(std::string message) { return {Value{}, Error{"node_failed", std::move(message), "", {}}}; }

bool BoolField(const NodeInputs& in, std::string_view field, bool fallback) {
  const Value* v = in.Get(field);
  if (!v || v->kind == Value::Kind::kNull) return fallback;
  if (v->kind == Value::Kind::kBool) return v->text == "true";
  return v->text == "true" || v->text == "1";
}

std::string Env(const char* name, std::string fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// "https://host/v1/" + "chat/completions" -> "https://host/v1/chat/completions"
std::string JoinUrl(std::string base, std::string_view path) {
  while (!base.empty() && base.back() == '/') base.pop_back();
  while (!path.empty() && path.front() == '/') path.remove_prefix(1);
  return base + "/" + std::string(path);
}

bool IsJsonContentType(std::string_view ct) {
  ct = ct.substr(0, ct.find(';'));
  return ct == "application/json" || (ct.size() > 5 && ct.substr(ct.size() - 5) == "+json");
}

// Seconds from a Retry-After header (delta-seconds only), capped.
std::optional<std::chrono::milliseconds> RetryAfter(const net::Inbound& r) {
  auto it = r.headers.find(http::field::retry_after);
  if (it == r.headers.end()) return std::nullopt;
  std::string_view v = it->value();
  unsigned secs = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), secs);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return std::chrono::milliseconds(std::min(secs, 60u) * 1000);
}

// The provider's own error text, when its body carries one ({"error":{"message"}}).
std::string ProviderMessage(const std::string& body) {
  ondemand::parser parser;
  simdjson::padded_string padded(body);
  ondemand::document doc;
  std::string_view msg;
  if (!parser.iterate(padded).get(doc) && !doc["error"]["message"].get_string().get(msg)) return std::string(msg);
  return "";
}

// Reads the assistant text of an OpenAI chat completion or an Anthropic message.
std::optional<std::string> ReadCompletion(const std::string& body, bool anthropic, std::string& text) {
  simdjson::padded_string padded(body);
  {
    // The whole answer first, with the rule every request body gets: a document with
    // trailing bytes or a repeated key is refused rather than read in part.
    ondemand::parser check;
    ondemand::document d;
    ondemand::value v;
    Value ignored;
    JsonError e = JsonError::kSyntax;
    if (!check.iterate(padded).get(d) && !d.get_value().get(v)) e = ReadValue(v, 1, ignored);
    if (e == JsonError::kNone && !AtEnd(d)) e = JsonError::kSyntax;
    if (e != JsonError::kNone) return std::string("the provider's answer is not JSON (") + JsonErrorMessage(e) + ")";
  }
  ondemand::parser parser;
  ondemand::document doc;
  ondemand::json_type type;
  if (parser.iterate(padded).get(doc) || doc.type().get(type) || type != ondemand::json_type::object) {
    return "the provider's answer is not a JSON object";
  }
  if (anthropic) {
    ondemand::array content;
    if (doc["content"].get_array().get(content)) return "the provider's answer has no content";
    bool any = false;
    for (auto block : content) {
      std::string_view type, t;
      if (block["type"].get_string().get(type) || type != "text") continue;
      if (block["text"].get_string().get(t)) return "the provider's answer is malformed";
      text += t;
      any = true;
    }
    if (!any || text.empty()) return "the provider's answer has no text";
    std::string_view stop;
    if (!doc["stop_reason"].get_string().get(stop) && stop == "max_tokens") {
      return "the provider's answer was cut off (stop_reason max_tokens)";
    }
    return std::nullopt;
  }
  ondemand::array choices;
  if (doc["choices"].get_array().get(choices)) return "the provider's answer has no choices";
  for (auto choice : choices) {
    ondemand::object c;
    if (choice.get_object().get(c)) return "the provider's answer is malformed";
    std::string_view finish;
    bool has_finish = !c["finish_reason"].get_string().get(finish);
    std::string_view content;
    ondemand::value msg;
    if (c["message"].get(msg) || msg["content"].get_string().get(content)) {
      return std::string("the provider's answer has no content") +
             (has_finish ? " (finish_reason " + std::string(finish) + ")" : "");
    }
    // A run that completes must have an answer: an empty one, or one cut off at the
    // token limit, fails the node instead of passing on nothing or half a text.
    if (has_finish && finish == "length") return "the provider's answer was cut off (finish_reason length)";
    if (content.empty()) {
      return std::string("the provider's answer is empty") + (has_finish ? " (finish_reason " + std::string(finish) + ")" : "");
    }
    text = content;
    return std::nullopt;
  }
  return "the provider's answer has no choices";
}

asio::awaitable<NodeResult> RunModel(const Node& node, const NodeInputs& in, NodeEnv& env) {
  const bool anthropic = node.type == "claude-anthropic-processor";
  const Provider& p = anthropic                               ? env.providers.anthropic
                      : node.type == "openrouter-processor" ? env.providers.openrouter
                      : node.type == "deepseek-processor"   ? env.providers.deepseek
                                                            : env.providers.openai;
  const std::string prompt = in.Text("prompt");
  const std::string context = in.Text("context");
  std::string body;
  JsonWriter w(body);
  w.BeginObject();
  net::Outbound req;
  req.method = http::verb::post;
  req.timeout = node.kind->timeout;
  req.guarded = false;  // the operator chose this endpoint
  req.headers.push_back({"Content-Type", "application/json"});
  if (anthropic) {
    int64_t max_tokens = 1024;
    if (const Value* m = in.Get("max_tokens"); m && m->kind == Value::Kind::kNumber) {
      std::from_chars(m->text.data(), m->text.data() + m->text.size(), max_tokens);
    }
    w.Key("model").String(in.Text("model", "claude-3-5-haiku-latest")).Key("max_tokens").Int(max_tokens);
    if (!context.empty()) w.Key("system").String(context);
    w.Key("messages").BeginArray().BeginObject().Key("role").String("user").Key("content").String(prompt);
    w.EndObject().EndArray();
    req.url = JoinUrl(p.base_url, "v1/messages");
    req.headers.push_back({"x-api-key", p.api_key});
    req.headers.push_back({"anthropic-version", "2023-06-01"});
  } else {
    w.Key("model").String(in.Text("model", "gpt-4o-mini")).Key("messages").BeginArray();
    if (!context.empty()) w.BeginObject().Key("role").String("system").Key("content").String(context).EndObject();
    w.BeginObject().Key("role").String("user").Key("content").String(prompt).EndObject().EndArray();
    req.url = JoinUrl(p.base_url, "chat/completions");
    req.headers.push_back({"Authorization", "Bearer " + p.api_key});
  }
  w.EndObject();
  req.body = std::move(body);

  asio::steady_timer pause(co_await asio::this_coro::executor);
  for (int attempt = 0;; ++attempt) {
    net::Inbound res = co_await env.http.Fetch(req);
    // Whatever the provider sends may quote the key (an echo, an error, an answer): it is
    // gone before anything is read from it. (The key is the operator's token, so putting
    // "[redacted]" in its place keeps the JSON valid.)
    res.body = Redact(std::move(res.body), p.api_key);
    if (res.status == 200) {
      std::string text;
      if (auto why = ReadCompletion(res.body, anthropic, text)) co_return Failed(*why);
      co_return NodeResult{Value::String(std::move(text)), std::nullopt};
    }
    const bool retryable = res.status == 429 || res.status >= 500;
    if (!retryable || attempt == kModelRetries) {
      std::string what = res.status != 0                          ? "the provider answered " + std::to_string(res.status)
                         : res.error.starts_with("response too large") ? "the provider's answer is larger than 2 MiB"
                                                                        : "the provider could not be reached (" + res.error + ")";
      if (res.status == 429) what += " (rate limited)";
      std::string detail = res.status ? ProviderMessage(res.body) : "";
      if (!detail.empty()) what += ": " + detail;
      co_return Failed(std::move(what));
    }
    pause.expires_after(RetryAfter(res).value_or(env.retry_base * (1 << attempt)));
    auto [ec] = co_await pause.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return Failed("canceled");
  }
}

asio::awaitable<NodeResult> RunHttpGet(const Node& node, const NodeInputs& in, NodeEnv& env) {
  net::Outbound req;
  req.url = in.Text("url");
  req.timeout = node.kind->timeout;
  req.max_response = 2 << 20;
  if (const Value* h = in.Get("headers"); h && (h->kind == Value::Kind::kArray || h->kind == Value::Kind::kObject)) {
    ondemand::parser parser;
    simdjson::padded_string padded(h->text);
    ondemand::document doc;
    if (!parser.iterate(padded).get(doc)) {
      if (h->kind == Value::Kind::kArray) {
        for (auto item : doc.get_array()) {
          std::string_view k, v;
          if (!item["key"].get_string().get(k) && !item["value"].get_string().get(v)) req.headers.push_back({std::string(k), std::string(v)});
        }
      } else {
        for (auto f : doc.get_object()) {
          std::string_view k, v;
          if (!f.unescaped_key().get(k) && !f.value().get_string().get(v)) req.headers.push_back({std::string(k), std::string(v)});
        }
      }
    }
  }
  net::Inbound res = co_await env.http.Fetch(req);  // refuses headers that could inject
  if (res.status == 0) co_return Failed("the request failed: " + res.error);
  if (res.status >= 300 && res.status < 400) {
    co_return Failed("the server answered " + std::to_string(res.status) + " (redirects are not followed)");
  }
  if (res.status >= 400) co_return Failed("the server answered " + std::to_string(res.status));
  auto ct = res.headers.find(http::field::content_type);
  if (ct != res.headers.end() && IsJsonContentType(ct->value())) {
    ondemand::parser parser;
    ondemand::document doc;
    ondemand::value v;
    Value parsed;
    if (!parser.iterate(Padded(res.body)).get(doc) && !doc.get_value().get(v) &&
        ReadValue(v, 1, parsed) == JsonError::kNone && AtEnd(doc)) {
      co_return NodeResult{std::move(parsed), std::nullopt};
    }
  }
  co_return NodeResult{Value::String(std::move(res.body)), std::nullopt};
}

// Queues {"<field>": value} for the node's URL (durably, before this returns) and passes
// the value on. The delivery itself goes out on its own, with retries.
asio::awaitable<NodeResult> RunWebhook(const Node& node, const NodeInputs& in, const RunContext& run, NodeEnv& env) {
  const Value* v = in.Get("webhook_output_data");
  Value value = v ? *v : Value{};
  Delivery d;
  d.delivery_id = Webhooks::DeliveryId(run.run_id, "node/" + node.name);
  d.account = run.account;
  d.run_id = run.run_id;
  d.flow_id = run.flow_id;
  d.kind = "node";
  d.node = node.name;
  d.url = in.Text("webhook_url");
  d.ai_flow_signature = in.Text("ai_flow_signature_header_value");
  if (!net::IsHeaderValue(d.ai_flow_signature)) {
    co_return Failed("ai_flow_signature_header_value must not hold line breaks or controls");
  }
  JsonWriter(d.body).BeginObject().Key(in.Text("webhook_output_field_name")).Val(value).EndObject();
  d.forget_body = !run.save;
  d.created_at = d.next_at = NowMillis();
  if (!net::ParseHttpUrl(d.url)) {
    co_return Failed("webhook_url must be an http(s) URL");
  }
  if (!co_await env.webhooks.Enqueue(std::move(d), run.resumed)) co_return Failed("the delivery could not be stored");
  co_return NodeResult{std::move(value), std::nullopt};
}

// The regex runs on the compute pool; this frame (and so `spec`, `stop` and `result`)
// outlives the work, and the post back to `home` publishes `result` to the resumed coroutine.
asio::awaitable<NodeResult> RunReplace(const NodeInputs& in, NodeEnv& env) {
  const ReplaceSpec spec = ReadReplaceSpec(in);
  NodeResult result;
  auto home = co_await asio::this_coro::executor;
  // A cancel (the node's timeout, the run's cancel or failure) asks the work to stop; the
  // work always completes, so this frame outlives it.
  std::atomic<bool> stop{false};
  co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(
      [&](auto handler) {
        auto slot = asio::get_associated_cancellation_slot(handler);
        if (slot.is_connected()) slot.assign([&stop](asio::cancellation_type) { stop.store(true); });
        asio::post(env.compute, [h = std::move(handler), &spec, &result, &stop, home]() mutable {
          std::string out;
          if (auto why = ReplaceText(spec, out, &stop)) {
            result = Failed(*why);
          } else {
            result.value = Value::String(std::move(out));
          }
          asio::post(home, std::move(h));
        });
      },
      asio::use_awaitable);
  co_return result;
}

}  // namespace

const NodeKind* FindKind(std::string_view type) {
  for (const auto& k : kKinds) {
    if (k.type == type) return &k;
  }
  return type == kClaude.type ? &kClaude : nullptr;
}

Providers Providers::FromEnvironment() {
  Providers p;
  p.openai = {Env("OPENAI_BASE_URL", "https://api.openai.com/v1"), Env("OPENAI_API_KEY")};
  p.openrouter = {Env("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"), Env("OPENROUTER_API_KEY")};
  p.deepseek = {Env("DEEPSEEK_BASE_URL", "https://api.deepseek.com"), Env("DEEPSEEK_API_KEY")};
  p.anthropic = {Env("ANTHROPIC_BASE_URL", "https://api.anthropic.com"), Env("ANTHROPIC_API_KEY")};
  return p;
}

std::string Redact(std::string text, std::string_view key) {
  if (key.empty()) return text;
  for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at)) {
    text.replace(at, key.size(), "[redacted]");
    at += 10;
  }
  return text;
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

ReplaceSpec ReadReplaceSpec(const NodeInputs& in) {
  return {in.Text("input_text"),
          in.Text("search_text"),
          in.Text("replacement_text"),
          BoolField(in, "replace_all", true),
          BoolField(in, "case_sensitivity", true),
          BoolField(in, "use_regex", false)};
}

std::optional<std::string> ReplaceText(const ReplaceSpec& spec, std::string& out, const std::atomic<bool>* stop) {
  const std::string& text = spec.text;
  const std::string& search = spec.search;
  const std::string& replacement = spec.replacement;
  const bool all = spec.all, case_sensitive = spec.case_sensitive, use_regex = spec.use_regex;
  if (text.size() > kMaxReplaceInput) return "input_text is longer than 1 MiB";
  if (search.empty()) {
    out = text;
    return std::nullopt;
  }
  try {
    using boost::regex_constants::match_flag_type;
    using boost::regex_constants::syntax_option_type;
    syntax_option_type flags = boost::regex::ECMAScript;
    if (!case_sensitive) flags = static_cast<syntax_option_type>(flags | boost::regex::icase);
    if (!use_regex) flags = static_cast<syntax_option_type>(flags | boost::regex::literal);
    boost::regex re(search, flags);
    // regex_replace's loop, with a look at `stop` before each match.
    out.clear();
    auto last = text.cbegin();
    for (boost::sregex_iterator it(text.cbegin(), text.cend(), re), end; it != end; ++it) {
      if (stop && stop->load(std::memory_order_relaxed)) return "stopped before the replacement was done";
      const auto& m = (*it)[0];
      out.append(last, m.first);
      if (use_regex) {
        out += it->format(replacement, boost::regex_constants::format_default);
      } else {
        out += replacement;
      }
      last = m.second;
      if (!all) break;
    }
    out.append(last, text.cend());
  } catch (const boost::regex_error& e) {
    if (e.code() != boost::regex_constants::error_complexity && e.code() != boost::regex_constants::error_stack) {
      return std::string("search_text is not a valid regular expression: ") + e.what();
    }
    return "the regular expression is too expensive to match against this text";
  } catch (const std::runtime_error&) {
    // Boost.Regex gives up on matches that would take too long (catastrophic backtracking).
    return "the regular expression is too expensive to match against this text";
  }
  return std::nullopt;
}

NodeResult RunLocalNode(const Node& node, const NodeInputs& in, const Value* run_input) {
  const std::string& t = node.type;
  if (t == "api-input") {
    if (run_input) return {*run_input, std::nullopt};
    const Value* d = node.Field("default_value");
    return {d ? *d : Value::String(""), std::nullopt};
  }
  if (t == "input-text") return {Value::String(in.Text("inputText")), std::nullopt};
  if (t == "api-output" || t == "transition" || t == "display") {
    const Value* v = in.Get("input");
    return {v ? *v : Value{}, std::nullopt};
  }
  if (t == "merger-prompt") {
    std::vector<std::string> values;
    values.reserve(node.input_names.size());
    for (const auto& name : node.input_names) values.push_back(in.Text(name));
    return {Value::String(RenderTemplate(in.Text("prompt"), values)), std::nullopt};
  }
  return Failed("node kind " + t + " cannot run in place");
}

asio::awaitable<NodeResult> RunRemoteNode(const Node& node, const NodeInputs& in, const RunContext& run,
                                          NodeEnv& env) {
  if (node.type == "http-get-processor") co_return co_await RunHttpGet(node, in, env);
  if (node.type == "webhook") co_return co_await RunWebhook(node, in, run, env);
  if (node.type == "replace-text") co_return co_await RunReplace(in, env);
  co_return co_await RunModel(node, in, env);
}

}  // namespace flowd::flow
