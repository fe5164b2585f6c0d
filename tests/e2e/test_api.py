"""End-to-end tests of flowd's public HTTP API against the real binary.

Usage: python3 test_api.py <path-to-flowd> [name-substring ...]

What it proves, against shared/API.md, shared/FLOWS.md and shared/cases/README.md:
- health endpoints, API keys (offline bootstrap, create, list without secrets, immediate revoke),
  the Authorization header matrix, and account isolation (another account sees only 404s);
- Cloud Save: versions, GET of old versions, POST with a UUID v4, DELETE, and `invalid_flow`
  listing every problem;
- runs on echo.json: 202 + Location, polling to `complete`, RFC 3339 times, recorded version;
- the regression cases C15, C16, C17, C12, C13, C10 (JSON and inputs) and C01, C02, C03, C05,
  C06, C08 plus a 431 (HTTP framing, sent byte-exact over raw sockets).

Where the contract allows two behaviours, the check accepts both and prints which one it saw.
Prints `ok <name>` or `FAIL <name>: <reason>` per check, then `N passed, M failed`; the exit
status is non-zero when anything failed. Optional extra arguments run only the checks whose
names contain one of them.
"""

import base64
import decimal
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

from flowd_harness import (KEY_RE, TIME_RE, UUID4_RE, Client, KeepAliveClient, RawConn, Server,
                           create_key, final_responses, load_flow, poll_run, raw,
                           split_responses)

B0 = b'{"topic":"cats"}'
MAX_BODY_SMALL = 65536


def echo_text(topic, tone="neutral", count="3"):
    return f"Topic: {topic} / Tone: {tone} / Count: {count}"


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
    """Record which of two allowed behaviours the server chose; printed with the result."""
    _notes.append(str(msg))


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def short(value, n=300):
    if isinstance(value, (bytes, bytearray)):
        text = value.decode("utf-8", "replace")
    else:
        text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# --------------------------------------------------------------------------- shared fixture

class Ctx:
    """One data dir with keys for accounts a and b, and one server that checks share.

    If a check leaves the server dead, the runner fails that check and restarts the server on
    the same data dir so later checks still mean something.
    """

    def __init__(self, bin_path):
        self.bin = bin_path
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-api-")
        self.data_dir = self._tmp.name
        self.key_a = create_key(bin_path, self.data_dir, "a", "test-a")
        self.key_b = create_key(bin_path, self.data_dir, "b", "test-b")
        self.server = Server(bin_path, self.data_dir)
        self._echo = None
        self._small = None   # (Server, key, TemporaryDirectory) with --max-body 65536
        self.state = {}

    @property
    def port(self):
        return self.server.port

    @property
    def a(self):
        return Client(self.port, self.key_a)

    @property
    def b(self):
        return Client(self.port, self.key_b)

    @property
    def anon(self):
        return Client(self.port, None)

    def echo(self):
        """A shared copy of echo.json for checks that do not count runs."""
        if self._echo is None:
            self._echo = new_echo(self)
        return self._echo

    def small(self):
        """A second server started with --max-body 65536 (C02); returns (port, key)."""
        if self._small is None or not self._small[0].alive():
            tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-small-")
            key = create_key(self.bin, tmp.name, "a", "small")
            srv = Server(self.bin, tmp.name, extra_args=("--max-body", str(MAX_BODY_SMALL)))
            self._small = (srv, key, tmp)
        return self._small[0].port, self._small[1]

    def revive(self):
        """None if the server is up and answers /healthz; else a message, after restarting it
        on the same data dir. A process that is still dying (abort in progress) is waited for."""
        if self.server.alive():
            try:
                if Client(self.port, timeout=2.0).get("/healthz")[0] == 200:
                    return None
            except OSError:
                pass
            try:
                self.server.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                self.server.kill9()
                msg = "flowd stopped answering /healthz (killed); stderr tail:\n"
                return self._restart(msg)
        return self._restart(f"flowd died (exit {self.server.returncode}); stderr tail:\n")

    def _restart(self, msg):
        msg += self.server.stderr_tail(15)
        self.server.close()
        self.server = Server(self.bin, self.data_dir)
        return msg

    def close(self):
        if self._small is not None:
            self._small[0].close()
            self._small[2].cleanup()
        self.server.close()
        self._tmp.cleanup()


# --------------------------------------------------------------------------- helpers

def expect_status(resp, *statuses):
    status, _, body = resp
    expect(status in statuses, f"status {status}, want {' or '.join(map(str, statuses))}; "
                               f"body {short(body)}")


def expect_error(resp, status, codes=None):
    """Assert the API.md error shape; returns the `error` object."""
    expect_status(resp, status)
    body = resp[2]
    expect(isinstance(body, dict) and isinstance(body.get("error"), dict),
           f"error body is not {{\"error\": {{...}}}}: {short(body)}")
    err = body["error"]
    expect(isinstance(err.get("code"), str) and isinstance(err.get("message"), str),
           f"error lacks string code/message: {short(body)}")
    if codes is not None:
        codes = (codes,) if isinstance(codes, str) else tuple(codes)
        expect(err["code"] in codes, f"error.code {err['code']!r}, want {' or '.join(codes)}")
    return err


def expect_names(err, name):
    """The error names the offending input (in `field`, `details` or the message)."""
    expect(err.get("field") == name or name in err.get("message", "")
           or name in json.dumps(err.get("details", "")),
           f"error does not name {name!r}: {short(err)}")


def expect_unauthorized(resp):
    expect_error(resp, 401, "unauthorized")
    www = resp[1].get("www-authenticate", "")
    expect(www.lower().startswith("bearer"), f"WWW-Authenticate is {www!r}, want Bearer")


def labelled(label, fn, *args):
    """Run fn(*args); prefix an assertion failure with what was being done."""
    try:
        return fn(*args)
    except AssertionError as e:
        raise AssertionError(f"{label}: {e}") from None


def new_echo(ctx, client=None):
    fid = str(uuid.uuid4())
    resp = (client or ctx.a).put(f"/v1/flow/{fid}", load_flow("echo"))
    labelled("PUT echo.json", expect_status, resp, 201)
    return fid


def run_ids(ctx, fid, client=None):
    resp = (client or ctx.a).get(f"/v1/flow/{fid}/runs?limit=100")
    labelled("GET runs listing", expect_status, resp, 200)
    body = resp[2]
    expect(isinstance(body, dict) and isinstance(body.get("runs"), list),
           f"runs listing has no runs list: {short(body)}")
    return [r.get("run_id") for r in body["runs"]]


def expect_no_new_run(ctx, fid, before):
    after = run_ids(ctx, fid)
    expect(after == before, f"runs changed: before {before}, after {after}")


def expect_accepted(resp, fid=None):
    """A 202 with the run fields; returns the run_id."""
    expect_status(resp, 202)
    body = resp[2]
    expect(isinstance(body, dict) and isinstance(body.get("run_id"), str) and body["run_id"],
           f"202 body lacks run_id: {short(body)}")
    if fid is not None:
        loc = resp[1].get("location", "")
        want = f"/v1/flow/{fid}/run/{body['run_id']}"
        expect(loc == want or (loc.startswith("http") and loc.endswith(want)),
               f"Location {loc!r}, want {want!r}")
    return body["run_id"]


def finished_text(ctx, fid, run_id, timeout=10.0):
    run = poll_run(ctx.a, fid, run_id, timeout=timeout)
    expect(run.get("status") == "complete", f"run ended {run.get('status')!r}: {short(run)}")
    outputs = run.get("outputs")
    expect(isinstance(outputs, dict) and "text" in outputs,
           f"run has no outputs.text: {short(run)}")
    return outputs["text"]


