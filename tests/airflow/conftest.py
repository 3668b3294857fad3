"""Airflow on SQLite in a temporary AIRFLOW_HOME, S3 through a moto server, the Events API emulator.

Environment is set before Airflow is imported anywhere in the test session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mp-backfill-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:28793/execution/",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "NO_PROXY": "127.0.0.1,localhost",
    }
)

API_KEY, API_SECRET = "backfill-test-key", "backfill-test-secret"
BUCKET = "acme-quarantine"
PREFIX = "mparticle/quarantine"
POOL = "mparticle_events_api"


def airflow_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run an Airflow command; on SQLite, retried while a running scheduler holds the database."""
    for _attempt in range(15):
        done = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0:
            return done
        if "database is locked" not in done.stderr:
            break
        time.sleep(2)
    raise AssertionError(f"airflow {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def airflow_db():
    airflow_cli("db", "migrate")
    airflow_cli("pools", "set", POOL, "2", "Caps concurrent Events API senders")
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_server):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for bucket in client.list_buckets().get("Buckets", []):
        objects = client.list_objects_v2(Bucket=bucket["Name"]).get("Contents", [])
        for item in objects:
            client.delete_object(Bucket=bucket["Name"], Key=item["Key"])
        client.delete_bucket(Bucket=bucket["Name"])
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def emulator():
    from tools.emulator import EventsApiEmulator

    with EventsApiEmulator(API_KEY, API_SECRET) as server:
        yield server


@pytest.fixture
def connections(moto_server, emulator, monkeypatch):
    """Connections and the settings Variable, as environment variables (no DB writes needed)."""
    host, port = emulator.url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_EVENTS_API",
        json.dumps(
            {
                "conn_type": "http",
                "host": host,
                "schema": "http",
                "port": int(port),
                "login": API_KEY,
                "password": API_SECRET,
                "extra": {"batches_per_second": 5000, "max_retries": 3},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_VAR_MPARTICLE_BACKFILL", json.dumps({"bucket": BUCKET, "prefix": PREFIX}))
    return emulator


def clear_dag_runs(dag_id: str = "mparticle_quarantine_backfill") -> int:
    """Delete every run of the DAG from the session's Airflow database (runs other tests left there: a test
    that reads "all the DAG's runs", as the console does, must start from none, whatever ran before it)."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id).delete(synchronize_session=False)
        return session.query(DagRun).filter(DagRun.dag_id == dag_id).delete(synchronize_session=False)


def events_api_connection(monkeypatch, emulator, **extra) -> None:
    """Point the ``mparticle_events_api`` connection (type ``mparticle``) at the emulator with these client
    extras (``max_workers``, ``max_retries``, ``senders``...) over a pace no test waits on."""
    host, port = emulator.url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_EVENTS_API",
        json.dumps({
            "conn_type": "mparticle", "host": host, "schema": "http", "port": int(port),
            "login": API_KEY, "password": API_SECRET, "extra": {"batches_per_second": 5000, **extra},
        }),
    )  # fmt: skip
