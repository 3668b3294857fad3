"""The partition lock against S3 (moto over HTTP): taken, refused, retried, taken over, released."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX

pytestmark = pytest.mark.airflow

DAY = date(2026, 11, 20)
NOW = datetime(2026, 11, 21, 6, tzinfo=timezone.utc)
LOCK = f"{PREFIX}/_backfill/2026-11-20/lock.json"


@pytest.fixture
def store(s3, connections):
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    return QuarantineS3Hook()


def acquire(store, run_id, now=NOW, run_state=None, **settings):
    from mparticle_backfill.settings import StatePaths, parse_settings, run_key
    from mparticle_backfill_airflow.tasks import acquire_partition

    parsed = parse_settings({"bucket": BUCKET, "prefix": PREFIX, **settings})
    paths = StatePaths(parsed.state_prefix, DAY, run_key(run_id))
    acquire_partition(parsed, paths, run_id, store, now=now, dag_id="the_dag", run_state=run_state)


def chunk_of(run_id, **settings):
    from mparticle_backfill.settings import parse_settings, run_key

    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX, **settings}).to_json()
    return {"settings": settings, "partition_date": DAY.isoformat(), "run_key": run_key(run_id)}


def holder(s3):
    from mparticle_backfill.partition_lock import LockHolder

    return LockHolder.from_bytes(s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read())


def release(store, run_id, dry_run=False):
    from mparticle_backfill_airflow.tasks import release_partition

    return release_partition([chunk_of(run_id, dry_run=dry_run)], store)


def test_taken_refused_retried_released(store, s3):
    from airflow.sdk.exceptions import AirflowFailException

    acquire(store, "scheduled__2026-11-21T00:00:00+00:00")
    assert holder(s3).run_id == "scheduled__2026-11-21T00:00:00+00:00"
    acquire(store, "scheduled__2026-11-21T00:00:00+00:00", now=NOW + timedelta(minutes=5))  # a retry: fine
    with pytest.raises(AirflowFailException) as refused:
        acquire(store, "manual__2026-11-21T01:00:00+00:00", now=NOW + timedelta(hours=1))
    message = str(refused.value)
    assert "Partition 2026-11-20 is being backfilled by run 'scheduled__2026-11-21T00:00:00+00:00'" in message
    assert f"s3://{BUCKET}/{LOCK}" in message and "nothing is sent twice" in message

    assert release(store, "manual__2026-11-21T01:00:00+00:00") is False  # not its lock: left alone
    assert holder(s3).run_id == "scheduled__2026-11-21T00:00:00+00:00"
    assert release(store, "scheduled__2026-11-21T00:00:00+00:00") is True
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LOCK)
    acquire(store, "manual__2026-11-21T01:00:00+00:00")  # free again
    assert holder(s3).run_id == "manual__2026-11-21T01:00:00+00:00"


def test_a_stale_or_foreign_lock_is_taken_over(store, s3):
    acquire(store, "dead-run", now=NOW - timedelta(hours=13))
    acquire(store, "new-run")  # 13 h > lock_ttl_hours (12)
    assert holder(s3).run_id == "new-run"

    s3.put_object(Bucket=BUCKET, Key=LOCK, Body=b"not a lock")
    acquire(store, "other-run")
    assert holder(s3).run_id == "other-run"


def test_ttl_is_a_setting_and_dry_runs_take_no_lock(store, s3):
    from airflow.sdk.exceptions import AirflowFailException

    acquire(store, "first", now=NOW - timedelta(hours=2))
    with pytest.raises(AirflowFailException, match="taken over 3 h after its last heartbeat"):
        acquire(store, "second", lock_ttl_hours=3)
    acquire(store, "second", lock_ttl_hours=1)
    assert holder(s3).run_id == "second"
    assert release(store, "second", dry_run=True) is False  # a dry run never took it
    assert holder(s3).run_id == "second"


def test_a_live_run_keeps_its_lock_however_old_and_a_finished_one_loses_it_at_once(store, s3):
    from airflow.sdk.exceptions import AirflowFailException

    asked = []

    def airflow_says(state):
        def run_state(dag_id, run_id):
            asked.append((dag_id, run_id))
            return state

        return run_state

    acquire(store, "waiting-behind-the-pool", now=NOW - timedelta(hours=48))
    with pytest.raises(AirflowFailException, match="being backfilled by run 'waiting-behind-the-pool'"):
        acquire(store, "another", run_state=airflow_says("running"))
    assert asked == [("the_dag", "waiting-behind-the-pool")]
    assert holder(s3).run_id == "waiting-behind-the-pool"

    acquire(store, "another", now=NOW - timedelta(hours=47), run_state=airflow_says("failed"))  # gone: free at once
    assert holder(s3).run_id == "another"

    def cannot_tell(dag_id, run_id):
        raise RuntimeError("execution API unreachable")

    with pytest.raises(AirflowFailException):  # Airflow cannot tell, heartbeat 11 h old < 12 h TTL
        acquire(store, "third", now=NOW - timedelta(hours=36), run_state=cannot_tell)


def test_heartbeats_renew_the_lock_and_a_run_that_lost_it_stops(store, s3):
    from airflow.sdk.exceptions import AirflowFailException

    from mparticle_backfill_airflow.tasks import heartbeat

    acquire(store, "long-run", now=NOW - timedelta(hours=30))
    heartbeat(chunk_of("long-run"), store, now=NOW - timedelta(minutes=5))
    assert holder(s3).last_seen == NOW - timedelta(minutes=5)
    assert holder(s3).acquired_at == NOW - timedelta(hours=30)
    with pytest.raises(AirflowFailException):  # its heartbeat is recent: not taken over by TTL
        acquire(store, "other")
    s3.put_object(Bucket=BUCKET, Key=LOCK, Body=b"taken by hand")
    with pytest.raises(AirflowFailException, match="no longer holds partition 2026-11-20"):
        heartbeat(chunk_of("long-run"), store)
    heartbeat(chunk_of("dry", dry_run=True), store)  # dry runs hold no lock: nothing to renew


def test_release_never_deletes_a_lock_another_run_took_in_between(store, s3, monkeypatch):
    acquire(store, "mine")
    real_read = store.read_object

    def read_then_lose_the_lock(bucket, key):
        found = real_read(bucket, key)
        s3.put_object(
            Bucket=BUCKET,
            Key=LOCK,
            Body=b'{"run_key": "thief", "run_id": "thief", "acquired_at": "2026-11-21T06:00:00+00:00"}',
        )
        return found

    monkeypatch.setattr(store, "read_object", read_then_lose_the_lock)
    assert release(store, "mine") is False
    assert holder(s3).run_id == "thief"


def test_what_the_execution_api_answers_becomes_the_holders_state():
    """The callback the DAG gives the lock, over Airflow's own error for an unknown run (the execution API
    answers 404, the task SDK raises AirflowRuntimeError): missing, so the lock is free at once. Any other
    error: Airflow could not tell (the heartbeat's age decides). The scheduler test checks both through a
    real api-server."""
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    from mparticle_backfill_airflow.run_state import run_state_of

    def api(status: int):
        def get_dagrun_state(dag_id, run_id):
            detail = {"status_code": status, "message": "Dag run not found", "detail": None}
            raise AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR, detail=detail))

        return get_dagrun_state

    from airflow.sdk.api.datamodels._generated import DagRunState  # what get_dagrun_state returns in a task

    assert run_state_of(lambda dag_id, run_id: "failed")("d", "r") == "failed"
    assert run_state_of(lambda dag_id, run_id: DagRunState.RUNNING)("d", "r") == "running"  # as the SDK returns it
    assert run_state_of(api(404))("d", "r") == "missing"
    with pytest.raises(AirflowRuntimeError):
        run_state_of(api(500))("d", "r")
