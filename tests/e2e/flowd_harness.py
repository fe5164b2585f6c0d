"""Reusable helpers for flowd's end-to-end tests.

What this module gives the test scripts:

- `Server`: the real `flowd serve` as a child process on 127.0.0.1, port 0, with its stderr
  drained in a thread (so the pipe never fills) and kept for the report.
- `create_key`: the offline `flowd keys create` bootstrap (server stopped).
- `Client` / `KeepAliveClient`: thin http.client wrappers that return
  `(status, headers_lowercase, json_or_bytes)`.
- `raw` / `RawConn` / `split_responses`: a socket client that sends exactly the bytes given and a
  parser that splits what came back into responses (Content-Length or chunked; 1xx, 204 and 304
  have no body). This is the "raw-socket helper" of shared/cases/README.md.
- `poll_run`, `load_flow`: run polling and fixture loading.
- `read_sse`: reads a `text/event-stream` response into events, with arrival times.
- `files_containing`: which files under a folder hold some bytes (secrets that must not leak).
- `webhook_key`, `webhook_sign`, `webhook_signature_matches`: Standard Webhooks signatures
  computed with Python's `hmac`; `standardwebhooks_verify`: the same checked by the npm package
  `standardwebhooks` (through `verify_standardwebhooks.mjs`, needs `npm ci` in the repository).

Only the Python standard library is used (plus Node.js for `standardwebhooks_verify`), and
only 127.0.0.1 is ever contacted.
"""

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

