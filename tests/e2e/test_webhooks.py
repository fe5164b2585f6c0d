"""End-to-end tests of flowd's webhook deliveries against the real binary.

Usage: python3 test_webhooks.py <path-to-flowd> [name-substring ...]

What it proves, against shared/API.md (Webhooks) and shared/cases/README.md, with a local
receiver (mock_servers.MockReceiver) standing in for the outside world:
- the webhook node of shared/cases/flows/webhook.json posts `{"out": <topic>}` with
  `AI_FLOW_SIGNATURE: sig-123`, Content-Type, User-Agent and the Standard Webhooks headers, and
  the API Builder view lists it; a non-http(s) webhook URL is refused at save (static), fails
  the node (wired from an input), or is refused at start (`run_options.global_webhook`);
- signatures verify with Python's `hmac` and with the npm package `standardwebhooks`
  (verify_standardwebhooks.mjs; `npm ci` in the repository root installs it, and a missing
  install is a failure, never a skip);
- C18 (a) unicode round trip and the HMAC over the bytes sent, for node and global deliveries;
  (b) an escaped NUL is kept (README: "strings keep every code point, \u0000 included");
- retries: 5xx, 408/409/425/429 and connection errors are retried with the same webhook-id,
  identical bytes and a newer webhook-timestamp, on the schedule (±20 %), until it runs out;
  Retry-After is honoured when larger than the schedule; 400/404/410 end the delivery at once;
  3xx is never followed and ends it as failed (C26 (a)-(d)); TLS errors (self-signed, wrong
  name) are retried, a certificate from the `--ca-file` CA is accepted (C26 (e)-(g)); a
  hanging receiver's attempt ends at `--webhook-timeout`;
- the SSRF guard refuses loopback targets in every spelling without an allow flag, and
  `--webhook-allow-private` / `--webhook-allow-cidr` let exactly what they name through;
- a receiver that hangs never delays deliveries to another one;
- deliveries whose retry is pending, or whose first attempt is in flight, survive kill -9 and
  arrive after the restart with the same webhook-id and body;
- secret rotation: both signatures during the grace period, one after it;
- the deliveries listing and the retry route (failed -> sent again; delivered or pending ->
  409; another account -> 404);
- the global webhook on complete, failed (C29 (a)-(d), http-get) and canceled runs, and with
  `run_options.save: false` (outputs only in the webhook body; a failed one cannot be retried,
  as the README says);
- last: SIGTERM with deliveries pending exits 0, and no log holds a sanitizer report or a
  webhook secret.

The main server runs with `--webhook-allow-cidr 127.0.0.0/8 --webhook-retry-schedule 1s,2s,4s
--webhook-timeout 3s` and the test CA in `--ca-file`.

Prints `ok <name>` or `FAIL <name>: <reason>` per check, then `N passed, M failed`; the exit
status is non-zero when anything failed. Optional extra arguments run only the checks whose
names contain one of them. Everything listens and connects on loopback only.
"""

import base64
import calendar
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from flowd_harness import (TIME_RE, Client, Server, create_key, load_flow, poll_run,
                           standardwebhooks_verify, webhook_key, webhook_signature_entries,
                           webhook_signature_matches)
from mock_servers import MockHTTP, MockLLM, MockReceiver, Reply, chat_completion, make_certs

HOOK_NODE = "hook00001#webhook"
LLM_NODE = "llmnode01#llm-prompt"
HTTP_NODE = "httpget01#http-get-processor"
SCHEDULE = "1s,2s,4s"        # first retry after 0.8-1.2 s, then 1.6-2.4 s, then 3.2-4.8 s
HOOK_TIMEOUT = 3.0           # --webhook-timeout


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
    """The receivers, the mocks, certificates, one data dir with keys for accounts `a`, `b` and
    `rot` (the one whose secret the rotation check rotates), and the main server.

    Extra servers (`guarded()`: no allow flag; `extra(name, args)`) are made on demand; the
    kill -9 check makes and removes its own.
    """

    def __init__(self, bin_path):
        self.bin = bin_path
        res = subprocess.run([bin_path, "--version"], capture_output=True, timeout=20)
        words = res.stdout.decode("utf-8", "replace").split()
        expect(res.returncode == 0 and words, f"flowd --version exited {res.returncode}: {words}")
        self.version = words[-1]
        self.certs = make_certs()
        self.recv = MockReceiver()
        self.recv2 = None   # on 127.0.0.2: "another host" for C26 (b)
        self.recv6 = None   # on ::1: so that an unguarded request to [::1] would really arrive
        self.tls = {}
        self.web = MockHTTP()
        self.llm = MockLLM()
        self.llm_key = f"sk-e2e-openai-{uuid.uuid4().hex}"
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-webhooks-")
        self.data_dir = self._tmp.name
        self.key = create_key(bin_path, self.data_dir, "a", "webhooks")
        self.key_b = create_key(bin_path, self.data_dir, "b", "other-account")
        self.key_rot = create_key(bin_path, self.data_dir, "rot", "rotation")
        self.old_stderr = []
        self.state = {}
        self._extra = {}
        self.server = self._start_main()

    def env(self):
        return {
            "OPENAI_BASE_URL": self.llm.url("/v1"),
            "OPENAI_API_KEY": self.llm_key,
            # A proxy from the caller's shell must not reroute the loopback calls.
            "NO_PROXY": "*", "no_proxy": "*",
            "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
        }

    def main_args(self):
        return ("--webhook-allow-cidr", "127.0.0.0/8", "--ca-file", self.certs.ca,
                "--webhook-retry-schedule", SCHEDULE, "--webhook-timeout", f"{HOOK_TIMEOUT:g}s",
                "--log-level", "debug")

    def _start_main(self):
        return Server(self.bin, self.data_dir, env=self.env(), extra_args=self.main_args())

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
                got[2].cleanup()
            tmp = tempfile.TemporaryDirectory(prefix=f"flowd-e2e-{name}-")
            key = create_key(self.bin, tmp.name, "a", name)
            srv = Server(self.bin, tmp.name, env=self.env(),
                         extra_args=("--log-level", "debug", *args))
            got = (srv, key, tmp)
            self._extra[name] = got
        return got[0].port, got[1]

    def guarded(self):
        """No allow flag: the SSRF guard refuses every loopback target."""
        return self.extra("guarded", ("--webhook-retry-schedule", SCHEDULE,
                                      "--webhook-timeout", f"{HOOK_TIMEOUT:g}s"))

    def receiver2(self):
        if self.recv2 is None:
            self.recv2 = MockReceiver(host="127.0.0.2")
        return self.recv2

    def receiver6(self):
        if self.recv6 is None:
            try:
                self.recv6 = MockReceiver(host="::1")
            except OSError as e:
                raise AssertionError(f"cannot listen on ::1: {e}")
        return self.recv6

    def tls_receiver(self, which):
        """An HTTPS receiver with the certificate `which` (localhost, other, self_signed)."""
        if which not in self.tls:
            self.tls[which] = MockReceiver(tls=getattr(self.certs, which))
        return self.tls[which]

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
        for m in [self.recv, self.recv2, self.recv6, self.web, self.llm, *self.tls.values()]:
            if m is not None:
                m.close()
        self.certs.close()
        self._tmp.cleanup()


# --------------------------------------------------------------------------- helpers

SECRETS_SEEN = set()   # every account secret a check read: none may reach a log

def on_path(path):
    """A request matcher for one exact request path."""
    return lambda rec: rec.path == path


def hook_nodes(url, field="out", signature="sig-123"):
    """shared/cases/flows/webhook.json with <RECV_URL> replaced by `url`."""
    nodes = load_flow("webhook")
    for n in nodes:
        if n.get("processorType") == "webhook":
            expect(n.get("webhook_url") == "<RECV_URL>", f"fixture changed: {short(n)}")
            n["webhook_url"] = url
            n["webhook_output_field_name"] = field
            n["ai_flow_signature_header_value"] = signature
    return nodes


def save(ctx, nodes, client=None):
    fid = str(uuid.uuid4())
    status, _, body = (client or ctx.c).put(f"/v1/flow/{fid}", nodes)
    expect(status == 201, f"PUT flow -> {status} {short(body)}")
    return fid


def hook_flow(ctx, url, client=None):
    return save(ctx, hook_nodes(url), client)


def start(ctx, fid, body, client=None):
    status, _, resp = (client or ctx.c).post(f"/v1/flow/{fid}/run", body)
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


