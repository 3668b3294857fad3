"""Exact values as the Events API wants them: 64-bit ids and Unix times as integers, ids as strings.

Quarantine files carry 64-bit numbers as decimal strings (``"event_id": "-7778608565459706417"``); the
Events API takes them as JSON integers. Nothing here goes through a float.
"""

from __future__ import annotations

from typing import Any

_EXACT_FLOAT_LIMIT = 2.0**53  # floats above this are not exact integers
# Fields of an event's ``data`` that the API takes as 64-bit integers.
INTEGER_EVENT_FIELDS = ("timestamp_unixtime_ms", "event_id", "session_id", "session_start_unixtime_ms")


def id_string(value: Any) -> str | None:
    """A 64-bit id as an exact string, whether it came as a JSON string or integer; else None."""
    if type(value) is str and value and not value[0].isspace() and not value[-1].isspace():
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def exact_int(value: Any) -> int | None:
    """An exact int from an int, a decimal string (as ``int()`` reads it: optional sign and spaces) or a
    float that is a whole number small enough to be exact (below 2**53, e.g. a Unix time in ms); else None.
    """
    kind = type(value)
    if kind is int:
        return value
    if kind is str:
        try:
            return int(value)
        except ValueError:
            return None
    if kind is float and value.is_integer() and abs(value) < _EXACT_FLOAT_LIMIT:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return None


def api_event(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``event`` (and of its ``data``) with its 64-bit fields as exact ints where they convert.

    A value that does not convert is left as it is, for validation to refuse with a clear reason.
    The original event is never changed.
    """
    copy = event.copy()
    data = event.get("data")
    if type(data) is dict:
        data = copy["data"] = data.copy()
        for name in INTEGER_EVENT_FIELDS:
            value = data.get(name)
            if type(value) is str:
                try:  # noqa: SIM105 (hot path: suppress() costs a context manager per field)
                    data[name] = int(value)
                except ValueError:
                    pass  # left as is: validation says which field is not an integer
    return copy
