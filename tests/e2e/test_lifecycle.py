"""End-to-end tests of flowd's durability and lifecycle features against the real binary.

Usage: python3 test_lifecycle.py <path-to-flowd> [name-substring ...]

What it proves, against shared/API.md, shared/cases/README.md and the project README:
- Idempotency-Key on `POST /v1/flow/{id}/run`: 1..255 characters (else 400 `invalid_request`,
  no run); the same key and body give back the same run with `Idempotency-Replayed: true`, also
  after the run ended and after a restart; a different body is 422 `idempotency_key_reused`;
  keys are per account; concurrent requests with one key create exactly one run (the others get
  409 `conflict` or the replay);
- `--retention`: an ended run (its GET, events and listing entry) is gone within about the
  retention plus the sweep interval, never before the retention; a run still pending is kept
  however old it is; the retention of ended runs goes on after a restart;
- `run_options.save: false`: the run completes, the run object, the listing, `Prefer: wait`
  and the event stream show no outputs, and the output text is in no file of the data folder
  (control: a run with `save: true` is found by the same scan);
- SIGTERM: new connections are refused at once, a request in flight (`Prefer: wait=3`, model
  answering after 2 s) still gets its 200, the process exits 0; a run still running is left
  pending and completes after the next start; `--drain-timeout` bounds the wait;
- `--durability async`: a clean SIGTERM loses no acknowledged run (200 runs); nor does a
  `kill -9` (README: a process crash loses nothing, the write is in the page cache);
- C22 (disk full, needs root to mount a 20 MB tmpfs; skipped otherwise): refusals are 503
  `unavailable` with Retry-After, /readyz is 503 while full, earlier runs still GET 200, every
  202 is a stored run (also after a restart), and POSTs are accepted again once space is back
  (without a restart, or with /readyz 503 until the restart: the check prints which).

The long kill -9 loop is test_crash.py.

Prints `ok <name>` / `FAIL <name>: <reason>` / `skip <name>: <reason>` per check, then
`N passed, M failed`; the exit status is non-zero when anything failed. Optional extra arguments
run only the checks whose names contain one of them. Everything listens and connects on
loopback only; every wait is bounded.
"""

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from flowd_harness import (Client, Server, connect_refused, create_key, files_containing,
                           list_runs, load_flow, poll_run, read_sse)
from mock_servers import MockLLM, make_certs, ok_reply


# --------------------------------------------------------------------------- tiny runner

CHECKS = []
_notes = []


class Skip(Exception):
    """The check cannot run here (for example: no permission to mount a tmpfs)."""


def check(fn):
    """Register a check under its function name."""
    CHECKS.append((fn.__name__, fn))
    return fn


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


def echo_text(topic, tone="neutral", count="3"):
    return f"Topic: {topic} / Tone: {tone} / Count: {count}"


# --------------------------------------------------------------------------- fixtures

class Instance:
    """A flowd of one check: its own data dir (kept across restarts), a key for account a, its
    own flags; `restart()` stops it with SIGTERM (exit code kept) and starts it again."""

    def __init__(self, ctx, name, args=(), data_dir=None):
        self.ctx = ctx
        self.args = tuple(args)
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"flowd-e2e-{name}-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.key = create_key(ctx.bin, data_dir, "a", name)
        self.server = None
        self.old_stderr = []
        self.start()

    def start(self):
        self.server = Server(self.ctx.bin, self.data_dir, env=self.ctx.env(),
                             extra_args=self.args)
        return self.server

    @property
    def port(self):
        return self.server.port

    def client(self, timeout=15.0):
        return Client(self.port, self.key, timeout=timeout)

    def stop(self, timeout=15.0):
        """SIGTERM and wait; returns the exit code."""
        rc = self.server.terminate(timeout=timeout)
        self.old_stderr.append(self.server.stderr_text())
        self.server.close()
        return rc

    def restart(self):
        rc = self.stop()
        expect(rc == 0, f"flowd exited {rc} after SIGTERM; stderr tail:\n"
                        f"{self.old_stderr[-1][-1500:]}")
        self.start()

    def close(self):
        if self.server is not None:
            self.server.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Ctx:
    """The mock model provider, one data dir with keys for accounts a and b and the main server
    (default flags). Checks that need other flags start an `Instance` of their own."""

    def __init__(self, bin_path):
        self.bin = bin_path
        self.llm = MockLLM()
        self.llm_key = f"sk-e2e-lifecycle-{uuid.uuid4().hex}"
        self._tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-lifecycle-")
        self.data_dir = self._tmp.name
        self.key_a = create_key(bin_path, self.data_dir, "a", "lifecycle-a")
        self.key_b = create_key(bin_path, self.data_dir, "b", "lifecycle-b")
        self.server = self._start_main()
        self.state = {}

    def env(self):
        return {"OPENAI_BASE_URL": self.llm.url("/v1"), "OPENAI_API_KEY": self.llm_key,
                "NO_PROXY": "*", "no_proxy": "*", "HTTP_PROXY": "", "HTTPS_PROXY": "",
                "http_proxy": "", "https_proxy": ""}

    def _start_main(self):
        return Server(self.bin, self.data_dir, env=self.env())

    def instance(self, name, args=()):
        return Instance(self, name, args)

    @property
    def port(self):
        return self.server.port

    @property
    def a(self):
        return Client(self.port, self.key_a, timeout=15.0)

    @property
    def b(self):
        return Client(self.port, self.key_b, timeout=15.0)

    def restart(self):
        """SIGTERM the main server (must exit 0) and start it again on the same data dir."""
        rc = self.server.terminate(timeout=15.0)
        tail = self.server.stderr_tail(15)
        self.server.close()
        self.server = self._start_main()
        expect(rc == 0, f"flowd exited {rc} after SIGTERM; stderr tail:\n{tail}")

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
        self.server.close()
        self.server = self._start_main()
        return msg

    def close(self):
        self.server.close()
        self.llm.close()
        self._tmp.cleanup()


