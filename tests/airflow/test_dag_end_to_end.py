"""End to end with dag.test(): moto S3 over HTTP, the Events API emulator, a realistic partition."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import pytest

from tests.airflow.conftest import BUCKET, PREFIX, ROOT
from tests.conftest import real_record_dict

pytestmark = pytest.mark.airflow

DAY = "2026-11-20"
RUN_CONF = {"reference_time": "2026-11-21T06:00:00Z", "partition_date": DAY}
IN_WINDOW_MS = int(datetime(2026, 11, 20, 9, tzinfo=timezone.utc).timestamp() * 1000)
TOO_OLD_MS = int(datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp() * 1000)
STATE = f"{PREFIX}/_backfill/{DAY}"


def record(batch_id: int, *, timestamp_ms: int = IN_WINDOW_MS, **changes) -> dict:
    """The real quarantine record with new ids and times; events keep their blocked/allowed roles."""
    data = real_record_dict()
    data["batch_id"] = str(batch_id)
    data["timestamp_unixtime_ms"] = str(timestamp_ms)
    ids = {}
    for index, event in enumerate(data["events"]):
        new_id = str(batch_id * 10 + index)
        ids[event["data"]["event_id"]] = new_id
        event["data"]["event_id"] = new_id
        event["data"]["timestamp_unixtime_ms"] = str(timestamp_ms)
    block = data["context"]["data_plan"]["block_metadata"]
    block["blocked_event_ids"] = [ids[i] for i in block["blocked_event_ids"]]
    for entry in block["blocked_event_attributes"]:
        entry["event_id"] = ids[entry["event_id"]]
    data.update(changes)
    return data


def lines(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def seed_partition(s3) -> None:
    orphan = record(5005, user_identities={"customer_id": "1234"})  # only blocked identities, no mpid
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt",
        Body=gzip.compress(lines(record(1001), record(1002), record(1001))),  # 1001 delivered twice
    )
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/{DAY}/mPTravel_20261120100000000002_00002.txt",
        Body=lines(record(2001, timestamp_ms=TOO_OLD_MS), b'{"events": [', orphan),
    )
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mParticle_Bucket_Verification_20261120-101010.txt", Body=b"{}")
    s3.put_object(  # another day: never read
        Bucket=BUCKET, Key=f"{PREFIX}/2026-11-19/mPTravel_20261119100000000002_00003.txt", Body=lines(record(9001))
    )


def get_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags["mparticle_quarantine_backfill"]


def run_dag(conf=None):
    dag = get_dag()
    run = dag.test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, **(conf or {})})
    return run


def report(s3, run) -> dict:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/reports/")["Contents"]]
    (key,) = [k for k in keys if k.endswith(".json") and run.run_id.replace(":", "_").replace("+", "_") in k]
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def run_key_of(run) -> str:
    from mparticle_backfill.settings import run_key

    return run_key(run.run_id)


def extra_links(run, task_id: str) -> dict[str, str]:
    """The extra links the UI shows for a task, as Airflow stored them when the task ended."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(XComModel.key, XComModel.value).where(
                XComModel.dag_id == run.dag_id,
                XComModel.run_id == run.run_id,
                XComModel.task_id == task_id,
                XComModel.key.like("_link_%"),
            )
        ).all()
    names = {"_link_BackfillReportLink": "Backfill report", "_link_DeadLettersLink": "Dead letters"}
    found = {}
    for key, value in rows:
        try:  # stored as JSON, or as the plain string (as the UI's XComOperatorLink reads it)
            found[names[key]] = json.loads(value)
        except (TypeError, ValueError):
            found[names[key]] = value
    return found


def dead_letters(s3) -> list[dict]:
    found = []
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/dead_letters/").get("Contents", []):
        body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        found += [json.loads(line) for line in body.splitlines()]
    return found


