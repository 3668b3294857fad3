"""The backfill console (plugins/): its data (pure), S3 snapshots on a moto server, the app over HTTP with auth."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import partial
from html import unescape
from urllib.parse import quote

import airflow  # noqa: F401  (like every Airflow component, puts the plugins folder, ROOT/plugins here, on sys.path)
import pytest
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from mparticle_backfill_console import chart, overview, page
from mparticle_backfill_console.overview import (
    BACKFILLED,
    FAILED,
    NEVER,
    PARTLY,
    RUNNING,
    RunReport,
    build_overview,
    quarantine_date,
)

from mparticle_backfill.settings import run_key
from mparticle_backfill_airflow.links import s3_browser_url
from tests.airflow.conftest import API_KEY, API_SECRET, BUCKET, PREFIX, airflow_cli, clear_dag_runs
from tests.fixtures.console import real_runs as real
from tests.fixtures.console.real_runs import recorded_report
from tests.fixtures.console.seed import (
    FULL,
    add_dag_runs,
    console_scenario,
    make_report,
    put_lock,
    put_quarantine,
    put_report,
    scheduled,
)

pytestmark = pytest.mark.airflow

DAG_ID = "mparticle_quarantine_backfill"
STATE = f"{PREFIX}/_backfill"
NOW = datetime(2026, 11, 30, 10, 0, tzinfo=timezone.utc)
D = date(2026, 11, 20)
AWS = partial(s3_browser_url, endpoint_url="https://s3.us-east-1.amazonaws.com")


def report(day: date, run_id: str, outcomes=None, *, at: datetime | None = None, **options) -> dict:
    made = make_report(day, run_id, outcomes or FULL, state_bucket=BUCKET, state_prefix=STATE, **options)
    return made | {"written_at": (at or datetime.combine(day + timedelta(days=1), datetime.min.time(), timezone.utc))}


def run_row(run_id: str, state: str, day: date, *, run_type: str = "scheduled", after: datetime | None = None) -> dict:
    start = datetime.combine(day, datetime.min.time(), timezone.utc)
    return {
        "run_id": run_id,
        "state": state,
        "run_type": run_type,
        "conf": {},
        "data_interval_start": start,
        "run_after": after or start + timedelta(days=1),
    }


def build(**kwargs) -> overview.Overview:
    options = {"dag_id": DAG_ID, "quarantine": [], "reports": [], "state_bucket": BUCKET, "state_prefix": STATE}
    return build_overview(**(options | {"now": NOW, "s3_url": AWS} | kwargs))


def row_of(view: overview.Overview, day: date) -> overview.DateRow:
    return next(row for row in view.rows if row.day == day)


# -- pure: dates, reports, states, days left ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listed", "layout", "expected"),
    [
        pytest.param("mp/q/2026-11-20/", "date_folders", D, id="date-folder"),
        pytest.param("mp/q/_backfill/", "date_folders", None, id="state-folder-is-no-date"),
        pytest.param("mp/q/2026-02-30/", "date_folders", None, id="no-such-day"),
        pytest.param("mp/q/misc/", "date_folders", None, id="stray-folder"),
        pytest.param("other/2026-11-20/", "date_folders", None, id="outside-prefix"),
        pytest.param("mp/q/2026/11/20/", "firehose_hourly", D, id="firehose-day"),
        pytest.param("mp/q/2026/11/", "firehose_hourly", None, id="firehose-month"),
        pytest.param("mp/q/mPTravel_20261120170911644493_34523.txt", "flat", D, id="flat-name"),
        pytest.param("mp/q/mParticle_Bucket_Verification_20261120-101010.txt", "flat", None, id="verification"),
    ],
)
def test_quarantine_dates_by_layout(listed, layout, expected):
    assert quarantine_date(listed, layout, "mp/q") == expected


def test_a_report_is_read_as_the_report_task_writes_it():
    written = recorded_report("mixed")  # as a real run's report task wrote it (tests/fixtures/console/real_runs.py)
    read = RunReport.from_json(written, written_at=written["written_at"])
    run_id = written["run_id"]
    assert (read.partition_date, read.run_key, read.run_id) == (real.MIXED_DAY, run_key(run_id), run_id)
    assert read.records_read == 7
    assert dict(read.totals) == {
        "replayed": 3, "held": 0, "dead_lettered": 2, "already_replayed": 1, "too_old": 1, "nothing_to_replay": 0,
    }  # fmt: skip
    assert read.reasons["dead_lettered"] == {"invalid_json": 1, "no_resolvable_identity": 1}
    assert (read.waiting, read.reconciled, read.dead_letter_objects, read.max_age_days) == (2, True, 2, 14)
    assert read.written_at == datetime.fromisoformat(written["written_at"])
    assert RunReport.from_json({"run": "x"}) is None  # not a report


def test_outcomes_are_generic_columns_from_totals_and_summary():
    held = recorded_report("mixed", D)
    held["summary"]["outcomes"].append(["held", "plan_blocks_again", 5])  # only in summary.outcomes
    del held["totals"]["held"]
    held["totals"]["quarantined_again"] = 3  # an outcome nobody knows yet, only in totals
    view = build(quarantine=[D], reports=[held | {"written_at": NOW}])
    assert view.outcomes == (
        "replayed", "held", "dead_lettered", "already_replayed", "too_old", "nothing_to_replay", "quarantined_again",
    )  # fmt: skip
    row = row_of(view, D)
    assert (row.total("held"), row.total("quarantined_again"), row.state) == (5, 3, PARTLY)
    html = page.render_page(view, source="s3://b", loaded_at=NOW, refresh_url="r", json_url="j")
    assert '<td class="num waiting" data-outcome="held">5</td>' in html
    assert 'data-outcome="quarantined_again">3</td>' in html and ">quarantined again</th>" in html
    assert "held: plan_blocks_again <b>5</b>" in html


@pytest.mark.parametrize(
    ("reports", "runs", "locks", "state"),
    [
        pytest.param([], [], {}, NEVER, id="no-run"),
        pytest.param([report(D, "manual__1", dry_run=True)], [], {}, NEVER, id="dry-run-only"),
        pytest.param([report(D, scheduled(D))], [], {}, BACKFILLED, id="all-replayed-or-too-old"),
        pytest.param([recorded_report("mixed", D) | {"written_at": NOW}], [], {}, PARTLY, id="dead-letters"),
        pytest.param([report(D, "m", {("held", "plan"): 4, **FULL})], [], {}, PARTLY, id="held"),
        pytest.param([report(D, "m", reconciled=False)], [], {}, PARTLY, id="not-reconciled"),
        pytest.param([report(D, scheduled(D))], [], {D: {"run_id": "manual__9"}}, RUNNING, id="lock"),
        pytest.param([], [], {D: None}, RUNNING, id="unreadable-lock"),
        pytest.param([], [run_row("backfill__x", "running", D, run_type="backfill")], {}, RUNNING, id="airflow-run"),
        pytest.param([], [run_row("backfill__x", "queued", D, run_type="backfill")], {}, RUNNING, id="queued"),
        pytest.param([], [run_row(scheduled(D), "failed", D)], {}, FAILED, id="failed-without-report"),
        pytest.param(
            [report(D, scheduled(D))], [run_row(scheduled(D), "failed", D)], {}, BACKFILLED, id="failed-after-report"
        ),
        pytest.param(
            [report(D, scheduled(D))],
            [run_row("manual__9", "success", D, run_type="manual")],
            {D: {"run_id": "manual__9"}},
            BACKFILLED,
            id="stale-lock-of-a-finished-run",
        ),
        pytest.param(
            [
                report(D, "old", at=NOW - timedelta(days=2)),
                report(D, "new", FULL | {("dead_lettered", "x"): 1}, at=NOW),
            ],
            [],
            {},
            PARTLY,
            id="latest-report-decides",
        ),
        pytest.param(
            [
                report(D, "old", FULL | {("dead_lettered", "x"): 1}, at=NOW - timedelta(days=2)),
                report(D, "new", at=NOW),
            ],
            [],
            {},
            BACKFILLED,
            id="a-rerun-that-fixed-it",
        ),
    ],
)
def test_state_of_a_date(reports, runs, locks, state):
    assert row_of(build(quarantine=[D], reports=reports, airflow_runs=runs, locks=locks), D).state == state


@pytest.mark.parametrize(
    ("now", "max_age", "expected"),
    [
        pytest.param(datetime(2026, 11, 20, 0, tzinfo=timezone.utc), 14, 14.0, id="its-own-midnight"),
        pytest.param(datetime(2026, 12, 2, 12, tzinfo=timezone.utc), 14, 1.5, id="a-day-and-a-half"),
        pytest.param(datetime(2026, 12, 4, 6, tzinfo=timezone.utc), 14, -0.25, id="passed"),
        pytest.param(datetime(2026, 11, 25, 0, tzinfo=timezone.utc), 7, 2.0, id="max-age-days-7"),
    ],
)
def test_days_left_before_the_oldest_data_leaves_the_window(now, max_age, expected):
    assert overview.days_left(D, max_age, now) == pytest.approx(expected)


def test_urgent_dates_are_the_ones_not_done_with_under_three_days_left():
    days = {n: NOW.date() - timedelta(days=n) for n in (3, 12, 13, 20)}
    view = build(
        quarantine=days.values(),
        reports=[report(days[13], scheduled(days[13])), recorded_report("mixed", days[3])],
    )
    assert [row.day for row in view.urgent] == [days[12]]  # 13 is done, 20 has passed, 3 has 11 days left
    assert row_of(view, days[12]).days_left == pytest.approx(14 - 12 - 10 / 24)
    assert not row_of(view, days[20]).urgent and row_of(view, days[20]).expired
    html = page.render_page(view, source="s3://b", loaded_at=NOW, refresh_url="r", json_url="j")
    assert f'<td class="left urgent" data-days="{row_of(view, days[12]).days_left:.2f}">1 day</td>' in html
    assert f'1 date leaves the replay window in under 3 days and is not done:</b> <a href="#d-{days[12]}">' in html


def test_rows_history_links_and_the_real_run_id():
    run_id = "backfill__2026-11-20T00:00:00+00:00"
    older = report(D, scheduled(D), FULL | {("dead_lettered", "invalid_json"): 4}, at=NOW - timedelta(days=9))
    latest = report(D, run_id, at=NOW - timedelta(days=1))
    del latest["run_id"]  # written before reports carried their run's id: its run is found by its run_key
    view = build(
        quarantine=[D, D + timedelta(days=1)],
        reports=[older, latest],
        airflow_runs=[run_row(run_id, "success", D, run_type="backfill"), run_row(scheduled(D), "success", D)],
        airflow_base="/airflow/",
    )
    assert [row.day for row in view.rows] == [D + timedelta(days=1), D]  # newest first, dates without runs too
    row = row_of(view, D)
    assert [run.report.run_key for run in row.history] == ["backfill__2026-11-20T00_00_00_00_00", older["run"]]
    assert row.latest.run_id == run_id  # found in Airflow's runs by its run_key
    assert row.latest.grid_url == f"/airflow/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
    assert row.latest.report_url == AWS(BUCKET, f"{STATE}/2026-11-20/reports/{latest['run']}.md")
    assert row.latest.dead_letters_url is None  # no dead letters in that run
    assert row.history[1].dead_letters_url == AWS(BUCKET, f"{STATE}/2026-11-20/dead_letters/{older['run']}/")
    assert row.trigger_conf == '{"partition_date": "2026-11-20"}'
    assert row.backfill_cli == (
        f"airflow backfill create --dag-id {DAG_ID} --from-date 2026-11-20 --to-date 2026-11-20"
        " --reprocess-behavior completed"
    )
    assert "--reprocess-behavior" not in row_of(view, D + timedelta(days=1)).backfill_cli  # never run: plain
    assert RunReport.from_json(latest | {"run_id": "given"}).run_id == "given"  # a report's own run_id wins
    held = report(D, "manual__plan", FULL | {("held", "plan_blocks_again"): 2}) | {"held": ["s3://b/k"]}
    assert build(reports=[held]).rows[0].latest.held_url == AWS(BUCKET, f"{STATE}/2026-11-20/held/manual__plan/")


def test_a_manual_run_is_the_date_of_its_conf():
    run = overview.AirflowRun.from_row(
        {"run_id": "manual__x", "state": "running", "conf": {"partition_date": "2026-11-20"}, "run_after": NOW}
    )
    assert (run.partition_date, run.active, run.run_key) == (D, True, "manual__x")
    without = overview.AirflowRun.from_row({"run_id": "manual__y", "state": "success", "conf": {}, "run_after": NOW})
    assert without.partition_date == NOW.date() - timedelta(days=1)  # as the DAG decides: yesterday


def test_chart_stacks_each_dates_outcomes():
    other = D - timedelta(days=2)
    view = build(
        quarantine=[D, other, D - timedelta(days=1)], reports=[recorded_report("mixed", D) | {"written_at": NOW}]
    )
    svg = ET.fromstring(chart.render_chart(view))
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = svg.findall("s:a", ns)
    assert [bar.get("href") for bar in bars] == [f"#d-{other}", f"#d-{D - timedelta(days=1)}", "#d-2026-11-20"]
    titled = bars[-1].find("s:title", ns).text
    assert titled == "2026-11-20: partly · read 7 · replayed 3 · dead-lettered 2 · already replayed 1 · too old 1"
    heights = [float(rect.get("height")) for rect in bars[-1].findall("s:rect", ns)][:-1]  # last: state strip
    assert heights[0] / heights[1] == pytest.approx(3 / 2, rel=0.01)  # SVG keeps two decimals
    assert {rect.get("fill") for rect in bars[0].findall("s:rect", ns)} == {chart.STATE_COLOURS[NEVER]}
    assert "replay window" not in chart.render_chart(view)  # every date drawn is inside it
    spanning = build(quarantine=[D, NOW.date() - timedelta(days=20)])
    line = ET.fromstring(chart.render_chart(spanning)).find("s:line[@class='window']", ns)
    assert line is not None and "replay window (14 days)" in chart.render_chart(spanning)


def test_the_page_escapes_what_it_shows_and_shows_counts_not_contents():
    strange = recorded_report("mixed", D)
    strange["summary"]["outcomes"].append(["dead_lettered", "<script>alert(1)</script>", 1])
    strange["totals"]["dead_lettered"] += 1
    strange["summary"]["counts"]["identity:email"] = 1  # counts of other figures are never shown
    html = page.render_page(
        build(quarantine=[D], reports=[strange | {"written_at": NOW}]),
        source="s3://b",
        loaded_at=NOW,
        refresh_url="r",
        json_url="j",
    )
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; <b>1</b>" in html
    assert "identity:email" not in html and "events_blocked" not in html


def test_the_page_data_modules_are_pure():
    """overview, chart and page import no FastAPI, boto3 or Airflow: they are tested with plain dicts."""
    import subprocess
    import sys

    from tests.airflow.conftest import ROOT

    code = (
        "import sys; sys.path.insert(0, 'plugins');"
        "import mparticle_backfill_console.overview, mparticle_backfill_console.chart, mparticle_backfill_console.page;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'boto3', 'botocore', 'airflow'}))"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"


# -- S3 snapshots on a moto server ---------------------------------------------------------------------------


@pytest.fixture
def console_s3(moto_server, s3, monkeypatch):
    """The DAG's S3 connection and settings Variable, pointing at the moto server."""
    conn = {"conn_type": "aws", "login": "testing", "password": "testing"}
    conn["extra"] = {"endpoint_url": moto_server, "region_name": "us-east-1"}
    monkeypatch.setenv("AIRFLOW_CONN_MPARTICLE_QUARANTINE_S3", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_VAR_MPARTICLE_BACKFILL", json.dumps({"bucket": BUCKET, "prefix": PREFIX}))
    return s3


class CountingHook:
    """Counts the hook's S3 verbs (the console must not re-read what it has)."""

    calls: Counter = Counter()

    def __new__(cls, conn_id: str):
        from mparticle_backfill_console.s3 import ConsoleS3Hook

        hook = ConsoleS3Hook(conn_id)
        for verb in ("quarantine_entries", "state_dates", "partition_state", "read_object"):
            method = getattr(hook, verb)

            def counted(*args, _verb=verb, _method=method, **kwargs):
                cls.calls[_verb] += 1
                return _method(*args, **kwargs)

            setattr(hook, verb, counted)
        return hook


def test_snapshot_of_dates_reports_and_locks_on_moto(console_s3):
    from mparticle_backfill_console.sources import S3Snapshots

    from mparticle_backfill.settings import parse_settings

    s3 = console_s3
    days = [D - timedelta(days=n) for n in range(6)]
    for day in days:
        put_quarantine(s3, BUCKET, PREFIX, day)
    put_report(
        s3, BUCKET, STATE, make_report(days[0], scheduled(days[0]), FULL, state_bucket=BUCKET, state_prefix=STATE)
    )
    for n, run in enumerate(("manual__a", "manual__b")):
        made = make_report(
            days[1], run, FULL | {("dead_lettered", "invalid_json"): n}, state_bucket=BUCKET, state_prefix=STATE
        )
        put_report(s3, BUCKET, STATE, made)
    put_lock(s3, BUCKET, STATE, days[2], "manual__c")
    s3.put_object(Bucket=BUCKET, Key=f"{STATE}/{days[3]}/reports/not-a-report.json", Body=b"{oops")
    s3.put_object(Bucket=BUCKET, Key=f"{STATE}/{days[4]}/ledger/x.txt", Body=b"k\n")
    for folder in ("ledger/manual__a", "runs/manual__a/extract", "payloads/manual__a", "dead_letters/manual__a"):
        s3.put_object(Bucket=BUCKET, Key=f"{STATE}/{days[1]}/{folder}/chunk-00000.ndjson", Body=b"{}\n")
    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX})
    CountingHook.calls.clear()
    snapshots = S3Snapshots(ttl=60, hook_factory=CountingHook)

    first, notice = snapshots.get(settings, "mparticle_quarantine_s3")
    assert notice == "" and first.quarantine == set(days)
    assert sorted((r.partition_date, r.run_key) for r in first.reports) == [
        (days[1], "manual__a"), (days[1], "manual__b"), (days[0], run_key(scheduled(days[0]))),
    ]  # fmt: skip
    assert list(first.locks) == [days[2]] and first.locks[days[2]]["run_id"] == "manual__c"
    assert first.endpoint_url == console_s3.meta.endpoint_url
    assert CountingHook.calls["partition_state"] == 5  # one per date with state; days[5] (no state) needs none
    assert first.reports_read == 4  # three reports and the broken one

    CountingHook.calls.clear()
    again, _ = snapshots.get(settings, "mparticle_quarantine_s3")
    assert again is first and not CountingHook.calls  # inside the TTL: S3 is not read

    made = make_report(days[1], "manual__b", FULL | {("held", "plan"): 2}, state_bucket=BUCKET, state_prefix=STATE)
    put_report(s3, BUCKET, STATE, made)  # a rerun rewrites one report
    CountingHook.calls.clear()
    fresh, _ = snapshots.get(settings, "mparticle_quarantine_s3", refresh=True)
    assert fresh.reports_read == 1  # only the rewritten report: the others' ETags are unchanged
    assert CountingHook.calls["read_object"] == 2  # that report, and the lock
    held = [r for r in fresh.reports if r.run_key == "manual__b"]
    assert held[0].total("held") == 2


