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


def test_without_a_plan_the_report_says_delivery_was_not_checked(airflow_db, s3, connections):
    seed(s3, V2_ACTIVE)
    run = run_with({"plan_version": "keep"})
    assert run.state == "success"
    plan = report(s3, run)["plan_check"]
    assert plan["delivery_checked"] is False
    assert any("not checked" in line for line in plan["summary"])
    assert any("plan_version = keep" in line for line in plan["summary"])