def test_partition_end_to_end_then_rerun_sends_nothing_new(airflow_db, s3, connections):
    emulator = connections
    seed_partition(s3)
    run = run_dag()
    assert run.state == "success"

    batches = emulator.state.batches
    sent_events = sorted(e["data"]["event_id"] for b in batches for e in b["events"])
    assert sent_events == [10010, 10011, 10020, 10021]  # the two blocked events of 1001 and 1002, once
    for batch in batches:
        assert "batch_id" not in batch and "source_info" not in batch and "timestamp_unixtime_ms" not in batch
        assert batch["user_identities"]["customer_id"] == "1234"
        assert batch["user_attributes"] == {"$gender": "M"}
        assert all(e["data"]["timestamp_unixtime_ms"] == IN_WINDOW_MS for e in batch["events"])

    letters = dead_letters(s3)
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == ["invalid_json", "no_resolvable_identity"]
    bad = next(letter for letter in letters if letter["reason"] == "invalid_json")
    assert bad["source"] == f"{PREFIX}/{DAY}/mPTravel_20261120100000000002_00002.txt:2"
    assert bad["content"] == '{"events": ['

    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["summary"]["records_read"] == 6
    assert summary["totals"] == {
        "replayed": 2, "held": 0, "nothing_to_replay": 0, "too_old": 1, "already_replayed": 1, "dead_lettered": 2,
    }  # fmt: skip
    assert summary["summary"]["counts"]["verification_objects_skipped"] == 1
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/lock.json")  # released

    # The report task's extra links open the report and the dead letters (here on the moto endpoint).
    links = extra_links(run, "report")
    link_path = unquote(urlsplit(links["Backfill report"]).path)
    assert link_path.startswith(f"/{BUCKET}/")
    report_md = s3.get_object(Bucket=BUCKET, Key=link_path.removeprefix(f"/{BUCKET}/"))["Body"].read().decode()
    assert "**Reconciled:** yes" in report_md
    assert links["Dead letters"].endswith(f"{STATE}/dead_letters/{run_key_of(run)}/")

    # Re-running the same partition sends nothing new: the ledger knows what was accepted.
    again = run_dag()
    assert again.state == "success"
    assert len(emulator.state.batches) == len(batches)
    assert emulator.state.stats["duplicates_dropped"] == 0  # not even resent
    assert report(s3, again)["totals"]["already_replayed"] == 3


def test_dry_run_sends_nothing_and_writes_payloads(airflow_db, s3, connections):
    emulator = connections
    seed_partition(s3)
    run = run_dag({"dry_run": True})
    assert run.state == "success"
    assert emulator.state.batches == []
    payload_keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/payloads/").get("Contents", [])
    ]
    payloads = [
        json.loads(line)
        for key in payload_keys
        for line in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().splitlines()
    ]
    assert sorted(e["data"]["event_id"] for p in payloads for e in p["events"]) == [10010, 10011, 10020, 10021]
    assert report(s3, run)["dry_run"] is True
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/ledger/").get("Contents")


def test_invalid_settings_fail_the_run_naming_the_setting(airflow_db, s3, connections, monkeypatch):
    from airflow.sdk.exceptions import ParamValidationError

    seed_partition(s3)
    # The trigger form's schema (of its overrides object) refuses what it can check, before any run exists.
    with pytest.raises(ParamValidationError, match=r"overrides: 45 is greater than the maximum of 30"):
        run_dag({"overrides": {"max_age_days": 45}})
    with pytest.raises(ParamValidationError, match="overrides"):  # a misspelt step, refused by the form's schema
        run_dag({"overrides": {"fixes": [{"name": "bad", "then": [{"explode": 1}]}]}})
    # A setting given as a key of its own (as API and CLI callers always could) is not one of the form's
    # params: plan_partition refuses it, before any data is read; and a setting given twice.
    assert run_dag({"max_age_days": 45}).state == "failed"
    assert run_dag({"coalesce": False, "overrides": {"coalesce": True}}).state == "failed"
    # What only the engine can check (a regex that does not compile) fails the run in plan_partition,
    # before any data is read.
    run = run_dag(
        {"fixes": [{"name": "bad", "when": [{"field": "event_name", "matches": "("}], "then": [{"rename_event": "x"}]}]}
    )
    assert run.state == "failed"
    monkeypatch.setenv("AIRFLOW_VAR_MPARTICLE_BACKFILL", json.dumps({"bucket": BUCKET, "max_age_days": 45}))
    assert run_dag().state == "failed"
    assert connections.state.batches == []
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents")


def test_plan_partition_names_the_bad_setting():
    from airflow.sdk.exceptions import AirflowFailException

    from mparticle_backfill_airflow.tasks import plan_partition

    with pytest.raises(AirflowFailException, match=r"invalid fix rule #1 'bad': unknown step 'explode'"):
        plan_partition(
            {"bucket": BUCKET},
            {"fixes": [{"name": "bad", "then": [{"explode": 1}]}]},
            run_id="manual__x",
            data_interval_start=None,
            run_after=None,
            s3=None,
        )