def account_secret(client):
    status, _, body = client.get("/v1/webhook-secret")
    expect(status == 200 and isinstance(body, dict) and isinstance(body.get("secret"), str),
           f"GET /v1/webhook-secret -> {status} {short(body)}")
    SECRETS_SEEN.add(body["secret"])
    return body["secret"]


def deliveries(client, fid, rid):
    path = f"/v1/flow/{fid}/run/{rid}/deliveries"
    status, _, body = client.get(path)
    expect(status == 200 and isinstance(body, dict) and isinstance(body.get("deliveries"), list),
           f"GET {path} -> {status} {short(body)}")
    return body["deliveries"]


def wait_deliveries(client, fid, rid, pred, timeout, what):
    """Poll the run's deliveries until `pred(list)` holds; returns the list."""
    end = time.monotonic() + timeout
    while True:
        got = deliveries(client, fid, rid)
        if pred(got):
            return got
        if time.monotonic() > end:
            raise AssertionError(f"after {timeout:g} s, not {what}: deliveries {short(got, 900)}")
        time.sleep(0.05)


def ended(ds, n=1):
    return len(ds) >= n and all(d.get("status") in ("delivered", "failed") for d in ds)


def one_of_kind(ds, kind):
    got = [d for d in ds if d.get("kind") == kind]
    expect(len(got) == 1, f"{len(got)} deliveries of kind {kind!r}: {short(ds, 900)}")
    return got[0]


def wait_requests(srv, path, n, timeout):
    got = srv.wait_requests(n, on_path(path), timeout=timeout)
    expect(len(got) >= n, f"{path}: {len(got)} request(s) within {timeout:g} s, want {n}")
    return got


def codes(delivery):
    return [a.get("status_code") for a in delivery.get("attempts", [])]


def expect_headers(ctx, rec, ai_signature):
    """The headers every attempt carries (shared/API.md, Webhooks)."""
    h = rec.headers
    expect(rec.method == "POST", f"method {rec.method}")
    ct = h.get("content-type", "")
    expect(ct.split(";")[0].strip().lower() == "application/json", f"Content-Type {ct!r}")
    ua = h.get("user-agent")
    expect(ua == f"flowd/{ctx.version}", f"User-Agent {ua!r}, want flowd/{ctx.version}")
    expect(h.get("ai_flow_signature") == ai_signature,
           f"AI_FLOW_SIGNATURE {h.get('ai_flow_signature')!r}, want {ai_signature!r}")
    expect(h.get("webhook-id"), "no webhook-id header")
    ts = h.get("webhook-timestamp", "")
    expect(ts.isdigit(), f"webhook-timestamp {ts!r} is not Unix seconds")
    expect(abs(int(ts) - rec.wall) <= 2.0,
           f"webhook-timestamp {ts} is {int(ts) - rec.wall:+.1f} s from the arrival time")
    sig = h.get("webhook-signature", "")
    entries = webhook_signature_entries(sig)
    expect(entries and all(e.startswith("v1,") for e in entries), f"webhook-signature {sig!r}")


def expect_hmac(secret, rec, what="delivery"):
    """Python hmac: one v1 entry of webhook-signature is ours over the raw body bytes."""
    idx = webhook_signature_matches(secret, rec.headers, rec.body)
    expect(idx is not None,
           f"{what}: no webhook-signature entry matches HMAC-SHA256 over the raw bytes "
           f"(id {rec.headers.get('webhook-id')!r}, ts {rec.headers.get('webhook-timestamp')!r}, "
           f"signature {rec.headers.get('webhook-signature')!r}, body {short(rec.body, 200)})")
    return idx


def sw_results(cases):
    """[(secret, rec)] -> [ok?] from the npm package standardwebhooks."""
    res = standardwebhooks_verify([(s, r.headers, r.body) for s, r in cases])
    return [(r.get("ok") is True, r.get("error")) for r in res]


def expect_sw(cases, what):
    for i, (ok, err) in enumerate(sw_results(cases)):
        expect(ok, f"{what} #{i}: standardwebhooks refused it: {err}")


def tampered(rec):
    """A copy of a recorded request with one body byte changed (a negative control)."""
    class T:
        pass
    t = T()
    t.headers = rec.headers
    t.body = rec.body[:-1] + (b"]" if rec.body[-1:] != b"]" else b"}")
    return t


def parse_time(s):
    expect(isinstance(s, str) and TIME_RE.match(s), f"time {s!r} is not RFC 3339 UTC with ms")
    return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + int(s[20:23]) / 1000


def expect_delivery_shape(d, kind, url, node=None):
    expect(isinstance(d.get("delivery_id"), str) and d["delivery_id"], f"delivery_id: {short(d)}")
    expect(d.get("kind") == kind, f"kind {d.get('kind')!r}, want {kind!r}")
    if node is not None:
        expect(d.get("node") == node, f"node {d.get('node')!r}, want {node!r}")
    else:
        expect("node" not in d, f"a {kind} delivery names a node: {short(d)}")
    expect(d.get("url") == url, f"url {d.get('url')!r}, want {url!r}")
    expect(d.get("status") in ("pending", "delivered", "failed"), f"status {d.get('status')!r}")
    parse_time(d.get("created_at"))
    if d["status"] == "pending":
        parse_time(d.get("next_attempt_at"))
    else:
        expect("next_attempt_at" not in d, f"{d['status']} delivery has next_attempt_at")
    expect(isinstance(d.get("attempts"), list), f"attempts: {short(d)}")
    for a in d["attempts"]:
        parse_time(a.get("at"))
        expect(isinstance(a.get("duration_ms"), int) and a["duration_ms"] >= 0,
               f"attempt duration_ms: {short(a)}")
        expect(isinstance(a.get("status_code"), int) or isinstance(a.get("error"), str),
               f"attempt has neither status_code nor error: {short(a)}")
    for secret_field in ("body", "signature", "ai_flow_signature", "secret"):
        expect(secret_field not in d, f"the listing shows {secret_field!r}: {short(d)}")


def healthy(ctx, port=None):
    status = Client(port or ctx.port, timeout=5.0).get("/healthz")[0]
    expect(status == 200, f"/healthz -> {status} afterwards")


# --------------------------------------------------------------------------- the fixture

@check
def webhook_secret_route(ctx):
    s1 = account_secret(ctx.c)
    expect(s1.startswith("whsec_") and len(webhook_key(s1)) == 32,
           f"secret {s1[:10]}... is not whsec_ + base64 of 32 bytes")
    status, _, body = ctx.c.get("/v1/webhook-secret")
    expect(body == {"secret": s1}, f"second GET {short(body)}: the secret is stable, and no "
                                   "previous_valid_until before any rotation")
    expect(account_secret(Client(ctx.port, ctx.key_b)) != s1, "two accounts share a secret")
    status, hdrs, _ = Client(ctx.port).get("/v1/webhook-secret")
    expect(status == 401, f"no key -> {status}")
    ctx.secret_a = s1


@check
def fixture_delivers_out_topic_signed(ctx):
    tag = rand()
    path = f"/fixture-{tag}"
    url = ctx.recv.url(path)
    fid = hook_flow(ctx, url)
    topic = f"cats {tag}"
    rid = start(ctx, fid, {"topic": topic})
    out = expect_complete(finish(ctx, fid, rid))
    expect(out == {"text": topic}, f"outputs {short(out)}: the node passes its input on")
    rec = wait_requests(ctx.recv, path, 1, 5)[0]
    expect(rec.json() == {"out": topic}, f"body {short(rec.body)}, want {{\"out\": {topic!r}}}")
    expect_headers(ctx, rec, "sig-123")
    secret = account_secret(ctx.c)
    expect(expect_hmac(secret, rec) is not None, "unreachable")
    expect(len(webhook_signature_entries(rec.headers["webhook-signature"])) == 1,
           f"two signatures without a rotation: {rec.headers['webhook-signature']!r}")
    # Both verifiers, and a tampered body as the control that they really check.
    expect(webhook_signature_matches(secret, rec.headers, tampered(rec).body) is None,
           "control: hmac accepted a tampered body")
    res = sw_results([(secret, rec), (secret, tampered(rec))])
    expect(res[0][0], f"standardwebhooks refused the delivery: {res[0][1]}")
    expect(not res[1][0], "control: standardwebhooks accepted a tampered body")
    ds = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")
    expect(len(ds) == 1, f"{len(ds)} deliveries, want 1: {short(ds)}")
    d = ds[0]
    expect_delivery_shape(d, "node", url, HOOK_NODE)
    expect(d["status"] == "delivered" and codes(d) == [200], f"delivery {short(d)}")
    expect(d["delivery_id"] == rec.headers["webhook-id"],
           f"delivery_id {d['delivery_id']!r} is not the webhook-id {rec.headers['webhook-id']!r}")
    status, _, view = ctx.c.get(f"/v1/flow/{fid}/api")
    expect(status == 200 and view.get("webhooks") == [{"node": HOOK_NODE, "url": url, "field": "out"}],
           f"API Builder view webhooks {short(view.get('webhooks') if status == 200 else view)}")
    time.sleep(0.3)
    expect(len(ctx.recv.requests(on_path(path))) == 1, "delivered more than once")


