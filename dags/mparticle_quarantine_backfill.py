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
| `transform` | applies fix rules and builds valid batches (limits, one user); writes each to the shard of its user |
| `plan_shards` | the shards the next two tasks are mapped over (one per chunk by default, setting `shards`) |
| `dedupe_check` | per shard: drops what the ledger says was accepted before, and batches seen twice |
| `send` | per shard: merges each user's batches (`coalesce`), sends through `MParticleSendOperator` (pool `mparticle_events_api`), writes the ledger |
| `report` | the reconciled counts, in the log and in S3 (`reports/`); links **Backfill report** and **Dead letters** |
| `release_partition` | teardown: removes the partition's lock, however the run ended |

**One run per partition at a time.** `plan_partition` takes `<state>/<date>/lock.json` (an S3
conditional write); a second run of the same date fails there, before reading anything, and says
which run holds it. A run whose lock Airflow reports running is never taken over.

**Run dates are partition dates.** The daily run for interval *D* (it starts once *D* has ended)
processes partition *D*; a backfill from *D1* to *D2* processes *D1*..*D2* (leave `partition_date`
empty in the Backfill dialog: a scheduled or backfill run given one fails before reading anything); a
manual run takes `partition_date` (or, without it, yesterday).

**Settings** come from the Variable `mparticle_backfill`: a run starts from them. The trigger form has the
per-run choices as fields of their own (`partition_date`, `dry_run`: send nothing and write the payloads,
`force`, `reference_time`; the Variable cannot set them) and one JSON object, `overrides`, of the settings
this run changes: `{}` (untouched) changes nothing.

**Several quarantine outputs**: with `mparticle_backfills.yaml` beside this file, one DAG per entry
(`mparticle_quarantine_backfill__<name>`), each with its own settings, Variable, connections and pool.
Without it, this single DAG.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk import DAG, CronDataIntervalTimetable, Variable, dag, get_current_context, task

from mparticle_backfill_airflow import backfills, tasks
from mparticle_backfill_airflow.operators import MParticleReportOperator, MParticleSendOperator
from mparticle_backfill_airflow.params import run_params
from mparticle_backfill_airflow.run_state import run_state_of


def build(backfill: backfills.Backfill) -> DAG:
    """One backfill DAG: extract -> filter_by_age -> transform (per chunk) -> dedupe_check -> send (per shard) -> report."""

    @dag(
        dag_id=backfill.dag_id,
        # A data-interval timetable: the run of interval [D, D+1) is partition D, and backfills pick dates.
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        max_active_runs=3,
        params=run_params(backfill.variable),
        doc_md=__doc__ + (f"\n\n**{backfill.dag_id}**: {backfill.description}" if backfill.description else ""),
        tags=["mparticle", "backfill", "quarantine", *backfill.tags],
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
            variable = Variable.get(backfill.variable, default=None, deserialize_json=True)
            return tasks.plan_partition(
                backfill.merged_settings(variable),
                context["params"],
                run_id=dag_run.run_id,
                data_interval_start=context.get("data_interval_start"),
                run_after=dag_run.run_after,
                s3=tasks.quarantine_s3(backfill.aws_conn_id),
                dag_id=dag_run.dag_id,
                # A lock whose run is alive is never taken over; one whose run ended or is gone, at once.
                run_state=run_state_of(context["ti"].get_dagrun_state),
                run_type=dag_run.run_type,  # scheduled and backfill runs process their own date
            )

        @task
        def extract(chunk: dict) -> dict:
            return tasks.extract(chunk, tasks.quarantine_s3(backfill.aws_conn_id))

        @task
        def filter_by_age(chunk: dict) -> dict:
            return tasks.filter_by_age(chunk, tasks.quarantine_s3(backfill.aws_conn_id))

        @task
        def transform(chunk: dict, partition: list[dict]) -> dict:
            return tasks.transform(chunk, tasks.quarantine_s3(backfill.aws_conn_id), partition)

        @task
        def plan_shards(chunks: list[dict]) -> list[dict]:
            return tasks.plan_shards(chunks)

        @task
        def dedupe_check(shard: dict) -> dict:
            return tasks.dedupe_check(shard, tasks.quarantine_s3(backfill.aws_conn_id))

        @task
        def release_partition(chunks: list[dict]) -> bool:
            return tasks.release_partition(chunks, tasks.quarantine_s3(backfill.aws_conn_id))

        planned = plan_partition()
        extracted = extract.expand(chunk=planned)
        filtered = filter_by_age.expand(chunk=extracted)
        # Every transform sees all extract chunks' counts: the plan check infers blocking per partition.
        transformed = transform.partial(partition=extracted).expand(chunk=filtered)
        # dedupe_check and send are mapped over shards: each reads only its users' replays (by user context).
        deduped = dedupe_check.expand(shard=plan_shards(transformed))
        sent = MParticleSendOperator.partial(
            task_id="send",
            pool=backfill.pool,
            mparticle_conn_id=backfill.events_api_conn_id,
            aws_conn_id=backfill.aws_conn_id,
        ).expand(chunk=deduped)
        reported = MParticleReportOperator(
            task_id="report",
            stage_outputs=[planned, extracted, filtered, transformed, deduped, sent.output],
            aws_conn_id=backfill.aws_conn_id,
        )
        # A teardown: runs once the run's work is done, whether it succeeded or failed.
        reported >> release_partition(planned).as_teardown(setups=planned)

    return mparticle_quarantine_backfill()


# One DAG per configured backfill (without a configuration: the single default DAG). Broken entries are
# left out here and reported as an import error by mparticle_backfills_check.py.
for _backfill in backfills.load(Path(__file__).parent).backfills:
    globals()[_backfill.dag_id] = build(_backfill)
