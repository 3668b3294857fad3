"""Exceptions of the replay engine; the Airflow layer maps them to fail-fast or retry."""

from __future__ import annotations


class BackfillError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidSettings(BackfillError):
    """A setting is invalid; names the setting. Retrying cannot help."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"invalid setting {setting!r}: {problem}")
        self.setting = setting
        self.problem = problem


class FixRuleError(InvalidSettings):
    """A fix rule is invalid; names the rule and what is wrong with it."""

    def __init__(self, rule: str, problem: str) -> None:
        BackfillError.__init__(self, f"invalid fix rule {rule}: {problem}")
        self.setting = "fixes"
        self.rule = rule
        self.problem = problem


class FixFailed(BackfillError):
    """A valid rule could not be applied to one event (e.g. a value that cannot be cast)."""

    def __init__(self, rule: str, problem: str) -> None:
        super().__init__(f"fix rule {rule!r} failed: {problem}")
        self.rule = rule


class CredentialsRefused(BackfillError):
    """The Events API refused the API key and secret (401/403). Never retried."""


class TransientSendError(BackfillError):
    """The Events API stayed unavailable (5xx, 429, timeouts) after every retry."""


class RequestRefused(BackfillError):
    """The Events API refused a request in a way no retry can fix (404, 405, 413, 415, 422, ...)."""


class TooManyRejections(BackfillError):
    """The Events API refused more batches than the breaker allows: a configuration problem, not data."""
