"""Benchmark: the backfill console's page for a year of quarantine dates and thousands of reports.

A moto server on 127.0.0.1 holds ``--dates`` date folders, each with ``--runs`` reports (JSON and
Markdown) and dead letters on some, a few locks; Airflow's database (SQLite, a temporary AIRFLOW_HOME)
holds a DagRun for every report. The page is requested from the api-server's own app (Airflow's
``create_app``, plugins mounted, auth dependency included) with an HTTP client, as the UI's iframe does:

- first load: S3 listed and every report read (the cold cache);
- cached: within the TTL, S3 is not read;
- stale: past the TTL the page is still answered from the last snapshot while a background thread
  reads S3 again (its duration is printed: only listings and changed reports);
- forced refresh (``?refresh=true``): the same re-read, waited for.

    .venv/bin/python bench/bench_console.py --dates 365 --runs 6 --check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HOME = Path(tempfile.mkdtemp(prefix="mp-backfill-bench-console-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": "bench-console-" + "x" * 64,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
)

BUCKET, PREFIX = "bench-quarantine", "mparticle/quarantine"
STATE = f"{PREFIX}/_backfill"
DAG_ID = "mparticle_quarantine_backfill"


def airflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "airflow", *args], check=True, capture_output=True, timeout=600)


def seed(s3, days: list, runs: int) -> list[tuple[str, str, object]]:
    """Quarantine folders, ``runs`` reports per date, dead letters on some, locks on a few; the run ids."""
    from tests.fixtures.console.seed import make_report, put_lock, put_quarantine, put_report

    jobs, made = [], []
    for index, day in enumerate(days):
        jobs.append(lambda day=day: put_quarantine(s3, BUCKET, PREFIX, day))
        for run in range(runs):
            run_id = f"backfill__{day}T00:00:00+00:00" if run == 0 else f"manual__{day}T{run:02d}:00:00+00:00"
            outcomes = {("replayed", "replayed"): 400 + index, ("too_old", "older_than_window"): 90}
            if (index + run) % 4 == 0:
                outcomes[("dead_lettered", "invalid_json")] = 3 + run
            if (index + run) % 9 == 0:
                outcomes[("held", "plan_blocks_again")] = 5
            report = make_report(day, run_id, outcomes, state_bucket=BUCKET, state_prefix=STATE)
            jobs.append(lambda report=report: put_report(s3, BUCKET, STATE, report))
            made.append((run_id, "success" if run < runs - 1 or index % 7 else "failed", day))
        if index % 60 == 0:
            jobs.append(lambda day=day: put_lock(s3, BUCKET, STATE, day, f"manual__{day}T09:00:00+00:00"))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: job(), jobs))
    return made


def add_runs(runs: list) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        for run_id, state, day in runs:
            start = datetime.combine(day, datetime.min.time(), timezone.utc)
            manual = run_id.startswith("manual__")
            session.add(
                DagRun(
                    dag_id=DAG_ID, run_id=run_id, run_type="manual" if manual else "backfill", state=state,
                    conf={"partition_date": day.isoformat()} if manual else {},
                    logical_date=None if manual else start,
                    data_interval=None if manual else (start, start + timedelta(days=1)),
                    run_after=start + timedelta(days=1, hours=1),
                )
            )  # fmt: skip


def timed(client, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text[:500]
    return elapsed, len(answer.content)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dates", type=int, default=365)
    parser.add_argument("--runs", type=int, default=6, help="reports per date")
    parser.add_argument("--repeat", type=int, default=10, help="cached requests to time")
    parser.add_argument("--check", action="store_true", help="fail if a page after the first takes 2 s or more")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    print(f"Airflow home {HOME}: db migrate, reserialize ...", flush=True)
    airflow("db", "migrate")
    airflow("dags", "reserialize")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3"] = json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing",
         "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    )  # fmt: skip
    os.environ["AIRFLOW_VAR_MPARTICLE_BACKFILL"] = json.dumps({"bucket": BUCKET, "prefix": PREFIX})
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        today = datetime.now(timezone.utc).date()
        days = [today - timedelta(days=n) for n in range(1, args.dates + 1)]
        started = time.perf_counter()
        runs = seed(s3, days, args.runs)
        add_runs(runs)
        print(
            f"Seeded {len(days)} dates, {len(runs)} reports (+ Markdown), {len(runs)} DagRuns "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient
        from mparticle_backfill_console import app as console_app

        client = TestClient(create_app())
        url = f"/mparticle-backfill/dags/{DAG_ID}/console"
        first, size = timed(client, url)
        snapshot = next(iter(console_app.snapshots._entries.values())).snapshot
        cached = [timed(client, url)[0] for _ in range(args.repeat)]
        console_app.snapshots.ttl = 0.0  # every snapshot is stale now: served at once, refreshed behind
        stale, _ = timed(client, url)
        assert console_app.snapshots.join(timeout=120)
        background = next(iter(console_app.snapshots._entries.values())).snapshot
        console_app.snapshots.ttl = 3600.0
        forced, _ = timed(client, url + "?refresh=true")
        json_time, _ = timed(client, url + ".json")
    finally:
        server.stop()

    rows = [
        ("first load (S3 listed, every report read)", first),
        (f"cached, median of {args.repeat}", statistics.median(cached)),
        (f"cached, slowest of {args.repeat}", max(cached)),
        ("stale snapshot (answered, refresh behind)", stale),
        ("forced refresh (listings, ETag-cached reports)", forced),
        ("JSON of the same figures, cached", json_time),
    ]
    print(f"\nConsole page: {len(days)} dates, {len(runs)} reports, page {size / 1024:.0f} KiB")
    for label, seconds in rows:
        print(f"  {label:<50}{seconds * 1000:>9.0f} ms")
    print(
        f"  S3 read at first load: {snapshot.seconds:.2f} s ({snapshot.reports_read} reports fetched); "
        f"background refresh: {background.seconds:.2f} s ({background.reports_read} reports fetched)"
    )
    if args.check and max(max(cached), stale, json_time) >= 2.0:
        sys.exit("FAIL: a page after the first load took 2 s or more")


if __name__ == "__main__":
    main()
