"""End-to-end tests of flowd's engine, node kinds and run routes against the real binary.

Usage: python3 test_engine.py <path-to-flowd> [name-substring ...]

What it proves, against shared/API.md, shared/FLOWS.md and shared/cases/README.md, with local
stand-ins (mock_servers.py) for model providers and HTTP targets:
- the engine: independent branches run concurrently, the first failure fails the run (naming the
  node) and cancels the rest, a node past its kind's timeout fails with `node_timeout`;
- node kinds: api-input/api-output, input-text, transition, display, merger-prompt,
  replace-text (literal, regex with groups, case, first-only, bad and catastrophic patterns),
  http-get-processor (JSON values, headers, redirects refused, 4xx, 2 MB cap, SSRF guard and its
  allow flags, HTTPS verified against --ca-file), llm-prompt, openrouter-processor,
  deepseek-processor and claude-anthropic-processor against a mock provider;
- regression cases C17 (e), C24 step 2, C26 (h), C28 (a)-(e), C29 (a)-(e);
- routes: `Prefer: wait=N`, cancel, the runs listing (paging, status filter), the event stream
  (order, ids, close at the end, Last-Event-ID, after a restart), and 429 `queue_full`;
- provider keys and $HOME never reach a run object, the logs or the data folder.

Prints `ok <name>` or `FAIL <name>: <reason>` per check, then `N passed, M failed`; the exit
status is non-zero when anything failed. Optional extra arguments run only the checks whose
names contain one of them. Everything listens and connects on loopback only.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from flowd_harness import (Client, Server, create_key, files_containing, load_flow, poll_run,
                           read_sse)
from mock_servers import (MockHTTP, MockLLM, Reply, chat_completion, make_certs, ok_reply,
                          openai_error, system_text, user_text)

LLM_NODE = "llmnode01#llm-prompt"
HTTP_NODE = "httpget01#http-get-processor"


# --------------------------------------------------------------------------- tiny runner

CHECKS = []
_notes = []


def check(fn):
    """Register a check under its function name."""
    CHECKS.append((fn.__name__, fn))
    return fn


def register(name, fn):
    CHECKS.append((name, fn))


def note(msg):
    """Record an observation; printed with the check's result."""
    _notes.append(str(msg))


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def short(value, n=400):
    if isinstance(value, (bytes, bytearray)):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value) if isinstance(value, (dict, list)) else repr(value)
    return text if len(text) <= n else text[:n] + "..."


def rand(n=8):
    return uuid.uuid4().hex[:n]


# --------------------------------------------------------------------------- shared fixture

class Ctx:
    """The mocks, certificates, one data dir with a key, and the main server:
    providers pointed at the mock LLM, loopback allowed by `--webhook-allow-cidr 127.0.0.0/8`,
    the test CA in `--ca-file`, logs at debug level (so leaks would show).

    Extra servers are made on demand: `guarded()` (no allow flag) and `queue_server()`
    (`--max-queued-runs 1 --webhook-allow-private`). Every stderr text and data dir ever used is
    kept for the final secrets scan.
    """

    def __init__(self, bin_path):
        self.bin = bin_path
        self.certs = make_certs()
        self.llm = MockLLM()
        self.web = MockHTTP()
        self.web6 = None
        self.tls = {}
        suffix = uuid.uuid4().hex
        self.llm_key = f"sk-e2e-openai-{suffix}"
        self.secrets = {
            "OPENAI_API_KEY": self.llm_key,
            "OPENROUTER_API_KEY": f"sk-or-e2e-{uuid.uuid4().hex}",
            "DEEPSEEK_API_KEY": f"sk-ds-e2e-{uuid.uuid4().hex}",
            "ANTHROPIC_API_KEY": f"sk-ant-e2e-{uuid.uuid4().hex}",
        }
        # A $HOME no other text could contain, so a leak of it is unambiguous (C17 (e)).
        self.home = f"/nonexistent/flowd-e2e-home-{suffix[:12]}"
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-engine-")
        self.data_dir = self._tmp.name
        self.key = create_key(bin_path, self.data_dir, "a", "engine")
        self.old_stderr = []      # stderr of every stopped server
        self.extra_dirs = []      # data dirs of extra servers
        self._extra = {}          # name -> (Server, key, TemporaryDirectory)
        self.openai_base = self.llm.url("/v1")
        self.server = self._start_main()
        self.state = {}

    def env(self, openai_base=None):
        env = {
            "OPENAI_BASE_URL": openai_base or self.openai_base,
            "OPENROUTER_BASE_URL": self.llm.url("/openrouter/api/v1"),
            "DEEPSEEK_BASE_URL": self.llm.url("/deepseek"),
            "ANTHROPIC_BASE_URL": self.llm.url("/anthropic"),
            "HOME": self.home,
            # A proxy from the caller's shell must not reroute the loopback calls.
            "NO_PROXY": "*", "no_proxy": "*",
            "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
        }
        env.update(self.secrets)
        return env

    def _start_main(self, openai_base=None):
        return Server(self.bin, self.data_dir, env=self.env(openai_base),
                      extra_args=("--webhook-allow-cidr", "127.0.0.0/8",
                                  "--ca-file", self.certs.ca, "--log-level", "debug"))

    def restart(self, openai_base=None):
        """Stop the main server (SIGTERM) and start it again on the same data dir."""
        self.old_stderr.append(self.server.stderr_text())
        self.server.close()
        self.server = self._start_main(openai_base)

    @property
    def port(self):
        return self.server.port

    @property
    def c(self):
        return Client(self.port, self.key, timeout=15.0)

    def extra(self, name, args):
        """A second server with its own data dir and key; returns (port, key)."""
        got = self._extra.get(name)
        if got is None or not got[0].alive():
            if got is not None:
                self.old_stderr.append(got[0].stderr_text())
                got[0].close()
            tmp = tempfile.TemporaryDirectory(prefix=f"flowd-e2e-{name}-")
            key = create_key(self.bin, tmp.name, "a", name)
            srv = Server(self.bin, tmp.name, env=self.env(),
                         extra_args=("--log-level", "debug", *args))
            got = (srv, key, tmp)
            self._extra[name] = got
            self.extra_dirs.append(tmp.name)
        return got[0].port, got[1]

    def guarded(self):
        """A server with no allow flag: the SSRF guard refuses every loopback target."""
        return self.extra("guarded", ())

    def queue_server(self):
        return self.extra("queue", ("--max-queued-runs", "1", "--webhook-allow-private"))

    def tls_server(self, which):
        """HTTPS MockHTTP with the certificate `which` (localhost, other, self_signed)."""
        if which not in self.tls:
            srv = MockHTTP(tls=getattr(self.certs, which))
            srv.route("/tls-json", json_body={"tls": which})
            self.tls[which] = srv
        return self.tls[which]

    def v6_target(self):
        """A MockHTTP on ::1, so that an unguarded request to [::1] would really arrive."""
        if self.web6 is None:
            try:
                self.web6 = MockHTTP(host="::1")
            except OSError as e:
                raise AssertionError(f"cannot listen on ::1: {e}")
        return self.web6

    def all_stderr(self):
        texts = list(self.old_stderr) + [self.server.stderr_text()]
        texts += [srv.stderr_text() for srv, _, _ in self._extra.values()]
        return "\n".join(texts)

    def all_dirs(self):
        return [self.data_dir] + list(self.extra_dirs)

    def revive(self):
        """None if the main server answers /healthz; else a message, after restarting it."""
        if self.server.alive():
            try:
                if Client(self.port, timeout=3.0).get("/healthz")[0] == 200:
                    return None
            except OSError:
                pass
            try:
                self.server.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.server.kill9()
                return self._restart_after("flowd stopped answering /healthz (killed)")
        return self._restart_after(f"flowd died (exit {self.server.returncode})")

    def _restart_after(self, msg):
        msg += "; stderr tail:\n" + self.server.stderr_tail(15)
        self.old_stderr.append(self.server.stderr_text())
        self.server.close()
        self.server = self._start_main()
        return msg

    def close(self):
        for srv, _, tmp in self._extra.values():
            srv.close()
            tmp.cleanup()
        self.server.close()
        for m in [self.llm, self.web, self.web6, *self.tls.values()]:
            if m is not None:
                m.close()
        self.certs.close()
        self._tmp.cleanup()


# --------------------------------------------------------------------------- flow helpers

