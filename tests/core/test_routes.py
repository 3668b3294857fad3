"""Routes: the first rule that matches a batch's fields names its connection; bad rules are named."""

from __future__ import annotations

import pytest

from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.routes import compile_routes

RULES = [
    {"name": "web", "when": [{"field": "source_info.channel", "equals": "javascript"}], "connection": "mp_web"},
    {"when": [{"field": "application_info.os", "in": ["IOS", "iOS"]}], "connection": "mp_ios"},
    {"when": [{"field": "device_info.platform", "matches": "^[Aa]ndroid"}, {"field": "environment", "equals": "production"}],
     "connection": "mp_android"},
    {"when": [{"field": "context.data_plan.plan_id", "exists": False}], "connection": "mp_unplanned"},
]  # fmt: skip
PLANNED = {"context": {"data_plan": {"plan_id": "p"}}}


@pytest.mark.parametrize(
    ("batch", "connection"),
    [
        pytest.param({**PLANNED, "source_info": {"channel": "javascript"}}, "mp_web", id="web"),
        pytest.param({**PLANNED, "application_info": {"os": "iOS"}}, "mp_ios", id="ios"),
        pytest.param({**PLANNED, "device_info": {"platform": "Android"}, "environment": "production"}, "mp_android", id="android"),
        pytest.param({**PLANNED, "device_info": {"platform": "Android"}, "environment": "development"}, "", id="all-conditions-must-hold"),
        pytest.param({"source_info": {"channel": "javascript"}}, "mp_web", id="first-match-wins"),
        pytest.param({"application_info": "not an object"}, "mp_unplanned", id="exists-false-on-a-missing-path"),
        pytest.param({**PLANNED, "source_info": {"channel": "partner"}}, "", id="no-match-default"),
    ],
)  # fmt: skip
def test_first_matching_route_wins(batch, connection):
    assert compile_routes(RULES).route_for(batch) == connection


def test_unrouted_hold_and_the_connections_to_check():
    routing = compile_routes(RULES[:2], "hold")
    assert routing.route_for({"source_info": {"channel": "partner"}}) is None
    assert routing.connections == ["mp_web", "mp_ios"]
    assert compile_routes(RULES[:1]).connections == ["mp_web"]  # the DAG's own connection is not a rule's
    assert compile_routes([]).connections == []


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param({"when": []}, "must be a JSON list", id="not-a-list"),
        pytest.param([{"when": [{"field": "x", "equals": 1}]}], r"route #1: 'connection' must be", id="no-connection"),
        pytest.param([{"name": "w", "connection": "c", "when": []}], r"route #1 'w': 'when' must be a non-empty", id="no-condition"),
        pytest.param([{"connection": "c", "when": [{"field": "a..b", "equals": 1}]}], "not a dotted path", id="bad-path"),
        pytest.param([{"connection": "c", "when": [{"field": "a", "matches": "("}]}], "bad regular expression", id="bad-regex"),
        pytest.param([{"connection": "c", "when": [{"field": "a", "equals": 1, "in": [1]}]}], "exactly one of", id="two-operators"),
        pytest.param([{"connection": "c", "when": [{"field": "a", "exists": 1}]}], "takes true or false", id="exists-not-bool"),
        pytest.param([{"connection": "c d", "when": [{"field": "a", "exists": True}]}], "Airflow connection id", id="bad-conn-id"),
        pytest.param([{"connection": "c", "when": [{"field": "a", "exists": True}], "then": []}], "unknown keys", id="unknown-key"),
    ],
)  # fmt: skip
def test_bad_routes_are_refused_naming_the_rule(rules, message):
    with pytest.raises(InvalidSettings, match=message):
        compile_routes(rules)


def test_unrouted_must_be_known():
    with pytest.raises(InvalidSettings, match="unrouted"):
        compile_routes([], "drop")