HOST = "127.0.0.1"
KEY_RE = re.compile(r"^fk_[0-9A-Za-z]{38,}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID4_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE)
_LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


# --------------------------------------------------------------------------- server process

class Server:
    """`flowd serve --listen 127.0.0.1:0 --data DIR` as a child process.

    With `data_dir=None` a temporary directory is created and removed by `close()`.
    """

    def __init__(self, bin_path, data_dir=None, extra_args=(), env=None, start_timeout=20.0):
        self.bin_path = bin_path
        self._tmp = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="flowd-e2e-")
            data_dir = self._tmp.name
        self.data_dir = data_dir
        self.port = None
        self._lines = []
        self._lock = threading.Lock()
        self._port_found = threading.Event()

        # FLOWD_* settings from the caller's shell would change the server under test: drop
        # them unless passed explicitly in `env`.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
        if env:
            full_env.update(env)
        argv = [bin_path, "serve", "--listen", f"{HOST}:0", "--data", data_dir, *extra_args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=full_env)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

        self._port_found.wait(start_timeout)
        if self.port is None:
            self._force_stop()
            self._drain.join(2.0)
            if self._tmp is not None:
                self._tmp.cleanup()
            raise RuntimeError(
                f"flowd did not print 'listening on {HOST}:<port>' within {start_timeout:.0f} s "
                f"(exit code {self.proc.returncode}); stderr:\n{self.stderr_text()}")

    def _drain_stderr(self):
        for raw_line in self.proc.stderr:
            line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            with self._lock:
                self._lines.append(line)
            if self.port is None:
                m = _LISTEN_RE.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._port_found.set()
        self._port_found.set()  # EOF: the process is gone, stop waiting for the port

    def stderr_text(self):
        with self._lock:
            return "\n".join(self._lines)

    def stderr_tail(self, n=20):
        with self._lock:
            return "\n".join(self._lines[-n:])

    def alive(self):
        return self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll()

    def kill9(self):
        """SIGKILL and reap; returns the exit status (negative signal number)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.wait(10)

    def terminate(self, timeout=15.0):
        """SIGTERM, wait up to `timeout` s (then SIGKILL); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise RuntimeError(f"flowd did not exit within {timeout:.0f} s of SIGTERM")
        return self.proc.returncode

    def sigterm(self):
        """Send SIGTERM and return at once (see `wait_exit`); False if the process is gone."""
        if self.proc.poll() is not None:
            return False
        try:
            self.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def wait_exit(self, timeout):
        """Wait up to `timeout` s for the process to exit; its exit code, or None if alive."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def startup_lines(self):
        """The stderr lines up to and including the `listening on` line ([] before it)."""
        with self._lock:
            for i, line in enumerate(self._lines):
                if _LISTEN_RE.search(line):
                    return list(self._lines[:i + 1])
        return []

    def _force_stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        """Stop the process (SIGTERM, then SIGKILL after 5 s) and remove an owned data dir."""
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=5.0)
            except RuntimeError:
                pass
        self._drain.join(2.0)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def create_key(bin_path, data_dir, account="a", name="test", timeout=20.0):
    """Offline `flowd keys create`; returns the key (last non-empty stdout line)."""
    argv = [bin_path, "keys", "create", "--data", data_dir, "--account", account, "--name", name]
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: "
                           f"{res.stderr.decode('utf-8', 'replace').strip()}")
    lines = [ln.strip() for ln in res.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(argv)} printed nothing on stdout")
    return lines[-1]


# --------------------------------------------------------------------------- HTTP clients

def _encode_body(body, headers):
    """dict/list -> JSON (with a JSON Content-Type unless given); str/bytes are sent raw."""
    if body is None:
        return None
    if isinstance(body, (dict, list)):
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(body).encode("utf-8")
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json"
    return body


def _decode_body(data):
    if not data:
        return data
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return data


def _lower_headers(msg):
    out = {}
    for k, v in msg.items():
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


class Client:
    """One new connection per request. `key=None` sends no Authorization header.

    Pass `Authorization` (any case) in `headers` to override the default `Bearer <key>`.
    """

    def __init__(self, port, key=None, timeout=10.0):
        self.port = port
        self.key = key
        self.timeout = timeout

    def _headers(self, headers):
        hdrs = dict(headers or {})
        if self.key is not None and not any(k.lower() == "authorization" for k in hdrs):
            hdrs["Authorization"] = f"Bearer {self.key}"
        return hdrs

    def request(self, method, path, body=None, headers=None):
        hdrs = self._headers(headers)
        data = _encode_body(body, hdrs)
        conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, _lower_headers(resp.headers), _decode_body(payload)
        finally:
            conn.close()

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)


class KeepAliveClient(Client):
    """Reuses one connection. `last_local_port` identifies the socket used by the last request,
    so a test can prove two requests went over the same connection."""

    def __init__(self, port, key=None, timeout=10.0):
        super().__init__(port, key, timeout)
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        self.last_local_port = None

    def request(self, method, path, body=None, headers=None):
        hdrs = self._headers(headers)
        data = _encode_body(body, hdrs)
        self.conn.request(method, path, body=data, headers=hdrs)
        self.last_local_port = self.conn.sock.getsockname()[1]
        resp = self.conn.getresponse()
        payload = resp.read()
        return resp.status, _lower_headers(resp.headers), _decode_body(payload)

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- raw sockets

class RawConn:
    """A TCP connection that sends exact bytes; a reader thread collects everything the server
    sends until it closes (EOF or reset), so large writes never deadlock against large replies."""

    def __init__(self, port, connect_timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=connect_timeout)
        self.sock.settimeout(None)
        self.t0 = time.monotonic()
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.closed = False          # the server closed (EOF) or reset the connection
        self.reset = False           # it was a reset
        self.closed_at = None        # seconds since connect
        self.first_byte_at = None
        self.send_error = None
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self):
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError as e:
                with self._cond:
                    self.reset = isinstance(e, ConnectionResetError)
                    self._mark_closed()
                return
            with self._cond:
                if not chunk:
                    self._mark_closed()
                    return
                if self.first_byte_at is None:
                    self.first_byte_at = time.monotonic() - self.t0
                self._buf += chunk
                self._cond.notify_all()

    def _mark_closed(self):
        self.closed = True
        self.closed_at = time.monotonic() - self.t0
        self._cond.notify_all()

    def elapsed(self):
        return time.monotonic() - self.t0

    def data(self):
        with self._cond:
            return bytes(self._buf)

    def send(self, data):
        """Send bytes; returns False (and records the error) if the server already closed."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self.sock.sendall(data)
            return True
        except OSError as e:
            self.send_error = e
            return False

    def shut_wr(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_for(self, predicate, timeout):
        """Wait until predicate(data) is true or the server closes; returns predicate's value."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                ok = predicate(bytes(self._buf))
                if ok or self.closed:
                    return ok
                left = end - time.monotonic()
                if left <= 0:
                    return ok
                self._cond.wait(left)

    def wait_responses(self, n, timeout):
        """Wait for n complete final (non-1xx) responses; returns the parsed list."""
        self.wait_for(lambda d: len(final_responses(split_responses(d))) >= n, timeout)
        return split_responses(self.data())

    def wait_close(self, timeout):
        self.wait_for(lambda d: False, timeout)
        return self.closed

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's blocking recv
        except OSError:
            pass
        self._reader.join(1.0)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def raw(port, data_pieces, pause=0, shut_wr=False, deadline=3.0, stop_after=None, linger=0.5):
    """Send bytes exactly as given and read until the server closes or `deadline` passes.

    `data_pieces` is bytes/str (one write) or a list of pieces written in turn with `pause`
    seconds between them; a number in the list means "sleep that many seconds" there.
    With `stop_after=N`, reading also ends `linger` seconds after N final responses arrived
    (sooner if the server closes), which keeps keep-alive cases fast.

    Returns `(bytes_read, server_closed, elapsed)`; elapsed is when the server closed, else when
    reading stopped. The deadline counts from the connect.
    """
    if isinstance(data_pieces, (bytes, bytearray, str)):
        data_pieces = [data_pieces]
    with RawConn(port) as c:
        first = True
        for piece in data_pieces:
            if isinstance(piece, (int, float)):
                time.sleep(piece)
                continue
            if not first and pause:
                time.sleep(pause)
            first = False
            if not c.send(piece):
                break
        if shut_wr:
            c.shut_wr()
        left = max(0.0, deadline - c.elapsed())
        if stop_after is None:
            c.wait_close(left)
        else:
            c.wait_responses(stop_after, left)
            if not c.closed:
                c.wait_close(min(linger, max(0.0, deadline - c.elapsed())))
        data = c.data()
        elapsed = c.closed_at if c.closed else c.elapsed()
        return data, c.closed, elapsed


def _parse_head(block):
    lines = block.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"bad status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers


def _read_chunked(data, pos):
    """Returns (body, end_pos) or None if the chunked body is incomplete."""
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            # Trailer section: header lines up to an empty line.
            while True:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    return None
                line_empty = eol == pos
                pos = eol + 2
                if line_empty:
                    return bytes(body), pos
        if len(data) < pos + size + 2:
            return None
        body += data[pos:pos + size]
        pos += size + 2


def split_responses(raw_bytes, with_rest=False):
    """Parse raw bytes into [(status, headers_lowercase, body_bytes)].

    A trailing incomplete response is left out (returned as `rest` with `with_rest=True`).
    A response with neither Content-Length nor chunked framing runs to the end of the data.
    """
    data = bytes(raw_bytes)
    out = []
    pos = 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            break
        status, headers = _parse_head(data[pos:head_end])
        body_start = head_end + 4
        if 100 <= status < 200 or status in (204, 304):
            out.append((status, headers, b""))
            pos = body_start
            continue
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _read_chunked(data, body_start)
            if parsed is None:
                break
            body, pos = parsed
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if len(data) < body_start + n:
                break
            body = data[body_start:body_start + n]
            pos = body_start + n
        else:
            body = data[body_start:]
            pos = len(data)
        out.append((status, headers, body))
    return (out, data[pos:]) if with_rest else out


def final_responses(responses):
    return [r for r in responses if not 100 <= r[0] < 200]


# --------------------------------------------------------------------------- runs and fixtures

def poll_run(client, flow_id, run_id, timeout=10.0, interval=0.05):
    """GET the run until its status is no longer "pending"; returns the run object."""
    end = time.monotonic() + timeout
    path = f"/v1/flow/{flow_id}/run/{run_id}"
    while True:
        status, _, body = client.get(path)
        if status != 200 or not isinstance(body, dict):
            raise AssertionError(f"GET {path} -> {status} {body!r:.300}")
        if body.get("status") != "pending":
            return body
        if time.monotonic() > end:
            raise AssertionError(f"run {run_id} still pending after {timeout:.0f} s: {body!r:.300}")
        time.sleep(interval)


def list_runs(client, flow_id, status=None, limit=100, max_pages=10000):
    """Every run of `GET /v1/flow/{flow_id}/runs`, following `next_cursor` (at most
    `max_pages` pages); returns the run objects, newest first."""
    runs = []
    cursor = None
    for _ in range(max_pages):
        query = [f"limit={limit}"]
        if status:
            query.append(f"status={status}")
        if cursor:
            query.append(f"cursor={urllib.parse.quote(cursor, safe='/')}")
        path = f"/v1/flow/{flow_id}/runs?{'&'.join(query)}"
        code, _, body = client.get(path)
        if code != 200 or not isinstance(body, dict) or not isinstance(body.get("runs"), list):
            raise AssertionError(f"GET {path} -> {code} {body!r:.300}")
        runs += body["runs"]
        cursor = body.get("next_cursor")
        if not cursor:
            return runs
    raise AssertionError(f"runs listing of {flow_id} did not end within {max_pages} pages")


def connect_refused(port, attempts=40, interval=0.05):
    """Try new TCP connections to 127.0.0.1:port until one is refused (at most `attempts`
    tries, `interval` s apart). Returns seconds until the refusal, or None if every try
    connected (or failed otherwise)."""
    t0 = time.monotonic()
    for _ in range(attempts):
        try:
            s = socket.create_connection((HOST, port), timeout=1.0)
        except ConnectionRefusedError:
            return time.monotonic() - t0
        except OSError:
            pass
        else:
            s.close()
        time.sleep(interval)
    return None


def shared_dir():
    """FLOWD_SHARED if set, else <repo>/../shared with repo two directories above this file."""
    env = os.environ.get("FLOWD_SHARED")
    if env:
        path = env
    else:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.path.join(os.path.dirname(repo), "shared")
    if not os.path.isdir(os.path.join(path, "cases", "flows")):
        raise FileNotFoundError(
            f"shared folder with cases/flows/ not found at {path!r} (set FLOWD_SHARED)")
    return path


def load_flow(name):
    """The fixture flow shared/cases/flows/<name>.json, parsed."""
    path = os.path.join(shared_dir(), "cases", "flows", f"{name}.json")
    with open(path, "rb") as f:
        return json.loads(f.read().decode("utf-8"))


# --------------------------------------------------------------------------- event streams

def _parse_sse_block(block):
    """One event block (lines without the blank separator) -> dict, or None for comments only."""
    event = {"id": None, "event": None, "data": None, "comments": []}
    data_lines = []
    for line in block.split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        if line.startswith(":"):
            event["comments"].append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_lines.append(value)
        elif name in ("id", "event", "retry"):
            event[name] = value
    if not data_lines and event["id"] is None and event["event"] is None:
        return None if not event["comments"] else {"comment_only": True, **event}
    raw_data = "\n".join(data_lines)
    event["raw"] = raw_data
    try:
        event["data"] = json.loads(raw_data)
    except ValueError:
        event["data"] = raw_data
    return event


def read_sse(port, key, path, last_event_id=None, headers=None, timeout=10.0, stop=None):
    """GET an event stream; read until the server closes it, `timeout` passes, or
    `stop(events)` returns true.

    Returns a dict: `status`, `headers` (lowercase), `events` (each `{"id", "event", "data"
    (parsed JSON when it is JSON), "raw", "at"}` with `at` in seconds since the request was
    sent), `comments` (comment lines such as pings), `closed` (the server ended the stream),
    `elapsed`, and `body` (the raw bytes, for a non-200 answer).
    """
    hdrs = {"Accept": "text/event-stream"}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = str(last_event_id)
    hdrs.update(headers or {})
    t0 = time.monotonic()
    end = t0 + timeout
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    out = {"status": None, "headers": {}, "events": [], "comments": [], "closed": False,
           "elapsed": None, "body": b""}
    try:
        conn.request("GET", path, headers=hdrs)
        sock = conn.sock  # http.client drops conn.sock once it sees a close-delimited answer
        resp = conn.getresponse()
        out["status"] = resp.status
        out["headers"] = _lower_headers(resp.headers)
        if resp.status != 200:
            out["body"] = resp.read()
            out["closed"] = True
            return out
        buf = ""
        pending = b""
        for _ in range(100000):  # bounded: each round reads at least one byte or ends
            left = end - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = resp.read1(65536)
            except (socket.timeout, TimeoutError):
                break
            except (http.client.IncompleteRead, ConnectionError, OSError):
                out["closed"] = True
                break
            if not chunk:
                out["closed"] = True
                break
            now = time.monotonic() - t0
            pending += chunk
            try:
                text = pending.decode("utf-8")
                pending = b""
            except UnicodeDecodeError:
                continue  # a multi-byte character split across reads
            buf += text.replace("\r\n", "\n")
            while "\n\n" in buf:
                block, buf = buf.split("\n\n", 1)
                ev = _parse_sse_block(block)
                if ev is None:
                    continue
                out["comments"].extend(ev.pop("comments"))
                if ev.pop("comment_only", False):
                    continue
                ev["at"] = now
                out["events"].append(ev)
            if stop is not None and stop(out["events"]):
                break
        return out
    finally:
        out["elapsed"] = time.monotonic() - t0
        conn.close()


# --------------------------------------------------------------------------- secrets

def files_containing(root, needle, max_file=256 << 20):
    """Paths of the regular files under `root` whose bytes contain `needle` (str or bytes).
    Files larger than `max_file` are read up to that size."""
    if isinstance(needle, str):
        needle = needle.encode("utf-8")
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read(max_file)
            except OSError:
                continue
            if needle in data:
                hits.append(path)
    return hits


# --------------------------------------------------------------------------- webhook signatures

def webhook_key(secret):
    """The HMAC key of a `whsec_<base64>` secret: the base64-decoded part after the prefix."""
    if not isinstance(secret, str) or not secret.startswith("whsec_"):
        raise ValueError(f"not a whsec_ secret: {secret!r}")
    try:
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"secret is not whsec_<base64>: {e}")


def webhook_sign(secret, msg_id, timestamp, body):
    """`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}." + body bytes)>`."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    mac = hmac.new(webhook_key(secret), f"{msg_id}.{timestamp}.".encode("utf-8") + body,
                   hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def webhook_signature_entries(header_value):
    """The space-separated entries of a `webhook-signature` header."""
    return [e for e in (header_value or "").split(" ") if e]


def webhook_signature_matches(secret, headers, body):
    """Index of the `webhook-signature` entry that `secret` produced over the raw `body` with
    the `webhook-id` and `webhook-timestamp` headers (lowercase dict), or None."""
    want = webhook_sign(secret, headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""),
                        body)
    for i, entry in enumerate(webhook_signature_entries(headers.get("webhook-signature"))):
        if hmac.compare_digest(entry.encode("ascii", "replace"), want.encode("ascii")):
            return i
    return None


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STANDARDWEBHOOKS_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "verify_standardwebhooks.mjs")


