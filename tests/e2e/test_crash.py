"""Crash test: every run flowd acknowledged with 202 survives `kill -9` (cases C20 (a)).

Usage: python3 test_crash.py <path-to-flowd> [--cycles N] [--webhooks] [--seed S]
       (default: 10 cycles, no webhooks, a random seed that is printed)

Setup starts flowd once on a persistent data dir (default `--durability sync`), saves
shared/cases/flows/echo.json (and, with `--webhooks`, webhook.json pointed at a local receiver)
and stops it with SIGTERM. Each cycle then starts flowd on that data dir (its `listening on`
line must appear, with no error logged before it), lets 8 client threads POST runs without
pause (each with a unique topic; about half carry an `Idempotency-Key`) and SIGKILLs the server
after a random delay (0 to 1.2 s after it listened: sometimes before the first request, sometimes
while the previous cycles' runs are being resumed, mostly with requests in flight). Every answer
before the kill must be a 202.

After the last cycle flowd is started once more and:
- every acknowledged run GETs 200 and ends `complete` with its own output (echo:
  `Topic: <topic> / Tone: neutral / Count: 3`; webhook flow: `<topic>`), per cycle;
- every keyed request (acknowledged or cut off by the kill) is sent again with the same key and
  body: an acknowledged one must be replayed with its run_id, a cut-off one gives one run;
- the runs listings then hold no topic twice, every acknowledged run, and only complete runs;
- with `--webhooks` (flowd run with `--webhook-allow-private --webhook-retry-schedule 1s,1s,2s`;
  the receiver answers 500 to the first attempt of about one delivery in ten): within about
  10 s every completed webhook-flow run has had its `{"out": <topic>}` delivery answered 2xx at
  least once; the attempts of one run all carry the same `webhook-id`, `AI_FLOW_SIGNATURE:
  sig-123` and a valid `webhook-signature` made with the account's secret.

Prints `ok <name>` / `FAIL <name>: <reason>` per check, a summary line (acknowledged, lost,
deliveries) and `N passed, M failed`; exits non-zero on any failure. Bounded in time: about
20 s plus 30 s per cycle at most (a default run takes well under a minute).
"""

import concurrent.futures
import http.client
import json
import random
import re
import sys
import tempfile
import threading
import time
import uuid

from flowd_harness import (Client, Server, create_key, list_runs, load_flow,
                           webhook_signature_matches)
from mock_servers import MockReceiver, Reply

THREADS = 8
MAX_POSTS_PER_THREAD = 2000   # per cycle; the kill comes long before
KILL_DELAY_MAX = 1.2          # seconds after the server listened
REQUEST_TIMEOUT = 5.0
VERIFY_THREADS = 8
HOOK_SCHEDULE = "1s,1s,2s"
HOOK_FAIL_FIRST = 0.1         # share of deliveries whose first attempt gets a 500
DELIVERY_WAIT = 12.0          # seconds allowed for the last deliveries and their retries
ECHO_RE = re.compile(r"^Topic: (.*) / Tone: neutral / Count: 3$", re.DOTALL)


def echo_text(topic):
    return f"Topic: {topic} / Tone: neutral / Count: 3"


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def require(self, seconds, what):
        if self.left() < seconds:
            raise AssertionError(f"time budget exhausted before {what}")


class Flows:
    """The flows under test: name -> flow_id, and each one's expected output."""

    def __init__(self, webhooks):
        self.ids = {"echo": str(uuid.uuid4())}
        if webhooks:
            self.ids["hook"] = str(uuid.uuid4())

    def names(self):
        return list(self.ids)

    @staticmethod
    def expected(name, topic):
        return echo_text(topic) if name == "echo" else topic

    @staticmethod
    def topic_of(name, text):
        if not isinstance(text, str):
            return None
        if name == "echo":
            m = ECHO_RE.match(text)
            return m.group(1) if m else None
        return text


