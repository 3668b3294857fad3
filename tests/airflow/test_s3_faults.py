"""S3 misbehaving (503 SlowDown, connections cut mid-body, answers lost after a write, stalls) through a
fault-injecting proxy in front of moto: the hook's reads, the partition lock's conditional writes, and
whole runs with dag.test: every event arrives exactly once and the report reconciles."""

from __future__ import annotations

import gzip
import json
import logging
import random
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX
from tests.airflow.s3_faults import CUT, LOST, SLOWDOWN, STALL, S3FaultProxy
from tests.airflow.test_dag_end_to_end import DAY, RUN_CONF, STATE, get_dag, lines, record, report

pytestmark = pytest.mark.airflow

LOCK = f"{PREFIX}/_backfill/{DAY}/lock.json"
log = logging.getLogger(__name__)


@pytest.fixture
def proxy(moto_server):
    with S3FaultProxy(moto_server, seed=20) as proxy:
        yield proxy
    log.info("fault proxy: %s", proxy.summary())


def s3_connection(monkeypatch, endpoint_url: str, **extra) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3",
        json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": endpoint_url, "region_name": "us-east-1", **extra},
        }),
    )  # fmt: skip


@pytest.fixture
def hook(s3, connections, proxy, monkeypatch):
    """The hook, its S3 through the proxy (faults only where a test scripts them)."""
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    s3_connection(monkeypatch, proxy.url)
    return QuarantineS3Hook()


def numbered_lines(count: int) -> bytes:
    return b"".join(b'{"line": %d, "pad": "%s"}\n' % (n, b"x" * (n % 50)) for n in range(count))


# The client: botocore's retries, configured, and the connection's word on them.


def test_defaults_apply_only_where_the_connection_says_nothing(s3, connections, proxy, monkeypatch):
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    s3_connection(monkeypatch, proxy.url)
    config = QuarantineS3Hook().conn.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 10}
    assert (config.connect_timeout, config.read_timeout) == (10, 60)

    s3_connection(monkeypatch, proxy.url, config_kwargs={"retries": {"max_attempts": 2}, "read_timeout": 5})
    config = QuarantineS3Hook().conn.meta.config
    assert config.retries["mode"] == "standard"  # kept: the connection set only the number of retries
    assert config.retries["total_max_attempts"] == 3  # botocore's max_attempts counts retries, not attempts
    assert (config.connect_timeout, config.read_timeout) == (10, 5)

    s3_connection(monkeypatch, proxy.url, config_kwargs={"retries": {"mode": "adaptive", "total_max_attempts": 4}})
    assert QuarantineS3Hook().conn.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}


def test_a_write_whose_answers_keep_breaking_is_retried_until_it_goes_through(hook, proxy, s3):
    """Five answers in a row cut off (more than botocore's default of three attempts): retried, done."""
    proxy.script("PUT", CUT, path_contains="report.json", times=5)
    hook.put_bytes(BUCKET, f"{PREFIX}/report.json", b'{"ok": true}')
    assert proxy.total(CUT, "PUT") == 5
    assert s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/report.json")["Body"].read() == b'{"ok": true}'


# The partition lock: conditional writes whose answer was lost.