# --------------------------------------------------------------------------- helpers

def save(client, nodes):
    fid = str(uuid.uuid4())
    status, _, body = client.put(f"/v1/flow/{fid}", nodes)
    expect(status == 201, f"PUT flow -> {status} {short(body)}")
    return fid


def run_path(fid, rid=None):
    return f"/v1/flow/{fid}/run" + (f"/{rid}" if rid else "")


def accepted(resp, what="POST run"):
    """A 202 with a run_id; returns the run_id."""
    status, _, body = resp
    expect(status == 202, f"{what} -> {status} {short(body)}")
    expect(isinstance(body, dict) and isinstance(body.get("run_id"), str) and body["run_id"],
           f"{what}: 202 without run_id: {short(body)}")
    return body["run_id"]


def start(client, fid, body, headers=None):
    return accepted(client.post(run_path(fid), body, headers=headers))


def expect_error(resp, status, code):
    got, _, body = resp
    expect(got == status, f"status {got}, want {status}; body {short(body)}")
    err = body.get("error") if isinstance(body, dict) else None
    expect(isinstance(err, dict) and isinstance(err.get("message"), str),
           f"error body is not {{\"error\": {{code, message}}}}: {short(body)}")
    expect(err.get("code") == code, f"error.code {err.get('code')!r}, want {code!r}")
    return err


def listed_ids(client, fid):
    return [r.get("run_id") for r in list_runs(client, fid)]


def expect_complete(run, output=None, value=None):
    expect(run.get("status") == "complete", f"run ended {run.get('status')!r}: {short(run)}")
    if output is not None:
        got = (run.get("outputs") or {}).get(output)
        expect(got == value, f"outputs.{output} {got!r}, want {value!r}")


def replayed(headers):
    return headers.get("idempotency-replayed", "").lower() == "true"


def post_many(port, key, fid, topics, threads=8, timeout=15.0, headers=None):
    """POST `{"topic": t}` for every topic from `threads` threads; returns {topic: (status,
    body)} (status None and the exception text when the request failed)."""
    out = {}
    lock = threading.Lock()
    todo = list(topics)

    def worker():
        client = Client(port, key, timeout=timeout)
        for _ in range(len(topics)):  # bounded: at most every topic
            with lock:
                if not todo:
                    return
                topic = todo.pop()
            try:
                status, _, body = client.post(run_path(fid), {"topic": topic}, headers=headers)
            except (OSError, http.client.HTTPException) as e:
                status, body = None, f"{type(e).__name__}: {e}"
            with lock:
                out[topic] = (status, body)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout * 2 + len(topics) * 0.2)
    expect(not any(t.is_alive() for t in pool), "posting threads did not finish in time")
    return out


def expect_runs_complete(client, fid, runs, timeout=20.0):
    """Every (run_id, topic) GETs 200 and ends `complete` with its echo text."""
    end = time.monotonic() + timeout
    left = dict(runs)
    problems = []
    for _ in range(int(timeout / 0.1) + 2):  # bounded sweeps over the runs still pending
        for rid, topic in list(left.items()):
            status, _, body = client.get(run_path(fid, rid))
            if status != 200:
                problems.append(f"{rid} ({topic}): GET -> {status} {short(body, 120)}")
                del left[rid]
            elif body.get("status") != "pending":
                text = (body.get("outputs") or {}).get("text")
                if body.get("status") != "complete" or text != echo_text(topic):
                    problems.append(f"{rid} ({topic}): {body.get('status')} text {text!r}")
                del left[rid]
        if not left or time.monotonic() > end:
            break
        time.sleep(0.1)
    problems += [f"{rid} ({topic}): still pending after {timeout:.0f} s" for rid, topic in left.items()]
    expect(not problems, f"{len(problems)}/{len(runs)} runs wrong: " + "; ".join(problems[:5]))


# --------------------------------------------------------------------------- Idempotency-Key

@check
def idempotency_key_length_limits(ctx):
    c = ctx.a
    fid = save(c, load_flow("echo"))
    for bad, what in (("", "an empty key"), ("k" * 256, "a 256-character key")):
        resp = c.post(run_path(fid), {"topic": "len"}, headers={"Idempotency-Key": bad})
        expect_error(resp, 400, "invalid_request")
    expect(listed_ids(c, fid) == [], "a refused Idempotency-Key created a run")
    for good in (rand(1), "L" * 247 + rand(8)):
        rid = start(c, fid, {"topic": "len"}, headers={"Idempotency-Key": good})
        status, hdrs, body = c.post(run_path(fid), {"topic": "len"}, headers={"Idempotency-Key": good})
        expect(status == 202 and body.get("run_id") == rid and replayed(hdrs),
               f"a {len(good)}-character key was not replayed: {status} {short(body)} {hdrs}")
    expect(len(listed_ids(c, fid)) == 2, f"runs listed: {listed_ids(c, fid)}, want 2")