class Receiver:
    """The webhook receiver: answers 500 to the first attempt of about HOOK_FAIL_FIRST of the
    deliveries (picked by webhook-id), 200 otherwise; `answered` records what it answered."""

    def __init__(self, rng):
        self.rng = rng
        self.lock = threading.Lock()
        self.seen_ids = set()
        self.answered = {}   # id(Recorded) -> status
        self.mock = MockReceiver(backlog=1024)  # a burst of resumed deliveries connects at once
        self.mock.route("/hook", self._reply)

    def _reply(self, rec):
        wid = rec.headers.get("webhook-id", "")
        with self.lock:
            first = wid not in self.seen_ids
            self.seen_ids.add(wid)
            fail = first and self.rng.random() < HOOK_FAIL_FIRST
            status = 500 if fail else 200
            self.answered[id(rec)] = status
        return Reply(status, json_body={"received": not fail})

    def url(self):
        return self.mock.url("/hook")

    def records(self):
        with self.lock:
            return [(r, self.answered.get(id(r))) for r in self.mock.requests()]

    def close(self):
        self.mock.close()


def server_args(webhooks):
    if webhooks:
        return ("--webhook-allow-private", "--webhook-retry-schedule", HOOK_SCHEDULE)
    return ()


def startup_errors(srv):
    """Log lines at level error (or worse) printed before `listening on`."""
    bad = []
    for line in srv.startup_lines():
        try:
            level = json.loads(line).get("level")
        except ValueError:
            bad.append(line)  # not a JSON log line (an assertion, a sanitizer report)
            continue
        if level not in ("debug", "info", "warn"):
            bad.append(line)
    return bad


def setup(bin_path, data_dir, key, flows, receiver, deadline):
    """Start once, save the flows, read the account's webhook secret, SIGTERM."""
    with Server(bin_path, data_dir, extra_args=server_args(receiver is not None),
                start_timeout=min(20.0, deadline.left())) as srv:
        client = Client(srv.port, key, timeout=REQUEST_TIMEOUT)
        secret = None
        for name, fid in flows.ids.items():
            flow = load_flow("echo" if name == "echo" else "webhook")
            if name == "hook":
                flow = json.loads(json.dumps(flow).replace("<RECV_URL>", receiver.url()))
            status, _, body = client.put(f"/v1/flow/{fid}", flow)
            if status != 201:
                raise AssertionError(f"PUT {name} flow -> {status} {body!r:.200}")
        if receiver is not None:
            status, _, body = client.get("/v1/webhook-secret")
            if status != 200 or not isinstance(body, dict):
                raise AssertionError(f"GET /v1/webhook-secret -> {status} {body!r:.200}")
            secret = body.get("secret")
            if not isinstance(secret, str):
                raise AssertionError(f"GET /v1/webhook-secret has no secret: {body!r:.200}")
        rc = srv.terminate(timeout=15.0)
        if rc != 0:
            raise AssertionError(f"flowd exited {rc} after SIGTERM in setup")
        return secret


class Cycle:
    """What one cycle sent: `acked` [(flow, run_id, topic)], `keyed` {topic: (flow, key)} for
    every keyed request that was sent (answered or not), and the kill delay."""

    def __init__(self, number):
        self.number = number
        self.acked = []
        self.keyed = {}
        self.delay = None
        self.sent = 0


