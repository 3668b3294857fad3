"""Retries of the HTTP clients (Events API, Data Planning API), shared: what counts as retryable, and how
long to wait (the server's ``Retry-After`` if it gives one, capped, else exponential backoff with jitter)."""

from __future__ import annotations

import email.utils
import time

import tenacity


class Retryable(Exception):
    """One attempt failed in a way a retry may fix; ``retry_after`` is the server's wish, in seconds."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class RetryAfterOr(tenacity.wait.wait_base):
    """Wait what ``Retry-After`` asks (capped), else exponential backoff with full jitter."""

    def __init__(self, backoff_seconds: float, max_backoff_seconds: float) -> None:
        self.backoff = tenacity.wait_random_exponential(multiplier=backoff_seconds, max=max_backoff_seconds)
        self.cap = max_backoff_seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, Retryable) and error.retry_after is not None:
            return min(error.retry_after, self.cap)
        return self.backoff(retry_state)


def retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
