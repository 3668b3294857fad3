"""A real scheduler (LocalExecutor on SQLite) as production runs it: a backfill of three dates, a backfill of
a date older than the replay window, and a send task killed with SIGKILL mid-send while another run of the
same date tries to take its lock, then late data for the same user and the whole run again: every event once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.airflow.conftest import AIRFLOW_HOME, airflow_cli, events_api_connection
from tests.airflow.test_dag_end_to_end import BUCKET, PREFIX, lines, record
from tools.airflow_health import wait_for_api_server

pytestmark = pytest.mark.airflow
DAG_ID = "mparticle_quarantine_backfill"
DAYS = ["2026-11-17", "2026-11-18", "2026-11-19"]
CRASH_DAY = "2026-11-16"
CRASH_RECORDS = 3000
MORE_DAYS = ["2026-11-11", "2026-11-12", "2026-11-13"]
TYPED_DAY = "2026-11-10"
LATE_RECORDS = 300
WINDOW_END = "2026-11-20T06:00:00Z"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runs_of(dag_id: str, run_type: str | None = None) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(DagRun).filter(DagRun.dag_id == dag_id)
        if run_type:
            query = query.filter(DagRun.run_type == run_type)
        return [(r.run_id, r.data_interval_start, str(r.state), str(r.run_type), r.conf) for r in query.all()]


def wait_until(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s")


def finished(run_ids: set[str]):
    def check():
        states = {run_id: state for run_id, _, state, _, _ in runs_of(DAG_ID) if run_id in run_ids}
        done = {s for s in states.values() if s in ("success", "failed")}
        return (
            states
            if len(states) == len(run_ids) and len(done) and all(s in ("success", "failed") for s in states.values())
            else None
        )

    return check


def no_backfill_running() -> bool:
    from airflow.models.backfill import Backfill
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(Backfill).filter(Backfill.completed_at.is_(None)).count() == 0


def running_ti_id(run_id: str, task_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
            .first()
        )
        return str(ti.id) if ti is not None and str(ti.state) == "running" else None


def ti_state(run_id: str, task_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
            .first()
        )
        return str(ti.state) if ti is not None else None


def process_running(ti_id: str) -> int | None:
    """The task process Airflow runs for a task instance (its title is ``airflow worker -- <ti id>``)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
            if f"airflow worker -- {ti_id}".encode() in handle.read().replace(b"\0", b" "):
                return int(pid)
    return None


def ledger_keys(s3, day: str) -> set[str]:
    keys = set()
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{day}/ledger/").get("Contents", []):
        keys.update(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode().split())
    return keys


def day_ms(day: str, hour: int = 10) -> int:
    return int(datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp() * 1000)