def burst(bin_path, data_dir, key, flows, cycle, rng, webhooks, deadline):
    """One cycle: start, post from THREADS threads, SIGKILL after a random delay."""
    deadline.require(5, f"cycle {cycle.number}")
    bad_statuses = []
    lock = threading.Lock()
    killed = threading.Event()
    names = flows.names()
    seeds = [rng.random() for _ in range(THREADS)]
    cycle.delay = rng.uniform(0.0, KILL_DELAY_MAX)

    srv = Server(bin_path, data_dir, extra_args=server_args(webhooks),
                 start_timeout=min(20.0, deadline.left()))
    try:
        errors = startup_errors(srv)
        if errors:
            raise AssertionError(f"errors logged while starting: {errors[:3]}")
        client = Client(srv.port, key, timeout=REQUEST_TIMEOUT)

        def worker(n):
            wrng = random.Random(seeds[n])
            for i in range(MAX_POSTS_PER_THREAD):
                if killed.is_set() or deadline.left() <= 0:
                    return
                name = wrng.choice(names)
                topic = f"c{cycle.number}-t{n}-{i:04d}-{uuid.uuid4().hex[:8]}"
                headers = None
                if wrng.random() < 0.5:
                    idem = f"crash-{topic}"
                    headers = {"Idempotency-Key": idem}
                    with lock:
                        cycle.keyed[topic] = (name, idem)
                with lock:
                    cycle.sent += 1
                try:
                    status, _, body = client.post(f"/v1/flow/{flows.ids[name]}/run",
                                                  {"topic": topic}, headers=headers)
                except (OSError, http.client.HTTPException):
                    continue  # the server is gone (or going): not acknowledged
                with lock:
                    if status == 202 and isinstance(body, dict) and body.get("run_id"):
                        cycle.acked.append((name, body["run_id"], topic))
                    elif not killed.is_set():
                        bad_statuses.append(status)

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(THREADS)]
        for t in threads:
            t.start()
        time.sleep(cycle.delay)
        killed.set()
        rc = srv.kill9()
        for t in threads:
            t.join(max(0.1, min(REQUEST_TIMEOUT + 5, deadline.left())))
        if any(t.is_alive() for t in threads):
            raise AssertionError("posting threads did not finish in time")
        if rc != -9:
            raise AssertionError(f"flowd exited {rc} before the SIGKILL; stderr tail:\n"
                                 f"{srv.stderr_tail(10)}")
        if bad_statuses:
            raise AssertionError(f"non-202 answers before the kill: {sorted(set(bad_statuses))}")
    finally:
        srv.close()


def verify_runs(client_factory, flows, runs, deadline):
    """Every (flow, run_id, topic) GETs 200 and completes with its output; returns problems."""
    def one(item):
        name, run_id, topic = item
        client = client_factory()
        path = f"/v1/flow/{flows.ids[name]}/run/{run_id}"
        for _ in range(400):  # about 20 s of polling at most
            try:
                status, _, body = client.get(path)
            except (OSError, http.client.HTTPException) as e:
                return f"{run_id} ({topic}): GET failed: {e}"
            if status != 200:
                return f"{run_id} ({topic}): GET -> {status}"
            if body.get("status") != "pending":
                text = (body.get("outputs") or {}).get("text")
                if body.get("status") != "complete" or text != Flows.expected(name, topic):
                    return f"{run_id} ({topic}): {body.get('status')} text {text!r:.80}"
                return None
            if deadline.left() <= 0:
                break
            time.sleep(0.05)
        return f"{run_id} ({topic}): still pending"

    with concurrent.futures.ThreadPoolExecutor(VERIFY_THREADS) as pool:
        return [p for p in pool.map(one, runs) if p]


def replay_keyed(client_factory, flows, cycles, deadline):
    """Send every keyed request again; returns (problems, replayed acked, cut-off outcomes)."""
    acked = {topic: run_id for c in cycles for _, run_id, topic in c.acked}
    items = [(topic, name, idem) for c in cycles for topic, (name, idem) in c.keyed.items()]
    counts = {"replayed": 0, "cut_off_stored": 0, "cut_off_new": 0}
    lock = threading.Lock()

    def one(item):
        topic, name, idem = item
        if deadline.left() <= 0:
            return f"{topic}: not retried, time budget exhausted"
        try:
            status, hdrs, body = client_factory().post(
                f"/v1/flow/{flows.ids[name]}/run", {"topic": topic},
                headers={"Idempotency-Key": idem})
        except (OSError, http.client.HTTPException) as e:
            return f"{topic}: retry failed: {e}"
        if status != 202 or not isinstance(body, dict):
            return f"{topic}: retry -> {status} {body!r:.100}"
        was_replayed = hdrs.get("idempotency-replayed", "").lower() == "true"
        if topic in acked:
            if body.get("run_id") != acked[topic] or not was_replayed:
                return (f"{topic}: acknowledged as {acked[topic]}, the retry gave "
                        f"{body.get('run_id')} (replayed: {was_replayed})")
            key = "replayed"
        else:
            key = "cut_off_stored" if was_replayed else "cut_off_new"
        with lock:
            counts[key] += 1
        return None

    with concurrent.futures.ThreadPoolExecutor(VERIFY_THREADS) as pool:
        problems = [p for p in pool.map(one, items) if p]
    return problems, counts, len(items)