@check
def idempotency_same_body_replays(ctx):
    c = ctx.a
    fid = save(c, load_flow("echo"))
    key, topic = f"same-{rand()}", f"idem-{rand()}"
    hdr = {"Idempotency-Key": key}
    status, h1, first = c.post(run_path(fid), {"topic": topic}, headers=hdr)
    rid = accepted((status, h1, first))
    expect(not replayed(h1), f"the first request says Idempotency-Replayed: {h1}")
    status, h2, again = c.post(run_path(fid), {"topic": topic}, headers=hdr)
    expect(status == 202, f"replay -> {status} {short(again)}")
    expect(again.get("run_id") == rid, f"replay run_id {again.get('run_id')!r}, want {rid!r}")
    expect(replayed(h2), f"replay lacks Idempotency-Replayed: true: {h2}")
    expect(h2.get("location") == h1.get("location"), f"Location {h2.get('location')!r} vs "
                                                     f"{h1.get('location')!r}")
    for field in ("flow_id", "flow_version", "created_at"):
        expect(again.get(field) == first.get(field), f"replay {field} {again.get(field)!r}, "
                                                     f"first {first.get(field)!r}")
    expect_complete(poll_run(c, fid, rid), "text", echo_text(topic))
    status, h3, late = c.post(run_path(fid), {"topic": topic}, headers=hdr)
    expect(status == 202 and late.get("run_id") == rid and replayed(h3),
           f"replay after the run ended -> {status} {short(late)} {h3}")
    note(f"replay of an ended run says status {late.get('status')!r}")
    expect(listed_ids(c, fid) == [rid], f"runs listed: {listed_ids(c, fid)}, want [{rid}]")


@check
def idempotency_different_body_422(ctx):
    c = ctx.a
    fid = save(c, load_flow("echo"))
    key, topic = f"diff-{rand()}", f"idem-{rand()}"
    hdr = {"Idempotency-Key": key}
    rid = start(c, fid, {"topic": topic}, headers=hdr)
    expect_error(c.post(run_path(fid), {"topic": topic + "-other"}, headers=hdr),
                 422, "idempotency_key_reused")
    expect_error(c.post(run_path(fid), {"topic": topic, "tone": "x"}, headers=hdr),
                 422, "idempotency_key_reused")
    expect(listed_ids(c, fid) == [rid], f"a refused reuse created a run: {listed_ids(c, fid)}")
    status, hdrs, body = c.post(run_path(fid), {"topic": topic}, headers=hdr)
    expect(status == 202 and body.get("run_id") == rid and replayed(hdrs),
           f"the original body after a 422 -> {status} {short(body)}")
    # The same key and body on another flow of the account is not that run either.
    fid2 = save(c, load_flow("echo"))
    status, hdrs, body = c.post(run_path(fid2), {"topic": topic}, headers=hdr)
    expect(status in (202, 422), f"same key and body, other flow -> {status} {short(body)}")
    if status == 202:
        expect(body.get("run_id") != rid and not replayed(hdrs),
               f"another flow's POST replayed run {rid}: {short(body)}")
        note("same key on another flow: a new run")
    else:
        expect_error((status, hdrs, body), 422, "idempotency_key_reused")
        note("same key on another flow: 422 idempotency_key_reused")


@check
def idempotency_scoped_to_account(ctx):
    a, b = ctx.a, ctx.b
    fa, fb = save(a, load_flow("echo")), save(b, load_flow("echo"))
    key, topic = f"acct-{rand()}", f"idem-{rand()}"
    hdr = {"Idempotency-Key": key}
    rid_a = start(a, fa, {"topic": topic}, headers=hdr)
    status, hdrs, body = b.post(run_path(fb), {"topic": topic}, headers=hdr)
    rid_b = accepted((status, hdrs, body), "account b with a's key")
    expect(rid_b != rid_a and not replayed(hdrs), f"account b got a's run: {short(body)} {hdrs}")
    expect(b.get(run_path(fa, rid_a))[0] == 404, "account b can see a's run")
    for client, fid, rid, who in ((a, fa, rid_a, "a"), (b, fb, rid_b, "b")):
        status, hdrs, body = client.post(run_path(fid), {"topic": topic}, headers=hdr)
        expect(status == 202 and body.get("run_id") == rid and replayed(hdrs),
               f"replay for account {who} -> {status} {short(body)}")
        expect_complete(poll_run(client, fid, rid), "text", echo_text(topic))
    # b's key on a's flow: that flow does not exist for b, whatever the key.
    status, _, body = b.post(run_path(fa), {"topic": topic}, headers=hdr)
    expect(status == 404, f"account b posting to a's flow with a's key -> {status} {short(body)}")