def test_stale_snapshots_are_served_while_a_background_refresh_reads_s3(console_s3):
    import time

    from mparticle_backfill_console.sources import S3Snapshots

    from mparticle_backfill.settings import parse_settings

    put_quarantine(console_s3, BUCKET, PREFIX, D)
    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX})
    snapshots = S3Snapshots(ttl=0.0)
    first, _ = snapshots.get(settings, "mparticle_quarantine_s3")
    put_quarantine(console_s3, BUCKET, PREFIX, D + timedelta(days=1))
    stale, _ = snapshots.get(settings, "mparticle_quarantine_s3")
    assert stale is first  # answered at once from the old snapshot
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        newer, _ = snapshots.get(settings, "mparticle_quarantine_s3")
        if D + timedelta(days=1) in newer.quarantine:
            break
        time.sleep(0.1)
    assert newer.quarantine == {D, D + timedelta(days=1)}
    assert snapshots.join(timeout=20)  # no refresh left running after the test


def test_firehose_day_folders_are_dates(console_s3):
    from mparticle_backfill_console.sources import S3Snapshots

    from mparticle_backfill.settings import parse_settings

    for day in (D, D + timedelta(days=14)):
        console_s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{day:%Y/%m/%d}/12/stream-1", Body=b"{}")
    settings = parse_settings({"bucket": BUCKET, "prefix": PREFIX, "layout": "firehose_hourly"})
    snapshot, _ = S3Snapshots().get(settings, "mparticle_quarantine_s3")
    assert snapshot.quarantine == {D, D + timedelta(days=14)}