def check_listings(client, flows, cycles, deadline):
    """Listings: no topic twice, every acknowledged run present, every run complete."""
    problems = []
    acked = {run_id for c in cycles for _, run_id, _ in c.acked}
    totals = {}
    listed_all = {}
    for name, fid in flows.ids.items():
        runs = list_runs(client, fid)
        totals[name] = len(runs)
        pending = [r["run_id"] for r in runs if r.get("status") == "pending"]
        for _ in range(200):  # runs created by the retries may still be running
            if not pending or deadline.left() <= 0:
                break
            time.sleep(0.05)
            still = []
            for rid in pending:
                status, _, body = client.get(f"/v1/flow/{fid}/run/{rid}")
                if status == 200 and body.get("status") == "pending":
                    still.append(rid)
            pending = still
        if pending:
            runs = list_runs(client, fid)
        by_topic = {}
        for r in runs:
            listed_all[r.get("run_id")] = (name, r)
            if r.get("status") != "complete":
                problems.append(f"{name} run {r.get('run_id')} is {r.get('status')}")
                continue
            outputs = r.get("outputs")
            if outputs is None:  # a listing without outputs: read the run itself
                _, _, full = client.get(f"/v1/flow/{fid}/run/{r['run_id']}")
                outputs = full.get("outputs") if isinstance(full, dict) else None
            topic = Flows.topic_of(name, (outputs or {}).get("text"))
            if topic is None:
                problems.append(f"{name} run {r.get('run_id')} has output {outputs!r:.100}")
                continue
            by_topic.setdefault(topic, []).append(r["run_id"])
        dupes = {t: ids for t, ids in by_topic.items() if len(ids) > 1}
        for t, ids in list(dupes.items())[:5]:
            problems.append(f"{name}: topic {t} has {len(ids)} runs {ids}")
        if dupes:
            problems.append(f"{name}: {len(dupes)} topics with more than one run")
    missing = acked - set(listed_all)
    if missing:
        problems.append(f"{len(missing)} acknowledged runs not listed, e.g. {sorted(missing)[:3]}")
    return problems, totals, listed_all


def delivery_records(client, fid, run_id):
    """The run's `/deliveries` listing, shortened for a failure message."""
    try:
        status, _, body = client.get(f"/v1/flow/{fid}/run/{run_id}/deliveries")
    except (OSError, http.client.HTTPException) as e:
        return f"GET deliveries failed: {e}"
    return f"{status} {json.dumps(body)[:400]}"


