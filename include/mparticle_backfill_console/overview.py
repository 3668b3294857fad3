"""The console's data: quarantine dates, each date's state, days left in the replay window, the table's rows.

Pure: plain dicts in (report JSON as the ``report`` task writes it, Airflow runs as rows, S3 listings as
strings), frozen dataclasses out. No FastAPI, no boto3, no Airflow: the page, the chart and the tests
all start from :func:`build_overview`.

Outcomes are read generically from each report's ``totals`` and ``summary.outcomes``: an outcome this
module has never heard of still gets its column (after the known ones).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from mparticle_backfill.filter_by_age import DEFAULT_MAX_AGE_DAYS
from mparticle_backfill.model import OUTCOMES
from mparticle_backfill.partition import DATE_FOLDERS, FIREHOSE_HOURLY, FLAT, upload_date_from_name
from mparticle_backfill.settings import StatePaths, resolve_partition_date, run_key

# Known outcomes, in column order; any other outcome a report names gets a column after these.
OUTCOME_ORDER = ("replayed", "held", "dead_lettered", "already_replayed", "too_old", "nothing_to_replay")
# Outcomes whose records still wait for someone (a fixed plan, a look at the dead letters): a date
# with any of them is only partly backfilled.
WAITING_OUTCOMES = frozenset({"held", "dead_lettered"})
# Airflow DagRun states of a run still working on its date, and of one that has ended.
ACTIVE_RUN_STATES = frozenset({"queued", "running"})
ENDED_RUN_STATES = frozenset({"success", "failed"})
# Fewer days than this left before a date's oldest data leaves the replay window: highlighted.
URGENT_DAYS = 3

# A date's state, most pressing first.
RUNNING = "running"  # a run works on it now (its lock.json, or an Airflow run of that date queued/running)
FAILED = "failed"  # its latest Airflow run failed without writing a report
NEVER = "never"  # no report of a run that sent (dry runs do not count)
PARTLY = "partly"  # the latest report has dead letters or held data, or did not reconcile
BACKFILLED = "backfilled"  # the latest report: everything replayed, too old or already replayed
STATES = (RUNNING, FAILED, NEVER, PARTLY, BACKFILLED)
STATE_LABELS = {
    RUNNING: "running",
    FAILED: "failed",
    NEVER: "never backfilled",
    PARTLY: "partly",
    BACKFILLED: "backfilled",
}


def outcome_label(outcome: str) -> str:
    """How an outcome is named on the page (``dead_lettered`` -> ``dead-lettered``)."""
    return "dead-lettered" if outcome == "dead_lettered" else outcome.replace("_", " ")


def order_outcomes(outcomes: Iterable[str]) -> tuple[str, ...]:
    """Known outcomes in report order, then any other outcome alphabetically."""
    known = {name: index for index, name in enumerate(OUTCOME_ORDER)}
    return tuple(sorted(set(outcomes), key=lambda name: (known.get(name, len(known)), name)))


# -- dates in the quarantine bucket ---------------------------------------------------------------------


def quarantine_date(listed: str, layout: str, prefix: str) -> date | None:
    """The partition date of one listed entry under the quarantine prefix, or None if it is not one.

    ``date_folders``: a common prefix ``[prefix/]YYYY-MM-DD/``; ``firehose_hourly``: a day folder
    ``[prefix/]YYYY/MM/DD/``; ``flat``: an object key whose name carries the 20-digit UTC timestamp.
    Anything else (the tool's own state folder, verification objects, stray folders) is not a date.
    """
    folder = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    if not listed.startswith(folder):
        return None
    rest = listed[len(folder) :]
    try:
        if layout == DATE_FOLDERS:
            name = rest.rstrip("/")
            return date.fromisoformat(name) if len(name) == 10 and "/" not in name else None
        if layout == FIREHOSE_HOURLY:
            parts = rest.rstrip("/").split("/")
            if len(parts) != 3 or [len(p) for p in parts] != [4, 2, 2] or not all(p.isdigit() for p in parts):
                return None
            return date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None
    if layout == FLAT:
        return upload_date_from_name(rest) if "/" not in rest else None
    return None


def quarantine_dates(listed: Iterable[str], layout: str, prefix: str) -> set[date]:
    """Every partition date among listed folders (or, for ``flat``, object keys)."""
    found = (quarantine_date(entry, layout, prefix) for entry in listed)
    return {day for day in found if day is not None}


# -- reports and runs -----------------------------------------------------------------------------------


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _day(value: Any) -> date | None:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str) and value.strip():
        try:
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class RunReport:
    """What the console keeps of one report (``<state>/<date>/reports/<run_key>.json``): counts only."""

    partition_date: date
    run_key: str
    run_id: str | None
    written_at: datetime | None
    dry_run: bool
    reconciled: bool
    records_read: int
    totals: Mapping[str, int]  # outcome -> records
    reasons: Mapping[str, Mapping[str, int]]  # outcome -> reason -> records
    dead_letter_objects: int
    max_age_days: int | None
    held_objects: int = 0  # what the plan check held back (``<date>/held/<run_key>/``)
    # Parts of records held back (not sent) while the rest of the record was replayed: events a data plan
    # would block again (or no route takes) and user attributes. The record counts as replayed.
    held_events: int = 0
    held_user_attributes: int = 0
    plan_check: str | None = None  # the run's plan_check: hold, report or off (None: an older report)
    payloads: bool = False  # a dry run wrote the requests it would have sent (``<date>/payloads/<run_key>/``)

    @classmethod
    def from_json(cls, value: Mapping[str, Any], written_at: datetime | str | None = None) -> RunReport | None:
        """From a report's JSON; ``written_at`` is when S3 says it was written. None if it is no report."""
        day = _day(value.get("partition_date"))
        key = value.get("run")
        if day is None or not isinstance(key, str) or not key:
            return None
        summary = value.get("summary") if isinstance(value.get("summary"), Mapping) else {}
        reasons: dict[str, dict[str, int]] = defaultdict(dict)
        for entry in summary.get("outcomes") or []:
            if isinstance(entry, (list, tuple)) and len(entry) == 3:
                outcome, reason, records = str(entry[0]), str(entry[1]), _int(entry[2])
                reasons[outcome][reason] = reasons[outcome].get(reason, 0) + records
        totals = {str(k): _int(v) for k, v in (value.get("totals") or {}).items()}
        for outcome, by_reason in reasons.items():
            totals.setdefault(outcome, sum(by_reason.values()))
        settings = value.get("settings") if isinstance(value.get("settings"), Mapping) else {}
        counts = summary.get("counts") if isinstance(summary.get("counts"), Mapping) else {}
        plan_check = value.get("plan_check") if isinstance(value.get("plan_check"), Mapping) else {}
        read = summary.get("records_read")
        return cls(
            partition_date=day,
            run_key=key,
            run_id=value.get("run_id") or None,
            written_at=_moment(written_at if written_at is not None else value.get("written_at")),
            dry_run=bool(value.get("dry_run")),
            reconciled=value.get("reconciled") is not False,
            records_read=_int(read) if read is not None else sum(totals.values()),
            totals=totals,
            reasons={outcome: dict(by_reason) for outcome, by_reason in reasons.items()},
            dead_letter_objects=len(value.get("dead_letters") or []),
            max_age_days=_int(settings.get("max_age_days")) or None,
            held_objects=len(value.get("held") or []) if isinstance(value.get("held"), list) else 0,
            # events_held (the plan check) and events_held:no_route (routing): both wait in the held objects
            held_events=sum(_int(n) for name, n in counts.items() if str(name).split(":")[0] == "events_held"),
            held_user_attributes=_int(counts.get("user_attributes_held")),
            plan_check=str(plan_check["mode"]) if plan_check.get("mode") else None,
            payloads=bool(value.get("payloads")),
        )

    def total(self, outcome: str) -> int:
        return self.totals.get(outcome, 0)

    @property
    def waiting(self) -> int:
        """Records still waiting for someone: dead-lettered or held."""
        return sum(self.total(outcome) for outcome in WAITING_OUTCOMES)

    @property
    def held_back(self) -> int:
        """Events and user attributes held back from records that were otherwise replayed."""
        return self.held_events + self.held_user_attributes

    @property
    def complete(self) -> bool:
        """Nothing of the run waits for anyone (no dead letters, nothing held, whole records or parts of
        them) and its counts reconcile."""
        return self.reconciled and not (self.waiting or self.held_back or self.held_objects)

    @property
    def sort_key(self) -> tuple[datetime, str]:
        return (self.written_at or datetime.min.replace(tzinfo=timezone.utc), self.run_key)


@dataclass(frozen=True)
class AirflowRun:
    """A run of the DAG, from Airflow's database: which partition date it works on, and its state."""

    run_id: str
    state: str
    partition_date: date
    run_after: datetime | None
    run_type: str = ""

    @property
    def run_key(self) -> str:
        return run_key(self.run_id)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN_STATES

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AirflowRun:
        """From a DagRun's columns (``run_id``, ``state``, ``conf``, ``data_interval_start``, ``run_after``).

        The partition date is decided as the DAG decides it (:func:`resolve_partition_date`): the
        conf's ``partition_date``, else the data interval's start, else the day before the run.
        """
        conf = row.get("conf") if isinstance(row.get("conf"), Mapping) else {}
        run_after = _moment(row.get("run_after"))
        day = resolve_partition_date(
            _day(conf.get("partition_date")), _moment(row.get("data_interval_start")), run_after
        )
        return cls(
            run_id=str(row["run_id"]),
            state=str(row.get("state") or "").lower().removeprefix("dagrunstate."),
            partition_date=day,
            run_after=run_after,
            run_type=str(row.get("run_type") or "").lower().removeprefix("dagruntype."),
        )


# -- the page's rows ------------------------------------------------------------------------------------


def days_left(day: date, max_age_days: int, now: datetime) -> float:
    """Days until the oldest data of ``day`` (its midnight, UTC) is older than the replay window."""
    deadline = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) + timedelta(days=max_age_days)
    return (deadline - now).total_seconds() / 86400