def edge(src, field=None, key=0):
    e = {"inputNode": src, "inputNodeOutputKey": key}
    if field is not None:
        e["inputName"] = field
    return e


def node(name, kind, inputs=(), **fields):
    return {"name": name, "processorType": kind, "inputs": list(inputs), **fields}


def api_input(name, api_name, **fields):
    return node(name, "api-input", api_input_name=api_name, **fields)


def api_output(name, api_name, src):
    return node(name, "api-output", [edge(src)], api_output_name=api_name)


def http_get(name, url, inputs=(), **fields):
    return node(name, "http-get-processor", inputs, url=url, **fields)


def save(ctx, nodes, client=None):
    fid = str(uuid.uuid4())
    status, _, body = (client or ctx.c).put(f"/v1/flow/{fid}", nodes)
    expect(status == 201, f"PUT flow -> {status} {short(body)}")
    return fid


def start(ctx, fid, body, client=None, headers=None):
    status, hdrs, resp = (client or ctx.c).post(f"/v1/flow/{fid}/run", body, headers=headers)
    expect(status == 202, f"POST run -> {status} {short(resp)}")
    expect(isinstance(resp, dict) and isinstance(resp.get("run_id"), str),
           f"202 without run_id: {short(resp)}")
    return resp["run_id"]


def finish(ctx, fid, rid, timeout=15.0, client=None):
    return poll_run(client or ctx.c, fid, rid, timeout=timeout, interval=0.05)


def run_flow(ctx, fid, body, timeout=15.0, client=None):
    return finish(ctx, fid, start(ctx, fid, body, client), timeout, client)


def expect_complete(run):
    expect(run.get("status") == "complete", f"run ended {run.get('status')!r}: {short(run)}")
    expect(isinstance(run.get("outputs"), dict), f"complete run without outputs: {short(run)}")
    return run["outputs"]


def expect_failed(run, node_name=None, code=None):
    """Asserts a failed run with the error shape; returns error.message."""
    expect(run.get("status") == "failed", f"run ended {run.get('status')!r}: {short(run)}")
    err = run.get("error")
    expect(isinstance(err, dict) and isinstance(err.get("message"), str)
           and isinstance(err.get("code"), str), f"failed run without error object: {short(run)}")
    if node_name is not None:
        expect(err.get("node") == node_name, f"error.node {err.get('node')!r}, want {node_name!r}")
    if code is not None:
        expect(err.get("code") == code, f"error.code {err.get('code')!r}, want {code!r}")
    expect("outputs" not in run or not run["outputs"], f"failed run has outputs: {short(run)}")
    return err["message"]


def expect_mentions(message, *words):
    low = message.lower()
    expect(any(w.lower() in low for w in words),
           f"message {message!r} mentions none of {list(words)}")


def llm_flow(ctx):
    """A fresh copy of shared/cases/flows/llm.json."""
    return save(ctx, load_flow("llm"))


def http_flow(ctx, client=None):
    return save(ctx, load_flow("http"), client)


def healthy(ctx, port=None):
    status = Client(port or ctx.port, timeout=5.0).get("/healthz")[0]
    expect(status == 200, f"/healthz -> {status} afterwards")


def gaps(reqs):
    return [b.at - a.at for a, b in zip(reqs, reqs[1:])]


# --------------------------------------------------------------------------- local node kinds

@check
def local_kinds_pipeline(ctx):
    nodes = [
        api_input("inname001#api-input", "name"),
        api_input("inobj0001#api-input", "obj", default_value="none"),
        node("hello0001#input-text", "input-text", inputText="Hello"),
        node("trans0001#transition", "transition", [edge("inname001#api-input")]),
        node("displ0001#display", "display", [edge("trans0001#transition")]),
        node("merge0001#merger-prompt", "merger-prompt",
             [edge("hello0001#input-text", "input-1"), edge("displ0001#display", "input-2")],
             prompt="${input-1}, ${input-2}!", mergeMode=1),
        node("trans0002#transition", "transition", [edge("inobj0001#api-input")]),
        api_output("outgreet1#api-output", "greeting", "merge0001#merger-prompt"),
        api_output("outobj001#api-output", "obj", "trans0002#transition"),
    ]
    fid = save(ctx, nodes)
    out = expect_complete(run_flow(ctx, fid, {"name": "Ann", "obj": {"x": [1, "y"]}}))
    expect(out.get("greeting") == "Hello, Ann!", f"greeting {out.get('greeting')!r}")
    expect(out.get("obj") == {"x": [1, "y"]}, f"obj {out.get('obj')!r}: a JSON value passes "
                                              "through transition/api-output unchanged")


# --------------------------------------------------------------------------- engine

def _two_branch_flow(ctx, path_a, path_b, tail=False):
    nodes = [
        http_get("geta00001#http-get-processor", ctx.web.url(path_a)),
        http_get("getb00001#http-get-processor", ctx.web.url(path_b)),
        api_output("outa00001#api-output", "a", "geta00001#http-get-processor"),
    ]
    if tail:
        nodes.append(node("afterb001#transition", "transition",
                          [edge("getb00001#http-get-processor")]))
        nodes.append(api_output("outb00001#api-output", "b", "afterb001#transition"))
    else:
        nodes.append(api_output("outb00001#api-output", "b", "getb00001#http-get-processor"))
    return save(ctx, nodes)


def post_wait(ctx, fid, body, wait, client=None):
    t0 = time.monotonic()
    resp = (client or ctx.c).post(f"/v1/flow/{fid}/run", body,
                                  headers={"Prefer": f"wait={wait}"})
    return resp, time.monotonic() - t0


def run_timed(ctx, fid, body, timeout=15.0):
    """POST, then poll every 20 ms until the run ends; returns (run, seconds since the POST)."""
    t0 = time.monotonic()
    rid = start(ctx, fid, body)
    run = poll_run(ctx.c, fid, rid, timeout=timeout, interval=0.02)
    return run, time.monotonic() - t0


@check
def engine_branches_run_concurrently(ctx):
    tag = rand()
    ctx.web.route(f"/slow-a-{tag}", body="A", delay=1.0)
    ctx.web.route(f"/slow-b-{tag}", body="B", delay=1.0)
    fid = _two_branch_flow(ctx, f"/slow-a-{tag}", f"/slow-b-{tag}")
    run, took = run_timed(ctx, fid, {})
    out = expect_complete(run)
    expect(out == {"a": "A", "b": "B"}, f"outputs {out!r}")
    reqs = ctx.web.requests(f"-{tag}")
    expect(len(reqs) == 2, f"mock saw {len(reqs)} requests, want 2")
    note(f"total {took:.2f} s, requests {abs(reqs[1].at - reqs[0].at) * 1000:.0f} ms apart")
    expect(took < 1.8, f"two 1 s branches took {took:.2f} s: they did not run concurrently")
    expect(took >= 0.95, f"took {took:.2f} s, less than the mock's 1 s delay?")
    expect(run.get("progress", {}).get("nodes_done") == 4, f"progress {run.get('progress')}")


@check
def engine_failure_cancels_others(ctx):
    tag = rand()
    ctx.web.route(f"/fail-{tag}", status=500, body="boom")
    ctx.web.route(f"/slow3-{tag}", body="late", delay=3.0)
    fid = _two_branch_flow(ctx, f"/fail-{tag}", f"/slow3-{tag}", tail=True)
    run, took = run_timed(ctx, fid, {})
    msg = expect_failed(run, "geta00001#http-get-processor", "node_failed")
    expect_mentions(msg, "500")
    note(f"ended after {took:.2f} s: {msg}")
    expect(took < 2.0, f"run ended {took:.2f} s after the POST: the 3 s branch was not cancelled")
    sse = read_sse(ctx.port, ctx.key, f"/v1/flow/{fid}/run/{run['run_id']}/events", timeout=5)
    started = [e["data"].get("node") for e in sse["events"]
               if e["event"] == "node_started" and isinstance(e["data"], dict)]
    expect("getb00001#http-get-processor" in started, f"the slow branch never started: {started}")
    expect("afterb001#transition" not in started,
           f"a node started after the run had failed: {started}")
    expect(sse["events"] and sse["events"][-1]["event"] == "run_finished",
           f"last event {sse['events'][-1:]!r}")


