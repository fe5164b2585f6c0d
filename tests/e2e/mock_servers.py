"""Local stand-ins for the outside world that flowd talks to, for the end-to-end tests.

- `MockHTTP`: a plain HTTP/1.1 target with routes (status, headers, body, delay) that a test sets.
- `MockReceiver`: a webhook receiver: a `MockHTTP` that answers 200 to whatever has no route.
- `MockLLM`: an OpenAI-compatible `POST .../chat/completions` (by default it answers with the
  user message's text) and an Anthropic `POST .../v1/messages` (by default: the user text).
- `make_certs` + `tls=` on either server: HTTPS with certificates made by the `openssl` CLI in a
  temporary folder (a throwaway CA, leaf certificates for "localhost" and "other.test" signed by
  it, and a self-signed "localhost" certificate).

Every server is a `ThreadingHTTPServer` speaking real HTTP/1.1 (keep-alive, Content-Length or
chunked request bodies) on 127.0.0.1 (or ::1), port 0. Each request is recorded (method, path,
headers, raw body bytes, arrival time on the monotonic clock) before it is answered.

Answers are scriptable per request: `script(reply, ..., match=...)` queues replies; a request
takes the first queued reply whose `match` (a substring of the raw body, or a predicate on the
recorded request) fits, or else gets the server's default behaviour. Scripts keyed by a marker
that only one test sends keep tests that share a server independent of each other.

Only the Python standard library is used; nothing listens beyond loopback.
"""

import http.server
import json
import os
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

LOCAL_V4 = "127.0.0.1"
LOCAL_V6 = "::1"


# --------------------------------------------------------------------------- records and replies

class Recorded:
    """One request as it arrived."""

    def __init__(self, method, path, headers, body, at):
        self.method = method
        self.path = path                # the request target as sent (path and query)
        self.header_list = headers      # [(name, value)] in arrival order
        self.headers = {}               # lowercase name -> value (repeated names joined by ", ")
        for k, v in headers:
            k = k.lower()
            self.headers[k] = f"{self.headers[k]}, {v}" if k in self.headers else v
        self.body = body                # raw bytes
        self.at = at                    # time.monotonic() when the head and body had arrived
        self.wall = time.time()         # the same moment on the wall clock (Unix seconds)

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None

    def __repr__(self):
        return f"<{self.method} {self.path} {len(self.body)} bytes>"


class Reply:
    """What to answer.

    `json_body` (any JSON value) sets the body and a JSON Content-Type unless `headers` has one.
    `delay` seconds pass before the answer (cut short when the server closes).
    `send_only` bytes of the body are sent after a head that still declares
    `content_length` (default: the whole body's length); then the connection is reset.
    `close` closes the connection after the answer.
    """

    def __init__(self, status=200, body=b"", headers=None, json_body=None, delay=0.0,
                 content_length=None, send_only=None, close=False):
        self.status = status
        self.headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode("utf-8")
            if not any(k.lower() == "content-type" for k in self.headers):
                self.headers["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.body = body
        self.delay = delay
        self.content_length = content_length
        self.send_only = send_only
        self.close = close


# --------------------------------------------------------------------------- the server core

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "flowd-e2e-mock/1"
    timeout = 30  # an idle kept-alive connection is dropped after this many seconds

    def log_message(self, fmt, *args):  # quiet: the tests print what matters
        pass

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            body = bytearray()
            for _ in range(100000):  # bounded: at most this many chunks
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    for _ in range(1000):  # trailers up to the blank line
                        if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                            break
                    break
                body += self.rfile.read(size)
                self.rfile.readline(3)
            return bytes(body)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _handle(self):
        body = self._read_body()
        rec = Recorded(self.command, self.path, list(self.headers.items()), body, time.monotonic())
        owner = self.server.owner
        owner._record(rec)
        reply = owner._next_reply(rec)
        if reply.delay and owner._stopping.wait(reply.delay):
            self.close_connection = True
            return
        self._send(reply)

    def _send(self, reply):
        declared = reply.content_length if reply.content_length is not None else len(reply.body)
        self.send_response(reply.status)
        has_ct = False
        for k, v in reply.headers.items():
            if k.lower() == "content-length":
                continue
            has_ct = has_ct or k.lower() == "content-type"
            self.send_header(k, v)
        if not has_ct and reply.body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(declared))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if reply.send_only is not None:
            self.wfile.write(reply.body[:reply.send_only])
            self.wfile.flush()
            time.sleep(0.05)
            # SO_LINGER 0: close() sends a RST, so the peer sees a reset mid-body.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self.wfile.write(reply.body)
        self.wfile.flush()

    def _safe(self):
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout,
                ssl.SSLError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _safe


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, owner, family, backlog=None):
        self.address_family = family
        self.owner = owner
        if backlog:
            self.request_queue_size = backlog  # listen() backlog; socketserver's default is 5
        super().__init__(addr, _Handler)

    def finish_request(self, request, client_address):
        # TLS handshakes happen here, in the connection's own thread, never in the accept loop.
        ctx = self.owner._tls
        if ctx is not None:
            try:
                request.settimeout(10)
                request = ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self.owner._tls_failure(e)
                return
            self.owner._tls_ok()
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # a client that went away is not a test failure