def run_and_text(ctx, fid, body, headers=None):
    resp = ctx.a.post(f"/v1/flow/{fid}/run", body, headers=headers)
    return finished_text(ctx, fid, expect_accepted(resp, fid))


def raw_head(fid, key, version="HTTP/1.1"):
    return (f"POST /v1/flow/{fid}/run {version}\r\nHost: t\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\n").encode()


def raw_error(response, statuses, codes=None):
    """Assert one raw response is a refusal in `statuses` with the JSON error body."""
    status, headers, body = response
    expect(status in statuses, f"status {status}, want one of {statuses}; body {short(body)}")
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        expect(isinstance(err["code"], str) and isinstance(err["message"], str), "shape")
    except (ValueError, KeyError, TypeError, AssertionError):
        raise AssertionError(f"{status} body is not the JSON error shape: {short(body)}")
    if codes is not None:
        expect(err["code"] in codes, f"error.code {err['code']!r}, want one of {codes}")
    return err


def expect_finals(data, n):
    resps = split_responses(data)
    finals = final_responses(resps)
    expect(len(finals) == n,
           f"{len(finals)} final responses, want {n}: {[r[0] for r in resps]} raw {short(data)}")
    return resps, finals


def expect_refused_and_closed(ctx, fid, before, data, closed, statuses, codes=None):
    _, finals = expect_finals(data, 1)
    err = raw_error(finals[0], statuses, codes)
    expect(closed, f"server did not close after {finals[0][0]}")
    expect_no_new_run(ctx, fid, before)
    return finals[0][0], err


def rfc3339(run, field):
    value = run.get(field)
    expect(isinstance(value, str) and TIME_RE.match(value),
           f"{field} {value!r} is not RFC 3339 UTC with milliseconds")
    return value


# --------------------------------------------------------------------------- operations

@check
def healthz_200(ctx):
    expect_status(ctx.anon.get("/healthz"), 200)


@check
def readyz_200(ctx):
    expect_status(ctx.anon.get("/readyz"), 200)


# --------------------------------------------------------------------------- keys

@check
def keys_create_offline(ctx):
    for key in (ctx.key_a, ctx.key_b):
        expect(KEY_RE.match(key), f"offline key {key[:6]}... does not match fk_ + 38 base62")
    expect(ctx.key_a != ctx.key_b, "two offline keys are equal")
    expect_status(ctx.a.get("/v1/keys"), 200)


def post_key(ctx, name="ci"):
    resp = ctx.a.post("/v1/keys", {"name": name})
    expect_status(resp, 201)
    body = resp[2]
    expect(isinstance(body, dict), f"body {short(body)}")
    for field in ("key_id", "name", "key", "prefix", "created_at"):
        expect(field in body, f"POST /v1/keys lacks {field!r}: {list(body)}")
    return body


@check
def keys_post_201(ctx):
    body = post_key(ctx)
    expect(body["name"] == "ci", f"name {body['name']!r}")
    expect(KEY_RE.match(body["key"]), "created key does not match ^fk_[0-9A-Za-z]{38,}$")
    expect(isinstance(body["prefix"], str) and body["prefix"], "empty prefix")
    expect(body["prefix"] != body["key"], "prefix is the whole key")
    expect(TIME_RE.match(str(body["created_at"])), f"created_at {body['created_at']!r}")
    expect_status(Client(ctx.port, body["key"]).get("/v1/keys"), 200)


@check
def keys_post_duplicate_name_refused(ctx):
    """A key repeated within one object is invalid_json everywhere, key creation included."""
    before = len(ctx.a.get("/v1/keys")[2]["keys"])
    err = expect_error(ctx.a.post("/v1/keys", '{"name":"a","name":"b"}'), 400, "invalid_json")
    expect("repeats a key" in err["message"], f"message {err['message']!r}")
    after = len(ctx.a.get("/v1/keys")[2]["keys"])
    expect(after == before, f"a refused request made a key ({before} -> {after})")


@check
def prefer_wait_beyond_64_bits_counts_as_60(ctx):
    fid = new_echo(ctx)
    for value in ("99999999999", "18446744073709551616"):
        status, _, body = ctx.a.post(f"/v1/flow/{fid}/run", {"topic": "cats"}, headers={"Prefer": f"wait={value}"})
        expect(status == 200 and body.get("status") == "complete",
               f"Prefer: wait={value} -> {status} {short(body)}; want the ended run (waits up to 60 s)")


@check
def keys_list_hides_key(ctx):
    created = post_key(ctx)
    resp = ctx.a.get("/v1/keys")
    expect_status(resp, 200)
    listing = resp[2]
    expect(isinstance(listing, dict) and isinstance(listing.get("keys"), list),
           f"listing {short(listing)}")
    ids = [k.get("key_id") for k in listing["keys"]]
    expect(created["key_id"] in ids, f"new key_id {created['key_id']} not listed")
    for entry in listing["keys"]:
        expect("key" not in entry, f"a listing entry has a 'key' field: {sorted(entry)}")
        for field in ("key_id", "name", "prefix", "created_at", "last_used_at"):
            expect(field in entry, f"listing entry lacks {field!r}")
    text = json.dumps(listing)
    for secret in (created["key"], ctx.key_a, ctx.key_b):
        expect(secret not in text, "a raw key appears in GET /v1/keys")
    other = ctx.b.get("/v1/keys")
    expect_status(other, 200)
    expect(created["key_id"] not in json.dumps(other[2]), "account b lists account a's key")


@check
def keys_revoke_immediate(ctx):
    created = post_key(ctx, "to-revoke")
    with KeepAliveClient(ctx.port, created["key"]) as ka:
        expect_status(ka.get("/v1/keys"), 200)
        port_before = ka.last_local_port
        expect_status(ctx.b.delete(f"/v1/keys/{created['key_id']}"), 404)
        expect_status(ka.get("/v1/keys"), 200)
        resp = ctx.a.delete(f"/v1/keys/{created['key_id']}")
        expect_status(resp, 204)
        labelled("revoked key on a new connection", expect_unauthorized,
                 Client(ctx.port, created["key"]).get("/v1/keys"))
        resp = ka.get("/v1/keys")
        expect(ka.last_local_port == port_before,
               "server closed the keep-alive connection; could not test it after revoke")
        labelled("revoked key on the keep-alive connection", expect_unauthorized, resp)
    listing = ctx.a.get("/v1/keys")[2]
    expect(created["key_id"] not in json.dumps(listing), "revoked key still listed")


# --------------------------------------------------------------------------- authorization

def auth_run(ctx, headers):
    return ctx.anon.post(f"/v1/flow/{ctx.echo()}/run", B0, headers=headers)


def flip_case(key):
    for i in range(3, len(key)):
        if key[i].isalpha():
            return key[:i] + key[i].swapcase() + key[i + 1:]
    raise AssertionError("key has no letter to flip")


AUTH_OK = [
    ("auth_bearer", lambda k: {"Authorization": f"Bearer {k}"}),
    ("auth_lowercase_bearer", lambda k: {"authorization": f"bearer {k}"}),
    ("auth_uppercase_BEARER", lambda k: {"Authorization": f"BEARER {k}"}),
    ("auth_two_spaces", lambda k: {"Authorization": f"Bearer  {k}"}),
]
AUTH_BAD = [
    ("auth_missing_header", lambda k: {}),
    ("auth_flipped_case", lambda k: {"Authorization": f"Bearer {flip_case(k)}"}),
    ("auth_truncated", lambda k: {"Authorization": f"Bearer {k[:-1]}"}),
    ("auth_key_plus_x", lambda k: {"Authorization": f"Bearer {k}x"}),
    ("auth_basic", lambda k: {"Authorization":
                              "Basic " + base64.b64encode(f"{k}:".encode()).decode()}),
    ("auth_empty_token", lambda k: {"Authorization": "Bearer"}),
    ("auth_empty_token_space", lambda k: {"Authorization": "Bearer "}),
    ("auth_query_param", None),
    ("auth_x_api_key", lambda k: {"x-api-key": k}),
]