@check
def idempotency_concurrent_one_run(ctx):
    c = ctx.a
    fid = save(c, load_flow("echo"))
    rounds, threads = 6, 10
    tally = {"created": 0, "replayed": 0, "conflict": 0}
    for rnd in range(rounds):
        key, topic = f"race-{rnd}-{rand()}", f"race-{rand()}"
        barrier = threading.Barrier(threads)
        results = [None] * threads

        def worker(i):
            try:
                barrier.wait(5)
                results[i] = Client(ctx.port, ctx.key_a, timeout=15).post(
                    run_path(fid), {"topic": topic}, headers={"Idempotency-Key": key})
            except Exception as e:  # reported below as a wrong answer
                results[i] = (None, {}, f"{type(e).__name__}: {e}")

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(20)
        expect(not any(t.is_alive() for t in pool), "request threads did not finish")
        ids, created = set(), 0
        for status, hdrs, body in results:
            if status == 202:
                ids.add(body.get("run_id"))
                if replayed(hdrs):
                    tally["replayed"] += 1
                else:
                    created += 1
            elif status == 409:
                expect_error((status, hdrs, body), 409, "conflict")
                tally["conflict"] += 1
            else:
                raise AssertionError(f"round {rnd}: answer {status} {short(body)}")
        tally["created"] += created
        expect(created == 1, f"round {rnd}: {created} requests created a run (want exactly 1): "
                             f"{[(s, short(b, 80)) for s, _, b in results]}")
        expect(len(ids) == 1, f"round {rnd}: different run_ids {ids}")
        rid = ids.pop()
        status, hdrs, body = c.post(run_path(fid), {"topic": topic}, headers={"Idempotency-Key": key})
        expect(status == 202 and body.get("run_id") == rid and replayed(hdrs),
               f"round {rnd}: the replay afterwards -> {status} {short(body)}")
    runs = list_runs(c, fid)
    expect(len(runs) == rounds, f"{len(runs)} runs listed after {rounds} rounds, want {rounds}")
    note(f"{rounds} rounds x {threads} requests: {tally['created']} created, "
         f"{tally['replayed']} replayed, {tally['conflict']} x 409")


@check
def idempotency_survives_restart(ctx):
    fid = save(ctx.a, load_flow("echo"))
    key, topic = f"restart-{rand()}", f"idem-{rand()}"
    hdr = {"Idempotency-Key": key}
    rid = start(ctx.a, fid, {"topic": topic}, headers=hdr)
    ctx.restart()
    status, hdrs, body = ctx.a.post(run_path(fid), {"topic": topic}, headers=hdr)
    expect(status == 202 and body.get("run_id") == rid and replayed(hdrs),
           f"replay after a restart -> {status} {short(body)} {hdrs}")
    expect_error(ctx.a.post(run_path(fid), {"topic": "other"}, headers=hdr),
                 422, "idempotency_key_reused")
    expect(listed_ids(ctx.a, fid) == [rid], f"runs listed: {listed_ids(ctx.a, fid)}")


# --------------------------------------------------------------------------- retention

RETENTION = 2.0
SWEEP_SLACK = 2.5   # the sweep runs every retention/4 (at least 250 ms); allow a second or two


def gone_after(client, fid, rid, since, limit):
    """Poll GET every 100 ms until 404 (at most `limit` s after `since`); seconds from
    `since` to the first 404, or None."""
    for _ in range(int(limit / 0.1) + 20):
        status, _, body = client.get(run_path(fid, rid))
        if status == 404:
            return time.monotonic() - since
        expect(status == 200, f"GET {rid} -> {status} {short(body)}")
        if time.monotonic() - since > limit:
            return None
        time.sleep(0.1)
    return None


@check
def retention_deletes_ended_keeps_pending(ctx):
    with ctx.instance("retention", ("--retention", f"{RETENTION:g}s")) as inst:
        c = inst.client()
        fe, fl = save(c, load_flow("echo")), save(c, load_flow("llm"))
        slow = rand()
        model_delay = 7.0
        ctx.llm.script(ok_reply(f"slow {slow}", delay=model_delay), match=slow)
        t_slow = time.monotonic()
        rid_slow = start(c, fl, {"topic": slow})
        expect(ctx.llm.wait_requests(1, match=slow, timeout=5), "the model call never started")

        topic = f"ret-{rand()}"
        rid = start(c, fe, {"topic": topic})
        run = poll_run(c, fe, rid, timeout=10, interval=0.02)
        t_done = time.monotonic()
        expect_complete(run, "text", echo_text(topic))
        expect(rid in listed_ids(c, fe), "the ended run is not listed before the retention")
        took = gone_after(c, fe, rid, t_done, RETENTION + SWEEP_SLACK + 1)
        expect(took is not None, f"ended run still there {RETENTION + SWEEP_SLACK + 1:.1f} s after "
                                 f"it ended (--retention {RETENTION:g}s)")
        note(f"ended run gone {took:.2f} s after it ended")
        expect(took >= RETENTION - 0.25, f"ended run deleted {took:.2f} s after it ended, before "
                                         f"the {RETENTION:g} s retention")
        expect(took <= RETENTION + SWEEP_SLACK, f"ended run deleted only after {took:.2f} s")
        expect(rid not in listed_ids(c, fe), "the deleted run is still listed")
        sse = read_sse(inst.port, inst.key, run_path(fe, rid) + "/events", timeout=3)
        expect(sse["status"] == 404, f"events of the deleted run -> {sse['status']}")

        # The slow run is older than the retention and still pending: it must be kept.
        wait_until = t_slow + RETENTION + SWEEP_SLACK + 0.5
        for _ in range(100):
            status, _, body = c.get(run_path(fl, rid_slow))
            expect(status == 200, f"pending run {time.monotonic() - t_slow:.1f} s old -> {status}: "
                                  "a pending run was deleted")
            expect(body.get("status") == "pending",
                   f"slow run no longer pending at {time.monotonic() - t_slow:.1f} s: {short(body)}")
            if time.monotonic() >= wait_until:
                break
            time.sleep(0.25)
        expect(rid_slow in listed_ids(c, fl), "the pending run is not listed")
        run = poll_run(c, fl, rid_slow, timeout=model_delay + 5, interval=0.02)
        t_slow_done = time.monotonic()
        expect_complete(run, "answer", f"slow {slow}")
        took = gone_after(c, fl, rid_slow, t_slow_done, RETENTION + SWEEP_SLACK + 1)
        expect(took is not None and RETENTION - 0.25 <= took <= RETENTION + SWEEP_SLACK,
               f"the slow run, once ended, was deleted after {took} s")