class MockServer:
    """Base: a threaded HTTP/1.1 server that records requests and answers scripted replies."""

    def __init__(self, host=LOCAL_V4, tls=None, backlog=None):
        """`tls`: None for plain HTTP, or (certfile, keyfile) to serve HTTPS. `backlog`: the
        listen() queue (socketserver's default of 5 makes a burst of connections wait for
        SYN retransmits, seconds apart)."""
        self._lock = threading.Condition()
        self._requests = []
        self._scripts = []      # [(match, Reply or callable)]
        self._stopping = threading.Event()
        self._tls = None
        self.tls_handshakes = 0
        self.tls_failures = []  # error text of each failed handshake
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            self._tls = ctx
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _ThreadingServer((host, 0), self, family, backlog)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # -- addresses
    @property
    def scheme(self):
        return "https" if self._tls is not None else "http"

    def url(self, path="/", host=None):
        host = host or self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.scheme}://{host}:{self.port}{path}"

    # -- scripting
    def script(self, *replies, match=None):
        """Queue replies; each answers one request that `match` accepts (None: any request)."""
        with self._lock:
            for r in replies:
                self._scripts.append((match, r))

    def clear_scripts(self, match=None):
        """Drop queued replies (all, or those queued with this exact `match`)."""
        with self._lock:
            self._scripts = [s for s in self._scripts if match is not None and s[0] != match]

    def _matches(self, match, rec):
        if match is None:
            return True
        if callable(match):
            return bool(match(rec))
        if isinstance(match, str):
            match = match.encode("utf-8")
        return match in rec.body or match in rec.path.encode("utf-8")

    def _next_reply(self, rec):
        with self._lock:
            for i, (match, reply) in enumerate(self._scripts):
                if self._matches(match, rec):
                    del self._scripts[i]
                    break
            else:
                reply = None
        if callable(reply):
            reply = reply(rec)
        return reply if reply is not None else self.default_reply(rec)

    def default_reply(self, rec):
        return Reply(404, json_body={"error": {"message": f"no route for {rec.path}"}})

    # -- recording
    def _record(self, rec):
        with self._lock:
            self._requests.append(rec)
            self._lock.notify_all()

    def _tls_failure(self, e):
        with self._lock:
            self.tls_failures.append(str(e))
            self._lock.notify_all()

    def _tls_ok(self):
        with self._lock:
            self.tls_handshakes += 1

    def requests(self, match=None):
        """Recorded requests, oldest first; `match` as for `script`."""
        with self._lock:
            return [r for r in self._requests if self._matches(match, r)]

    def paths(self):
        return [r.path for r in self.requests()]

    def wait_requests(self, n, match=None, timeout=5.0):
        """Wait until at least n matching requests arrived; returns them (maybe fewer)."""
        end = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._requests if self._matches(match, r)]
                left = end - time.monotonic()
                if len(got) >= n or left <= 0:
                    return got
                self._lock.wait(left)

    def reset(self):
        with self._lock:
            self._requests.clear()
            self._scripts.clear()
            self.tls_failures.clear()
            self.tls_handshakes = 0

    # -- lifetime
    def close(self):
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------- plain target

class MockHTTP(MockServer):
    """A plain target: `route(path, Reply)` sets a lasting answer for an exact path (query
    included if given, else any query); scripted replies still come first."""

    def __init__(self, host=LOCAL_V4, tls=None, backlog=None):
        self._routes = {}
        super().__init__(host, tls, backlog)

    def route(self, path, reply=None, **kw):
        """`route("/x", status=..., body=..., headers=..., json_body=..., delay=...)`."""
        with self._lock:
            self._routes[path] = reply if reply is not None else Reply(**kw)

    def default_reply(self, rec):
        with self._lock:
            reply = self._routes.get(rec.path) or self._routes.get(rec.path.split("?", 1)[0])
        if callable(reply):
            reply = reply(rec)
        return reply if reply is not None else super().default_reply(rec)