def _auth_ok(make):
    def fn(ctx):
        expect_accepted(auth_run(ctx, make(ctx.key_a)), ctx.echo())
    return fn


def _auth_bad(make):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        if make is None:
            resp = ctx.anon.post(f"/v1/flow/{fid}/run?api_key={ctx.key_a}", B0)
        else:
            resp = ctx.anon.post(f"/v1/flow/{fid}/run", B0, headers=make(ctx.key_a))
        expect_unauthorized(resp)
        expect_no_new_run(ctx, fid, before)
    return fn


for _name, _make in AUTH_OK:
    register(_name, _auth_ok(_make))
for _name, _make in AUTH_BAD:
    register(_name, _auth_bad(_make))


# --------------------------------------------------------------------------- flows

def bad_flow(*problems):
    """echo.json with the named problems injected."""
    nodes = load_flow("echo")
    by_name = {n["name"]: n for n in nodes}
    if "duplicate" in problems:
        by_name["intone001#api-input"]["api_input_name"] = "topic"
    if "unknown_type" in problems:
        nodes.append({"name": "bogus0001#no-such-kind", "processorType": "no-such-kind",
                      "inputs": []})
    if "missing_node" in problems:
        by_name["outtext01#api-output"]["inputs"][0]["inputNode"] = "ghost0001#merger-prompt"
    if "cycle" in problems:
        nodes.append({"name": "cyclea001#transition", "processorType": "transition",
                      "inputs": [{"inputNode": "cycleb001#transition", "inputNodeOutputKey": 0}]})
        nodes.append({"name": "cycleb001#transition", "processorType": "transition",
                      "inputs": [{"inputNode": "cyclea001#transition", "inputNodeOutputKey": 0}]})
    return nodes


def expect_invalid_flow(ctx, nodes, min_details=1):
    fid = str(uuid.uuid4())
    resp = ctx.a.put(f"/v1/flow/{fid}", nodes)
    expect_error(resp, 400, "invalid_flow")
    details = resp[2]["error"].get("details", resp[2].get("details"))
    expect(isinstance(details, list) and len(details) >= min_details,
           f"details has fewer than {min_details} entries: {short(details)}")
    for d in details:
        expect(isinstance(d, dict) and "problem" in d, f"detail without 'problem': {short(d)}")
    expect_status(ctx.a.get(f"/v1/flow/{fid}"), 404)
    return details


@check
def flow_put_creates_201(ctx):
    fid = str(uuid.uuid4())
    resp = ctx.a.put(f"/v1/flow/{fid}", load_flow("echo"))
    expect_status(resp, 201)
    body = resp[2]
    expect(body.get("flow_id") == fid, f"flow_id {body.get('flow_id')!r}")
    expect(body.get("version") == 1, f"version {body.get('version')!r}")
    expect(TIME_RE.match(str(body.get("saved_at"))), f"saved_at {body.get('saved_at')!r}")


@check
def flow_put_again_200_v2(ctx):
    fid = new_echo(ctx)
    resp = ctx.a.put(f"/v1/flow/{fid}", load_flow("echo"))
    expect_status(resp, 200)
    expect(resp[2].get("version") == 2, f"version {resp[2].get('version')!r}")
    expect(resp[2].get("flow_id") == fid, "flow_id changed")


@check
def flow_get_latest_and_v1(ctx):
    fid = new_echo(ctx)
    expect_status(ctx.a.put(f"/v1/flow/{fid}", load_flow("echo")), 200)
    want_names = sorted(n["name"] for n in load_flow("echo"))
    resp = ctx.a.get(f"/v1/flow/{fid}")
    expect_status(resp, 200)
    body = resp[2]
    for field in ("flow_id", "version", "saved_at", "name", "nodes"):
        expect(field in body, f"GET flow lacks {field!r}: {sorted(body)}")
    expect(body["version"] == 2, f"latest version {body['version']!r}")
    expect(sorted(n.get("name") for n in body["nodes"]) == want_names, "nodes differ")
    resp = ctx.a.get(f"/v1/flow/{fid}?version=1")
    expect_status(resp, 200)
    expect(resp[2].get("version") == 1, f"?version=1 gave version {resp[2].get('version')!r}")
    expect_status(ctx.a.get(f"/v1/flow/{fid}?version=3"), 404)


@check
def flow_post_uuid4(ctx):
    resp = ctx.a.post("/v1/flow", load_flow("echo"))
    expect_status(resp, 201)
    fid = resp[2].get("flow_id")
    expect(isinstance(fid, str) and UUID4_RE.match(fid), f"flow_id {fid!r} is not a UUID v4")
    expect(resp[2].get("version") == 1, f"version {resp[2].get('version')!r}")
    expect_status(ctx.a.get(f"/v1/flow/{fid}"), 200)


@check
def flow_delete_204_then_404(ctx):
    fid = new_echo(ctx)
    expect_status(ctx.a.delete(f"/v1/flow/{fid}"), 204)
    expect_error(ctx.a.get(f"/v1/flow/{fid}"), 404, "not_found")


@check
def flow_other_account_404(ctx):
    fid = new_echo(ctx)
    run_id = expect_accepted(ctx.a.post(f"/v1/flow/{fid}/run", B0), fid)
    b = ctx.b
    expect_error(b.get(f"/v1/flow/{fid}"), 404, "not_found")
    expect_error(b.get(f"/v1/flow/{fid}/run/{run_id}"), 404, "not_found")
    expect_error(b.get(f"/v1/flow/{fid}/runs"), 404, "not_found")
    expect_error(b.post(f"/v1/flow/{fid}/run", B0), 404, "not_found")
    expect_error(b.delete(f"/v1/flow/{fid}"), 404, "not_found")
    expect_status(ctx.a.get(f"/v1/flow/{fid}"), 200)
    expect(len(run_ids(ctx, fid)) == 1, "account b's POST created a run")


@check
def flow_invalid_duplicate_input_name(ctx):
    expect_invalid_flow(ctx, bad_flow("duplicate"))


@check
def flow_invalid_unknown_processor(ctx):
    details = expect_invalid_flow(ctx, bad_flow("unknown_type"))
    expect("bogus0001#no-such-kind" in json.dumps(details), f"node not named: {short(details)}")


@check
def flow_invalid_missing_input_node(ctx):
    expect_invalid_flow(ctx, bad_flow("missing_node"))


@check
def flow_invalid_cycle(ctx):
    expect_invalid_flow(ctx, bad_flow("cycle"))


@check
def flow_invalid_lists_every_problem(ctx):
    details = expect_invalid_flow(ctx, bad_flow("duplicate", "unknown_type", "missing_node"), 3)
    text = json.dumps(details)
    expect("bogus0001#no-such-kind" in text, "unknown node not named")
    expect("outtext01#api-output" in text, "node with the dangling input not named")
    expect("intopic01#api-input" in text or "intone001#api-input" in text,
           "duplicate api_input_name not reported")


@check
def flow_object_form(ctx):
    fid = str(uuid.uuid4())
    expect_status(ctx.a.put(f"/v1/flow/{fid}", {"nodes": load_flow("echo"), "name": "x"}), 201)
    resp = ctx.a.get(f"/v1/flow/{fid}")
    expect_status(resp, 200)
    expect(resp[2].get("name") == "x", f"name {resp[2].get('name')!r}")
    expect(run_and_text(ctx, fid, {"topic": "cats"}) == echo_text("cats"), "wrong text")


