"""
### mParticle quarantine backfill

Replays data that an mParticle data plan blocked (forwarded whole to the **Quarantine** S3 output)
into the **Events API**, one quarantine date partition per run: blocked events (and, if asked, blocked
user attributes and attributes of delivered events), with their original timestamps, user and
identities, without `batch_id`, within the replay window (14 days by default), never twice.

| task | what it does |
|---|---|
| `plan_partition` | validates settings, resolves the partition date, lists its objects, cuts them into chunks |
| `extract` | reads each chunk (gzip or plain NDJSON) and keeps the blocked part; bad lines are dead-lettered |
| `filter_by_age` | drops what is older than `max_age_days` |
| `transform` | applies fix rules and builds valid batches (limits, one user) |
| `dedupe_check` | drops what the ledger says was accepted before, and batches seen twice |
| `send` | sends through `MParticleSendOperator` (pool `mparticle_events_api`), writes the ledger |
| `report` | the reconciled counts, in the log and in S3 (`reports/`); links **Backfill report** and **Dead letters** |
| `release_partition` | teardown: removes the partition's lock, however the run ended |

**One run per partition at a time.** `plan_partition` takes `<state>/<date>/lock.json` (an S3
conditional write); a second run of the same date fails there, before reading anything, and says
which run holds it. A lock left by a run that died is taken over after `lock_ttl_hours`.

**Run dates are partition dates.** The daily run for interval *D* (it starts once *D* has ended)
processes partition *D*; a backfill from *D1* to *D2* processes *D1*..*D2*; a manual run takes
`partition_date` (or, without it, yesterday). Settings come from the Variable `mparticle_backfill`;
any of them can be overridden in the trigger form. `dry_run` sends nothing and writes the payloads.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Plain Airflow puts dags/ and plugins/ on sys.path, not the project root where include/ lives.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if _PROJECT_ROOT not in sys.path:
    sys.path.append(_PROJECT_ROOT)

from airflow.sdk import CronDataIntervalTimetable, Variable, dag, get_current_context, task  # noqa: E402

from include.mparticle_backfill.airflow_layer import stages  # noqa: E402
from include.mparticle_backfill.airflow_layer.operators import (  # noqa: E402
    MParticleReportOperator,
    MParticleSendOperator,
)
from include.mparticle_backfill.airflow_layer.params import run_params  # noqa: E402
from include.mparticle_backfill.airflow_layer.store import S3Store  # noqa: E402

SETTINGS_VARIABLE = "mparticle_backfill"
EVENTS_API_POOL = "mparticle_events_api"


@dag(
    dag_id="mparticle_quarantine_backfill",
    # A data-interval timetable: the run of interval [D, D+1) is partition D, and backfills pick dates.
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=3,
    params=run_params(),
    doc_md=__doc__,
    tags=["mparticle", "backfill", "quarantine"],
    default_args={
        "owner": "data-engineering",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    },
)
def mparticle_quarantine_backfill() -> None:
    @task
    def plan_partition() -> list[dict]:
        context = get_current_context()
        dag_run = context["dag_run"]
        return stages.plan_partition(
            Variable.get(SETTINGS_VARIABLE, default=None, deserialize_json=True),
            context["params"],
            run_id=dag_run.run_id,
            data_interval_start=context.get("data_interval_start"),
            run_after=dag_run.run_after,
            store=S3Store(),
        )

    @task
    def extract(chunk: dict) -> dict:
        return stages.extract_chunk(chunk, S3Store())

    @task
    def filter_by_age(chunk: dict) -> dict:
        return stages.filter_chunk(chunk, S3Store())

    @task
    def transform(chunk: dict) -> dict:
        return stages.transform_chunk(chunk, S3Store())

    @task
    def dedupe_check(chunks: list[dict]) -> list[dict]:
        return stages.dedupe_partition(chunks, S3Store())

    @task
    def release_partition(chunks: list[dict]) -> bool:
        return stages.release_partition(chunks, S3Store())

    planned = plan_partition()
    extracted = extract.expand(chunk=planned)
    filtered = filter_by_age.expand(chunk=extracted)
    transformed = transform.expand(chunk=filtered)
    deduped = dedupe_check(transformed)
    sent = MParticleSendOperator.partial(task_id="send", pool=EVENTS_API_POOL).expand(chunk=deduped)
    reported = MParticleReportOperator(
        task_id="report", stage_outputs=[planned, extracted, filtered, transformed, deduped, sent.output]
    )
    # A teardown: runs once the run's work is done, whether it succeeded or failed.
    reported >> release_partition(planned).as_teardown(setups=planned)


mparticle_quarantine_backfill()
