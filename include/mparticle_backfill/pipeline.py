"""The stages chained over iterators: what each Airflow task runs on its chunk, and one-process runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import jsonio
from .accounting import Summary
from .dedupe_check import DedupeCheck
from .extract import iter_records
from .filter_by_age import filter_by_age
from .model import DEAD_LETTERED, REPLAYED, BadRecord, DeadLetter, RecordRef, Replay
from .pack import BulkRequest, OutgoingBatch, pack
from .select import SelectionSettings, select
from .transform import TransformSettings, transform

DeadLetterSink = Callable[[DeadLetter], None]
REJECTED_BY_API = "rejected_by_api"


def extract_stage(
    objects: Iterable[tuple[str, Any]], selection: SelectionSettings, summary: Summary, dead_letter: DeadLetterSink
) -> Iterator[Replay]:
    """Read objects ``(key, byte stream)`` and select what to replay; bad lines are dead-lettered."""
    for key, stream in objects:
        summary.counts["objects_read"] += 1
        for item in iter_records(key, stream):
            summary.read()
            if isinstance(item, BadRecord):
                summary.bad_record(item)
                dead_letter(DeadLetter(item.ref, "extract", item.reason, item.detail, item.raw))
                continue
            replay = select(item, selection, summary.counts)
            if replay.empty:
                summary.finish(replay)
            else:
                yield replay


Step = Callable[[Replay], object]


def _advance(replays: Iterable[Replay], steps: tuple[Step, ...], summary: Summary) -> Iterator[Replay]:
    """Apply stage steps to each record in turn; a record with nothing left ends there and is counted."""
    for replay in replays:
        for step in steps:
            step(replay)
            if replay.empty:
                summary.finish(replay)
                break
        else:
            yield replay


def _age_step(cutoff_ms: int, summary: Summary) -> Step:
    return lambda replay: filter_by_age(replay, cutoff_ms, summary.counts)


def _transform_step(settings: TransformSettings, summary: Summary, dead_letter: DeadLetterSink) -> Step:
    return lambda replay: transform(replay, settings, summary.counts, dead_letter)


def _dedupe_step(check: DedupeCheck, summary: Summary) -> Step:
    return lambda replay: check.check(replay, summary.counts)


def filter_by_age_stage(replays: Iterable[Replay], cutoff_ms: int, summary: Summary) -> Iterator[Replay]:
    """Drop what is older than the window; records with nothing left end here."""
    return _advance(replays, (_age_step(cutoff_ms, summary),), summary)


def transform_stage(
    replays: Iterable[Replay], settings: TransformSettings, summary: Summary, dead_letter: DeadLetterSink
) -> Iterator[Replay]:
    """Build replay batches; records with no valid batch end here."""
    return _advance(replays, (_transform_step(settings, summary, dead_letter),), summary)


def dedupe_stage(replays: Iterable[Replay], check: DedupeCheck, summary: Summary) -> Iterator[Replay]:
    """Drop what was replayed before; records with nothing left end here."""
    return _advance(replays, (_dedupe_step(check, summary),), summary)


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


def pack_stage(replays: Iterable[Replay], tracker: SendTracker) -> Iterator[BulkRequest]:
    """Bulk requests of the replays' batches, every record registered with ``tracker``."""
    return pack(tracker.batches(replays))


def run_local(
    objects: Iterable[tuple[str, Any]],
    *,
    selection: SelectionSettings,
    cutoff_ms: int,
    transform_settings: TransformSettings,
    dedupe: DedupeCheck,
    dead_letter: DeadLetterSink,
    on_request: Callable[[BulkRequest], None] | None = None,
) -> Summary:
    """Every stage in one process, without sending: each packed request goes to ``on_request``.

    Used by the benchmark and the local dry run; records count as replayed with reason ``dry_run``.
    """
    summary = Summary()
    # Each record goes through every stage before the next is read: the stages of the Airflow tasks,
    # chained without a generator per stage.
    steps = (
        _age_step(cutoff_ms, summary),
        _transform_step(transform_settings, summary, dead_letter),
        _dedupe_step(dedupe, summary),
    )
    replays = _advance(extract_stage(objects, selection, summary, dead_letter), steps, summary)
    tracker = SendTracker(summary, dead_letter)
    for request in pack_stage(replays, tracker):
        summary.counts["requests_packed"] += 1
        if on_request is not None:
            on_request(request)
        for batch in request.batches:
            tracker.accepted(batch, "dry_run")
    return summary
