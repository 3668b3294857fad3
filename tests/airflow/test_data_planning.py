"""MParticleDataPlanningHook over real HTTP, against a local stand-in for mParticle's SSO and Data Planning API."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mparticle_backfill.errors import CredentialsRefused, InvalidSettings
from mparticle_backfill.plan_check import load_plan
from mparticle_backfill_airflow.data_planning import (
    DEFAULT_API_URL,
    DEFAULT_TOKEN_URL,
    DataPlanningCredentialsRefused,
    DataPlanningUnavailable,
    DataPlanNotFound,
    MParticleDataPlanningHook,
)

CLIENT_ID, CLIENT_SECRET = "dp-client-id", "dp-client-secret-s3cr3t"
WORKSPACE = 4321
PLAN_ID = "higgs_shop_basic_data_plan"
VERSION = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "plans" / "higgs_shop_v1.json").read_text())
PLAN = {"data_plan_id": PLAN_ID, "data_plan_name": "Higgs Shop", "data_plan_versions": [VERSION]}
PLAN_PATH = re.compile(
    r"^/platform/v2/workspaces/(?P<workspace>[^/]+)/plans/(?P<plan>[^/]+)(?:/versions/(?P<version>\d+))?$"
)


class StandIn:
    """State of the stand-in: what it issued, what it was asked, and scripted answers to come."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expires_in = 28800
        self.valid_tokens: set[str] = set()
        self.token_bodies: list[dict[str, Any]] = []
        self.api_requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.scripted: list[tuple[int, dict[str, str], dict[str, Any]]] = []  # answers to the next API calls
        self.always_unauthorized = False

    def token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.token_bodies.append(body)
            if body.get("grant_type") != "client_credentials" or body.get("audience") != "https://api.mparticle.com":
                return 403, {"error": "access_denied", "error_description": "Service not enabled within domain"}
            if body.get("client_id") != CLIENT_ID or body.get("client_secret") != CLIENT_SECRET:
                return 401, {"error": "access_denied", "error_description": "Unauthorized"}
            token = f"token-{len(self.token_bodies)}"
            self.valid_tokens.add(token)
            return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}

    def api(self, path: str, authorization: str | None) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.api_requests.append((path, authorization))
            token = (authorization or "").removeprefix("Bearer ")
            if self.always_unauthorized or token not in self.valid_tokens:
                return 401, {}, {"errors": [{"message": "Unauthorized"}]}
            if self.scripted:
                return self.scripted.pop(0)
        match = PLAN_PATH.match(path)
        if not match:
            return 404, {}, {"errors": [{"message": "Not Found"}]}
        if match["workspace"] != str(WORKSPACE):
            return 403, {}, {"errors": [{"message": "Forbidden"}]}
        if match["plan"] != PLAN_ID:
            return 404, {}, {"errors": [{"message": "Data plan not found"}]}
        if match["version"] is None:
            return 200, {}, PLAN
        if int(match["version"]) != VERSION["version"]:
            return 404, {}, {"errors": [{"message": "Data plan version not found"}]}
        return 200, {}, VERSION


def make_handler(state: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self, status: int, headers: dict[str, str], body: Any) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/oauth/token" or self.headers.get("Content-Type") != "application/json":
                self.answer(400, {}, {"error": "invalid_request"})
                return
            status, answer = state.token(body)
            self.answer(status, {}, answer)

        def do_GET(self) -> None:
            self.answer(*state.api(self.path, self.headers.get("Authorization")))

    return Handler