def check_deliveries(receiver, secret, listed_all, deadline, client=None, flows=None):
    """Every complete hook-flow run's delivery answered 2xx at least once; one webhook-id per
    run; headers and signatures right. Returns (problems, stats)."""
    want = {}
    for rid, (name, r) in listed_all.items():
        if name == "hook" and r.get("status") == "complete":
            text = (r.get("outputs") or {}).get("text")
            if text is not None:
                want[text] = rid
    end = time.monotonic() + min(DELIVERY_WAIT, deadline.left())
    for _ in range(int(DELIVERY_WAIT / 0.2) + 2):
        delivered = set()
        for rec, status in receiver.records():
            body = rec.json()
            if status == 200 and isinstance(body, dict):
                delivered.add(body.get("out"))
        missing = set(want) - delivered
        if not missing or time.monotonic() > end:
            break
        time.sleep(0.2)
    problems = []
    if missing:
        examples = [want[t] for t in sorted(missing)[:3]]
        detail = ""
        if client is not None:
            detail = "; their /deliveries: " + " | ".join(
                f"{rid}: {delivery_records(client, flows.ids['hook'], rid)}" for rid in examples)
        problems.append(f"{len(missing)}/{len(want)} completed runs never delivered, e.g. "
                        f"{examples}{detail}")
    ids_by_topic, attempts_by_topic = {}, {}
    bad_headers, bad_sigs, unknown = [], [], []
    records = receiver.records()
    for rec, status in records:
        body = rec.json()
        topic = body.get("out") if isinstance(body, dict) else None
        if topic not in want:
            unknown.append(rec.body[:80])
            continue
        ids_by_topic.setdefault(topic, set()).add(rec.headers.get("webhook-id"))
        attempts_by_topic[topic] = attempts_by_topic.get(topic, 0) + 1
        if rec.headers.get("ai_flow_signature") != "sig-123":
            bad_headers.append(f"{want[topic]}: AI_FLOW_SIGNATURE {rec.headers.get('ai_flow_signature')!r}")
        if secret and webhook_signature_matches(secret, rec.headers, rec.body) is None:
            bad_sigs.append(want[topic])
    split = {t: ids for t, ids in ids_by_topic.items() if len(ids) != 1 or None in ids}
    if split:
        problems.append(f"{len(split)} runs delivered under more than one webhook-id, e.g. "
                        f"{[(want[t], sorted(map(str, ids))) for t, ids in list(split.items())[:3]]}")
    if bad_headers:
        problems.append(f"{len(bad_headers)} deliveries with a wrong header: {bad_headers[:3]}")
    if bad_sigs:
        problems.append(f"{len(bad_sigs)} deliveries whose webhook-signature does not verify, "
                        f"e.g. runs {bad_sigs[:3]}")
    if unknown:
        problems.append(f"{len(unknown)} deliveries for no complete run, e.g. {unknown[:2]}")
    stats = {"runs": len(want), "requests": len(records),
             "ok": sum(1 for _, s in records if s == 200),
             "failed_first": sum(1 for _, s in records if s == 500),
             "duplicates": sum(1 for t, n in attempts_by_topic.items() if n > 1)}
    return problems, stats


def parse_args(argv):
    args = argv[1:]
    opts = {"cycles": 10, "webhooks": False, "seed": None}
    try:
        for flag in ("--cycles", "--seed"):
            if flag in args:
                i = args.index(flag)
                opts[flag[2:]] = int(args[i + 1])
                del args[i:i + 2]
        if "--webhooks" in args:
            opts["webhooks"] = True
            args.remove("--webhooks")
    except (IndexError, ValueError):
        return None
    if len(args) != 1 or opts["cycles"] < 1:
        return None
    opts["bin"] = args[0]
    return opts


