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


def acquire(store, run_id, now=NOW, **settings):
    from mparticle_backfill.settings import StatePaths, parse_settings, run_key
    from mparticle_backfill_airflow.tasks import acquire_partition

    parsed = parse_settings({"bucket": BUCKET, "prefix": PREFIX, **settings})
    acquire_partition(parsed, StatePaths(parsed.state_prefix, DAY, run_key(run_id)), run_id, store, now=now)


def holder(s3):
    from mparticle_backfill.partition_lock import LockHolder

    return LockHolder.from_bytes(s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read())


def release(store, run_id, dry_run=False):
    from mparticle_backfill.settings import parse_settings, run_key
    from mparticle_backfill_airflow.tasks import release_partition

    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX, "dry_run": dry_run}).to_json()
    chunk = {"settings": settings, "partition_date": DAY.isoformat(), "run_key": run_key(run_id)}
    return release_partition([chunk], store)


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
    with pytest.raises(AirflowFailException, match="older than 3 h is taken over"):
        acquire(store, "second", lock_ttl_hours=3)
    acquire(store, "second", lock_ttl_hours=1)
    assert holder(s3).run_id == "second"
    assert release(store, "second", dry_run=True) is False  # a dry run never took it
    assert holder(s3).run_id == "second"
