"""Send, the pure part: pack replay batches into bulk requests (at most 100 batches, 256 KB) and end each
record once the API has answered for every one of its batches.

The HTTP client and the operator that drive it live in the Airflow package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from . import jsonio, limits
from .accounting import Summary
from .coalesce import CoalescedBatch, CoalescedGroup, batches_per_record, member_payload, split_members
from .dedupe_check import without_keys
from .model import DEAD_LETTERED, REPLAYED, DeadLetter, DeadLetterSink, RecordRef, Replay, ReplayBatch

REJECTED_BY_API = "rejected_by_api"
# The JSON path of an event in an Events API error message ("batch 0: $.events[3].data: ...").
_EVENT_PATH = re.compile(r"\$\.events\[(\d+)\]")


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
    context_hash: int = 0  # the user context of its records (the shard that journals and resends it)
    split_from: int = 0  # how many records were in the merged batch the API refused, that this is a part of

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

    def split(self) -> tuple[OutgoingBatch, OutgoingBatch] | None:
        """A refused merged batch in two halves by its records (:func:`.coalesce.split_members`), to send
        apart so that only what the API refuses is dead-lettered; None for a batch of one record."""
        halves = split_members(self.coalesced) if self.coalesced is not None else None
        if halves is None:
            return None
        records = self.split_from or len(self.refs)
        return tuple(  # type: ignore[return-value]
            OutgoingBatch(half.members[0][0], half.replay_keys, half.body, half, self.context_hash, records)
            for half in halves
        )


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
                yield OutgoingBatch(batch.members[0][0], batch.replay_keys, batch.body, batch, group.context_hash)

    def accepted(self, batch: OutgoingBatch, reason: str = "sent") -> None:
        self.summary.counts["batches_accepted"] += 1
        for ref in batch.refs:
            self._answered(ref, (REPLAYED, reason))

    def rejected(self, batch: OutgoingBatch, message: str) -> None:
        self.summary.counts["batches_rejected"] += 1
        detail = refusal_detail(batch, message)
        for ref in batch.refs:
            self.dead_letter(DeadLetter(ref, "send", REJECTED_BY_API, detail, batch.member_payload(ref)))
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


def refusal_detail(batch: OutgoingBatch, message: str) -> str:
    """The API's message about a refused batch, told in terms of the dead letter it goes with.

    The client narrows a refused request down to the batch sent alone (its message then speaks of
    ``batch 0``), and a refused merged batch down to the record whose part the API refuses
    (:meth:`OutgoingBatch.split`); the dead letter's ``content`` is that part, so the event index in the
    message points into it. The event's replay key is added, so the event can be found whatever the index.
    """
    detail = message
    found = _EVENT_PATH.search(message)
    if found is not None:
        index = int(found.group(1))
        events = len(jsonio.loads(batch.body).get("events") or ())
        if index < events and index < len(batch.replay_keys):
            detail += f" (event {index} of the dead-lettered batch: replay key {batch.replay_keys[index]})"
    if batch.split_from:
        detail += f"; refused when sent apart from the {batch.split_from - 1} other records it had been merged with"
    return detail


ACCEPTED_BY_EARLIER_TRY = "accepted_by_earlier_try"
RESENT_FROM_JOURNAL = "resent_from_journal"


def skip_accepted(
    replays: Iterable[Replay],
    accepted_keys: Set[str],
    summary: Summary,
    request_id_salt: str = "",
    answered: Mapping[str, tuple[str, str]] | None = None,
) -> Iterator[Replay]:
    """Drop, before coalescing, the parts of each record that need no send: keys the ledger holds, and
    keys the resent journal entries just answered (``answered``: key -> (outcome, reason)).

    A retried send task reads the ledger first: what an earlier try of this run had accepted is not
    sent again (it counts as replayed, reason ``accepted_by_earlier_try``). Keys of earlier *runs* were
    dropped by the dedupe check already, and one run holds the partition's lock at a time, so a key
    found here was written by this run. A key of a batch sent before whose answer was lost is never
    here: the send journal resent that batch verbatim first (:mod:`.journal`), and ``answered`` says
    how it ended (``resent_from_journal``, or dead-lettered). What is left is coalesced afresh: none of
    it was ever sent, so its batches may take any make-up and ids.
    """
    answered = answered or {}
    for replay in replays:
        if accepted_keys or answered:
            kept: list[ReplayBatch] = []
            for batch in replay.batches:
                done = [key in answered or key in accepted_keys for key in batch.replay_keys]
                if not any(done):
                    kept.append(batch)
                    continue
                outcomes = {
                    answered.get(key, (REPLAYED, ACCEPTED_BY_EARLIER_TRY))
                    for key, d in zip(batch.replay_keys, done, strict=True)
                    if d
                }
                replay.trail.extend(sorted(outcomes))
                resent = any(key in answered for key in batch.replay_keys)
                reason = RESENT_FROM_JOURNAL if resent else ACCEPTED_BY_EARLIER_TRY
                if all(done):
                    summary.counts[f"batches_skipped:{reason}"] += 1
                    summary.counts["batches_before_coalescing"] += 1  # merged (or not) by the try that sent it
                else:  # part of it rode in a batch sent before: send only the rest
                    summary.counts[f"keys_skipped:{reason}"] += sum(done)
                    kept.append(without_keys(replay.identity, batch, done, request_id_salt))
            replay.batches = kept
        if replay.empty:
            summary.finish(replay)
        else:
            yield replay


def pack_groups(groups: Iterable[CoalescedGroup], tracker: SendTracker) -> Iterator[BulkRequest]:
    """Bulk requests of the groups' batches, every record registered with ``tracker``: a batch (merged or not)
    ends each of its members when it is answered, a record once all its batches are."""
    return pack(tracker.groups(groups))
