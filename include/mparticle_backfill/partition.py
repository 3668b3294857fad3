"""Partition: which quarantine objects form one date partition, whatever the output's layout."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

VERIFICATION_PREFIX = "mParticle_Bucket_Verification_"
# <AppName>_<yyyyMMddHHmmss + 6 fractional digits>_<5 digits>.txt
OBJECT_NAME = re.compile(r"^(?P<app>.+)_(?P<timestamp>\d{20})_(?P<sequence>\d{5})\.txt$")


def object_name(key: str) -> str:
    """The file name of an object key (what follows the last ``/``)."""
    return key.rsplit("/", 1)[-1]


def is_verification_object(key: str) -> bool:
    """mParticle writes these (content ``{}``) when output settings are saved: they are not data."""
    return object_name(key).startswith(VERIFICATION_PREFIX)


def upload_date_from_name(key: str) -> date | None:
    """The UTC date in an mParticle object name (``App_20171017170911644493_34523.txt``), if any."""
    match = OBJECT_NAME.match(object_name(key))
    if match is None:
        return None
    try:
        return datetime.strptime(match.group("timestamp")[:8], "%Y%m%d").date()
    except ValueError:
        return None


# How an output names its objects (the ``layout`` setting).
DATE_FOLDERS = "date_folders"  # [prefix/]YYYY-MM-DD/<App>_<20 digits>_<5 digits>.txt (mParticle's S3 output)
FLAT = "flat"  # [prefix/]<App>_<20 digits>_<5 digits>.txt: the date is read from the name
FIREHOSE_HOURLY = "firehose_hourly"  # [prefix/]YYYY/MM/DD/HH/<any name> (Kinesis Data Firehose)
LAYOUTS = (DATE_FOLDERS, FLAT, FIREHOSE_HOURLY)
_HOUR_FOLDER = re.compile(r"^(?:[01]\d|2[0-3])/[^/]")


@dataclass(frozen=True, slots=True)
class PartitionLayout:
    """How a quarantine output lays out its objects.

    :param prefix: folder inside the bucket (``""`` for the bucket root).
    :param layout: ``date_folders`` (``YYYY-MM-DD/`` folders, the default of mParticle's output),
        ``flat`` (no date folders: the date is read from the 20-digit UTC timestamp in the object name)
        or ``firehose_hourly`` (Kinesis Data Firehose's ``YYYY/MM/DD/HH/`` folders, any object name).
    :param state_prefix: where this tool keeps its own state; never listed as quarantine data.
    """

    prefix: str = ""
    layout: str = DATE_FOLDERS
    state_prefix: str = ""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")

    @property
    def folder(self) -> str:
        stripped = self.prefix.strip("/")
        return f"{stripped}/" if stripped else ""

    def listing_prefix(self, day: date) -> str:
        """The S3 prefix to list for ``day``."""
        if self.layout == DATE_FOLDERS:
            return f"{self.folder}{day.isoformat()}/"
        if self.layout == FIREHOSE_HOURLY:
            return f"{self.folder}{day:%Y/%m/%d}/"
        return self.folder

    def belongs(self, key: str, day: date) -> bool:
        """Whether object ``key`` is quarantine data of partition ``day``."""
        state = self.state_prefix.strip("/")
        if state and (key == state or key.startswith(f"{state}/")):
            return False
        if key.endswith("/") or is_verification_object(key):
            return False
        listing = self.listing_prefix(day)
        if not key.startswith(listing):
            return False
        rest = key[len(listing) :]
        if self.layout == DATE_FOLDERS:
            return bool(rest)
        if self.layout == FIREHOSE_HOURLY:
            return _HOUR_FOLDER.match(rest) is not None
        # Flat: only objects directly in the folder, dated by their name.
        return "/" not in rest and upload_date_from_name(key) == day
