"""The bodies of the DAG's tasks, one function per task: each reads its chunk from S3, runs one stage of the
core over it, and writes the stage's output.

Every task gets and returns a small *chunk descriptor* (XCom): the run's settings, partition date,
state location, the chunk's object keys and the stage's counts. Data never travels through XCom.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from mparticle_backfill import jsonio, partition_lock, plan_gate
from mparticle_backfill.accounting import Summary, merge_all
from mparticle_backfill.coalesce import replay_shard, shard_count_for
from mparticle_backfill.dedupe_check import DedupeCheck, dedupe_frames
from mparticle_backfill.errors import InvalidSettings
from mparticle_backfill.extract import extract_records
from mparticle_backfill.filter_by_age import filter_frames
from mparticle_backfill.model import OUTCOMES, REPLAYED, DeadLetter
from mparticle_backfill.partition_lock import LockHolder
from mparticle_backfill.plan_check import CATEGORIES, infer_blocking, load_plan
from mparticle_backfill.plan_gate import PlanGate
from mparticle_backfill.settings import (
    BackfillSettings,
    StatePaths,
    check_run_date,
    check_standing_settings,
    parse_settings,
    parse_time,
    resolve_partition_date,
    run_key,
    run_overrides,
)
from mparticle_backfill.transform import KEEP, ROUTE_STAGE, transform_replays

from .gc_policy import bulk_task

if TYPE_CHECKING:  # imported when a task runs (boto3), not when the DAG file is parsed
    from .s3_hook import QuarantineS3Hook

log = logging.getLogger(__name__)
HELD_STAGES = (plan_gate.STAGE, ROUTE_STAGE)  # what is set aside to be sent later, not dead-lettered
S3_CONN_ID = "mparticle_quarantine_s3"


def quarantine_s3(aws_conn_id: str = S3_CONN_ID) -> QuarantineS3Hook:
    """The S3 hook, imported here when a task runs: parsing the DAG file never imports boto3."""
    from .s3_hook import QuarantineS3Hook

    return QuarantineS3Hook(aws_conn_id)


MAX_MAP_LENGTH = 1024


def settings_of(chunk: Mapping[str, Any]) -> BackfillSettings:
    return parse_settings(chunk["settings"])


def paths_of(chunk: Mapping[str, Any]) -> StatePaths:
    return StatePaths(chunk["settings"]["state_prefix"], date.fromisoformat(chunk["partition_date"]), chunk["run_key"])


def _next(chunk: Mapping[str, Any], stage: str, summary: Summary, **extra: Any) -> dict[str, Any]:
    return {**chunk, "stage": stage, "summary": summary.to_json(), **extra}


def plan_partition(
    variable: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    *,
    run_id: str,
    data_interval_start: datetime | None,
    run_after: datetime | None,
    s3: QuarantineS3Hook,
    now: datetime | None = None,
    dag_id: str = "",
    run_state: RunState | None = None,
    run_type: str | None = None,
) -> list[dict[str, Any]]:
    """Validate the settings, resolve the partition date, list its objects, cut them into chunks.

    The settings are the Variable's (``variable``) under what the run changes (``params``: the DAG's params
    with the run's conf merged in): its per-run choices, its ``overrides`` object, and settings given as
    keys of the conf of their own (:func:`~mparticle_backfill.settings.run_overrides`).

    A scheduled or backfill run (``run_type``) processes its own date, the start of its data interval; a
    ``partition_date`` given with one fails the run here, before anything is read. The Variable (and an
    entry of mparticle_backfills.yaml) may not set a per-run choice (``partition_date``, ``dry_run``,
    ``force``, ``reference_time``): it would apply to every run.

    The replay window ends at ``reference_time`` if given, else *now*: the time this run plans, fixed
    here and handed to every task so that all chunks agree. Not the run's ``run_after``: a backfill of
    old dates (and a scheduled run cleared weeks later) has ``run_after`` at the end of each date's
    interval, which would replay data far older than the window allows.
    """
    run_type = str(getattr(run_type, "value", run_type) or "") or None
    own = data_interval_start.astimezone(timezone.utc).date() if data_interval_start is not None else None
    try:
        check_standing_settings(variable, "the settings Variable (or mparticle_backfills.yaml)")
        settings = parse_settings(variable, run_overrides(params))
        check_run_date(settings.partition_date, run_type, own)
    except InvalidSettings as error:
        raise AirflowFailException(f"Invalid settings: {error}") from None
    day = resolve_partition_date(settings.partition_date, data_interval_start, run_after)
    window = settings.age_window(now or datetime.now(timezone.utc))
    keys, skipped = s3.list_partition(settings.bucket, settings.partition_layout, day)
    per_chunk = max(settings.files_per_chunk, math.ceil(len(keys) / MAX_MAP_LENGTH))
    groups = [keys[i : i + per_chunk] for i in range(0, len(keys), per_chunk)] or [[]]
    base = settings.to_json()
    base["partition_date"] = day.isoformat()
    base["reference_time"] = window.end.isoformat()
    log.info(
        "Partition %s of s3://%s/%s: %d objects in %d chunks (%d verification objects skipped); "
        "replay window %d days before %s; dry_run=%s force=%s",
        day, settings.bucket, settings.partition_layout.listing_prefix(day), len(keys), len(groups), skipped,
        settings.max_age_days, window.end.isoformat(), settings.dry_run, settings.force,
    )  # fmt: skip
    summary = Summary()
    summary.counts["objects_listed"] = len(keys)
    summary.counts["verification_objects_skipped"] = skipped
    paths = StatePaths(settings.state_prefix, day, run_key(run_id))
    check_route_connections(settings)
    if settings.plan_check != plan_gate.OFF:  # read and checked once, before any data is read
        try:
            document = read_data_plan(settings, s3)
            plan = load_plan(document, settings.data_plan)
            plan_gate.check_settings(plan, settings.plan_version, settings.environment, settings.plan_check)
        except InvalidSettings as error:
            raise AirflowFailException(f"Invalid settings: {error}") from None
        s3.put_bytes(settings.state_bucket, paths.data_plan_copy, jsonio.dumps(document))
        log.info(
            "Data plan %s from %s: versions %s; plan_check=%s", plan.plan_id, settings.data_plan,
            sorted(plan.versions), settings.plan_check,
        )  # fmt: skip
    elif settings.plan_version == KEEP:
        log.warning(
            "No data_plan: delivery to outputs is not checked, and plan_version=keep names the version that "
            "blocked the data: unless that version was edited in place, mParticle blocks the replay again."
        )
    if not settings.dry_run:  # a dry run sends nothing and writes no ledger: it needs no lock
        acquire_partition(settings, paths, run_id, s3, now, dag_id=dag_id, run_state=run_state)
    shards = settings.shards or shard_count_for(len(groups))
    return [
        {
            "chunk": index,
            "chunks": len(groups),
            "shards": shards,
            "partition_date": day.isoformat(),
            "run_key": run_key(run_id),
            "run_id": run_id,
            "settings": base,
            "keys": group,
            "stage": "plan",
            "summary": summary.to_json() if index == 0 else Summary().to_json(),
        }
        for index, group in enumerate(groups)
    ]


RunState = Callable[[str, str], "str | None"]


def acquire_partition(
    settings: BackfillSettings,
    paths: StatePaths,
    run_id: str,
    s3: QuarantineS3Hook,
    now: datetime | None = None,
    *,
    dag_id: str = "",
    run_state: RunState | None = None,
) -> None:
    """Take the partition's lock for this run, or fail the run, naming who holds it.

    Called last in the planning task, so that a failure there cannot leave a lock behind.

    :param run_state: asks Airflow for a run's state (``"missing"`` if it has none, None if it cannot
        tell): a live holder is never taken over, a finished one at once.
    """
    now = now or datetime.now(timezone.utc)
    ttl = timedelta(hours=settings.lock_ttl_hours)
    bucket, key = settings.state_bucket, paths.lock
    me = LockHolder(paths.run_key, run_id, now, now, dag_id)
    for _attempt in range(3):  # another run may create or take the lock between our read and write
        if s3.create_if_absent(bucket, key, me.to_bytes()):
            log.info("Lock s3://%s/%s taken for run %s", bucket, key, run_id)
            return
        found = s3.read_object(bucket, key)
        if found is None:
            continue  # released in between: try to create it again
        body, etag = found
        holder = LockHolder.from_bytes(body)
        state = _holder_state(holder, dag_id, run_state)
        decision = partition_lock.decide(holder, True, paths.run_key, now, ttl, state)
        if decision == partition_lock.OURS:
            log.info("Lock s3://%s/%s already held by this run (a retry)", bucket, key)
            return
        if decision == partition_lock.HELD:
            assert holder is not None
            raise AirflowFailException(
                partition_lock.held_message(holder, f"s3://{bucket}/{key}", paths.day.isoformat(), ttl)
            )
        if s3.replace_if_unchanged(bucket, key, me.to_bytes(), etag):
            log.warning(
                "Lock s3://%s/%s taken over from %s (acquired %s, last heartbeat %s, Airflow state %s)",
                bucket, key, holder.run_id if holder else "an unreadable lock",
                holder.acquired_at.isoformat() if holder else "?",
                holder.last_seen.isoformat() if holder else "?", state or "unknown",
            )  # fmt: skip
            return
    raise AirflowFailException(f"Could not take the lock s3://{bucket}/{key}: other runs keep changing it")


def _holder_state(holder: LockHolder | None, dag_id: str, run_state: RunState | None) -> str | None:
    if holder is None or run_state is None:
        return None
    try:
        return run_state(holder.dag_id or dag_id, holder.run_id)
    except Exception:  # Airflow could not tell: the TTL on the heartbeat decides
        log.warning("Could not ask Airflow for the state of run %s; the lock's heartbeat decides", holder.run_id)
        return None


def heartbeat(chunk: Mapping[str, Any], s3: QuarantineS3Hook, now: datetime | None = None) -> None:
    """Renew this run's lock (every task calls it when it starts, the send task also while it sends).

    Fails the task if another run took the lock over: two runs must not send the same partition.
    """
    settings, paths = settings_of(chunk), paths_of(chunk)
    if settings.dry_run:
        return
    bucket, key = settings.state_bucket, paths.lock
    for _attempt in range(3):
        found = s3.read_object(bucket, key)
        holder = LockHolder.from_bytes(found[0]) if found else None
        if holder is None or holder.run_key != paths.run_key:
            raise AirflowFailException(
                partition_lock.lost_message(holder, f"s3://{bucket}/{key}", paths.day.isoformat())
            )
        assert found is not None
        if s3.replace_if_unchanged(bucket, key, holder.renewed(now or datetime.now(timezone.utc)).to_bytes(), found[1]):
            return
    log.warning("Lock s3://%s/%s changed while renewing it; renewed on the next heartbeat", bucket, key)


def release_partition(chunks: Iterable[Mapping[str, Any]], s3: QuarantineS3Hook) -> bool:
    """Remove the partition's lock if this run holds it (the DAG's teardown); True if it was removed.

    The delete is conditional on the version read (S3 ``If-Match``): a lock another run took in
    between is never deleted.
    """
    first = next(iter(chunks), None)
    if first is None or first["settings"].get("dry_run"):
        return False
    settings, paths = settings_of(first), paths_of(first)
    found = s3.read_object(settings.state_bucket, paths.lock)
    holder = LockHolder.from_bytes(found[0]) if found else None
    if found is None or holder is None or holder.run_key != paths.run_key:
        log.warning("Lock s3://%s/%s is not held by this run: left as it is", settings.state_bucket, paths.lock)
        return False
    if not s3.delete_if_unchanged(settings.state_bucket, paths.lock, found[1]):
        log.warning(
            "Lock s3://%s/%s changed before it could be released: left as it is", settings.state_bucket, paths.lock
        )
        return False
    log.info("Lock s3://%s/%s released", settings.state_bucket, paths.lock)
    return True


@bulk_task
def extract(chunk: Mapping[str, Any], s3: QuarantineS3Hook) -> dict[str, Any]:
    """Read the chunk's quarantine objects; keep what to replay; dead-letter bad lines."""
    heartbeat(chunk, s3)
    settings, paths = settings_of(chunk), paths_of(chunk)
    summary = Summary()
    objects = ((key, s3.object_stream(settings.bucket, key)) for key in chunk["keys"])
    bucket = settings.state_bucket
    with (
        s3.stage_file(bucket, paths.stage_output("extract", chunk["chunk"]), compress=True) as out,
        s3.stage_file(bucket, paths.dead_letters("extract", chunk["chunk"]), upload_empty=False) as dead,
    ):
        for replay in extract_records(objects, settings.selection, summary, dead.write_dead_letter):
            out.write_replay(replay)
    log.info("extract chunk %d/%d\n%s", chunk["chunk"] + 1, chunk["chunks"], summary.render("extract"))
    return _next(chunk, "extract", summary)


