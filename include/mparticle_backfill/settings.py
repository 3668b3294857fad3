"""Settings of a backfill run: one JSON object (the Airflow Variable), overridable per run, validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from . import jsonio
from .coalesce import MAX_MAPPED_TASKS as MAX_SHARDS
from .coalesce import ledger_part_may_hold
from .errors import InvalidSettings
from .filter_by_age import DEFAULT_MAX_AGE_DAYS, AgeWindow
from .fixes import FixRule, compile_rules
from .journal import HASH_VERSION
from .partition import DATE_FOLDERS, LAYOUTS, PartitionLayout
from .plan_check import infer_blocking
from .plan_gate import HOLD, OFF, PlanGate
from .plan_gate import MODES as PLAN_CHECK_MODES
from .routes import SEND_TO_DEFAULT, Routing, compile_routes
from .select import SelectionSettings
from .stage_codec import SUFFIX as STAGE_SUFFIX
from .transform import KEEP, OMIT, TransformSettings

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")

# name -> (default, description). The one table of settings: the DAG's params and the README use it.
SETTINGS: dict[str, tuple[Any, str]] = {
    "bucket": (None, "S3 bucket of the mParticle Quarantine output (required)."),
    "prefix": ("", "Folder inside the bucket where the output writes (empty for the bucket root)."),
    "layout": (
        DATE_FOLDERS,
        "How objects are laid out: 'date_folders' (YYYY-MM-DD/ folders), 'flat' (the date is read from "
        "the file name) or 'firehose_hourly' (Kinesis Data Firehose YYYY/MM/DD/HH/ folders).",
    ),
    "state_bucket": (None, "Bucket for ledger, dead letters, reports and payloads (default: bucket)."),
    "state_prefix": (None, "Folder for that state (default: <prefix>/_backfill)."),
    "max_age_days": (DEFAULT_MAX_AGE_DAYS, "Replay only events younger than this many days (1 to 30)."),
    "replay_blocked_events": (True, "Replay events that were blocked whole."),
    "replay_blocked_event_attributes": (
        False,
        "Replay delivered events whose attributes were blocked, whole (duplicates them downstream).",
    ),
    "replay_blocked_user_attributes": (True, "Replay blocked user attributes."),
    "include_blocked_identities": (True, "Send blocked user/device identities too, to resolve the same user."),
    "environment": (None, "Force 'production' or 'development' (default: each batch's own)."),
    "plan_version": (
        OMIT,
        "Which data plan version replays name: 'omit' (default: the version active for each batch's "
        "environment applies, i.e. the fixed version you activated), 'keep' the original's (the version "
        "that blocked the data: only right if you edited that version in place), or a version number.",
    ),
    "data_plan": (
        None,
        "The data plan to check replays against before sending: s3://bucket/key.json or a file path "
        "(a plan version document, or a whole plan, as the Data Planning API returns them), or "
        "api:<plan_id> (fetched with the mparticle_data_planning connection). Empty: not checked.",
    ),
    "plan_check": (
        HOLD,
        "With a data_plan: 'hold' (do not send what the plan would block again; a later run sends it "
        "once the plan allows it), 'report' (send everything, count what would be blocked) or 'off'.",
    ),
    "plan_blocking": (
        None,
        'Which categories the input blocks, e.g. {"events": true, "event_attributes": true, '
        '"user_attributes": false, "user_identities": false}. Default: inferred from the partition '
        "(a category blocks if any record had something of it blocked).",
    ),
    "fixes": ([], "Fix rules (a JSON list), validated before any data is read."),
    "routes": (
        [],
        'Which Events API connection (input) receives each batch: a JSON list of {"when": [conditions on '
        'batch fields, e.g. {"field": "application_info.os", "equals": "IOS"}], "connection": "<conn id>"}; '
        "the first that matches wins.",
    ),
    "unrouted": (
        "default",
        "Batches no route matches: 'default' (the mparticle_events_api connection) or 'hold' (not sent, no_route).",
    ),
    "coalesce": (
        True,
        "Merge each user's replay batches (identical user, device, environment, consent and plan context) "
        "into as few batches as the limits allow: fewer batches against mParticle's rate limit. Off: one "
        "batch per original.",
    ),
    "shards": (
        None,
        "How many shards dedupe_check and send are mapped over (records go to a shard by a hash of their "
        "user context), 1 to 1024. Default: one per chunk.",
    ),
    "dry_run": (False, "Send nothing; write the payloads that would be sent."),
    "force": (False, "Resend what the ledger says was already accepted."),
    "partition_date": (
        None,
        "YYYY-MM-DD: the quarantine date a manual run processes (default: yesterday). Scheduled and backfill "
        "runs process their own date and refuse it; the Variable may not set it.",
    ),
    "reference_time": (None, "ISO 8601 end of the age window, e.g. 2026-11-20T06:00:00Z (default: now)."),
    "files_per_chunk": (25, "Quarantine objects per mapped chunk (bounds a worker's memory)."),
    "lock_ttl_hours": (12, "A partition lock left by a run that died is taken over after this many hours."),
}


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidSettings(name, f"must be true or false, got {value!r}")


def _layout(value: Any) -> str:
    if value is None or value == "":
        return DATE_FOLDERS
    if value not in LAYOUTS:
        raise InvalidSettings("layout", f"must be one of {list(LAYOUTS)}, got {value!r}")
    return value


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidSettings(name, f"must be a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise InvalidSettings(name, f"must be a whole number, got {value!r}")


def parse_date(name: str, value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidSettings(name, f"must be a date as YYYY-MM-DD, got {value!r}") from None


def parse_time(name: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidSettings(name, f"must be an ISO 8601 time like 2026-11-20T06:00:00Z, got {value!r}") from None
    if moment.tzinfo is None:
        raise InvalidSettings(name, "must carry a timezone, e.g. 2026-11-20T06:00:00Z")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class BackfillSettings:
    """Validated settings of one run."""

    bucket: str
    prefix: str = ""
    layout: str = DATE_FOLDERS
    state_bucket: str = ""
    state_prefix: str = ""
    max_age_days: int = DEFAULT_MAX_AGE_DAYS
    replay_blocked_events: bool = True
    replay_blocked_event_attributes: bool = False
    replay_blocked_user_attributes: bool = True
    include_blocked_identities: bool = True
    environment: str | None = None
    plan_version: str | int = OMIT
    data_plan: str = ""
    plan_check: str = OFF
    plan_blocking: dict[str, bool] | None = None
    fixes: tuple[FixRule, ...] = ()
    raw_fixes: list[Any] = field(default_factory=list)
    routing: Routing = field(default_factory=Routing)
    raw_routes: list[Any] = field(default_factory=list)
    unrouted: str = SEND_TO_DEFAULT
    coalesce: bool = True
    shards: int | None = None
    dry_run: bool = False
    force: bool = False
    partition_date: date | None = None
    reference_time: datetime | None = None
    files_per_chunk: int = 25
    lock_ttl_hours: int = 12

    @property
    def partition_layout(self) -> PartitionLayout:
        state = self.state_prefix if self.state_bucket == self.bucket else ""
        return PartitionLayout(self.prefix, self.layout, state)

    @property
    def selection(self) -> SelectionSettings:
        return SelectionSettings(
            self.replay_blocked_events, self.replay_blocked_event_attributes, self.replay_blocked_user_attributes
        )

    def age_window(self, default_reference: datetime | None = None) -> AgeWindow:
        return AgeWindow(self.max_age_days, self.reference_time or default_reference)

    def transform_settings(self, request_id_salt: str = "", plan_gate: PlanGate | None = None) -> TransformSettings:
        return TransformSettings(
            self.environment,
            self.plan_version,
            self.include_blocked_identities,
            self.fixes,
            request_id_salt,
            plan_gate,
            self.routing if self.routing.routes else None,
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as plain JSON (for XCom and the report)."""
        result: dict[str, Any] = {}
        for name in SETTINGS:
            value = self.raw_fixes if name == "fixes" else self.raw_routes if name == "routes" else getattr(self, name)
            result[name] = value.isoformat() if isinstance(value, (date, datetime)) else value
        return result