# -- the app over HTTP, mounted as the api-server mounts it -----------------------------------------------------

TODAY = datetime.now(timezone.utc).date()


@pytest.fixture(scope="module")
def serialized_dag(airflow_db):
    airflow_cli("dags", "reserialize")  # the DAG in Airflow's database, as the api-server sees it


@pytest.fixture
def scenario(console_s3, serialized_dag):
    """Dates in every state in S3, and their runs in Airflow's database (removed again: other tests count runs)."""
    clear_dag_runs()  # runs other tests left in the session's database are not this scenario's
    seeded = console_scenario(console_s3, BUCKET, PREFIX, TODAY)
    delete = add_dag_runs(seeded.runs.values())
    yield seeded
    delete()


def make_client(monkeypatch, *, all_admins: bool, auth_manager: str | None = None):
    """A fresh api-server app (plugins mounted by Airflow's own create_app), with these auth settings."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient
    from mparticle_backfill_console import app as console_app
    from mparticle_backfill_console.sources import S3Snapshots

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "console-test-" + "s" * 64)
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", str(all_admins))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "analyst:viewer,outsider:viewer")
    if auth_manager:
        monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER", auth_manager)
    monkeypatch.setattr(console_app, "snapshots", S3Snapshots())  # each test its own bucket contents
    purge_cached_app()
    return TestClient(create_app())


@pytest.fixture
def reset_auth_manager():
    yield
    from airflow.api_fastapi.app import purge_cached_app

    purge_cached_app()


CONSOLE = f"/mparticle-backfill/dags/{DAG_ID}/console"


def test_the_console_over_http(console_s3, scenario, monkeypatch, reset_auth_manager):
    client = make_client(monkeypatch, all_admins=True)  # the local "all admins" setup: no login needed
    ago, runs = scenario.ago, {role: run[0] for role, run in scenario.runs.items()}

    answer = client.get(f"{CONSOLE}.json")
    assert answer.status_code == 200, answer.text
    dates = {d["date"]: d for d in answer.json()["dates"]}
    assert {n: dates[day.isoformat()]["state"] for n, day in ago.items() if str(day) in dates} == scenario.states
    partly = dates[ago[3].isoformat()]
    nonzero = {outcome: n for outcome, n in partly["latest"]["totals"].items() if n}
    assert nonzero == {
        "replayed": 431,
        "dead_lettered": 8,
        "too_old": 149,
        "nothing_to_replay": 12,
    }  # seed.README_EXAMPLE
    assert partly["latest"]["reasons"]["dead_lettered"] == {"invalid_json": 6, "no_resolvable_identity": 2}
    assert [run["run_key"] for run in partly["history"]][1] == "manual__first"  # the older run, one click away
    assert partly["latest"]["grid_url"] == f"/dags/{DAG_ID}/runs/{quote(runs['partly'], safe='')}"
    assert dates[ago[4].isoformat()]["latest"]["totals"]["held"] == 7
    assert dates[ago[12].isoformat()]["urgent"] and not dates[ago[20].isoformat()]["urgent"]
    assert dates[ago[1].isoformat()]["active_run_ids"] == [runs["running"]]
    assert answer.json()["outcomes"][:3] == ["replayed", "held", "dead_lettered"]

    html = client.get(CONSOLE)
    assert html.status_code == 200 and html.headers["cache-control"] == "no-store"
    assert f'<th scope="row" id="d-{ago[3]}">' in html.text
    assert '<td class="num" data-outcome="records_read">600</td>' in html.text
    report_key = f"{STATE}/{ago[3]}/reports/{run_key(runs['partly'])}.md"
    report_link = s3_browser_url(BUCKET, report_key, console_s3.meta.endpoint_url)  # as the report task links it
    assert partly["latest"]["report_url"] == report_link and f'href="{report_link}" data-nav="s3"' in html.text

    other = client.get("/mparticle-backfill/dags/some_other_dag/console")
    assert other.status_code == 200 and "is another DAG" in other.text and "<table" not in other.text
    assert client.get("/mparticle-backfill/docs").status_code == 404
    assert client.get("/mparticle-backfill/openapi.json").status_code == 404


def test_the_console_explains_a_missing_variable(console_s3, serialized_dag, monkeypatch, reset_auth_manager):
    monkeypatch.delenv("AIRFLOW_VAR_MPARTICLE_BACKFILL")
    client = make_client(monkeypatch, all_admins=True)
    answer = client.get(CONSOLE)
    assert answer.status_code == 503 and "The Variable mparticle_backfill is not set" in answer.text


class ConsoleTestAuthManager(SimpleAuthManager):
    """The simple auth manager, except that the user ``outsider`` may not read this DAG."""

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
        if user.get_name() == "outsider" and details is not None and details.id == DAG_ID:
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)


def test_the_console_is_behind_airflows_auth(scenario, monkeypatch, reset_auth_manager):
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client = make_client(monkeypatch, all_admins=False, auth_manager=f"{__name__}.ConsoleTestAuthManager")
    assert client.get(CONSOLE).status_code == 401  # no session, no token
    assert client.get(f"{CONSOLE}.json").status_code == 401
    assert client.get(CONSOLE, headers={"Authorization": "Bearer not-a-token"}).status_code == 403

    manager = get_auth_manager()
    outsider = manager.generate_jwt(SimpleAuthManagerUser(username="outsider", role="viewer"))
    refused = client.get(CONSOLE, headers={"Authorization": f"Bearer {outsider}"})
    assert refused.status_code == 403 and str(TODAY.year) not in refused.text  # nothing of the page

    analyst = manager.generate_jwt(SimpleAuthManagerUser(username="analyst", role="viewer"))
    client.cookies.set("_token", analyst)  # the UI's session cookie
    allowed = client.get(CONSOLE)
    assert allowed.status_code == 200 and f'id="d-{scenario.ago[3]}"' in allowed.text


def test_each_generated_dag_has_its_own_console(monkeypatch, tmp_path):
    """With mparticle_backfills.yaml, the tab of each generated DAG reads that entry's settings and connection."""
    from mparticle_backfill_console import app as console_app

    config = tmp_path / "mparticle_backfills.yaml"
    config.write_text(
        "backfills:\n"
        "  - {name: eu, settings: {bucket: acme-eu-quarantine, max_age_days: 10}, aws_conn_id: s3_eu}\n"
        "  - {name: us, settings: {bucket: acme-us-quarantine}}\n"
    )
    monkeypatch.setenv("MPARTICLE_BACKFILLS_CONFIG", str(config))
    eu, _ = console_app._backfill("mparticle_quarantine_backfill__eu")
    assert eu is not None and eu.aws_conn_id == "s3_eu"
    monkeypatch.setattr("airflow.sdk.Variable.get", lambda name, default=None, deserialize_json=False: default)
    settings = console_app.read_settings(eu)
    assert (settings.bucket, settings.max_age_days) == ("acme-eu-quarantine", 10)
    missing, why = console_app._backfill("mparticle_quarantine_backfill")
    assert missing is None and "mparticle_quarantine_backfill__eu, mparticle_quarantine_backfill__us" in why