@bulk_task
def filter_by_age(chunk: Mapping[str, Any], s3: QuarantineS3Hook) -> dict[str, Any]:
    """Drop what is older than the replay window."""
    heartbeat(chunk, s3)
    settings, paths = settings_of(chunk), paths_of(chunk)
    window = settings.age_window(parse_time("reference_time", chunk["settings"]["reference_time"]))
    summary = Summary()
    bucket = settings.state_bucket
    # Frames kept whole (nearly all) are copied as they were read: only their times are decoded.
    frames = s3.read_frames(bucket, paths.stage_output("extract", chunk["chunk"]))
    with s3.stage_file(bucket, paths.stage_output("filter_by_age", chunk["chunk"]), compress=True) as out:
        for frame in filter_frames(frames, window.cutoff_ms, summary):
            out.write_frame(frame)
    log.info(
        "filter_by_age chunk %d/%d: window %d days before %s\n%s",
        chunk["chunk"] + 1, chunk["chunks"], window.max_age_days, window.end.isoformat(),
        summary.render("filter_by_age"),
    )  # fmt: skip
    return _next(chunk, "filter_by_age", summary)


def request_id_salt(chunk: Mapping[str, Any]) -> str:
    """Forced resends get new source_request_ids (else mParticle would drop them); normal runs none."""
    return chunk["run_key"] if chunk["settings"].get("force") else ""