@check
def invalid_webhook_url_refused_at_save(ctx):
    for bad in ("ftp://127.0.0.1/x", "javascript:alert(1)", "not a url", "file:///etc/passwd"):
        fid = str(uuid.uuid4())
        status, _, body = ctx.c.put(f"/v1/flow/{fid}", hook_nodes(bad))
        expect(status == 400 and isinstance(body, dict), f"{bad!r}: PUT -> {status} {short(body)}")
        err = body.get("error") or {}
        details = err.get("details") or body.get("details") or []
        expect(err.get("code") == "invalid_flow", f"{bad!r}: code {err.get('code')!r}")
        expect(any(x.get("node") == HOOK_NODE and x.get("field") == "webhook_url"
                   and x.get("problem") == "invalid_url" for x in details),
               f"{bad!r}: details {short(details)} lack webhook_url invalid_url")


@check
def wired_webhook_url_checked_at_run(ctx):
    """webhook_url fed by an edge (FLOWS.md: an edge replaces the field): an http URL is
    delivered to, anything else fails the node."""
    nodes = hook_nodes("")
    nodes.append({"name": "inhook001#api-input", "processorType": "api-input", "inputs": [],
                  "api_input_name": "hook_url"})
    for n in nodes:
        if n["name"] == HOOK_NODE:
            n["inputs"].append({"inputName": "webhook_url", "inputNode": "inhook001#api-input",
                                "inputNodeOutputKey": 0})
    fid = save(ctx, nodes)
    tag = rand()
    path = f"/wired-{tag}"
    rid = start(ctx, fid, {"topic": f"wired {tag}", "hook_url": ctx.recv.url(path)})
    expect_complete(finish(ctx, fid, rid))
    rec = wait_requests(ctx.recv, path, 1, 5)[0]
    expect(rec.json() == {"out": f"wired {tag}"}, f"body {short(rec.body)}")
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    expect(d["url"] == ctx.recv.url(path) and d["status"] == "delivered", f"delivery {short(d)}")
    run = run_flow(ctx, fid, {"topic": "x", "hook_url": "ftp://127.0.0.1/x"})
    err = run.get("error") or {}
    expect(run.get("status") == "failed" and err.get("node") == HOOK_NODE,
           f"an ftp:// webhook_url from an input: run {short(run)}")


@check
def global_webhook_bad_url_refused_at_start(ctx):
    fid = save(ctx, load_flow("echo"))
    for gw in ({"url": "ftp://127.0.0.1/x"}, {"url": ""}, {"signature": "s"}, {"url": 5},
               "http://127.0.0.1/"):
        status, _, body = ctx.c.post(f"/v1/flow/{fid}/run", {"topic": "x", "run_options": {
            "global_webhook": gw}})
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        expect(status == 400 and code in ("invalid_body", "invalid_input"),
               f"global_webhook {gw!r}: {status} {short(body)}")
    status, _, body = ctx.c.get(f"/v1/flow/{fid}/runs")
    expect(status == 200 and body.get("runs") == [], f"a refused start made a run: {short(body)}")


@check
def signature_with_line_breaks_never_becomes_headers(ctx):
    """AI_FLOW_SIGNATURE goes into a header as it is: a value with CR or LF would add headers
    or a whole second request. Refused at save, at submit, and when it arrives by a wire."""
    nodes = hook_nodes(ctx.recv.url("/never"), signature="s\r\nX-Injected: yes")
    status, _, body = ctx.c.put(f"/v1/flow/{uuid.uuid4()}", nodes)
    details = (body.get("error") or {}).get("details") or [] if isinstance(body, dict) else []
    expect(status == 400 and any(d.get("problem") == "invalid_header_value" for d in details),
           f"a signature with CRLF in the flow: {status} {short(body)}")

    fid = save(ctx, load_flow("echo"))
    for sig in ("g\r\nX-Injected: yes", "g\nX: y", "g\u0000"):
        status, _, body = ctx.c.post(f"/v1/flow/{fid}/run", {"topic": "x", "run_options": {
            "global_webhook": {"url": ctx.recv.url("/never"), "signature": sig}}})
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        expect(status == 400 and code == "invalid_body", f"global signature {sig!r}: {status} {short(body)}")

    nodes = hook_nodes(ctx.recv.url("/never"))
    nodes.append({"name": "insig0001#api-input", "processorType": "api-input", "inputs": [],
                  "api_input_name": "sig"})
    for n in nodes:
        if n["name"] == HOOK_NODE:
            n["inputs"].append({"inputName": "ai_flow_signature_header_value",
                                "inputNode": "insig0001#api-input", "inputNodeOutputKey": 0})
    fid = save(ctx, nodes)
    run = run_flow(ctx, fid, {"topic": "x", "sig": "s\r\nX-Injected3: yes\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n"})
    err = run.get("error") or {}
    expect(run.get("status") == "failed" and err.get("node") == HOOK_NODE,
           f"a wired signature with CRLF: run {short(run)}")
    time.sleep(0.3)
    seen = [r.path for r in ctx.recv.requests() if r.path in ("/never", "/smuggled")]
    expect(not seen, f"the receiver got {seen}")


# --------------------------------------------------------------------------- C18

C18_TOPIC = "naïve café 👋🏽 日本語 \u2028 end"


@check
def c18a_unicode_round_trip_and_hmac_over_bytes(ctx):
    tag = rand()
    path = f"/c18a-{tag}"
    url = ctx.recv.url(path)
    fid = hook_flow(ctx, url)
    # Raw UTF-8, plus the six-byte escape of U+2028, exactly as the case writes it.
    raw = ('{"topic":"naïve café 👋🏽 日本語 \\u2028 end","run_options":{"global_webhook":'
           '{"url":"' + url + '/global","signature":"g-sig"}}}').encode("utf-8")
    expect(b"\\u2028" in raw and "👋🏽".encode() in raw, "test bug: the request body")
    rid = start(ctx, fid, raw)
    run = finish(ctx, fid, rid)
    out = expect_complete(run)
    expect(out.get("text") == C18_TOPIC, f"outputs.text {out.get('text')!r}, want {C18_TOPIC!r}")
    node_rec = wait_requests(ctx.recv, path, 1, 5)[0]
    glob_rec = wait_requests(ctx.recv, path + "/global", 1, 5)[0]
    for what, rec in (("node", node_rec), ("global", glob_rec)):
        try:
            rec.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise AssertionError(f"{what} body is not UTF-8: {e}")
    expect(node_rec.json() == {"out": C18_TOPIC},
           f"node body {short(node_rec.body)}: code points changed")
    g = glob_rec.json()
    expect(isinstance(g, dict) and g.get("run_id") == rid and g.get("status") == "complete",
           f"global body {short(glob_rec.body)}")
    expect(g.get("outputs") == {"text": C18_TOPIC}, f"global outputs {short(g.get('outputs'))}")
    for k in ("flow_id", "flow_version", "created_at", "started_at", "finished_at"):
        expect(g.get(k) == run.get(k), f"global body {k} {g.get(k)!r} != GET's {run.get(k)!r}")
    expect_headers(ctx, node_rec, "sig-123")
    expect_headers(ctx, glob_rec, "g-sig")
    expect(node_rec.headers["webhook-id"] != glob_rec.headers["webhook-id"],
           "node and global deliveries share a webhook-id")
    secret = account_secret(ctx.c)
    expect_hmac(secret, node_rec, "node")
    expect_hmac(secret, glob_rec, "global")
    expect_sw([(secret, node_rec), (secret, glob_rec)], "node/global")
    ds = wait_deliveries(ctx.c, fid, rid, lambda x: ended(x, 2), 5, "two ended")
    expect_delivery_shape(one_of_kind(ds, "node"), "node", url, HOOK_NODE)
    gd = one_of_kind(ds, "global")
    expect_delivery_shape(gd, "global", url + "/global")
    expect(gd["status"] == "delivered" and gd["delivery_id"] == glob_rec.headers["webhook-id"],
           f"global delivery {short(gd)}")