# Settings that only mean something for one run: a standing configuration (the Variable, an entry of
# mparticle_backfills.yaml) that set one would apply it to every run, the schedule's and backfills' too. They
# are the trigger form's fields of their own; the standing settings are overridden in one JSON object.
PER_RUN_ONLY: dict[str, str] = {
    "partition_date": "it would make every run (the schedule's, each backfill's) process that one date",
    "dry_run": "every run (the schedule's, each backfill's) would send nothing",
    "force": "every run (the schedule's, each backfill's) would resend what the ledger says was accepted",
    "reference_time": "every run's replay window would end at that one moment, however late the run",
}
# The standing settings: the Variable's, which a run may override (the trigger form's OVERRIDES object).
STANDING = tuple(name for name in SETTINGS if name not in PER_RUN_ONLY)
# The run param holding the overrides of the standing settings, a JSON object.
OVERRIDES = "overrides"


def check_standing_settings(settings: Mapping[str, Any] | None, source: str) -> None:
    """Raise :class:`InvalidSettings` if a standing configuration (``source``: the Variable, an entry of
    mparticle_backfills.yaml) sets a per-run setting (:data:`PER_RUN_ONLY`) to anything but its default."""
    if not isinstance(settings, Mapping):
        return  # parse_settings refuses it with its own message
    for name, why in PER_RUN_ONLY.items():
        if settings.get(name) not in (None, "", False):
            raise InvalidSettings(
                name,
                f"is a per-run choice, not a standing setting: set in {source}, {why}. Remove it there, and "
                "give it when you trigger a manual run",
            )