@check
def retention_continues_after_restart(ctx):
    retention = 3.0
    with ctx.instance("retention-restart", ("--retention", f"{retention:g}s")) as inst:
        c = inst.client()
        fid = save(c, load_flow("echo"))
        topic = f"ret-{rand()}"
        rid = start(c, fid, {"topic": topic})
        expect_complete(poll_run(c, fid, rid, timeout=10, interval=0.02), "text", echo_text(topic))
        t_done = time.monotonic()
        inst.restart()
        c = inst.client()
        if time.monotonic() - t_done < retention - 0.5:
            status, _, body = c.get(run_path(fid, rid))
            expect(status == 200, f"GET right after the restart -> {status}: deleted too early")
        took = gone_after(c, fid, rid, t_done, retention + SWEEP_SLACK + 1)
        expect(took is not None, f"ended run still there {retention + SWEEP_SLACK + 1:.1f} s after "
                                 "it ended, across a restart")
        note(f"gone {took:.2f} s after it ended")
        expect(retention - 0.25 <= took <= retention + SWEEP_SLACK, f"deleted after {took:.2f} s")


# --------------------------------------------------------------------------- save: false

@check
def save_false_outputs_not_kept(ctx):
    with ctx.instance("nosave") as inst:
        c = inst.client()
        fid = save(c, load_flow("echo"))
        # The output joins two inputs, so only a stored output can hold `needle`.
        cases = []
        for how in ("poll", "wait"):
            topic, tone = f"nosave-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}-tone"
            body = {"topic": topic, "tone": tone, "run_options": {"save": False}}
            if how == "wait":
                status, _, run = c.post(run_path(fid), body, headers={"Prefer": "wait=5"})
                expect(status == 200, f"Prefer: wait=5 -> {status} {short(run)}")
                expect(run.get("status") == "complete" and "outputs" not in run,
                       f"the wait answer of a save:false run: {short(run)}")
                rid = run["run_id"]
            else:
                rid = start(c, fid, body)
            cases.append((rid, f"{topic} / Tone: {tone}"))
        for rid, needle in cases:
            run = poll_run(c, fid, rid, timeout=10, interval=0.02)
            expect(run.get("status") == "complete", f"save:false run ended {short(run)}")
            expect("outputs" not in run, f"save:false run has outputs: {short(run)}")
            expect(needle not in json.dumps(run), f"the output is in the run object: {short(run)}")
            sse = read_sse(inst.port, inst.key, run_path(fid, rid) + "/events", timeout=5)
            expect(sse["status"] == 200, f"events -> {sse['status']}")
            expect(sse["events"] and sse["events"][-1].get("event") == "run_finished",
                   f"events end with {sse['events'][-1:]!r}")
            raw_events = "\n".join(e.get("raw") or "" for e in sse["events"])
            expect(needle not in raw_events, "the output text is in the event stream")
        for r in list_runs(c, fid):
            expect("outputs" not in r, f"listing shows outputs of {r.get('run_id')}: {short(r)}")

        # Control: a saved run's output is found by the same scan.
        topic, tone = f"saved-{uuid.uuid4().hex}", f"{uuid.uuid4().hex}-tone"
        rid = start(c, fid, {"topic": topic, "tone": tone})
        expect_complete(poll_run(c, fid, rid, timeout=10), "text", echo_text(topic, tone))
        control = f"{topic} / Tone: {tone}"
        time.sleep(0.2)
        rc = inst.stop()
        expect(rc == 0, f"flowd exited {rc} after SIGTERM")
        expect(files_containing(inst.data_dir, control),
               "control: the scan does not find a saved run's output in the data folder")
        for rid, needle in cases:
            hits = files_containing(inst.data_dir, needle)
            expect(not hits, f"the output of save:false run {rid} was written to "
                             f"{[os.path.basename(h) for h in hits]}")
        stderr = "\n".join(inst.old_stderr)
        if any(needle in stderr for _, needle in cases):
            note("the output appears in the log (stderr)")


# --------------------------------------------------------------------------- SIGTERM