class MockReceiver(MockHTTP):
    """A webhook receiver: scripted replies first, then routes, else `200 {"received": true}`
    (so a test only scripts the answers that are not a plain success)."""

    def default_reply(self, rec):
        with self._lock:
            routed = self._routes.get(rec.path) or self._routes.get(rec.path.split("?", 1)[0])
        if routed is not None:
            return super().default_reply(rec)
        return Reply(200, json_body={"received": True})


# --------------------------------------------------------------------------- model providers

def chat_completion(text, finish_reason="stop", model="gpt-4o-mini"):
    """An OpenAI chat.completion object whose assistant message is `text`."""
    return {"id": "chatcmpl-e2e", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def anthropic_message(text, model="claude-3-5-haiku-latest"):
    """An Anthropic Messages API answer whose one text block is `text`."""
    return {"id": "msg_e2e", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}


def openai_error(status, message, etype="invalid_request_error", headers=None):
    return Reply(status, json_body={"error": {"message": message, "type": etype,
                                              "param": None, "code": None}}, headers=headers)


def ok_reply(text, delay=0.0):
    """A 200 chat completion with `text`."""
    return Reply(200, json_body=chat_completion(text), delay=delay)


def user_text(rec):
    """The user message of an OpenAI or Anthropic request body ("" when there is none)."""
    body = rec.json()
    if not isinstance(body, dict):
        return ""
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # Anthropic content blocks
                return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def system_text(rec):
    """The system text: OpenAI's system message, or Anthropic's `system` field."""
    body = rec.json()
    if not isinstance(body, dict):
        return None
    if "system" in body:
        return body["system"]
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "system":
            return m.get("content")
    return None


class MockLLM(MockServer):
    """OpenAI-compatible `POST <anything>/chat/completions` and Anthropic
    `POST <anything>/v1/messages`. By default both answer with the user message's text."""

    def default_reply(self, rec):
        if rec.method == "POST" and rec.path.split("?", 1)[0].endswith("/chat/completions"):
            if rec.json() is None:
                return openai_error(400, "request body is not JSON")
            body = rec.json()
            return Reply(200, json_body=chat_completion(user_text(rec), model=body.get("model", "")))
        if rec.method == "POST" and rec.path.split("?", 1)[0].endswith("/v1/messages"):
            if rec.json() is None:
                return Reply(400, json_body={"type": "error", "error": {
                    "type": "invalid_request_error", "message": "body is not JSON"}})
            return Reply(200, json_body=anthropic_message(user_text(rec)))
        return super().default_reply(rec)


# --------------------------------------------------------------------------- certificates

class Certs:
    """Paths of the generated PEM files; `close()` removes the folder."""

    def __init__(self, folder):
        self._tmp = folder
        d = folder.name
        self.dir = d
        self.ca = os.path.join(d, "ca.pem")
        self.localhost = (os.path.join(d, "localhost.pem"), os.path.join(d, "localhost.key"))
        self.other = (os.path.join(d, "other.pem"), os.path.join(d, "other.key"))
        self.self_signed = (os.path.join(d, "self.pem"), os.path.join(d, "self.key"))

    def close(self):
        self._tmp.cleanup()


def _openssl(args, cwd):
    res = subprocess.run(["openssl", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} exited {res.returncode}: "
                           f"{res.stderr.decode('utf-8', 'replace').strip()}")


def make_certs():
    """A throwaway CA, leaf certificates for localhost and other.test signed by it, and a
    self-signed localhost certificate (P-256 keys, valid 2 days)."""
    folder = tempfile.TemporaryDirectory(prefix="flowd-e2e-certs-")
    d = folder.name
    try:
        key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(["req", "-x509", *key_args, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                  "-subj", "/CN=flowd e2e test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
        for stem, name in (("localhost", "localhost"), ("other", "other.test")):
            ext = os.path.join(d, f"{stem}.ext")
            with open(ext, "w") as f:
                f.write(f"subjectAltName=DNS:{name}\nbasicConstraints=CA:FALSE\n"
                        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
            _openssl(["req", *key_args, "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
                      "-subj", f"/CN={name}"], d)
            _openssl(["x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                      "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
                      "-days", "2", "-out", f"{stem}.pem", "-extfile", ext], d)
        _openssl(["req", "-x509", *key_args, "-keyout", "self.key", "-out", "self.pem",
                  "-days", "2", "-subj", "/CN=localhost",
                  "-addext", "subjectAltName=DNS:localhost"], d)
    except Exception:
        folder.cleanup()
        raise
    return Certs(folder)
