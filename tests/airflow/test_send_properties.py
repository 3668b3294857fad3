"""Every record ends exactly once and every event arrives once, on the path the DAG runs: its task bodies
(``tasks.plan_partition`` ... ``tasks.report``) and ``MParticleSendOperator`` in process, S3 through moto over
HTTP, the Events API emulator over HTTP, with randomly drawn users, refused events, lost answers, outages
longer than the client's retries (Airflow retries the task), a send that dies before its ledger is written,
and late data before the next run.

Airflow's task runner is left out (dag.test and the scheduler tests drive it); what runs here is the code
each task runs, in the DAG's order, with stage files, shards, slices, coalescing, the journal and the ledger
as a deployment has them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.airflow.conftest import BUCKET, PREFIX
from tests.airflow.test_dag_end_to_end import DAY, IN_WINDOW_MS, lines, record

pytestmark = pytest.mark.airflow
REFUSED = "Refused Event"
NOW = datetime(2026, 11, 21, 6, tzinfo=timezone.utc)


class Killed(BaseException):
    """The send task's process dying: no ``finally`` of the task writes anything after it."""


def user_records(user: int, count: int, first_id: int, hour: int, refused: set[int]) -> list[dict[str, Any]]:
    records = []
    for n in range(count):
        batch_id = first_id + n
        data = record(batch_id, timestamp_ms=IN_WINDOW_MS + hour * 3_600_000 + n * 1000, mpid=str(5_000_000 + user))
        for event in data["events"]:
            event["data"].setdefault("custom_attributes", {})["note"] = "x" * 900  # a few merged batches a user
        if batch_id in refused:
            data["events"][0]["data"]["event_name"] = REFUSED
        records.append(data)
    return records


def reset(s3, emulator) -> None:
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    while True:
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        if not listed:
            break
        for item in listed:
            s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    emulator.state.reset()
    emulator.state.refuse_events = {REFUSED}


def run_date(run_id: str, conf: dict[str, Any], *, kill_after_ledger_parts: int | None = None) -> dict[str, Any] | None:
    """One run of the date through the DAG's task bodies; the send task retried as Airflow would (3 retries).
    Returns the report, or None when the run failed (its lock released by the teardown, as the DAG does)."""
    from mparticle_backfill_airflow import tasks
    from mparticle_backfill_airflow.operators import MParticleSendOperator
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    s3 = tasks.quarantine_s3()
    planned = tasks.plan_partition(
        {"bucket": BUCKET, "prefix": PREFIX},
        {"partition_date": DAY, "reference_time": NOW.isoformat(), **conf},
        run_id=run_id,
        data_interval_start=None,
        run_after=None,
        s3=s3,
        now=NOW,
        run_state=lambda dag_id, run: "failed",  # an earlier run of the date has ended
    )
    try:
        extracted = [tasks.extract(chunk, s3) for chunk in planned]
        filtered = [tasks.filter_by_age(chunk, s3) for chunk in extracted]
        transformed = [tasks.transform(chunk, s3, extracted) for chunk in filtered]
        deduped = [tasks.dedupe_check(shard, s3) for shard in tasks.plan_shards(transformed)]
        sent = []
        original_put = QuarantineS3Hook.put_bytes
        ledger_parts = itertools.count(1)

        def put_bytes(self, bucket, key, body, content_type="application/json"):
            dies = kill_after_ledger_parts is not None and "/ledger/" in key
            if dies and next(ledger_parts) > kill_after_ledger_parts:
                raise Killed(key)  # the process died before this ledger part was written
            return original_put(self, bucket, key, body, content_type)

        for shard in deduped:
            for try_number in range(1, 5):
                operator = MParticleSendOperator(task_id="send", chunk=shard)
                QuarantineS3Hook.put_bytes = put_bytes
                try:
                    sent.append(operator.execute({"ti": SimpleNamespace(try_number=try_number)}))
                    break
                except Killed:
                    return None  # the worker is gone: the run fails (the teardown still releases the lock)
                except Exception:
                    if try_number == 4:
                        return None
                finally:
                    QuarantineS3Hook.put_bytes = original_put
        outputs = [planned, extracted, filtered, transformed, deduped, sent]
        tasks.report(outputs, s3)
        return s3_report(s3, planned[0]["run_key"])
    finally:
        tasks.release_partition(planned, s3)


def s3_report(s3, run_key: str) -> dict[str, Any]:
    import json

    body = s3.read_key(f"{PREFIX}/_backfill/{DAY}/reports/{run_key}.json", BUCKET)
    return json.loads(body)


def arrivals(emulator) -> Counter:
    return Counter(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def blocked(records: list[dict[str, Any]]) -> Counter:
    """The blocked events of :func:`record`'s records (their first two), once each."""
    return Counter(int(b["batch_id"]) * 10 + i for b in records for i in (0, 1))


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    users=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    late=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    refused_draw=st.lists(st.integers(0, 40), max_size=2),
    answers=st.lists(st.sampled_from([None, None, "lost", 503]), max_size=8),
    kill_after=st.none() | st.integers(0, 2),
    coalesce=st.booleans(),
    shards=st.sampled_from([None, 2]),
)
def test_every_record_ends_once_and_every_event_arrives_once(
    airflow_db, s3, connections, users, late, refused_draw, answers, kill_after, coalesce, shards
):
    emulator = connections
    reset(s3, emulator)
    first_ids = [100_000 * (user + 1) for user in range(len(users))]
    refused = {first_ids[0] + n for n in refused_draw if n < users[0]}  # the first user's records
    first = [r for u, count in enumerate(users) for r in user_records(u, count, first_ids[u], 1, refused)]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*first))
    conf = {"coalesce": coalesce, **({"shards": shards} if shards else {})}

    # Run 1: answers lost, outages, maybe a send that dies before writing its ledger.
    emulator.state.fail_next.extend(answers)
    report_1 = run_date("manual__run1", conf, kill_after_ledger_parts=kill_after)
    emulator.state.fail_next.clear()
    assert max(arrivals(emulator).values(), default=0) <= 1
    if report_1 is not None:
        assert report_1["reconciled"] is True

    # Late data for the same users (earlier events), then the date again: every event once.
    late_records = [
        r for u, count in enumerate(late[: len(users)]) for r in user_records(u, count, first_ids[u] + 50_000, 0, set())
    ]
    if late_records:
        s3.put_object(
            Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120110000000001_00002.txt", Body=lines(*late_records)
        )
    report_2 = run_date("manual__run2", {**conf, "coalesce": not coalesce})  # another make-up of every batch
    assert report_2 is not None and report_2["reconciled"] is True
    everything = first + late_records
    good = [r for r in everything if int(r["batch_id"]) not in refused]
    assert arrivals(emulator) == blocked(good)  # each once: no refused record's event, no repeat
    totals = report_2["totals"]
    assert totals["dead_lettered"] == len(refused)
    assert totals["replayed"] + totals["already_replayed"] + totals["dead_lettered"] == len(everything)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{DAY}/journal/").get("Contents")

    # And again: nothing is sent.
    before = len(emulator.state.batches)
    report_3 = run_date("manual__run3", conf)
    assert report_3 is not None and report_3["reconciled"] is True
    assert len(emulator.state.batches) == before
    assert report_3["totals"]["already_replayed"] == len(good)
