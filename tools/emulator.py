"""A strict local stand-in for mParticle's Events API (``/v2/events``, ``/v2/bulkevents``).

It refuses what mParticle documents it refuses: missing or wrong Basic auth (401/403), a body that is
not JSON, more than 100 batches or 256 KB per request, a batch over 128 KB, unknown event types,
missing required event fields, more than 100 attributes, a batch with more than one user. It answers
429 with ``Retry-After`` past its rate limit and sends ``X-mp-rate-limit-percentage-used`` on success.
It drops a repeated ``source_request_id`` as mParticle does, and it can inject faults: 5xx at a rate,
slow answers, dropped connections. Every accepted batch is kept (and appended to a JSONL file with
``--record``); ``GET /_emulator/stats`` and ``GET /_emulator/batches`` let tests look inside.

Run: ``python -m tools.emulator --port 8089 --api-key K --api-secret S``
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import logging
import random
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mparticle_backfill import jsonio, limits

log = logging.getLogger("mparticle_backfill.emulator")


class _RateLimiter:
    """A token bucket of ``rate`` batches per second, holding at most one second's worth."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = float(rate or 0)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def take(self, batches: int) -> tuple[bool, float]:
        """Whether ``batches`` may pass now, and the share of the bucket in use afterwards (0..100)."""
        if not self.rate:
            return True, 0.0
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if batches > self.tokens and self.tokens < self.rate:
                return False, 100.0
            self.tokens -= batches
            return True, max(0.0, min(100.0, 100.0 * (1 - self.tokens / self.rate)))


class EmulatorState:
    """What the emulator was told and what it received."""

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        *,
        rate: float | None = None,
        fail_rate: float = 0.0,
        drop_rate: float = 0.0,
        latency_ms: float = 0.0,
        record: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.fail_rate = fail_rate
        self.drop_rate = drop_rate
        self.latency_ms = latency_ms
        self.record = record
        self.limiter = _RateLimiter(rate)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.batches: list[dict[str, Any]] = []
        self.source_request_ids: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.fail_next: list[Any] = []  # answers forced on the next requests (tests): 0 drops

    def bump(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def reset(self) -> None:
        with self.lock:
            self.batches.clear()
            self.source_request_ids.clear()
            self.stats.clear()
            self.fail_next.clear()

    def accept(self, batches: list[dict[str, Any]]) -> None:
        with self.lock:
            fresh = []
            for batch in batches:
                request_id = batch.get("source_request_id")
                if isinstance(request_id, str) and request_id in self.source_request_ids:
                    self.stats["duplicates_dropped"] += 1
                    continue
                if isinstance(request_id, str):
                    self.source_request_ids.add(request_id)
                self.stats["batches_accepted"] += 1
                self.stats["events_accepted"] += len(batch.get("events") or ())
                fresh.append(batch)
            self.batches.extend(fresh)
            if self.record is not None and fresh:
                with self.record.open("ab") as out:
                    out.write(b"".join(jsonio.dumps(b) + b"\n" for b in fresh))


def _error(code: str, message: str) -> bytes:
    return jsonio.dumps({"errors": [{"code": code, "message": message}]})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(2)

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/_emulator/stats":
            with state.lock:
                self._send(200, jsonio.dumps(dict(state.stats)))
        elif self.path == "/_emulator/batches":
            with state.lock:
                self._send(200, jsonio.dumps(state.batches))
        else:
            self._send(404, _error("NOT_FOUND", "no such resource"))

    def do_POST(self) -> None:
        state = self.server.state
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, _error("LENGTH_REQUIRED", "Content-Length is required"))
            return
        body = self.rfile.read(int(length))
        if self.path == "/_emulator/reset":
            state.reset()
            self._send(204)
            return
        if self.path == "/_emulator/fail-next":
            with state.lock:
                state.fail_next.extend(jsonio.loads(body))
            self._send(204)
            return
        if self.path not in ("/v2/events", "/v2/bulkevents"):
            self._send(404, _error("NOT_FOUND", f"no such endpoint {self.path}"))
            return
        state.bump("requests")
        status = self._authorize()
        if status:
            state.bump(f"status_{status}")
            self._send(status, _error("UNAUTHORIZED" if status == 401 else "FORBIDDEN", "invalid credentials"))
            return
        if state.latency_ms:
            time.sleep(state.latency_ms / 1000)
        with state.lock:
            forced = state.fail_next.pop(0) if state.fail_next else None
            roll = state.random.random()
        if forced == 0 or (forced is None and roll < state.drop_rate / 2):
            state.bump("connections_dropped")
            self._drop()  # lost before mParticle processed it
            return
        if forced or roll < state.drop_rate / 2 + state.fail_rate:
            # A forced answer is a status code, or {"status": 429, "retry_after": null} for a bare 429.
            code = (forced.get("status") if isinstance(forced, dict) else forced) or 503
            retry_after = forced.get("retry_after", "1") if isinstance(forced, dict) else "1"
            state.bump(f"status_{code}")
            headers = {"Retry-After": str(retry_after)} if code == 429 and retry_after is not None else {}
            self._send(code, _error("SERVICE_UNAVAILABLE", "try again later"), headers)
            return
        batches, problem = self._validate(body)
        if problem:
            state.bump("status_400")
            self._send(400, _error("BAD_REQUEST", problem))
            return
        allowed, used = state.limiter.take(len(batches))
        if not allowed:
            state.bump("status_429")
            self._send(
                429,
                _error("TOO_MANY_REQUESTS", "rate limit exceeded"),
                {"Retry-After": "1", "X-mp-rate-limit-exceeded": "true"},
            )
            return
        state.accept(batches)
        state.bump("status_202")
        if state.random.random() < state.drop_rate / 2:
            state.bump("connections_dropped")
            self._drop()  # processed, but the answer is lost: the client will resend
            return
        self._send(202, b"", {"X-mp-rate-limit-percentage-used": f"{used:.0f}"})

    def _authorize(self) -> int:
        state = self.server.state
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return 401
        try:
            key, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return 401
        ok = hmac.compare_digest(key, state.api_key) and hmac.compare_digest(secret, state.api_secret)
        return 0 if ok else 403

    def _validate(self, body: bytes) -> tuple[list[dict[str, Any]], str]:
        if self.headers.get_content_type() != "application/json":
            return [], "Content-Type must be application/json"
        if len(body) > limits.MAX_REQUEST_BYTES:
            return [], f"request of {len(body)} bytes exceeds {limits.MAX_REQUEST_BYTES}"
        try:
            document = jsonio.loads(body)
        except jsonio.DecodeError as error:
            return [], f"body is not valid JSON: {error}"
        if self.path == "/v2/events":
            batches = [document]
        elif not isinstance(document, list):
            return [], "bulk body must be a JSON array of batches"
        else:
            batches = document
        if len(batches) > limits.MAX_BATCHES_PER_REQUEST:
            return [], f"{len(batches)} batches exceed {limits.MAX_BATCHES_PER_REQUEST} per request"
        for index, batch in enumerate(batches):
            problem = limits.batch_problem(batch)
            if problem is None and len(jsonio.dumps(batch)) > limits.MAX_BATCH_BYTES:
                problem = f"batch exceeds {limits.MAX_BATCH_BYTES} bytes"
            if problem:
                return [], f"batch {index}: {problem}"
        return batches, ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: EmulatorState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class EventsApiEmulator:
    """The emulator in a background thread (for tests and ``make run``).

    :param host: address to bind; loopback by default.
    :param port: 0 picks a free port (see :attr:`url`).
    """

    def __init__(self, api_key: str, api_secret: str, *, host: str = "127.0.0.1", port: int = 0, **options: Any):
        self.state = EmulatorState(api_key, api_secret, **options)
        self._server = _Server((host, port), self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, name="events-api-emulator", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> EventsApiEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EventsApiEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--api-secret", required=True)
    parser.add_argument("--rate", type=float, default=None, help="batches per second before 429 (default: none)")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 503")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="share of connections dropped")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--record", type=Path, default=None, help="append accepted batches to this JSONL file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emulator = EventsApiEmulator(
        args.api_key,
        args.api_secret,
        host=args.host,
        port=args.port,
        rate=args.rate,
        fail_rate=args.fail_rate,
        drop_rate=args.drop_rate,
        latency_ms=args.latency_ms,
        record=args.record,
    )
    log.info("Events API emulator listening on %s", emulator.url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emulator.start()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
