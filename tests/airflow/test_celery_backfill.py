"""The DAG on Airflow's CeleryExecutor as a scaled-out deployment runs it: a Redis broker, two Celery workers,
a scheduler, a dag-processor and the api-server (the execution API the workers' tasks report to). A backfill
of two dates whose mapped tasks spread over both workers, then a re-run of the same dates."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.airflow.conftest import AIRFLOW_HOME, BUCKET, PREFIX, events_api_connection
from tests.airflow.test_dag_end_to_end import lines, record
from tests.airflow.test_scheduler_backfill import day_ms, finished, free_port, runs_of, wait_until
from tools.airflow_health import wait_for_api_server

pytestmark = pytest.mark.airflow
DAG_ID = "mparticle_quarantine_backfill"
DAYS = ["2026-11-11", "2026-11-12"]  # apart from the other scheduler tests' dates (one metadata DB per session)
OBJECTS_PER_DAY = 2  # one object per mapped chunk (files_per_chunk=1): 2 of each mapped task a run
RECORDS_PER_OBJECT = 25
WINDOW_END = "2026-11-13T06:00:00Z"
WORKERS = ("worker-a", "worker-b")
WORKER_CONCURRENCY = 2
# What README's "Running at scale" tells a deployment to import once per worker ([celery] extra_celery_config).
WORKER_PRELOAD = [
    "mparticle_backfill_airflow.tasks",
    "mparticle_backfill_airflow.s3_hook",
    "mparticle_backfill_airflow.operators",
    "mparticle_backfill_console.app",
]
REDIS_SERVER = "/usr/bin/redis-server"
# The line a Celery worker logs for each task instance it takes:
# "[<celery task id>] Executing workload in Celery: ... ti=TaskInstanceDTO(id=UUID('<task instance id>'), ...".
WORKLOAD_LINE = re.compile(r"Executing workload in Celery: .*?\bti=TaskInstanceDTO\(id=UUID\('([0-9a-f-]{36})'\)")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def redis_broker(tmp_path) -> Iterator[str]:
    """A Redis server of the test's own: a free loopback port, a temporary directory, nothing persisted."""
    if not os.access(REDIS_SERVER, os.X_OK):
        reason = f"the Celery test needs {REDIS_SERVER}: run tools/install_redis.sh (make redis)"
        if in_ci():
            pytest.fail(f"{reason} (CI is set, so the Celery test must run)")
        pytest.skip(reason)
    import redis

    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", "",
         "--appendonly", "no", "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

        def answers() -> bool:
            with contextlib.suppress(redis.RedisError):
                return bool(client.ping())
            return False

        wait_until("redis-server answering", answers, 30, 0.2)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def seed(s3) -> list[int]:
    """OBJECTS_PER_DAY objects of RECORDS_PER_OBJECT records per date; the ids of the blocked events."""
    blocked = []
    for day_index, day in enumerate(DAYS):
        for object_index in range(OBJECTS_PER_DAY):
            first = 10_000 * (day_index + 1) + 100 * object_index
            records = [record(first + n, timestamp_ms=day_ms(day)) for n in range(RECORDS_PER_OBJECT)]
            s3.put_object(
                Bucket=BUCKET,
                Key=f"{PREFIX}/{day}/mPTravel_{day.replace('-', '')}100000000000_0000{object_index}.txt",
                Body=lines(*records),
            )
            blocked += [10 * (first + n) + event for n in range(RECORDS_PER_OBJECT) for event in (0, 1)]
    return blocked


def reports_of(s3, run_ids: set[str]) -> dict[str, dict]:
    """Each run's JSON report, by run id."""
    found = {}
    for day in DAYS:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_backfill/{day}/reports/")
        for item in listing.get("Contents", []):
            if item["Key"].endswith(".json"):
                report = json.loads(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read())
                if report["run_id"] in run_ids:
                    found[report["run_id"]] = report
    return found


def task_instances(run_ids: set[str]) -> dict[str, tuple[str, int, str]]:
    """(task id, map index, state) of every task instance of the runs, by task instance id."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id.in_(run_ids))
        return {str(ti.id): (ti.task_id, ti.map_index, str(ti.state)) for ti in rows}


def workers_answering(broker_url: str) -> set[str]:
    """The Celery workers that answer a ping through the broker (``celery@<-H name>``)."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        return {name for reply in app.control.ping(timeout=2) for name in reply}
    finally:
        app.close()