# -- the console on what real runs wrote: dag.test() through moto and the Events API emulator ------------------
#
# The cases of tests/fixtures/console/real_runs.py (a run and a re-run of one date, a date with dead letters,
# a dry run, a run whose data plan holds data back, a failed run), read with the console's own code: each
# test below runs on the reports recorded in recorded.json (fast, no Airflow) and on fresh runs (once per
# module, about 30 s), and test_the_recorded_reports_are_what_the_dag_writes_now keeps the two the same.


@pytest.fixture(scope="module")
def live_runs(airflow_db, moto_server):
    """Every case run once with dag.test() (an emulator and bucket contents of their own); the runs are
    removed from Airflow's database again once the console's reads are taken."""
    import boto3

    from tools.emulator import EventsApiEmulator

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    with (
        EventsApiEmulator(API_KEY, API_SECRET) as emulator,
        real.environment(moto_server, emulator.url, API_KEY, API_SECRET, BUCKET, PREFIX),
    ):
        return real.run_cases(s3, emulator, BUCKET, PREFIX)


@dataclass(frozen=True)
class RealConsole:
    """What the console makes of the cases' dates, and what each case's run was."""

    view: overview.Overview
    html: str
    run_ids: dict[str, str]
    reports: dict[str, dict | None]
    s3_url: Callable[[str, str], str]

    def row(self, day: date) -> dict:
        return next(row for row in self.view.to_json()["dates"] if row["date"] == day.isoformat())

    def text(self, day: date) -> str:
        """The words of the date's row and its history, as a person reads them (tags dropped)."""
        start = self.html.index('<tr class="row ')
        rows = self.html[start : self.html.index("</section>", start)].split('<tr class="row ')
        (found,) = [row for row in rows if f'data-date="{day}"' in row]
        return " ".join(unescape(re.sub(r"<[^>]+>", " ", found)).split())

    def link(self, case: str, field: str) -> str:
        """Where the console should open the objects a run's report lists (``dead_letters``, ``held``): the
        folder they are in, as the report itself names them."""
        uris = self.reports[case][field]
        folders = {uri.removeprefix(f"s3://{BUCKET}/").rsplit("/", 1)[0] + "/" for uri in uris}
        (folder,) = folders
        return self.s3_url(BUCKET, folder)