# --------------------------------------------------------------------------- runs

@check
def run_echo_202_and_complete(ctx):
    fid = new_echo(ctx)
    resp = ctx.a.post(f"/v1/flow/{fid}/run", {"topic": "cats"})
    run_id = expect_accepted(resp, fid)
    body = resp[2]
    expect(body.get("flow_id") == fid, f"flow_id {body.get('flow_id')!r}")
    expect(body.get("flow_version") == 1, f"flow_version {body.get('flow_version')!r}")
    expect(body.get("status") == "pending", f"status {body.get('status')!r}")
    rfc3339(body, "created_at")
    run = poll_run(ctx.a, fid, run_id)
    expect(run.get("status") == "complete", f"status {run.get('status')!r}: {short(run)}")
    expect(run.get("outputs", {}).get("text") == echo_text("cats"),
           f"outputs {run.get('outputs')!r}")
    times = [rfc3339(run, f) for f in ("created_at", "started_at", "finished_at")]
    expect(times == sorted(times), f"times out of order: {times}")
    expect("error" not in run, "a complete run has an error field")


@check
def run_records_flow_version(ctx):
    fid = new_echo(ctx)
    first = ctx.a.post(f"/v1/flow/{fid}/run", B0)
    expect_accepted(first, fid)
    expect(first[2].get("flow_version") == 1, f"flow_version {first[2].get('flow_version')!r}")
    expect_status(ctx.a.put(f"/v1/flow/{fid}", load_flow("echo")), 200)
    second = ctx.a.post(f"/v1/flow/{fid}/run", B0)
    run_id = expect_accepted(second, fid)
    expect(second[2].get("flow_version") == 2, f"flow_version {second[2].get('flow_version')!r}")
    run = poll_run(ctx.a, fid, run_id)
    expect(run.get("flow_version") == 2, f"GET flow_version {run.get('flow_version')!r}")


# --------------------------------------------------------------------------- C15

C15_REFUSED = [
    ("c15_empty_object", "{}", "missing_input", "topic"),
    ("c15_tone_only", '{"tone":"calm"}', "missing_input", "topic"),
    ("c15_body_array", "[]", "invalid_body", None),
    ("c15_body_string", '"cats"', "invalid_body", None),
    ("c15_body_null", "null", "invalid_body", None),
    ("c15_body_number", "42", "invalid_body", None),
    ("c15_body_true", "true", "invalid_body", None),
    ("c15_unknown_input", '{"topic":"cats","topicc":1}', "unknown_input", "topicc"),
    ("c15_names_case_sensitive", '{"topic":"cats","Topic":"x"}', "unknown_input", None),
]
C15_ACCEPTED = [
    ("c15_empty_string_topic", '{"topic":""}', None, echo_text("")),
    ("c15_nested_object_topic", '{"topic":{"nested":1}}', None, echo_text('{"nested":1}')),
    ("c15_json_charset", B0, {"Content-Type": "application/json; charset=utf-8"},
     echo_text("cats")),
]


def _c15_refused(body, code, name):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        err = expect_error(ctx.a.post(f"/v1/flow/{fid}/run", body), 400, code)
        if name:
            expect_names(err, name)
        expect_no_new_run(ctx, fid, before)
    return fn


def _c15_accepted(body, headers, text):
    def fn(ctx):
        got = run_and_text(ctx, ctx.echo(), body, headers=headers)
        expect(got == text, f"text {got!r}, want {text!r}")
    return fn


for _name, _body, _code, _field in C15_REFUSED:
    register(_name, _c15_refused(_body, _code, _field))
for _name, _body, _headers, _text in C15_ACCEPTED:
    register(_name, _c15_accepted(_body, _headers, _text))


@check
def c15_text_plain(ctx):
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    resp = ctx.a.post(f"/v1/flow/{fid}/run", B0, headers={"Content-Type": "text/plain"})
    if resp[0] == 415:
        note("text/plain -> 415")
        expect_error(resp, 415, "unsupported_media_type")
        expect_no_new_run(ctx, fid, before)
    else:
        note(f"text/plain -> {resp[0]}")
        text = finished_text(ctx, fid, expect_accepted(resp, fid))
        expect(text == echo_text("cats"), f"text {text!r}")


@check
def c15_no_body_no_length(ctx):
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    data, _, _ = raw(ctx.port, raw_head(fid, ctx.key_a) + b"\r\n", stop_after=1)
    _, finals = expect_finals(data, 1)
    err = raw_error(finals[0], (400,), ("missing_input",))
    expect_names(err, "topic")
    expect_no_new_run(ctx, fid, before)


@check
def c15_unknown_flow_404(ctx):
    expect_error(ctx.a.post(f"/v1/flow/{uuid.uuid4()}/run", B0), 404, "not_found")


@check
def c15_path_traversal(ctx):
    resp = ctx.a.post("/v1/flow/..%2f..%2fetc/run", B0)
    expect(resp[0] in (400, 404), f"status {resp[0]}, want 404 (or 400)")
    expect_error(resp, resp[0])
    note(f"-> {resp[0]}")


@check
def c15_long_flow_id(ctx):
    resp = ctx.a.post(f"/v1/flow/{'a' * 10000}/run", B0)
    expect(resp[0] in (404, 431), f"status {resp[0]}, want 404 or 431")
    expect_error(resp, resp[0], "not_found" if resp[0] == 404 else "headers_too_large")
    note(f"-> {resp[0]}")


@check
def c15_get_on_run_405(ctx):
    resp = ctx.a.get(f"/v1/flow/{ctx.echo()}/run")
    expect_error(resp, 405, "method_not_allowed")
    allow = resp[1].get("allow", "")
    expect("POST" in [m.strip() for m in allow.split(",")], f"Allow {allow!r}, want POST")


# --------------------------------------------------------------------------- C16, C17

C16 = [
    ("c16_count_int", '{"topic":"cats","count":3}', "Count: 3"),
    ("c16_count_string", '{"topic":"cats","count":"3"}', "Count: 3"),
    ("c16_count_word", '{"topic":"cats","count":"three"}', "Count: three"),
    ("c16_count_bool", '{"topic":"cats","count":true}', "Count: true"),
    ("c16_count_float", '{"topic":"cats","count":3.5}', "Count: 3.5"),
    ("c16_count_array", '{"topic":"cats","count":[1,"a"]}', 'Count: [1,"a"]'),
    ("c16_topic_number", '{"topic":42}', "Topic: 42"),
]
C17 = [
    ("c17a_marker_in_value", {"topic": "${input-2}"}, echo_text("${input-2}")),
    ("c17b_crossed_markers", {"topic": "${input-2}", "tone": "${input-1}"},
     echo_text("${input-2}", tone="${input-1}")),
    ("c17c_marker_soup", {"topic": "${input-9} ${ $} {{tone}} }}{{ $${input-3}"},
     echo_text("${input-9} ${ $} {{tone}} }}{{ $${input-3}")),
    ("c17d_env_markers", {"topic": "${OPENAI_API_KEY} ${env.HOME} {{secrets.OPENAI_API_KEY}}"},
     echo_text("${OPENAI_API_KEY} ${env.HOME} {{secrets.OPENAI_API_KEY}}")),
]


def _c16(body, part):
    def fn(ctx):
        text = run_and_text(ctx, ctx.echo(), body)
        count = text.rsplit("Count: ", 1)[-1]
        expect(part in text, f"text {text!r} lacks {part!r}")
        if part.startswith("Count: "):
            expect(count == part[len("Count: "):], f"count rendered {count!r}")
    return fn


def _c17(body, want):
    def fn(ctx):
        text = run_and_text(ctx, ctx.echo(), body)
        expect(text == want, f"text {text!r}, want {want!r}")
    return fn


