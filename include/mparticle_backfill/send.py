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
from .coalesce import CoalescedBatch, CoalescedGroup, batches_per_record, member_payload, without_delivered
from .dedupe_check import without_keys
from .model import DEAD_LETTERED, REPLAYED, DeadLetter, DeadLetterSink, RecordRef, Replay, ReplayBatch

REJECTED_BY_API = "rejected_by_api"


@dataclass(frozen=True, slots=True)
class OutgoingBatch:
    """One encoded batch and what it delivers: the record(s) it comes from and its replay keys.

    :param ref: its record (of a merged batch: its first member).
    :param coalesced: a batch merged from several records (:mod:`.coalesce`): its members and the part
        each contributes, to end every member when it is answered and dead-letter each one's part.
    """

    ref: RecordRef
    replay_keys: tuple[str, ...]
    body: bytes
    coalesced: CoalescedBatch | None = None

    @classmethod
    def of(cls, ref: RecordRef, batch: ReplayBatch) -> OutgoingBatch:
        """A record's batch as the transform built it."""
        return cls(ref, batch.replay_keys, batch.encoded())

    @property
    def refs(self) -> tuple[RecordRef, ...]:
        return self.coalesced.refs if self.coalesced is not None else (self.ref,)

    def member_payload(self, ref: RecordRef) -> Any:
        """What ``ref`` contributes to this batch (the whole batch unless it was merged)."""
        if self.coalesced is not None and len(self.coalesced.members) > 1:
            return member_payload(self.coalesced, ref)
        return jsonio.loads(self.body)


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
    items: Iterable[OutgoingBatch],
    *,
    max_batches: int = limits.MAX_BATCHES_PER_REQUEST,
    max_bytes: int = limits.MAX_REQUEST_BYTES,
) -> Iterator[BulkRequest]:
    """Yield bulk requests in input order, each within both limits; streams in bounded memory."""
    current = BulkRequest()
    for batch in items:
        added = len(batch.body) + (1 if current.batches else 0)
        if current.batches and (len(current.batches) >= max_batches or current.size + added > max_bytes):
            yield current
            current = BulkRequest()
            added = len(batch.body)
        current.batches.append(batch)
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

    def batches(self, replays: Iterable[Replay]) -> Iterator[OutgoingBatch]:
        """The batches of ``replays``, in order, each record registered as waiting."""
        for replay in replays:
            self._pending[replay.ref] = (replay, len(replay.batches))
            for batch in replay.batches:
                yield OutgoingBatch.of(replay.ref, batch)
            replay.batches = []

    def groups(self, groups: Iterable[CoalescedGroup]) -> Iterator[OutgoingBatch]:
        """The batches of coalesced groups, each record registered as waiting on every batch it rides in."""
        for group in groups:
            waiting = batches_per_record(group.batches)
            for replay in group.replays:
                if waiting[replay.ref]:
                    self._pending[replay.ref] = (replay, waiting[replay.ref])
                else:  # nothing of it left to send (cannot happen after the dedupe check; kept safe)
                    self.summary.finish(replay)
            for batch in group.batches:
                yield OutgoingBatch(batch.members[0][0], batch.replay_keys, batch.body, batch)

    def accepted(self, batch: OutgoingBatch, reason: str = "sent") -> None:
        self.summary.counts["batches_accepted"] += 1
        for ref in batch.refs:
            self._answered(ref, (REPLAYED, reason))

    def rejected(self, batch: OutgoingBatch, message: str) -> None:
        self.summary.counts["batches_rejected"] += 1
        for ref in batch.refs:
            self.dead_letter(DeadLetter(ref, "send", REJECTED_BY_API, message, batch.member_payload(ref)))
            self._answered(ref, (DEAD_LETTERED, REJECTED_BY_API))

    def _answered(self, ref: RecordRef, outcome: tuple[str, str]) -> None:
        replay, waiting = self._pending[ref]
        replay.trail.append(outcome)
        if waiting <= 1:
            del self._pending[ref]
            self.summary.finish(replay)
        else:
            self._pending[ref] = (replay, waiting - 1)

    @property
    def waiting(self) -> int:
        return len(self._pending)


ACCEPTED_BY_EARLIER_TRY = "accepted_by_earlier_try"


def skip_accepted(
    replays: Iterable[Replay], accepted_keys: Set[str], summary: Summary, request_id_salt: str = ""
) -> Iterator[Replay]:
    """Drop the batches whose every replay key the ledger already holds, and the held keys of the others.

    A retried send task reads the ledger first: what an earlier try of this run had accepted is not
    sent again (it counts as replayed, reason ``accepted_by_earlier_try``). Keys of earlier *runs* were
    dropped by the dedupe check already, and one run holds the partition's lock at a time, so a key
    found here was written by this run.
    """
    for replay in replays:
        if accepted_keys:
            kept: list[ReplayBatch] = []
            for batch in replay.batches:
                done = [key in accepted_keys for key in batch.replay_keys]
                if not any(done):
                    kept.append(batch)
                    continue
                replay.trail.append((REPLAYED, ACCEPTED_BY_EARLIER_TRY))
                if all(done):
                    summary.counts[f"batches_skipped:{ACCEPTED_BY_EARLIER_TRY}"] += 1
                else:  # part of it rode in a merged batch that was accepted: send only the rest
                    summary.counts[f"keys_skipped:{ACCEPTED_BY_EARLIER_TRY}"] += sum(done)
                    kept.append(without_keys(replay.identity, batch, done, request_id_salt))
            replay.batches = kept
        if replay.empty:
            summary.finish(replay)
        else:
            yield replay


def skip_delivered(
    groups: Iterable[CoalescedGroup], accepted_keys: Set[str], summary: Summary, request_id_salt: str = ""
) -> Iterator[CoalescedGroup]:
    """:func:`skip_accepted` for batches already coalesced: a retried send rebuilds the same batches from
    the same stage file (same members, same ``source_request_id``), drops those an earlier try delivered
    wholly, and sends the others as they were: if an earlier try's batch was accepted but its keys never
    reached the ledger (the task was killed), mParticle drops the repeat by its ``source_request_id``.
    Skipping per record before coalescing would change the batches' make-up, and with it their ids."""
    for group in groups:
        if accepted_keys and group.batches:
            by_ref = {replay.ref: replay for replay in group.replays}
            kept: list[CoalescedBatch] = []
            for batch in group.batches:
                done = [key in accepted_keys for key in batch.replay_keys]
                if not any(done):
                    kept.append(batch)
                    continue
                for ref, keys in batch.members:
                    if any(key in accepted_keys for key in keys):
                        by_ref[ref].trail.append((REPLAYED, ACCEPTED_BY_EARLIER_TRY))
                if all(done):
                    summary.counts[f"batches_skipped:{ACCEPTED_BY_EARLIER_TRY}"] += 1
                else:
                    summary.counts[f"keys_skipped:{ACCEPTED_BY_EARLIER_TRY}"] += sum(done)
                    kept.append(without_delivered(batch, done, request_id_salt))
            group.batches = kept
        yield group


def pack_requests(replays: Iterable[Replay], tracker: SendTracker) -> Iterator[BulkRequest]:
    """The packing half of the send stage: bulk requests of the replays' batches, every record registered
    with ``tracker`` so that it ends once the API has answered for all of its batches."""
    return pack(tracker.batches(replays))


def pack_groups(groups: Iterable[CoalescedGroup], tracker: SendTracker) -> Iterator[BulkRequest]:
    """:func:`pack_requests` for coalesced groups: a merged batch ends each of its members when answered."""
    return pack(tracker.groups(groups))