def date_state(latest_report: RunReport | None, active: bool, latest_run_failed: bool) -> str:
    """A date's state at a glance, from its latest report of a run that sent (not a dry run)."""
    if active:
        return RUNNING
    if latest_run_failed:
        return FAILED
    if latest_report is None:
        return NEVER
    return BACKFILLED if latest_report.complete else PARTLY


@dataclass(frozen=True)
class RunSummary:
    """One run of a date as the page shows it: its report's counts and where to look further."""

    report: RunReport
    run_id: str | None
    airflow_state: str | None
    grid_url: str | None
    report_url: str | None
    report_json_url: str | None
    dead_letters_url: str | None
    held_url: str | None = None
    payloads_url: str | None = None  # a dry run's requests


@dataclass(frozen=True)
class DateRow:
    """One quarantine date: state, days left, the latest run's counts and the history of its runs."""

    day: date
    state: str
    days_left: float
    urgent: bool
    has_quarantine_data: bool
    latest: RunSummary | None  # the newest report (a dry run's too, marked as such)
    history: tuple[RunSummary, ...]  # every report of the date, newest first
    active_run_ids: tuple[str, ...]
    lock_run_id: str | None  # who holds <date>/lock.json ("" if the lock is unreadable)
    lock_stale: bool  # the lock's run has ended (its teardown did not run): the next run takes it over
    latest_airflow_run: AirflowRun | None
    latest_airflow_run_url: str | None
    active_run_urls: tuple[str, ...]
    trigger_conf: str
    backfill_cli: str

    @property
    def anchor(self) -> str:
        return f"d-{self.day.isoformat()}"

    @property
    def done(self) -> bool:
        return self.state == BACKFILLED

    @property
    def expired(self) -> bool:
        return self.days_left <= 0

    def total(self, outcome: str) -> int | None:
        return self.latest.report.total(outcome) if self.latest else None