@check
def c18b_escaped_nul_kept(ctx):
    # Pinned choice: kept as three code points (README: "strings keep every code point,
    # \u0000 included"), written back escaped.
    tag = rand()
    path = f"/c18b-{tag}"
    fid = hook_flow(ctx, ctx.recv.url(path))
    status, _, resp = ctx.c.post(f"/v1/flow/{fid}/run", b'{"topic":"a\\u0000b"}')
    expect(status == 202, f"POST -> {status} {short(resp)} (README documents the NUL as kept)")
    out = expect_complete(finish(ctx, fid, resp["run_id"]))
    expect(out.get("text") == "a\x00b", f"outputs.text {out.get('text')!r}, want 'a\\x00b'")
    rec = wait_requests(ctx.recv, path, 1, 5)[0]
    expect(rec.json() == {"out": "a\x00b"}, f"webhook body {rec.body!r}")
    expect(b'"a\\u0000b"' in rec.body, f"body {rec.body!r} does not write the NUL as \\u0000")
    expect_hmac(account_secret(ctx.c), rec)


# --------------------------------------------------------------------------- retries

@check
def retry_after_5xx_same_id_same_bytes(ctx):
    tag = rand()
    path = f"/r5xx-{tag}"
    ctx.recv.script(Reply(500, body="boom"), Reply(503, body="later"), match=on_path(path))
    fid = hook_flow(ctx, ctx.recv.url(path))
    rid = start(ctx, fid, {"topic": f"retry {tag}"})
    expect_complete(finish(ctx, fid, rid))
    reqs = wait_requests(ctx.recv, path, 3, 8)
    secret = account_secret(ctx.c)
    ids = {r.headers.get("webhook-id") for r in reqs}
    expect(len(ids) == 1, f"webhook-id changed across retries: {ids}")
    expect(all(r.body == reqs[0].body for r in reqs), "the body bytes changed across retries: "
           + " | ".join(short(r.body, 120) for r in reqs))
    ts = [int(r.headers.get("webhook-timestamp", "0")) for r in reqs]
    expect(ts == sorted(ts) and ts[-1] > ts[0], f"webhook-timestamps {ts} do not increase")
    for i, r in enumerate(reqs):
        expect_headers(ctx, r, "sig-123")
        expect_hmac(secret, r, f"attempt {i + 1}")
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    note(f"gaps {[round(g, 2) for g in gaps]} s, timestamps {ts}")
    expect(0.75 <= gaps[0] <= 2.0, f"first retry after {gaps[0]:.2f} s, schedule says 1 s ±20%")
    expect(1.55 <= gaps[1] <= 3.4, f"second retry after {gaps[1]:.2f} s, schedule says 2 s ±20%")
    d = wait_deliveries(ctx.c, fid, rid, ended, 3, "ended")[0]
    expect(d["status"] == "delivered" and codes(d) == [500, 503, 200], f"delivery {short(d)}")
    time.sleep(0.3)
    expect(len(ctx.recv.requests(on_path(path))) == 3, "requests after the 200")


@check
def retry_after_header_honoured(ctx):
    tag = rand()
    path = f"/rafter-{tag}"
    # 429 with Retry-After 3 (larger than the 1 s step: honoured), then 503 with Retry-After 0
    # (smaller than the 2 s step: the schedule wins), then the default 200.
    ctx.recv.script(Reply(429, headers={"Retry-After": "3"}),
                    Reply(503, headers={"Retry-After": "0"}), match=on_path(path))
    fid = hook_flow(ctx, ctx.recv.url(path))
    rid = start(ctx, fid, {"topic": f"ra {tag}"})
    reqs = wait_requests(ctx.recv, path, 3, 10)
    gaps = [b.at - a.at for a, b in zip(reqs, reqs[1:])]
    note(f"gaps {[round(g, 2) for g in gaps]} s")
    expect(gaps[0] >= 2.95, f"retried {gaps[0]:.2f} s after a 429 with Retry-After: 3")
    expect(gaps[0] <= 4.5, f"retried only {gaps[0]:.2f} s after Retry-After: 3")
    expect(1.55 <= gaps[1] <= 3.4, f"after Retry-After: 0 the retry came {gaps[1]:.2f} s later, "
                                   "want the schedule's 2 s ±20%")
    d = wait_deliveries(ctx.c, fid, rid, ended, 3, "ended")[0]
    expect(d["status"] == "delivered" and codes(d) == [429, 503, 200], f"delivery {short(d)}")
    expect(len({r.headers.get("webhook-id") for r in reqs}) == 1, "webhook-id changed")


@check
def status_4xx_and_410_fail_without_retry(ctx):
    tag = rand()
    runs = []
    for code in (400, 404, 410):
        path = f"/final{code}-{tag}"
        ctx.recv.route(path, status=code, json_body={"error": f"answer {code}"})
        fid = hook_flow(ctx, ctx.recv.url(path))
        runs.append((code, path, fid, start(ctx, fid, {"topic": f"{code} {tag}"})))
    for code, path, fid, rid in runs:
        d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
        expect(d["status"] == "failed", f"{code}: status {d['status']!r}")
        expect(codes(d) == [code], f"{code}: attempts {short(d['attempts'])}")
    time.sleep(1.6)  # past the latest first retry (1 s + 20 %)
    for code, path, fid, rid in runs:
        n = len(ctx.recv.requests(on_path(path)))
        expect(n == 1, f"{code}: receiver saw {n} requests, want 1 (no retry)")
        d = deliveries(ctx.c, fid, rid)[0]
        expect(d["status"] == "failed" and len(d["attempts"]) == 1, f"{code}: later {short(d)}")


@check
def status_408_409_425_retried(ctx):
    tag = rand()
    runs = []
    for code in (408, 409, 425):
        path = f"/again{code}-{tag}"
        ctx.recv.script(Reply(code, body="again"), match=on_path(path))
        fid = hook_flow(ctx, ctx.recv.url(path))
        runs.append((code, path, fid, start(ctx, fid, {"topic": f"{code} {tag}"})))
    for code, path, fid, rid in runs:
        d = wait_deliveries(ctx.c, fid, rid, ended, 5, f"{code}: ended")[0]
        expect(d["status"] == "delivered" and codes(d) == [code, 200],
               f"{code}: {short(d)}, want retried then delivered")
        reqs = ctx.recv.requests(on_path(path))
        expect(len(reqs) == 2 and reqs[0].body == reqs[1].body and
               reqs[0].headers["webhook-id"] == reqs[1].headers["webhook-id"],
               f"{code}: {len(reqs)} requests, or the retry changed the id or bytes")


@check
def connection_error_retried(ctx):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: every connect is refused by the kernel
    url = f"http://127.0.0.1:{port}/closed-{rand()}"
    fid = hook_flow(ctx, url)
    rid = start(ctx, fid, {"topic": "closed port"})
    d = wait_deliveries(ctx.c, fid, rid, lambda x: x and len(x[0]["attempts"]) >= 2, 6,
                        "two attempts (a connection error is retried)")[0]
    errors = [a.get("error") or "" for a in d["attempts"]]
    note(errors[0])
    expect(d["status"] == "pending", f"status {d['status']!r} after connection errors")
    expect(all(e and not e.startswith("refused") for e in errors),
           f"attempt errors {errors}: want connect errors, not the SSRF guard's 'refused'")
    expect(all("status_code" not in a for a in d["attempts"]), f"{short(d['attempts'])}")
    ctx.state["closed_port"] = (fid, rid)


