"""S3FaultProxy: an HTTP proxy in front of the moto server that misbehaves as real S3 does, for tests.

It forwards every request to moto and, drawn from a seeded random generator with a share per method (or
scripted for the next requests), answers some with S3's ``503 SlowDown`` before forwarding (nothing
happened), cuts others off mid-body after forwarding (the status line, the headers and part of the body,
then the connection closes), drops the answer of a request that went through ("lost": the write happened,
the client hears nothing), or stalls mid-body longer than the client's read timeout. It counts what it
injected. Loopback only; it stops with the test (a context manager).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

SLOWDOWN = "slowdown"  # 503 SlowDown, before forwarding: the request did nothing
CUT = "cut"  # forwarded; the answer stops after the headers and part of the body (or within its status line)
LOST = "lost"  # forwarded; the connection is reset without an answer (a write that went through)
STALL = "stall"  # forwarded; the answer stops after part of the body and hangs, then the connection closes
FAULTS = (SLOWDOWN, CUT, LOST, STALL)

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>"
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
)


class S3FaultProxy:
    """A fault-injecting proxy to an S3 endpoint, on 127.0.0.1.

    :param upstream: the S3 endpoint to forward to (the moto server's URL), on loopback.
    :param seed: the random generator's seed.
    :param shares: for each fault, the share of requests of each method (``GET``, ``PUT``, ``POST``,
        ``HEAD``, ``DELETE``) that get it, e.g. ``{"slowdown": {"GET": 0.1}, "cut": {"GET": 0.1}}``.
    :param stall_seconds: how long a stalled answer hangs before its connection closes.
    """

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        shares: Mapping[str, Mapping[str, float]] | None = None,
        stall_seconds: float = 3.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost") or parts.port is None:
            raise ValueError(f"the fault proxy forwards to loopback only, not {upstream}")
        self.upstream = (parts.hostname, parts.port)
        self.shares = {fault: dict(by_method) for fault, by_method in (shares or {}).items()}
        unknown = set(self.shares) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.stall_seconds = stall_seconds
        self.random = random.Random(seed)
        self.injected: Counter[tuple[str, str]] = Counter()  # (fault, method) -> how many
        self.requests: Counter[str] = Counter()  # method -> how many came in
        self.enabled = True
        self._scripted: list[tuple[str, str, str]] = []  # (method, path contains, fault), first match wins
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> S3FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, method: str, fault: str, *, path_contains: str = "", times: int = 1) -> None:
        """Give ``fault`` to the next ``times`` requests of ``method`` whose path holds ``path_contains``
        (before any random draw)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._scripted.extend([(method.upper(), path_contains, fault)] * times)

    def scripted_left(self) -> list[tuple[str, str, str]]:
        """Scripted faults no request has met yet."""
        with self._lock:
            return list(self._scripted)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No faults while inside (the test's own setup or checks through the proxy)."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def total(self, fault: str | None = None, method: str | None = None) -> int:
        """How many faults were injected (of one kind, on one method)."""
        return sum(
            n
            for (f, m), n in self.injected.items()
            if (fault is None or f == fault) and (method is None or m == method)
        )

    def summary(self) -> str:
        """The requests seen and faults injected, in one line."""
        seen = ", ".join(f"{m} {n}" for m, n in sorted(self.requests.items()))
        faults = ", ".join(f"{f} {m} {n}" for (f, m), n in sorted(self.injected.items())) or "none"
        return f"requests: {seen}; faults: {faults}"

    def _choose(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests[method] += 1
            if not self.enabled:
                return None
            for index, (scripted_method, contains, fault) in enumerate(self._scripted):
                if scripted_method == method and contains in path:
                    del self._scripted[index]
                    self.injected[fault, method] += 1
                    return fault
            draw = self.random.random()
            for fault in FAULTS:
                share = self.shares.get(fault, {}).get(method, 0.0)
                if draw < share:
                    self.injected[fault, method] += 1
                    return fault
                draw -= share
            return None


def _handler_class(proxy: S3FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's connection pool expects

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._proxy()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _proxy(self) -> None:
            body = self._read_body()
            method = self.command
            fault = proxy._choose(method, self.path)
            if fault == SLOWDOWN:
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                self.end_headers()
                self.wfile.write(SLOWDOWN_BODY)
                return
            status, reason, headers, answer = self._forward(method, body)
            if fault == LOST:
                self._hang_up(reset=True)
                return
            head = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
            head += b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers) + b"\r\n"
            if fault in (CUT, STALL):
                has_body = bool(answer) and method != "HEAD"
                # Nothing to cut but the head: stop within the status line (an answer cut within its
                # headers would read as whole, an empty body being a valid one), and reset.
                self.wfile.write(head + answer[: len(answer) // 2] if has_body else head[:10])
                self.wfile.flush()
                if fault == STALL:
                    time.sleep(proxy.stall_seconds)
                self._hang_up(reset=not has_body)
                return
            self.wfile.write(head + (b"" if method == "HEAD" else answer))

        def _forward(self, method: str, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                upstream.request(method, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                answer = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                if method != "HEAD":
                    kept = [(k, v) for k, v in kept if k.lower() != "content-length"]
                    kept.append(("Content-Length", str(len(answer))))
                return response.status, response.reason, kept, answer
            finally:
                upstream.close()

        def _hang_up(self, *, reset: bool = False) -> None:
            """Close the connection: a FIN after what was sent, or a reset (RST)."""
            self.close_connection = True
            try:
                self.wfile.flush()
                if reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler
