"""Events API client: paced, concurrent bulk sends with retries, 400 isolation and per-batch results.

Plain Python over ``requests``; the Airflow hook builds one from a connection. Safe to retry because
every replay batch carries a deterministic ``source_request_id``: mParticle drops a repeated one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import requests
import tenacity
from requests.adapters import HTTPAdapter

from mparticle_backfill.errors import (
    CredentialsRefused,
    InvalidSettings,
    RequestRefused,
    TooManyRejections,
    TransientSendError,
)
from mparticle_backfill.send import BulkRequest, OutgoingBatch, request_body

from .http_retry import Retryable, RetryAfterOr, retry_after

log = logging.getLogger("mparticle_backfill.events_api")

PODS = {
    "us1": "https://s2s.us1.mparticle.com",
    "us2": "https://s2s.us2.mparticle.com",
    "eu1": "https://s2s.eu1.mparticle.com",
    "au1": "https://s2s.au1.mparticle.com",
}
BULK_PATH = "/v2/bulkevents"
RATE_HEADER = "X-mp-rate-limit-percentage-used"
# 4xx answers a retry may fix: request timeout, too many requests. 400 is isolated, 401/403 stop at once,
# every other 4xx (404, 405, 413, 415, 422, ...) is a configuration error that no retry can fix.
RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach and pace the Events API.

    :param base_url: the pod, e.g. ``https://s2s.us1.mparticle.com`` (``/v2`` is added).
    :param batches_per_second: pace across all workers (default 250, under the default 270 limit).
    :param max_workers: concurrent requests.
    :param timeout_seconds: connect and read timeout of one request.
    :param max_retries: retries of one request on 429, 5xx, timeouts and dropped connections.
    :param breaker_min_batches: batches answered before the rejection breaker may trip.
    :param breaker_rejection_rate: share of rejected batches (400) past which sending stops: when the
        API refuses nearly everything (a wrong input type, a plan version typo), narrowing each request
        down to single batches would cost two requests per batch and dead-letter the whole partition.
    """

    base_url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    batches_per_second: float = 250.0
    max_workers: int = 4
    timeout_seconds: float = 30.0
    max_retries: int = 8
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    breaker_min_batches: int = 200
    breaker_rejection_rate: float = 0.5

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidSettings("host", f"must be a URL like https://s2s.us1.mparticle.com, got {self.base_url!r}")
        if not self.api_key or not self.api_secret:
            raise InvalidSettings("login/password", "the connection needs the input's API key and secret")
        if not 0 < self.batches_per_second <= 100_000:
            raise InvalidSettings("batches_per_second", f"must be above 0, got {self.batches_per_second}")
        if not 1 <= self.max_workers <= 64:
            raise InvalidSettings("max_workers", f"must be 1 to 64, got {self.max_workers}")
        if self.max_retries < 0 or self.timeout_seconds <= 0:
            raise InvalidSettings("max_retries/timeout_seconds", "must be positive")


@dataclass(slots=True)
class RequestResult:
    """What the API made of one packed request: batches accepted, batches rejected with the reason."""

    accepted: list[OutgoingBatch] = field(default_factory=list)
    rejected: list[tuple[OutgoingBatch, str]] = field(default_factory=list)
    http_requests: int = 0
    retries: int = 0
    throttled: int = 0
    split: int = 0  # refused merged batches cut in two to send their records apart
    error: BaseException | None = None  # why the request stopped before every batch was answered


class _Stopped(Exception):
    """A worker gave up because another one failed; the first failure is what is raised."""


class Pacer:
    """A token bucket shared by the workers: ``rate`` batches per second, slowed when mParticle says so.

    When the API reports more than 80% of the rate limit used, or answers 429, the pace drops; it
    recovers slowly while usage stays low.
    """

    def __init__(self, rate: float) -> None:
        self.configured = rate
        self.rate = rate
        self.capacity = max(rate, 100.0)
        self.tokens = min(self.capacity, rate)
        self.updated = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self, batches: int, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= batches or self.tokens >= self.capacity:
                    self.tokens -= batches
                    return
                wait_for = (batches - self.tokens) / self.rate
            stop.wait(min(wait_for, 1.0))

    def observe(self, percentage_used: float | None, throttled: bool = False) -> None:
        with self.lock:
            if throttled:
                self.rate = max(self.configured * 0.1, self.rate * 0.5)
                self.tokens = min(self.tokens, 0.0)
            elif percentage_used is not None and percentage_used >= 80:
                self.rate = max(self.configured * 0.1, self.rate * 0.9)
            elif self.rate < self.configured:
                self.rate = min(self.configured, self.rate * 1.05)


class EventsApiClient:
    """Sends packed bulk requests to ``/v2/bulkevents``.

    - 202: every batch of the request is accepted.
    - 400: mParticle refuses the whole request; it is split in halves and resent, recursively, until
      the refused batches are isolated and returned as rejected with the API's message. A refused batch
      merged from several records is cut in two by its records (:meth:`.OutgoingBatch.split`) and each
      half sent alone, recursively, so that only the records the API refuses are rejected: one bad event
      never costs the other records of its user.
    - 401/403: :class:`CredentialsRefused` at once, never retried; everything stops.
    - 429 (waits ``Retry-After`` if given), 5xx, timeouts, dropped connections: retried with
      exponential backoff and jitter up to ``max_retries``, then :class:`TransientSendError`.
    """

    def __init__(self, settings: ClientSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.url = settings.base_url.rstrip("/").removesuffix("/v2") + BULK_PATH
        self.pacer = Pacer(settings.batches_per_second)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answered = self._rejected = 0
        self._session = self._prepare(session or requests.Session())

    def _prepare(self, session: requests.Session) -> requests.Session:
        """Basic auth, JSON headers, and a connection pool as large as the number of workers (retries are ours)."""
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.settings.max_workers, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.auth = (self.settings.api_key, self.settings.api_secret)
        session.headers.update({"Content-Type": "application/json", "User-Agent": "mparticle-quarantine-backfill"})
        return session

    def close(self) -> None:
        self._session.close()

    def check_credentials(self) -> None:
        """Post an empty bulk request: raises :class:`CredentialsRefused` if the key is refused."""
        self._post(b"[]", 0)

    def send(
        self, requests_to_send: Iterable[BulkRequest], on_result: Callable[[RequestResult], None] | None = None
    ) -> Iterator[RequestResult]:
        """Send requests with ``max_workers`` in flight; yield each result as it completes.

        At most ``2 * max_workers`` requests are held at once, so memory stays flat however many are
        sent. The first failure of any worker (refused credentials, a request no retry can fix, retries
        exhausted, the rejection breaker, or any unexpected exception) stops every worker; it is raised
        after every result already received was yielded, including the batches that a failed request
        had already had accepted (while narrowing down a 400), so their keys reach the ledger.
        """
        self._stop.clear()
        self._answered = self._rejected = 0
        workers = self.settings.max_workers
        pending: set[Future[RequestResult]] = set()
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="events-api") as pool:
            source = iter(requests_to_send)
            exhausted = False
            while pending or not exhausted:
                while not exhausted and failure is None and len(pending) < 2 * workers:
                    try:
                        request = next(source, None)
                    except Exception as error:  # packing failed: stop the workers, keep what they did
                        failure = error
                        self._stop.set()
                        request = None
                    if request is None:
                        exhausted = True
                    else:
                        pending.add(pool.submit(self.send_batches, request.batches))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()  # send_batches never raises: errors are in the result
                    if result.error is not None and not isinstance(result.error, _Stopped):
                        failure = failure or result.error
                        self._stop.set()
                        exhausted = True
                    if result.accepted or result.rejected or result.http_requests:
                        if on_result is not None:
                            on_result(result)
                        yield result
        if failure is not None:
            raise failure

    def send_batches(self, batches: list[OutgoingBatch]) -> RequestResult:
        """Send one request; on 400, isolate the refused batches by splitting in halves.

        Never raises: an error ends the request and is kept in ``result.error``, with the batches that
        were answered before it.
        """
        result = RequestResult()
        try:
            self._send_part(batches, result)
        except BaseException as error:
            result.error = error
            if not isinstance(error, _Stopped):
                self._stop.set()  # here, not in the caller: this worker's next request must not start
        return result

    def _send_part(self, batches: list[OutgoingBatch], result: RequestResult) -> None:
        status, message = self._post(request_body(batches), len(batches), result)
        if status == 202:
            result.accepted.extend(batches)
            self._count(len(batches), 0, message)
        elif len(batches) == 1:
            halves = batches[0].split()
            if halves is None:
                result.rejected.append((batches[0], message))
                self._count(1, 1, message)
                return
            # A merged batch: send its records apart, so that only those the API refuses are dead-lettered.
            result.split += 1
            for half in halves:
                self._send_part([half], result)
        else:
            middle = len(batches) // 2
            self._send_part(batches[:middle], result)
            self._send_part(batches[middle:], result)

    def _count(self, answered: int, rejected: int, message: str) -> None:
        """Keep the rejection rate; trip the breaker once enough batches were answered."""
        settings = self.settings
        with self._lock:
            self._answered += answered
            self._rejected += rejected
            tripped = (
                self._answered >= settings.breaker_min_batches
                and self._rejected > settings.breaker_rejection_rate * self._answered
            )
            if tripped and not self._stop.is_set():
                self._stop.set()
                raise TooManyRejections(
                    f"the Events API refused {self._rejected} of the first {self._answered} batches "
                    f"(over {settings.breaker_rejection_rate:.0%}); nothing more is sent. One refusal: {message}. "
                    "Check the input (its type, its API key) and the plan_version the replay names."
                )

    def _post(self, body: bytes, batches: int, result: RequestResult | None = None) -> tuple[int, str]:
        """POST with pacing and retries (tenacity); returns (202 or 400, message)."""
        result = result if result is not None else RequestResult()
        settings = self.settings
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.max_retries + 1),
            wait=RetryAfterOr(settings.backoff_seconds, settings.max_backoff_seconds),
            retry=tenacity.retry_if_exception_type(Retryable),
            sleep=self._stop.wait,  # a failure elsewhere ends the wait at once
            before_sleep=lambda _: _count_retry(result),
            reraise=True,
        )
        try:
            return retrying(self._attempt, body, batches, result)
        except Retryable as last:
            raise TransientSendError(
                f"the Events API did not accept a request of {batches} batches after "
                f"{settings.max_retries + 1} attempts (last: {last.problem})"
            ) from None

    def _attempt(self, body: bytes, batches: int, result: RequestResult) -> tuple[int, str]:
        """One paced POST: (202, "") or (400, message); raises :class:`Retryable` for what a retry may fix."""
        if self._stop.is_set():
            raise _Stopped
        self.pacer.acquire(batches, self._stop)
        if self._stop.is_set():  # stopped while waiting for the pace: send nothing more
            raise _Stopped
        result.http_requests += 1
        timeout = self.settings.timeout_seconds
        try:
            response = self._session.post(self.url, data=body, timeout=(timeout, timeout))
        except (requests.ConnectionError, requests.Timeout) as error:
            raise Retryable(type(error).__name__) from None
        status = response.status_code
        if status in (401, 403):
            self._stop.set()
            raise CredentialsRefused(
                f"the Events API refused the API key and secret (HTTP {status}); check the connection's "
                "login (API key) and password (secret) for this input"
            )
        if status in (200, 202):
            used = response.headers.get(RATE_HEADER)
            self.pacer.observe(float(used) if used and used.replace(".", "", 1).isdigit() else None)
            return 202, ""
        if status == 400:
            return 400, _error_message(response)
        if status in RETRYABLE_4XX or status >= 500:
            if status == 429:
                result.throttled += 1
                self.pacer.observe(None, throttled=True)
                raise Retryable("HTTP 429", retry_after(response.headers.get("Retry-After")))
            raise Retryable(f"HTTP {status}")
        self._stop.set()
        raise RequestRefused(
            f"the Events API answered HTTP {status} to POST {self.url}: {_error_message(response)}. "
            "No retry can fix this: check the connection's host (the pod URL, e.g. "
            "https://s2s.us1.mparticle.com) and the input it points to"
        )


def _count_retry(result: RequestResult) -> None:
    result.retries += 1


def _error_message(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors) or response.text
    except (ValueError, AttributeError):
        return response.text[:500] or f"HTTP {response.status_code}"
