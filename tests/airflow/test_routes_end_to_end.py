"""Routes end to end (dag.test, moto, three emulators with their own keys): each batch reaches the input
its platform routes it to; a route whose credentials are refused fails visibly without hiding the others."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX
from tests.airflow.test_dag_end_to_end import DAY, RUN_CONF, get_dag, lines, record, report
from tools.emulator import EventsApiEmulator

pytestmark = pytest.mark.airflow
ROUTES = [
    {"name": "web", "when": [{"field": "source_info.channel", "equals": "javascript"}], "connection": "mparticle_web"},
    {"name": "ios", "when": [{"field": "application_info.os", "in": ["IOS", "iOS"]}], "connection": "mparticle_ios"},
]
WEB, IOS, FEED = [9300, 9301], [9310], [9320, 9321]  # record ids per platform (feed: no route -> default)


def events_of(emulator) -> list[int]:
    return sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def blocked_events(*records: int) -> list[int]:
    return sorted(event for n in records for event in (n * 10, n * 10 + 1))


def connection(monkeypatch, conn_id: str, emulator, key: str, secret: str) -> None:
    host, port = emulator.url.removeprefix("http://").split(":")
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({
            "conn_type": "mparticle", "host": host, "schema": "http", "port": int(port),
            "login": key, "password": secret, "extra": {"batches_per_second": 5000, "max_retries": 2},
        }),
    )  # fmt: skip


def run_with(conf: dict):
    return get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, **conf})


def test_each_platform_reaches_its_input_and_a_refused_route_fails_alone(airflow_db, s3, connections, monkeypatch):
    default = connections
    web_records = [record(n, source_info={"channel": "javascript"}, application_info={"os": "web"}) for n in WEB]
    ios_records = [record(n, application_info={"os": "IOS"}) for n in IOS]
    feed_records = [record(n) for n in FEED]  # source_info.channel "partner", os "OutOfBand"
    s3.put_object(
        Bucket=BUCKET,
        Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt",
        Body=lines(*web_records, *ios_records, *feed_records),
    )
    with EventsApiEmulator("web-key", "web-secret") as web, EventsApiEmulator("ios-key", "ios-secret") as ios:
        connection(monkeypatch, "mparticle_web", web, "web-key", "web-secret")
        connection(monkeypatch, "mparticle_ios", ios, "ios-key", "not-the-ios-secret")
        conf = {"routes": ROUTES}

        first = run_with(conf)
        assert first.state == "failed"  # the iOS input refused its credentials: visibly, that route only
        assert events_of(web) == blocked_events(*WEB)
        assert events_of(default) == blocked_events(*FEED)
        assert ios.state.batches == [] and ios.state.stats["status_403"] >= 1

        connection(monkeypatch, "mparticle_ios", ios, "ios-key", "ios-secret")  # fixed
        second = run_with(conf)
        assert second.state == "success"
        assert events_of(ios) == blocked_events(*IOS)
        assert events_of(web) == blocked_events(*WEB) and events_of(default) == blocked_events(*FEED)  # not again
        counts = report(s3, second)["summary"]["counts"]
        assert counts["route:mparticle_ios:batches_accepted"] == 1
        assert "route:mparticle_web:batches_accepted" not in counts  # the ledger had them

        third = run_with(conf)
        assert third.state == "success"
        assert report(s3, third)["totals"]["already_replayed"] == 5
        for emulator in (web, ios, default):
            assert emulator.state.stats["duplicates_dropped"] == 0


def test_unrouted_batches_can_be_held_and_unknown_connections_fail_before_reading(
    airflow_db, s3, connections, monkeypatch
):
    s3.put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*map(record, FEED))
    )
    unknown = run_with({"routes": [{**ROUTES[0], "connection": "no_such_connection"}]})
    assert unknown.state == "failed"
    assert connections.state.batches == []

    # A route to an input without credentials: it exists, and no batch goes there, so it is never opened.
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_WEB", json.dumps({"conn_type": "mparticle", "host": "127.0.0.1"}))
    held = run_with({"routes": ROUTES[:1], "unrouted": "hold"})
    assert held.state == "success"
    assert connections.state.batches == []
    summary = report(s3, held)
    assert summary["totals"]["held"] == 2
    assert ["held", "no_route", 2] in summary["summary"]["outcomes"]