@check
def c26_redirects_never_followed(ctx):
    """(a)-(d): 3xx is a final failure (pinned choice: not retried), the Location is never
    requested, and the attempt is recorded with an error about redirects."""
    tag = rand()
    recv2 = ctx.receiver2()
    cases = [
        ("a", 301, f"/login-{tag}", ctx.recv, f"/login-{tag}"),
        ("b", 302, recv2.url(f"/b-{tag}"), recv2, f"/b-{tag}"),
        ("c", 307, "http://169.254.169.254/", None, None),
        ("d", 308, f"/hook2-{tag}", ctx.recv, f"/hook2-{tag}"),
    ]
    runs = []
    for name, code, location, _, _ in cases:
        path = f"/c26{name}-{tag}"
        ctx.recv.route(path, status=code, headers={"Location": location}, body="moved")
        fid = hook_flow(ctx, ctx.recv.url(path))
        runs.append((fid, start(ctx, fid, {"topic": f"c26{name} {tag}"}), path))
    problems, seen = [], []
    for (name, code, location, target, tpath), (fid, rid, path) in zip(cases, runs):
        d = wait_deliveries(ctx.c, fid, rid, ended, 5, f"({name}) ended")[0]
        atts = d["attempts"]
        seen.append(f"({name}) {codes(d)} {[a.get('error') for a in atts]}")
        if d["status"] != "failed":
            problems.append(f"({name}) status {d['status']!r}")
        if not atts or atts[0].get("status_code") != code:
            problems.append(f"({name}) attempts {short(atts)}: the {code} is not recorded")
        if not all("redirect" in (a.get("error") or "").lower() for a in atts):
            problems.append(f"({name}) attempt errors {[a.get('error') for a in atts]} do not "
                            "mention redirects")
    time.sleep(1.6)  # a retry would have come by now
    for (name, code, location, target, tpath), (fid, rid, path) in zip(cases, runs):
        n = len(ctx.recv.requests(on_path(path)))
        if n != 1:
            problems.append(f"({name}) the redirecting URL was requested {n} times, want 1")
        if target is not None and target.requests(on_path(tpath)):
            problems.append(f"({name}) the Location target {location} was requested")
        d = deliveries(ctx.c, fid, rid)[0]
        if d["status"] != "failed":
            problems.append(f"({name}) later status {d['status']!r}")
    note("; ".join(seen))
    expect(not problems, "; ".join(problems))


def _tls_fails(which):
    def fn(ctx):
        srv = ctx.tls_receiver(which)
        before = len(srv.tls_failures)
        tag = rand()
        path = f"/tls-{which}-{tag}"
        url = f"https://localhost:{srv.port}{path}"
        fid = hook_flow(ctx, url)
        rid = start(ctx, fid, {"topic": f"tls {tag}"})
        ds = wait_deliveries(ctx.c, fid, rid, lambda x: x and len(x[0]["attempts"]) >= 2, 6,
                             "two attempts (a TLS failure is retried)")
        d = ds[0]
        errors = [a.get("error") or "" for a in d["attempts"]]
        note(errors[0])
        expect(all("tls" in e.lower() for e in errors), f"attempt errors {errors} do not say tls")
        expect(all("status_code" not in a for a in d["attempts"]),
               f"an attempt has an HTTP status: {short(d['attempts'])}")
        expect(d["status"] == "pending", f"status {d['status']!r} after two TLS failures, want "
                                         "pending (retried on the schedule)")
        expect(len(srv.tls_failures) - before >= 2,
               f"the receiver saw {len(srv.tls_failures) - before} failed handshakes")
        expect(not srv.requests(on_path(path)), "an HTTP request got through a failed handshake")
        ctx.state[f"tls_{which}"] = (fid, rid)
    return fn


register("c26e_tls_self_signed_fails_and_is_retried", _tls_fails("self_signed"))
register("c26f_tls_cert_for_other_name_fails_and_is_retried", _tls_fails("other"))


@check
def c26g_tls_ca_file_cert_delivered(ctx):
    srv = ctx.tls_receiver("localhost")
    tag = rand()
    path = f"/tls-ok-{tag}"
    url = f"https://localhost:{srv.port}{path}"
    fid = hook_flow(ctx, url)
    rid = start(ctx, fid, {"topic": f"tls ok {tag}"})
    rec = wait_requests(srv, path, 1, 5)[0]
    expect(rec.json() == {"out": f"tls ok {tag}"}, f"body {short(rec.body)}")
    expect_hmac(account_secret(ctx.c), rec)
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    expect(d["status"] == "delivered" and codes(d) == [200],
           f"delivery {short(d)}: want delivered on the first attempt")


# --------------------------------------------------------------------------- SSRF

@check
def ssrf_loopback_spellings_refused_without_flag(ctx):
    port, key = ctx.guarded()
    cl = Client(port, key, timeout=15.0)
    tag = rand()
    p, p6 = ctx.recv.port, ctx.receiver6().port
    path = f"/ssrf-{tag}"
    urls = [f"http://127.0.0.1:{p}{path}", f"http://2130706433:{p}{path}",
            f"http://0x7f.1:{p}{path}", f"http://127.1:{p}{path}", f"http://[::1]:{p6}{path}",
            f"http://[::ffff:127.0.0.1]:{p}{path}"]
    runs, problems = [], []
    for i, url in enumerate(urls):
        fid = str(uuid.uuid4())
        status, _, body = cl.put(f"/v1/flow/{fid}", hook_nodes(url))
        if status != 201:
            problems.append(f"{url}: PUT -> {status} {short(body, 200)} (an http URL is valid)")
            continue
        body = {"topic": f"ssrf {tag}"}
        if i == 0:  # the global webhook goes through the same guard
            body["run_options"] = {"global_webhook": {"url": f"http://127.0.0.1:{p}{path}/g"}}
        runs.append((url, fid, start(ctx, fid, body, cl)))
    messages = set()
    for url, fid, rid in runs:
        run = finish(ctx, fid, rid, client=cl)
        if run.get("status") != "complete":
            problems.append(f"{url}: run {run.get('status')} {short(run.get('error'))}")
        try:
            ds = wait_deliveries(cl, fid, rid, ended, 5, "ended")
        except AssertionError as e:
            problems.append(f"{url}: {e}")
            continue
        for d in ds:
            errs = [a.get("error") or "" for a in d["attempts"]]
            messages.update(errs)
            if d["status"] != "failed" or len(errs) != 1:
                problems.append(f"{url} ({d['kind']}): {d['status']} after {len(errs)} attempts,"
                                " want failed at once")
            elif not errs[0].startswith("refused"):
                problems.append(f"{url} ({d['kind']}): error {errs[0]!r} does not start with "
                                "'refused'")
    time.sleep(0.5)
    reached = ctx.recv.requests(lambda r: r.path.startswith(path)) + \
        ctx.recv6.requests(lambda r: r.path.startswith(path))
    if reached:
        problems.append(f"the receiver got {len(reached)} request(s): {reached}")
    note(f"{len(urls)} spellings; errors {sorted(messages)}")
    expect(not problems, "; ".join(problems))


@check
def ssrf_allow_flags_let_loopback_through(ctx):
    tag = rand()
    path = f"/allowed-{tag}"
    p6 = ctx.receiver6().port
    # --webhook-allow-private: 127.1 and [::1] are both let through.
    port, key = private_server(ctx)
    cl = Client(port, key, timeout=15.0)
    for url, srv in ((f"http://127.1:{ctx.recv.port}{path}", ctx.recv),
                     (f"http://[::1]:{p6}{path}", ctx.recv6)):
        fid = hook_flow(ctx, url, cl)
        rid = start(ctx, fid, {"topic": f"allowed {tag}"}, cl)
        d = wait_deliveries(cl, fid, rid, ended, 5, f"{url}: ended")[0]
        expect(d["status"] == "delivered", f"--webhook-allow-private, {url}: {short(d)}")
    expect(len(ctx.recv.requests(on_path(path))) == 1 and len(ctx.recv6.requests(on_path(path))) == 1,
           "the receivers did not get one request each")
    # --webhook-allow-cidr 127.0.0.0/8 (the main server): ::1 lies outside it.
    fid = hook_flow(ctx, f"http://[::1]:{p6}{path}/v6")
    rid = start(ctx, fid, {"topic": f"v6 {tag}"})
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    errs = [a.get("error") or "" for a in d["attempts"]]
    expect(d["status"] == "failed" and len(errs) == 1 and errs[0].startswith("refused"),
           f"[::1] with only 127.0.0.0/8 allowed: {short(d)}")
    expect(not ctx.recv6.requests(on_path(f"{path}/v6")), "[::1] was reached")


# --------------------------------------------------------------------------- head-of-line

