"""`make run`: local S3 (moto) and the Events API emulator, seeded data, Airflow standalone, a backfill.

Everything binds to 127.0.0.1. Ctrl-C stops it all. State lives in .local/ (delete it to start over).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import msgspec
from moto.server import ThreadedMotoServer

from tools import synthetic
from tools.airflow_health import wait_for_api_server
from tools.emulator import EventsApiEmulator

ROOT = Path(__file__).resolve().parents[1]

LOCAL = ROOT / ".local"
PID_FILE = LOCAL / "run.pid"
S3_PORT, API_PORT, WEB_PORT = 5055, 8089, 8080
BUCKET, PREFIX = "local-quarantine", "mparticle/quarantine"
PLAN_KEY = "plans/main_plan.json"  # the Variable's data_plan (airflow_settings.yaml) points here


def seed(days: list) -> int:
    s3 = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{S3_PORT}", region_name="us-east-1",
        aws_access_key_id="local-access-key", aws_secret_access_key="local-secret-key",
    )  # fmt: skip
    s3.create_bucket(Bucket=BUCKET)
    # The fixed plan: version 3 allows every synthetic event but "rate trip", which the plan check holds.
    s3.put_object(Bucket=BUCKET, Key=PLAN_KEY, Body=msgspec.json.encode(synthetic.data_plan()))
    rng = random.Random(2026)
    total = 0
    for day in days:
        start_ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
        for sequence in range(3):
            lines = list(synthetic.partition_lines(rng, start_ms, 200, bad_every=97))
            key = synthetic.object_key(PREFIX, day, sequence, second=sequence)
            s3.put_object(Bucket=BUCKET, Key=key, Body=synthetic.object_body(lines, compress=sequence == 0))
            total += len(lines)
        verification = f"{PREFIX}/{day.isoformat()}/mParticle_Bucket_Verification_{day.strftime('%Y%m%d')}-000000.txt"
        s3.put_object(Bucket=BUCKET, Key=verification, Body=b"{}")
    return total


def ports_in_use(*ports: int) -> list[int]:
    busy = []
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def main() -> None:
    busy = ports_in_use(S3_PORT, API_PORT, WEB_PORT, 8793)
    if busy:
        sys.exit(f"Port(s) {busy} on 127.0.0.1 are in use: stop what holds them (a previous `make run`?) and retry.")
    LOCAL.mkdir(exist_ok=True)
    home = LOCAL / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(WEB_PORT),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{WEB_PORT}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",  # local only: no login on 127.0.0.1
        # `airflow standalone` starts its parts as `airflow ...`: the venv's bin must be on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    moto.start()
    emulator = EventsApiEmulator(
        "local-api-key",
        "local-api-secret",
        port=API_PORT,
        rate=270,
        record=LOCAL / "events_api_received.jsonl",
        data_plans=[synthetic.data_plan()],  # what mParticle would block again is counted as quarantined
    ).start()
    today = datetime.now(timezone.utc).date()
    days = [today - timedelta(days=n) for n in (3, 2, 1)]  # backfilled (3, 2) and the daily run (1)
    # Never backfilled, so the console opens on every state: one about to leave the 14-day window.
    waiting = [today - timedelta(days=n) for n in (12, 6)]
    records = seed(waiting + days)
    print(f"Local S3 on http://127.0.0.1:{S3_PORT}: s3://{BUCKET}/{PREFIX}/ seeded with {records} records for "
          f"{', '.join(d.isoformat() for d in waiting + days)}")  # fmt: skip
    print(f"Events API emulator on {emulator.url} (rate limit 270 batches/s); received batches: "
          f"{LOCAL / 'events_api_received.jsonl'}, stats: {emulator.url}/_emulator/stats")  # fmt: skip

    def airflow(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "airflow", *args], env=env, check=True)

    airflow("db", "migrate")
    subprocess.run(
        [sys.executable, "-m", "tools.load_airflow_settings", str(ROOT / "airflow_settings.yaml")],
        env=env,
        cwd=ROOT,
        check=True,
    )
    airflow("dags", "reserialize")
    # Its own process group: at the end, whatever standalone started ends with it.
    standalone = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env, start_new_session=True)
    PID_FILE.write_text(str(os.getpid()))  # for `make stop`
    try:
        start_runs(airflow, days)
        print(
            f"\nAirflow is up: http://127.0.0.1:{WEB_PORT} (local only, no login needed).\n"
            f"DAG 'mparticle_quarantine_backfill': a backfill of {days[0]}..{days[1]} and the daily run for "
            f"{days[2]}\nare running; {waiting[0]} and {waiting[1]} wait, never backfilled. The DAG's tab "
            f"'Backfill console'\n(http://127.0.0.1:{WEB_PORT}/dags/mparticle_quarantine_backfill/plugin/"
            "backfill-console) shows every date. Read each task's log; reports are under "
            f"s3://{BUCKET}/{PREFIX}/_backfill/<date>/reports/\n"
            f"(local S3: http://127.0.0.1:{S3_PORT}). Ctrl-C or `make stop` stops everything."
        )
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1):
                pass
    finally:
        PID_FILE.unlink(missing_ok=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(standalone.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            standalone.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):  # anything of standalone's still running
            os.killpg(standalone.pid, signal.SIGKILL)
        emulator.stop()
        moto.stop()


def start_runs(airflow, days) -> None:
    """Once standalone answers: unpause the DAG (the daily run takes yesterday) and backfill the two days before."""
    wait_for_api_server(WEB_PORT, timeout=240)
    time.sleep(10)  # let standalone finish starting before tasks report to it
    # The scheduler runs nothing of a paused DAG. SQLite takes one writer at a time: retry if it is busy.
    for attempt in range(6):
        try:
            airflow("dags", "unpause", "mparticle_quarantine_backfill")
            airflow(
                "backfill", "create", "--dag-id", "mparticle_quarantine_backfill",
                "--from-date", days[0].isoformat(), "--to-date", days[1].isoformat(),
            )  # fmt: skip
            break
        except subprocess.CalledProcessError:
            if attempt == 5:
                raise
            time.sleep(5)


if __name__ == "__main__":
    main()