def standardwebhooks_verify(cases, timeout=30.0):
    """Verify deliveries with the npm package `standardwebhooks` (`new Webhook(secret)
    .verify(body, headers)`). `cases`: [(secret, headers, body_bytes)]. Returns one
    `{"ok": bool, "error"?: str}` per case.

    Raises AssertionError with a clear message when Node.js or the package is missing: the
    package comes from the repository's package.json (`npm ci` in the repository root)."""
    pkg = os.path.join(_REPO_ROOT, "node_modules", "standardwebhooks", "package.json")
    if not os.path.isfile(pkg):
        raise AssertionError(
            f"the npm package standardwebhooks is not installed ({pkg} is missing): run "
            f"`npm ci` in {_REPO_ROOT} before the end-to-end tests")
    payload = [{"secret": s, "headers": {k: v for k, v in h.items()},
                "body_b64": base64.b64encode(b if isinstance(b, bytes) else b.encode()).decode()}
               for s, h, b in cases]
    try:
        res = subprocess.run(["node", STANDARDWEBHOOKS_SCRIPT], input=json.dumps(payload).encode(),
                             capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise AssertionError("`node` (Node.js) is not on PATH: it runs the standardwebhooks "
                             "verifier")
    lines = [ln for ln in res.stdout.decode("utf-8", "replace").splitlines() if ln.strip()]
    if res.returncode not in (0, 1) or len(lines) != len(cases):
        raise AssertionError(
            f"verify_standardwebhooks.mjs exited {res.returncode} with {len(lines)} result(s) for "
            f"{len(cases)} case(s): {res.stderr.decode('utf-8', 'replace').strip()[:500]}")
    return [json.loads(ln) for ln in lines]
