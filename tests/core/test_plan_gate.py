"""The plan gate in the transform stage: what would be blocked again is held whole, or only counted."""

from __future__ import annotations

import pytest

from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.model import HELD
from mparticle_backfill.plan_check import BlockingCategories, load_plan
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


def plan(*points: dict, user_attributes: dict | None = None) -> object:
    data_points = list(points)
    if user_attributes is not None:
        data_points.append({
            "match": {"type": "user_attributes", "criteria": {}},
            "validator": {"type": "json_schema", "definition": {"additionalProperties": False, "properties": user_attributes}},
        })  # fmt: skip
    return load_plan(
        {"version": 1, "data_plan_id": "main_block", "activated_environment": "development",
         "version_document": {"data_points": data_points}},
        "test plan",
    )  # fmt: skip


def gated(real_record, gate: PlanGate, selection: SelectionSettings | None = None):
    return replay_of(real_record, selection, settings=TransformSettings(plan_version="keep", plan_gate=gate))


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


def test_a_batch_naming_another_plan_is_counted_not_guessed(real_record):
    other = load_plan(
        {"version": 1, "data_plan_id": "another_plan", "activated_environment": "development",
         "version_document": {"data_points": []}},
        "other",
    )  # fmt: skip
    replay, counts, _ = gated(real_record, PlanGate(other, ALL))
    assert sent_event_ids(replay) == [EVENT_1, EVENT_2]
    assert counts["plan_not_checked:plan_mismatch"] == 2


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