@pytest.fixture(scope="module", params=["recorded", "dag.test"])
def real_console(request) -> RealConsole:
    """The console's view of the cases: from recorded.json, or from fresh runs (S3 read by its own snapshot
    code, the runs by its own query of Airflow's database)."""
    if request.param == "recorded":
        cases = real.recorded()["cases"]
        reports = [
            RunReport.from_json(case["report"], written_at=case["report_written_at"])
            for case in cases.values()
            if case["report"]
        ]
        source = {
            "quarantine": {date.fromisoformat(case["date"]) for case in cases.values()},
            "reports": reports,
            "airflow_runs": [case["airflow_run"] for case in cases.values()],
            "locks": {},
        }
        s3_url = AWS
        run_ids = {name: case["run_id"] for name, case in cases.items()}
        written = {name: case["report"] for name, case in cases.items()}
    else:
        runs = request.getfixturevalue("live_runs")
        snapshot = runs.snapshot
        source = {
            "quarantine": snapshot.quarantine,
            "reports": snapshot.reports,
            "airflow_runs": runs.airflow_runs,
            "locks": snapshot.locks,
        }
        s3_url = partial(s3_browser_url, endpoint_url=snapshot.endpoint_url)
        run_ids, written = runs.run_ids, runs.reports
    view = build_overview(dag_id=DAG_ID, state_bucket=BUCKET, state_prefix=STATE, now=real.NOW, s3_url=s3_url, **source)
    html = page.render_page(view, source=f"s3://{BUCKET}/{PREFIX}", loaded_at=real.NOW, refresh_url="r", json_url="j")
    return RealConsole(view, html, run_ids, written, s3_url)