@check
def no_head_of_line_blocking(ctx):
    tag = rand()
    slow_path, fast_path = f"/hang-{tag}", f"/fast-{tag}"
    ctx.recv.route(slow_path, Reply(200, json_body={"late": True}, delay=30.0))
    slow_fid = hook_flow(ctx, ctx.recv.url(slow_path))
    fast_fid = hook_flow(ctx, ctx.recv.url(fast_path))
    slow_runs = [start(ctx, slow_fid, {"topic": f"slow {i} {tag}"}) for i in range(5)]
    hanging = wait_requests(ctx.recv, slow_path, 5, 5)
    sent = {}
    for i in range(20):
        topic = f"fast {i} {tag}"
        t0 = time.monotonic()
        start(ctx, fast_fid, {"topic": topic})
        sent[topic] = t0
    got = wait_requests(ctx.recv, fast_path, 20, 10)
    late = []
    worst = 0.0
    for r in got:
        body = r.json() or {}
        t0 = sent.get(body.get("out"))
        expect(t0 is not None, f"unexpected fast delivery body {short(r.body)}")
        lat = r.at - t0
        worst = max(worst, lat)
        if lat > 1.0:
            late.append(f"{body['out']}: {lat:.2f} s")
    overlap = sum(1 for r in got if r.at < hanging[-1].at + HOOK_TIMEOUT)
    note(f"worst latency {worst:.2f} s; {overlap}/20 arrived while 5 attempts hung")
    expect(len(got) == 20, f"{len(got)} fast deliveries, want 20")
    expect(not late, f"fast deliveries late behind a hanging receiver: {late}")
    # The hanging attempts end at --webhook-timeout, recorded as a timeout, and are retried.
    d = wait_deliveries(ctx.c, slow_fid, slow_runs[0], lambda x: x and x[0]["attempts"], 8,
                        "one attempt recorded")[0]
    a = d["attempts"][0]
    expect("timeout" in (a.get("error") or "").lower() and "status_code" not in a,
           f"hanging attempt recorded as {short(a)}, want a timeout")
    expect(HOOK_TIMEOUT * 1000 * 0.9 <= a["duration_ms"] <= HOOK_TIMEOUT * 1000 + 2000,
           f"hanging attempt took {a['duration_ms']} ms, --webhook-timeout is {HOOK_TIMEOUT:g} s")
    expect(d["status"] == "pending", f"status {d['status']!r} after a timeout, want pending")


# --------------------------------------------------------------------------- crash

@check
def kill9_with_retry_pending_resumes_same_id(ctx):
    tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-hookcrash-")
    args = ("--webhook-allow-cidr", "127.0.0.0/8", "--webhook-retry-schedule", "3s,3s",
            "--webhook-timeout", "3s", "--log-level", "debug")
    srv = None
    try:
        key = create_key(ctx.bin, tmp.name, "a", "crash")
        srv = Server(ctx.bin, tmp.name, env=ctx.env(), extra_args=args)
        cl = Client(srv.port, key, timeout=15.0)
        secret = account_secret(cl)
        tag = rand()
        path = f"/crash-{tag}"
        gpath = path + "/global"
        # A third delivery is in flight at the kill: its receiver holds the first attempt.
        hpath = f"/crash-hang-{tag}"
        ctx.recv.script(Reply(200, json_body={"late": True}, delay=30.0), match=on_path(hpath))
        hfid = hook_flow(ctx, ctx.recv.url(hpath), cl)
        hrid = start(ctx, hfid, {"topic": f"in flight {tag}"}, cl)
        hfirst = wait_requests(ctx.recv, hpath, 1, 5)[0]
        ctx.recv.script(Reply(500, body="first"), match=on_path(path))
        ctx.recv.script(Reply(500, body="first"), match=on_path(gpath))
        fid = hook_flow(ctx, ctx.recv.url(path), cl)
        topic = f"crash {tag} é"
        rid = start(ctx, fid, {"topic": topic, "run_options": {"global_webhook": {
            "url": ctx.recv.url(gpath), "signature": "g-crash"}}}, cl)
        expect_complete(finish(ctx, fid, rid, client=cl))
        first = wait_requests(ctx.recv, path, 1, 5)[0]
        gfirst = wait_requests(ctx.recv, gpath, 1, 5)[0]
        wait_deliveries(cl, fid, rid, lambda x: len(x) == 2 and all(
            d["status"] == "pending" and len(d["attempts"]) == 1 for d in x), 2,
            "both pending with their first attempt recorded")
        expect(len(ctx.recv.requests(on_path(path))) == 1 and
               len(ctx.recv.requests(on_path(gpath))) == 1,
               "a retry came before the kill (timing): cannot test the resume")
        hd = deliveries(cl, hfid, hrid)
        expect(len(hd) == 1 and hd[0]["status"] == "pending" and not hd[0]["attempts"],
               f"the held delivery before the kill: {short(hd)}")
        since = time.monotonic() - first.at
        srv.kill9()
        ctx.old_stderr.append(srv.stderr_text())
        note(f"killed {since:.2f} s after the first attempt")
        srv = Server(ctx.bin, tmp.name, env=ctx.env(), extra_args=args)
        cl = Client(srv.port, key, timeout=15.0)
        second = wait_requests(ctx.recv, path, 2, 10)[1]
        gsecond = wait_requests(ctx.recv, gpath, 2, 10)[1]
        hsecond = wait_requests(ctx.recv, hpath, 2, 10)[1]
        for what, a, b, sig in (("node", first, second, "sig-123"),
                                ("global", gfirst, gsecond, "g-crash"),
                                ("in flight", hfirst, hsecond, "sig-123")):
            # The retries come >= 2.4 s later; the held attempt is resent at once.
            newer = int(b.headers["webhook-timestamp"]) - int(a.headers["webhook-timestamp"])
            expect(a.headers.get("webhook-id") == b.headers.get("webhook-id"),
                   f"{what}: webhook-id {a.headers.get('webhook-id')} became "
                   f"{b.headers.get('webhook-id')} after the restart")
            expect(a.body == b.body, f"{what}: body changed after the restart: "
                                     f"{short(a.body, 150)} vs {short(b.body, 150)}")
            expect(newer >= (0 if what == "in flight" else 2),
                   f"{what}: webhook-timestamp moved by {newer} s across the restart")
            expect_headers(ctx, b, sig)
            expect_hmac(secret, b, f"{what} after the restart")
        expect(first.json() == {"out": topic}, f"node body {short(first.body)}")
        expect(account_secret(cl) == secret, "the account secret changed across the restart")
        ds = wait_deliveries(cl, fid, rid, lambda x: ended(x, 2), 5, "both ended")
        for d in ds:
            expect(d["status"] == "delivered" and codes(d) == [500, 200],
                   f"{d['kind']} delivery after the restart {short(d)}")
        hd = wait_deliveries(cl, hfid, hrid, ended, 5, "the held delivery ended")[0]
        expect(hd["status"] == "delivered" and codes(hd)[-1:] == [200],
               f"the delivery in flight at the kill, after the restart: {short(hd)}")
        time.sleep(0.5)
        n, gn = len(ctx.recv.requests(on_path(path))), len(ctx.recv.requests(on_path(gpath)))
        hn = len(ctx.recv.requests(on_path(hpath)))
        expect(n == 2 and gn == 2 and hn == 2,
               f"requests node {n}, global {gn}, in flight {hn}: want 2 each")
        healthy(ctx, srv.port)
    finally:
        if srv is not None:
            srv.close()
            ctx.old_stderr.append(srv.stderr_text())
        tmp.cleanup()


# --------------------------------------------------------------------------- rotation