@check
def sigterm_drains_in_flight_request(ctx):
    drain = 5.0
    with ctx.instance("drain", ("--drain-timeout", f"{drain:g}s")) as inst:
        c = inst.client()
        fid = save(c, load_flow("llm"))
        t_wait, t_left = rand(), rand()
        ctx.llm.script(ok_reply(f"drained {t_wait}", delay=2.0), match=t_wait)
        ctx.llm.script(ok_reply("never delivered", delay=30.0), match=t_left)
        rid_left = start(c, fid, {"topic": t_left})
        expect(ctx.llm.wait_requests(1, match=t_left, timeout=5), "the long model call never started")

        got = {}

        def waiter():
            t0 = time.monotonic()
            try:
                got["resp"] = Client(inst.port, inst.key, timeout=15).post(
                    run_path(fid), {"topic": t_wait}, headers={"Prefer": "wait=3"})
            except Exception as e:
                got["error"] = f"{type(e).__name__}: {e}"
            got["took"] = time.monotonic() - t0

        th = threading.Thread(target=waiter, daemon=True)
        th.start()
        expect(ctx.llm.wait_requests(1, match=t_wait, timeout=5), "the 2 s model call never started")
        time.sleep(0.2)
        port = inst.port
        t_term = time.monotonic()
        inst.server.sigterm()
        refused = connect_refused(port, attempts=40, interval=0.025)
        alive_then = inst.server.alive() and "resp" not in got
        th.join(10)
        rc = inst.server.wait_exit(drain + 5)
        exited = time.monotonic() - t_term
        inst.old_stderr.append(inst.server.stderr_text())
        note(f"refused {refused and f'{refused:.3f}'} s after SIGTERM; exit {rc} after {exited:.2f} s")
        expect(refused is not None, "new connections were still accepted after SIGTERM")
        expect(alive_then, "the refusal was seen only after the request in flight had finished")
        expect("error" not in got, f"the request in flight failed: {got.get('error')}")
        status, _, run = got.get("resp", (None, None, None))
        expect(status == 200, f"the in-flight Prefer: wait=3 got {status} {short(run)}")
        expect_complete(run, "answer", f"drained {t_wait}")
        expect(rc == 0, f"exit code {rc} after SIGTERM (still running after {drain + 5:g} s: "
                        f"{rc is None})")
        expect(exited < drain + 2, f"exit took {exited:.2f} s with --drain-timeout {drain:g}s")

        before = len(ctx.llm.requests(match=t_left))
        inst.server.close()
        inst.start()
        c = inst.client()
        expect_complete(c.get(run_path(fid, run["run_id"]))[2], "answer", f"drained {t_wait}")
        status, _, body = c.get(run_path(fid, rid_left))
        expect(status == 200, f"the unfinished run after the restart -> {status} {short(body)}")
        done = poll_run(c, fid, rid_left, timeout=10, interval=0.05)
        expect_complete(done, "answer", f"About {t_left}")
        expect(len(ctx.llm.requests(match=t_left)) > before, "the unfinished run was not run again")


@check
def drain_timeout_bounds_shutdown(ctx):
    drain = 1.0
    with ctx.instance("drain-timeout", ("--drain-timeout", f"{drain:g}s")) as inst:
        c = inst.client()
        fid = save(c, load_flow("llm"))
        tag = rand()
        ctx.llm.script(ok_reply("too slow", delay=8.0), match=tag)
        got = {}

        def waiter():
            try:
                got["resp"] = Client(inst.port, inst.key, timeout=15).post(
                    run_path(fid), {"topic": tag}, headers={"Prefer": "wait=10"})
            except Exception as e:
                got["error"] = f"{type(e).__name__}: {e}"

        th = threading.Thread(target=waiter, daemon=True)
        th.start()
        expect(ctx.llm.wait_requests(1, match=tag, timeout=5), "the model call never started")
        t_term = time.monotonic()
        inst.server.sigterm()
        rc = inst.server.wait_exit(drain + 5)
        exited = time.monotonic() - t_term
        th.join(5)
        inst.old_stderr.append(inst.server.stderr_text())
        client_saw = (f"{got['resp'][0]}" if "resp" in got else got.get("error", "nothing"))
        note(f"exit {rc} after {exited:.2f} s; the held request got {short(client_saw, 80)}")
        expect(rc == 0, f"exit code {rc} (None: still running {drain + 5:g} s after SIGTERM)")
        expect(drain - 0.2 <= exited <= drain + 2,
               f"exit after {exited:.2f} s with --drain-timeout {drain:g}s and a request held")
        inst.server.close()
        inst.start()
        c = inst.client()
        runs = list_runs(c, fid)
        expect(len(runs) == 1, f"{len(runs)} runs listed after the restart, want 1")
        expect_complete(poll_run(c, fid, runs[0]["run_id"], timeout=10), "answer", f"About {tag}")


# --------------------------------------------------------------------------- --durability async

ASYNC_RUNS = 200


def _async_burst(ctx, inst, how):
    c = inst.client()
    fid = save(c, load_flow("echo"))
    topics = [f"async-{how}-{i:03d}-{rand()}" for i in range(ASYNC_RUNS)]
    results = post_many(inst.port, inst.key, fid, topics)
    bad = {t: r for t, r in results.items() if r[0] != 202}
    expect(not bad, f"{len(bad)} POSTs not 202: {short(list(bad.values())[:3])}")
    runs = [(body["run_id"], topic) for topic, (_, body) in results.items()]
    expect(len({r for r, _ in runs}) == ASYNC_RUNS, "duplicate run_ids")
    return c, fid, runs


@check
def async_sigterm_loses_nothing(ctx):
    with ctx.instance("async-term", ("--durability", "async")) as inst:
        c, fid, runs = _async_burst(ctx, inst, "term")
        t0 = time.monotonic()
        inst.restart()   # SIGTERM right after the last 202; exit 0 required
        note(f"stop and start took {time.monotonic() - t0:.2f} s")
        c = inst.client()
        expect_runs_complete(c, fid, runs, timeout=20)
        listed = {r.get("run_id") for r in list_runs(c, fid)}
        expect(listed == {r for r, _ in runs}, f"listing has {len(listed)} runs, want {len(runs)}")


