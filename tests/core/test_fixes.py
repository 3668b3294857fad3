"""Fix rules: validated up front with a message naming the rule; applied and counted per rule."""

from __future__ import annotations

from collections import Counter

import pytest

from mparticle_backfill.errors import FixRuleError
from mparticle_backfill.fixes import apply_fixes, compile_rules
from mparticle_backfill.model import BLOCKED_EVENT, SelectedEvent


def event(name="sign up", event_type="custom_event", **attributes):
    data = {"event_name": name, "custom_event_type": "other", "custom_attributes": attributes}
    if event_type == "screen_view":
        data = {"screen_name": name, "custom_attributes": attributes}
    return SelectedEvent({"event_type": event_type, "data": data}, "1", BLOCKED_EVENT)


def run(rules, events, user_attributes=None):
    counts: Counter[str] = Counter()
    failures = []
    kept, users = apply_fixes(
        compile_rules(rules), events, user_attributes or {}, counts, lambda s, e: failures.append((s, e))
    )
    return kept, users, counts, failures


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        pytest.param({"name": "x"}, "fixes must be a JSON list", id="not-list"),
        pytest.param([{"then": [{"rename_event": "a"}]}], "#1: name must be", id="no-name"),
        pytest.param([{"name": "r", "then": []}], "#1 'r': 'then' must be a non-empty", id="no-steps"),
        pytest.param([{"name": "r", "then": [{"explode": 1}]}], "#1 'r': unknown step 'explode'", id="bad-step"),
        pytest.param(
            [
                {"name": "ok", "then": [{"rename_event": "a"}]},
                {"name": "r2", "when": [{"field": "event_name", "matches": "("}], "then": [{"rename_event": "a"}]},
            ],
            "#2 'r2': 'matches' on 'event_name': bad regular expression",
            id="bad-regex-second-rule",
        ),
        pytest.param([{"name": "r", "then": [{"set_custom_event_type": "fun"}]}], "'fun' is not one of", id="bad-enum"),
        pytest.param(
            [{"name": "r", "then": [{"cast_event_attribute": {"name": "a", "to": "date"}}]}],
            "cast_event_attribute takes",
            id="bad-cast",
        ),
        pytest.param(
            [{"name": "r", "when": [{"field": "colour", "equals": 1}], "then": [{"rename_event": "a"}]}],
            "condition field 'colour'",
            id="bad-field",
        ),
        pytest.param(
            [{"name": "r", "when": [{"field": "event_name", "equals": 1, "in": [1]}], "then": [{"rename_event": "a"}]}],
            "exactly one of",
            id="two-operators",
        ),
        pytest.param(
            [{"name": "r", "then": [{"rename_event": "a"}]}, {"name": "r", "then": [{"rename_event": "b"}]}],
            "#2 'r': another rule has the same name",
            id="duplicate-name",
        ),
        pytest.param([{"name": "r", "then": [{"rename_event": "a"}], "extra": 1}], "unknown keys ['extra']", id="typo"),
    ],
)
def test_invalid_rules_are_refused_naming_the_rule(rules, message):
    with pytest.raises(FixRuleError) as error:
        compile_rules(rules)
    assert message in str(error.value)
    assert error.value.setting == "fixes"


def test_rename_and_change_type_only_where_conditions_hold():
    rules = [
        {
            "name": "signup",
            "when": [
                {"field": "event_name", "matches": "^sign ?up$"},
                {"field": "data.custom_attributes.plan", "in": ["pro"]},
            ],
            "then": [{"rename_event": "Sign Up"}, {"set_custom_event_type": "user_preference"}],
        }
    ]
    original = event(plan="pro")
    kept, _, counts, _ = run(rules, [original, event(plan="free"), event("checkout", plan="pro")])
    assert [e.event["data"]["event_name"] for e in kept] == ["Sign Up", "sign up", "checkout"]
    assert kept[0].event["data"]["custom_event_type"] == "user_preference"
    assert original.event["data"]["event_name"] == "sign up"  # the record as read is untouched
    assert counts == {"fix:signup": 1}


def test_attribute_steps_and_casts():
    rules = [
        {"name": "a", "then": [{"rename_event_attribute": {"from": "Seats", "to": "seats"}}]},
        {"name": "b", "then": [{"cast_event_attribute": {"name": "seats", "to": "integer"}}]},
        {
            "name": "c",
            "then": [{"remove_event_attribute": "debug"}, {"set_event_attribute": {"name": "fixed", "value": True}}],
        },
        {"name": "d", "when": [{"field": "event_type", "equals": "screen_view"}], "then": [{"rename_event": "Home"}]},
    ]
    kept, _, counts, failures = run(rules, [event(Seats="12", debug="x"), event("home", "screen_view")])
    assert kept[0].event["data"]["custom_attributes"] == {"seats": 12, "fixed": True}
    assert kept[1].event["data"]["screen_name"] == "Home"
    assert counts["fix:a"] == 2 and counts["fix:d"] == 1 and failures == []


def test_failed_cast_dead_letters_only_that_event():
    rules = [{"name": "seats", "then": [{"cast_event_attribute": {"name": "seats", "to": "number"}}]}]
    kept, _, counts, failures = run(rules, [event(seats="many"), event(seats="2.5")])
    assert [e.event["data"]["custom_attributes"]["seats"] for e in kept] == [2.5]
    assert failures[0][1].rule == "seats" and "'many' is not a number" in str(failures[0][1])
    assert counts["fix_failed:seats"] == 1


def test_user_attribute_steps_batch_scope_and_event_scope():
    rules = [
        {
            "name": "gender",
            "when": [{"field": "user_attributes.$gender", "exists": True}],
            "then": [{"set_user_attribute": {"name": "$gender", "value": "male"}}],
        },
        {
            "name": "drop-age",
            "when": [{"field": "event_name", "equals": "nope"}],
            "then": [{"remove_user_attribute": "$age"}],
        },
    ]
    _, users, counts, _ = run(rules, [event()], {"$gender": "M", "$age": "40"})
    assert users == {"$gender": "male", "$age": "40"}
    assert counts == {"fix:gender": 1}
