#include <catch2/catch.hpp>

#include <atomic>

#include <fstream>
#include <sstream>

#include "flow/flow.h"
#include "flow/inputs.h"
#include "flow/nodes.h"
#include "flow/run.h"

using namespace flowd;
using namespace flowd::flow;

namespace {

std::string Fixture(const std::string& name) {
  std::ifstream in(std::string(FLOWD_SHARED_DIR) + "/cases/flows/" + name);
  REQUIRE(in.good());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::shared_ptr<const Flow> Parse(std::string text, Error* error_out = nullptr) {
  Error error;
  auto f = ParseFlow(text, error);
  if (error_out) *error_out = error;
  return f;
}

bool HasProblem(const Error& e, const std::string& node, const std::string& problem) {
  for (const auto& p : e.details) {
    if (p.node == node && p.problem == problem) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("flow: the echo fixture parses, sorted with its inputs and outputs") {
  auto f = Parse(Fixture("echo.json"));
  REQUIRE(f);
  REQUIRE(f->nodes.size() == 5);
  CHECK(f->nodes.back().name == "outtext01#api-output");
  REQUIRE(f->inputs.size() == 3);
  CHECK(f->FindInput("topic"));
  CHECK_FALSE(f->FindInput("topic")->default_value);
  REQUIRE(f->FindInput("tone")->default_value);
  CHECK(f->FindInput("tone")->default_value->text == "neutral");
  REQUIRE(f->outputs.size() == 1);
  CHECK(f->outputs[0].name == "text");
  CHECK(f->outputs[0].source == "merge0001#merger-prompt");
}

TEST_CASE("flow: nodes in any order are sorted by dependency") {
  auto f = Parse(R"({"name":"r","nodes":[
    {"name":"o#api-output","processorType":"api-output","api_output_name":"out","inputs":[{"inputNode":"t#transition"}]},
    {"name":"t#transition","processorType":"transition","inputs":[{"inputNode":"i#input-text"}]},
    {"name":"i#input-text","processorType":"input-text","inputText":"hi","x":1,"y":2,"appearance":{"c":1}}]})");
  REQUIRE(f);
  CHECK(f->name == "r");
  CHECK(f->nodes[0].name == "i#input-text");
  CHECK(f->nodes[1].name == "t#transition");
  CHECK(f->nodes[2].name == "o#api-output");
}

TEST_CASE("flow: every problem is reported at once") {
  Error e;
  auto f = Parse(R"([
    {"name":"a#api-input","processorType":"api-input","api_input_name":"x"},
    {"name":"b#api-input","processorType":"api-input","api_input_name":"x"},
    {"name":"c#api-output","processorType":"api-output","api_output_name":""},
    {"name":"d#dall-e","processorType":"dall-e-prompt"},
    {"name":"e#transition","processorType":"transition","inputs":[{"inputNode":"nope#x"}]},
    {"name":"f#transition","processorType":"transition","inputs":[{"inputNode":"a#api-input","inputNodeOutputKey":3}]},
    {"name":"g#transition","processorType":"transition","inputs":[{"inputNode":"h#transition"}]},
    {"name":"h#transition","processorType":"transition","inputs":[{"inputNode":"g#transition"}]},
    {"name":"a#api-input","processorType":"input-text"}])", &e);
  CHECK_FALSE(f);
  CHECK(e.code == "invalid_flow");
  CHECK(HasProblem(e, "b#api-input", "duplicate_name"));
  CHECK(HasProblem(e, "c#api-output", "missing_field"));
  CHECK(HasProblem(e, "d#dall-e", "unsupported_node"));
  CHECK(HasProblem(e, "e#transition", "unknown_node"));
  CHECK(HasProblem(e, "f#transition", "invalid_output_key"));
  CHECK(HasProblem(e, "g#transition", "cycle"));
  CHECK(HasProblem(e, "h#transition", "cycle"));
  CHECK(HasProblem(e, "a#api-input", "duplicate_name"));
}

TEST_CASE("flow: documents that are not flows") {
  Error e;
  CHECK_FALSE(Parse("{", &e));
  CHECK(e.code == "invalid_json");
  CHECK_FALSE(Parse("42", &e));
  CHECK(e.code == "invalid_flow");
  CHECK_FALSE(Parse(R"({"name":"x"})", &e));
  CHECK(e.code == "invalid_flow");
  CHECK_FALSE(Parse(R"([1])", &e));
  CHECK(e.code == "invalid_flow");
  CHECK(Parse("[]"));
}

TEST_CASE("flow: a stored flow loads back identical") {
  auto f = Parse(Fixture("echo.json"));
  REQUIRE(f);
  Error e;
  auto g = LoadFlow(f->name, f->nodes_json, e);
  REQUIRE(g);
  CHECK(g->nodes_json == f->nodes_json);
  CHECK(g->nodes.size() == f->nodes.size());
}

TEST_CASE("merger-prompt: placeholders are filled in one pass, never re-scanned") {
  CHECK(RenderTemplate("Topic: ${input-1} / Tone: ${input-2}", {"cats", "calm"}) == "Topic: cats / Tone: calm");
  CHECK(RenderTemplate("${input-1}", {"${input-2}", "x"}) == "${input-2}");
  CHECK(RenderTemplate("${input-1}${input-1}", {"a"}) == "aa");
  CHECK(RenderTemplate("${input-3} ${input-0} ${input-} ${input-1", {"a"}) == "${input-3} ${input-0} ${input-} ${input-1");
  CHECK(RenderTemplate("", {"a"}).empty());
}

TEST_CASE("inputs: decoding a run body against the echo flow") {
  auto f = Parse(Fixture("echo.json"));
  REQUIRE(f);
  auto decode = [&](std::string body, RunRecord& rec) { return DecodeRunRequest(*f, body, rec); };
  RunRecord rec;
  CHECK_FALSE(decode(R"({"topic":"cats","count":3})", rec));
  REQUIRE(rec.inputs.size() == 2);
  CHECK(rec.inputs[1].second.AsText() == "3");

  auto code = [&](std::string body) {
    RunRecord r;
    auto e = decode(std::move(body), r);
    return e ? e->code + ":" + e->field : std::string("ok");
  };
  CHECK(code("{}") == "missing_input:topic");
  CHECK(code("") == "missing_input:topic");
  CHECK(code(R"({"tone":"calm"})") == "missing_input:topic");
  CHECK(code(R"({"topic":""})") == "ok");
  CHECK(code("[]") == "invalid_body:");
  CHECK(code("null") == "invalid_body:");
  CHECK(code(R"("cats")") == "invalid_body:");
  CHECK(code(R"({"topic":"cats","topicc":1})") == "unknown_input:topicc");
  CHECK(code(R"({"topic":"cats","Topic":"x"})") == "unknown_input:Topic");
  CHECK(code(R"({"topic":"cats","topic":"dogs"})") == "invalid_json:");
  CHECK(code(R"({"topic":"cats","t\u006fpic":"dogs"})") == "invalid_json:");
  CHECK(code(R"({"t\u006fpic":"cats"})") == "ok");
  CHECK(code(R"({"topic":"cats"} x)") == "invalid_json:");
  CHECK(code(R"({"topic":)" + std::string(100000, '[') + std::string(100000, ']') + "}") == "invalid_input:topic");
  CHECK(code(R"({"topic":"cats","run_options":{"save":false}})") == "ok");
  CHECK(code(R"({"topic":"cats","run_options":{"save":"no"}})") == "invalid_body:run_options.save");
}

TEST_CASE("run: the stored record round-trips, and the public object hides what it must") {
  RunRecord r;
  r.run_id = "r";
  r.flow_id = "f";
  r.account = "acct";
  r.flow_version = 3;
  r.status = RunStatus::kComplete;
  r.created_at = 1000;
  r.started_at = 1001;
  r.finished_at = 1002;
  r.nodes_done = r.nodes_total = 5;
  r.inputs = {{"topic", Value::String("naïve \u2028 \"q\"")}};
  r.outputs = {{"text", Value{Value::Kind::kNumber, "18446744073709551616"}}};
  RunRecord back;
  REQUIRE(DecodeRecord(EncodeRecord(r), back));
  CHECK(back.run_id == "r");
  CHECK(back.account == "acct");
  CHECK(back.flow_version == 3);
  CHECK(back.status == RunStatus::kComplete);
  CHECK(back.inputs == r.inputs);
  CHECK(back.outputs == r.outputs);
  std::string shown = RenderRun(r);
  CHECK(shown.find("acct") == std::string::npos);
  CHECK(shown.find("\"outputs\":{\"text\":18446744073709551616}") != std::string::npos);
  r.save = false;
  CHECK(RenderRun(r).find("outputs") == std::string::npos);
}

TEST_CASE("replace-text: literal, regex, case and first-only replacement") {
  auto run = [](ReplaceSpec spec) {
    std::string out;
    auto why = ReplaceText(spec, out);
    return why ? "error: " + *why : out;
  };
  CHECK(run({"a.b.a.b", ".", "-", true, true, false}) == "a-b-a-b");
  CHECK(run({"a.b.a.b", ".", "-", false, true, false}) == "a-b.a.b");
  CHECK(run({"Cat cat CAT", "cat", "dog", true, false, false}) == "dog dog dog");
  CHECK(run({"Cat cat CAT", "cat", "dog", true, true, false}) == "Cat dog CAT");
  CHECK(run({"2026-12-03", R"((\d+)-(\d+)-(\d+))", "$3/$2/$1", true, true, true}) == "03/12/2026");
  CHECK(run({"$1 stays", "stays", "$& too", true, true, false}) == "$1 $& too");
  CHECK(run({"abc", "(", "x", true, true, true}).rfind("error: search_text is not a valid", 0) == 0);
  CHECK(run({"text", "", "x", true, true, true}) == "text");
}

TEST_CASE("replace-text: catastrophic backtracking ends with an error, not a hang") {
  std::string out;
  auto why = ReplaceText({std::string(5000, 'a') + "b", "(a+)+$", "x", true, true, true}, out);
  REQUIRE(why);
  CHECK(why->find("too expensive") != std::string::npos);
}

TEST_CASE("replace-text: a stop request ends a replacement of many matches between two of them") {
  // Each match of a(?=a*$) scans to the end: within the engine's limit one by one, but
  // quadratic over the text. Only `stop` bounds the whole.
  std::string out;
  std::atomic<bool> stop{true};
  auto why = ReplaceText({std::string(200000, 'a'), "a(?=a*$)", "b", true, true, true}, out, &stop);
  REQUIRE(why);
  CHECK(why->find("stopped") != std::string::npos);
  stop = false;
  CHECK_FALSE(ReplaceText({"aaa", "a(?=a*$)", "b", true, true, true}, out, &stop));
  CHECK(out == "bbb");
}

TEST_CASE("flow: API names are strings set on the node, never wired") {
  Error e;
  CHECK_FALSE(Parse(R"([
    {"name":"t#input-text","processorType":"input-text","inputText":"x"},
    {"name":"a#api-input","processorType":"api-input","inputs":[{"inputName":"api_input_name","inputNode":"t#input-text"}]},
    {"name":"o#api-output","processorType":"api-output","inputs":[{"inputName":"api_output_name","inputNode":"t#input-text"}]}])", &e));
  CHECK(HasProblem(e, "a#api-input", "cannot_be_wired"));
  CHECK(HasProblem(e, "o#api-output", "cannot_be_wired"));
  CHECK_FALSE(Parse(R"([
    {"name":"a#api-input","processorType":"api-input","api_input_name":5},
    {"name":"b#api-input","processorType":"api-input","api_input_name":"5"}])", &e));
  CHECK(HasProblem(e, "a#api-input", "must_be_a_string"));
}