@check
def async_kill9_loses_nothing(ctx):
    """README: under --durability async 'a process crash loses nothing (the write is in the OS
    page cache)'."""
    with ctx.instance("async-kill", ("--durability", "async")) as inst:
        c, fid, runs = _async_burst(ctx, inst, "kill")
        rc = inst.server.kill9()
        expect(rc == -9, f"flowd exited {rc} before the SIGKILL")
        inst.server.close()
        inst.start()
        expect_runs_complete(inst.client(), fid, runs, timeout=20)


@check
def admin_listen_serves_operations_routes_alone(ctx):
    """--admin-listen: /healthz, /readyz and /metrics answer there and 404 on the API port;
    the admin port answers nothing else, and the API keeps working."""
    with ctx.instance("admin", ("--admin-listen", "127.0.0.1:0")) as inst:
        m = None
        for _ in range(100):  # the line follows the API's "listening on" line
            m = re.search(r"admin listening on 127\.0\.0\.1:(\d+)", inst.server.stderr_text())
            if m:
                break
            time.sleep(0.02)
        expect(m, f"no 'admin listening on' line: {short(inst.server.stderr_tail())}")
        admin = Client(int(m.group(1)), timeout=5)
        api = inst.client()
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _, _ = admin.get(path)
            expect(status == 200, f"admin GET {path} -> {status}")
            status, _, body = Client(inst.port, timeout=5).get(path)
            expect(status == 404, f"API port GET {path} -> {status}, want 404")
            expect(isinstance(body, dict) and body.get("error", {}).get("code") == "not_found",
                   f"API port GET {path} body {short(body)}")
        status, _, _ = Client(int(m.group(1)), inst.key, timeout=5).get("/v1/keys")
        expect(status == 404, f"admin GET /v1/keys -> {status}, want 404")
        fid = save(api, load_flow("echo"))
        rid = start(api, fid, {"topic": "admin"})
        done = poll_run(api, fid, rid, timeout=10, interval=0.05)
        expect_complete(done, "text", echo_text("admin"))
        _, _, metrics = admin.get("/metrics")
        expect('route="run_start",status="202"' in str(metrics), "the run is not counted on the admin /metrics")


@check
def concurrent_saves_of_a_new_flow_id_by_two_accounts(ctx):
    """With --threads 4, accounts a and b PUT the same new flow id at the same moment: one
    of them owns it, the other gets 404 and can never read it."""
    with ctx.instance("race", ("--threads", "4")) as inst:
        inst.stop()
        key_b = create_key(ctx.bin, inst.data_dir, "b", "race")
        inst.start()
        a, b = inst.client(), Client(inst.port, key_b, timeout=15.0)
        flow = load_flow("echo")
        problems = []
        for trial in range(30):
            fid = str(uuid.uuid4())
            barrier = threading.Barrier(2)
            got = {}

            def put(name, client):
                barrier.wait()
                got[name] = client.put(f"/v1/flow/{fid}", flow)[0]

            threads = [threading.Thread(target=put, args=(n, c)) for n, c in (("a", a), ("b", b))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            owners = [n for n in ("a", "b") if got.get(n) in (200, 201)]
            readable = [n for n, c in (("a", a), ("b", b)) if c.get(f"/v1/flow/{fid}")[0] == 200]
            v1 = [n for n, c in (("a", a), ("b", b)) if c.get(f"/v1/flow/{fid}?version=1")[0] == 200]
            if len(owners) != 1 or readable != owners or v1 != owners:
                problems.append(f"trial {trial}: PUT {got}, readable by {readable}, version 1 by {v1}")
        expect(not problems, "; ".join(problems[:5]))


def _https(port, ca, method, path, body=None, headers=None, host="localhost"):
    ctx = ssl.create_default_context(cafile=ca)
    conn = http.client.HTTPSConnection(host, port, timeout=10, context=ctx)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@check
def tls_cert_serves_https(ctx):
    """--tls-cert/--tls-key: the API answers over verified TLS (a certificate from a CA the
    test made with the openssl CLI); plain HTTP and an untrusted client get no answer."""
    certs = make_certs()
    try:
        cert, key = certs.localhost
        with ctx.instance("tls", ("--tls-cert", cert, "--tls-key", key)) as inst:
            auth = {"Authorization": f"Bearer {inst.key}"}
            status, body = _https(inst.port, certs.ca, "GET", "/healthz")
            expect(status == 200, f"GET /healthz over TLS -> {status} {short(body)}")
            status, saved = _https(inst.port, certs.ca, "PUT", f"/v1/flow/{uuid.uuid4()}",
                                   load_flow("echo"), auth)
            expect(status == 201, f"PUT flow over TLS -> {status} {short(saved)}")
            status, run = _https(inst.port, certs.ca, "POST", f"/v1/flow/{saved['flow_id']}/run",
                                 {"topic": "tls"}, {**auth, "Prefer": "wait=5"})
            expect(status == 200, f"POST run over TLS -> {status} {short(run)}")
            expect_complete(run, "text", echo_text("tls"))
            status, body = _https(inst.port, certs.ca, "GET", "/v1/keys", headers={"Authorization": "Bearer x"})
            expect(status == 401, f"a bad key over TLS -> {status}")
            try:
                _https(inst.port, certs.self_signed[0], "GET", "/healthz")
                expect(False, "a client trusting another certificate completed the handshake")
            except ssl.SSLError:
                pass
            try:
                answer = Client(inst.port, timeout=3).get("/healthz")
                expect(False, f"plain HTTP on the TLS port was answered: {short(answer)}")
            except (OSError, http.client.HTTPException):
                pass
            status, _ = _https(inst.port, certs.ca, "GET", "/healthz")
            expect(status == 200, "the TLS listener stopped answering after a plain-HTTP client")
    finally:
        certs.close()


@check
def tls_flags_refused_when_incomplete_or_unreadable(ctx):
    for args in (("--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"),
                 ("--tls-cert", "/etc/hostname")):
        res = subprocess.run([ctx.bin, "serve", "--listen", "127.0.0.1:0", "--data",
                              tempfile.mkdtemp(prefix="flowd-e2e-tlsbad-"), *args],
                             capture_output=True, timeout=20)
        expect(res.returncode == 2, f"{args} -> exit {res.returncode}: {res.stderr[-300:]!r}")
        expect(b"--tls-" in res.stderr, f"{args}: the error does not name the flag: {res.stderr[-300:]!r}")


# --------------------------------------------------------------------------- C22 disk full

def _mount_tmpfs(path, size):
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                         capture_output=True, timeout=20)
    if res.returncode != 0:
        raise Skip(f"cannot mount a tmpfs: {res.stderr.decode('utf-8', 'replace').strip()}")