def nonzero(counts: dict) -> dict:
    return {name: n for name, n in counts.items() if n}


def grid(run_id: str) -> str:
    return f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"


def test_the_runs_did_what_their_cases_say(live_runs):
    """The cases themselves, before the console reads them."""
    assert live_runs.states == {
        "run": "success", "rerun": "success", "mixed": "success", "dry_run": "success", "held": "success",
        "failed": "failed",
    }  # fmt: skip
    assert live_runs.reports["failed"] is None  # send failed: the report task never ran
    assert all(live_runs.reports[case] for case in ("run", "rerun", "mixed", "dry_run", "held"))
    # run: 6 records x 2 blocked events; mixed: 3; held: the first event of 4 records; the rest nothing.
    assert live_runs.events_sent == 6 * 2 + 3 * 2 + 4
    assert live_runs.emulator_stats.get("duplicates_dropped", 0) == 0
    assert live_runs.emulator_stats.get("events_quarantined", 0) == 0  # nothing the plan blocks was sent
    assert live_runs.snapshot.locks == {}  # every run's teardown released its date


def test_the_recorded_reports_are_what_the_dag_writes_now(live_runs):
    """recorded.json (what the pure tests read) holds what the report task writes today, field for field."""
    recorded = real.recorded()["cases"]
    for case in real.CASES:
        then = recorded[case.name]
        now = real.comparable(live_runs.reports[case.name], live_runs.run_ids[case.name])
        assert now == real.comparable(then["report"], then["run_id"]), (
            f"the {case.name} run's report changed: re-record with `python -m tests.fixtures.console.real_runs`"
        )
        assert live_runs.states[case.name] == then["state"]
    rows = {row["run_id"]: row for row in live_runs.airflow_runs}
    for name, run_id in live_runs.run_ids.items():
        assert {k: rows[run_id][k] for k in ("run_type", "conf")} == {
            k: recorded[name]["airflow_run"][k] for k in ("run_type", "conf")
        }


