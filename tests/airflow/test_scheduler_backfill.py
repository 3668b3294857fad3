"""A real scheduler (LocalExecutor on SQLite) runs `airflow backfill create` over three dates."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from tests.airflow.conftest import AIRFLOW_HOME, airflow_cli
from tests.airflow.test_dag_end_to_end import BUCKET, PREFIX, lines, record
from tools.airflow_health import wait_for_api_server

pytestmark = pytest.mark.airflow
DAYS = ["2026-11-17", "2026-11-18", "2026-11-19"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_runs(dag_id: str, count: int, timeout: float) -> list:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            runs = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_type == "backfill").all()
            finished = [r for r in runs if r.state in ("success", "failed")]
            if len(runs) >= count and len(finished) == len(runs):
                return [(r.data_interval_start, r.state, r.run_type) for r in runs]
        time.sleep(3)
    raise AssertionError(f"backfill runs did not finish in {timeout}s")


def test_backfill_three_dates_each_partition_once(airflow_db, s3, connections, monkeypatch):
    emulator = connections
    for index, day in enumerate(DAYS):
        when = int(datetime.fromisoformat(f"{day}T10:00:00+00:00").timestamp() * 1000)
        s3.put_object(
            Bucket=BUCKET,
            Key=f"{PREFIX}/{day}/mPTravel_{day.replace('-', '')}100000000000_0000{index}.txt",
            Body=lines(record(7000 + index, timestamp_ms=when)),
        )
    # Backfilled days are days before "now": pin the window's end so the data is inside it.
    monkeypatch.setenv(
        "AIRFLOW_VAR_MPARTICLE_BACKFILL",
        f'{{"bucket": "{BUCKET}", "prefix": "{PREFIX}", "reference_time": "2026-11-20T06:00:00Z"}}',
    )
    port = free_port()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "4")
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    monkeypatch.setenv("AIRFLOW__API__PORT", str(port))
    monkeypatch.setenv("AIRFLOW__API__HOST", "127.0.0.1")  # loopback only
    monkeypatch.setenv("AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC", "1")
    airflow_cli("dags", "reserialize")
    airflow_cli("dags", "unpause", "mparticle_quarantine_backfill")  # a paused DAG's backfill never runs
    airflow_cli(
        "backfill", "create", "--dag-id", "mparticle_quarantine_backfill",
        "--from-date", DAYS[0], "--to-date", DAYS[-1],
    )  # fmt: skip
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
        processes += [start("scheduler"), start("dag-processor")]
        runs = wait_for_runs("mparticle_quarantine_backfill", 3, timeout=420)
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
    assert sorted((start.date().isoformat(), state) for start, state, _ in runs) == [(d, "success") for d in DAYS]
    assert {str(run_type) for _, _, run_type in runs} == {"backfill"}
    sent = sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])
    assert sent == sorted([70000, 70001, 70010, 70011, 70020, 70021])  # each partition's blocked events, once
    assert emulator.state.stats["duplicates_dropped"] == 0
    assert datetime.now(timezone.utc).year >= 2026
