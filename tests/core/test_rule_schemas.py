"""The trigger form's schemas of ``fixes`` and ``routes`` agree with the validators a run uses."""

from __future__ import annotations

import jsonschema
import pytest

from mparticle_backfill.errors import FixRuleError, InvalidSettings
from mparticle_backfill.fixes import CAST_TYPES, EVENT_STEPS, USER_STEPS, compile_rules
from mparticle_backfill.routes import compile_routes
from mparticle_backfill.rule_schemas import FIX_RULE, ROUTE

FIXES = {"type": "array", "items": FIX_RULE}
ROUTES = {"type": "array", "items": ROUTE}
A = {"rename_event": "a"}

GOOD_FIXES = [
    [],
    [{"name": "r", "then": [A]}],
    [
        {
            "name": "signup",
            "description": "the web app's old event name",
            "when": [
                {"field": "event_name", "matches": "^sign[ _]?up$"},
                {"field": "data.custom_attributes.plan", "in": ["pro", "team"]},
                {"field": "user_attributes.tier", "exists": False},
                {"field": "event_type", "equals": "custom_event"},
            ],
            "then": [
                {"rename_event": "Sign Up"},
                {"set_custom_event_type": "navigation"},
                {"set_event_attribute": {"name": "source", "value": None}},
                {"rename_event_attribute": {"from": "Plan", "to": "plan"}},
                {"remove_event_attribute": "debug"},
                *({"cast_event_attribute": {"name": "seats", "to": to}} for to in CAST_TYPES),
                {"set_user_attribute": {"name": "plan_fixed", "value": True}},
                {"remove_user_attribute": "tmp"},
            ],
        }
    ],
]
BAD_FIXES = [
    [{"then": [A]}],
    [{"name": "", "then": [A]}],
    [{"name": "x" * 257, "then": [A]}],
    [{"name": "r", "then": []}],
    [{"name": "r"}],
    [{"name": "r", "then": [{"explode": 1}]}],
    [{"name": "r", "then": [{"rename_event": "a", "remove_event_attribute": "b"}]}],
    [{"name": "r", "then": [{"set_custom_event_type": "fun"}]}],
    [{"name": "r", "then": [{"cast_event_attribute": {"name": "a", "to": "date"}}]}],
    [{"name": "r", "then": [{"set_event_attribute": {"name": "a"}}]}],
    [{"name": "r", "then": [{"set_user_attribute": {"name": "a", "value": [1]}}]}],
    [{"name": "r", "then": [{"rename_event_attribute": {"from": "a", "to": ""}}]}],
    [{"name": "r", "when": [{"field": "colour", "equals": 1}], "then": [A]}],
    [{"name": "r", "when": [{"field": "event_name", "equals": 1, "in": [1]}], "then": [A]}],
    [{"name": "r", "when": [{"field": "event_name"}], "then": [A]}],
    [{"name": "r", "when": [{"field": "event_name", "in": "a"}], "then": [A]}],
    [{"name": "r", "when": [{"field": "event_name", "exists": 1}], "then": [A]}],
    [{"name": "r", "when": [{"field": "event_name", "matches": 1}], "then": [A]}],
    [{"name": "r", "then": [A], "extra": 1}],
    ["not an object"],
]
GOOD_ROUTES = [
    [],
    [{"when": [{"field": "device_info.platform", "equals": "iOS"}], "connection": "mparticle_ios"}],
    [
        {
            "name": "web",
            "description": "the Web SDK's batches",
            "when": [{"field": "source_info.channel", "in": ["javascript"]}, {"field": "ip", "exists": True}],
            "connection": "mparticle.web-1",
        },
        {"when": [{"field": "environment", "matches": "^prod"}], "connection": "c"},
    ],
]
BAD_ROUTES = [
    [{"when": [{"field": "x", "equals": 1}]}],
    [{"connection": "c", "when": []}],
    [{"connection": "c"}],
    [{"connection": "c", "when": [{"field": "a..b", "equals": 1}]}],
    [{"connection": "c", "when": [{"field": "a", "equals": 1, "in": [1]}]}],
    [{"connection": "c", "when": [{"field": "a", "exists": 1}]}],
    [{"connection": "c d", "when": [{"field": "a", "exists": True}]}],
    [{"connection": "c", "when": [{"field": "a", "exists": True}], "then": []}],
    [{"connection": "c", "when": [{"equals": 1}]}],
]


def schema_accepts(schema, value) -> bool:
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema).is_valid(value)


def validator_accepts(compile_, value) -> bool:
    try:
        compile_(value)
    except (FixRuleError, InvalidSettings):
        return False
    return True


@pytest.mark.parametrize(("rules", "good"), [(r, True) for r in GOOD_FIXES] + [(r, False) for r in BAD_FIXES])
def test_the_fixes_schema_agrees_with_the_validator(rules, good):
    # Each example is what it claims to be for both: agreeing on a wrong answer would pass a bare equality.
    assert schema_accepts(FIXES, rules) is good
    assert validator_accepts(compile_rules, rules) is good


@pytest.mark.parametrize(("rules", "good"), [(r, True) for r in GOOD_ROUTES] + [(r, False) for r in BAD_ROUTES])
def test_the_routes_schema_agrees_with_the_validator(rules, good):
    assert schema_accepts(ROUTES, rules) is good
    assert validator_accepts(compile_routes, rules) is good


def test_the_good_examples_are_good_and_every_step_is_described():
    assert all(validator_accepts(compile_rules, rules) for rules in GOOD_FIXES)
    assert all(validator_accepts(compile_routes, rules) for rules in GOOD_ROUTES)
    described = {step["title"] for step in FIX_RULE["properties"]["then"]["items"]["oneOf"]}
    assert described == set(EVENT_STEPS + USER_STEPS)
    used = {next(iter(step)) for step in GOOD_FIXES[2][0]["then"]}
    assert used == described  # the big example exercises every step


def test_what_only_the_validator_can_refuse():
    """A schema cannot compile a regex or compare names across rules: the run refuses those, naming the rule."""
    bad_regex = [{"name": "r", "when": [{"field": "event_name", "matches": "("}], "then": [A]}]
    twice = [{"name": "r", "then": [A]}, {"name": "r", "then": [A]}]
    for rules in (bad_regex, twice):
        assert schema_accepts(FIXES, rules) and not validator_accepts(compile_rules, rules)
