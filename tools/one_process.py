"""Every stage of the replay engine in one process, without Airflow and without sending.

For the benchmark and the property tests: the same stage steps the DAG's tasks run, chained per record
(:func:`run_in_one_process`), or stage by stage through stage files (:func:`run_staged`). What the send task
does with the API's answers is tested on the DAG's own path (tests/airflow/test_send_properties.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mparticle_backfill import jsonio
from mparticle_backfill.accounting import Summary, advance
from mparticle_backfill.coalesce import CoalesceSettings, coalesce
from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_replays, dedupe_step
from mparticle_backfill.extract import extract_records
from mparticle_backfill.filter_by_age import age_step, filter_replays
from mparticle_backfill.model import DeadLetterSink, Replay
from mparticle_backfill.select import SelectionSettings
from mparticle_backfill.send import BulkRequest, SendTracker, pack_groups
from mparticle_backfill.transform import TransformSettings, transform_replays, transform_step


def run_in_one_process(
    objects: Iterable[tuple[str, Any]],
    *,
    selection: SelectionSettings,
    cutoff_ms: int,
    transform_settings: TransformSettings,
    dedupe: DedupeCheck,
    dead_letter: DeadLetterSink,
    on_request: Callable[[BulkRequest], None] | None = None,
) -> Summary:
    """Run every stage; each packed request goes to ``on_request``; records count as replayed (``dry_run``)."""
    summary = Summary()
    # Each record goes through every stage before the next is read: the steps of the Airflow tasks,
    # chained without a generator per stage.
    steps = (
        age_step(cutoff_ms, summary),
        transform_step(transform_settings, summary, dead_letter),
        dedupe_step(dedupe, summary),
    )
    replays = advance(extract_records(objects, selection, summary, dead_letter), steps, summary)
    tracker = SendTracker(summary, dead_letter)
    # One batch per record, as the transform built them (coalescing off: the engine, not the merge, is measured).
    for request in pack_groups(coalesce(replays, CoalesceSettings(coalesce=False), summary.counts), tracker):
        summary.counts["requests_packed"] += 1
        if on_request is not None:
            on_request(request)
        for batch in request.batches:
            tracker.accepted(batch, "dry_run")
    return summary


def _through_stage_file(replays: Iterable[Replay]) -> list[Replay]:
    """What a stage file does to replays between two tasks: encode as NDJSON, decode again."""
    lines = b"".join(jsonio.dumps(replay.to_json()) + b"\n" for replay in replays)
    return [Replay.from_json(jsonio.loads(line)) for line in lines.splitlines() if line]


def run_staged(
    chunks: Iterable[Iterable[tuple[str, Any]]],
    *,
    selection: SelectionSettings,
    cutoff_ms: int,
    transform_settings: TransformSettings,
    ledger: Iterable[str] = (),
    dead_letter: DeadLetterSink,
) -> Summary:
    """Every stage in one process, stage by stage: per chunk, each stage's output through a stage file; the
    dedupe check over all chunks (with an earlier run's ``ledger``); then the send task's pure part (its
    records merged per user and packed: ``coalesce`` + ``pack_groups``), every batch answered as accepted.

    :return: every stage's summary added up, as the report task adds them.
    """
    total = Summary()
    transformed: list[list[Replay]] = []
    for objects in chunks:
        extract_summary, filter_summary, transform_summary = Summary(), Summary(), Summary()
        extracted = _through_stage_file(extract_records(objects, selection, extract_summary, dead_letter))
        filtered = _through_stage_file(filter_replays(extracted, cutoff_ms, filter_summary))
        transformed.append(
            _through_stage_file(transform_replays(filtered, transform_settings, transform_summary, dead_letter))
        )
        total.merge(extract_summary).merge(filter_summary).merge(transform_summary)
    check = DedupeCheck(ledger)
    for replays in transformed:
        dedupe_summary = Summary()
        deduped = _through_stage_file(dedupe_replays(replays, check, dedupe_summary))
        send_summary = Summary()
        tracker = SendTracker(send_summary, dead_letter)
        for request in pack_groups(coalesce(deduped, CoalesceSettings(), send_summary.counts), tracker):
            for batch in request.batches:
                tracker.accepted(batch, "dry_run")
        assert tracker.waiting == 0
        total.merge(dedupe_summary).merge(send_summary)
    return total
