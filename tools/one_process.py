"""Every stage of the replay engine in one process, without Airflow and without sending.

For the benchmark and the property tests: the same stage steps the DAG's tasks run, chained per record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mparticle_backfill.accounting import Summary, advance
from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_step
from mparticle_backfill.extract import extract_records
from mparticle_backfill.filter_by_age import age_step
from mparticle_backfill.model import DeadLetterSink
from mparticle_backfill.select import SelectionSettings
from mparticle_backfill.send import BulkRequest, SendTracker, pack_requests
from mparticle_backfill.transform import TransformSettings, transform_step


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
    for request in pack_requests(replays, tracker):
        summary.counts["requests_packed"] += 1
        if on_request is not None:
            on_request(request)
        for batch in request.batches:
            tracker.accepted(batch, "dry_run")
    return summary