def test_the_lock_created_whose_answer_was_lost_is_this_runs(hook, proxy, s3):
    """The create went through, its answer was lost; botocore's retry is refused (412) by the object the
    first attempt wrote: that is this run's lock, not another run's."""
    mine, theirs = b'{"run_key": "mine"}', b'{"run_key": "theirs"}'
    proxy.script("PUT", LOST, path_contains="lock.json")
    assert hook.create_if_absent(BUCKET, LOCK, mine) is True
    assert proxy.total(LOST, "PUT") == 1
    assert s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read() == mine

    # Another run's create is refused, retried or not: the object there is not its body.
    assert hook.create_if_absent(BUCKET, LOCK, theirs) is False
    proxy.script("PUT", SLOWDOWN, path_contains="lock.json")  # the first attempt did nothing; the retry: 412
    assert hook.create_if_absent(BUCKET, LOCK, theirs) is False

    etag = s3.head_object(Bucket=BUCKET, Key=LOCK)["ETag"]
    renewed = b'{"run_key": "mine", "heartbeat": 1}'
    proxy.script("PUT", LOST, path_contains="lock.json")  # a heartbeat whose answer was lost
    assert hook.replace_if_unchanged(BUCKET, LOCK, renewed, etag) is True
    assert hook.replace_if_unchanged(BUCKET, LOCK, theirs, etag) is False  # that version is gone

    etag = s3.head_object(Bucket=BUCKET, Key=LOCK)["ETag"]
    proxy.script("DELETE", LOST, path_contains="lock.json")  # the release whose answer was lost
    assert hook.delete_if_unchanged(BUCKET, LOCK, etag) is True
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LOCK)


def test_a_run_takes_and_releases_its_lock_through_lost_answers(hook, proxy, s3):
    from mparticle_backfill.partition_lock import LockHolder
    from mparticle_backfill.settings import StatePaths, parse_settings, run_key
    from mparticle_backfill_airflow.tasks import acquire_partition, heartbeat, release_partition

    run_id = "scheduled__2026-11-21T00:00:00+00:00"
    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX})
    paths = StatePaths(settings.state_prefix, datetime(2026, 11, 20).date(), run_key(run_id))
    chunk = {"settings": settings.to_json(), "partition_date": DAY, "run_key": run_key(run_id)}
    now = datetime(2026, 11, 21, 6, tzinfo=timezone.utc)

    proxy.script("PUT", LOST, path_contains="lock.json")
    acquire_partition(settings, paths, run_id, hook, now=now, dag_id="the_dag")
    proxy.script("PUT", LOST, path_contains="lock.json")
    heartbeat(chunk, hook, now=now + timedelta(minutes=5))
    body = s3.get_object(Bucket=BUCKET, Key=LOCK)["Body"].read()
    assert LockHolder.from_bytes(body).heartbeat_at == now + timedelta(minutes=5)
    proxy.script("DELETE", LOST, path_contains="lock.json")
    assert release_partition([chunk], hook) is True  # released, and said so
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LOCK)
    assert proxy.total(LOST) == 3


# Reads: a body cut off mid-stream is resumed where it stopped, never truncated, never read twice.


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_an_object_cut_off_mid_body_is_read_whole_once(hook, proxy, s3, compressed):
    body = numbered_lines(20_000)
    key = f"{PREFIX}/{DAY}/object.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body) if compressed else body)
    proxy.script("GET", CUT, path_contains="object.txt", times=3)  # the first GET and two resumes cut off
    assert list(hook.read_lines(BUCKET, key)) == body.splitlines()
    assert proxy.total(CUT, "GET") == 3

    proxy.script("GET", CUT, path_contains="object.txt", times=2)
    content, etag = hook.read_object(BUCKET, key)
    assert content == s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert etag == s3.head_object(Bucket=BUCKET, Key=key)["ETag"]


def test_a_stage_file_cut_off_mid_body_gives_every_replay_once(hook, proxy, s3):
    from mparticle_backfill.accounting import Summary
    from mparticle_backfill.extract import extract_records
    from mparticle_backfill.select import SelectionSettings

    records = [record(6000 + n) for n in range(300)]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/in.txt", Body=lines(*records))
    with proxy.paused():
        stream = hook.object_stream(BUCKET, f"{PREFIX}/{DAY}/in.txt")
        replays = list(extract_records([("in.txt", stream)], SelectionSettings(), Summary(), lambda letter: None))
        key = f"{PREFIX}/stage/chunk-00000.msgpack.zst"
        with hook.stage_file(BUCKET, key) as out:
            for replay in replays:
                out.write_replay(replay)
    size = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    assert size > 4_000  # cut at half, then at half of the rest, and so on

    proxy.script("GET", CUT, path_contains="chunk-00000", times=4)
    assert [r.identity for r in hook.read_replays(BUCKET, key)] == [r.identity for r in replays]
    proxy.script("GET", CUT, path_contains="chunk-00000", times=2)
    assert len(list(hook.read_frames(BUCKET, key))) == 300
    assert proxy.total(CUT, "GET") == 6


