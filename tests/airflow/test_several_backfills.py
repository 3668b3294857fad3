"""Several quarantine outputs from one configuration: one DAG per entry, each with its own bucket, state,
connections and emulator; a broken entry is an import error naming it, and the others still load."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.airflow.conftest import API_KEY, API_SECRET, ROOT
from tests.airflow.test_dag_end_to_end import DAY, RUN_CONF, lines, record
from tools.emulator import EventsApiEmulator

pytestmark = pytest.mark.airflow
CONFIG = """
backfills:
  - name: eu_workspace
    description: the EU workspace's quarantine output
    settings: {bucket: acme-eu-quarantine, prefix: mparticle}
    events_api_conn_id: mparticle_events_api_eu
    pool: mparticle_events_api
    tags: [eu]
  - name: us_workspace
    # A rule no batch matches: what it does not match goes to this entry's own connection, not the global one.
    settings:
      bucket: acme-us-quarantine
      prefix: quarantine
      max_age_days: 10
      routes: [{when: [{field: source_info.channel, equals: no-such-channel}], connection: mparticle_events_api_eu}]
    events_api_conn_id: mparticle_events_api_us
  - name: broken_one
    settings: {bucket: acme-eu-quarantine, max_age_days: 45}
"""


def events_of(emulator) -> list[int]:
    return sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def test_one_dag_per_entry_each_into_its_own_input(airflow_db, s3, connections, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "mparticle_backfills.yaml"
    config.write_text(CONFIG)
    monkeypatch.setenv("MPARTICLE_BACKFILLS_CONFIG", str(config))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert set(bag.dags) == {
        "mparticle_quarantine_backfill__eu_workspace",
        "mparticle_quarantine_backfill__us_workspace",
    }
    ((check_file, error),) = bag.import_errors.items()
    assert check_file.endswith("mparticle_backfills_check.py")
    assert "broken_one" in error and "max_age_days" in error
    eu_dag = bag.dags["mparticle_quarantine_backfill__eu_workspace"]
    assert "eu" in eu_dag.tags and "EU workspace" in eu_dag.doc_md
    assert eu_dag.get_task("send").pool == "mparticle_events_api"

    for bucket, prefix, batch in (
        ("acme-eu-quarantine", "mparticle", 9500),
        ("acme-us-quarantine", "quarantine", 9600),
    ):
        s3.create_bucket(Bucket=bucket)
        s3.put_object(
            Bucket=bucket, Key=f"{prefix}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(record(batch))
        )
    with EventsApiEmulator(API_KEY, API_SECRET) as eu, EventsApiEmulator(API_KEY, API_SECRET) as us:
        for name, emulator in (("EU", eu), ("US", us)):
            host, port = emulator.url.removeprefix("http://").split(":")
            monkeypatch.setenv(
                f"AIRFLOW_CONN_MPARTICLE_EVENTS_API_{name}",
                json.dumps({"conn_type": "mparticle", "host": host, "schema": "http", "port": int(port),
                            "login": API_KEY, "password": API_SECRET, "extra": {"batches_per_second": 5000}}),
            )  # fmt: skip
        for dag_id in sorted(bag.dags):
            run = bag.dags[dag_id].test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf=RUN_CONF)
            assert run.state == "success", dag_id
        assert events_of(eu) == [95000, 95001]
        assert events_of(us) == [96000, 96001]
        assert connections.state.batches == []  # the default input got nothing
    for bucket, prefix in (("acme-eu-quarantine", "mparticle"), ("acme-us-quarantine", "quarantine")):
        reports = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_backfill/{DAY}/reports/")["Contents"]
        assert len(reports) == 2  # its own state, next to its own data


def test_without_a_configuration_the_single_dag_of_today(airflow_db, monkeypatch, tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MPARTICLE_BACKFILLS_CONFIG", str(tmp_path / "none.yaml"))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert set(bag.dags) == {"mparticle_quarantine_backfill"} and bag.import_errors == {}