def main(argv):
    opts = parse_args(argv)
    if opts is None:
        print(f"usage: {argv[0]} <path-to-flowd> [--cycles N] [--webhooks] [--seed S]",
              file=sys.stderr)
        return 2
    bin_path, cycles, webhooks = opts["bin"], opts["cycles"], opts["webhooks"]
    seed = opts["seed"] if opts["seed"] is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    print(f"seed {seed}: {cycles} cycles{' with webhooks' if webhooks else ''}", flush=True)
    deadline = Deadline(20 + 30 * cycles)
    t_start = time.monotonic()
    passed = failed = 0
    summary = {}

    def record(name, error, extra=""):
        nonlocal passed, failed
        if error is None:
            passed += 1
            print(f"ok {name}{extra}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {error}", flush=True)

    receiver = Receiver(random.Random(rng.random())) if webhooks else None
    flows = Flows(webhooks)
    try:
        with tempfile.TemporaryDirectory(prefix="flowd-e2e-crash-") as data_dir:
            try:
                load_flow("echo")
                if webhooks:
                    load_flow("webhook")
                key = create_key(bin_path, data_dir, "a", "crash")
                secret = setup(bin_path, data_dir, key, flows, receiver, deadline)
            except Exception as e:
                print(f"FAIL setup: {e}")
                print(f"0 passed, {cycles + 4} failed")
                return 1

            done = []
            for number in range(1, cycles + 1):
                cycle = Cycle(number)
                try:
                    burst(bin_path, data_dir, key, flows, cycle, rng, webhooks, deadline)
                    done.append(cycle)
                    record(f"cycle{number}_burst_then_kill9", None,
                           f"  [{len(cycle.acked)} acknowledged of {cycle.sent} sent, killed "
                           f"{cycle.delay:.2f} s after listening]")
                except Exception as e:
                    done.append(cycle)  # what it acknowledged before failing still counts
                    record(f"cycle{number}_burst_then_kill9", e)
                    if "flowd did not print" in str(e) or "budget" in str(e):
                        break  # cannot restart: the remaining cycles would only repeat this

            all_ids = [run_id for c in done for _, run_id, _ in c.acked]
            dupes = sorted(r for r, n in _counts(all_ids).items() if n > 1)
            record("acknowledged_run_ids_unique", f"duplicate run_ids {dupes[:5]}" if dupes else None,
                   f"  [{len(all_ids)} runs]")
            summary["acknowledged"] = len(all_ids)

            try:
                deadline.require(3, "the final restart")
                with Server(bin_path, data_dir, extra_args=server_args(webhooks),
                            start_timeout=min(20.0, deadline.left())) as srv:
                    errors = startup_errors(srv)
                    record("restart_after_kill9",
                           f"errors logged while starting: {errors[:3]}" if errors else None)

                    def client_factory():
                        return Client(srv.port, key, timeout=REQUEST_TIMEOUT)

                    lost = 0
                    for c in done:
                        problems = verify_runs(client_factory, flows, c.acked, deadline)
                        lost += len(problems)
                        record(f"cycle{c.number}_acknowledged_runs_complete",
                               f"{len(problems)}/{len(c.acked)} runs wrong: " + "; ".join(problems[:5])
                               if problems else None, f"  [{len(c.acked)} runs]")
                    summary["lost_or_wrong"] = lost

                    problems, counts, n = replay_keyed(client_factory, flows, done, deadline)
                    record("keyed_retries_after_crash",
                           f"{len(problems)}/{n} wrong: " + "; ".join(problems[:5]) if problems
                           else None,
                           f"  [{n} keyed requests: {counts['replayed']} acknowledged ones "
                           f"replayed; cut off by the kill: {counts['cut_off_stored']} had been "
                           f"stored, {counts['cut_off_new']} had not]")

                    problems, totals, listed_all = check_listings(client_factory(), flows, done,
                                                                  deadline)
                    record("listings_one_run_per_request",
                           "; ".join(problems[:8]) if problems else None,
                           f"  [listed: {totals}]")

                    if webhooks:
                        problems, stats = check_deliveries(receiver, secret, listed_all, deadline,
                                                          client_factory(), flows)
                        summary["deliveries"] = stats
                        record("webhook_deliveries_at_least_once",
                               "; ".join(problems) if problems else None,
                               f"  [{stats['runs']} runs delivered with {stats['requests']} "
                               f"requests: {stats['ok']} answered 200, {stats['failed_first']} "
                               f"first attempts answered 500, {stats['duplicates']} runs "
                               "received more than once]")
                    if not srv.alive():
                        record("final_server_alive", f"flowd died (exit {srv.returncode}); "
                                                     f"stderr tail:\n{srv.stderr_tail(10)}")
            except Exception as e:
                record("restart_after_kill9", e)
    finally:
        if receiver is not None:
            receiver.close()

    line = (f"summary: {summary.get('acknowledged', 0)} acknowledged runs, "
            f"{summary.get('lost_or_wrong', 'unverified')} lost or wrong")
    if webhooks:
        d = summary.get("deliveries")
        line += (f", deliveries: {d['runs']} runs, {d['requests']} requests, {d['duplicates']} "
                 f"runs delivered more than once" if d else ", deliveries unverified")
    print(line)
    print(f"total {time.monotonic() - t_start:.1f} s")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _counts(items):
    out = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv))