@pytest.mark.parametrize(
    ("variable", "params", "run_type", "message"),
    [
        pytest.param(
            {"bucket": BUCKET},
            {"partition_date": "2026-11-15"},
            "backfill",
            r"'partition_date': 2026-11-15 was given to a backfill run, which processes its own date \(2026-11-18",
            id="backfill-with-a-date",
        ),
        pytest.param(
            {"bucket": BUCKET, "partition_date": "2026-11-15"},
            {},
            "manual",
            r"'partition_date': is a per-run choice, not a standing setting: set in the settings Variable",
            id="date-in-the-variable",
        ),
        pytest.param(
            {"bucket": BUCKET, "dry_run": True},
            {},
            "scheduled",
            r"'dry_run': is a per-run choice, not a standing setting: set in the settings Variable .*would send nothing",
            id="dry-run-in-the-variable",
        ),
        pytest.param(
            {"bucket": BUCKET},
            {"dry_run": False, "coalesce": False, "overrides": {"coalesce": True}},
            "manual",
            r"'coalesce': is set twice in the run conf: as a key of its own \(False\) and inside overrides \(True\)",
            id="a-setting-twice",
        ),
    ],
)
def test_plan_partition_refuses_what_the_run_cannot_mean(variable, params, run_type, message):
    """A date the run does not own, a per-run choice in the Variable, a setting given twice: refused before
    any I/O, naming it."""
    from airflow.sdk.exceptions import AirflowFailException

    from mparticle_backfill_airflow.tasks import plan_partition

    with pytest.raises(AirflowFailException, match=message):
        plan_partition(
            variable,
            params,
            run_id="backfill__2026-11-18T00:00:00+00:00",
            data_interval_start=datetime(2026, 11, 18, tzinfo=timezone.utc),
            run_after=datetime(2026, 11, 19, tzinfo=timezone.utc),
            s3=None,  # fails before any I/O
            run_type=run_type,
        )


def test_firehose_hourly_layout_then_force_resends(airflow_db, s3, connections):
    """Kinesis Data Firehose output: YYYY/MM/DD/HH/ folders, records concatenated without newlines.

    Then ``force`` resends what the ledger holds, with new source_request_ids so mParticle keeps them.
    """
    emulator = connections
    concatenated = b"".join(json.dumps(record(n)).encode() for n in (3001, 3002, 3003))
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/2026/11/20/07/qstream-1-2026-11-20-07-10-00-a1", Body=concatenated)
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/2026/11/20/23/qstream-1-2026-11-20-23-59-00-b2.gz",
        Body=gzip.compress(lines(record(3004))),
    )
    s3.put_object(  # the next day's first hour: not this partition
        Bucket=BUCKET, Key=f"{PREFIX}/2026/11/21/00/qstream-1-2026-11-21-00-00-01-c3", Body=lines(record(3005))
    )
    run = run_dag({"overrides": {"layout": "firehose_hourly"}})  # as the trigger form sends it
    assert run.state == "success"
    first = list(emulator.state.batches)
    assert sorted(e["data"]["event_id"] for b in first for e in b["events"]) == [
        30010, 30011, 30020, 30021, 30030, 30031, 30040, 30041,
    ]  # fmt: skip
    assert report(s3, run)["totals"]["replayed"] == 4

    forced = run_dag({"layout": "firehose_hourly", "force": True})  # layout as a key of its own, as API callers do
    assert forced.state == "success"
    assert len(emulator.state.batches) == 2 * len(first)
    assert emulator.state.stats["duplicates_dropped"] == 0  # new ids: mParticle keeps the resend
    first_ids = {b["source_request_id"] for b in first}
    resent_ids = {b["source_request_id"] for b in emulator.state.batches[len(first) :]}
    assert first_ids.isdisjoint(resent_ids)
    assert report(s3, forced)["totals"]["replayed"] == 4


def test_a_partition_locked_by_another_run_is_not_touched(airflow_db, s3, connections):
    """A manual run during a backfill of the same date stops before reading anything."""
    from mparticle_backfill.partition_lock import LockHolder

    seed_partition(s3)
    holder = LockHolder("backfill__2026-11-20", "backfill__2026-11-20T00:00:00+00:00", datetime.now(timezone.utc))
    s3.put_object(Bucket=BUCKET, Key=f"{STATE}/lock.json", Body=holder.to_bytes())
    run = run_dag()
    assert run.state == "failed"
    assert connections.state.batches == []
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents")
    lock = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{STATE}/lock.json")["Body"].read())
    assert lock["run_key"] == "backfill__2026-11-20"  # the holder's lock is left alone