for _name, _body, _part in C16:
    register(_name, _c16(_body, _part))
for _name, _body, _want in C17:
    register(_name, _c17(_body, _want))


# --------------------------------------------------------------------------- C12

def _c12_dup(label, body, first_text, last_text, save_rule=False):
    """(a), (c), (d): 400 invalid_json, or one rule (first or last wins) applied everywhere."""
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        resp = ctx.a.post(f"/v1/flow/{fid}/run", body)
        if resp[0] == 400:
            expect_error(resp, 400, "invalid_json")
            expect_no_new_run(ctx, fid, before)
            rule = "400"
        else:
            run_id = expect_accepted(resp, fid)
            run = poll_run(ctx.a, fid, run_id)
            expect(run.get("status") == "complete", f"run ended {run.get('status')!r}")
            if save_rule:
                # first wins -> save:false -> no outputs; last wins -> outputs kept
                rule = "last" if "outputs" in run else "first"
                if rule == "last":
                    expect(run["outputs"].get("text") == echo_text("cats"), short(run))
            else:
                text = run.get("outputs", {}).get("text")
                expect(text in (first_text, last_text), f"text {text!r}")
                rule = "first" if text == first_text else "last"
        note(f"duplicate keys -> {rule if rule == '400' else rule + ' wins'}")
        earlier = ctx.state.setdefault("c12_rule", rule)
        expect(earlier == rule, f"rule {rule!r} differs from the one seen earlier ({earlier!r})")
    return fn


register("c12a_duplicate_key", _c12_dup(
    "a", '{"topic":"cats","topic":"dogs"}', echo_text("cats"), echo_text("dogs")))


@check
def c12b_escaped_key_name(ctx):
    text = run_and_text(ctx, ctx.echo(), '{"t\\u006fpic":"cats"}')
    expect(text == echo_text("cats"), f"text {text!r}")


register("c12c_duplicate_via_escape", _c12_dup(
    "c", '{"topic":"cats","t\\u006fpic":"dogs"}', echo_text("cats"), echo_text("dogs")))
register("c12d_duplicate_run_options", _c12_dup(
    "d", '{"topic":"cats","run_options":{"save":false},"run_options":{"save":true}}',
    None, None, save_rule=True))


# --------------------------------------------------------------------------- C13

C13_VALUES = ["18446744073709551616", "-18446744073709551616", "99999999999999999999",
              "9223372036854775808", "-9223372036854775809", "123456789012345678901234567890",
              "1e400", "-1e400", "1E2", "-0", "0.1", "1.0", "5e-324"]
C13_PAIRS = [("18446744073709551616", "-18446744073709551616"), ("1e400", "-1e400"),
             ("9223372036854775808", "-9223372036854775809")]


def _c13(value):
    def fn(ctx):
        fid = ctx.echo()
        resp = ctx.a.post(f"/v1/flow/{fid}/run", f'{{"topic":"cats","count":{value}}}')
        expect(resp[0] in (202, 400), f"status {resp[0]}, want 202 or 400: {short(resp[2])}")
        if resp[0] == 400:
            err = expect_error(resp, 400, "invalid_input")
            expect_names(err, "count")
            ctx.state[f"c13:{value}"] = "400"
            note("400 invalid_input")
            return
        text = finished_text(ctx, fid, expect_accepted(resp, fid))
        prefix = echo_text("cats", count="")
        expect(text.startswith(prefix), f"text {text!r}")
        count = text[len(prefix):]
        ctx.state[f"c13:{value}"] = count
        note(f"202 Count: {count}")
        lowered = count.lower()
        expect(not any(bad in lowered for bad in ("inf", "nan", "null")), f"count {count!r}")
        expect(count.startswith("-") == value.startswith("-") or count in ("0", "0.0"),
               f"sign changed: {value} -> {count}")
        try:
            same = decimal.Decimal(count) == decimal.Decimal(value)
        except decimal.InvalidOperation:
            raise AssertionError(f"count {count!r} is not a number")
        if value == "0.1":
            expect(count == "0.1", f"0.1 rendered {count!r}")
        elif value == "5e-324":
            expect(same or float(count) == float(value), f"5e-324 rendered {count!r}")
        else:
            expect(same, f"{value} rendered {count!r} (digits lost or changed)")
    return fn


for _value in C13_VALUES:
    register(f"c13_{_value}", _c13(_value))


@check
def c13_sign_symmetry(ctx):
    for pos, neg in C13_PAIRS:
        p, n = ctx.state.get(f"c13:{pos}"), ctx.state.get(f"c13:{neg}")
        expect(p is not None and n is not None, f"{pos}/{neg} were not both checked")
        expect((p == "400") == (n == "400"), f"{pos} -> {p!r} but {neg} -> {n!r}")
        if p != "400" and pos.lstrip("-") == neg.lstrip("-"):
            expect(n == "-" + p, f"{neg} rendered {n!r}, {pos} rendered {p!r}")


# --------------------------------------------------------------------------- C10

def _c10_refused(body):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        resp = ctx.a.post(f"/v1/flow/{fid}/run", body)
        err = expect_error(resp, 400, ("invalid_json", "invalid_input"))
        if err["code"] == "invalid_input":
            expect_names(err, "topic")
        expect_no_new_run(ctx, fid, before)
        expect_status(ctx.anon.get("/healthz"), 200)
    return fn


register("c10a_deep_array_closed", _c10_refused('{"topic":' + "[" * 100000 + "]" * 100000 + "}"))
register("c10b_deep_array_unclosed", _c10_refused('{"topic":' + "[" * 100000 + "}"))


@check
def c10c_objects_1000_deep(ctx):
    value = '{"a":' * 1000 + "1" + "}" * 1000
    fid = new_echo(ctx)
    resp = ctx.a.post(f"/v1/flow/{fid}/run", '{"topic":' + value + "}")
    if resp[0] == 400:
        note("400 (depth cap)")
        err = expect_error(resp, 400, ("invalid_json", "invalid_input"))
        if err["code"] == "invalid_input":
            expect_names(err, "topic")
    else:
        note("202, runs")
        run_id = expect_accepted(resp, fid)
        text = finished_text(ctx, fid, run_id)
        expect(text == echo_text(value), f"text {short(text)}")
        expect_status(ctx.a.get(f"/v1/flow/{fid}/runs"), 200)
    expect_status(ctx.anon.get("/healthz"), 200)


@check
def c10d_objects_64_deep(ctx):
    value = '{"a":' * 64 + "1" + "}" * 64
    text = run_and_text(ctx, ctx.echo(), '{"topic":' + value + "}")
    expect(text == echo_text(value), f"text {short(text)}")


# --------------------------------------------------------------------------- C01 Expect

def _c01a(spelling):
    def fn(ctx):
        fid = ctx.echo()
        with RawConn(ctx.port) as c:
            c.send(raw_head(fid, ctx.key_a)
                   + f"Content-Length: 16\r\nExpect: {spelling}\r\n\r\n".encode())
            c.wait_for(lambda d: b"\r\n\r\n" in d, 2.0)
            first = c.first_byte_at
            c.send(B0)
            resps = c.wait_responses(1, 3.0)
        expect(resps and resps[0][0] == 100, f"no 100 Continue first: {[r[0] for r in resps]}")
        expect(first is not None and first <= 1.0, f"100 came after {first} s")
        finals = final_responses(resps)
        expect(len(finals) == 1, f"{len(finals)} final responses")
        status, headers, body = finals[0]
        expect(status == 202, f"final {status}: {short(body)}")
        run_id = json.loads(body).get("run_id")
        expect(run_id and headers.get("location", "").endswith(f"/run/{run_id}"),
               f"Location {headers.get('location')!r}")
    return fn