@dataclass(frozen=True)
class Overview:
    """Everything the page shows, newest date first."""

    dag_id: str
    rows: tuple[DateRow, ...]
    outcomes: tuple[str, ...]
    max_age_days: int
    now: datetime
    dag_url: str

    def count(self, state: str) -> int:
        return sum(1 for row in self.rows if row.state == state)

    @property
    def urgent(self) -> tuple[DateRow, ...]:
        """Dates not done with fewer than :data:`URGENT_DAYS` left, the most pressing first."""
        return tuple(sorted((row for row in self.rows if row.urgent), key=lambda row: row.days_left))

    @property
    def window_start(self) -> date:
        """The oldest date whose data is still (at least partly) inside the replay window."""
        return (self.now - timedelta(days=self.max_age_days)).date()

    def to_json(self) -> dict[str, Any]:
        """The page's figures as JSON (counts, dates, reasons and links only)."""
        return {
            "dag_id": self.dag_id,
            "generated_at": self.now.isoformat(),
            "max_age_days": self.max_age_days,
            "outcomes": list(self.outcomes),
            "states": {state: self.count(state) for state in STATES},
            "dates": [_row_json(row) for row in self.rows],
        }


def _run_json(run: RunSummary) -> dict[str, Any]:
    report = run.report
    return {
        "run_key": report.run_key,
        "run_id": run.run_id,
        "airflow_state": run.airflow_state,
        "written_at": report.written_at.isoformat() if report.written_at else None,
        "dry_run": report.dry_run,
        "reconciled": report.reconciled,
        "records_read": report.records_read,
        "totals": dict(report.totals),
        "reasons": {outcome: dict(reasons) for outcome, reasons in report.reasons.items()},
        "grid_url": run.grid_url,
        "report_url": run.report_url,
        "dead_letters_url": run.dead_letters_url,
        "held_url": run.held_url,
        "payloads_url": run.payloads_url,
        "held_events": report.held_events,
        "held_user_attributes": report.held_user_attributes,
        "plan_check": report.plan_check,
    }


