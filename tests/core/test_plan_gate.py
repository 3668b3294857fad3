"""The plan gate in the transform stage: what would be blocked again is held whole, or only counted."""

from __future__ import annotations

import re

import pytest

from mparticle_backfill import plan_gate
from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.fixes import compile_rules
from mparticle_backfill.model import HELD
from mparticle_backfill.plan_check import CATEGORIES, BlockingCategories, infer_blocking, load_plan
from mparticle_backfill.plan_gate import HOLD, OFF, REPORT, PlanGate, describe
from mparticle_backfill.select import SelectionSettings
from mparticle_backfill.settings import parse_settings
from mparticle_backfill.transform import TransformSettings
from tests.core.test_replay_stages import replay_of, sent_event_ids

EVENT_1, EVENT_2, ALLOWED = -7778608565459706417, -387480379075294677, 8561854144327985348
ALL = BlockingCategories(True, True, True, True)


def point(name: str, attributes: dict | None = None) -> dict:
    custom = (
        {"additionalProperties": True}
        if attributes is None
        else {"additionalProperties": False, "properties": attributes}
    )
    return {
        "match": {"type": "custom_event", "criteria": {"event_name": name, "custom_event_type": "navigation"}},
        "validator": {
            "type": "json_schema",
            "definition": {"properties": {"data": {"properties": {"custom_attributes": custom}}}},
        },
    }


def plan(
    *points: dict,
    user_attributes: dict | None = None,
    version: int = 1,
    environment: str = "development",
    plan_id: str = "main_block",
) -> object:
    """One version document (the real record names main_block v1, environment development)."""
    data_points = list(points)
    if user_attributes is not None:
        data_points.append({
            "match": {"type": "user_attributes", "criteria": {}},
            "validator": {"type": "json_schema", "definition": {"additionalProperties": False, "properties": user_attributes}},
        })  # fmt: skip
    return load_plan(
        {"version": version, "data_plan_id": plan_id, "activated_environment": environment,
         "version_document": {"data_points": data_points}},
        "test plan",
    )  # fmt: skip


def gated(
    real_record,
    gate: PlanGate,
    selection: SelectionSettings | None = None,
    plan_version: str | int = "keep",
    fixes: list | None = None,
):
    settings = TransformSettings(plan_version=plan_version, plan_gate=gate, fixes=compile_rules(fixes or []))
    return replay_of(real_record, selection, settings=settings)


def held_letters(letters) -> list:
    return [letter for letter in letters if letter.stage == "plan_check"]


def test_an_unplanned_event_is_held_whole_and_the_planned_one_sent(real_record):
    gate = PlanGate(plan(point("blocked navigation event 1")), ALL, HOLD)
    replay, counts, letters = gated(real_record, gate)
    assert sent_event_ids(replay) == [EVENT_1]
    (held,) = [letter for letter in letters if letter.stage == "plan_check"]
    assert held.content["data"]["event_id"] == EVENT_2 and held.reason == "would_be_blocked_again"
    assert "custom_event 'blocked navigation event 2' (navigation)" in held.detail
    assert counts["events_held"] == 1
    assert replay.trail == [(HELD, "would_be_blocked_again")] and replay.batches  # the send ends it as replayed


def test_an_event_with_an_unplanned_attribute_is_held_whole_not_stripped(real_record):
    closed = point("blocked navigation event 1", attributes={"Other": {"type": "string"}})  # 'Test' is unplanned
    replay, counts, letters = gated(real_record, PlanGate(plan(closed, point("blocked navigation event 2")), ALL))
    assert sent_event_ids(replay) == [EVENT_2]
    (held,) = [letter for letter in letters if letter.stage == "plan_check"]
    assert held.content["data"]["event_id"] == EVENT_1
    assert "Test" in held.content["data"]["custom_attributes"]  # the event as it was: nothing stripped
    assert "unplanned_event_attribute Test" in held.detail
    (fix,) = [name for name in counts if name.startswith("plan_fix:")]
    assert "Test" in fix and counts[fix] == 1 and counts["events_held"] == 1


def test_only_the_categories_the_input_blocks_are_held(real_record):
    closed = point("blocked navigation event 1", attributes={})
    events_only = BlockingCategories(True, False, False, False)
    replay, counts, _ = gated(real_record, PlanGate(plan(closed, point("blocked navigation event 2")), events_only))
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2]  # attributes do not block for this input
    assert counts["events_held"] == 0


