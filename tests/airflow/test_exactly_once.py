"""Exactly once with coalescing (dag.test, moto S3, the emulator over HTTP): one refused event costs only its
own record, and a batch whose answer was lost is never sent again under another id, whatever changed in the
date before the next run."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX, events_api_connection
from tests.airflow.test_dag_end_to_end import DAY, IN_WINDOW_MS, RUN_CONF, STATE, dead_letters, get_dag, lines, record
from tests.airflow.test_dag_end_to_end import report as report_of

pytestmark = pytest.mark.airflow
REFUSED = "Refused Event"


def arrivals(emulator) -> Counter:
    """Each event id the emulator accepted, with how many times (batches dropped as a repeated
    ``source_request_id`` are not accepted, so they do not count)."""
    return Counter(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def blocked(*batch_ids: int) -> Counter:
    """The blocked events of records made by :func:`record` (its first two events), once each."""
    return Counter(event for n in batch_ids for event in (n * 10, n * 10 + 1))


def test_one_refused_event_costs_only_its_own_record_and_a_rerun_sends_none_of_the_others(airflow_db, s3, connections):
    emulator = connections
    emulator.state.refuse_events = {REFUSED}  # a rule of mParticle's that no schema shows
    records = [record(9100 + n) for n in range(30)]  # one user: coalesced into one merged batch
    records[7]["events"][0]["data"]["event_name"] = REFUSED
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*records))

    run = get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf=RUN_CONF)
    assert run.state == "success"
    others = [9100 + n for n in range(30) if n != 7]
    assert arrivals(emulator) == blocked(*others)  # 29 records' 58 events, each once, in the same try
    assert emulator.state.stats["duplicates_dropped"] == 0

    (letter,) = [letter for letter in dead_letters(s3) if letter["stage"] == "send"]
    assert letter["source"].endswith(".txt:8") and letter["reason"] == "rejected_by_api"
    # The API's message, told of the dead-lettered batch: its event 0, named by replay key.
    assert "'Refused Event' is refused by a rule of this input" in letter["detail"]
    assert "replay key 9107:91070" in letter["detail"]
    assert "apart from the 29 other records" in letter["detail"]
    assert [e["data"]["event_id"] for e in letter["content"]["events"]] == [91070, 91071]
    assert letter["content"]["events"][0]["data"]["event_name"] == REFUSED

    summary = report_of(s3, run)
    assert summary["reconciled"] is True
    assert (summary["totals"]["replayed"], summary["totals"]["dead_lettered"]) == (29, 1)
    counts = summary["summary"]["counts"]
    # 30 -> 15 -> 8 -> 4 -> 2 -> 1: five cuts to isolate the refused record (one request each half)
    assert counts["batches_split"] == 5 and counts["batches_rejected"] == 1

    # Again: the 29 are in the ledger (none is sent again), the refused one is tried and refused again.
    batches_before = len(emulator.state.batches)
    again = get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf=RUN_CONF)
    assert again.state == "success"
    assert len(emulator.state.batches) == batches_before and emulator.state.stats["duplicates_dropped"] == 0
    second = report_of(s3, again)
    assert (second["totals"]["already_replayed"], second["totals"]["dead_lettered"]) == (29, 1)


def test_a_batch_whose_answer_was_lost_is_resent_as_it_was_after_late_data_changed_the_date(
    airflow_db, s3, connections, monkeypatch
):
    emulator = connections
    events_api_connection(monkeypatch, emulator, max_retries=1, max_workers=1)
    first = [record(8000 + n) for n in range(120)]
    late = [record(8500 + n, timestamp_ms=IN_WINDOW_MS - 3_600_000) for n in range(40)]  # earlier events
    for data in first + late:  # one user; merged batches of up to 128 KB, two to a request
        for event in data["events"]:
            event["data"].setdefault("custom_attributes", {})["note"] = "x" * 1500
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*first))

    # Run 1: the first request is answered; the second is processed but its answer is lost, twice (the
    # client's retry too): the send task gives up with batches accepted that the ledger does not know.
    emulator.state.fail_next.extend([None, "lost", "lost"])
    dag = get_dag()
    dag.get_task("send").retries = 0
    run = dag.test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf=RUN_CONF)
    assert run.state == "failed"
    accepted_in_run_1 = arrivals(emulator)
    assert accepted_in_run_1 and max(accepted_in_run_1.values()) == 1
    journal = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/journal/").get("Contents", [])
    assert journal  # what run 1 wrote down before sending

    # Late data for the same user, with earlier events: the next run merges the date differently.
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120110000000001_00002.txt", Body=lines(*late))
    again = get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf=RUN_CONF)
    assert again.state == "success"

    # Every event, of run 1 and late, arrived exactly once: the batches whose answer was lost went out
    # again as they were (same body, same id) and were dropped as repeats.
    assert arrivals(emulator) == blocked(*(8000 + n for n in range(120)), *(8500 + n for n in range(40)))
    assert emulator.state.stats["duplicates_dropped"] >= 2
    summary = report_of(s3, again)
    assert summary["reconciled"] is True
    totals = summary["totals"]  # run 1's answered requests are in the ledger: already replayed
    assert totals["already_replayed"] > 0 and totals["replayed"] + totals["already_replayed"] == 160
    counts = summary["summary"]["counts"]
    assert counts["journal_batches_resent"] >= 2
    # Everything written down was answered: the journal is empty again.
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/journal/").get("Contents", []) == []