def test_the_helpers_made_up_reports_have_every_field_of_a_real_one():
    """The scenario and benchmark reports (seed.make_report) are real ones with other counts."""
    made = make_report(D, "manual__x", FULL | {("held", "plan"): 1}, state_bucket=BUCKET, state_prefix=STATE)
    for case in ("run", "held", "dry_run"):
        written = recorded_report(case)
        assert set(made) == set(written) - {"written_at"}
        for field in ("settings", "plan_check", "coalescing", "summary"):
            assert set(made[field]) == set(written[field]), field


def test_a_date_run_and_run_again(real_console):
    """Everything replayed, then a re-run: already replayed, nothing sent twice. Backfilled; both runs listed."""
    c = real_console
    row = c.row(real.RUN_DAY)
    assert row["state"] == BACKFILLED and not row["urgent"] and row["has_quarantine_data"]
    assert [run["run_id"] for run in row["history"]] == [c.run_ids["rerun"], c.run_ids["run"]]  # newest first
    again, first = row["history"]
    assert nonzero(first["totals"]) == {"replayed": 6, "too_old": 1}
    assert nonzero(again["totals"]) == {"already_replayed": 6, "too_old": 1}
    assert again["reasons"] == {"already_replayed": {"in_ledger": 6}, "too_old": {"older_than_window": 1}}
    assert first["records_read"] == again["records_read"] == 7
    for run, case in ((again, "rerun"), (first, "run")):
        assert (run["airflow_state"], run["dry_run"], run["reconciled"]) == ("success", False, True)
        assert run["grid_url"] == grid(c.run_ids[case])
        report_md = f"{STATE}/{real.RUN_DAY}/reports/{run_key(c.run_ids[case])}.md"
        assert run["report_url"] == c.s3_url(BUCKET, report_md)
        assert run["dead_letters_url"] is None and run["held_url"] is None
    assert row["latest"] == again
    text = c.text(real.RUN_DAY)
    # state, days left, read, then replayed, held, dead-lettered, already replayed, too old, nothing to replay
    assert "backfilled 9 days 7 0 0 0 6 1 0" in text
    assert "2 runs" in text and "manual run" not in text.split("2 runs")[0]  # no failed or running run noted