# The test's own waits add up to ~2,900 s at worst (the api-server, three backfills, the crash run and the
# intruder, each bounded): pytest's timeout (600 s by default) must not end it before one of them does, on a
# loaded 2-core machine. It takes ~3.5 minutes when things go well.
@pytest.mark.timeout(3300)
def test_backfills_and_a_crash_mid_send_as_production_meets_them(airflow_db, s3, connections, monkeypatch):
    emulator = connections
    for index, day in enumerate(DAYS):
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{PREFIX}/{day}/mPTravel_{day.replace('-', '')}100000000000_0000{index}.txt",
            Body=lines(record(7000 + index, timestamp_ms=day_ms(day))),
        )
    for index, day in enumerate([TYPED_DAY, *MORE_DAYS]):  # for the backfill given a partition_date
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{PREFIX}/{day}/mPTravel_{day.replace('-', '')}100000000000_0000{index}.txt",
            Body=lines(record(7100 + index, timestamp_ms=day_ms(day))),
        )
    # A date older than the replay window (as a backfill "from the UI" of last month would pick).
    old_day = (datetime.now(timezone.utc) - timedelta(days=40)).date().isoformat()
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/{old_day}/mPTravel_{old_day.replace('-', '')}100000000000_00009.txt",
        Body=lines(record(7900, timestamp_ms=day_ms(old_day))),
    )
    crash_records = [record(100_000 + n, timestamp_ms=day_ms(CRASH_DAY)) for n in range(CRASH_RECORDS)]
    for data in crash_records:  # one user: send merges the 3,000 batches into ~100 of 128 KB (~50 requests)
        for event in data["events"]:
            event["data"].setdefault("custom_attributes", {})["note"] = "x" * 1500
    s3.put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{CRASH_DAY}/mPTravel_20261116100000000000_00001.txt", Body=lines(*crash_records)
    )
    late_records = [record(200_000 + n, timestamp_ms=day_ms(CRASH_DAY, 9)) for n in range(LATE_RECORDS)]
    for data in late_records:
        for event in data["events"]:
            event["data"].setdefault("custom_attributes", {})["note"] = "x" * 1500
    # one worker per sender, so that a send takes long enough to be killed half-way
    events_api_connection(monkeypatch, emulator, max_retries=3, max_workers=1)
    port = free_port()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
    monkeypatch.setenv("AIRFLOW__API__HOST", "127.0.0.1")  # loopback only
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1")
    airflow_cli("dags", "reserialize")
    airflow_cli("dags", "unpause", DAG_ID)  # a paused DAG's backfill never runs
    logs = (AIRFLOW_HOME / "scheduler-test.log").open("w")

    def start(*args: str) -> subprocess.Popen:
        # Each in its own process group: the scheduler's children (serve-logs, executor workers) end with it.
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
        )

    # Tasks report to the api-server: it must answer before the scheduler hands any task out.
    processes = [start("api-server", "--port", str(port))]
    try:
        wait_for_api_server(port, timeout=180)

        # 1. A backfill of three dates (the window's end pinned in the backfill's conf), created before the
        # scheduler starts: SQLite takes one writer at a time, and the backfill's runs are then all there
        # when the scheduler first looks.
        conf = json.dumps({"reference_time": WINDOW_END})
        airflow_cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", DAYS[0], "--to-date", DAYS[-1],
                    "--dag-run-conf", conf)  # fmt: skip
        processes += [start("scheduler"), start("dag-processor")]
        wait_until("3 backfill runs", lambda: len(runs_of(DAG_ID, "backfill")) >= 3, 120)
        ids = {run_id for run_id, *_ in runs_of(DAG_ID, "backfill")}
        states = wait_until("the backfill", finished(ids), 420, every=3)
        assert sorted(states.values()) == ["success"] * 3
        sent = sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])
        assert sent == sorted([70000, 70001, 70010, 70011, 70020, 70021])  # each partition's blocked events, once
        starts = sorted(start.date().isoformat() for _, start, *_ in runs_of(DAG_ID, "backfill"))
        assert starts == DAYS

        # 2. A backfill of a date older than the window, without reference_time: the window ends at the
        # time of the replay (not at the date's run_after), so nothing is sent and the report says why.
        # (Airflow allows one running backfill per DAG: the scheduler marks the first one complete first.)
        wait_until("the first backfill marked complete", no_backfill_running, 120, every=2)
        before = len(emulator.state.batches)
        airflow_cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", old_day, "--to-date", old_day)
        wait_until("the old date's run", lambda: len(runs_of(DAG_ID, "backfill")) >= 4, 120)
        old_ids = {run_id for run_id, *_ in runs_of(DAG_ID, "backfill")} - ids
        assert set(wait_until("the old backfill", finished(old_ids), 300, every=3).values()) == {"success"}
        assert len(emulator.state.batches) == before
        reports = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{old_day}/reports/")["Contents"]
        (old_report,) = [
            json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
            for item in reports if item["Key"].endswith(".json")
        ]  # fmt: skip
        assert old_report["totals"]["too_old"] == 1 and old_report["totals"]["replayed"] == 0
        assert ["too_old", "older_than_window", 1] in old_report["summary"]["outcomes"]

        # 2b. A backfill of three more dates whose run parameters carry a partition_date (the Backfill
        # dialog shows it): each run processes its own date or nothing; never the date typed, three times.
        wait_until("the old backfill marked complete", no_backfill_running, 120, every=2)
        before = len(emulator.state.batches)
        dated = json.dumps({"partition_date": TYPED_DAY, "reference_time": WINDOW_END})
        airflow_cli("backfill", "create", "--dag-id", DAG_ID, "--from-date", MORE_DAYS[0], "--to-date", MORE_DAYS[-1],
                    "--dag-run-conf", dated)  # fmt: skip
        wait_until("3 more backfill runs", lambda: len(runs_of(DAG_ID, "backfill")) >= len(ids) + len(old_ids) + 3, 120)
        more_ids = {run_id for run_id, *_ in runs_of(DAG_ID, "backfill")} - ids - old_ids
        assert set(wait_until("the dated backfill", finished(more_ids), 300, every=3).values()) == {"failed"}
        assert {ti_state(run_id, "plan_partition") for run_id in more_ids} == {"failed"}
        assert len(emulator.state.batches) == before  # neither the typed date nor the backfill's own were sent
        assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{TYPED_DAY}/").get("Contents")

        # 3. A run of a big partition; its send task is killed with SIGKILL half-way.
        emulator.state.latency_ms = 1000  # ~50 requests of two merged batches: ~50 s of sending
        crash_conf = json.dumps({"partition_date": CRASH_DAY, "reference_time": WINDOW_END})
        crash_at = "2026-11-16T12:00:00+00:00"  # manual runs' logical dates, apart from the backfill's
        airflow_cli(
            "dags", "trigger", DAG_ID, "--run-id", "crash_run", "--conf", crash_conf, "--logical-date", crash_at
        )
        ti_id = wait_until("the send task running", lambda: running_ti_id("crash_run", "send"), 300)
        wait_until(
            "a third of the events accepted", lambda: emulator.state.stats["events_accepted"] >= 6 + 2000, 120, 0.2
        )
        pid = wait_until("the send task's process", lambda: process_running(ti_id), 30, 0.2)
        # Killed while batches it had accepted are not yet in the ledger (it writes a part every 5 s).
        wait_until(
            "accepted events the ledger does not hold yet",
            lambda: emulator.state.stats["events_accepted"] - 6 > len(ledger_keys(s3, CRASH_DAY)) * 2 / 3,
            60,
            0.1,
        )
        os.kill(pid, signal.SIGKILL)
        accepted_at_kill = emulator.state.stats["events_accepted"]
        assert accepted_at_kill < 6 + 2 * CRASH_RECORDS  # killed half-way
        unrecorded = accepted_at_kill - 6 - len(ledger_keys(s3, CRASH_DAY)) * 2 / 3

        # The run is still alive for Airflow (its send task will be retried). Even with a lock that looks a
        # day old (it waited behind the pool, say), another run of the same date does not take it over.
        lock_key = f"{PREFIX}/_backfill/{CRASH_DAY}/lock.json"
        lock = json.loads(s3.get_object(Bucket=BUCKET, Key=lock_key)["Body"].read())
        assert lock["run_id"] == "crash_run"
        aged = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
        s3.put_object(Bucket=BUCKET, Key=lock_key, Body=json.dumps({**lock, "acquired_at": aged, "heartbeat_at": aged}))
        airflow_cli(
            "dags", "trigger", DAG_ID, "--run-id", "intruder", "--conf", crash_conf,
            "--logical-date", "2026-11-16T13:00:00+00:00",
        )  # fmt: skip
        assert wait_until("the intruder run", finished({"intruder"}), 180, every=2) == {"intruder": "failed"}
        assert ti_state("intruder", "plan_partition") == "failed"
        assert json.loads(s3.get_object(Bucket=BUCKET, Key=lock_key)["Body"].read())["run_id"] == "crash_run"

        # Late data for the same user (earlier events, so every merged batch changes), then the whole run
        # again (clearing its tasks, as an operator does after a fix): the date's merged batches are not the
        # ones the killed task sent; those it sent without recording come back from the send journal, as
        # they were.
        wait_until("the killed send failed", lambda: ti_state("crash_run", "send") in ("up_for_retry", "failed"), 120)
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{PREFIX}/{CRASH_DAY}/mPTravel_20261116110000000000_00002.txt",
            Body=lines(*late_records),
        )
        airflow_cli("tasks", "clear", DAG_ID, "--start-date", crash_at, "--end-date", crash_at, "--yes")
        emulator.state.latency_ms = 0
        assert wait_until("the crashed run", finished({"crash_run"}), 300, every=2) == {"crash_run": "success"}

        # 4. Locks left by runs that are over, as Airflow itself answers for them (not a stand-in): one held
        # by a run that failed (the intruder), one by a run Airflow has no record of (deleted). Both fresh,
        # far from lock_ttl_hours: each is taken over at once, and the date's run succeeds.
        fresh = datetime.now(timezone.utc).isoformat()
        for day, holder in ((DAYS[0], "intruder"), (DAYS[1], "deleted_run")):
            s3.put_object(
                Bucket=BUCKET,
                Key=f"{PREFIX}/_backfill/{day}/lock.json",
                Body=json.dumps({
                    "run_key": holder, "run_id": holder, "dag_id": DAG_ID, "acquired_at": fresh, "heartbeat_at": fresh,
                }),
            )  # fmt: skip
            airflow_cli(
                "dags", "trigger", DAG_ID, "--run-id", f"after_{holder}",
                "--conf", json.dumps({"partition_date": day, "reference_time": WINDOW_END}),
                "--logical-date", f"{day}T15:00:00+00:00",
            )  # fmt: skip
        after = {"after_intruder", "after_deleted_run"}
        assert wait_until("the runs after ended holders", finished(after), 300, every=2) == dict.fromkeys(
            after, "success"
        )
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:  # children that outlived their parent
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        logs.close()

    # Every event of the crashed partition, old and late, arrived exactly once (what the emulator accepted;
    # the batches the killed task had sent without recording were resent verbatim and dropped as repeats).
    assert unrecorded > 0  # the kill did leave accepted batches out of the ledger
    crash_events = [
        e["data"]["event_id"] for b in emulator.state.batches for e in b["events"] if e["data"]["event_id"] >= 1_000_000
    ]
    assert len(crash_events) == len(set(crash_events)) == 2 * (CRASH_RECORDS + LATE_RECORDS)
    assert emulator.state.stats["duplicates_dropped"] > 0
    ledger = ledger_keys(s3, CRASH_DAY)
    assert len(ledger) == 3 * (CRASH_RECORDS + LATE_RECORDS)  # every accepted key recorded: a re-run sends nothing
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=lock_key)  # released by the teardown
    journal = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{CRASH_DAY}/journal/")
    assert "Contents" not in journal  # every batch written down was answered