@check
def engine_node_timeout(ctx):
    tag = rand()
    ctx.web.route(f"/slow7-{tag}", body="late", delay=7.0)
    fid = save(ctx, [http_get("getslow01#http-get-processor", ctx.web.url(f"/slow7-{tag}")),
                     api_output("outslow01#api-output", "x", "getslow01#http-get-processor")])
    run, took = run_timed(ctx, fid, {})
    expect_failed(run, "getslow01#http-get-processor", "node_timeout")
    note(f"node_timeout after {took:.2f} s")
    expect(4.5 <= took <= 6.5, f"the 5 s http-get timeout fired after {took:.2f} s")


# --------------------------------------------------------------------------- models

@check
def llm_replace_then_llm_end_to_end(ctx):
    tag = rand()
    fid = save(ctx, [
        api_input("intext001#api-input", "text"),
        node("repl00001#replace-text", "replace-text", [edge("intext001#api-input", "input_text")],
             search_text="cats", replacement_text="dogs"),
        node(LLM_NODE, "llm-prompt", [edge("repl00001#replace-text", "prompt")],
             model="gpt-4o-mini", context="You are terse.", prompt=""),
        api_output("outansw01#api-output", "answer", LLM_NODE),
    ])
    out = expect_complete(run_flow(ctx, fid, {"text": f"I like cats. cats! {tag}"}))
    want = f"I like dogs. dogs! {tag}"
    expect(out.get("answer") == want, f"answer {out.get('answer')!r}, want {want!r}")
    reqs = ctx.llm.requests(tag)
    expect(len(reqs) == 1, f"mock LLM saw {len(reqs)} requests, want 1")
    r = reqs[0]
    expect(r.method == "POST" and r.path == "/v1/chat/completions",
           f"request {r.method} {r.path}, want POST /v1/chat/completions")
    expect(r.headers.get("authorization") == f"Bearer {ctx.llm_key}",
           "Authorization is not Bearer <OPENAI_API_KEY>")
    expect(r.headers.get("content-type", "").startswith("application/json"),
           f"Content-Type {r.headers.get('content-type')!r}")
    body = r.json()
    expect(isinstance(body, dict) and body.get("model") == "gpt-4o-mini",
           f"model in request {short(body)}")
    expect(body.get("messages") == [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": want}],
           f"messages {short(body.get('messages'))}")


def _provider_check(kind, path, key_env, anthropic=False):
    def fn(ctx):
        tag = rand()
        fields = {"model": "some-model", "context": "Be brief.", "prompt": ""}
        fid = save(ctx, [
            api_input("intopic01#api-input", "topic"),
            node(f"model0001#{kind}", kind, [edge("intopic01#api-input", "prompt")], **fields),
            api_output("outansw01#api-output", "answer", f"model0001#{kind}"),
        ])
        out = expect_complete(run_flow(ctx, fid, {"topic": f"hello {tag}"}))
        expect(out.get("answer") == f"hello {tag}", f"answer {out.get('answer')!r}")
        reqs = ctx.llm.requests(tag)
        expect(len(reqs) == 1, f"mock saw {len(reqs)} requests, want 1")
        r = reqs[0]
        expect(r.method == "POST" and r.path == path, f"request {r.method} {r.path}, want {path}")
        key = ctx.secrets[key_env]
        body = r.json() or {}
        if anthropic:
            expect(r.headers.get("x-api-key") == key, "x-api-key is not ANTHROPIC_API_KEY")
            expect(r.headers.get("anthropic-version"), "no anthropic-version header")
            expect("authorization" not in r.headers, "Authorization sent to Anthropic")
            expect(body.get("max_tokens") == 1024, f"max_tokens {body.get('max_tokens')!r}")
        else:
            expect(r.headers.get("authorization") == f"Bearer {key}",
                   f"Authorization is not Bearer <{key_env}>")
        expect(body.get("model") == "some-model", f"model {body.get('model')!r}")
        expect(user_text(r) == f"hello {tag}", f"user text {user_text(r)!r}")
        expect(system_text(r) == "Be brief.", f"system text {system_text(r)!r}")
    return fn


register("llm_openrouter_processor",
         _provider_check("openrouter-processor", "/openrouter/api/v1/chat/completions",
                         "OPENROUTER_API_KEY"))
register("llm_deepseek_processor",
         _provider_check("deepseek-processor", "/deepseek/chat/completions", "DEEPSEEK_API_KEY"))
register("llm_claude_anthropic_processor",
         _provider_check("claude-anthropic-processor", "/anthropic/v1/messages",
                         "ANTHROPIC_API_KEY", anthropic=True))


@check
def c17e_markers_reach_llm_literally(ctx):
    fid = llm_flow(ctx)
    topic = "${OPENAI_API_KEY} ${env.HOME} {{secrets.OPENAI_API_KEY}}"
    want = "About " + topic
    before = len(ctx.llm.requests())
    out = expect_complete(run_flow(ctx, fid, {"topic": topic}))
    reqs = [r for r in ctx.llm.requests()[before:] if "OPENAI_API_KEY" in user_text(r)]
    expect(len(reqs) == 1, f"mock saw {len(reqs)} requests with the markers, want 1")
    expect(user_text(reqs[0]) == want, f"user message {user_text(reqs[0])!r}, want {want!r}")
    expect(out.get("answer") == want, f"answer {out.get('answer')!r}")
    time.sleep(0.3)  # the final record is written just after the run turns complete
    text = json.dumps(out)
    for secret, what in ((ctx.llm_key, "OPENAI_API_KEY"), (ctx.home, "$HOME")):
        expect(secret not in text, f"{what} in outputs")
        expect(secret not in ctx.all_stderr(), f"{what} in flowd's stderr")
        for d in ctx.all_dirs():
            hits = files_containing(d, secret)
            expect(not hits, f"{what} in data files {hits}")


@check
def c24_provider_401_key_redacted(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    ctx.llm.script(Reply(401, json_body={"error": {
        "message": f"Incorrect API key provided: {ctx.llm_key}",
        "type": "invalid_request_error"}}), match=tag)
    rid = start(ctx, fid, {"topic": tag})
    run = finish(ctx, fid, rid)
    msg = expect_failed(run, LLM_NODE)
    note(msg)
    expect_mentions(msg, "401")
    expect("[redacted]" in msg, f"message {msg!r} lacks [redacted]")
    expect("Incorrect API key provided" in msg, f"the provider's message is not in {msg!r}")
    expect(len(ctx.llm.requests(tag)) == 1, "a 401 was retried")
    time.sleep(0.3)
    places = {
        "GET run": json.dumps(ctx.c.get(f"/v1/flow/{fid}/run/{rid}")[2]),
        "runs listing": json.dumps(ctx.c.get(f"/v1/flow/{fid}/runs")[2]),
        "events": json.dumps([e["raw"] for e in read_sse(
            ctx.port, ctx.key, f"/v1/flow/{fid}/run/{rid}/events", timeout=5)["events"]]),
        "stderr": ctx.all_stderr(),
    }
    status, _, metrics = Client(ctx.port).get("/metrics")
    if status == 200:
        places["/metrics"] = short(metrics, 10 ** 9)
    for where, text in places.items():
        expect(ctx.llm_key not in text, f"the provider key appears in {where}")
    for d in ctx.all_dirs():
        hits = files_containing(d, ctx.llm_key)
        expect(not hits, f"the provider key is in data files {hits}")


# -- C28: model calls that meet 429 and 5xx. All five runs start together (scripts are keyed
# by each run's topic), so the checks share one wait.

def _c28_start(ctx):
    if "c28" in ctx.state:
        return ctx.state["c28"]
    rl = {"error": {"message": f"Rate limit reached for key {ctx.llm_key}",
                    "type": "rate_limit_error"}}
    scripts = {
        "a": [Reply(429, json_body=rl, headers={"Retry-After": "2"})] * 2 + [ok_reply("ok")],
        "b": [Reply(429, json_body=rl)] * 3 + [ok_reply("ok")],
        "c": [Reply(429, json_body=rl)] * 8,
        "d": [openai_error(500, "server error", "server_error")] * 2 + [ok_reply("ok")],
        "e": [Reply(400, json_body={"error": {"message": "bad model"}})],
    }
    fid = llm_flow(ctx)
    runs = {}
    for case, replies in scripts.items():
        tag = f"c28{case}-{rand()}"
        ctx.llm.script(*replies, match=tag)
        runs[case] = (tag, start(ctx, fid, {"topic": tag}), time.monotonic())
    ctx.state["c28"] = (fid, runs)
    return ctx.state["c28"]


def _c28_finish(ctx, case):
    fid, runs = _c28_start(ctx)
    tag, rid, _ = runs[case]
    run = finish(ctx, fid, rid, timeout=20)
    ctx.llm.clear_scripts(match=tag)
    return run, ctx.llm.requests(tag)


def runs_tag(ctx, case):
    return ctx.state["c28"][1][case][0]


@check
def c28a_429_retry_after_honoured(ctx):
    fid, runs = _c28_start(ctx)
    tag, rid, _ = runs["a"]
    got = ctx.llm.wait_requests(1, match=tag, timeout=5)
    expect(got, "the first request never reached the mock")
    time.sleep(0.3)
    status, _, mid = ctx.c.get(f"/v1/flow/{fid}/run/{rid}")
    expect(status == 200 and mid.get("status") == "pending",
           f"while waiting out Retry-After the run is {mid.get('status')!r}, want pending")
    run, reqs = _c28_finish(ctx, "a")
    out = expect_complete(run)
    expect(out.get("answer") == "ok", f"answer {out.get('answer')!r}")
    expect(len(reqs) == 3, f"{len(reqs)} requests, want 3")
    g = gaps(reqs)
    note("gaps " + ", ".join(f"{x:.2f}" for x in g))
    expect(all(x >= 1.99 for x in g), f"a retry came sooner than Retry-After: 2: gaps {g}")


@check
def c28b_429_backoff_grows(ctx):
    run, reqs = _c28_finish(ctx, "b")
    expect_complete(run)
    expect(len(reqs) == 4, f"{len(reqs)} requests, want 4")
    g = gaps(reqs)
    note("gaps " + ", ".join(f"{x:.2f}" for x in g))
    expect(g[0] >= 0.3, f"first retry after {g[0]:.2f} s: no backoff")
    expect(g[0] < g[1] < g[2], f"gaps do not grow: {g}")
    for got, nominal in zip(g, (0.5, 1.0, 2.0)):
        expect(nominal - 0.05 <= got < nominal + 0.6,
               f"gaps {[round(x, 2) for x in g]}, want about 0.5, 1, 2 s")


@check
def c28c_429_forever_gives_up(ctx):
    run, reqs = _c28_finish(ctx, "c")
    msg = expect_failed(run, LLM_NODE)
    note(msg)
    time.sleep(0.3)
    n = len(ctx.llm.requests(runs_tag(ctx, "c")))
    expect(n == 4, f"{n} requests, want exactly 4 (1 + 3 retries)")
    expect_mentions(msg, "rate limit", "rate-limit", "rate_limit", "429")
    expect(ctx.llm_key not in json.dumps(run), "the provider key is in the run object")


@check
def c28d_500_then_ok(ctx):
    run, reqs = _c28_finish(ctx, "d")
    out = expect_complete(run)
    expect(out.get("answer") == "ok", f"answer {out.get('answer')!r}")
    expect(len(reqs) == 3, f"{len(reqs)} requests, want 3")


@check
def c28e_400_not_retried(ctx):
    run, _ = _c28_finish(ctx, "e")
    msg = expect_failed(run, LLM_NODE)
    time.sleep(0.3)
    n = len(ctx.llm.requests(runs_tag(ctx, "e")))
    expect(n == 1, f"{n} requests, want exactly 1")
    expect("bad model" in msg, f"message {msg!r} lacks the provider's 'bad model'")


# -- C29: broken completions

def _c29(reply, words):
    def fn(ctx):
        tag = rand()
        fid = llm_flow(ctx)
        ctx.llm.script(reply, match=tag)
        run = run_flow(ctx, fid, {"topic": tag})
        ctx.llm.clear_scripts(match=tag)
        msg = expect_failed(run, LLM_NODE)
        note(msg)
        expect_mentions(msg, *words)
        healthy(ctx)
    return fn


register("c29a_null_content", _c29(Reply(200, json_body={
    "id": "x", "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                 "finish_reason": "length"}]}), ["length"]))
register("c29b_empty_choices", _c29(Reply(200, json_body={"choices": []}), ["choices"]))
register("c29c_html_body", _c29(Reply(200, body="<html>oops</html>",
                                      headers={"Content-Type": "text/html"}), ["json"]))
register("c29d_truncated_then_reset", _c29(
    Reply(200, json_body=chat_completion("ok"), content_length=400, send_only=100),
    ["truncat", "incomplete", "partial", "short read", "end of stream", "reset"]))


register("c29f_empty_content", _c29(Reply(200, json_body=chat_completion("")), ["empty"]))
register("c29h_trailing_bytes_after_the_answer", _c29(Reply(
    200, body=json.dumps(chat_completion("ok")) + " trailing", headers={"Content-Type": "application/json"}),
    ["not json"]))
register("c29i_repeated_key_in_the_answer", _c29(Reply(
    200, body='{"choices":[{"index":0,"message":{"role":"assistant","content":"a","content":"b"}}]}',
    headers={"Content-Type": "application/json"}), ["repeats a key"]))
register("c29g_cut_off_at_the_token_limit", _c29(
    Reply(200, json_body=chat_completion("half an ans", finish_reason="length")), ["cut off", "length"]))


@check
def provider_key_redacted_in_answers_that_succeed(ctx):
    """C24: the key is redacted in everything the provider sends, not only in its errors."""
    fid = llm_flow(ctx)
    tag = rand()
    ctx.llm.script(ok_reply(f"your key is {ctx.llm_key}, keep it"), match=tag)
    out = expect_complete(run_flow(ctx, fid, {"topic": tag}))
    expect(out.get("answer") == "your key is [redacted], keep it", f"answer {out.get('answer')!r}")
    tag = rand()
    ctx.llm.script(Reply(200, json_body={"choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                                       "finish_reason": ctx.llm_key}]}), match=tag)
    run = run_flow(ctx, fid, {"topic": tag})
    msg = expect_failed(run, LLM_NODE)
    expect(ctx.llm_key not in json.dumps(run), f"the key reached the run object: {msg!r}")
    expect("[redacted]" in msg, f"message {msg!r}")


@check
def c29e_base_url_trailing_slash(ctx):
    seen = []
    try:
        for base in (ctx.llm.url("/v1/"), ctx.llm.url("/v1")):
            ctx.restart(openai_base=base)
            tag = rand()
            ctx.llm.script(ok_reply("ok"), match=tag)
            fid = llm_flow(ctx)
            out = expect_complete(run_flow(ctx, fid, {"topic": tag}))
            expect(out.get("answer") == "ok", f"base {base}: answer {out.get('answer')!r}")
            paths = [r.path for r in ctx.llm.requests(tag)]
            seen.append((base, paths))
            expect(paths == ["/v1/chat/completions"],
                   f"OPENAI_BASE_URL={base}: mock saw paths {paths}")
    finally:
        if ctx.server.alive():
            ctx.restart()  # back to the usual base URL for later checks
    note(f"{seen}")


# --------------------------------------------------------------------------- http-get

@check
def http_get_json_becomes_value(ctx):
    tag = rand()
    value = {"a": [1, 2.5, {"b": "c"}], "n": None, "t": True, "s": "x\u00e9"}
    ctx.web.route(f"/json-{tag}", json_body=value)
    fid = http_flow(ctx)
    out = expect_complete(run_flow(ctx, fid, {"url": ctx.web.url(f"/json-{tag}")}))
    expect(out.get("body") == value, f"body {short(out.get('body'))}, want the JSON value")
    reqs = ctx.web.requests(f"/json-{tag}")
    expect(len(reqs) == 1 and reqs[0].method == "GET", f"mock saw {reqs}")
    expect(reqs[0].headers.get("accept") == "application/json",
           f"headers list not sent: Accept {reqs[0].headers.get('accept')!r}")


@check
def http_get_text_and_object_headers(ctx):
    tag = rand()
    ctx.web.route(f"/text-{tag}", body="plain words", headers={"Content-Type": "text/plain"})
    fid = save(ctx, [
        http_get(HTTP_NODE, ctx.web.url(f"/text-{tag}"), headers={"X-E2e": f"v-{tag}"}),
        api_output("outbody01#api-output", "body", HTTP_NODE),
    ])
    out = expect_complete(run_flow(ctx, fid, {}))
    expect(out.get("body") == "plain words", f"body {out.get('body')!r}")
    reqs = ctx.web.requests(f"/text-{tag}")
    expect(len(reqs) == 1, f"{len(reqs)} requests")
    expect(reqs[0].headers.get("x-e2e") == f"v-{tag}",
           f"object-form header not sent: {reqs[0].headers}")


@check
def http_get_header_with_line_break_fails_node(ctx):
    """A header value from the flow or a wire goes into the request as it is: with CR/LF it
    would add headers or a second request. The client refuses it; nothing is sent."""
    tag = rand()
    ctx.web.route(f"/hdr-{tag}", body="reached")
    for headers in ({"X-A": "v\r\nX-Injected: yes"}, [{"key": "X-A\r\nX-B", "value": "v"}],
                    {"X-A": "v\u0000"}):
        fid = save(ctx, [
            http_get(HTTP_NODE, ctx.web.url(f"/hdr-{tag}"), headers=headers),
            api_output("outbody01#api-output", "body", HTTP_NODE),
        ])
        msg = expect_failed(run_flow(ctx, fid, {}), HTTP_NODE)
        expect_mentions(msg, "header")
    time.sleep(0.3)
    expect(not ctx.web.requests(f"/hdr-{tag}"), "a request with a bad header was sent")


@check
def c26h_redirect_fails_node(ctx):
    tag = rand()
    ctx.web.route(f"/r-{tag}", status=302, headers={"Location": f"/data-{tag}"}, body="moved")
    ctx.web.route(f"/data-{tag}", body="secret data")
    fid = http_flow(ctx)
    run = run_flow(ctx, fid, {"url": ctx.web.url(f"/r-{tag}")})
    msg = expect_failed(run, HTTP_NODE)
    note(msg)
    expect_mentions(msg, "redirect")
    time.sleep(0.5)
    expect(not ctx.web.requests(f"/data-{tag}"), "the Location target /data was requested")
    expect(len(ctx.web.requests(f"/r-{tag}")) == 1, "the redirecting URL was not requested once")


@check
def http_get_404_fails(ctx):
    tag = rand()
    ctx.web.route(f"/missing-{tag}", status=404, body="nope")
    run = run_flow(ctx, http_flow(ctx), {"url": ctx.web.url(f"/missing-{tag}")})
    expect_mentions(expect_failed(run, HTTP_NODE), "404")


@check
def http_get_body_cap_2mb(ctx):
    tag = rand()
    ctx.web.route(f"/big-{tag}", body=b"x" * (3 << 20), headers={"Content-Type": "text/plain"})
    ctx.web.route(f"/fits-{tag}", body=b"y" * ((2 << 20) - 4096),
                  headers={"Content-Type": "text/plain"})
    fid = http_flow(ctx)
    run = run_flow(ctx, fid, {"url": ctx.web.url(f"/big-{tag}")})
    note(expect_failed(run, HTTP_NODE))
    out = expect_complete(run_flow(ctx, fid, {"url": ctx.web.url(f"/fits-{tag}")}))
    expect(out.get("body") == "y" * ((2 << 20) - 4096), "a body just under 2 MB was not kept whole")


def _ssrf_urls(ctx, tag):
    p = ctx.web.port
    p6 = ctx.v6_target().port
    path = f"/ssrf-{tag}"
    return [f"http://127.0.0.1:{p}{path}", f"http://localhost:{p}{path}",
            f"http://2130706433:{p}{path}", f"http://0x7f.1:{p}{path}",
            f"http://0x7f000001:{p}{path}", f"http://0177.0.0.1:{p}{path}",
            f"http://127.1:{p}{path}", f"http://[::ffff:127.0.0.1]:{p}{path}",
            f"http://[::ffff:7f00:1]:{p}{path}", f"http://0.0.0.0:{p}{path}",
            f"http://[::1]:{p6}{path}", f"http://[::]:{p6}{path}"]


@check
def ssrf_refused_without_flag(ctx):
    port, key = ctx.guarded()
    cl = Client(port, key, timeout=15.0)
    tag = rand()
    ctx.web.route(f"/ssrf-{tag}", body="reached")
    ctx.v6_target().route(f"/ssrf-{tag}", body="reached")
    fid = http_flow(ctx, cl)
    rids = [(u, start(ctx, fid, {"url": u}, cl)) for u in _ssrf_urls(ctx, tag)]
    problems, seen = [], set()
    for url, rid in rids:
        run = finish(ctx, fid, rid, client=cl)
        err = run.get("error") or {}
        msg = err.get("message", "")
        if run.get("status") != "failed" or err.get("node") != HTTP_NODE:
            problems.append(f"{url}: {run.get('status')} {short(err)}")
        elif "refused" not in msg.lower() or "connection refused" in msg.lower():
            problems.append(f"{url}: message {msg!r} does not say the guard refused it")
        else:
            seen.add(msg)
    time.sleep(0.3)
    reached = ctx.web.requests(f"/ssrf-{tag}") + ctx.web6.requests(f"/ssrf-{tag}")
    if reached:
        problems.append(f"the mock received {len(reached)} request(s)")
    note(f"{len(rids)} spellings; messages {sorted(seen)}")
    expect(not problems, "; ".join(problems))


@check
def ssrf_guard_holds_after_a_model_call_to_the_same_address(ctx):
    """The model provider is the operator's choice and may sit on loopback; the kept-alive
    connection to it must never carry a guarded request (http-get-processor, webhooks)."""
    port, key = ctx.guarded()
    cl = Client(port, key, timeout=15.0)
    tag = rand()
    llm_fid = save(ctx, load_flow("llm"), cl)
    expect_complete(run_flow(ctx, llm_fid, {"topic": tag}, client=cl))
    http_fid = http_flow(ctx, cl)
    target = f"http://127.0.0.1:{ctx.llm.port}/internal-{tag}"
    run = run_flow(ctx, http_fid, {"url": target}, client=cl)
    expect_mentions(expect_failed(run, HTTP_NODE), "refused")
    reached = [r for r in ctx.llm.requests() if f"internal-{tag}" in r.path]
    expect(not reached, f"the guarded request reached the provider's address: {reached[:1]}")


@check
def ssrf_allowed_with_cidr_flag(ctx):
    tag = rand()
    ctx.web.route(f"/allowed-{tag}", json_body={"ok": True})
    fid = http_flow(ctx)
    for url in (ctx.web.url(f"/allowed-{tag}"),
                f"http://[::ffff:127.0.0.1]:{ctx.web.port}/allowed-{tag}"):
        out = expect_complete(run_flow(ctx, fid, {"url": url}))
        expect(out.get("body") == {"ok": True}, f"{url}: body {out.get('body')!r}")
    # ::1 is outside 127.0.0.0/8: still refused.
    run = run_flow(ctx, fid, {"url": f"http://[::1]:{ctx.v6_target().port}/allowed-{tag}"})
    expect_mentions(expect_failed(run, HTTP_NODE), "refused")
    expect(len(ctx.web.requests(f"/allowed-{tag}")) == 2, "mock did not see both requests")


@check
def ssrf_allowed_with_private_flag(ctx):
    port, key = ctx.queue_server()
    cl = Client(port, key, timeout=15.0)
    tag = rand()
    ctx.web.route(f"/priv-{tag}", json_body={"ok": 1})
    fid = http_flow(ctx, cl)
    out = expect_complete(run_flow(ctx, fid, {"url": ctx.web.url(f"/priv-{tag}")}, client=cl))
    expect(out.get("body") == {"ok": 1}, f"body {out.get('body')!r}")


def _https(which, ok):
    def fn(ctx):
        srv = ctx.tls_server(which)
        before = len(srv.tls_failures)
        run = run_flow(ctx, http_flow(ctx), {"url": f"https://localhost:{srv.port}/tls-json"})
        if ok:
            out = expect_complete(run)
            expect(out.get("body") == {"tls": which}, f"body {out.get('body')!r}")
            return
        msg = expect_failed(run, HTTP_NODE)
        note(msg)
        expect_mentions(msg, "tls", "certificate", "ssl")
        expect(not srv.requests(), "an HTTP request got through the failed handshake")
        expect(len(srv.tls_failures) > before, "the mock saw no failed handshake")
    return fn


register("https_ca_cert_for_localhost_ok", _https("localhost", True))
register("https_self_signed_fails", _https("self_signed", False))
register("https_cert_for_other_test_fails", _https("other", False))


# --------------------------------------------------------------------------- replace-text

def _replace(fields, text, want=None, fail_words=None, primary=False):
    def fn(ctx):
        e = edge("intext001#api-input") if primary else edge("intext001#api-input", "input_text")
        fid = save(ctx, [
            api_input("intext001#api-input", "text"),
            node("repl00001#replace-text", "replace-text", [e], **fields),
            api_output("outtext01#api-output", "out", "repl00001#replace-text"),
        ])
        run = run_flow(ctx, fid, {"text": text})
        if fail_words is None:
            out = expect_complete(run)
            expect(out.get("out") == want, f"out {out.get('out')!r}, want {want!r}")
        else:
            msg = expect_failed(run, "repl00001#replace-text")
            note(msg)
            expect_mentions(msg, *fail_words)
    return fn


register("replace_literal_all", _replace(
    {"search_text": ".", "replacement_text": "-$1"}, "a.b.c", "a-$1b-$1c"))
register("replace_primary_input_is_input_text", _replace(
    {"search_text": "x", "replacement_text": "y"}, "xox", "yoy", primary=True))
register("replace_regex_groups", _replace(
    {"search_text": r"(\w+) (\w+)", "replacement_text": "$2, $1", "use_regex": True},
    "John Smith", "Smith, John"))
register("replace_case_insensitive", _replace(
    {"search_text": "cat", "replacement_text": "dog", "case_sensitivity": False},
    "Cat cat CAT", "dog dog dog"))
register("replace_case_sensitive_default", _replace(
    {"search_text": "cat", "replacement_text": "dog"}, "Cat cat CAT", "Cat dog CAT"))
register("replace_first_only", _replace(
    {"search_text": "a", "replacement_text": "b", "replace_all": False}, "a a a", "b a a"))
register("replace_regex_first_only_icase", _replace(
    {"search_text": "[0-9]+", "replacement_text": "#", "use_regex": True, "replace_all": False},
    "x12 y34", "x# y34"))
register("replace_bad_regex_fails", _replace(
    {"search_text": "(", "replacement_text": "x", "use_regex": True}, "abc",
    fail_words=["regular expression", "regex", "pattern"]))


@check
def replace_many_matches_stops_on_cancel(ctx):
    """a(?=a*$) scans to the end at each of a million matches: each match is cheap enough
    for the regex engine's limit, the whole is hours. A cancel stops it between matches,
    and the next replace-text (on the same worker) runs at once."""
    fid = save(ctx, [
        api_input("intext001#api-input", "text"),
        node("repl00001#replace-text", "replace-text", [edge("intext001#api-input", "input_text")],
             search_text="a(?=a*$)", replacement_text="b", use_regex=True),
        api_output("outtext01#api-output", "out", "repl00001#replace-text"),
    ])
    rid = start(ctx, fid, {"text": "a" * 1_000_000})
    time.sleep(0.5)
    t0 = time.monotonic()
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{rid}/cancel")
    took = time.monotonic() - t0
    expect(status == 200 and body.get("status") == "canceled",
           f"cancel -> {status} {short(body)} after {took:.2f} s")
    expect(took < 2.0, f"cancel took {took:.2f} s")
    t0 = time.monotonic()
    out = expect_complete(run_flow(ctx, fid, {"text": "aaa"}))
    expect(out.get("out") == "bbb", f"out {out.get('out')!r}")
    note(f"cancel {took:.2f} s, next replace {time.monotonic() - t0:.2f} s")


@check
def replace_catastrophic_regex_bounded(ctx):
    fid = save(ctx, [
        api_input("intext001#api-input", "text"),
        node("repl00001#replace-text", "replace-text", [edge("intext001#api-input", "input_text")],
             search_text="(a+)+$", replacement_text="x", use_regex=True),
        api_output("outtext01#api-output", "out", "repl00001#replace-text"),
    ])
    health = []
    done = threading.Event()

    def probe():  # /healthz every 100 ms while the pattern is being matched
        for _ in range(100):
            if done.is_set():
                return
            t = time.monotonic()
            try:
                status = Client(ctx.port, timeout=10.0).get("/healthz")[0]
            except OSError as e:
                status = repr(e)
            health.append((status, time.monotonic() - t))
            done.wait(0.1)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()   # probing starts before the POST: a stalled event loop delays even that
    time.sleep(0.15)
    t0 = time.monotonic()
    try:
        rid = start(ctx, fid, {"text": "a" * 5000 + "b"})
        post_took = time.monotonic() - t0
        run = finish(ctx, fid, rid, timeout=10.0)
        took = time.monotonic() - t0
        time.sleep(0.15)
    finally:
        done.set()
        prober.join(11.0)
    expect(run.get("status") in ("failed", "complete"), f"run {run.get('status')}")
    worst = max((h[1] for h in health), default=0.0)
    note(f"{run.get('status')} after {took:.2f} s; the POST took {post_took:.2f} s; "
         f"{len(health)} /healthz probes, slowest {worst:.2f} s; "
         f"{short((run.get('error') or {}).get('message', ''), 140)}")
    expect(took < 6.0, f"the run took {took:.2f} s")
    expect(health and all(h[0] == 200 for h in health), f"/healthz during the match: {health}")
    expect(worst < 1.0 and post_took < 1.0,
           f"while the pattern was matched /healthz took up to {worst:.2f} s and the POST "
           f"{post_took:.2f} s: matching stalls the server")
    healthy(ctx)


# --------------------------------------------------------------------------- routes

@check
def prefer_wait_200_when_done(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    (status, hdrs, run), took = post_wait(ctx, fid, {"topic": tag}, 5)
    expect(status == 200, f"Prefer: wait=5 -> {status} {short(run)}")
    expect(took < 3.0, f"answered after {took:.2f} s")
    out = expect_complete(run)
    expect(out.get("answer") == f"About {tag}", f"answer {out.get('answer')!r}")
    for field in ("run_id", "flow_id", "flow_version", "created_at", "finished_at"):
        expect(field in run, f"the 200 body lacks {field!r}: {short(run)}")
    same = ctx.c.get(f"/v1/flow/{fid}/run/{run['run_id']}")[2]
    expect(same.get("outputs") == run["outputs"] and same.get("status") == "complete",
           f"GET differs from the wait answer: {short(same)}")


@check
def prefer_wait_202_when_slow(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    ctx.llm.script(ok_reply("slow ok", delay=3.0), match=tag)
    (status, hdrs, body), took = post_wait(ctx, fid, {"topic": tag}, 1)
    expect(status == 202, f"Prefer: wait=1 with a 3 s model -> {status} {short(body)}")
    note(f"202 after {took:.2f} s")
    expect(0.9 <= took < 2.5, f"202 came after {took:.2f} s, want about 1 s")
    expect(body.get("status") == "pending", f"status {body.get('status')!r}")
    expect(hdrs.get("location") == f"/v1/flow/{fid}/run/{body['run_id']}",
           f"Location {hdrs.get('location')!r}")
    out = expect_complete(finish(ctx, fid, body["run_id"], timeout=8))
    expect(out.get("answer") == "slow ok", f"answer {out.get('answer')!r}")


@check
def prefer_wait_holds_through_node_events(ctx):
    """Two chained 0.6 s calls: node events arrive while the request waits; it must keep waiting
    until the run ends (about 1.2 s), not answer 202 at the first event."""
    tag = rand()
    ctx.web.route(f"/step1-{tag}", body="one", delay=0.6)
    ctx.web.route(f"/step2-{tag}", body="two", delay=0.6)
    fid = save(ctx, [
        http_get("step10001#http-get-processor", ctx.web.url(f"/step1-{tag}")),
        http_get("step20001#http-get-processor", ctx.web.url(f"/step2-{tag}"),
                 [edge("step10001#http-get-processor", "after")]),
        api_output("outtext01#api-output", "out", "step20001#http-get-processor"),
    ])
    (status, _, body), took = post_wait(ctx, fid, {}, 5)
    note(f"{status} after {took:.2f} s")
    expect(status == 200, f"Prefer: wait=5 on a 1.2 s run -> {status} after {took:.2f} s "
                          f"(status {body.get('status')!r}); want 200 with the ended run")
    expect(expect_complete(body).get("out") == "two", f"outputs {short(body)}")


@check
def cancel_running_run(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    ctx.llm.script(ok_reply("too late", delay=5.0), match=tag)
    rid = start(ctx, fid, {"topic": tag})
    expect(ctx.llm.wait_requests(1, match=tag, timeout=5), "the model call never started")
    t0 = time.monotonic()
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{rid}/cancel")
    took = time.monotonic() - t0
    expect(status == 200, f"cancel -> {status} {short(body)}")
    note(f"cancel answered in {took:.2f} s with {body.get('status')!r}")
    expect(body.get("status") == "canceled", f"cancel answer status {body.get('status')!r}")
    expect(took < 1.5, f"cancel took {took:.2f} s")
    run = ctx.c.get(f"/v1/flow/{fid}/run/{rid}")[2]
    expect(run.get("status") == "canceled", f"GET after cancel: {run.get('status')!r}")
    expect(not run.get("outputs") and "error" not in run, f"canceled run body {short(run)}")
    expect(run.get("finished_at"), "canceled run has no finished_at")
    time.sleep(0.2)
    again = ctx.c.get(f"/v1/flow/{fid}/run/{rid}")[2]
    expect(again.get("status") == "canceled", f"later GET: {again.get('status')!r}")
    sse = read_sse(ctx.port, ctx.key, f"/v1/flow/{fid}/run/{rid}/events", timeout=5)
    last = sse["events"][-1] if sse["events"] else {}
    expect(last.get("event") == "run_finished" and last["data"].get("status") == "canceled",
           f"last event of the canceled run: {last!r}")
    stopped = [e["data"] for e in sse["events"] if e["event"] == "node_failed"]
    expect(stopped and all(d.get("error", {}).get("code") == "node_canceled" for d in stopped),
           f"the stopped model node's event should say it was canceled: {stopped!r}")
    listed = ctx.c.get(f"/v1/flow/{fid}/runs?status=canceled")[2]
    expect([r.get("run_id") for r in listed.get("runs", [])] == [rid],
           f"status=canceled listing {short(listed)}")


@check
def cancel_ended_run_unchanged(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    run = run_flow(ctx, fid, {"topic": tag})
    expect_complete(run)
    before = ctx.c.get(f"/v1/flow/{fid}/run/{run['run_id']}")[2]
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{run['run_id']}/cancel")
    expect(status == 200, f"cancel of an ended run -> {status} {short(body)}")
    expect(body == before, f"cancel changed the run: {short(before)} -> {short(body)}")
    after = ctx.c.get(f"/v1/flow/{fid}/run/{run['run_id']}")[2]
    expect(after == before, f"GET after cancel differs: {short(after)}")
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{uuid.uuid4()}/cancel")
    expect(status == 404, f"cancel of an unknown run -> {status} {short(body)}")


def _list_all(ctx, fid, query, limit):
    """Follows next_cursor; returns (pages of run ids, list of every body)."""
    pages, bodies, cursor = [], [], None
    for _ in range(20):
        q = f"limit={limit}" + (f"&{query}" if query else "") + (f"&cursor={cursor}" if cursor else "")
        status, _, body = ctx.c.get(f"/v1/flow/{fid}/runs?{q}")
        expect(status == 200, f"GET runs?{q} -> {status} {short(body)}")
        expect(isinstance(body, dict) and "next_cursor" in body and isinstance(body.get("runs"), list),
               f"listing shape {short(body)}")
        pages.append([r.get("run_id") for r in body["runs"]])
        bodies.append(body)
        cursor = body["next_cursor"]
        if cursor is None:
            return pages, bodies
        expect(isinstance(cursor, str) and cursor, f"next_cursor {cursor!r}")
    raise AssertionError("listing did not end within 20 pages")


@check
def runs_listing_paging_and_filter(ctx):
    # The pattern comes from the input: "b" completes, "(" is not a regex and fails.
    fid = save(ctx, [
        api_input("inpat0001#api-input", "pattern"),
        node("repl00001#replace-text", "replace-text", [edge("inpat0001#api-input", "search_text")],
             input_text="abc", replacement_text="x", use_regex=True),
        api_output("outtext01#api-output", "out", "repl00001#replace-text"),
    ])
    created = []
    for pattern in ("b", "(", "b", "(", "b"):
        run = run_flow(ctx, fid, {"pattern": pattern})
        created.append((run["run_id"], run["status"]))
        time.sleep(0.01)  # distinct created_at milliseconds
    expect([s for _, s in created] == ["complete", "failed"] * 2 + ["complete"],
           f"setup statuses {created}")
    newest_first = [rid for rid, _ in reversed(created)]
    pages, bodies = _list_all(ctx, fid, "", 2)
    expect([len(p) for p in pages] == [2, 2, 1],
           f"page sizes {[len(p) for p in pages]}, want [2, 2, 1]")
    flat = [r for p in pages for r in p]
    expect(flat == newest_first, f"pages {pages}, want newest first {newest_first}")
    for body in bodies:
        for r in body["runs"]:
            expect(r.get("status") in ("complete", "failed") and r.get("flow_id") == fid,
                   f"listed run {short(r)}")
    pages, _ = _list_all(ctx, fid, "status=failed", 100)
    want = [rid for rid, s in reversed(created) if s == "failed"]
    expect([r for p in pages for r in p] == want, f"status=failed: {pages}, want {want}")
    pages, _ = _list_all(ctx, fid, "status=complete", 2)
    want = [rid for rid, s in reversed(created) if s == "complete"]
    expect([r for p in pages for r in p] == want, f"status=complete pages {pages}, want {want}")
    pages, _ = _list_all(ctx, fid, "status=canceled", 100)
    expect(pages == [[]], f"status=canceled {pages}")
    status, _, body = ctx.c.get(f"/v1/flow/{fid}/runs?limit=101")
    expect(status == 400 or (status == 200 and len(body.get("runs", [])) <= 100),
           f"limit=101 -> {status} {short(body)}")
    note(f"limit=101 -> {status}")
    status, _, body = ctx.c.get(f"/v1/flow/{uuid.uuid4()}/runs")
    expect(status == 404, f"runs of an unknown flow -> {status}")


def _expect_event_shape(events, nodes):
    """Order, ids, names and data of a finished run's events."""
    expect(events, "no events")
    ids = []
    for e in events:
        expect(e["id"] is not None and e["id"].isdigit(), f"event without a numeric id: {e}")
        ids.append(int(e["id"]))
        expect(isinstance(e["data"], dict), f"data is not a JSON object: {e.get('raw')!r}")
        expect(e["event"] in ("node_started", "node_finished", "node_failed", "run_finished"),
               f"event type {e['event']!r}")
        expect(e["data"].get("type") == e["event"], f"data.type differs from event: {e}")
    expect(all(b > a for a, b in zip(ids, ids[1:])), f"ids do not increase: {ids}")
    kinds = [e["event"] for e in events]
    expect(kinds[-1] == "run_finished" and kinds.count("run_finished") == 1,
           f"run_finished is not last and single: {kinds}")
    for n in nodes:
        mine = [e["event"] for e in events if e["data"].get("node") == n]
        expect(mine[:1] == ["node_started"] and len(mine) == 2
               and mine[1] in ("node_finished", "node_failed"),
               f"events for {n}: {mine}")
    return ids


@check
def sse_events_of_a_finished_run(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    run = run_flow(ctx, fid, {"topic": tag})
    expect_complete(run)
    path = f"/v1/flow/{fid}/run/{run['run_id']}/events"
    sse = read_sse(ctx.port, ctx.key, path, timeout=5)
    expect(sse["status"] == 200, f"events -> {sse['status']} {short(sse['body'])}")
    ct = sse["headers"].get("content-type", "")
    expect(ct.startswith("text/event-stream"), f"Content-Type {ct!r}")
    expect(sse["closed"] and sse["elapsed"] < 2.0,
           f"stream of an ended run not closed promptly (closed={sse['closed']}, "
           f"{sse['elapsed']:.2f} s)")
    names = [n["name"] for n in load_flow("llm")]
    ids = _expect_event_shape(sse["events"], names)
    order = [e["data"].get("node") for e in sse["events"] if e["event"] == "node_started"]
    expect(order == ["intopic01#api-input", "merge0001#merger-prompt", LLM_NODE,
                     "outansw01#api-output"], f"a chain started out of order: {order}")
    expect(sse["events"][-1]["data"].get("status") == "complete",
           f"run_finished data {sse['events'][-1]['data']}")
    ctx.state["sse"] = (fid, run["run_id"], [(e["id"], e["event"], e["raw"]) for e in sse["events"]])
    # Resume after the run ended.
    for last in (ids[0], ids[len(ids) // 2], ids[-1]):
        again = read_sse(ctx.port, ctx.key, path, last_event_id=last, timeout=5)
        want = [(e["id"], e["raw"]) for e in sse["events"] if int(e["id"]) > last]
        got = [(e["id"], e["raw"]) for e in again["events"]]
        expect(got == want, f"Last-Event-ID {last}: got ids {[g[0] for g in got]}, "
                            f"want {[w[0] for w in want]}")
        expect(again["closed"], f"Last-Event-ID {last}: stream not closed")


@check
def sse_live_stream_closes_at_end(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    ctx.llm.script(ok_reply("live", delay=1.5), match=tag)
    t0 = time.monotonic()
    rid = start(ctx, fid, {"topic": tag})
    path = f"/v1/flow/{fid}/run/{rid}/events"
    sse = read_sse(ctx.port, ctx.key, path, timeout=8)
    total = time.monotonic() - t0
    expect(sse["status"] == 200, f"events -> {sse['status']}")
    expect(sse["closed"], f"the stream did not close within 8 s ({len(sse['events'])} events)")
    _expect_event_shape(sse["events"], [n["name"] for n in load_flow("llm")])
    llm_started = [e["at"] for e in sse["events"]
                   if e["event"] == "node_started" and e["data"].get("node") == LLM_NODE]
    end_at = sse["events"][-1]["at"]
    note(f"llm node_started at {llm_started[0]:.2f} s, run_finished at {end_at:.2f} s, "
         f"closed after {total:.2f} s")
    expect(end_at - llm_started[0] >= 1.0,
           "node_started of the slow node was not delivered before the run ended")
    expect(sse["elapsed"] - end_at < 1.0, "the stream stayed open after run_finished")


@check
def sse_failed_run_has_node_failed(ctx):
    tag = rand()
    fid = llm_flow(ctx)
    ctx.llm.script(Reply(400, json_body={"error": {"message": "nope"}}), match=tag)
    run = run_flow(ctx, fid, {"topic": tag})
    expect_failed(run, LLM_NODE)
    sse = read_sse(ctx.port, ctx.key, f"/v1/flow/{fid}/run/{run['run_id']}/events", timeout=5)
    kinds = [(e["event"], e["data"].get("node")) for e in sse["events"]]
    expect(("node_failed", LLM_NODE) in kinds, f"no node_failed for the model node: {kinds}")
    failed = [e for e in sse["events"] if e["event"] == "node_failed"][0]
    expect(isinstance(failed["data"].get("error"), dict), f"node_failed without error: {failed}")
    expect(sse["events"][-1]["event"] == "run_finished"
           and sse["events"][-1]["data"].get("status") == "failed", f"last event {kinds[-1:]}")
    started = [n for k, n in kinds if k == "node_started"]
    expect("outansw01#api-output" not in started, f"a node started after the failure: {started}")


@check
def sse_events_survive_restart(ctx):
    if "sse" not in ctx.state:
        sse_events_of_a_finished_run(ctx)
    fid, rid, before = ctx.state["sse"]
    ctx.restart()
    path = f"/v1/flow/{fid}/run/{rid}/events"
    sse = read_sse(ctx.port, ctx.key, path, timeout=5)
    expect(sse["status"] == 200, f"events after restart -> {sse['status']} {short(sse['body'])}")
    got = [(e["id"], e["event"], e["raw"]) for e in sse["events"]]
    expect(got == before, f"events after restart differ: {len(got)} vs {len(before)}: "
                          f"{short(got)}")
    expect(sse["closed"], "stream not closed after restart")
    mid = before[len(before) // 2][0]
    resumed = read_sse(ctx.port, ctx.key, path, last_event_id=mid, timeout=5)
    want = [b for b in before if int(b[0]) > int(mid)]
    got = [(e["id"], e["event"], e["raw"]) for e in resumed["events"]]
    expect(got == want, f"Last-Event-ID {mid} after restart: ids {[g[0] for g in got]}")


@check
def queue_full_429(ctx):
    port, key = ctx.queue_server()
    cl = Client(port, key, timeout=15.0)
    tag = rand()
    fid = save(ctx, load_flow("llm"), cl)
    ctx.llm.script(ok_reply("first", delay=2.0), match=f"{tag}-1")
    rid1 = start(ctx, fid, {"topic": f"{tag}-1"}, cl)
    status, hdrs, body = cl.post(f"/v1/flow/{fid}/run", {"topic": f"{tag}-2"})
    expect(status == 429, f"second run with --max-queued-runs 1 -> {status} {short(body)}")
    err = body.get("error") if isinstance(body, dict) else None
    expect(isinstance(err, dict) and err.get("code") == "queue_full", f"body {short(body)}")
    ra = hdrs.get("retry-after", "")
    expect(ra.isdigit() and int(ra) >= 1, f"Retry-After {ra!r}")
    listed = cl.get(f"/v1/flow/{fid}/runs")[2]
    expect([r.get("run_id") for r in listed.get("runs", [])] == [rid1],
           f"the refused run was stored: {short(listed)}")
    expect_complete(finish(ctx, fid, rid1, timeout=8, client=cl))
    time.sleep(0.1)
    rid3 = start(ctx, fid, {"topic": f"{tag}-3"}, cl)
    expect_complete(finish(ctx, fid, rid3, timeout=8, client=cl))


# --------------------------------------------------------------------------- last: leaks

@check
def no_secret_in_logs_or_data(ctx):
    # Control: a run input is found by the same scan, so the scan does see stored text.
    marker = f"scan-control-{uuid.uuid4().hex}"
    fid = save(ctx, [api_input("inmark001#api-input", "m"),
                     api_output("outmark01#api-output", "m", "inmark001#api-input")])
    expect_complete(run_flow(ctx, fid, {"m": marker}))
    time.sleep(0.3)
    expect(files_containing(ctx.data_dir, marker), "control: the scan does not see a stored input")
    text = ctx.all_stderr()
    problems = []
    for name, secret in list(ctx.secrets.items()) + [("HOME", ctx.home)]:
        if secret in text:
            problems.append(f"{name} in stderr")
        for d in ctx.all_dirs():
            hits = files_containing(d, secret)
            if hits:
                problems.append(f"{name} in {hits}")
    expect(not problems, "; ".join(problems))


# --------------------------------------------------------------------------- main

def main(argv):
    if len(argv) < 2:
        print(f"usage: {argv[0]} <path-to-flowd> [name-substring ...]", file=sys.stderr)
        return 2
    bin_path, only = argv[1], argv[2:]
    selected = [(n, f) for n, f in CHECKS if not only or any(s in n for s in only)]
    t_start = time.monotonic()
    try:
        if not os.access(bin_path, os.X_OK):
            raise RuntimeError(f"{bin_path} is not an executable file")
        load_flow("llm")
        ctx = Ctx(bin_path)
    except Exception as e:  # setup failure: every selected check fails, loudly
        print(f"FAIL setup: {type(e).__name__}: {e}")
        print(f"0 passed, {len(selected)} failed")
        return 1

    passed = failed = 0
    aborted = False
    try:
        for name, fn in selected:
            if aborted:
                failed += 1
                print(f"FAIL {name}: not run, flowd could not be restarted")
                continue
            _notes.clear()
            start_t = time.monotonic()
            error = None
            try:
                fn(ctx)
            except Exception as e:
                error = f"{type(e).__name__}: {e}" if not isinstance(e, AssertionError) else str(e)
            try:
                died = ctx.revive()
            except Exception as e:  # cannot restart: nothing after this can be trusted
                died = f"flowd died and did not restart: {e}"
                aborted = True
            if died:
                error = f"{error}; {died}" if error else died
            took = time.monotonic() - start_t
            extra = f"  [{'; '.join(_notes)}]" if _notes else ""
            if error is None:
                passed += 1
                print(f"ok {name}{extra}  ({took:.2f}s)", flush=True)
            else:
                failed += 1
                print(f"FAIL {name}: {error}{extra}", flush=True)
    finally:
        ctx.close()
    print(f"total {time.monotonic() - t_start:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