def test_a_date_with_dead_letters(real_console):
    """A record delivered twice, one too old, a broken line, a record without an identity: partly, by reason."""
    c = real_console
    row = c.row(real.MIXED_DAY)
    assert row["state"] == PARTLY
    latest = row["latest"]
    assert latest["run_id"] == c.run_ids["mixed"] and [run["run_id"] for run in row["history"]] == [latest["run_id"]]
    assert nonzero(latest["totals"]) == {"replayed": 3, "dead_lettered": 2, "already_replayed": 1, "too_old": 1}
    assert latest["reasons"]["dead_lettered"] == {"invalid_json": 1, "no_resolvable_identity": 1}
    assert latest["reasons"]["already_replayed"] == {"duplicate_in_partition": 1}
    assert latest["dead_letters_url"] == c.link("mixed", "dead_letters")  # the folder of the report's own list
    text = c.text(real.MIXED_DAY)
    assert "partly" in text and "invalid_json 1" in text and "no_resolvable_identity 1" in text
    assert "dead letters" in text


def test_a_date_only_dry_run(real_console):
    """A dry run sends nothing: the date is never backfilled, and the dry run's figures are marked as such."""
    c = real_console
    row = c.row(real.DRY_DAY)
    assert row["state"] == NEVER
    latest = row["latest"]
    assert latest["dry_run"] is True and latest["run_id"] == c.run_ids["dry_run"]
    assert nonzero(latest["totals"]) == {"replayed": 3, "dead_lettered": 2, "already_replayed": 1, "too_old": 1}
    assert latest["reasons"]["replayed"] == {"dry_run": 3}
    assert latest["dead_letters_url"] == c.link("dry_run", "dead_letters")
    # What a dry run is for: the requests it would have sent, in S3.
    assert latest["payloads_url"] == c.s3_url(BUCKET, c.reports["dry_run"]["payloads"].removeprefix(f"s3://{BUCKET}/"))
    text = c.text(real.DRY_DAY)
    assert "never backfilled" in text and "latest report: dry run" in text and "payloads" in text
    assert '<td class="num dry" data-outcome="replayed">3</td>' in c.html


def test_a_date_whose_data_plan_holds_data_back(real_console):
    """The plan still blocks the second event of each record: it is held (not sent), the first sent. The
    records count as replayed, but the date waits for the plan to be fixed and a re-run: partly, not done."""
    c = real_console
    written = c.reports["held"]
    assert written["totals"]["held"] == 0 and written["summary"]["counts"]["events_held"] == 4  # what runs write
    row = c.row(real.HELD_DAY)
    assert row["state"] == PARTLY
    latest = row["latest"]
    assert nonzero(latest["totals"]) == {"replayed": 4}
    assert (latest["held_events"], latest["held_user_attributes"]) == (4, 0)
    assert latest["held_url"] == c.link("held", "held")
    assert latest["plan_check"] == "hold"
    text = c.text(real.HELD_DAY)
    assert "partly" in text and "held back: 4 events" in text and "plan check: hold" in text


def test_a_date_whose_run_failed(real_console):
    """The Events API was down: send failed, the run failed, no report. Failed, with under 3 days left: urgent."""
    c = real_console
    row = c.row(real.FAILED_DAY)
    assert row["state"] == FAILED and row["latest"] is None and row["history"] == []
    assert row["urgent"] and row["days_left"] == pytest.approx(1.58, abs=0.01)
    assert row["lock_run_id"] is None  # its teardown released the lock
    failed = row_of(c.view, real.FAILED_DAY)
    assert failed.latest_airflow_run.run_id == c.run_ids["failed"]
    assert failed.latest_airflow_run_url == grid(c.run_ids["failed"])
    text = c.text(real.FAILED_DAY)
    assert "failed" in text and "manual run failed" in text and "1 day" in text
    assert "No run of this date has written a report yet." in text
    alert = '1 date leaves the replay window in under 3 days and is not done:</b> <a href="#d-2026-11-18">'
    assert alert in c.html and "2026-11-18</a> (1 day, failed)" in c.html


def test_the_summary_of_the_real_dates(real_console):
    view = real_console.view
    days = {real.RUN_DAY, real.MIXED_DAY, real.DRY_DAY, real.HELD_DAY, real.FAILED_DAY}
    states = Counter(row.state for row in view.rows if row.day in days)
    assert states == {BACKFILLED: 1, PARTLY: 2, NEVER: 1, FAILED: 1}
    assert [row.day for row in view.urgent] == [real.FAILED_DAY]


def test_a_report_whose_run_airflow_no_longer_has_names_it_without_a_link():
    """``airflow db clean`` (or dag.test() replacing a run) removes a run its report still names: the console
    names it, and links nowhere (Airflow has no page for it)."""
    cases = real.recorded()["cases"]
    reports = [recorded_report("run"), recorded_report("rerun")]
    view = build(quarantine=[real.RUN_DAY], reports=reports, airflow_runs=[cases["rerun"]["airflow_run"]])
    again, first = row_of(view, real.RUN_DAY).history
    assert again.grid_url == grid(cases["rerun"]["run_id"]) and again.airflow_state == "success"
    assert (first.run_id, first.grid_url, first.airflow_state) == (cases["run"]["run_id"], None, None)
    html = page.render_page(view, source="s3://b", loaded_at=NOW, refresh_url="r", json_url="j")
    assert f"<td>{cases['run']['run_id']}</td>" in html and grid(cases["run"]["run_id"]) not in html
