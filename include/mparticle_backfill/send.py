"""Send, the pure part: pack replay batches into bulk requests (at most 100 batches, 256 KB) and end each
record once the API has answered for every one of its batches.

The HTTP client and the operator that drive it live in the Airflow package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from dataclasses import dataclass, field
from typing import Any

from . import jsonio, limits
from .accounting import Summary
from .model import DEAD_LETTERED, REPLAYED, DeadLetter, DeadLetterSink, RecordRef, Replay, ReplayBatch

REJECTED_BY_API = "rejected_by_api"


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


class SendTracker:
    """Ends each record once the API has answered for every one of its batches.

    Records are registered as their batches are packed; answers may come in any order (concurrent
    sends). Only records still waiting for an answer are held in memory.
    """

    def __init__(self, summary: Summary, dead_letter: DeadLetterSink) -> None:
        self.summary = summary
        self.dead_letter = dead_letter
        self._pending: dict[RecordRef, tuple[Replay, int]] = {}

    def batches(self, replays: Iterable[Replay]) -> Iterator[tuple[RecordRef, Any]]:
        """The batches of ``replays``, in order, each record registered as waiting."""
        for replay in replays:
            self._pending[replay.ref] = (replay, len(replay.batches))
            for batch in replay.batches:
                yield replay.ref, batch
            replay.batches = []

    def accepted(self, batch: OutgoingBatch, reason: str = "sent") -> None:
        self.summary.counts["batches_accepted"] += 1
        self._answered(batch, (REPLAYED, reason))

    def rejected(self, batch: OutgoingBatch, message: str) -> None:
        self.summary.counts["batches_rejected"] += 1
        self.dead_letter(DeadLetter(batch.ref, "send", REJECTED_BY_API, message, jsonio.loads(batch.body)))
        self._answered(batch, (DEAD_LETTERED, REJECTED_BY_API))

    def _answered(self, batch: OutgoingBatch, outcome: tuple[str, str]) -> None:
        replay, waiting = self._pending[batch.ref]
        replay.trail.append(outcome)
        if waiting <= 1:
            del self._pending[batch.ref]
            self.summary.finish(replay)
        else:
            self._pending[batch.ref] = (replay, waiting - 1)

    @property
    def waiting(self) -> int:
        return len(self._pending)


ACCEPTED_BY_EARLIER_TRY = "accepted_by_earlier_try"


def skip_accepted(replays: Iterable[Replay], accepted_keys: Set[str], summary: Summary) -> Iterator[Replay]:
    """Drop the batches whose every replay key the ledger already holds.

    A retried send task reads the ledger first: what an earlier try of this run had accepted is not
    sent again (it counts as replayed, reason ``accepted_by_earlier_try``). Keys of earlier *runs* were
    dropped by the dedupe check already, and one run holds the partition's lock at a time, so a key
    found here was written by this run.
    """
    for replay in replays:
        if accepted_keys:
            kept = []
            for batch in replay.batches:
                if batch.replay_keys and all(key in accepted_keys for key in batch.replay_keys):
                    summary.counts[f"batches_skipped:{ACCEPTED_BY_EARLIER_TRY}"] += 1
                    replay.trail.append((REPLAYED, ACCEPTED_BY_EARLIER_TRY))
                else:
                    kept.append(batch)
            replay.batches = kept
        if replay.empty:
            summary.finish(replay)
        else:
            yield replay


def pack_requests(replays: Iterable[Replay], tracker: SendTracker) -> Iterator[BulkRequest]:
    """The packing half of the send stage: bulk requests of the replays' batches, every record registered
    with ``tracker`` so that it ends once the API has answered for all of its batches."""
    return pack(tracker.batches(replays))
