"""S3 access for the stages: list a partition, stream objects, write and read stage files and the ledger."""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterator
from datetime import date
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from botocore.exceptions import ClientError

from .. import jsonio
from ..extract import PartitionLayout, is_verification_object, open_object
from ..model import DeadLetter, Replay

S3_CONN_ID = "mparticle_quarantine_s3"


class S3Store:
    """One S3 client (from the ``aws`` connection, whose extra may carry ``endpoint_url``) and the verbs the
    stages need. Files are streamed: nothing here holds a whole object in memory.

    :param aws_conn_id: the Airflow connection of the quarantine (and state) buckets.
    """

    def __init__(self, aws_conn_id: str = S3_CONN_ID) -> None:
        self.aws_conn_id = aws_conn_id
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        return self._client

    def list_partition(self, bucket: str, layout: PartitionLayout, day: date) -> tuple[list[str], int]:
        """Keys of the partition's quarantine objects (sorted), and how many verification objects were skipped."""
        keys: list[str] = []
        skipped = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=layout.listing_prefix(day)):
            for item in page.get("Contents", ()):
                key = item["Key"]
                if is_verification_object(key):
                    skipped += 1
                elif layout.belongs(key, day):
                    keys.append(key)
        return sorted(keys), skipped

    def object_stream(self, bucket: str, key: str) -> Any:
        """The object's body as a stream (botocore StreamingBody)."""
        return self.client.get_object(Bucket=bucket, Key=key)["Body"]

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield item["Key"]

    def read_lines(self, bucket: str, key: str) -> Iterator[bytes]:
        """Non-empty lines of an object (gzip or plain)."""
        reader, _ = open_object(self.object_stream(bucket, key))
        for line in reader:
            line = line.strip()
            if line:
                yield line

    def read_replays(self, bucket: str, key: str) -> Iterator[Replay]:
        for line in self.read_lines(bucket, key):
            yield Replay.from_json(jsonio.loads(line))

    def read_ledger(self, bucket: str, prefix: str) -> set[str]:
        """Every replay key the API accepted for a partition, from all ledger parts."""
        keys: set[str] = set()
        for key in self.list_keys(bucket, prefix):
            keys.update(line.decode() for line in self.read_lines(bucket, key))
        return keys

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "application/json") -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def create_if_absent(self, bucket: str, key: str, body: bytes) -> bool:
        """Write the object only if no object has that key (S3 conditional write); False if one exists."""
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as error:
            if _status(error) in (409, 412):  # 412 Precondition Failed; 409 a concurrent conditional write
                return False
            raise
        return True

    def replace_if_unchanged(self, bucket: str, key: str, body: bytes, etag: str) -> bool:
        """Overwrite the object only if it is still the version ``etag`` names; False if it changed."""
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=etag)
        except ClientError as error:
            if _status(error) in (404, 409, 412):
                return False
            raise
        return True

    def read_object(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """An object's content and ETag, or None if there is no such object."""
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if _status(error) == 404:
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def writer(self, bucket: str, key: str, *, compress: bool = False, upload_empty: bool = True) -> NdjsonWriter:
        return NdjsonWriter(self, bucket, key, compress=compress, upload_empty=upload_empty)


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class NdjsonWriter:
    """Writes NDJSON to a local temporary file and uploads it on close: memory stays flat."""

    def __init__(self, store: S3Store, bucket: str, key: str, *, compress: bool, upload_empty: bool) -> None:
        self.store, self.bucket, self.key = store, bucket, key
        self.upload_empty = upload_empty
        self.lines = 0
        handle, self._path = tempfile.mkstemp(suffix=".ndjson")
        raw = os.fdopen(handle, "wb")
        self._file: Any = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3) if compress else raw
        self._raw = raw

    def write(self, value: Any) -> None:
        self._file.write(jsonio.dumps(value) + b"\n")
        self.lines += 1

    def write_replay(self, replay: Replay) -> None:
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
                self.store.client.upload_file(self._path, self.bucket, self.key)
                return self.key
            return None
        finally:
            os.unlink(self._path)

    def __enter__(self) -> NdjsonWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # a failed stage uploads nothing half-written
            self._file.close()
            os.unlink(self._path)