class RestApi:
    """Airflow's public REST API on the test's api-server, as the UI and scripts use it. (Each ``airflow``
    command would start a Python that imports Airflow: seconds of CPU the workers need.)"""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def dag_exists(self, dag_id: str) -> bool:
        return requests.get(f"{self.base}/api/v2/dags/{dag_id}", headers=self._auth(), timeout=30).ok

    def call(self, method: str, path: str, body: dict) -> dict:
        """One request; retried on a 5xx (SQLite busy). A 409 on a retry: the earlier try went through."""
        for attempt in range(10):
            answer = requests.request(method, f"{self.base}/api/v2/{path}", json=body, headers=self._auth(), timeout=60)
            if answer.ok or (answer.status_code == 409 and attempt):
                return answer.json() if answer.content else {}
            if answer.status_code < 500:
                break
            time.sleep(2)
        raise AssertionError(f"{method} {path}: {answer.status_code} {answer.text[:2000]}")

    def _auth(self) -> dict[str, str]:
        # The simple auth manager with every user an admin ([core] simple_auth_manager_all_admins) hands out a
        # token without credentials.
        token = requests.get(f"{self.base}/auth/token", timeout=30).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}


# The test's own waits add up to ~1,300 s at worst (redis 30, api-server 180, the DAG parsed 180, workers
# 180, the backfill 360, the re-runs 360): pytest's timeout must not end it before one of them does.
@pytest.mark.timeout(1500)
def test_a_backfill_spread_over_two_celery_workers(airflow_db, s3, connections, redis_broker, monkeypatch):
    emulator = connections
    blocked = seed(s3)
    # One object per chunk, so that each run maps extract/filter/transform tasks the workers share.
    monkeypatch.setenv(
        "AIRFLOW_VAR_MPARTICLE_BACKFILL", json.dumps({"bucket": BUCKET, "prefix": PREFIX, "files_per_chunk": 1})
    )
    # senders = the pool's slots (2, set by airflow_db): what the README tells a deployment
    events_api_connection(monkeypatch, emulator, senders=2, max_retries=3)
    port = free_port()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", str(len(WORKERS) * WORKER_CONCURRENCY))
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", f"{redis_broker}/0")
    # Task states back to the scheduler through a database, as the provider advises (not Redis); on SQLite its own
    # file, so that the workers' writes do not queue behind the scheduler's on the metadata DB.
    monkeypatch.setenv("AIRFLOW__CELERY__RESULT_BACKEND", f"db+sqlite:///{AIRFLOW_HOME}/celery-results.db")
    monkeypatch.setenv("AIRFLOW__CELERY__WORKER_CONCURRENCY", str(WORKER_CONCURRENCY))
    monkeypatch.setenv("AIRFLOW__CELERY__SYNC_PARALLELISM", "1")
    # Each worker imports the project's packages (and the console plugin's app) once: its tasks fork with them
    # loaded instead of importing boto3, the hooks and FastAPI each time.
    monkeypatch.setenv("AIRFLOW__CELERY__EXTRA_CELERY_CONFIG", json.dumps({"imports": WORKER_PRELOAD}))
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
    monkeypatch.setenv("AIRFLOW__API__HOST", "127.0.0.1")  # loopback only
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")  # for the REST calls
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1")
    # Only the runs the test makes: no daily run of today (the 2 cores are the workers').
    monkeypatch.setenv("AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE", "False")
    logs: dict[str, Path] = {name: AIRFLOW_HOME / f"celery-test-{name}.log" for name in ("airflow", *WORKERS)}
    handles = {name: path.open("w") for name, path in logs.items()}
    print("Logs of the Airflow processes and of each worker:", *logs.values())  # shown if the test fails

    def start(log: str, *args: str) -> subprocess.Popen:
        # Each in its own process group: a worker's pool processes and task processes end with it.
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            stdout=handles[log],
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
            start_new_session=True,
        )

    # Everything at once (each takes seconds to import Airflow). Two workers on one machine, as two hosts would
    # run them: each its own Celery node name; their log servers are skipped (one port per host; the task logs
    # are on this shared disk anyway).
    processes = [start("airflow", "api-server", "--port", str(port))]
    api, backfill, made_runs = RestApi(port), {}, set()
    try:
        processes += [start("airflow", "scheduler"), start("airflow", "dag-processor")]
        processes += [
            start(name, "celery", "worker", "-H", name, "--concurrency", str(WORKER_CONCURRENCY), "--skip-serve-logs")
            for name in WORKERS
        ]
        wait_for_api_server(port, timeout=180)
        wait_until("the DAG parsed", lambda: api.dag_exists(DAG_ID), 180, 2)
        expected = {f"celery@{name}" for name in WORKERS}
        wait_until("both Celery workers ready", lambda: workers_answering(redis_broker) >= expected, 180, 2)

        # 1. A backfill of two dates: every blocked event of both partitions arrives exactly once. Created while the
        # DAG is paused (the scheduler leaves a paused DAG's runs alone): on SQLite, a creation retried after
        # "database is locked" must not race a scheduler that picked up runs of the failed try.
        api.call("PATCH", f"dags/{DAG_ID}", {"is_paused": True})
        backfill = api.call("POST", "backfills", {
            "dag_id": DAG_ID, "from_date": f"{DAYS[0]}T00:00:00Z", "to_date": f"{DAYS[-1]}T00:00:00Z",
            "dag_run_conf": {"reference_time": WINDOW_END},
        })  # fmt: skip
        backfill_ids = {
            run_id for run_id, start_, *_ in runs_of(DAG_ID, "backfill") if start_.date().isoformat() in DAYS
        }
        assert len(backfill_ids) == 2
        made_runs.update(backfill_ids)
        api.call("PATCH", f"dags/{DAG_ID}", {"is_paused": False})
        assert set(wait_until("the backfill", finished(backfill_ids), 360, every=2).values()) == {"success"}
        sent = sorted(int(e["data"]["event_id"]) for b in emulator.state.batches for e in b["events"])
        assert sent == sorted(blocked)  # each partition's blocked events, once
        assert emulator.state.stats["duplicates_dropped"] == 0

        # 2. The same dates again (manual runs): the ledger knows everything was accepted; nothing is sent.
        batches_before = len(emulator.state.batches)
        rerun_ids = {f"rerun_{day}" for day in DAYS}
        made_runs.update(rerun_ids)
        for day in DAYS:
            api.call("POST", f"dags/{DAG_ID}/dagRuns", {
                "dag_run_id": f"rerun_{day}", "logical_date": f"{day}T12:00:00Z",
                "conf": {"partition_date": day, "reference_time": WINDOW_END},
            })  # fmt: skip
        assert set(wait_until("the re-runs", finished(rerun_ids), 360, every=2).values()) == {"success"}
        assert len(emulator.state.batches) == batches_before
        assert emulator.state.stats["duplicates_dropped"] == 0  # not even resent
        instances = task_instances(backfill_ids | rerun_ids)
    finally:
        # The session's later tests share the metadata DB: they must not meet this test's runs or an open backfill.
        with contextlib.suppress(Exception):
            api.call("PUT", f"backfills/{backfill['id']}/cancel", {})  # 409 once the scheduler marked it complete
        for run_id in made_runs:
            with contextlib.suppress(Exception):
                api.call("DELETE", f"dags/{DAG_ID}/dagRuns/{run_id}", {})
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for process in processes:  # children that outlived their parent
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for handle in handles.values():
            handle.close()

    # The reports reconcile: the backfill replayed every record, the re-run found them all already replayed.
    records_per_day = OBJECTS_PER_DAY * RECORDS_PER_OBJECT
    reports = reports_of(s3, backfill_ids | rerun_ids)
    assert set(reports) == backfill_ids | rerun_ids
    for run_id, report in reports.items():
        assert report["reconciled"] is True, run_id
        assert report["summary"]["records_read"] == records_per_day, run_id
        outcome = "already_replayed" if run_id in rerun_ids else "replayed"
        assert report["totals"][outcome] == records_per_day, (run_id, report["totals"])

    # Both workers ran task instances, and each task instance ran on exactly one of them: the task instance ids
    # each worker logged as it took them, against the runs' task instances in the metadata DB.
    assert {state for _, _, state in instances.values()} == {"success"}
    taken = {name: WORKLOAD_LINE.findall(logs[name].read_text()) for name in WORKERS}
    for name in WORKERS:
        assert len(taken[name]) >= 3, f"{name} ran {len(taken[name])} task instances: the work was not spread"
    assert sorted(taken[WORKERS[0]] + taken[WORKERS[1]]) == sorted(instances)  # each once, none elsewhere
    mapped = {name: {instances[ti_id][0] for ti_id in taken[name] if instances[ti_id][1] >= 0} for name in WORKERS}
    assert mapped[WORKERS[0]] and mapped[WORKERS[1]], mapped  # mapped chunks on both
