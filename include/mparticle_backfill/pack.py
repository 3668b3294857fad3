"""Pack: group replay batches into bulk requests of at most 100 batches and 256 KB."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import jsonio, limits
from .model import RecordRef, ReplayBatch


@dataclass(frozen=True, slots=True)
class OutgoingBatch:
    """One encoded batch and what it delivers: the record it comes from and its replay keys."""

    ref: RecordRef
    replay_keys: tuple[str, ...]
    body: bytes


@dataclass(slots=True)
class BulkRequest:
    """Batches to send in one ``POST /v2/bulkevents``."""

    batches: list[OutgoingBatch] = field(default_factory=list)
    size: int = 2

    @property
    def body(self) -> bytes:
        return request_body(self.batches)


def request_body(batches: Iterable[OutgoingBatch]) -> bytes:
    """The JSON array of ``batches``, as sent."""
    return b"[" + b",".join(batch.body for batch in batches) + b"]"


def pack(
    items: Iterable[tuple[RecordRef, ReplayBatch]],
    *,
    max_batches: int = limits.MAX_BATCHES_PER_REQUEST,
    max_bytes: int = limits.MAX_REQUEST_BYTES,
) -> Iterator[BulkRequest]:
    """Yield bulk requests in input order, each within both limits; streams in bounded memory."""
    current = BulkRequest()
    for ref, batch in items:
        body = batch.body if batch.body is not None else jsonio.dumps(batch.payload)
        added = len(body) + (1 if current.batches else 0)
        if current.batches and (len(current.batches) >= max_batches or current.size + added > max_bytes):
            yield current
            current = BulkRequest()
            added = len(body)
        current.batches.append(OutgoingBatch(ref, batch.replay_keys, body))
        current.size += added
    if current.batches:
        yield current


def payloads(request: BulkRequest) -> list[Any]:
    """The decoded batches of a request (for dry-run files and tests)."""
    return [jsonio.loads(batch.body) for batch in request.batches]