def run_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The settings one run changes, from its params (the DAG's params with the run's conf merged in):
    the per-run choices, the keys of the :data:`OVERRIDES` object, and any setting given as a key of the
    conf of its own (``{"coalesce": false}``, as API and CLI callers always could).

    None or "" means "not set": the standing value applies. A setting given twice, as a key of its own and
    inside :data:`OVERRIDES`, is refused (even with the same value: the conf is ambiguous), and so is a
    per-run choice inside :data:`OVERRIDES`. Unknown names are left for :func:`parse_settings` to refuse.
    """
    overrides = params.get(OVERRIDES)
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise InvalidSettings(
            OVERRIDES, f'must be a JSON object of settings, e.g. {{"coalesce": false}}, got {overrides!r}'
        )
    overrides = {name: value for name, value in overrides.items() if value is not None and value != ""}
    for name in overrides:
        if name in PER_RUN_ONLY:
            raise InvalidSettings(
                name, f"is a per-run choice: give it as a field (a conf key) of its own, not inside {OVERRIDES}"
            )
    own = {name: value for name, value in params.items() if name != OVERRIDES and value is not None and value != ""}
    twice = sorted(set(own) & set(overrides))
    if twice:
        name = twice[0]
        raise InvalidSettings(
            name,
            f"is set twice in the run conf: as a key of its own ({own[name]!r}) and inside {OVERRIDES} "
            f"({overrides[name]!r}). Give it once: inside {OVERRIDES}, or as a key of its own",
        )
    return {**own, **overrides}


RUNS_OF_THEIR_OWN_DATE = ("scheduled", "backfill")


def check_run_date(explicit: date | None, run_type: str | None, own: date | None) -> None:
    """Raise :class:`InvalidSettings` if a run that processes its own date (scheduled, backfill: ``own``,
    the start of its data interval) was also given a ``partition_date``.

    Refused rather than ignored: the run cannot tell which of the two dates its user meant (a backfill's
    range, or the date typed in its parameters), so it sends nothing and says how to get either.
    """
    if explicit is None or run_type not in RUNS_OF_THEIR_OWN_DATE:
        return
    day = own.isoformat() if own else "its own date"
    raise InvalidSettings(
        "partition_date",
        f"{explicit.isoformat()} was given to a {run_type} run, which processes its own date ({day}, the start "
        f"of its data interval). Nothing was read or sent. To process {day}: leave partition_date empty in "
        f"the run's parameters (the Backfill dialog shows it; keep it empty). To process {explicit.isoformat()}: "
        "trigger a manual run with partition_date, or backfill that date",
    )


def parse_settings(base: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> BackfillSettings:
    """Merge the base settings (the Variable) with per-run overrides (None means "not set"), validate.

    Raises :class:`InvalidSettings` naming the first bad setting.
    """
    merged: dict[str, Any] = {}
    for source_name, source in (("mparticle_backfill", base or {}), ("run conf", overrides or {})):
        if not isinstance(source, Mapping):
            raise InvalidSettings(source_name, "must be a JSON object")
        for name, value in source.items():
            if name not in SETTINGS:
                raise InvalidSettings(name, f"unknown setting (known: {', '.join(SETTINGS)})")
            if value is not None and value != "":
                merged[name] = value

    bucket = merged.get("bucket")
    if not isinstance(bucket, str) or not _BUCKET_NAME.match(bucket):
        raise InvalidSettings("bucket", f"must be an S3 bucket name, got {bucket!r}")
    prefix = str(merged.get("prefix", "")).strip("/")
    state_bucket = merged.get("state_bucket") or bucket
    if not isinstance(state_bucket, str) or not _BUCKET_NAME.match(state_bucket):
        raise InvalidSettings("state_bucket", f"must be an S3 bucket name, got {state_bucket!r}")
    state_prefix = str(merged.get("state_prefix") or (f"{prefix}/_backfill" if prefix else "_backfill")).strip("/")
    if not state_prefix:
        raise InvalidSettings("state_prefix", "must not be the bucket root")

    environment = merged.get("environment")
    plan_version: Any = merged.get("plan_version", OMIT)
    if isinstance(plan_version, str) and plan_version not in (KEEP, OMIT):
        plan_version = _int("plan_version", plan_version)
    data_plan = str(merged.get("data_plan") or "").strip()
    if data_plan.startswith("s3://") and "/" not in data_plan[5:].strip("/"):
        raise InvalidSettings("data_plan", f"an S3 location needs a bucket and a key, got {data_plan!r}")
    if data_plan.startswith("api:") and not data_plan[4:].strip():
        raise InvalidSettings("data_plan", "api: needs the plan id, e.g. api:higgs_shop_basic_data_plan")
    plan_check = str(merged.get("plan_check") or (HOLD if data_plan else OFF)).strip()
    if plan_check not in PLAN_CHECK_MODES:
        raise InvalidSettings("plan_check", f"must be one of {list(PLAN_CHECK_MODES)}, got {plan_check!r}")
    if not data_plan:
        if "plan_check" in merged and plan_check != OFF:
            raise InvalidSettings("plan_check", f"{plan_check!r} needs a data_plan to check against")
        plan_check = OFF
    plan_blocking = merged.get("plan_blocking")
    if isinstance(plan_blocking, str):
        try:
            plan_blocking = jsonio.loads(plan_blocking)
        except jsonio.DecodeError as error:
            raise InvalidSettings("plan_blocking", f"is not valid JSON: {error}") from None
    if plan_blocking is not None:
        try:
            infer_blocking({}, plan_blocking)
        except InvalidSettings as error:
            raise InvalidSettings("plan_blocking", error.problem) from None
    raw_routes = merged.get("routes", [])
    if isinstance(raw_routes, str):
        try:
            raw_routes = jsonio.loads(raw_routes)
        except jsonio.DecodeError as error:
            raise InvalidSettings("routes", f"is not valid JSON: {error}") from None
    unrouted = str(merged.get("unrouted") or SEND_TO_DEFAULT)
    routing = compile_routes(raw_routes, unrouted)
    raw_fixes = merged.get("fixes", [])
    if isinstance(raw_fixes, str):
        try:
            raw_fixes = jsonio.loads(raw_fixes)
        except jsonio.DecodeError as error:
            raise InvalidSettings("fixes", f"is not valid JSON: {error}") from None
    files_per_chunk = _int("files_per_chunk", merged.get("files_per_chunk", 25))
    if not 1 <= files_per_chunk <= 10_000:
        raise InvalidSettings("files_per_chunk", f"must be 1 to 10000, got {files_per_chunk}")
    shards = _int("shards", merged["shards"]) if "shards" in merged else None
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise InvalidSettings("shards", f"must be 1 to {MAX_SHARDS} (Airflow's map limit), got {shards}")
    lock_ttl_hours = _int("lock_ttl_hours", merged.get("lock_ttl_hours", 12))
    if not 1 <= lock_ttl_hours <= 168:
        raise InvalidSettings("lock_ttl_hours", f"must be 1 to 168, got {lock_ttl_hours}")

    settings = BackfillSettings(
        bucket=bucket,
        prefix=prefix,
        layout=_layout(merged.get("layout")),
        state_bucket=state_bucket,
        state_prefix=state_prefix,
        max_age_days=_int("max_age_days", merged.get("max_age_days", DEFAULT_MAX_AGE_DAYS)),
        replay_blocked_events=_bool("replay_blocked_events", merged.get("replay_blocked_events", True)),
        replay_blocked_event_attributes=_bool(
            "replay_blocked_event_attributes", merged.get("replay_blocked_event_attributes", False)
        ),
        replay_blocked_user_attributes=_bool(
            "replay_blocked_user_attributes", merged.get("replay_blocked_user_attributes", True)
        ),
        include_blocked_identities=_bool("include_blocked_identities", merged.get("include_blocked_identities", True)),
        environment=environment,
        plan_version=plan_version,
        data_plan=data_plan,
        plan_check=plan_check,
        plan_blocking=plan_blocking,
        fixes=compile_rules(raw_fixes),
        raw_fixes=list(raw_fixes or []),
        routing=routing,
        raw_routes=list(raw_routes or []),
        unrouted=unrouted,
        coalesce=_bool("coalesce", merged.get("coalesce", True)),
        shards=shards,
        dry_run=_bool("dry_run", merged.get("dry_run", False)),
        force=_bool("force", merged.get("force", False)),
        partition_date=parse_date("partition_date", merged["partition_date"]) if "partition_date" in merged else None,
        reference_time=parse_time("reference_time", merged["reference_time"]) if "reference_time" in merged else None,
        files_per_chunk=files_per_chunk,
        lock_ttl_hours=lock_ttl_hours,
    )
    # Validate what the stage objects check for themselves, now, before any data is read.
    settings.age_window()
    settings.transform_settings()
    return settings


def resolve_partition_date(
    explicit: date | None, data_interval_start: datetime | None, run_after: datetime | None
) -> date:
    """The one place a run's quarantine date is decided.

    An explicit ``partition_date`` wins; else the start of the run's data interval (scheduled runs and
    backfills: the daily timetable's interval [D, D+1) is partition D); else, for a manual run with
    neither, the day before the run.
    """
    if explicit is not None:
        return explicit
    if data_interval_start is not None:
        return data_interval_start.astimezone(timezone.utc).date()
    moment = (run_after or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return date.fromordinal(moment.date().toordinal() - 1)


@dataclass(frozen=True)
class StatePaths:
    """Where one run keeps its state, under ``<state_prefix>/<partition date>/``.

    ``ledger/`` (replay keys the API accepted, shared by every run of the partition), ``runs/<run>/``
    (stage outputs between tasks), ``dead_letters/<run>/``, ``payloads/<run>/`` (dry runs) and
    ``reports/``.
    """

    state_prefix: str
    day: date
    run_key: str

    @property
    def partition(self) -> str:
        return f"{self.state_prefix.strip('/')}/{self.day.isoformat()}"

    def stage_output(self, stage: str, chunk: int) -> str:
        return f"{self.partition}/runs/{self.run_key}/{stage}/chunk-{chunk:05d}{STAGE_SUFFIX}"

    @property
    def ledger_prefix(self) -> str:
        return f"{self.partition}/ledger/"

    @property
    def ledger_run_prefix(self) -> str:
        """Where this run's ledger parts are (every try of every send task of the run)."""
        return f"{self.ledger_prefix}{self.run_key}/"

    def ledger_part(self, shard: int, shards: int, attempt: str, sequence: int) -> str:
        """A ledger part of send shard ``shard`` of ``shards``; ``attempt`` names the task try (and a token
        unique to it), so no try, retry or concurrent zombie of a task can overwrite the parts another one
        wrote. The shard count in the name lets a run with another count find every key
        (:func:`ledger_part_wanted`)."""
        return f"{self.ledger_run_prefix}shard-{shard:05d}-of-{shards:05d}-h{HASH_VERSION}-{attempt}-{sequence:05d}.txt"

    @property
    def journal_prefix(self) -> str:
        """The send journal (:mod:`.journal`): batches written down before they are sent, kept only
        until they are answered."""
        return f"{self.partition}/journal/"

    @property
    def journal_run_prefix(self) -> str:
        return f"{self.journal_prefix}{self.run_key}/"

    def journal_part(self, shard: int, shards: int, attempt: str, sequence: int, kind: str) -> str:
        """A journal part of send shard ``shard`` of ``shards``: ``kind`` ``sent`` (entries, msgpack in
        zstd) or ``refused`` (ids of refused batches, one a line). Named as ledger parts are, with the
        version of the user-context hash that placed its entries."""
        suffix = "sent.msgpack.zst" if kind == "sent" else "refused.txt"
        return f"{self.journal_run_prefix}shard-{shard:05d}-of-{shards:05d}-h{HASH_VERSION}-{attempt}-{sequence:05d}.{suffix}"

    def transform_output(self, chunk: int, shard: int) -> str:
        """Transform writes each chunk's replays to the shard of their user context."""
        return f"{self.transform_shard_prefix(shard)}chunk-{chunk:05d}{STAGE_SUFFIX}"

    def transform_shard_prefix(self, shard: int) -> str:
        """Every chunk's replays of one shard: what that shard's dedupe_check reads."""
        return f"{self.partition}/runs/{self.run_key}/transform/shard-{shard:05d}/"

    def shard_output(self, stage: str, shard: int) -> str:
        return f"{self.partition}/runs/{self.run_key}/{stage}/shard-{shard:05d}{STAGE_SUFFIX}"

    def dead_letters(self, stage: str, chunk: int, unit: str = "chunk") -> str:
        """Dead letters of one stage task (``unit``: ``chunk``, or ``shard`` for dedupe_check and send)."""
        return f"{self.partition}/dead_letters/{self.run_key}/{stage}-{unit}-{chunk:05d}.ndjson"

    def held(self, chunk: int) -> str:
        """What the plan check held back (would be blocked again), with the data point and what to change."""
        return f"{self.partition}/held/{self.run_key}/transform-chunk-{chunk:05d}.ndjson"

    @property
    def data_plan_copy(self) -> str:
        """The data plan document as the run read it once, for every transform task."""
        return f"{self.partition}/runs/{self.run_key}/data_plan.json"

    def payloads(self, shard: int) -> str:
        return f"{self.partition}/payloads/{self.run_key}/shard-{shard:05d}.ndjson"

    def report(self, extension: str) -> str:
        return f"{self.partition}/reports/{self.run_key}.{extension}"

    @property
    def lock(self) -> str:
        """The partition's lock object (one run at a time; :mod:`.partition_lock`)."""
        return f"{self.partition}/lock.json"


