"""MParticleEventsHook: connection fields to client settings, and test_connection over HTTP."""

from __future__ import annotations

import json

import pytest

from mparticle_backfill_airflow.events_api_hook import MParticleEventsHook
from tests.airflow.conftest import API_KEY, API_SECRET


def set_connection(monkeypatch, **fields) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_EVENTS_API", json.dumps({"conn_type": "http", **fields}))


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        pytest.param(
            {"host": "https://s2s.eu1.mparticle.com"}, "https://s2s.eu1.mparticle.com/v2/bulkevents", id="url"
        ),
        pytest.param({"host": "s2s.us2.mparticle.com"}, "https://s2s.us2.mparticle.com/v2/bulkevents", id="bare-https"),
        pytest.param(
            {"host": "127.0.0.1", "schema": "http", "port": 8089}, "http://127.0.0.1:8089/v2/bulkevents", id="parts"
        ),
        pytest.param(
            {"host": "https://s2s.mparticle.com/v2/"}, "https://s2s.mparticle.com/v2/bulkevents", id="with-v2"
        ),
    ],
)
def test_host_forms(monkeypatch, fields, url):
    extra = {"batches_per_second": 100, "senders": 4, "max_workers": 2}
    set_connection(monkeypatch, login="k", password="s", extra=extra, **fields)
    hook = MParticleEventsHook()
    client = hook.get_conn()
    assert client.url == url
    # The connection's rate is shared by the pool's senders: each paces itself at 100 / 4.
    assert hook.client_settings.batches_per_second == 25 and hook.client_settings.max_workers == 2
    assert not {"batches_per_second", "senders", "max_workers"} & set(client._session.headers)  # not sent as headers
    assert "'s'" not in repr(hook.client_settings)


def test_test_connection_accepts_and_refuses(monkeypatch, emulator):
    host, port = emulator.url.removeprefix("http://").split(":")
    set_connection(monkeypatch, host=host, schema="http", port=int(port), login=API_KEY, password=API_SECRET)
    ok, message = MParticleEventsHook().test_connection()
    assert ok, message
    set_connection(monkeypatch, host=host, schema="http", port=int(port), login=API_KEY, password="wrong-secret")
    ok, message = MParticleEventsHook().test_connection()
    assert not ok and "refused" in message and "wrong-secret" not in message
    set_connection(monkeypatch, host=host, schema="http", port=int(port))
    ok, message = MParticleEventsHook().test_connection()
    assert not ok and "API key and secret" in message


def test_the_ui_test_button_of_an_mparticle_connection_runs_our_check(monkeypatch, emulator, airflow_db):
    """The package registers connection type ``mparticle``: Airflow's own test (the UI's Test button) runs
    MParticleEventsHook.test_connection, an empty bulk request that checks the key and secret."""
    from airflow.models.connection import Connection

    host, port = emulator.url.removeprefix("http://").split(":")
    fields = {"host": host, "schema": "http", "port": int(port), "login": API_KEY}
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_EVENTS_API", json.dumps({"conn_type": "mparticle", "password": API_SECRET, **fields})
    )
    connection = Connection.get_connection_from_secrets("mparticle_events_api")
    assert type(connection.get_hook()) is MParticleEventsHook
    ok, message = connection.test_connection()
    assert ok and "API key and secret were accepted" in message, message
    requests_seen = emulator.state.stats["requests"]
    monkeypatch.setenv(
        "AIRFLOW_CONN_MPARTICLE_EVENTS_API", json.dumps({"conn_type": "mparticle", "password": "nope", **fields})
    )
    ok, message = Connection.get_connection_from_secrets("mparticle_events_api").test_connection()
    assert not ok and "refused" in message and "nope" not in message
    assert emulator.state.stats["requests"] > requests_seen
