"""Crash test: every run flowd acknowledged with 202 survives `kill -9` (cases C20 (a)).

Usage: python3 test_crash.py <path-to-flowd> [--cycles N]     (default 3 cycles)

Each cycle starts flowd on one persistent data dir (echo.json is saved in the first cycle),
fires a burst of POST runs from 8 threads, each with a unique topic, and SIGKILLs the server
as soon as the cycle's threshold of 202s is reached (the first 202 in odd cycles, half the burst
in even ones), while other requests are still in flight. After the last cycle the server is
started once more and every acknowledged run must GET as 200 and reach `complete` with
`Topic: <its topic> / Tone: neutral / Count: 3`: a 202 means the run is durable.

Prints `ok <name>` / `FAIL <name>: <reason>` per check and `N passed, M failed`; exits non-zero
on any failure. Bounded in time: about 15 s plus 30 s per cycle at most.
"""

import http.client
import sys
import tempfile
import threading
import time
import uuid

from flowd_harness import Client, Server, create_key, load_flow

BURST = 50
THREADS = 8
REQUEST_TIMEOUT = 5.0


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


def burst(bin_path, data_dir, key, flow_id, cycle, deadline):
    """One cycle: start, (save the flow,) burst, SIGKILL. Returns [(run_id, topic)] acked."""
    deadline.require(5, f"cycle {cycle}")
    threshold = 1 if cycle % 2 == 1 else BURST // 2
    acked, bad_statuses = [], []
    lock = threading.Lock()
    killed = threading.Event()
    topics = [f"c{cycle}-{i:02d}-{uuid.uuid4().hex[:8]}" for i in range(BURST)]
    next_index = [0]

    srv = Server(bin_path, data_dir, start_timeout=min(20.0, deadline.left()))
    try:
        client = Client(srv.port, key, timeout=REQUEST_TIMEOUT)
        if cycle == 1:
            status, _, body = client.put(f"/v1/flow/{flow_id}", load_flow("echo"))
            if status != 201:
                raise AssertionError(f"PUT echo.json -> {status} {body!r:.200}")

        def worker():
            while not killed.is_set() and deadline.left() > 0:
                with lock:
                    if next_index[0] >= len(topics):
                        return
                    topic = topics[next_index[0]]
                    next_index[0] += 1
                try:
                    status, _, body = client.post(f"/v1/flow/{flow_id}/run", {"topic": topic})
                except (OSError, http.client.HTTPException):
                    continue  # the server is gone (or going): not acknowledged
                with lock:
                    if status == 202 and isinstance(body, dict) and body.get("run_id"):
                        acked.append((body["run_id"], topic))
                        if len(acked) >= threshold and not killed.is_set():
                            killed.set()
                            srv.kill9()
                    elif status != 202:
                        bad_statuses.append(status)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, min(20.0, deadline.left())))
        if any(t.is_alive() for t in threads):
            raise AssertionError("burst threads did not finish in time")
        rc = srv.kill9()
        if not killed.is_set():
            raise AssertionError(f"only {len(acked)} runs acknowledged, fewer than {threshold}")
        if rc != -9:
            raise AssertionError(f"flowd exited {rc} before the SIGKILL")
        if bad_statuses:
            raise AssertionError(f"non-202 answers during the burst: {sorted(set(bad_statuses))}")
        return acked, threshold
    finally:
        srv.close()


def verify(client, flow_id, acked, deadline):
    """Every acked run GETs 200 and completes with its own topic; returns a list of problems."""
    problems = []
    pending = {}
    for run_id, topic in acked:
        status, _, body = client.get(f"/v1/flow/{flow_id}/run/{run_id}")
        if status != 200:
            problems.append(f"{run_id} ({topic}): GET -> {status}")
        else:
            pending[run_id] = (topic, body)
    while pending and deadline.left() > 0:
        for run_id, (topic, body) in list(pending.items()):
            if body.get("status") == "pending":
                status, _, body = client.get(f"/v1/flow/{flow_id}/run/{run_id}")
                if status != 200:
                    problems.append(f"{run_id} ({topic}): GET -> {status} on re-poll")
                    del pending[run_id]
                    continue
                pending[run_id] = (topic, body)
            if body.get("status") == "pending":
                continue
            del pending[run_id]
            text = (body.get("outputs") or {}).get("text")
            if body.get("status") != "complete" or text != echo_text(topic):
                problems.append(f"{run_id} ({topic}): {body.get('status')} text {text!r}")
        if pending:
            time.sleep(0.1)
    problems += [f"{run_id} ({topic}): still pending" for run_id, (topic, _) in pending.items()]
    return problems


def main(argv):
    args = argv[1:]
    cycles = 3
    if "--cycles" in args:
        i = args.index("--cycles")
        cycles = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 1 or cycles < 1:
        print(f"usage: {argv[0]} <path-to-flowd> [--cycles N]", file=sys.stderr)
        return 2
    bin_path = args[0]
    deadline = Deadline(15 + 30 * cycles)
    passed = failed = 0

    def record(name, error, extra=""):
        nonlocal passed, failed
        if error is None:
            passed += 1
            print(f"ok {name}{extra}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {error}", flush=True)

    with tempfile.TemporaryDirectory(prefix="flowd-e2e-crash-") as data_dir:
        try:
            load_flow("echo")
            key = create_key(bin_path, data_dir, "a", "crash")
        except Exception as e:
            print(f"FAIL setup: {e}")
            print(f"0 passed, {cycles + 2} failed")
            return 1
        flow_id = str(uuid.uuid4())
        acked_by_cycle = {}
        for cycle in range(1, cycles + 1):
            try:
                acked, threshold = burst(bin_path, data_dir, key, flow_id, cycle, deadline)
                acked_by_cycle[cycle] = acked
                record(f"cycle{cycle}_burst_then_kill9", None,
                       f"  [{len(acked)} acknowledged, killed after {threshold}]")
            except Exception as e:
                record(f"cycle{cycle}_burst_then_kill9", e)
                if "flowd did not print" in str(e) or "budget" in str(e):
                    break  # cannot restart: the remaining cycles would only repeat this

        all_ids = [run_id for acked in acked_by_cycle.values() for run_id, _ in acked]
        dupes = sorted({r for r in all_ids if all_ids.count(r) > 1})
        record("acknowledged_run_ids_unique", f"duplicate run_ids {dupes}" if dupes else None,
               f"  [{len(all_ids)} runs]")

        try:
            deadline.require(3, "the final restart")
            with Server(bin_path, data_dir, start_timeout=min(20.0, deadline.left())) as srv:
                client = Client(srv.port, key, timeout=REQUEST_TIMEOUT)
                record("restart_after_kill9", None)
                for cycle, acked in acked_by_cycle.items():
                    problems = verify(client, flow_id, acked, deadline)
                    record(f"cycle{cycle}_acknowledged_runs_complete",
                           f"{len(problems)}/{len(acked)} runs wrong: " + "; ".join(problems[:5])
                           if problems else None, f"  [{len(acked)} runs]")
        except Exception as e:
            record("restart_after_kill9", e)
            for cycle in acked_by_cycle:
                record(f"cycle{cycle}_acknowledged_runs_complete", "not verified: no restart")

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
