"""QuarantineS3Hook: the quarantine bucket and the backfill's own state, in the stages' own verbs."""

from __future__ import annotations

import gzip
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from mparticle_backfill import jsonio, stage_codec
from mparticle_backfill.extract import open_object
from mparticle_backfill.model import DeadLetter, Replay
from mparticle_backfill.partition import PartitionLayout, is_verification_object
from mparticle_backfill.settings import ledger_part_wanted

S3_CONN_ID = "mparticle_quarantine_s3"  # the default connection (also in tasks.S3_CONN_ID)

# botocore's own retries and timeouts for every S3 request of the backfill, where the connection's extra
# ``config_kwargs`` (or a hook's ``config``) says nothing (:func:`client_config`). "standard": a 503
# SlowDown, a 500, a reset connection or a timeout is retried with exponential backoff and jitter (1 s
# base for throttling, capped at 20 s a wait), up to 10 attempts in all (~1-2 minutes of S3 refusing
# before the task fails and Airflow retries it). Not "adaptive": its client-side rate limiter is per
# process, and the backfill's S3 load is spread over many task processes.
S3_CLIENT_DEFAULTS: dict[str, Any] = {
    "retries": {"mode": "standard", "total_max_attempts": 10},
    "connect_timeout": 10,
    "read_timeout": 60,
}
# Breaks in a row (no byte read in between) after which reading an object's body gives up.
MAX_BODY_RESUMES = 5

log = logging.getLogger(__name__)


class ObjectReadError(Exception):
    """An object's body could not be read to its end (the connection kept breaking, or the object changed
    while it was read). Not an :class:`OSError`: a reader that takes an OSError for a damaged object
    (a corrupt gzip stream is dead-lettered) never takes this one for it. The task fails and Airflow's
    retry reads the object again from its start."""