def test_a_read_that_keeps_breaking_fails_the_task_visibly(s3, connections, proxy, monkeypatch):
    """Six breaks in a row with nothing read between them: a plain exception (Airflow retries the task),
    never an OSError that a reader could take for a damaged object, never a short read taken for whole."""
    from mparticle_backfill_airflow.s3_hook import MAX_BODY_RESUMES, ObjectReadError, QuarantineS3Hook

    # No botocore retries, a 1 s read timeout: the test's breaks come quickly.
    s3_connection(monkeypatch, proxy.url, config_kwargs={"read_timeout": 1, "retries": {"total_max_attempts": 1}})
    key = f"{PREFIX}/{DAY}/object.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=numbered_lines(5_000))
    proxy.stall_seconds = 2
    proxy.script("GET", STALL, path_contains="object.txt")  # half the body, then nothing: a read timeout
    proxy.script("GET", SLOWDOWN, path_contains="object.txt", times=100)  # then every resume refused
    with pytest.raises(ObjectReadError, match=r"broke off 6 times in a row at byte [\d,]+ of") as failed:
        list(QuarantineS3Hook().read_lines(BUCKET, key))
    assert not isinstance(failed.value, OSError)
    assert proxy.total(SLOWDOWN, "GET") == MAX_BODY_RESUMES


def test_an_object_replaced_while_it_is_read_is_not_resumed_into_the_new_version(hook, proxy, s3):
    from mparticle_backfill_airflow.s3_hook import ObjectReadError

    key = f"{PREFIX}/{DAY}/object.txt"
    s3.put_object(Bucket=BUCKET, Key=key, Body=numbered_lines(20_000))  # ~0.75 MB, cut at half
    proxy.script("GET", CUT, path_contains="object.txt")
    reading = hook.read_lines(BUCKET, key)
    assert next(reading) == b'{"line": 0, "pad": ""}'
    s3.put_object(Bucket=BUCKET, Key=key, Body=numbered_lines(30_000))
    with pytest.raises(ObjectReadError, match="changed or was removed while it was read"):
        list(reading)


def test_a_quarantine_object_that_stalls_mid_body_is_read_whole_not_dead_lettered(s3, connections, proxy, monkeypatch):
    """A read timeout mid-body (botocore's ReadTimeoutError is an OSError) on a gzip quarantine object:
    the extract reads every record, dead-letters none."""
    from mparticle_backfill.accounting import Summary
    from mparticle_backfill.extract import extract_records
    from mparticle_backfill.select import SelectionSettings
    from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook

    s3_connection(monkeypatch, proxy.url, config_kwargs={"read_timeout": 1})
    proxy.stall_seconds = 3
    key = f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt"
    noise = random.Random(7)
    records = [record(7000 + n, note=noise.randbytes(400).hex()) for n in range(400)]  # ~0.3 MB gzip
    s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(lines(*records)))
    proxy.script("GET", STALL, path_contains="mPTravel")
    hook = QuarantineS3Hook()
    letters, summary = [], Summary()
    replays = list(
        extract_records([(key, hook.object_stream(BUCKET, key))], SelectionSettings(), summary, letters.append)
    )
    assert proxy.total(STALL, "GET") == 1
    assert [(letter.reason, letter.detail) for letter in letters] == []
    assert summary.records_read == 400
    assert len(replays) == 400


# Whole runs: a share of every kind of S3 request faulted.

