"""Exact, fast JSON: 64-bit integers stay Python ints (never a float)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_TRAILING = re.compile(r"trailing characters \(byte (\d+)\)")

DecodeError = msgspec.DecodeError


def loads(raw: bytes | str) -> Any:
    """Decode one JSON document. Big integers stay exact; NaN and other non-JSON are refused."""
    return _decoder.decode(raw)


def dumps(value: Any) -> bytes:
    """Encode compactly (no spaces), as the Events API and our NDJSON files carry it."""
    return _encoder.encode(value)


def iter_documents(raw: bytes) -> Iterator[Any]:
    """Decode one line holding one or more concatenated JSON documents (as Firehose writes them).

    Raises :class:`DecodeError` at the first part that is not JSON.
    """
    rest = raw
    while rest:
        try:
            yield _decoder.decode(rest)
            return
        except msgspec.DecodeError as error:
            match = _TRAILING.search(str(error))
            if match is None:
                raise
            end = int(match.group(1)) - 1  # msgspec counts bytes from 1
            yield _decoder.decode(rest[:end])
            rest = rest[end:].lstrip()