def test_unplanned_user_attributes_are_held_together(real_record):
    gate = PlanGate(
        plan(point("blocked navigation event 1"), point("blocked navigation event 2"), user_attributes={"$age": {}}),
        ALL,
    )
    replay, counts, letters = gated(real_record, gate)
    (batch,) = replay.batches
    assert "user_attributes" not in batch.payload  # $gender is unplanned: not restored now
    assert all(not key.endswith(":user_attributes") for key in batch.replay_keys)  # so a later run sends it
    assert counts["user_attributes_held"] == 1
    assert [letter.content for letter in letters if letter.stage == "plan_check"] == [{"$gender": "M"}]


def test_report_sends_everything_and_counts_what_would_be_blocked(real_record):
    gate = PlanGate(plan(point("blocked navigation event 1")), ALL, REPORT)
    replay, counts, letters = gated(real_record, gate)
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2]
    assert counts["plan_predicted_events_blocked"] == 1
    assert not [letter for letter in letters if letter.stage == "plan_check"]


def test_a_batch_naming_another_plan_is_held_not_guessed_and_report_sends_it(real_record):
    other = plan(point("blocked navigation event 1"), point("blocked navigation event 2"), plan_id="another_plan")
    replay, counts, letters = gated(real_record, PlanGate(other, ALL))
    assert replay.batches == [] and counts["plan_not_checked:plan_mismatch"] == 2
    assert {letter.reason for letter in held_letters(letters)} == {"cannot_be_checked"}
    replay, counts, letters = gated(real_record, PlanGate(other, ALL, REPORT))
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2] and held_letters(letters) == []
    assert counts["plan_not_checked:plan_mismatch"] == 2
    assert any("Sent, not checked" in line for line in describe(REPORT, "p.json", "keep", counts))
    # mParticle blocks nothing of a batch naming no plan: nothing to hold.
    del real_record["context"]["data_plan"]["plan_id"]
    replay, counts, letters = gated(real_record, PlanGate(other, ALL))
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2] and held_letters(letters) == []
    assert counts["plan_not_checked:no_plan"] == 2


BOTH = (point("blocked navigation event 1"), point("blocked navigation event 2"))


@pytest.mark.parametrize(
    ("document", "plan_version", "status", "why"),
    [
        pytest.param(
            plan(*BOTH, plan_id="another_plan"),
            "keep",
            "plan_mismatch",
            "the replay names plan 'main_block'; test plan is plan 'another_plan'",
            id="another-plan",
        ),
        pytest.param(
            plan(*BOTH, version=2, environment="none"),
            "keep",
            "version_missing",
            "the replay names version 1 of plan 'main_block'; test plan holds version v2 (none)",
            id="version-missing",
        ),
        pytest.param(
            plan(*BOTH, version=2, environment="none"),
            "omit",
            "no_active_version",
            "mParticle applies the version active in development; test plan holds version v2 (none), none active",
            id="no-version-active",
        ),
        pytest.param(
            plan(*BOTH, version=2, environment="production"),
            "omit",
            "no_active_version",
            "active in development; test plan holds version v2 (production), none active there",
            id="active-in-the-other-environment",
        ),
    ],
)
def test_what_the_plan_cannot_check_is_held_naming_why(real_record, document, plan_version, status, why):
    """Every one of these allows the data as the document reads; none is the version mParticle applies."""
    replay, counts, letters = gated(real_record, PlanGate(document, ALL, HOLD), plan_version=plan_version)
    assert replay.batches == []  # nothing sent: not the events, not the restored user attribute
    held = held_letters(letters)
    assert sorted(letter.content["data"]["event_id"] for letter in held if "data" in letter.content) == sorted(
        [EVENT_1, EVENT_2]
    )
    assert {"$gender": "M"} in [letter.content for letter in held]
    assert {letter.reason for letter in held} == {"cannot_be_checked"}
    assert all(why in letter.detail for letter in held)
    assert (counts["events_held"], counts["user_attributes_held"], counts[f"plan_not_checked:{status}"]) == (
        1 + 1,
        1,
        2,
    )
    assert replay.outcome() == (HELD, "cannot_be_checked")
    assert any("Held, not checked" in line and status in line for line in describe(HOLD, "p", plan_version, counts))


@pytest.mark.parametrize(
    ("document", "plan_version", "environment", "problem"),
    [
        pytest.param(
            plan(version=2, environment="none"),
            3,
            None,
            "'plan_version': names version 3 of plan 'main_block', which test plan does not hold",
            id="number-not-in-the-document",
        ),
        pytest.param(
            plan(version=2, environment="none"),
            "omit",
            None,
            "no version in test plan is active in any environment (version v2 (none))",
            id="omit-and-nothing-active",
        ),
        pytest.param(
            plan(version=2, environment="production"),
            "omit",
            "development",
            "no version in test plan is active in development",
            id="omit-and-not-active-in-the-forced-environment",
        ),
    ],
)
def test_hold_fails_the_run_before_reading_data_when_the_settings_show_nothing_can_be_checked(
    document, plan_version, environment, problem
):
    with pytest.raises(InvalidSettings, match=re.escape(problem)):
        plan_gate.check_settings(document, plan_version, environment, HOLD)
    plan_gate.check_settings(document, plan_version, environment, REPORT)  # report sends, and says so