@bulk_task
def transform(
    chunk: Mapping[str, Any], s3: QuarantineS3Hook, partition: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Apply fix rules, check the data plan, build valid replay batches; dead-letter what cannot be valid,
    hold what the plan would block again.

    :param partition: every extract chunk's descriptor: which categories the input blocks is inferred
        from the whole partition's block metadata, the same for every chunk.
    """
    heartbeat(chunk, s3)
    settings, paths = settings_of(chunk), paths_of(chunk)
    summary = Summary()
    bucket = settings.state_bucket
    gate = plan_gate_of(chunk, s3, partition)
    replays = s3.read_replays(bucket, paths.stage_output("filter_by_age", chunk["chunk"]))
    shards = shard_count(chunk)
    with (
        # Each replay goes to the shard of its user context: that shard's dedupe_check and send read it.
        # A file per shard with replays in it; memory bounded however many shards the chunk reaches.
        s3.shard_stage_files(bucket, lambda shard: paths.transform_output(chunk["chunk"], shard)) as out,
        s3.stage_file(bucket, paths.dead_letters("transform", chunk["chunk"]), upload_empty=False) as dead,
        s3.stage_file(bucket, paths.held(chunk["chunk"]), upload_empty=False) as held,
    ):

        def set_aside(letter: DeadLetter) -> None:
            (held if letter.stage in HELD_STAGES else dead).write_dead_letter(letter)

        transform_settings = settings.transform_settings(request_id_salt(chunk), gate)
        for replay in transform_replays(replays, transform_settings, summary, set_aside):
            out.write_replay(replay_shard(replay, shards), replay)
    log.info(
        "transform chunk %d/%d: replays to %d of %d shards%s\n%s", chunk["chunk"] + 1, chunk["chunks"], len(out),
        shards, f" (plan check: {gate.mode}, blocking {gate.blocking.as_dict()})" if gate else "",
        summary.render("transform"),
    )  # fmt: skip
    return _next(chunk, "transform", summary)


def plan_gate_of(
    chunk: Mapping[str, Any], s3: QuarantineS3Hook, partition: Iterable[Mapping[str, Any]]
) -> PlanGate | None:
    """The plan check of this run: the plan as plan_partition read it, the partition's blocking categories."""
    settings, paths = settings_of(chunk), paths_of(chunk)
    if settings.plan_check == plan_gate.OFF:
        return None
    found = s3.read_object(settings.state_bucket, paths.data_plan_copy)
    if found is None:
        raise AirflowFailException(
            f"the run's copy of the data plan is gone: s3://{settings.state_bucket}/{paths.data_plan_copy}"
        )
    plan = load_plan(jsonio.loads(found[0]), settings.data_plan)
    counts = merge_all(Summary.from_json(c["summary"]) for c in partition).counts
    inferred = {name: counts.get(f"records_blocking:{name}", 0) for name in CATEGORIES}
    return PlanGate(plan, infer_blocking(inferred, settings.plan_blocking), settings.plan_check)


def check_route_connections(settings: BackfillSettings) -> None:
    """Every connection a route names must exist: fail the run before any data is read, naming the rule."""
    if not settings.routing.routes:
        return
    from airflow.sdk import BaseHook

    named = {route.connection: route.label for route in reversed(settings.routing.routes)}
    for connection in settings.routing.connections:
        try:
            BaseHook.get_connection(connection)
        except Exception:  # AirflowNotFoundException, or a secrets backend that cannot find it
            raise AirflowFailException(
                f"Invalid settings: route {named[connection]} names the connection {connection!r}, which does not exist; create it "
                "(type mparticle or http: the input's API key and secret) or fix the route"
            ) from None


def read_data_plan(settings: BackfillSettings, s3: QuarantineS3Hook) -> Any:
    """The plan document the data_plan setting names: an S3 object, a file, or the Data Planning API."""
    source = settings.data_plan
    try:
        if source.startswith("s3://"):
            bucket, _, key = source[5:].partition("/")
            found = s3.read_object(bucket, key)
            if found is None:
                raise InvalidSettings("data_plan", f"no such object {source}")
            body = found[0]
        elif source.startswith("api:"):
            from .data_planning import MParticleDataPlanningHook

            return MParticleDataPlanningHook().fetch_plan(source[4:].strip())
        else:
            body = Path(source).expanduser().read_bytes()
        return jsonio.loads(body)
    except OSError as error:
        raise InvalidSettings("data_plan", f"cannot read {source}: {error.strerror or error}") from None
    except jsonio.DecodeError as error:
        raise InvalidSettings("data_plan", f"{source} is not JSON: {error}") from None


def shard_count(chunk: Mapping[str, Any]) -> int:
    return int(chunk.get("shards") or 1)


def plan_shards(chunks: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The shards dedupe_check and send are mapped over, from the transform chunks (reads nothing).

    A shard descriptor is a chunk descriptor whose ``chunk`` is the shard's index and ``chunks`` the
    shard count (its stage files, ledger parts and dead letters are named by shard).
    """
    first = min(chunks, key=lambda c: c["chunk"])
    shards = shard_count(first)
    base = {key: value for key, value in first.items() if key not in ("keys", "summary")}
    log.info("%d transform chunks -> %d shards (by user context)", first["chunks"], shards)
    return [
        {**base, "chunk": shard, "chunks": shards, "unit": "shard", "stage": "plan_shards", "keys": [],
         "summary": Summary().to_json()}
        for shard in range(shards)
    ]  # fmt: skip


@bulk_task
def dedupe_check(shard: Mapping[str, Any], s3: QuarantineS3Hook) -> dict[str, Any]:
    """One shard: drop keys the ledger holds and batches seen twice. Reads only its shard's replays (of every
    transform chunk) and only the ledger parts that may hold its keys: memory follows the shard, not the
    partition. Copies of one original batch share a user context, hence a shard: duplicates are all seen."""
    heartbeat(shard, s3)
    settings, paths = settings_of(shard), paths_of(shard)
    bucket = settings.state_bucket
    index, shards = shard["chunk"], shard["chunks"]
    ledger = s3.read_ledger(bucket, paths.ledger_prefix, shard=(index, shards))
    check = DedupeCheck(ledger, force=settings.force, request_id_salt=request_id_salt(shard))
    inputs = sorted(s3.list_keys(bucket_name=bucket, prefix=paths.transform_shard_prefix(index)))
    summary = Summary()
    with s3.stage_file(bucket, paths.shard_output("dedupe_check", index), compress=True) as out:
        for key in inputs:
            for frame in dedupe_frames(s3.read_frames(bucket, key), check, summary):
                out.write_frame(frame)
    log.info(
        "dedupe_check shard %d/%d: %d transform files, %d replay keys in its part of the ledger of %s (force=%s)\n%s",
        index + 1, shards, len(inputs), len(ledger), paths.day.isoformat(), settings.force,
        summary.render("dedupe_check"),
    )  # fmt: skip
    # How many replays the shard's send reads: it coalesces them one slice of SLICE_REPLAYS at a time.
    return _next(shard, "dedupe_check", summary, replays=out.lines)


def coalescing_of(total: Summary, enabled: bool) -> dict[str, Any]:
    """How many batches were sent for how many records: what coalescing saved against the rate limit."""
    counts = total.counts
    before, after = counts["batches_before_coalescing"], counts["batches_after_coalescing"]
    records = total.total(REPLAYED)
    factor = round(before / after, 2) if after else None
    if not enabled:
        summary = f"coalesce off: {after:,} batches built for {records:,} replayed records (one per original)."
    elif after:
        summary = (
            f"{before:,} replay batches of {records:,} replayed records were merged per user into {after:,} "
            f"batches (coalescing factor {factor}: {after / max(records, 1):.3f} batches per record)."
        )
    else:
        summary = "No batch was built: nothing to send."
    return {"enabled": enabled, "replay_batches": before, "batches": after, "records_replayed": records,
            "factor": factor, "summary": summary}  # fmt: skip


def report(stage_outputs: Iterable[Iterable[Mapping[str, Any]]], s3: QuarantineS3Hook) -> dict[str, Any]:
    """Add every stage's counts up, check they reconcile, write the report (JSON and Markdown) to S3."""
    outputs = [chunk for stage in stage_outputs for chunk in stage]
    first = outputs[0]
    settings, paths = settings_of(first), paths_of(first)
    total = merge_all(Summary.from_json(chunk["summary"]) for chunk in outputs)
    dead_letters = sorted(
        s3.list_keys(bucket_name=settings.state_bucket, prefix=f"{paths.partition}/dead_letters/{paths.run_key}/")
    )
    title = f"mParticle quarantine backfill {paths.day.isoformat()}" + (" (DRY RUN)" if settings.dry_run else "")
    held = sorted(s3.list_keys(bucket_name=settings.state_bucket, prefix=f"{paths.partition}/held/{paths.run_key}/"))
    plan_lines = plan_gate.describe(settings.plan_check, settings.data_plan, settings.plan_version, total.counts)
    report = {
        "partition_date": paths.day.isoformat(),
        "run": paths.run_key,
        "run_id": first.get("run_id", ""),
        "dry_run": settings.dry_run,
        "settings": {k: v for k, v in first["settings"].items() if k != "fixes"} | {"fixes": len(settings.fixes)},
        "reconciled": total.reconciles(),
        "summary": total.to_json(),
        "totals": {outcome: total.total(outcome) for outcome in OUTCOMES},
        "dead_letters": [f"s3://{settings.state_bucket}/{key}" for key in dead_letters],
        "held": [f"s3://{settings.state_bucket}/{key}" for key in held],
        "plan_check": {
            "mode": settings.plan_check,
            "data_plan": settings.data_plan or None,
            "delivery_checked": settings.plan_check != plan_gate.OFF,
            "summary": plan_lines,
        },
        "payloads": f"s3://{settings.state_bucket}/{paths.partition}/payloads/{paths.run_key}/"
        if settings.dry_run
        else None,
    }
    report["coalescing"] = coalescing_of(total, settings.coalesce)
    markdown = total.render_markdown(title)
    markdown += "\n## Batches\n\n" + report["coalescing"]["summary"] + "\n"
    markdown += "\n## Plan check\n\n" + "\n".join(plan_lines) + "\n"
    if held:
        markdown += "\n## Held\n\n" + "\n".join(f"- `{uri}`" for uri in report["held"]) + "\n"
    if dead_letters:
        markdown += "\n## Dead letters\n\n" + "\n".join(f"- `{uri}`" for uri in report["dead_letters"]) + "\n"
    s3.put_bytes(settings.state_bucket, paths.report("json"), jsonio.dumps(report))
    s3.put_bytes(settings.state_bucket, paths.report("md"), markdown.encode(), "text/markdown")
    log.info(
        "%s\n%s\nPlan check: %s\nReport: s3://%s/%s\nDead letters: %d objects under s3://%s/%s/dead_letters/%s/",
        total.render(title), report["coalescing"]["summary"],
        " ".join(line for line in plan_lines if not line.startswith("|")),
        settings.state_bucket, paths.report("md"), len(dead_letters),
        settings.state_bucket, paths.partition, paths.run_key,
    )  # fmt: skip
    if not total.reconciles():
        raise AirflowFailException(
            f"counts do not reconcile: {total.records_read} records read, {total.accounted} accounted for"
        )
    return {"report": f"s3://{settings.state_bucket}/{paths.report('json')}", **report["totals"]}