# About 15-20% of each method's requests: 503 SlowDown before anything happened, answers cut off
# mid-body after the request went through, writes whose answer was lost.
SHARES = {
    SLOWDOWN: {"GET": 0.08, "PUT": 0.07, "POST": 0.07, "HEAD": 0.07, "DELETE": 0.07},
    CUT: {"GET": 0.10, "PUT": 0.06, "POST": 0.06, "HEAD": 0.06, "DELETE": 0.06},
    LOST: {"PUT": 0.06, "POST": 0.06, "DELETE": 0.06},
}
# And, whatever the draw, at least one of each where it matters most: a quarantine object and a stage
# file cut off mid-body, a quarantine object stalling mid-body past the read timeout, the lock's create and
# a ledger part's write lost after they went through.
SCRIPTED = [
    ("GET", CUT, "/mPTravel_"), ("GET", CUT, ".msgpack.zst"), ("GET", STALL, "_00000.txt"),
    ("PUT", LOST, "/lock.json"), ("PUT", LOST, "/ledger/"),
]  # fmt: skip
RECORDS, USERS, OBJECTS = 320, 16, 8


def seed_partition(s3) -> list[int]:
    """RECORDS records of USERS users in OBJECTS objects (every other one gzip); the event ids expected."""
    expected = []
    for index in range(OBJECTS):
        records = []
        for n in range(index, RECORDS, OBJECTS):
            data = record(3000 + n)
            data["mpid"] = str(5_000_000 + n % USERS)
            if index == 0:  # an object of ~0.2 MB: a stall halfway comes after its first lines were read
                for event in data["events"]:
                    event["data"].setdefault("custom_attributes", {})["note"] = "x" * 2000
            records.append(data)
            expected += [(3000 + n) * 10, (3000 + n) * 10 + 1]  # the record's two blocked events
        body = lines(*records)
        key = f"{PREFIX}/{DAY}/mPTravel_2026112009000000000{index}_0000{index}.txt"
        s3.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(body) if index % 2 else body)
    return sorted(expected)


def run_with_airflow_retries(conf: dict):
    dag = get_dag()
    for task in dag.tasks:  # Airflow's retries, at once rather than after a minute
        task.retry_delay = timedelta(0)
        task.retry_exponential_backoff = False
    return dag.test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, **conf})


def tries_by_task(run) -> dict[str, int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.try_number).where(
                TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
    tries: Counter[str] = Counter()
    for task_id, try_number in rows:
        tries[task_id] = max(tries[task_id], try_number)
    return dict(tries)


@pytest.mark.parametrize("seed", [1, 2], ids=["seed-1", "seed-2"])
def test_a_run_through_misbehaving_s3_delivers_every_event_once_and_reconciles(
    airflow_db, s3, connections, proxy, monkeypatch, seed
):
    emulator = connections
    expected = seed_partition(s3)
    s3_connection(monkeypatch, proxy.url, config_kwargs={"read_timeout": 2})  # a stall: 2 s, not 60
    proxy.stall_seconds = 3
    proxy.random.seed(seed)
    proxy.shares = SHARES
    for method, fault, path in SCRIPTED:
        proxy.script(method, fault, path_contains=path)

    started = time.monotonic()
    run = run_with_airflow_retries({"files_per_chunk": 1, "shards": 4})
    elapsed = time.monotonic() - started
    tries = tries_by_task(run)
    print(f"\n{proxy.summary()}; {elapsed:.1f} s; tries by task: {tries}")
    assert run.state == "success", proxy.summary()
    assert not proxy.scripted_left(), "a scripted fault found no request"
    assert proxy.total() >= 20 and proxy.total(SLOWDOWN) >= 5 and proxy.total(CUT) >= 5

    arrived = Counter(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])
    assert sorted(arrived) == expected  # every event arrived...
    assert {event for event, times in arrived.items() if times > 1} == set()  # ...once

    ledger = [
        line
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/ledger/")["Contents"]
        for line in s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().split()
    ]
    assert len(ledger) == len(set(ledger)) == RECORDS * 3  # two events and the user attributes of each

    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["summary"]["records_read"] == RECORDS
    assert sum(summary["totals"].values()) == RECORDS
    assert summary["totals"]["replayed"] == RECORDS
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=LOCK)  # released
