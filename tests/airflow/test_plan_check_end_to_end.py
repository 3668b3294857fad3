"""The plan check end to end (dag.test, moto, the emulator enforcing the same plan as mParticle would):
what the plan would block again is held, not sent; a later run sends it once the plan allows it."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.airflow.conftest import BUCKET, PREFIX
from tests.airflow.test_dag_end_to_end import DAY, RUN_CONF, STATE, get_dag, lines, record, report
from tools.emulator import DataPlans

pytestmark = pytest.mark.airflow
PLAN_KEY = "plans/main_block.json"
RECORDS = [9100 + n for n in range(4)]
FIRST = sorted(n * 10 for n in RECORDS)  # "blocked navigation event 1" of each record
SECOND = sorted(n * 10 + 1 for n in RECORDS)  # "blocked navigation event 2"


def point(name: str) -> dict:
    return {
        "match": {"type": "custom_event", "criteria": {"event_name": name, "custom_event_type": "navigation"}},
        "validator": {
            "type": "json_schema",
            "definition": {
                "properties": {"data": {"properties": {"custom_attributes": {"additionalProperties": True}}}}
            },
        },
    }


def version(number: int, active: str, *names: str) -> dict:
    return {
        "version": number,
        "data_plan_id": "main_block",
        "activated_environment": active,
        "version_document": {"data_points": [point(name) for name in names]},
    }


def whole_plan(*versions: dict) -> dict:
    return {"data_plan_id": "main_block", "data_plan_versions": list(versions)}


# v1 blocked both events; v2 (active in development) allows the first; v3 allows both.
V2_ACTIVE = whole_plan(version(1, "none"), version(2, "development", "blocked navigation event 1"))
V3_ACTIVE = whole_plan(
    version(1, "none"),
    version(2, "none", "blocked navigation event 1"),
    version(3, "development", "blocked navigation event 1", "blocked navigation event 2"),
)


def events_sent(emulator) -> list[int]:
    return sorted(e["data"]["event_id"] for b in emulator.state.batches for e in b["events"])


def held_letters(s3, run) -> list[dict]:
    from mparticle_backfill.settings import run_key

    found = []
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/held/{run_key(run.run_id)}/").get("Contents", []):
        found += [
            json.loads(line) for line in s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().splitlines()
        ]
    return found


def seed(s3, plan: dict) -> None:
    s3.put_object(
        Bucket=BUCKET, Key=f"{PREFIX}/{DAY}/mPTravel_20261120090000000001_00001.txt", Body=lines(*map(record, RECORDS))
    )
    s3.put_object(Bucket=BUCKET, Key=PLAN_KEY, Body=json.dumps(plan).encode())


def run_with(conf: dict):
    return get_dag().test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc), run_conf={**RUN_CONF, **conf})


def test_hold_sends_what_the_plan_allows_and_a_later_run_sends_the_rest_once(airflow_db, s3, connections):
    emulator = connections
    emulator.state.plans = DataPlans.load([V2_ACTIVE])  # mParticle's side: the same plan, every category blocks
    seed(s3, V2_ACTIVE)
    conf = {"data_plan": f"s3://{BUCKET}/{PLAN_KEY}", "replay_blocked_user_attributes": False}

    run = run_with(conf)
    assert run.state == "success"
    assert events_sent(emulator) == FIRST  # what v2 allows
    stats = emulator.state.stats
    assert stats["events_quarantined"] == 0 and stats["event_attributes_quarantined"] == 0  # nothing blocked again
    held = held_letters(s3, run)
    assert sorted(letter["content"]["data"]["event_id"] for letter in held) == SECOND
    assert {letter["reason"] for letter in held} == {"would_be_blocked_again"}
    assert all("blocked navigation event 2" in letter["detail"] for letter in held)
    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["totals"]["replayed"] == 4 and summary["summary"]["counts"]["events_held"] == 4
    assert summary["plan_check"]["delivery_checked"] is True
    assert any("blocked navigation event 2" in line and "| 4 |" in line for line in summary["plan_check"]["summary"])
    assert ["held", "would_be_blocked_again"] not in [o[:2] for o in summary["summary"]["outcomes"]]  # partly replayed

    # The plan is fixed (v3 allows both, active in development): a re-run sends the held half, once.
    emulator.state.plans = DataPlans.load([V3_ACTIVE])
    s3.put_object(Bucket=BUCKET, Key=PLAN_KEY, Body=json.dumps(V3_ACTIVE).encode())
    again = run_with(conf)
    assert again.state == "success"
    assert events_sent(emulator) == sorted(FIRST + SECOND)
    assert emulator.state.stats["duplicates_dropped"] == 0
    assert emulator.state.stats["events_quarantined"] == 0
    assert held_letters(s3, again) == []
    assert report(s3, again)["summary"]["counts"].get("events_held", 0) == 0


def test_report_predicts_exactly_what_mparticle_blocks_again(airflow_db, s3, connections):
    emulator = connections
    emulator.state.plans = DataPlans.load([V2_ACTIVE])
    seed(s3, V2_ACTIVE)
    run = run_with({"data_plan": f"s3://{BUCKET}/{PLAN_KEY}", "plan_check": "report"})
    assert run.state == "success"
    assert events_sent(emulator) == sorted(FIRST + SECOND)  # sent anyway
    counts = report(s3, run)["summary"]["counts"]
    assert counts["plan_predicted_events_blocked"] == emulator.state.stats["events_quarantined"] == 4


def test_a_bad_plan_fails_the_run_before_any_data_is_read(airflow_db, s3, connections):
    seed(s3, {"data_plan_id": "main_block", "data_plan_versions": [{"version": 1, "version_document": {}}]})
    run = run_with({"data_plan": f"s3://{BUCKET}/{PLAN_KEY}"})
    assert run.state == "failed"
    assert connections.state.batches == []
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents")
    missing = run_with({"data_plan": f"s3://{BUCKET}/plans/nope.json"})
    assert missing.state == "failed"


def user_attributes_point(*names: str) -> dict:
    return {
        "match": {"type": "user_attributes", "criteria": {}},
        "validator": {
            "type": "json_schema",
            "definition": {"additionalProperties": False, "properties": {name: {} for name in names}},
        },
    }


def with_user_attributes(document: dict, *names: str) -> dict:
    document["version_document"]["data_points"].append(user_attributes_point(*names))
    return document


# An exported plan: v1, active in development (the batches' environment), blocked the data (both events and
# $gender); v2 allows all of it but was never activated.
V1_BLOCKING = with_user_attributes(version(1, "development"), "$age")
V2_NOT_ACTIVE = with_user_attributes(
    version(2, "none", "blocked navigation event 1", "blocked navigation event 2"), "$age", "$gender"
)
EXPORTED = whole_plan(V1_BLOCKING, V2_NOT_ACTIVE)
V2_IN_PRODUCTION = {**V2_NOT_ACTIVE, "activated_environment": "production"}  # active for the other environment


def held_then_sent_naming_v2(s3, emulator, conf: dict, reason: str) -> None:
    """With the defaults nothing is sent (held, counted, reconciled); with plan_version 2 all of it, once."""
    run = run_with(conf)  # plan_version = omit: the replays name no version, so v1 would apply
    assert run.state == "success"
    assert emulator.state.batches == []  # nothing sent for v1 to block again
    held = held_letters(s3, run)
    assert sorted(letter["content"]["data"]["event_id"] for letter in held if "data" in letter["content"]) == sorted(
        FIRST + SECOND
    )
    assert [letter["content"] for letter in held if "data" not in letter["content"]] == [{"$gender": "M"}] * 4
    assert {letter["reason"] for letter in held} == {reason}
    summary = report(s3, run)
    assert summary["reconciled"] is True
    assert summary["summary"]["outcomes"] == [["held", reason, 4]]
    counts = summary["summary"]["counts"]
    assert (counts["events_held"], counts["user_attributes_held"]) == (8, 4)
    sent_naming_v2(s3, emulator, conf)


def sent_naming_v2(s3, emulator, conf: dict) -> None:
    again = run_with({**conf, "plan_version": 2})  # named: v2 applies, and allows it all
    assert again.state == "success"
    assert events_sent(emulator) == sorted(FIRST + SECOND)  # each once
    assert {batch["context"]["data_plan"]["plan_version"] for batch in emulator.state.batches} == {2}
    assert sum(1 for batch in emulator.state.batches if batch.get("user_attributes") == {"$gender": "M"}) >= 1
    stats = emulator.state.stats
    assert (stats["events_forwarded"], stats["events_quarantined"], stats["user_attributes_quarantined"]) == (8, 0, 0)
    assert stats["batches_plan_checked"] == len(emulator.state.batches) and stats["duplicates_dropped"] == 0
    assert held_letters(s3, again) == []
    assert report(s3, again)["reconciled"] is True and report(s3, again)["totals"]["replayed"] == 4


@pytest.mark.parametrize(
    ("document", "mparticle_side", "reason"),
    [
        pytest.param(EXPORTED, EXPORTED, "would_be_blocked_again", id="exported-plan"),
        pytest.param(
            V2_IN_PRODUCTION,
            whole_plan(V1_BLOCKING, V2_IN_PRODUCTION),
            "cannot_be_checked",
            id="v2s-document-active-in-production-only",
        ),
    ],
)
def test_a_version_not_active_for_the_batches_environment_is_trusted_only_when_named(
    airflow_db, s3, connections, document, mparticle_side, reason
):
    emulator = connections
    emulator.state.plans = DataPlans.load([mparticle_side])  # v1 applies in development unless a batch names v2
    seed(s3, document)
    held_then_sent_naming_v2(s3, emulator, {"data_plan": f"s3://{BUCKET}/{PLAN_KEY}"}, reason)


def test_a_document_lacking_the_active_version_fails_the_run_before_any_data_is_read(
    airflow_db, s3, connections, capfd
):
    """The issue's case: data_plan holds only v2's version document (not active); v1, active, blocks the data."""
    emulator = connections
    emulator.state.plans = DataPlans.load([EXPORTED])
    seed(s3, V2_NOT_ACTIVE)
    conf = {"data_plan": f"s3://{BUCKET}/{PLAN_KEY}"}
    run = run_with(conf)
    assert run.state == "failed"
    assert emulator.state.batches == []
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents")
    assert "no version in s3://acme-quarantine/plans/main_block.json is active in any environment" in "".join(
        capfd.readouterr()
    )
    sent_naming_v2(s3, emulator, conf)


def test_a_plan_version_the_document_lacks_fails_the_run_before_any_data_is_read(airflow_db, s3, connections, capfd):
    seed(s3, EXPORTED)
    run = run_with({"data_plan": f"s3://{BUCKET}/{PLAN_KEY}", "plan_version": 3})
    assert run.state == "failed"
    assert connections.state.batches == []
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{STATE}/runs/").get("Contents")
    assert "names version 3 of plan 'main_block', which s3://" in "".join(capfd.readouterr())


def test_without_a_plan_the_report_says_delivery_was_not_checked(airflow_db, s3, connections):
    seed(s3, V2_ACTIVE)
    run = run_with({"plan_version": "keep"})
    assert run.state == "success"
    plan = report(s3, run)["plan_check"]
    assert plan["delivery_checked"] is False
    assert any("not checked" in line for line in plan["summary"])
    assert any("plan_version = keep" in line for line in plan["summary"])