@pytest.fixture
def stand_in():
    state = StandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def set_connection(monkeypatch, stand_in, password=CLIENT_SECRET, **extra) -> None:
    fields = {
        "conn_type": "http",
        "login": CLIENT_ID,
        "password": password,
        "extra": {
            "workspace_id": WORKSPACE,
            "token_url": f"{stand_in.url}/oauth/token",
            "api_url": stand_in.url,
            "backoff_seconds": 0.01,
            "max_retries": 2,
            **extra,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_DATA_PLANNING", json.dumps(fields))


@pytest.fixture
def hook(monkeypatch, stand_in, caplog):
    caplog.set_level(logging.DEBUG)
    set_connection(monkeypatch, stand_in)
    return MParticleDataPlanningHook()


def assert_no_secret(caplog, *texts: str) -> None:
    for text in (caplog.text, *texts):
        assert CLIENT_SECRET not in text
        assert "token-" not in text


def test_fetches_a_plan_and_a_version_with_one_token(hook, stand_in, caplog):
    plan = hook.fetch_plan(PLAN_ID)
    version = hook.fetch_plan(PLAN_ID, 1)
    again = hook.fetch_plan(PLAN_ID, version=1)
    assert plan == PLAN and version == again == VERSION
    assert load_plan(plan, "api").versions[1].label == f"{PLAN_ID} v1"
    assert stand_in.token_bodies == [
        {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "audience": "https://api.mparticle.com",
            "grant_type": "client_credentials",
        }
    ]
    assert stand_in.api_requests == [
        (f"/platform/v2/workspaces/{WORKSPACE}/plans/{PLAN_ID}", "Bearer token-1"),
        (f"/platform/v2/workspaces/{WORKSPACE}/plans/{PLAN_ID}/versions/1", "Bearer token-1"),
        (f"/platform/v2/workspaces/{WORKSPACE}/plans/{PLAN_ID}/versions/1", "Bearer token-1"),
    ]
    assert_no_secret(caplog)


def test_a_token_is_renewed_shortly_before_it_expires(hook, stand_in):
    stand_in.expires_in = 600
    now = [1000.0]
    hook.client.clock = lambda: now[0]
    hook.fetch_plan(PLAN_ID)
    now[0] += 550  # within the last tenth of its lifetime (600 s): renewed before use
    hook.fetch_plan(PLAN_ID)
    hook.fetch_plan(PLAN_ID)
    now[0] += 500
    hook.fetch_plan(PLAN_ID)
    assert len(stand_in.token_bodies) == 2
    assert [auth for _, auth in stand_in.api_requests] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-2",
        "Bearer token-2",
    ]


def test_a_revoked_token_is_renewed_once_on_401(hook, stand_in):
    hook.fetch_plan(PLAN_ID)
    stand_in.valid_tokens.clear()
    assert hook.fetch_plan(PLAN_ID, 1) == VERSION
    assert len(stand_in.token_bodies) == 2
    assert [auth for _, auth in stand_in.api_requests] == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


def test_a_second_401_after_renewal_is_a_credentials_error(hook, stand_in, caplog):
    stand_in.always_unauthorized = True
    with pytest.raises(DataPlanningCredentialsRefused) as error:
        hook.fetch_plan(PLAN_ID)
    message = str(error.value)
    assert "HTTP 401" in message and "Platform API" in message and f"workspace {WORKSPACE}" in message
    assert len(stand_in.token_bodies) == 2 and len(stand_in.api_requests) == 2
    assert isinstance(error.value, CredentialsRefused)  # the operators fail such a task at once
    assert_no_secret(caplog, message)


def test_a_workspace_the_credentials_cannot_read_is_a_permissions_error(monkeypatch, stand_in, caplog):
    set_connection(monkeypatch, stand_in, workspace_id=999)
    with pytest.raises(DataPlanningCredentialsRefused) as error:
        MParticleDataPlanningHook().fetch_plan(PLAN_ID)
    assert "HTTP 403" in str(error.value) and "workspace 999" in str(error.value)
    assert "need the Platform API with access to this workspace" in str(error.value)
    assert_no_secret(caplog, str(error.value))


@pytest.mark.parametrize(
    ("plan_id", "version", "message"),
    [
        pytest.param("nope", None, f"no such plan 'nope' in workspace {WORKSPACE}", id="plan"),
        pytest.param(PLAN_ID, 7, f"no such version 7 of plan '{PLAN_ID}' in workspace {WORKSPACE}", id="version"),
    ],
)
def test_404_names_the_plan_and_version(hook, stand_in, plan_id, version, message):
    with pytest.raises(DataPlanNotFound) as error:
        hook.fetch_plan(plan_id, version)
    assert message in str(error.value)
    assert isinstance(error.value, InvalidSettings) and error.value.setting == "data_plan"
    assert len(stand_in.api_requests) == 1  # never retried


def test_429_waits_retry_after_then_succeeds(hook, stand_in):
    stand_in.scripted.append((429, {"Retry-After": "1"}, {"errors": [{"message": "Too Many Requests"}]}))
    started = time.monotonic()
    assert hook.fetch_plan(PLAN_ID, 1) == VERSION
    assert time.monotonic() - started >= 0.95
    assert len(stand_in.api_requests) == 2 and len(stand_in.token_bodies) == 1


def test_5xx_is_retried_then_reported_as_unavailable(hook, stand_in, caplog):
    stand_in.scripted.extend([(503, {}, {}), (500, {}, {})])
    assert hook.fetch_plan(PLAN_ID) == PLAN
    assert len(stand_in.api_requests) == 3
    stand_in.scripted.extend([(503, {}, {})] * 3)
    with pytest.raises(DataPlanningUnavailable, match=r"after 3 attempts \(last: HTTP 503\)"):
        hook.fetch_plan(PLAN_ID)
    assert "retrying" in caplog.text


def test_bad_credentials_are_refused_without_showing_the_secret(monkeypatch, stand_in, caplog):
    caplog.set_level(logging.DEBUG)
    set_connection(monkeypatch, stand_in, password="wrong-secret-value")
    with pytest.raises(DataPlanningCredentialsRefused) as error:
        MParticleDataPlanningHook().fetch_plan(PLAN_ID)
    message = str(error.value)
    assert f"refused the client id {CLIENT_ID!r}" in message and "HTTP 401: access_denied" in message
    assert "password (client secret)" in message
    assert "wrong-secret-value" not in message and "wrong-secret-value" not in caplog.text
    assert stand_in.api_requests == [] and len(stand_in.token_bodies) == 1  # a refused token is not retried


def test_test_connection_accepts_and_refuses(monkeypatch, stand_in):
    set_connection(monkeypatch, stand_in)
    ok, message = MParticleDataPlanningHook().test_connection()
    assert ok and f"workspace {WORKSPACE}" in message
    set_connection(monkeypatch, stand_in, password="nope-nope")
    ok, message = MParticleDataPlanningHook().test_connection()
    assert not ok and "refused" in message and "nope-nope" not in message


@pytest.mark.parametrize(
    ("fields", "setting"),
    [
        pytest.param({"login": CLIENT_ID, "password": CLIENT_SECRET, "extra": {}}, "workspace_id", id="workspace"),
        pytest.param({"login": CLIENT_ID, "extra": {"workspace_id": 1}}, "login/password", id="secret"),
        pytest.param(
            {"login": CLIENT_ID, "password": "s", "extra": {"workspace_id": 1, "token_url": "sso"}},
            "token_url",
            id="url",
        ),
    ],
)
def test_a_bad_connection_is_refused_naming_the_field(monkeypatch, fields, setting):
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_DATA_PLANNING", json.dumps({"conn_type": "http", **fields}))
    with pytest.raises(InvalidSettings) as error:
        MParticleDataPlanningHook().fetch_plan(PLAN_ID)
    assert error.value.setting == setting


def test_default_urls_and_the_host_form(monkeypatch):
    fields = {"conn_type": "http", "login": CLIENT_ID, "password": CLIENT_SECRET, "extra": {"workspace_id": 5}}
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_DATA_PLANNING", json.dumps(fields))
    settings = MParticleDataPlanningHook().client_settings
    assert (settings.api_url, settings.token_url) == (DEFAULT_API_URL, DEFAULT_TOKEN_URL)
    assert (DEFAULT_API_URL, DEFAULT_TOKEN_URL) == (
        "https://api.mparticle.com",
        "https://sso.auth.mparticle.com/oauth/token",
    )
    assert CLIENT_SECRET not in repr(settings)
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_DATA_PLANNING", json.dumps({**fields, "host": "api.example.test"}))
    hook = MParticleDataPlanningHook()
    assert hook.client_settings.api_url == "https://api.example.test"
    client = hook.get_conn()
    assert client.plans_url == "https://api.example.test/platform/v2/workspaces/5/plans"
    assert client._session.auth is None and "workspace_id" not in client._session.headers