class QuarantineS3Hook(S3Hook):
    """S3 for the backfill: list a partition, stream an object, write and read stage files, the ledger
    and the partition lock. Objects are streamed: nothing here holds a whole object in memory.

    Uses an ``aws`` connection (default id ``mparticle_quarantine_s3``) whose extra may carry
    ``endpoint_url`` (MinIO, a local moto server) and everything else :class:`S3Hook` understands
    (region, role, server-side encryption for what the backfill writes), and ``config_kwargs``, botocore's
    client config: what it leaves unset of retries and timeouts is :data:`S3_CLIENT_DEFAULTS`.

    S3 misbehaving: a request S3 refuses (503 SlowDown, 500) or that breaks before its answer (a reset,
    a timeout) is retried by botocore. A body that breaks off after the answer began is resumed where it
    stopped (:class:`ResumableBody`). A conditional write whose answer was lost and whose retry is
    refused by the object it wrote itself counts as written.

    :param aws_conn_id: the connection of the quarantine (and state) buckets.
    """

    hook_name = "mParticle quarantine S3"

    def __init__(self, aws_conn_id: str | None = S3_CONN_ID, **kwargs: Any) -> None:
        super().__init__(aws_conn_id=aws_conn_id, **kwargs)

    def _get_caller(self, target_function_name: str = "execute") -> str:
        """The ``Caller/`` of the client's user agent, as the base hook tells it (the class whose
        ``execute`` created the client, else "Unknown"), found by walking the frames: the base hook calls
        ``inspect.stack()``, which reads the source of every frame on the stack, ~0.3 s of CPU for each
        task instance's first S3 client (~30 us per record over a 1,000,000-record run's 104 task
        instances). Unlike the base hook it does not look for a sensor's ``poke`` or an executor: this
        hook is created by the DAG's tasks only. Never raises (a user agent is not worth a failed task)."""
        try:
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_name == target_function_name and "self" in frame.f_locals:
                    return type(frame.f_locals["self"]).__name__
                frame = frame.f_back
        except Exception:
            pass
        return "Unknown"

    @property
    def config(self) -> Config:
        """The botocore config of this hook's clients: the connection's (or the hook's), completed with
        :data:`S3_CLIENT_DEFAULTS`."""
        return client_config(self.conn_config.botocore_config)

    def list_partition(self, bucket: str, layout: PartitionLayout, day: date) -> tuple[list[str], int]:
        """Keys of the partition's quarantine objects (sorted), and how many verification objects were skipped."""
        keys: list[str] = []
        skipped = 0
        for key in self.list_keys(bucket_name=bucket, prefix=layout.listing_prefix(day)):
            if is_verification_object(key):
                skipped += 1
            elif layout.belongs(key, day):
                keys.append(key)
        return sorted(keys), skipped

    def object_stream(self, bucket: str, key: str) -> ResumableBody:
        """The object's body as a stream that resumes where its connection broke (:class:`ResumableBody`)."""
        return ResumableBody(self.conn, bucket, key)

    def read_lines(self, bucket: str, key: str) -> Iterator[bytes]:
        """Non-empty lines of an object (gzip or plain)."""
        reader, _ = open_object(self.object_stream(bucket, key))
        for line in reader:
            line = line.strip()
            if line:
                yield line

    def read_replays(self, bucket: str, key: str, *, for_send: bool = False) -> Iterator[Replay]:
        """The replays in a stage file (msgpack frames in zstd; a gzip NDJSON file of an older version too).
        ``for_send``: as the send stage reads them (:func:`.stage_codec.iter_replays_for_send`)."""
        if not key.endswith(stage_codec.SUFFIX):
            for line in self.read_lines(bucket, key):
                yield Replay.from_json(jsonio.loads(line))
            return
        iterate = stage_codec.iter_replays_for_send if for_send else stage_codec.iter_replays
        with open_zstd(self.object_stream(bucket, key)) as reader:
            yield from iterate(reader, f"s3://{bucket}/{key}")

    def read_frames(self, bucket: str, key: str) -> Iterator[bytes]:
        """The frames of a stage file (msgpack frames in zstd) undecoded, to copy them as they are (a gzip
        NDJSON file of an older version: its replays encoded as frames)."""
        if not key.endswith(stage_codec.SUFFIX):
            for replay in self.read_replays(bucket, key):
                yield stage_codec.encode_replay(replay)
            return
        with open_zstd(self.object_stream(bucket, key)) as reader:
            yield from stage_codec.iter_frames(reader, f"s3://{bucket}/{key}")

    def read_ledger(self, bucket: str, prefix: str, shard: tuple[int, int] | None = None) -> set[str]:
        """The replay keys the API accepted for a partition, from its ledger parts: all of them, or with
        ``shard = (index, count)`` only the parts that may hold that shard's keys."""
        keys: set[str] = set()
        for key in self.list_keys(bucket_name=bucket, prefix=prefix):
            if shard is None or ledger_part_wanted(key, *shard):
                keys.update(line.decode() for line in self.read_lines(bucket, key))
        return keys

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "application/json") -> None:
        """Write a small object (report, ledger part), replacing any object of that key.

        Like :meth:`S3Hook.load_bytes`, with the connection's upload arguments (e.g. server-side
        encryption), and a content type so that a browser opens a report as text.
        """
        self.conn.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type, **self.extra_args)

    def create_if_absent(self, bucket: str, key: str, body: bytes) -> bool:
        """Write the object only if no object has that key (S3 conditional write); False if one exists.

        A write botocore retried (its answer was lost: a reset, a timeout) may have gone through the first
        time; the retry is then refused by the object that write made. Refused after a retry, the write
        counts as done if the object holds exactly ``body``."""
        try:
            self.conn.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as error:
            if _status(error) in (409, 412):  # 412 Precondition Failed; 409 a concurrent conditional write
                return _retried(error) and self._holds(bucket, key, body)
            raise
        return True

    def replace_if_unchanged(self, bucket: str, key: str, body: bytes, etag: str) -> bool:
        """Overwrite the object only if it is still the version ``etag`` names; False if it changed.

        Refused after a botocore retry, the write counts as done if the object holds exactly ``body`` (the
        first attempt went through; its answer was lost)."""
        try:
            self.conn.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)
        except ClientError as error:
            if _status(error) in (404, 409, 412):
                return _status(error) != 404 and _retried(error) and self._holds(bucket, key, body)
            raise
        return True

    def _holds(self, bucket: str, key: str, body: bytes) -> bool:
        """Whether the object holds exactly ``body`` (a conditional write refused on a retry)."""
        found = self.read_object(bucket, key)
        written = found is not None and found[0] == body
        outcome = "the first attempt had gone through" if written else "another writer's object is there"
        log.info("Conditional write of s3://%s/%s refused on a retry: %s", bucket, key, outcome)
        return written

    def read_object(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """An object's content and ETag, or None if there is no such object."""
        try:
            response = self.conn.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if _status(error) == 404:
                return None
            raise
        with ResumableBody(self.conn, bucket, key, response) as body:
            return body.readall(), body.etag

    def delete_if_unchanged(self, bucket: str, key: str, etag: str) -> bool:
        """Delete the object only if it is still the version ``etag`` names; False if it changed or is gone.

        Gone (404) after a botocore retry counts as deleted: the first attempt went through, its answer
        was lost."""
        try:
            self.conn.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        except ClientError as error:
            if _status(error) == 404 and _retried(error):
                log.info("Delete of s3://%s/%s: gone on a retry, the first attempt had gone through", bucket, key)
                return True
            if _status(error) in (404, 409, 412):
                return False
            raise
        return True

    def delete(self, bucket: str, key: str) -> None:
        self.delete_objects(bucket, [key])

    def stage_file(
        self, bucket: str, key: str, *, compress: bool = False, upload_empty: bool = True
    ) -> StageFileWriter:
        """A writer of NDJSON (replays, dead letters, payloads) uploaded to ``key`` when it closes."""
        return StageFileWriter(self, bucket, key, compress=compress, upload_empty=upload_empty)

    def shard_stage_files(self, bucket: str, key_of: Callable[[int], str]) -> ShardStageWriters:
        """Writers of replays by shard (stage files ``key_of(shard)``), uploaded when it closes; memory
        is bounded whatever the number of shards reached."""
        return ShardStageWriters(self, bucket, key_of)


def open_zstd(stream: Any) -> io.BufferedReader:
    """A buffered reader of a zstd stream (a stage file's body, or a local file), closing it when closed.
    Reads across zstd frames (a file may be several, concatenated)."""
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(stream, closefd=True, read_across_frames=True)
    return io.BufferedReader(reader, 1 << 20)


def client_config(given: Config | None) -> Config:
    """A botocore config: what ``given`` sets (the connection's ``config_kwargs`` or a hook's ``config``),
    and for what it leaves unset :data:`S3_CLIENT_DEFAULTS` (in ``retries`` key by key: a connection
    that sets only ``max_attempts`` keeps the standard mode)."""
    retries = dict(S3_CLIENT_DEFAULTS["retries"])
    chosen = dict(given.retries or {}) if given is not None else {}
    if "max_attempts" in chosen or "total_max_attempts" in chosen:
        del retries["total_max_attempts"]
    retries.update(chosen)
    config = Config(**S3_CLIENT_DEFAULTS)
    if given is not None:
        config = config.merge(given)
    return config.merge(Config(retries=retries))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _retried(error: ClientError) -> bool:
    """Whether botocore sent the request more than once before this answer."""
    return int(error.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0) > 0


# What breaks a body after its answer began: the connection reset or closed (ResponseStreamingError,
# ConnectionClosedError), a read timeout (ReadTimeoutError, which is also an OSError), fewer bytes than
# the answer announced (IncompleteReadError). botocore retries requests, not bodies.
_BODY_BREAKS = (HTTPClientError, IncompleteReadError, BotocoreConnectionError)


class ResumableBody(io.RawIOBase):
    """An object's body as a raw stream that resumes where its connection broke off.

    botocore retries a request S3 refuses or that breaks before its answer, but not a body cut off after
    the answer began (a reset connection, a read timeout, mid-object). Such a break is resumed with a
    ranged GET from the first byte not yet read, pinned to the version first read (``If-Match`` its ETag),
    so the bytes read are the object's, each once, in order: a line or frame is never read twice nor cut.
    The body read must reach the length the object announced, else it is a break too: a partial gzip or
    zstd body is never taken for a whole one. After :data:`MAX_BODY_RESUMES` breaks in a row with no byte
    read between them, or if the object changed, it raises :class:`ObjectReadError`.

    :param client: the S3 client.
    :param response: the GetObject answer whose body to read (default: a GetObject of the object).
    """

    def __init__(self, client: Any, bucket: str, key: str, response: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._client, self.bucket, self.key = client, bucket, key
        if response is None:
            response = client.get_object(Bucket=bucket, Key=key)
        self._body: Any = response["Body"]
        self.etag: str = response["ETag"]
        self.length = int(response["ContentLength"])
        self.position = 0
        self._breaks = 0  # in a row, without a byte read in between

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            try:
                if self._body is None:
                    self._body = self._rest()
                size = self._body.readinto(buffer)
                if size == 0 and len(buffer) and self.position < self.length:
                    raise IncompleteReadError(actual_bytes=self.position, expected_bytes=self.length)
            except _BODY_BREAKS as error:
                self._broke(error)
                continue
            except ClientError as error:  # a resume S3 still refuses (503) after botocore's retries
                if _status(error) < 500:
                    raise
                self._broke(error)
                continue
            self.position += size
            if size:
                self._breaks = 0
            return size

    def _rest(self) -> Any:
        """The body from the first byte not yet read, of the same version."""
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-", IfMatch=self.etag
            )
        except ClientError as error:
            if _status(error) in (404, 412):
                raise ObjectReadError(
                    f"s3://{self.bucket}/{self.key} changed or was removed while it was read (at byte "
                    f"{self.position:,} of {self.length:,}); the task's retry reads it again from its start"
                ) from error
            raise
        return response["Body"]

    def _broke(self, error: Exception) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        self._breaks += 1
        if self._breaks > MAX_BODY_RESUMES:
            raise ObjectReadError(
                f"s3://{self.bucket}/{self.key}: reading broke off {self._breaks} times in a row at byte "
                f"{self.position:,} of {self.length:,} ({error}); the task's retry reads it again from its start"
            ) from error
        log.warning(
            "s3://%s/%s: the body broke off at byte %d of %d (%s); resuming there",
            self.bucket, self.key, self.position, self.length, type(error).__name__,
        )  # fmt: skip

    def close(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None
        super().close()


class StageFileWriter:
    """Writes NDJSON to a local temporary file and uploads it on close: memory stays flat."""

    def __init__(self, hook: QuarantineS3Hook, bucket: str, key: str, *, compress: bool, upload_empty: bool) -> None:
        self.hook, self.bucket, self.key = hook, bucket, key
        self.upload_empty = upload_empty
        self.lines = 0
        # Replays between tasks: msgpack frames, zstd level 1 (stage_codec); anything else: NDJSON.
        self.frames = key.endswith(stage_codec.SUFFIX)
        handle, self._path = tempfile.mkstemp(suffix=".stage")
        raw = os.fdopen(handle, "wb")
        if self.frames:
            import zstandard

            self._file: Any = zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
        else:
            self._file = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3) if compress else raw
        self._raw = raw

    def write(self, value: Any) -> None:
        self._file.write(jsonio.dumps(value) + b"\n")
        self.lines += 1

    def write_frame(self, frame: bytes) -> None:
        """A replay already encoded (:mod:`stage_codec`), copied as it is to a stage file of replays."""
        if not self.frames:
            raise ValueError(f"{self.key}: not a stage file of frames")
        self._file.write(frame)
        self.lines += 1

    def write_replay(self, replay: Replay) -> None:
        if self.frames:
            self._file.write(stage_codec.encode_replay(replay))
            self.lines += 1
        else:
            self.write(replay.to_json())

    def write_dead_letter(self, letter: DeadLetter) -> None:
        self.write(letter.to_json())

    def close(self) -> str | None:
        """Upload (unless empty and not wanted); returns the key written, or None."""
        self._file.close()
        if self._raw is not self._file:
            self._raw.close()
        try:
            if self.lines or self.upload_empty:
                self.hook.load_file(self._path, self.key, bucket_name=self.bucket, replace=True)
                return self.key
            return None
        finally:
            os.unlink(self._path)

    def __enter__(self) -> StageFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # a failed stage uploads nothing half-written
            self._file.close()
            if self._raw is not self._file:
                self._raw.close()
            os.unlink(self._path)


class LocalFrameFiles:
    """Local zstd files of stage-file frames, one per index (a shard, a slice), in bounded memory whatever
    the number of indexes.

    Frames are buffered per index, and an index's buffer is compressed as one zstd frame appended to that
    index's local file when it reaches :attr:`FRAME_BYTES`, every buffer when together they reach
    :attr:`BUFFER_BYTES`. One compressor serves every index and no file stays open between flushes. (A
    zstd stream writer per index costs 0.1-0.5 MB and a file descriptor each: up to ~0.5 GB and more than
    the default 1,024 descriptors at 1,024 shards.) A file is thus several zstd frames, which its readers
    read across (:func:`open_zstd`). Only indexes written to have a file; :meth:`remove` deletes them all.
    """

    FRAME_BYTES = 1 << 20
    BUFFER_BYTES = 16 << 20

    def __init__(self, prefix: str) -> None:
        import zstandard

        self.lines: dict[int, int] = {}  # frames written, by index (a frame is one replay)
        self.frames: dict[int, int] = {}  # zstd frames written, by index
        self._buffers: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._buffered = 0
        self._compressor = zstandard.ZstdCompressor(level=1)
        self._dir = tempfile.mkdtemp(prefix=prefix)

    def __len__(self) -> int:
        """How many indexes have frames."""
        return len(self.lines)

    def write_frame(self, index: int, frame: bytes) -> None:
        buffer = self._buffers.get(index)
        if buffer is None:
            buffer = self._buffers[index] = []
            self._sizes[index] = 0
            self.lines.setdefault(index, 0)
        buffer.append(frame)
        self.lines[index] += 1
        self._sizes[index] += len(frame)
        self._buffered += len(frame)
        if self._sizes[index] >= self.FRAME_BYTES:
            self._flush(index)
        elif self._buffered >= self.BUFFER_BYTES:
            self.flush()

    def path(self, index: int) -> str:
        return os.path.join(self._dir, f"{index}.zst")

    def _flush(self, index: int) -> None:
        buffer = self._buffers.pop(index)
        self._buffered -= self._sizes.pop(index)
        with open(self.path(index), "ab") as file:
            file.write(self._compressor.compress(b"".join(buffer)))
        self.frames[index] = self.frames.get(index, 0) + 1

    def flush(self) -> None:
        """Every buffer to its file: each index's file then holds all its frames."""
        for index in list(self._buffers):
            self._flush(index)

    def remove(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


class ShardStageWriters(LocalFrameFiles):
    """Stage files of replays, one per shard, for a task whose replays go to any of up to 1,024 shards:
    :class:`LocalFrameFiles` (bounded memory whatever the shard count), each shard's file uploaded on close
    if it has replays; on an error nothing is uploaded."""

    def __init__(self, hook: QuarantineS3Hook, bucket: str, key_of: Callable[[int], str]) -> None:
        super().__init__(prefix="shard-stage-")
        self.hook, self.bucket, self.key_of = hook, bucket, key_of

    def write_replay(self, shard: int, replay: Replay) -> None:
        self.write_frame(shard, stage_codec.encode_replay(replay))

    def close(self) -> list[str]:
        """Upload every shard's file that has replays; returns the keys written, in shard order."""
        try:
            self.flush()
            written = []
            for shard in sorted(self.lines):
                key = self.key_of(shard)
                self.hook.load_file(self.path(shard), key, bucket_name=self.bucket, replace=True)
                written.append(key)
            return written
        finally:
            self.remove()

    def __enter__(self) -> ShardStageWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # a failed stage uploads nothing half-written
            self.remove()
