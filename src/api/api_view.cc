#include "api/api_view.h"

#include "base/clock.h"
#include "base/json.h"

namespace flowd::api {
namespace {

// The run body a snippet sends: every input with its default, "" where there is none.
std::string DefaultBody(const flow::Flow& f) {
  std::string out;
  JsonWriter w(out);
  w.BeginObject();
  for (const auto& in : f.inputs) {
    w.Key(in.name);
    in.default_value ? w.Val(*in.default_value) : w.String("");
  }
  w.EndObject();
  return out;
}

std::string ShellQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string JsonString(std::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

std::string Curl(std::string_view base, std::string_view flow_id, const std::string& body) {
  std::string run = std::string(base) + "/v1/flow/" + std::string(flow_id) + "/run";
  return "#!/bin/sh\n"
         "# Starts a run of this flow, then polls it until it is no longer pending.\n"
         "set -eu\n"
         "RUN=$(curl -sS -X POST " + ShellQuote(run) + " \\\n"
         "  -H \"Authorization: Bearer $FLOWD_API_KEY\" -H 'Content-Type: application/json' \\\n"
         "  -d " + ShellQuote(body) + ")\n"
         "RUN_ID=$(printf '%s' \"$RUN\" | sed -n 's/.*\"run_id\":\"\\([^\"]*\\)\".*/\\1/p')\n"
         "[ -n \"$RUN_ID\" ] || { printf '%s\\n' \"$RUN\" >&2; exit 1; }\n"
         "while :; do\n"
         "  OUT=$(curl -sS " + ShellQuote(run) + "/\"$RUN_ID\" -H \"Authorization: Bearer $FLOWD_API_KEY\")\n"
         "  case \"$OUT\" in\n"
         "    *'\"status\":\"pending\"'*) sleep 1 ;;\n"
         "    *) printf '%s\\n' \"$OUT\"; break ;;\n"
         "  esac\n"
         "done\n";
}

std::string Python(std::string_view base, std::string_view flow_id, const std::string& body) {
  std::string run = std::string(base) + "/v1/flow/" + std::string(flow_id) + "/run";
  return "# Starts a run of this flow, then polls it until it is no longer pending.\n"
         "import json, os, time, urllib.request\n"
         "\n"
         "RUN_URL = " + JsonString(run) + "\n"
         "HEADERS = {\"Authorization\": \"Bearer \" + os.environ[\"FLOWD_API_KEY\"],\n"
         "           \"Content-Type\": \"application/json\"}\n"
         "inputs = json.loads(" + JsonString(body) + ")\n"
         "\n"
         "def call(url, data=None):\n"
         "    req = urllib.request.Request(url, data=data, headers=HEADERS, method=\"POST\" if data else \"GET\")\n"
         "    with urllib.request.urlopen(req) as res:\n"
         "        return json.loads(res.read())\n"
         "\n"
         "run = call(RUN_URL, json.dumps(inputs).encode())\n"
         "while True:\n"
         "    result = call(RUN_URL + \"/\" + run[\"run_id\"])\n"
         "    if result[\"status\"] != \"pending\":\n"
         "        break\n"
         "    time.sleep(1)\n"
         "print(json.dumps(result, indent=2, ensure_ascii=False))\n";
}

std::string JavaScript(std::string_view base, std::string_view flow_id, const std::string& body) {
  std::string run = std::string(base) + "/v1/flow/" + std::string(flow_id) + "/run";
  return "// Starts a run of this flow, then polls it until it is no longer pending (Node 18+).\n"
         "const RUN_URL = " + JsonString(run) + ";\n"
         "const headers = {\n"
         "  Authorization: `Bearer ${process.env.FLOWD_API_KEY}`,\n"
         "  \"Content-Type\": \"application/json\",\n"
         "};\n"
         "const inputs = " + body + ";\n"
         "\n"
         "(async () => {\n"
         "  const started = await fetch(RUN_URL, { method: \"POST\", headers, body: JSON.stringify(inputs) });\n"
         "  const run = await started.json();\n"
         "  if (!started.ok) throw new Error(JSON.stringify(run));\n"
         "  for (;;) {\n"
         "    const result = await (await fetch(`${RUN_URL}/${run.run_id}`, { headers })).json();\n"
         "    if (result.status !== \"pending\") {\n"
         "      console.log(JSON.stringify(result, null, 2));\n"
         "      break;\n"
         "    }\n"
         "    await new Promise((resolve) => setTimeout(resolve, 1000));\n"
         "  }\n"
         "})().catch((err) => {\n"
         "  console.error(err);\n"
         "  process.exit(1);\n"
         "});\n";
}

}  // namespace

std::string RenderApiView(const flow::SavedFlow& saved, std::string_view base_url) {
  const flow::Flow& f = *saved.flow;
  const std::string body = DefaultBody(f);
  std::string out;
  JsonWriter w(out);
  w.BeginObject().Key("flow_id").String(saved.flow_id).Key("version").Int(saved.version);
  w.Key("saved_at").String(FormatTime(saved.saved_at));
  w.Key("inputs").BeginArray();
  for (const auto& in : f.inputs) {
    w.BeginObject().Key("name").String(in.name).Key("default");
    in.default_value ? w.Val(*in.default_value) : w.Null();
    w.Key("required").Bool(!in.default_value).EndObject();
  }
  w.EndArray().Key("outputs").BeginArray();
  for (const auto& o : f.outputs) {
    w.BeginObject().Key("name").String(o.name).Key("source");
    o.source.empty() ? w.Null() : w.String(o.source);
    w.EndObject();
  }
  w.EndArray().Key("webhooks").BeginArray();
  for (const auto& n : f.nodes) {
    if (n.type != "webhook") continue;
    const Value* url = n.Field("webhook_url");
    const Value* field = n.Field("webhook_output_field_name");
    w.BeginObject().Key("node").String(n.name).Key("url").String(url ? url->AsText() : "");
    w.Key("field").String(field ? field->AsText() : "").EndObject();
  }
  w.EndArray().Key("snippets").BeginObject();
  w.Key("curl").String(Curl(base_url, saved.flow_id, body));
  w.Key("python").String(Python(base_url, saved.flow_id, body));
  w.Key("javascript").String(JavaScript(base_url, saved.flow_id, body));
  w.EndObject().EndObject();
  return out;
}

}  // namespace flowd::api
