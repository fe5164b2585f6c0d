"""C22: a full disk. flowd's data folder sits on a 20 MB tmpfs that a 5 MB filler and
200 KB runs fill up. Proves that flowd refuses new runs with 503 + Retry-After (and
/readyz says 503) instead of acknowledging what it cannot store or crashing; that earlier
runs stay readable; that service resumes without a restart once space is freed; and that
every run that got a 202 is still there, complete, after a restart.

Needs permission to mount a tmpfs (root with CAP_SYS_ADMIN); without it the test says so
and exits 77, which ctest reports as skipped.

usage: python3 test_diskfull.py <path-to-flowd>
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from flowd_harness import Client, Server, create_key, load_flow, poll_run

SKIP = 77


def main(argv):
    bin_path = argv[1]
    mount_point = tempfile.mkdtemp(prefix="flowd-diskfull-")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", mount_point],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"SKIP diskfull: cannot mount a tmpfs here ({mounted.stderr.strip()})")
        os.rmdir(mount_point)
        return SKIP
    failures = []
    server = None
    try:
        data = os.path.join(mount_point, "data")
        key = create_key(bin_path, data, "a", "diskfull")
        filler = os.path.join(mount_point, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * (5 << 20))
        server = Server(bin_path, data)
        client = Client(server.port, key)
        flow_id = str(uuid.uuid4())
        st, _, body = client.put(f"/v1/flow/{flow_id}", load_flow("echo"))
        assert st == 201, f"save: {st} {body}"

        def check(cond, msg):
            print(("ok " if cond else "FAIL ") + msg, flush=True)
            if not cond:
                failures.append(msg)

        acked, refused = [], None
        big = {"topic": "x" * 200_000}
        for _ in range(200):
            st, hdrs, body = client.post(f"/v1/flow/{flow_id}/run", big)
            if st == 202:
                acked.append(body["run_id"])
                continue
            refused = (st, hdrs, body)
            break
        check(refused is not None, f"refusals start once the disk fills ({len(acked)} runs accepted first)")
        if refused:
            st, hdrs, body = refused
            check(st == 503 and body["error"]["code"] == "unavailable", f"refusal is 503 unavailable (got {st} {body})")
            check("retry-after" in hdrs, "refusal carries Retry-After")
        check(client.get("/readyz")[0] == 503, "/readyz is 503 while full")
        check(all(client.get(f"/v1/flow/{flow_id}/run/{r}")[0] == 200 for r in acked),
              "every acknowledged run reads 200 while full")
        check(server.alive(), "flowd is still running")

        os.remove(filler)
        deadline, st = time.monotonic() + 15, None
        while time.monotonic() < deadline:
            st, _, _ = client.post(f"/v1/flow/{flow_id}/run", {"topic": "back"})
            if st == 202:
                break
            time.sleep(0.5)
        check(st == 202, f"runs are accepted again once space is back, without a restart (got {st})")
        check(client.get("/readyz")[0] == 200, "/readyz is 200 again")

        for run_id in acked:
            run = poll_run(client, flow_id, run_id, timeout=20)
            if run["status"] != "complete":
                check(False, f"run {run_id} ended {run['status']}")
                break
        rc = server.terminate()
        check(rc == 0, f"SIGTERM exits 0 (got {rc})")
        server.close()
        server = Server(bin_path, data)
        client = Client(server.port, key)
        statuses = set()
        for run_id in acked:
            st, _, run = client.get(f"/v1/flow/{flow_id}/run/{run_id}")
            statuses.add((st, run.get("status") if isinstance(run, dict) else None))
        check(statuses == {(200, "complete")}, f"after a restart every acknowledged run is complete: {statuses}")
    except Exception as e:  # a broken setup fails the test, loudly
        failures.append(f"{type(e).__name__}: {e}")
        print(f"FAIL diskfull: {type(e).__name__}: {e}")
    finally:
        if server:
            server.close()
        subprocess.run(["umount", mount_point], capture_output=True)
        os.rmdir(mount_point)
    passed = 0 if failures else 1
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