@pytest.mark.parametrize(
    ("document", "plan_version", "environment"),
    [
        pytest.param(plan(version=2, environment="none"), 2, None, id="number-in-the-document"),
        pytest.param(plan(version=2, environment="production"), "omit", None, id="omit-and-an-active-version"),
        pytest.param(plan(version=2, environment="none"), "keep", None, id="keep-known-only-from-the-data"),
    ],
)
def test_settings_the_document_can_check_pass(document, plan_version, environment):
    plan_gate.check_settings(document, plan_version, environment, HOLD)


NOTHING_SHOWN_BLOCKED = {name: 0 for name in CATEGORIES}  # the partition's block metadata showed no category
RENAME_2 = {
    "name": "rename-2",
    "when": [{"field": "event_name", "equals": "blocked navigation event 2"}],
    "then": [{"rename_event": "Sign Up"}],
}
SET_ATTRIBUTE = {
    "name": "plan-fixed",
    "when": [],
    "then": [{"set_user_attribute": {"name": "plan_fixed", "value": True}}],
}


def test_data_a_fix_rule_introduced_is_held_whatever_blocking_was_inferred(real_record):
    document = plan(*BOTH, user_attributes={"$gender": {}})  # no 'Sign Up', no 'plan_fixed'
    inferred = PlanGate(document, infer_blocking(NOTHING_SHOWN_BLOCKED))
    replay, counts, letters = gated(real_record, inferred, fixes=[RENAME_2, SET_ATTRIBUTE])
    assert sent_event_ids(replay) == [EVENT_1]  # the renamed event is held
    (batch,) = replay.batches
    assert "user_attributes" not in batch.payload  # held with the attribute the rule set
    held = held_letters(letters)
    assert [letter.content["data"]["event_name"] for letter in held if "data" in letter.content] == ["Sign Up"]
    assert {"$gender": "M", "plan_fixed": True} in [letter.content for letter in held]
    assert counts["events_held"] == 1 and counts["user_attributes_held"] == 2

    # plan_blocking is the user's word, not an inference: it decides for introduced data too.
    settled = infer_blocking(NOTHING_SHOWN_BLOCKED, {"events": False, "user_attributes": False})
    replay, counts, letters = gated(real_record, PlanGate(document, settled), fixes=[RENAME_2, SET_ATTRIBUTE])
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2] and held_letters(letters) == []
    # Data the partition showed is judged by what it showed: without rules, nothing blocks here.
    replay, _, letters = gated(real_record, inferred)
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2] and held_letters(letters) == []


def test_everything_held_ends_the_record_as_held(real_record):
    replay, _counts, _ = gated(
        real_record, PlanGate(plan(), ALL), SelectionSettings(replay_blocked_user_attributes=False)
    )
    assert replay.batches == [] and replay.outcome() == (HELD, "would_be_blocked_again")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        pytest.param({"plan_check": "hold"}, "needs a data_plan", id="check-without-plan"),
        pytest.param({"data_plan": "s3://only-bucket"}, "needs a bucket and a key", id="s3-without-key"),
        pytest.param({"data_plan": "api:"}, "needs the plan id", id="api-without-id"),
        pytest.param({"data_plan": "x.json", "plan_check": "maybe"}, "must be one of", id="unknown-mode"),
        pytest.param({"plan_blocking": {"events": "yes"}}, "events must be true or false", id="blocking-not-bool"),
        pytest.param({"plan_blocking": {"screens": True}}, "unknown categories", id="blocking-unknown"),
    ],
)
def test_plan_settings_are_validated_up_front(settings, problem):
    with pytest.raises(InvalidSettings, match=problem):
        parse_settings({"bucket": "acme-quarantine", **settings})


def test_plan_defaults():
    settings = parse_settings({"bucket": "acme-quarantine"})
    assert settings.plan_version == "omit" and settings.plan_check == OFF
    assert parse_settings({"bucket": "acme-quarantine", "data_plan": "s3://b/plan.json"}).plan_check == HOLD


def test_the_report_says_when_delivery_was_not_checked():
    lines = describe(OFF, "", "keep", {})
    assert "not checked" in lines[0] and "plan_version = keep" in lines[1]
    assert len(describe(OFF, "", "omit", {})) == 1
    checked = describe(HOLD, "s3://b/p.json", "omit", {"events_held": 3, "plan_fix:add custom_event 'X'": 3})
    assert "| add custom_event 'X' | 3 |" in checked
