"""The DAG's operators: send one chunk's replay batches to the Events API (or, dry run, write them), and
report on the run with links to the report and the dead letters."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from mparticle_backfill import stage_codec
from mparticle_backfill.accounting import Summary
from mparticle_backfill.coalesce import (
    CoalescedBatch,
    CoalescedGroup,
    CoalesceSettings,
    coalesce,
    member_payload,
    replay_context_hash,
    request_id_of,
    slice_count_for,
    slice_of,
)
from mparticle_backfill.errors import CredentialsRefused, InvalidSettings, RequestRefused, TooManyRejections
from mparticle_backfill.journal import to_resend
from mparticle_backfill.model import DEAD_LETTERED, REPLAYED, DeadLetter, DeadLetterSink, Replay
from mparticle_backfill.send import (
    ACCEPTED_BY_EARLIER_TRY,
    REJECTED_BY_API,
    RESENT_FROM_JOURNAL,
    BulkRequest,
    OutgoingBatch,
    SendTracker,
    pack,
    pack_groups,
    payloads,
    refusal_detail,
    skip_accepted,
)
from mparticle_backfill.settings import StatePaths, part_owned

from . import tasks
from .gc_policy import bulk_collection
from .links import BackfillReportLink, DeadLettersLink, s3_browser_url
from .send_journal import JournalState, JournalWriter, read_journal

if TYPE_CHECKING:  # the hooks (boto3, requests) are imported when a task runs, not when the DAG is parsed
    from .events_api_client import RequestResult
    from .s3_hook import LocalFrameFiles, QuarantineS3Hook

S3_CONN_ID = tasks.S3_CONN_ID
EVENTS_API_CONN_ID = "mparticle_events_api"


class LedgerWriter:
    """Appends accepted replay keys to the partition's ledger as sends succeed, in small parts.

    A part is written every ``every_seconds`` or ``every_keys``, and on close: a crash loses at most
    the last few seconds of keys, and those batches, resent, are dropped by mParticle (same
    ``source_request_id``). Part names carry the task try and a token of this writer, so a retry
    never overwrites what an earlier try recorded.
    """

    def __init__(
        self,
        s3: QuarantineS3Hook,
        bucket: str,
        paths: StatePaths,
        shard: int,
        shards: int,
        attempt: str,
        every_seconds: float = 5.0,
        every_keys: int = 5000,
    ):
        self.s3, self.bucket, self.paths, self.attempt = s3, bucket, paths, attempt
        self.shard, self.shards = shard, shards
        self.every_seconds, self.every_keys = every_seconds, every_keys
        self.pending: list[str] = []
        self.sequence = 0
        self.written = 0
        self.last = time.monotonic()

    def add(self, keys: Any) -> None:
        self.pending.extend(keys)
        if len(self.pending) >= self.every_keys or time.monotonic() - self.last >= self.every_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            body = ("\n".join(self.pending) + "\n").encode()
            key = self.paths.ledger_part(self.shard, self.shards, self.attempt, self.sequence)
            self.s3.put_bytes(self.bucket, key, body, "text/plain")
            self.sequence += 1
            self.written += len(self.pending)
            self.pending = []
        self.last = time.monotonic()


class MParticleSendOperator(BaseOperator):
    """Sends the replay batches of one shard to mParticle's Events API through :class:`MParticleEventsHook`.

    First, the batches an earlier try or run wrote to the send journal and did not see answered (a lost
    answer, a killed worker) are sent again verbatim, same ``source_request_id`` (:mod:`.journal`). Then
    each user's remaining batches are merged into as few as the limits allow (setting ``coalesce``),
    written to the journal, packed into bulk requests (at most 100 batches, 256 KB) and sent with pacing
    and retries; accepted replay keys go to the partition's ledger as they are accepted; a refused merged
    batch is cut by its records until only the refused ones are left, and those are dead-lettered with
    the API's message. A retried try skips what earlier tries of the run recorded in the ledger. A try
    whose batches were all answered removes its journal parts. In a dry run nothing is sent (and nothing
    journaled): the requests are written to S3.
    What no retry can fix (refused credentials, a 404/413/415/422 answer, the rejection breaker) fails
    the task without retry; transient faults raise so Airflow retries.

    :param chunk: the shard descriptor from ``dedupe_check`` (templated).
    :param mparticle_conn_id: the Events API connection (templated).
    :param aws_conn_id: the S3 connection (templated).
    :param heartbeat_seconds: how often the partition lock is renewed while sending.
    """

    template_fields = ("chunk", "mparticle_conn_id", "aws_conn_id")
    ui_color = "#e6f0ff"

    def __init__(
        self,
        *,
        chunk: Mapping[str, Any],
        mparticle_conn_id: str = EVENTS_API_CONN_ID,
        aws_conn_id: str = S3_CONN_ID,
        heartbeat_seconds: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.mparticle_conn_id = mparticle_conn_id
        self.aws_conn_id = aws_conn_id
        self.heartbeat_seconds = heartbeat_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        with bulk_collection():  # send holds a slice of its shard: see gc_policy
            return self._execute(context)

    def _execute(self, context: Context) -> dict[str, Any]:
        chunk = self.chunk
        settings, paths = tasks.settings_of(chunk), tasks.paths_of(chunk)
        s3 = tasks.quarantine_s3(self.aws_conn_id)
        tasks.heartbeat(chunk, s3)
        bucket = settings.state_bucket
        summary = Summary()
        index, shards = chunk["chunk"], chunk["chunks"]
        stage_file = paths.shard_output("dedupe_check", index)
        try_number = int(getattr(context.get("ti"), "try_number", 1) or 1)
        attempt = f"try{try_number}-{uuid.uuid4().hex[:8]}"
        ledger = LedgerWriter(s3, bucket, paths, index, shards, attempt)
        journal = JournalWriter(s3, bucket, paths, index, shards, attempt)
        accepted: set[str] = set()
        salt = tasks.request_id_salt(chunk)
        found = JournalState()
        if not settings.dry_run:
            # The send journal first: batches an earlier try or run wrote down and sent, whose answer may have
            # been lost (a forced run reads only its own). Then what earlier tries of this run had accepted.
            found = read_journal(
                s3, bucket, paths.journal_run_prefix if settings.force else paths.journal_prefix, index, shards
            )
            if try_number > 1 or found.entries:
                prefix = paths.ledger_run_prefix if settings.force else paths.ledger_prefix
                accepted = s3.read_ledger(bucket, prefix, shard=(index, shards))
        resend = to_resend(found.entries, accepted, found.refused, index, shards)
        summary.counts["journal_entries_read"] += len(found.entries)
        # The batches earlier tries of this run built count as built: the report's coalescing factor is the
        # run's, not only this try's (the replay batches they merged are counted as this try skips them).
        summary.counts["batches_after_coalescing"] += found.built_by_run(paths.journal_run_prefix, index, shards)
        # Coalescing holds what it merges: a shard of many records is coalesced a slice (by user context) at a time.
        slices = slice_count_for(int(chunk.get("replays") or 0)) if settings.coalesce else 1
        if settings.coalesce:
            summary.counts["shard_slices"] += slices
        # One pass over the shard per route: each connection (input) has its own client, pacing, retries and
        # credentials; a route that fails does not stop the others, and is reported at the end.
        routes = [""] + [
            connection for connection in settings.routing.connections if connection != self.mparticle_conn_id
        ]
        failures: dict[str, BaseException] = {}
        with (
            ShardSlices(s3, bucket, stage_file, shards, slices) as shard,
            s3.stage_file(bucket, paths.dead_letters("send", index, "shard"), upload_empty=False) as dead,
        ):
            beat = lambda: tasks.heartbeat(chunk, s3)  # noqa: E731
            for route in routes:
                connection = route or self.mparticle_conn_id
                # 1. Batches sent before whose answer may have been lost: again, verbatim (mParticle drops a
                # repeat by its source_request_id). What they answer is not coalesced again.
                answered: dict[str, tuple[str, str]] = {}
                mine = [batch for entry_route, batch in resend if (entry_route or self.mparticle_conn_id) == connection]
                if mine:
                    resent = JournalResend(summary, dead.write_dead_letter, answered)
                    requests = pack(resent.batches(mine))
                    try:
                        self._send(connection, requests, resent, ledger, journal, summary, beat)
                    except Exception as error:
                        failures[connection] = error
                        self.log.error("send shard %d: route %s stopped resending: %s", index + 1, connection, error)
                        continue  # nothing of this route is coalesced while a batch sent before is unanswered
                tracker = SendTracker(summary, dead.write_dead_letter)
                # 2. The rest, each user's batches merged into as few as the limits allow (off: one group per
                # record). Every batch is written to the journal before it is sent.
                groups: Iterable[CoalescedGroup] = itertools.chain.from_iterable(
                    coalesce(
                        skip_accepted(
                            only_route(replays, route, self.mparticle_conn_id), accepted, summary, salt, answered
                        ),
                        CoalesceSettings(settings.coalesce, salt),
                        summary.counts,
                    )
                    for replays in shard.slices()
                )
                requests_to_send = pack_groups(groups, tracker)
                if settings.dry_run:
                    self._dry_run(s3, bucket, paths, index, route, requests_to_send, tracker, summary)
                    continue
                try:
                    self._send(
                        connection, journal.journaled(requests_to_send, route), tracker, ledger, journal, summary, beat
                    )
                except Exception as error:
                    failures[connection] = error
                    self.log.error("send shard %d: route %s stopped: %s", index + 1, connection, error)
        removed = 0
        if not failures and not settings.dry_run:
            # Everything written down was answered (accepted into the ledger, or refused): the journal parts of
            # this shard are done with. Refusals are kept while a part of another shard count may need them.
            keep_refused = any(not part_owned(key, index, shards) for key in found.parts)
            removed = journal.remove_answered(found.parts, keep_refused)
        summary.counts["journal_batches_written"] += journal.entries
        self.log.info(
            "send shard %d/%d (try %d, %d replays in %d slices): %d replay batches coalesced into %d; %d requests, %d retries, %d throttled, "
            "%d batches accepted, %d rejected (%d refused merged batches sent apart by record), %d skipped (accepted "
            "by an earlier try), %d replay keys added to the ledger; journal: %d entries read, %d batches resent "
            "from it, %d written, %d parts removed%s\n%s",
            index + 1, shards, try_number, int(chunk.get("replays") or 0), slices,
            summary.counts["batches_before_coalescing"],
            summary.counts["batches_after_coalescing"], summary.counts["requests"], summary.counts["retries"],
            summary.counts["throttled"], summary.counts["batches_accepted"], summary.counts["batches_rejected"],
            summary.counts["batches_split"],
            summary.counts[f"batches_skipped:{ACCEPTED_BY_EARLIER_TRY}"], ledger.written,
            summary.counts["journal_entries_read"], summary.counts["journal_batches_resent"],
            journal.entries, removed,
            " (DRY RUN: nothing sent)" if settings.dry_run else "", summary.render("send"),
        )  # fmt: skip
        if failures:
            message = "; ".join(f"route {connection}: {error}" for connection, error in failures.items())
            if any(isinstance(error, AirflowFailException) for error in failures.values()):
                raise AirflowFailException(message)  # what a retry cannot fix: a person must
            raise RuntimeError(message)  # transient: Airflow retries, and the retry sends only what is missing
        return {**chunk, "stage": "send", "summary": summary.to_json()}

    def _dry_run(
        self,
        s3: QuarantineS3Hook,
        bucket: str,
        paths: StatePaths,
        index: int,
        route: str,
        requests_to_send: Iterable[BulkRequest],
        tracker: SendTracker,
        summary: Summary,
    ) -> None:
        key = paths.payloads(index) if not route else paths.payloads(index).replace(".ndjson", f"-{route}.ndjson")
        with s3.stage_file(bucket, key, upload_empty=False) as out:
            for request in requests_to_send:
                summary.counts["requests_dry_run"] += 1
                for payload in payloads(request):
                    out.write(payload)
                for batch in request.batches:
                    tracker.accepted(batch, "dry_run")

    def _send(
        self,
        connection: str,
        requests_to_send: Iterable[BulkRequest],
        tracker: SendTracker | JournalResend,
        ledger: LedgerWriter,
        journal: JournalWriter,
        summary: Summary,
        heartbeat: Callable[[], None],
    ) -> None:
        from .events_api_hook import MParticleEventsHook

        requests_to_send = iter(requests_to_send)
        first = next(requests_to_send, None)
        if first is None:  # nothing for this route: its connection is not even opened
            return
        requests_to_send = itertools.chain([first], requests_to_send)
        hook = MParticleEventsHook(connection)
        last_heartbeat = time.monotonic()

        def record(result: RequestResult) -> None:
            nonlocal last_heartbeat
            summary.counts["requests"] += 1
            summary.counts[f"route:{connection}:requests"] += 1
            summary.counts["http_requests"] += result.http_requests
            summary.counts["retries"] += result.retries
            summary.counts["throttled"] += result.throttled
            summary.counts["batches_split"] += result.split
            summary.counts[f"route:{connection}:batches_accepted"] += len(result.accepted)
            summary.counts[f"route:{connection}:batches_rejected"] += len(result.rejected)
            for batch in result.accepted:
                ledger.add(batch.replay_keys)
                tracker.accepted(batch)
            for batch, message in result.rejected:
                if batch.coalesced is not None:
                    journal.refused(request_id_of(batch.coalesced))
                tracker.rejected(batch, message)
            if time.monotonic() - last_heartbeat >= self.heartbeat_seconds:
                heartbeat()
                last_heartbeat = time.monotonic()

        try:
            for result in hook.send_requests(requests_to_send):
                record(result)
        except (CredentialsRefused, InvalidSettings, RequestRefused, TooManyRejections) as error:
            raise AirflowFailException(f"connection {connection!r}: {error}") from None
        finally:
            ledger.flush()  # whatever happened, every key the API accepted reaches the ledger
            journal.flush_refused()  # and every batch it refused is answered in the journal
        if tracker.waiting:
            raise RuntimeError(f"{tracker.waiting} records got no answer from the Events API ({connection})")


class JournalResend:
    """Answers to the batches resent from the send journal (sent before, their answer maybe lost), by
    replay key, for the records of this try's shard that they deliver (:func:`.send.skip_accepted`).

    The records themselves are not here (they may be in this run's shard, or no longer: aged out of the
    window, held); they end when the shard is read. A refused batch is dead-lettered here, each record's
    part of it, as the send stage does.
    """

    def __init__(self, summary: Summary, dead_letter: DeadLetterSink, answered: dict[str, tuple[str, str]]) -> None:
        self.summary, self.dead_letter, self.answered = summary, dead_letter, answered
        self._waiting = 0

    def batches(self, batches: Iterable[CoalescedBatch]) -> Iterator[OutgoingBatch]:
        for batch in batches:
            self._waiting += len(batch.replay_keys)
            self.summary.counts["journal_batches_resent"] += 1
            yield OutgoingBatch(batch.members[0][0], batch.replay_keys, batch.body, batch)

    def accepted(self, batch: OutgoingBatch, reason: str = "sent") -> None:
        self._waiting -= len(batch.replay_keys)  # the parts of a batch cut in two hold its keys once
        self.summary.counts["journal_batches_accepted"] += 1
        self.summary.counts["batches_accepted"] += 1
        for key in batch.replay_keys:
            self.answered[key] = (REPLAYED, RESENT_FROM_JOURNAL)

    def rejected(self, batch: OutgoingBatch, message: str) -> None:
        self._waiting -= len(batch.replay_keys)
        self.summary.counts["journal_batches_rejected"] += 1
        self.summary.counts["batches_rejected"] += 1
        detail = refusal_detail(batch, message)
        assert batch.coalesced is not None
        for ref in batch.refs:
            content = member_payload(batch.coalesced, ref) if len(batch.refs) > 1 else batch.coalesced.payload
            self.dead_letter(DeadLetter(ref, "send", REJECTED_BY_API, detail, content))
        for key in batch.replay_keys:
            self.answered[key] = (DEAD_LETTERED, REJECTED_BY_API)

    @property
    def waiting(self) -> int:
        """Replay keys resent and not yet answered."""
        return self._waiting


class ShardSlices:
    """A shard's replays, cut into ``slice_count`` slices by user context, for the send task to coalesce
    one slice at a time (:data:`.coalesce.SLICE_REPLAYS`: coalescing holds what it merges).

    One slice: the shard's stage file is read as it is, once per pass. Several: it is read once, and its
    frames are copied undecoded (only their ``context_hash`` is read) into local zstd files, one per slice
    that has replays (:class:`.s3_hook.LocalFrameFiles`), removed on close. The same stage file and slice count always give the same slices, so a retry
    rebuilds the same merged batches.
    """

    def __init__(self, s3: QuarantineS3Hook, bucket: str, key: str, shard_count: int, slice_count: int) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.shard_count, self.slice_count = shard_count, slice_count
        self._files: LocalFrameFiles | None = None

    def __enter__(self) -> ShardSlices:
        if self.slice_count > 1:
            from .s3_hook import LocalFrameFiles  # not at import: parsing the DAG imports no boto3

            self._files = LocalFrameFiles(prefix="mparticle-send-slices-")
            try:
                self._spill(self._files)
            except BaseException:
                self._files.remove()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._files is not None:
            self._files.remove()

    def _spill(self, files: LocalFrameFiles) -> None:
        # Bounded buffers and one compressor (LocalFrameFiles), not a zstd writer and an open file per slice.
        for frame in self.s3.read_frames(self.bucket, self.key):
            context_hash = stage_codec.frame_context_hash(frame)
            if context_hash is None:  # written by a version that did not keep it
                context_hash = replay_context_hash(stage_codec.decode_frame(frame))
            files.write_frame(slice_of(context_hash, self.shard_count, self.slice_count), frame)
        files.flush()

    def slices(self) -> Iterator[Iterable[Replay]]:
        """Each slice's replays in turn (read lazily: one slice is decoded at a time); an empty slice is
        skipped."""
        if self._files is None:
            yield self.s3.read_replays(self.bucket, self.key, for_send=True)
            return
        for index in range(self.slice_count):
            if self._files.lines.get(index):
                yield _read_local(self._files.path(index))


def _read_local(path: str) -> Iterator[Replay]:
    from .s3_hook import open_zstd

    with open_zstd(open(path, "rb")) as reader:
        yield from stage_codec.iter_replays_for_send(reader, path)


def only_route(replays: Iterable[Replay], route: str, default: str) -> Iterator[Replay]:
    """The replays whose batches go to ``route`` ("" or ``default``: those routed to the default connection)."""
    wanted = {route} if route else {"", default}
    for replay in replays:
        if replay.route in wanted:
            yield replay


class MParticleReportOperator(BaseOperator):
    """Adds up the counts of every stage, checks they reconcile, writes the report to S3 and logs it.

    Its extra links, **Backfill report** and **Dead letters**, open the run's report and dead letters
    (the S3 console on AWS). The task fails if the counts do not reconcile; the links are set even then.

    :param stage_outputs: the chunk descriptors of every stage, one list per stage (templated).
    :param aws_conn_id: the S3 connection (templated).
    """

    template_fields = ("stage_outputs", "aws_conn_id")
    operator_extra_links = (BackfillReportLink(), DeadLettersLink())
    ui_color = "#eaf7ea"

    def __init__(self, *, stage_outputs: Any, aws_conn_id: str = S3_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage_outputs = stage_outputs
        self.aws_conn_id = aws_conn_id
        self.report_url = ""
        self.dead_letters_url = ""

    def execute(self, context: Context) -> dict[str, Any]:
        outputs = [list(stage) for stage in self.stage_outputs]
        s3 = tasks.quarantine_s3(self.aws_conn_id)
        first = outputs[0][0]
        settings, paths = tasks.settings_of(first), tasks.paths_of(first)
        endpoint = s3.conn.meta.endpoint_url
        self.report_url = s3_browser_url(settings.state_bucket, paths.report("md"), endpoint)
        self.dead_letters_url = s3_browser_url(
            settings.state_bucket, f"{paths.partition}/dead_letters/{paths.run_key}/", endpoint
        )
        return tasks.report(outputs, s3)
