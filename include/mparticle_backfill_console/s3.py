"""ConsoleS3Hook: the DAG's S3 hook (same connection) with the console's verbs, reading only listings,
report JSON and lock objects (never quarantine data or dead letters)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from mparticle_backfill.partition import DATE_FOLDERS, FIREHOSE_HOURLY, PartitionLayout
from mparticle_backfill_airflow.s3_hook import QuarantineS3Hook


@dataclass(frozen=True)
class StoredObject:
    """An object as a listing shows it."""

    key: str
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class PartitionState:
    """What ``<state_prefix>/<date>/`` holds: whether it is locked, and its reports (JSON)."""

    locked: bool
    reports: tuple[StoredObject, ...]


class ConsoleS3Hook(QuarantineS3Hook):
    """:class:`QuarantineS3Hook` (connection ``mparticle_quarantine_s3``) plus what the console lists.

    :param aws_conn_id: the connection of the quarantine (and state) buckets.
    """

    hook_name = "mParticle backfill console S3"

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint this connection talks to (for links that open objects)."""
        return self.conn.meta.endpoint_url

    def quarantine_entries(self, bucket: str, layout: PartitionLayout) -> Iterator[str]:
        """What names the quarantine dates: date folders (``date_folders``), day folders
        (``firehose_hourly``: years, then months, then days) or the object keys of a ``flat`` output."""
        if layout.layout == DATE_FOLDERS:
            yield from self.list_prefixes(bucket_name=bucket, prefix=layout.folder, delimiter="/")
        elif layout.layout == FIREHOSE_HOURLY:
            for year in self.list_prefixes(bucket_name=bucket, prefix=layout.folder, delimiter="/"):
                for month in self.list_prefixes(bucket_name=bucket, prefix=year, delimiter="/"):
                    yield from self.list_prefixes(bucket_name=bucket, prefix=month, delimiter="/")
        else:
            yield from self.list_keys(bucket_name=bucket, prefix=layout.folder, delimiter="/")

    def state_dates(self, bucket: str, state_prefix: str) -> list[str]:
        """The date folders under the state prefix (``<state_prefix>/<date>/``)."""
        return self.list_prefixes(bucket_name=bucket, prefix=f"{state_prefix.strip('/')}/", delimiter="/")

    def partition_state(self, bucket: str, partition: str) -> PartitionState:
        """Whether ``<partition>/lock.json`` exists, and the report JSON objects under ``<partition>/reports/``.

        One listing (usually one request): a partition folder holds ``dead_letters/``, ``ledger/``,
        ``lock.json``, ``payloads/``, ``reports/`` and ``runs/``, in that (key) order, so the listing
        starts after every ``ledger/`` key (``ledger/...`` sorts before ``ledger0``) and stops at the first
        key past ``reports/``: the big folders (dead letters, ledger, stage files) are never listed.
        """
        folder = f"{partition.strip('/')}/"
        lock, reports_folder = f"{folder}lock.json", f"{folder}reports/"
        locked, reports = False, []
        pages = self.conn.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=folder, StartAfter=f"{folder}ledger0"
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                if key == lock:
                    locked = True
                elif key.startswith(reports_folder):
                    if key.endswith(".json"):
                        reports.append(StoredObject(key, item.get("ETag", ""), item["LastModified"]))
                elif key > reports_folder:  # runs/ and whatever sorts after reports/
                    return PartitionState(locked, tuple(reports))
        return PartitionState(locked, tuple(reports))