def _umount(path):
    for _ in range(3):
        res = subprocess.run(["umount", path], capture_output=True, timeout=20)
        if res.returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=20)


def _readyz(port):
    try:
        return Client(port, timeout=5).get("/readyz")[0]
    except OSError as e:
        return f"{type(e).__name__}"


@check
def c22_disk_full(ctx):
    mnt = tempfile.mkdtemp(prefix="flowd-e2e-c22-")
    mounted = False
    inst = None
    try:
        _mount_tmpfs(mnt, "20m")
        mounted = True
        data = os.path.join(mnt, "data")
        os.mkdir(data)
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            f.write(os.urandom(5 << 20))
        inst = Instance(ctx, "c22", data_dir=data)
        c = inst.client()
        fid = save(c, load_flow("echo"))
        early = [(start(c, fid, {"topic": f"early-{i}-{rand()}"}), None) for i in range(3)]
        early = [(rid, poll_run(c, fid, rid, timeout=10)) for rid, _ in early]

        acked, refusals, others = [], [], []
        for i in range(200):  # bounded: the 15 MB left fill up long before
            topic = f"big{i:03d}-{rand()}-" + "x" * 200_000
            try:
                status, hdrs, body = c.post(run_path(fid), {"topic": topic})
            except (OSError, http.client.HTTPException) as e:
                others.append(f"{type(e).__name__}: {e}")
                break
            if status == 202:
                acked.append((body["run_id"], topic))
            elif status == 503:
                err = body.get("error", {}) if isinstance(body, dict) else {}
                refusals.append((err.get("code"), hdrs.get("retry-after")))
                if len(refusals) >= 3:
                    break
            else:
                others.append(f"{status} {short(body, 150)}")
                break
        note(f"{len(acked)} big runs accepted, then {len(refusals)} refusals")
        expect(inst.server.alive(), f"flowd died while the disk was full (exit "
                                    f"{inst.server.returncode}); stderr tail:\n"
                                    f"{inst.server.stderr_tail(10)}")
        expect(not others, f"while filling the disk: {others[:3]}")
        expect(refusals, "the disk never filled up: no refusal after 200 POSTs of 200 KB")
        expect(all(code == "unavailable" and ra and ra.strip().isdigit() for code, ra in refusals),
               f"refusals (code, Retry-After): {refusals}")
        expect(_readyz(inst.port) == 503, f"/readyz while full -> {_readyz(inst.port)}")
        for rid, _ in early:
            status, _, body = c.get(run_path(fid, rid))
            expect(status == 200, f"GET of an earlier run while full -> {status} {short(body)}")
        for rid, _ in acked:
            status, _, body = c.get(run_path(fid, rid))
            expect(status == 200, f"GET of an acknowledged run while full -> {status}")

        os.unlink(filler)
        time.sleep(10)
        expect(inst.server.alive(), "flowd died after the space came back")
        topic = f"after-{rand()}"
        status, _, body = c.post(run_path(fid), {"topic": topic})
        ready = _readyz(inst.port)
        if status == 202:
            expect(ready == 200, f"POST accepted again but /readyz -> {ready}")
            note("recovers without a restart")
            after = [(body["run_id"], topic)]
        else:
            expect(status == 503 and ready == 503,
                   f"10 s after freeing space: POST -> {status} {short(body)}, /readyz -> {ready}; "
                   "want 202 and 200, or (until a restart) 503 and 503")
            note("needs a restart once space is back (/readyz stays 503 until then)")
            inst.restart()
            c = inst.client()
            expect(_readyz(inst.port) == 200, "/readyz after the restart is not 200")
            after = [(start(c, fid, {"topic": topic}), topic)]
        inst.restart()
        c = inst.client()
        for rid, run in early:
            status, _, body = c.get(run_path(fid, rid))
            expect(status == 200 and body.get("status") == run.get("status"),
                   f"earlier run after the restart -> {status} {short(body)}")
        expect_runs_complete(c, fid, acked + after, timeout=20)
    finally:
        if inst is not None:
            inst.close()
        if mounted:
            _umount(mnt)
        try:
            os.rmdir(mnt)
        except OSError:
            pass


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
        load_flow("echo")
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
            error = skipped = None
            try:
                fn(ctx)
            except Skip as e:
                skipped = str(e)
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
            if error is None and skipped is not None:
                print(f"skip {name}: {skipped}", flush=True)
            elif error is None:
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