@check
def rotate_secret_both_signatures(ctx):
    cl = Client(ctx.port, ctx.key_rot, timeout=15.0)
    a_before = account_secret(ctx.c)
    s1 = account_secret(cl)
    tag = rand()
    p1, p2 = f"/rot1-{tag}", f"/rot2-{tag}"
    fid1 = hook_flow(ctx, ctx.recv.url(p1), cl)
    fid2 = hook_flow(ctx, ctx.recv.url(p2), cl)
    expect_complete(run_flow(ctx, fid1, {"topic": f"before {tag}"}, client=cl))
    rec1 = wait_requests(ctx.recv, p1, 1, 5)[0]
    expect(webhook_signature_entries(rec1.headers.get("webhook-signature")) and
           expect_hmac(s1, rec1, "before rotation") == 0 and
           len(webhook_signature_entries(rec1.headers["webhook-signature"])) == 1,
           f"before rotation: {rec1.headers.get('webhook-signature')!r}")

    status, _, body = cl.post("/v1/webhook-secret/rotate")
    expect(status == 200 and isinstance(body, dict), f"rotate -> {status} {short(body)}")
    s2 = body.get("secret")
    SECRETS_SEEN.add(str(s2))
    expect(isinstance(s2, str) and s2.startswith("whsec_") and len(webhook_key(s2)) == 32,
           f"rotated secret {short(s2)}")
    expect(s2 != s1, "rotation returned the same secret")
    until = parse_time(body.get("previous_valid_until"))
    expect(abs(until - (time.time() + 86400)) < 300,
           f"previous_valid_until {body.get('previous_valid_until')} is not ~24 h from now")
    status, _, got = cl.get("/v1/webhook-secret")
    expect(got == body, f"GET after rotate {short(got)} != rotate's answer {short(body)}")

    expect_complete(run_flow(ctx, fid2, {"topic": f"after {tag}"}, client=cl))
    rec2 = wait_requests(ctx.recv, p2, 1, 5)[0]
    entries = webhook_signature_entries(rec2.headers.get("webhook-signature"))
    expect(len(entries) == 2 and " " in rec2.headers["webhook-signature"],
           f"during the grace period: webhook-signature {rec2.headers.get('webhook-signature')!r}"
           ", want two space-separated entries")
    i_new, i_old = expect_hmac(s2, rec2, "new secret"), expect_hmac(s1, rec2, "old secret")
    expect(i_new != i_old, "both secrets match the same entry")
    note(f"entry order: new={i_new}, old={i_old}")
    junk = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    res = sw_results([(s2, rec2), (s1, rec2), (junk, rec2), (s1, rec1), (s2, rec1)])
    expect(res[0][0], f"standardwebhooks, new secret: {res[0][1]}")
    expect(res[1][0], f"standardwebhooks, old secret: {res[1][1]}")
    expect(not res[2][0], "control: standardwebhooks accepted an unrelated secret")
    expect(res[3][0], f"standardwebhooks, pre-rotation delivery with the old secret: {res[3][1]}")
    expect(not res[4][0], "control: the new secret verified a delivery signed before it existed")
    expect(account_secret(ctx.c) == a_before, "rotating account rot changed account a's secret")


def private_server(ctx):
    """`--webhook-allow-private` (instead of a CIDR) and a 1 s secret grace period."""
    return ctx.extra("private", ("--webhook-allow-private", "--webhook-secret-grace", "1s",
                                 "--webhook-retry-schedule", SCHEDULE))


@check
def rotate_grace_period_ends(ctx):
    port, key = private_server(ctx)
    cl = Client(port, key, timeout=15.0)
    s1 = account_secret(cl)
    status, _, body = cl.post("/v1/webhook-secret/rotate")
    expect(status == 200 and "previous_valid_until" in body, f"rotate -> {status} {short(body)}")
    s2 = body["secret"]
    SECRETS_SEEN.add(s2)
    time.sleep(1.3)
    status, _, got = cl.get("/v1/webhook-secret")
    expect(got == {"secret": s2}, f"after the grace period GET -> {short(got)}")
    tag = rand()
    path = f"/grace-{tag}"
    fid = hook_flow(ctx, ctx.recv.url(path), cl)
    expect_complete(run_flow(ctx, fid, {"topic": tag}, client=cl))
    rec = wait_requests(ctx.recv, path, 1, 5)[0]
    entries = webhook_signature_entries(rec.headers.get("webhook-signature"))
    expect(len(entries) == 1, f"after the grace period: {rec.headers.get('webhook-signature')!r}")
    expect_hmac(s2, rec, "new secret")
    expect(webhook_signature_matches(s1, rec.headers, rec.body) is None,
           "the old secret still signs after the grace period")


# --------------------------------------------------------------------------- listing / retry

@check
def deliveries_listing_and_retry_route(ctx):
    tag = rand()
    path = f"/manual-{tag}"
    url = ctx.recv.url(path)
    ctx.recv.script(Reply(400, json_body={"error": "not yet"}), match=on_path(path))
    fid = hook_flow(ctx, url)
    rid = start(ctx, fid, {"topic": f"manual {tag}"})
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    expect_delivery_shape(d, "node", url, HOOK_NODE)
    expect(d["status"] == "failed" and codes(d) == [400], f"after a 400: {short(d)}")
    first = wait_requests(ctx.recv, path, 1, 2)[0]
    did = d["delivery_id"]
    base = f"/v1/flow/{fid}/run/{rid}/deliveries"

    other = Client(ctx.port, ctx.key_b)
    status, _, body = other.get(base)
    expect(status == 404, f"another account's GET deliveries -> {status} {short(body)}")
    status, _, body = other.post(f"{base}/{did}/retry")
    expect(status == 404, f"another account's retry -> {status} {short(body)}")
    expect(len(ctx.recv.requests(on_path(path))) == 1, "another account's retry sent it")
    status, _, body = ctx.c.post(f"{base}/msg_{'0' * 32}/retry")
    expect(status == 404 and (body.get("error") or {}).get("code") == "not_found",
           f"retry of an unknown delivery -> {status} {short(body)}")
    status, hdrs, body = ctx.c.get(f"{base}/{did}/retry")
    expect(status == 405 and "POST" in hdrs.get("allow", ""), f"GET retry -> {status} {hdrs}")

    status, _, body = ctx.c.post(f"{base}/{did}/retry")
    expect(status == 202 and isinstance(body, dict), f"retry -> {status} {short(body)}")
    expect(body.get("delivery_id") == did and body.get("status") in ("pending", "delivered"),
           f"retry answer {short(body)}")
    second = wait_requests(ctx.recv, path, 2, 5)[1]
    expect(second.headers.get("webhook-id") == first.headers.get("webhook-id"),
           "the manual retry has another webhook-id")
    expect(second.body == first.body, "the manual retry sent other bytes")
    expect_hmac(account_secret(ctx.c), second, "manual retry")
    d = wait_deliveries(ctx.c, fid, rid, lambda x: x[0]["status"] == "delivered", 5,
                        "delivered")[0]
    expect(codes(d) == [400, 200], f"after the retry: attempts {short(d['attempts'])}")
    status, _, body = ctx.c.post(f"{base}/{did}/retry")
    expect(status == 409 and (body.get("error") or {}).get("code") == "conflict",
           f"retry of a delivered delivery -> {status} {short(body)}")

    # A pending one (its receiver keeps answering 503) cannot be retried by hand either.
    ppath = f"/pending-{tag}"
    ctx.recv.route(ppath, status=503, body="busy")
    pfid = hook_flow(ctx, ctx.recv.url(ppath))
    prid = start(ctx, pfid, {"topic": f"pending {tag}"})
    pd = wait_deliveries(ctx.c, pfid, prid, lambda x: x and x[0]["attempts"], 5, "attempted")[0]
    expect(pd["status"] == "pending", f"after a 503: {short(pd)}")
    wait_s = parse_time(pd["next_attempt_at"]) - parse_time(pd["attempts"][-1]["at"])
    expect(0.7 <= wait_s <= 1.3 + pd["attempts"][-1]["duration_ms"] / 1000,
           f"next_attempt_at is {wait_s:.2f} s after the attempt, schedule says 1 s ±20%")
    status, _, body = ctx.c.post(f"/v1/flow/{pfid}/run/{prid}/deliveries/{pd['delivery_id']}/retry")
    expect(status == 409 and (body.get("error") or {}).get("code") == "conflict",
           f"retry of a pending delivery -> {status} {short(body)}")


# --------------------------------------------------------------------------- global webhook

def _global_body(ctx, path, timeout=8):
    rec = wait_requests(ctx.recv, path, 1, timeout)[0]
    body = rec.json()
    expect(isinstance(body, dict), f"global body is not a JSON object: {short(rec.body)}")
    return rec, body