_LEDGER_PART = re.compile(r"(?:^|/)shard-(\d{5})-of-(\d{5})-(?:h(\d+)-)?[^/]*$")


def part_placement(key: str) -> tuple[int, int, int] | None:
    """(shard, shard count, hash version) of a ledger or journal part's name; None for a part written
    before shards (``chunk-...``) or of an unknown name. A name without a version was written before
    versions were named, under version 1."""
    found = _LEDGER_PART.search(key)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 1)


def ledger_part_wanted(key: str, shard: int, shards: int) -> bool:
    """Whether send shard ``shard`` of ``shards`` must read the ledger (or journal) part ``key``: a part
    of a sharded run only if it may hold keys of that shard (the gcd rule of
    :func:`.coalesce.ledger_part_may_hold`); a part written before shards (``chunk-...``), of an unknown
    name, or under another version of the user-context hash (:data:`.journal.HASH_VERSION`) always."""
    placement = part_placement(key)
    if placement is None:
        return True
    part_shard, part_shards, version = placement
    if version != HASH_VERSION or not 0 <= part_shard < part_shards:
        return True
    return ledger_part_may_hold(part_shards, part_shard, shards, shard)


def part_owned(key: str, shard: int, shards: int) -> bool:
    """Whether a part holds keys or entries of shard ``shard`` of ``shards`` only (same shard, same
    count, same hash version): what a send try may remove once everything in it was answered."""
    return part_placement(key) == (shard, shards, HASH_VERSION)


def run_key(run_id: str) -> str:
    """A run id made safe for an S3 key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_") or "run"
