"""The DAG where real runs go wrong (dag.test, moto S3, the emulator): a send retried half-way, several
chunks holding the same batch, the flat layout, and a replay window measured from the replay."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX, events_api_connection
from tests.airflow.test_dag_end_to_end import DAY, RUN_CONF, STATE, get_dag, lines, record, report

pytestmark = pytest.mark.airflow


def events_sent(emulator) -> list[int]:
    return sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def ledger_keys(s3) -> dict[str, list[str]]:
    found = {}
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/ledger/").get("Contents", []):
        found[item["Key"]] = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode().split()
    return found


@pytest.mark.parametrize(
    ("coalesce", "users"), [(False, 1), (True, 1), (True, 25)], ids=["one-batch-per-record", "coalesced", "in-slices"]
)
def test_a_send_that_fails_half_way_is_retried_by_airflow_and_sends_only_the_rest(
    airflow_db, s3, connections, monkeypatch, coalesce, users
):
    emulator = connections
    events_api_connection(monkeypatch, emulator, max_retries=1, max_workers=1)
    records = [record(8000 + n) for n in range(250)]
    if users > 1:  # 25 users; send coalesces its shard in slices of 40 records (7 slices), each user in one
        monkeypatch.setattr("mparticle_backfill.coalesce.SLICE_REPLAYS", 40)
        for n, data in enumerate(records):
            data["mpid"] = str(4_000_000 + n % users)
    if coalesce:  # one user's 250 batches merge into a few of up to 128 KB: make them fill several requests
        for data in records:
            for event in data["events"]:
                event["data"].setdefault("custom_attributes", {})["note"] = "x" * 1500
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*records))
    # The first request goes through; the second meets an outage longer than the client's retries.
    emulator.state.fail_next.extend([None, 503, 503])
    dag = get_dag()
    send = dag.get_task("send")
    send.retry_delay = timedelta(0)  # Airflow retries the task at once instead of after a minute
    send.retry_exponential_backoff = False
    run = dag.test(
        logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, "coalesce": coalesce}
    )
    assert run.state == "success"

    expected = sorted(e for n in range(250) for e in ((8000 + n) * 10, (8000 + n) * 10 + 1))
    assert events_sent(emulator) == expected  # every blocked event once
    assert emulator.state.stats["duplicates_dropped"] == 0  # the retry did not resend what was accepted

    parts = ledger_keys(s3)
    keys = [key for part in parts.values() for key in part]
    assert len(keys) == len(set(keys)) == 250 * 3  # two events and the user attributes of each record
    names = [key.rsplit("/", 1)[-1].split("-") for key in parts]  # shard-00000-of-00001-h1-try1-...
    assert {name[4] for name in names} == {"h1"}  # placed by version 1 of the user-context hash
    tries = {name[5] for name in names}
    assert tries == {"try1", "try2"}  # the failed try's keys were kept, not overwritten by the retry

    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["totals"]["replayed"] == 250
    counts = summary["summary"]["counts"]
    if not coalesce:
        assert counts["batches_skipped:accepted_by_earlier_try"] == 100
        # Try 1 wrote every batch to the send journal before sending; try 2 resent the 150 it had not
        # seen answered, verbatim (same ids), before anything else, and coalesced nothing again.
        assert counts["journal_batches_resent"] == counts["batches_skipped:resent_from_journal"] == 150
        assert counts["batches_accepted"] == 150
    else:  # merged: far fewer batches than records; the retry skipped what try 1's merged batches delivered
        assert counts["batches_skipped:accepted_by_earlier_try"] > 0
        assert counts["journal_batches_resent"] > 0  # and resent what they had not, as they were
        assert counts["batches_after_coalescing"] <= counts["batches_before_coalescing"] / 10
        # Each try cut the shard into the same slices (250 replays, 40 a slice) and built the same batches.
        assert counts["shard_slices"] == (7 if users > 1 else 1)
        batch_ids = [batch["source_request_id"] for batch in emulator.state.batches]
        assert len(batch_ids) == len(set(batch_ids))
        per_user = Counter(batch.get("mpid") for batch in emulator.state.batches)
        assert len(per_user) == users


def test_several_chunks_with_the_same_batch_in_two_of_them(airflow_db, s3, connections):
    emulator = connections
    keys = [f"{PREFIX}/{DAY}/mPTravel_2026112009000000000{n}_0000{n}.txt" for n in (1, 2, 3)]
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=lines(record(4001), record(4002)))
    s3.put_object(Bucket=BUCKET, Key=keys[1], Body=lines(record(4002), record(4003)))  # 4002 delivered twice
    s3.put_object(Bucket=BUCKET, Key=keys[2], Body=lines(record(4004)))
    run = get_dag().test(
        logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, "files_per_chunk": 1}
    )
    assert run.state == "success"
    assert events_sent(emulator) == [40010, 40011, 40020, 40021, 40030, 40031, 40040, 40041]
    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["summary"]["records_read"] == 5
    assert summary["totals"]["replayed"] == 4
    assert summary["totals"]["already_replayed"] == 1
    assert summary["summary"]["counts"]["objects_read"] == 3
    # One user: the four records read in three chunks meet in one shard, and go out as one merged batch.
    assert (summary["coalescing"]["replay_batches"], summary["coalescing"]["batches"]) == (4, 1)
    assert len(emulator.state.batches) == 1
    stage_files = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents", [])
    assert {item["Key"].rsplit("/", 1)[-1] for item in stage_files} >= {
        "chunk-00000.msgpack.zst", "chunk-00001.msgpack.zst", "chunk-00002.msgpack.zst",
    }  # fmt: skip


def test_flat_layout_end_to_end(airflow_db, s3, connections):
    emulator = connections
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/mPTravel_20261120090000000001_00001.txt", Body=lines(record(5001)))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/mPTravel_20261120235959999999_00002.txt", Body=lines(record(5002)))
    s3.put_object(  # another day, by its name
        Bucket=BUCKET, Key=f"{PREFIX}/mPTravel_20261121000000000001_00003.txt", Body=lines(record(5003))
    )
    s3.put_object(  # in a folder: not flat
        Bucket=BUCKET, Key=f"{PREFIX}/other/mPTravel_20261120090000000001_00004.txt", Body=lines(record(5004))
    )
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/mParticle_Bucket_Verification_20261120-101010.txt", Body=b"{}")
    run = get_dag().test(
        logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, "layout": "flat"}
    )
    assert run.state == "success"
    assert events_sent(emulator) == [50010, 50011, 50020, 50021]
    summary = report(s3, run)
    assert summary["totals"]["replayed"] == 2
    assert summary["summary"]["counts"]["verification_objects_skipped"] == 1


def test_without_reference_time_the_window_ends_when_the_run_plans_not_at_its_logical_date(airflow_db, s3, connections):
    """A run of an old date (as a backfill or a cleared run makes) replays nothing older than the window
    before *now*, though its logical date and run_after lie weeks back."""
    emulator = connections
    s3.put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(record(6001))
    )
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    run = get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={"partition_date": DAY})
    assert run.state == "success"
    summary = report(s3, run)
    window_end = datetime.fromisoformat(summary["settings"]["reference_time"])
    assert window_end > long_ago + timedelta(days=39)  # now, not 2026-11-21
    if datetime(2026, 11, 20, 9, tzinfo=timezone.utc) < window_end - timedelta(days=14):
        assert emulator.state.batches == []
        assert summary["totals"]["too_old"] == 1