@check
def global_webhook_on_failed_http_run(ctx):
    tag = rand()
    ctx.web.route(f"/missing-{tag}", status=404, body="nope")
    path = f"/gfail-{tag}"
    fid = save(ctx, load_flow("http"))
    rid = start(ctx, fid, {"url": ctx.web.url(f"/missing-{tag}"), "run_options": {
        "global_webhook": {"url": ctx.recv.url(path), "signature": "g-fail"}}})
    run = finish(ctx, fid, rid)
    expect(run.get("status") == "failed", f"run {short(run)}")
    rec, body = _global_body(ctx, path)
    expect(body.get("status") == "failed" and body.get("run_id") == rid,
           f"global body {short(body)}")
    expect(body.get("error") == run.get("error"),
           f"global error {short(body.get('error'))} != GET's {short(run.get('error'))}")
    expect((body.get("error") or {}).get("node") == HTTP_NODE, f"error {short(body.get('error'))}")
    expect(not body.get("outputs"), f"failed run's global body has outputs {short(body)}")
    expect_headers(ctx, rec, "g-fail")
    expect_hmac(account_secret(ctx.c), rec)
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    expect_delivery_shape(d, "global", ctx.recv.url(path))
    expect(d["status"] == "delivered", f"global delivery {short(d)}")


def _c29_global(ctx):
    tag = rand()
    replies = {
        "a": Reply(200, json_body={"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": None},
             "finish_reason": "length"}]}),
        "b": Reply(200, json_body={"choices": []}),
        "c": Reply(200, body="<html>oops</html>", headers={"Content-Type": "text/html"}),
        "d": Reply(200, json_body=chat_completion("ok"), content_length=400, send_only=100),
    }
    fid = save(ctx, load_flow("llm"))
    runs = []
    for name, reply in replies.items():
        marker = f"c29{name}-{tag}"
        ctx.llm.script(reply, match=marker)
        path = f"/c29{name}-{tag}/global"
        rid = start(ctx, fid, {"topic": marker, "run_options": {
            "global_webhook": {"url": ctx.recv.url(path)}}})
        runs.append((name, marker, path, rid))
    problems = []
    for name, marker, path, rid in runs:
        run = finish(ctx, fid, rid)
        ctx.llm.clear_scripts(match=marker)
        if run.get("status") != "failed":
            problems.append(f"({name}) run {run.get('status')}")
        try:
            rec, body = _global_body(ctx, path)
        except AssertionError as e:
            problems.append(f"({name}) {e}")
            continue
        err = body.get("error") or {}
        if body.get("status") != "failed" or body.get("run_id") != rid:
            problems.append(f"({name}) global body status {body.get('status')!r}")
        if err.get("node") != LLM_NODE or err != run.get("error"):
            problems.append(f"({name}) global error {short(err)} vs GET {short(run.get('error'))}")
        if "AI_FLOW_SIGNATURE".lower() in rec.headers:
            problems.append(f"({name}) AI_FLOW_SIGNATURE sent though no signature was set")
    expect(not problems, "; ".join(problems))
    healthy(ctx)


register("c29_global_webhook_carries_failed_run", _c29_global)


@check
def global_webhook_on_canceled_run(ctx):
    tag = rand()
    ctx.web.route(f"/slow-{tag}", body="late", delay=4.0)
    path = f"/gcancel-{tag}"
    fid = save(ctx, load_flow("http"))
    rid = start(ctx, fid, {"url": ctx.web.url(f"/slow-{tag}"), "run_options": {
        "global_webhook": {"url": ctx.recv.url(path)}}})
    expect(ctx.web.wait_requests(1, f"/slow-{tag}", timeout=5), "the http-get never started")
    t0 = time.monotonic()
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{rid}/cancel")
    expect(status == 200, f"cancel -> {status} {short(body)}")
    rec, gbody = _global_body(ctx, path, timeout=6)
    note(f"global webhook {rec.at - t0:.2f} s after the cancel")
    expect(gbody.get("status") == "canceled" and gbody.get("run_id") == rid,
           f"global body {short(gbody)}")
    expect(finish(ctx, fid, rid).get("status") == "canceled", "GET does not say canceled")


@check
def save_false_outputs_only_in_global_webhook(ctx):
    tag = rand()
    path = f"/nosave-{tag}"
    url = ctx.recv.url(path)
    fid = hook_flow(ctx, url)
    topic = f"unsaved {tag}"
    rid = start(ctx, fid, {"topic": topic, "run_options": {
        "save": False, "global_webhook": {"url": url + "/global"}}})
    run = finish(ctx, fid, rid)
    expect(run.get("status") == "complete", f"run {short(run)}")
    expect("outputs" not in run, f"save:false run has outputs in GET: {short(run)}")
    rec, gbody = _global_body(ctx, path + "/global")
    expect(gbody.get("status") == "complete" and gbody.get("outputs") == {"text": topic},
           f"global body {short(gbody)}: want the outputs even with save:false")
    node_rec = wait_requests(ctx.recv, path, 1, 5)[0]
    expect(node_rec.json() == {"out": topic}, f"node body {short(node_rec.body)}")
    expect_hmac(account_secret(ctx.c), rec, "global")
    time.sleep(0.2)
    run = finish(ctx, fid, rid)
    expect("outputs" not in run, f"outputs appeared later: {short(run)}")


@check
def save_false_failed_global_cannot_be_retried(ctx):
    """README: with save:false the delivery's body is dropped once it has ended, so a failed
    one cannot be sent again by hand (409)."""
    tag = rand()
    gpath = f"/nosave-fail-{tag}/global"
    ctx.recv.route(gpath, status=400, body="no")
    fid = save(ctx, load_flow("echo"))
    rid = start(ctx, fid, {"topic": tag, "run_options": {
        "save": False, "global_webhook": {"url": ctx.recv.url(gpath)}}})
    expect(finish(ctx, fid, rid).get("status") == "complete", "run did not complete")
    d = wait_deliveries(ctx.c, fid, rid, ended, 5, "ended")[0]
    expect(d["status"] == "failed" and codes(d) == [400], f"global delivery {short(d)}")
    status, _, body = ctx.c.post(f"/v1/flow/{fid}/run/{rid}/deliveries/{d['delivery_id']}/retry")
    expect(status == 409 and (body.get("error") or {}).get("code") == "conflict",
           f"retry of a save:false delivery -> {status} {short(body)}")
    time.sleep(0.3)
    expect(len(ctx.recv.requests(on_path(gpath))) == 1, "it was sent again")


# --------------------------------------------------------------------------- last

@check
def retries_exhausted_end_failed(ctx):
    """The TLS and closed-port deliveries from earlier checks: 1 + 3 attempts on the 1s,2s,4s
    schedule, then failed."""
    keys = [k for k in ("tls_self_signed", "tls_other", "closed_port") if k in ctx.state]
    expect(keys, "needs the c26e/c26f/connection_error checks to have run first")
    for k in keys:
        fid, rid = ctx.state[k]
        d = wait_deliveries(ctx.c, fid, rid, ended, 12, f"{k}: ended")[0]
        atts = d["attempts"]
        expect(d["status"] == "failed" and len(atts) == 4,
               f"{k}: {d['status']} after {len(atts)} attempts, want failed after 4")
        at = [parse_time(a["at"]) + a["duration_ms"] / 1000 for a in atts]
        starts = [parse_time(a["at"]) for a in atts]
        gaps = [b - a for a, b in zip(at, starts[1:])]
        for g, want in zip(gaps, (1.0, 2.0, 4.0)):
            expect(want * 0.8 - 0.05 <= g <= want * 1.2 + 0.6,
                   f"{k}: gaps {[round(x, 2) for x in gaps]} s, schedule 1s,2s,4s ±20%")


@check
def clean_exit_and_no_secret_in_logs(ctx):
    """SIGTERM with deliveries still pending exits 0; no sanitizer report and no webhook
    secret in any server's log."""
    code = ctx.server.terminate(timeout=20.0)
    ctx.old_stderr.append(ctx.server.stderr_text())
    ctx.server.close()
    ctx.server = ctx._start_main()
    for srv, _, _ in ctx._extra.values():
        ctx.old_stderr.append(srv.stderr_text())
    text = "\n".join(ctx.old_stderr)
    expect(code == 0, f"flowd exited {code} after SIGTERM")
    for marker in ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:"):
        i = text.find(marker)
        expect(i < 0, f"sanitizer report in the logs: {text[max(0, i - 200):i + 800]}")
    expect(SECRETS_SEEN, "no secret was read")
    leaked = [s[:12] + "..." for s in SECRETS_SEEN if s[len("whsec_"):] in text]
    expect(not leaked, f"webhook secrets in the logs: {leaked}")


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
        load_flow("webhook")
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