register("c01a_expect_100_continue", _c01a("100-continue"))
register("c01a_expect_100_Continue", _c01a("100-Continue"))


@check
def c01b_expect_with_bad_key(ctx):
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    with RawConn(ctx.port) as c:
        c.send(raw_head(fid, "wrong") + b"Content-Length: 16\r\nExpect: 100-continue\r\n\r\n")
        resps = c.wait_responses(1, 2.0)
        expect(not any(100 <= r[0] < 200 for r in resps), "a 1xx came before the 401")
        finals = final_responses(resps)
        expect(len(finals) == 1, f"{len(finals)} final responses within 2 s of the head, "
                                 "want one 401 before the body is sent")
        raw_error(finals[0], (401,), ("unauthorized",))
        www = finals[0][1].get("www-authenticate", "")
        expect(www.lower().startswith("bearer"), f"WWW-Authenticate {www!r}")
        if c.wait_close(0.5):
            note("closes after the 401")
        else:
            # The connection stays open: the 16 body bytes must be discarded, not parsed.
            c.send(B0 + b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            c.wait_close(3.0)
            statuses = [r[0] for r in final_responses(split_responses(c.data()))]
            expect(statuses == [401, 200], f"after discarding the body: {statuses}")
            note("discards the body, keeps the connection")
    expect_no_new_run(ctx, fid, before)


@check
def c01c_http10_ignores_expect(ctx):
    head = raw_head(ctx.echo(), ctx.key_a, version="HTTP/1.0")
    data, _, _ = raw(ctx.port, head + b"Content-Length: 16\r\nExpect: 100-continue\r\n\r\n" + B0,
                     stop_after=1)
    resps, finals = expect_finals(data, 1)
    expect(not any(100 <= r[0] < 200 for r in resps), "HTTP/1.0 got a 100")
    expect(finals[0][0] == 202, f"status {finals[0][0]}: {short(finals[0][2])}")


@check
def c01d_unknown_expectation(ctx):
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    data, _, _ = raw(ctx.port, raw_head(fid, ctx.key_a)
                     + b"Content-Length: 16\r\nExpect: something-else\r\n\r\n" + B0, stop_after=1)
    _, finals = expect_finals(data, 1)
    status = finals[0][0]
    note(f"-> {status}")
    if status == 417:
        raw_error(finals[0], (417,))
        expect_no_new_run(ctx, fid, before)
    else:
        expect(status == 202, f"status {status}, want 417 or 202: {short(finals[0][2])}")


# --------------------------------------------------------------------------- C02 body limit

def c02_body(n_a):
    return b'{"topic":"' + b"a" * n_a + b'"}'


def _c02_refused(pieces_fn, want_within=None):
    def fn(ctx):
        port, key = ctx.small()
        c = Client(port, key)
        fid = new_echo(ctx, client=c)
        before = run_ids(ctx, fid, c)
        data, closed, elapsed = raw(port, pieces_fn(fid, key), deadline=5.0)
        _, finals = expect_finals(data, 1)
        raw_error(finals[0], (413,), ("payload_too_large",))
        conn = finals[0][1].get("connection", "").lower()
        expect("close" in conn, f"413 without Connection: close ({conn!r})")
        expect(closed, "server did not close after 413")
        if want_within is not None:
            expect(elapsed <= want_within, f"413 + close took {elapsed:.2f} s")
        expect(run_ids(ctx, fid, c) == before, "a run was created")
        expect_status(Client(port).get("/healthz"), 200)
    return fn


def _c02a(fid, key):
    body = c02_body(MAX_BODY_SMALL - 11)
    assert len(body) == MAX_BODY_SMALL + 1
    return raw_head(fid, key) + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _c02b(fid, key):
    return raw_head(fid, key) + b"Content-Length: 10000000000\r\n\r\n"


def _c02c(fid, key):
    body = c02_body(2_500_000 - 12)
    pieces = [raw_head(fid, key) + b"Transfer-Encoding: chunked\r\n\r\n"]
    for i in range(0, len(body), 65536):
        chunk = body[i:i + 65536]
        pieces.append(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    pieces.append(b"0\r\n\r\n")
    return pieces


register("c02a_one_byte_over", _c02_refused(_c02a))
register("c02b_huge_content_length", _c02_refused(_c02b, want_within=1.0))
register("c02c_chunked_over", _c02_refused(_c02c))


@check
def c02d_exactly_at_limit(ctx):
    port, key = ctx.small()
    c = Client(port, key)
    fid = new_echo(ctx, client=c)
    body = c02_body(MAX_BODY_SMALL - 12)
    expect(len(body) == MAX_BODY_SMALL, "test bug: body size")
    run_id = expect_accepted(c.post(f"/v1/flow/{fid}/run", body), fid)
    run = poll_run(c, fid, run_id)
    expect(run.get("outputs", {}).get("text") == echo_text("a" * (MAX_BODY_SMALL - 12)),
           f"run {short(run)}")


@check
def c02_healthz_during_upload(ctx):
    port, key = ctx.small()
    with RawConn(port) as c:
        c.send(raw_head(str(uuid.uuid4()), key) + b"Content-Length: 60000\r\n\r\n"
               + b'{"topic":"' + b"a" * 20000)
        expect_status(Client(port).get("/healthz"), 200)


# --------------------------------------------------------------------------- C03 pipelining

def with_topic(head, topic, extra=b""):
    body = json.dumps({"topic": topic}, separators=(",", ":")).encode()
    return head + extra + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


@check
def c03a_two_pipelined_posts(ctx):
    fid = ctx.echo()
    head = raw_head(fid, ctx.key_a)
    one = with_topic(head, "cats")
    two = with_topic(head, "dogs", b"Connection: close\r\n")
    data, closed, _ = raw(ctx.port, one + two)
    _, finals = expect_finals(data, 2)
    expect([r[0] for r in finals] == [202, 202], f"statuses {[r[0] for r in finals]}")
    ids = [json.loads(r[2])["run_id"] for r in finals]
    expect(ids[0] != ids[1], "same run_id twice")
    expect(closed, "server did not close after Connection: close")
    for run_id, topic in zip(ids, ("cats", "dogs")):
        text = finished_text(ctx, fid, run_id)
        expect(text == echo_text(topic), f"run {run_id}: {text!r}, want topic {topic}")


@check
def c03b_200_pipelined_gets(ctx):
    fid = ctx.echo()
    runs = [expect_accepted(ctx.a.post(f"/v1/flow/{fid}/run", {"topic": t}), fid)
            for t in ("one", "two")]
    for run_id in runs:
        poll_run(ctx.a, fid, run_id)
    n = 200
    reqs = []
    for i in range(n):
        close = "Connection: close\r\n" if i == n - 1 else ""
        reqs.append(f"GET /v1/flow/{fid}/run/{runs[i % 2]} HTTP/1.1\r\nHost: t\r\n"
                    f"Authorization: Bearer {ctx.key_a}\r\n{close}\r\n")
    data, closed, _ = raw(ctx.port, "".join(reqs).encode(), deadline=10.0)
    _, finals = expect_finals(data, n)
    expect(all(r[0] == 200 for r in finals), f"statuses {sorted(set(r[0] for r in finals))}")
    got = [json.loads(r[2])["run_id"] for r in finals]
    expect(got == [runs[i % 2] for i in range(n)], "responses out of order")
    expect(closed, "server did not close after the last request")


@check
def c03d_http10_healthz_closes(ctx):
    data, closed, _ = raw(ctx.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    _, finals = expect_finals(data, 1)
    expect(finals[0][0] == 200, f"status {finals[0][0]}")
    expect(closed, "server did not close an HTTP/1.0 connection")


# --------------------------------------------------------------------------- C05 lengths

S34 = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@check
def c05a_conflicting_lengths(ctx):
    assert len(S34) == 34
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    data, closed, _ = raw(ctx.port, raw_head(fid, ctx.key_a)
                          + b"Content-Length: 34\r\nContent-Length: 0\r\n\r\n" + S34)
    expect_refused_and_closed(ctx, fid, before, data, closed, (400,))


def _c05_same_twice(framing):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        data, closed, _ = raw(ctx.port, raw_head(fid, ctx.key_a) + framing + b"\r\n" + B0,
                              stop_after=1)
        _, finals = expect_finals(data, 1)
        status = finals[0][0]
        note(f"-> {status}{' + close' if closed else ''}")
        if status == 400:
            expect_refused_and_closed(ctx, fid, before, data, closed, (400,))
        else:
            expect(status == 202, f"status {status}, want 400 or 202")
            text = finished_text(ctx, fid, json.loads(finals[0][2])["run_id"])
            expect(text == echo_text("cats"), f"text {text!r}")
    return fn


register("c05b_same_length_twice", _c05_same_twice(
    b"Content-Length: 16\r\nContent-Length: 16\r\n"))
register("c05c_length_list", _c05_same_twice(b"Content-Length: 16, 16\r\n"))


def _c05_malformed(value, statuses=(400,)):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        data, closed, _ = raw(ctx.port, raw_head(fid, ctx.key_a)
                              + b"Content-Length: " + value + b"\r\n\r\n" + B0)
        status, _ = expect_refused_and_closed(ctx, fid, before, data, closed, statuses)
        if len(statuses) > 1:
            note(f"-> {status}")
        expect_status(ctx.anon.get("/healthz"), 200)
    return fn


for _label, _value in (("plus", b"+16"), ("hex", b"0x10"), ("trailing_junk", b"16abc"),
                       ("negative", b"-1"), ("inner_space", b"1 6"), ("empty", b"")):
    register(f"c05d_length_{_label}", _c05_malformed(_value))
register("c05e_length_overflow", _c05_malformed(b"99999999999999999999999", (400, 413)))


# --------------------------------------------------------------------------- C06 chunks

def chunked_head(fid, key):
    return raw_head(fid, key) + b"Transfer-Encoding: chunked\r\n\r\n"


def _c06_refused(tail, statuses, deadline=3.0, within=None):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        data, closed, elapsed = raw(ctx.port, chunked_head(fid, ctx.key_a) + tail,
                                    deadline=deadline)
        status, _ = expect_refused_and_closed(ctx, fid, before, data, closed, statuses)
        if len(statuses) > 1:
            note(f"-> {status}")
        if within is not None:
            expect(elapsed <= within, f"answer and close took {elapsed:.2f} s")
        expect_status(ctx.anon.get("/healthz"), 200)
    return fn


register("c06a_chunk_size_overflow", _c06_refused(
    b"fffffffffffffffff0\r\n" + B0 + b"\r\n0\r\n\r\n", (400, 413)))
register("c06b_huge_chunk_no_data", _c06_refused(
    b"7fffffff\r\n" + B0, (413,), deadline=1.0, within=1.0))
register("c06c_chunk_extension_flood", _c06_refused(
    b"10;" + b"a" * 65536 + b"\r\n" + B0 + b"\r\n0\r\n\r\n", (400, 413, 431)))
register("c06d_trailer_flood", _c06_refused(
    b"10\r\n" + B0 + b"\r\n0\r\nX-T: " + b"a" * 65536 + b"\r\n\r\n", (400, 413, 431)))


@check
def c06e_chunked_control(ctx):
    fid = ctx.echo()
    data, _, _ = raw(ctx.port, chunked_head(fid, ctx.key_a) + b"10\r\n" + B0 + b"\r\n0\r\n\r\n",
                     stop_after=1)
    _, finals = expect_finals(data, 1)
    expect(finals[0][0] == 202, f"status {finals[0][0]}: {short(finals[0][2])}")
    text = finished_text(ctx, fid, json.loads(finals[0][2])["run_id"])
    expect(text == echo_text("cats"), f"text {text!r}")


# --------------------------------------------------------------------------- C08, 431

@check
def c08_half_close_after_request(ctx):
    fid = new_echo(ctx)
    before = run_ids(ctx, fid)
    data, closed, _ = raw(ctx.port, with_topic(raw_head(fid, ctx.key_a), "cats"), shut_wr=True)
    _, finals = expect_finals(data, 1)
    expect(finals[0][0] == 202, f"status {finals[0][0]}: {short(finals[0][2])}")
    expect(closed, "server did not close after the half-closed request")
    after = run_ids(ctx, fid)
    new = [r for r in after if r not in before]
    expect(len(new) == 1, f"{len(new)} new runs, want 1")
    expect(finished_text(ctx, fid, new[0]) == echo_text("cats"), "wrong text")


def _c431(extra):
    def fn(ctx):
        fid = new_echo(ctx)
        before = run_ids(ctx, fid)
        data, closed, _ = raw(ctx.port, raw_head(fid, ctx.key_a) + extra
                              + b"Content-Length: 16\r\n\r\n" + B0)
        expect_refused_and_closed(ctx, fid, before, data, closed, (431,), ("headers_too_large",))
    return fn


register("headers_431_one_big_header", _c431(b"X-Big: " + b"a" * 70000 + b"\r\n"))
register("headers_431_many_headers",
         _c431(b"".join(f"X-H{i}: {'b' * 30}\r\n".encode() for i in range(2000))))


# --------------------------------------------------------------------------- shutdown

@check
def sigterm_exits_0(ctx):
    rc = ctx.server.terminate(timeout=15.0)
    expect(rc == 0, f"exit code {rc} after SIGTERM")
    ctx.server.close()
    ctx.server = Server(ctx.bin, ctx.data_dir)   # later checks (and revive) need a server
    expect_status(ctx.a.get(f"/v1/flow/{ctx.echo()}"), 200)


# --------------------------------------------------------------------------- API Builder view

@check
def api_builder_view_and_snippets_run(ctx):
    """GET /v1/flow/{id}/api lists inputs, outputs and runnable snippets; each snippet, run
    with curl, python3 and node against this server, prints the finished run."""
    flow_id = ctx.echo()
    st, _, view = ctx.a.get(f"/v1/flow/{flow_id}/api")
    expect(st == 200, f"status {st}: {short(view)}")
    expect(view["flow_id"] == flow_id and view["version"] >= 1, short(view))
    expect(view["inputs"] == [
        {"name": "topic", "default": None, "required": True},
        {"name": "tone", "default": "neutral", "required": False},
        {"name": "count", "default": "3", "required": False}], short(view["inputs"]))
    expect(view["outputs"] == [{"name": "text", "source": "merge0001#merger-prompt"}], short(view["outputs"]))
    expect(view["webhooks"] == [], short(view["webhooks"]))
    for name, snippet in view["snippets"].items():
        expect(ctx.key_a not in snippet, f"{name} snippet holds the key")
        expect("FLOWD_API_KEY" in snippet, f"{name} snippet does not read FLOWD_API_KEY")
    env = dict(os.environ, FLOWD_API_KEY=ctx.key_a)
    with tempfile.TemporaryDirectory(prefix="flowd-snippets-") as tmp:
        for name, runner, ext in (("curl", "sh", "sh"), ("python", "python3", "py"), ("javascript", "node", "js")):
            path = os.path.join(tmp, "snippet." + ext)
            with open(path, "w") as f:
                f.write(view["snippets"][name])
            done = subprocess.run([runner, path], env=env, capture_output=True, timeout=60, text=True)
            expect(done.returncode == 0, f"{name}: exit {done.returncode}: {done.stderr[-500:]}")
            result = json.loads(done.stdout)
            expect(result["status"] == "complete", f"{name}: {short(result)}")
            # topic has no default, so the snippet sends "" for it.
            expect(result["outputs"]["text"] == "Topic:  / Tone: neutral / Count: 3", f"{name}: {short(result)}")
    st, _, _ = ctx.b.get(f"/v1/flow/{flow_id}/api")
    expect(st == 404, f"another account's view: status {st}")


# --------------------------------------------------------------------------- /metrics

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE_RE = re.compile(r"^(" + _METRIC_NAME + r")(\{((?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\n]|\\\\.)*\",?)*)\})? "
                        r"(-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\+Inf|-Inf|NaN))$")


def parse_exposition(text):
    """A strict reader of the Prometheus text format (0.0.4): every sample belongs to a family
    announced by # HELP and # TYPE, names and labels are well formed, and histograms have
    cumulative buckets ending in +Inf equal to _count. Returns {family: [(name, labels, value)]}."""
    families, types, current = {}, {}, None
    expect(text.endswith("\n"), "exposition does not end with a newline")
    for line in text.split("\n")[:-1]:
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            expect(re.fullmatch(_METRIC_NAME, name), f"bad family name: {line!r}")
            expect(name not in families, f"family announced twice: {name}")
            families[name], current = [], name
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            expect(name == current, f"TYPE for {name} does not follow its HELP")
            expect(typ in ("counter", "gauge", "histogram", "summary", "untyped"), f"bad type: {line!r}")
            types[name] = typ
            continue
        m = _SAMPLE_RE.match(line)
        expect(m, f"malformed sample line: {line!r}")
        name, labels, value = m.group(1), m.group(3) or "", float(m.group(4))
        family = current
        expect(family is not None and family in types, f"sample before its family: {line!r}")
        suffixes = ("_bucket", "_sum", "_count") if types[family] == "histogram" else ("",)
        expect(any(name == family + s for s in suffixes), f"sample {name} outside family {family}")
        if types[family] == "counter":
            expect(value >= 0, f"negative counter: {line!r}")
        families[family].append((name, labels, value))
    for family, typ in types.items():
        if typ != "histogram":
            continue
        series = {}
        for name, labels, value in families[family]:
            base = re.sub(r',?le="[^"]*"', "", labels)
            series.setdefault(base, {"buckets": [], "count": None})
            if name.endswith("_bucket"):
                le = re.search(r'le="([^"]*)"', labels).group(1)
                series[base]["buckets"].append((le, value))
            elif name.endswith("_count"):
                series[base]["count"] = value
        for base, sr in series.items():
            values = [v for _, v in sr["buckets"]]
            expect(values == sorted(values), f"{family}{{{base}}} buckets are not cumulative")
            expect(sr["buckets"] and sr["buckets"][-1][0] == "+Inf", f"{family}{{{base}}} lacks +Inf")
            expect(sr["buckets"][-1][1] == sr["count"], f"{family}{{{base}}} +Inf != _count")
    return families


@check
def metrics_exposition_is_valid_and_counts(ctx):
    """GET /metrics (no auth) is valid Prometheus text and moves with the traffic."""
    flow_id = ctx.echo()
    def scrape():
        st, hdrs, body = ctx.anon.get("/metrics")
        expect(st == 200, f"status {st}")
        expect(hdrs.get("content-type", "").startswith("text/plain"), f"content-type {hdrs.get('content-type')}")
        text = body.decode() if isinstance(body, (bytes, bytearray)) else json.dumps(body)
        return parse_exposition(text)
    def value(fams, family, name, label_part):
        return sum(v for n, l, v in fams.get(family, []) if n == name and label_part in l)
    before = scrape()
    for _ in range(3):
        st, _, body = ctx.a.post(f"/v1/flow/{flow_id}/run", {"topic": "metrics"})
        expect(st == 202, f"run: {st} {short(body)}")
    ctx.a.get(f"/v1/flow/{flow_id}/run/nope")
    time.sleep(0.5)
    after = scrape()
    for fam in ("flowd_http_requests_total", "flowd_http_request_seconds", "flowd_runs_live",
                "flowd_runs_ended_total", "flowd_store_group_batches", "flowd_store_write_seconds",
                "flowd_webhook_attempts_total", "flowd_http_transport_refusals_total"):
        expect(fam in after, f"missing family {fam}")
    started = lambda f: value(f, "flowd_http_requests_total", "flowd_http_requests_total", 'route="run_start",status="202"')
    expect(started(after) - started(before) == 3, f"run_start 202 grew by {started(after) - started(before)}")
    ended = lambda f: value(f, "flowd_runs_ended_total", "flowd_runs_ended_total", 'status="complete"')
    expect(ended(after) - ended(before) >= 3, "completed runs did not grow")
    missing = lambda f: value(f, "flowd_http_requests_total", "flowd_http_requests_total", 'route="run_get",status="404"')
    expect(missing(after) - missing(before) == 1, "run_get 404 did not grow by 1")
    text = ctx.anon.get("/metrics")[2]
    text = text.decode() if isinstance(text, (bytes, bytearray)) else str(text)
    expect(ctx.key_a not in text and ctx.key_a[:20] not in text, "a key appears in /metrics")


# --------------------------------------------------------------------------- rate limit

@check
def rate_limit_per_key(ctx):
    """--rate-limit 5/s: a burst of 5 passes, the next gets 429 rate_limited with Retry-After;
    another key has its own bucket; tokens come back with time."""
    with tempfile.TemporaryDirectory(prefix="flowd-e2e-rate-") as tmp:
        k1 = create_key(ctx.bin, tmp, "a", "one")
        k2 = create_key(ctx.bin, tmp, "a", "two")
        with Server(ctx.bin, tmp, extra_args=("--rate-limit", "5/s")) as srv:
            one, two = Client(srv.port, k1), Client(srv.port, k2)
            statuses = [one.get("/v1/keys")[0] for _ in range(5)]
            expect(statuses == [200] * 5, f"burst: {statuses}")
            st, hdrs, body = one.get("/v1/keys")
            expect(st == 429 and body["error"]["code"] == "rate_limited", f"over the rate: {st} {short(body)}")
            expect(int(hdrs.get("retry-after", "0")) >= 1, f"Retry-After: {hdrs.get('retry-after')}")
            expect(two.get("/v1/keys")[0] == 200, "the other key was limited too")
            time.sleep(0.5)
            expect(one.get("/v1/keys")[0] == 200, "no token came back after 0.5 s at 5/s")
            expect(Client(srv.port, None).get("/healthz")[0] == 200, "healthz is limited")


# --------------------------------------------------------------------------- main

def main(argv):
    if len(argv) < 2:
        print(f"usage: {argv[0]} <path-to-flowd> [name-substring ...]", file=sys.stderr)
        return 2
    bin_path, only = argv[1], argv[2:]
    selected = [(n, f) for n, f in CHECKS if not only or any(s in n for s in only)]
    try:
        if not os.access(bin_path, os.X_OK):
            raise RuntimeError(f"{bin_path} is not an executable file")
        load_flow("echo")
        ctx = Ctx(bin_path)
    except Exception as e:  # setup failure: every selected check fails, loudly
        print(f"FAIL setup: {e}")
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
            start = time.monotonic()
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
            took = time.monotonic() - start
            extra = f"  [{'; '.join(_notes)}]" if _notes else ""
            if error is None:
                passed += 1
                print(f"ok {name}{extra}  ({took:.2f}s)", flush=True)
            else:
                failed += 1
                print(f"FAIL {name}: {error}{extra}", flush=True)
    finally:
        ctx.close()
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
