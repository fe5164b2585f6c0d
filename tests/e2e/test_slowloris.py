"""Slow clients never starve the others (issue: hardening; case C07).

1. 1,000 connections trickle a request head one byte per second while a normal client
   keeps posting runs: every normal request is answered, and the trickling connections are
   closed by the head deadline (10 s). Latency figures are printed (p50/p99 unloaded and
   loaded) for the record; only "every request answered" is asserted, since this machine
   is shared and timings are noisy.
2. With --max-connections 50, connections past the cap get an immediate 503 and close,
   while the ones under it are served.

Everything goes to 127.0.0.1 and stops by itself within about 40 s.
usage: python3 test_slowloris.py <path-to-flowd>
"""

import socket
import sys
import tempfile
import time
import uuid

from flowd_harness import Client, Server, create_key, load_flow, split_responses

HEAD = b"POST /v1/flow/00000000-0000-4000-8000-000000000000/run HTTP/1.1\r\nHost: t\r\n"


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def timed_posts(client, flow_id, n):
    latencies, failures = [], 0
    for i in range(n):
        start = time.monotonic()
        st, _, _ = client.post(f"/v1/flow/{flow_id}/run", {"topic": f"t{i}"})
        latencies.append((time.monotonic() - start) * 1000)
        failures += st != 202
    return latencies, failures


def main(argv):
    bin_path = argv[1]
    failures = []

    def check(cond, msg):
        print(("ok " if cond else "FAIL ") + msg, flush=True)
        if not cond:
            failures.append(msg)

    with tempfile.TemporaryDirectory(prefix="flowd-e2e-loris-") as tmp:
        key = create_key(bin_path, tmp, "a", "loris")
        with Server(bin_path, tmp) as srv:
            client = Client(srv.port, key)
            flow_id = str(uuid.uuid4())
            assert client.put(f"/v1/flow/{flow_id}", load_flow("echo"))[0] == 201
            unloaded, bad = timed_posts(client, flow_id, 100)
            check(bad == 0, "unloaded: every run accepted")

            socks = []
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.setblocking(False)
                socks.append(s)
            sent = [0] * len(socks)
            closed_at = [None] * len(socks)
            started = time.monotonic()
            loaded, bad, next_byte = [], 0, started
            while time.monotonic() - started < 16 and any(c is None for c in closed_at):
                now = time.monotonic()
                if now >= next_byte:
                    for i, s in enumerate(socks):
                        if closed_at[i] is not None:
                            continue
                        try:
                            s.send(HEAD[sent[i] % len(HEAD):sent[i] % len(HEAD) + 1])
                            sent[i] += 1
                        except OSError:
                            closed_at[i] = now - started
                    next_byte = now + 1.0
                for i, s in enumerate(socks):
                    if closed_at[i] is None:
                        try:
                            if s.recv(4096) == b"":
                                closed_at[i] = now - started
                        except BlockingIOError:
                            pass
                        except OSError:
                            closed_at[i] = now - started
                lat, b = timed_posts(client, flow_id, 5)
                loaded += lat
                bad += b
            for s in socks:
                s.close()
            check(bad == 0, f"loaded: every one of {len(loaded)} normal requests answered")
            closed = [c for c in closed_at if c is not None]
            check(len(closed) == len(socks), f"{len(closed)} of {len(socks)} trickling connections closed")
            if closed:
                check(max(closed) <= 13, f"closed by the head deadline (last after {max(closed):.1f} s)")
            print(f"figures: unloaded p50 {percentile(unloaded, .5):.2f} ms p99 {percentile(unloaded, .99):.2f} ms; "
                  f"loaded p50 {percentile(loaded, .5):.2f} ms p99 {percentile(loaded, .99):.2f} ms "
                  f"over {len(loaded)} requests", flush=True)

        with Server(bin_path, tmp, extra_args=("--max-connections", "50")) as srv:
            held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(50)]
            time.sleep(0.3)
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            extra.settimeout(3)
            data = b""
            try:
                while True:
                    chunk = extra.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            responses = split_responses(data)
            check(len(responses) == 1 and responses[0][0] == 503, f"past the cap: one 503, then close ({data[:60]!r})")
            held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            held[0].settimeout(3)
            check(held[0].recv(4096).startswith(b"HTTP/1.1 200"), "a connection under the cap is served")
            for s in held + [extra]:
                s.close()
    print(f"{0 if failures else 1} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