def _row_json(row: DateRow) -> dict[str, Any]:
    return {
        "date": row.day.isoformat(),
        "state": row.state,
        "days_left": round(row.days_left, 2),
        "urgent": row.urgent,
        "has_quarantine_data": row.has_quarantine_data,
        "latest": _run_json(row.latest) if row.latest else None,
        "history": [_run_json(run) for run in row.history],
        "active_run_ids": list(row.active_run_ids),
        "lock_run_id": row.lock_run_id,
        "lock_stale": row.lock_stale,
        "trigger_conf": row.trigger_conf,
        "backfill_cli": row.backfill_cli,
    }


def airflow_url(base: str, *parts: str) -> str:
    """A page of Airflow's UI under its base path (``/`` or, behind a proxy, e.g. ``/airflow/``)."""
    return f"{base.rstrip('/')}/" + "/".join(quote(part, safe="") for part in parts)


S3Url = Callable[[str, str], str]  # (bucket, key) -> where a person opens it


def build_overview(
    *,
    dag_id: str,
    quarantine: Iterable[date],
    reports: Iterable[Mapping[str, Any] | RunReport],
    airflow_runs: Iterable[Mapping[str, Any] | AirflowRun] = (),
    locks: Mapping[date, Mapping[str, Any] | None] | None = None,
    state_bucket: str,
    state_prefix: str,
    now: datetime,
    max_age_days: int = DEFAULT_MAX_AGE_DAYS,
    s3_url: S3Url | None = None,
    airflow_base: str = "/",
) -> Overview:
    """The page's data.

    :param quarantine: dates that have a folder (or objects) in the quarantine bucket.
    :param reports: report JSON (as ``report`` writes it), each with ``written_at`` (S3's LastModified)
        unless given as :class:`RunReport`.
    :param airflow_runs: the DAG's runs (DagRun columns), to find running and failed runs of a date and
        each report's real ``run_id`` (a report carries only the S3-safe ``run_key``).
    :param locks: ``<date>/lock.json`` contents by date (``None``: present but unreadable).
    :param s3_url: where a person opens an S3 key (``links.s3_browser_url`` bound to the endpoint).
    :param airflow_base: the base path of Airflow's UI, for links to runs and the DAG.
    """
    locks = locks or {}
    parsed = [r if isinstance(r, RunReport) else RunReport.from_json(r) for r in reports]
    by_date: dict[date, list[RunReport]] = defaultdict(list)
    for report in parsed:
        if report is not None:
            by_date[report.partition_date].append(report)
    runs = [r if isinstance(r, AirflowRun) else AirflowRun.from_row(r) for r in airflow_runs]
    runs_by_date: dict[date, list[AirflowRun]] = defaultdict(list)
    run_by_key: dict[tuple[date, str], AirflowRun] = {}
    for run in runs:
        runs_by_date[run.partition_date].append(run)
        run_by_key[(run.partition_date, run.run_key)] = run
    run_by_id = {run.run_id: run for run in runs}
    quarantine = set(quarantine)
    days = quarantine | set(by_date) | set(locks) | set(runs_by_date)
    seen_outcomes = {outcome for found in by_date.values() for report in found for outcome in report.totals}
    outcomes = order_outcomes(set(OUTCOMES) | seen_outcomes)
    dag_url = airflow_url(airflow_base, "dags", dag_id)

    def summarise(report: RunReport) -> RunSummary:
        run = run_by_id.get(report.run_id) if report.run_id else None
        run = run or run_by_key.get((report.partition_date, report.run_key))
        run_id = report.run_id or (run.run_id if run else None)
        paths = StatePaths(state_prefix, report.partition_date, report.run_key)
        dead_letters = f"{paths.partition}/dead_letters/{report.run_key}/"
        return RunSummary(
            report=report,
            run_id=run_id,
            airflow_state=run.state if run else None,
            # Only a run Airflow still has (``airflow db clean``, or dag.test() replacing a run, removes it):
            # the report names its run either way, but Airflow has no page for a run it no longer knows.
            grid_url=airflow_url(airflow_base, "dags", dag_id, "runs", run.run_id) if run else None,
            report_url=s3_url(state_bucket, paths.report("md")) if s3_url else None,
            report_json_url=s3_url(state_bucket, paths.report("json")) if s3_url else None,
            dead_letters_url=s3_url(state_bucket, dead_letters) if s3_url and report.dead_letter_objects else None,
            held_url=s3_url(state_bucket, f"{paths.partition}/held/{report.run_key}/")
            if s3_url and report.held_objects
            else None,
            payloads_url=s3_url(state_bucket, f"{paths.partition}/payloads/{report.run_key}/")
            if s3_url and report.payloads
            else None,
        )

    rows = []
    for day in sorted(days, reverse=True):
        history = sorted(by_date.get(day, []), key=lambda report: report.sort_key, reverse=True)
        real = next((report for report in history if not report.dry_run), None)
        date_runs = sorted(runs_by_date.get(day, []), key=lambda run: (run.run_after or now, run.run_id))
        active = tuple(run.run_id for run in date_runs if run.active)
        lock = locks.get(day, False)
        lock_run_id = None if lock is False else str((lock or {}).get("run_id") or "")
        holder = run_by_id.get(lock_run_id or "")
        lock_stale = bool(holder and holder.state in ENDED_RUN_STATES)
        latest_run = date_runs[-1] if date_runs else None
        reported = {report.run_key for report in history}
        failed = bool(latest_run and latest_run.state == "failed" and latest_run.run_key not in reported)
        state = date_state(real, bool(active) or (lock_run_id is not None and not lock_stale), failed)
        left = days_left(day, max_age_days, now)
        summaries = tuple(summarise(report) for report in history)
        conf = json.dumps({"partition_date": day.isoformat()})
        cli = f"airflow backfill create --dag-id {dag_id} --from-date {day.isoformat()} --to-date {day.isoformat()}"
        if date_runs or history:  # a backfill skips a date that already has a run unless told to reprocess it
            cli += " --reprocess-behavior completed"
        rows.append(
            DateRow(
                day=day,
                state=state,
                days_left=left,
                urgent=state != BACKFILLED and 0 < left < URGENT_DAYS,
                has_quarantine_data=day in quarantine,
                latest=summaries[0] if summaries else None,
                history=summaries,
                active_run_ids=active,
                lock_run_id=lock_run_id,
                lock_stale=lock_stale,
                latest_airflow_run=latest_run,
                latest_airflow_run_url=airflow_url(airflow_base, "dags", dag_id, "runs", latest_run.run_id)
                if latest_run
                else None,
                active_run_urls=tuple(airflow_url(airflow_base, "dags", dag_id, "runs", r) for r in active),
                trigger_conf=conf,
                backfill_cli=cli,
            )
        )
    return Overview(
        dag_id=dag_id, rows=tuple(rows), outcomes=outcomes, max_age_days=max_age_days, now=now, dag_url=dag_url
    )
