"""Extra links on the report task: one click from the run to its report and its dead letters.

Airflow 3 computes an operator's extra links on the worker when the task ends and keeps them as XCom;
the UI reads them from there, so no plugin is needed. A link is empty until the report task has run.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

AWS_CONSOLE = "https://s3.console.aws.amazon.com/s3"


def s3_browser_url(bucket: str, key: str, endpoint_url: str | None = None) -> str:
    """Where a person opens an S3 object (or, for a key ending in ``/``, a folder).

    On AWS, the S3 console; on any other endpoint (MinIO, a local moto server), the object's
    path-style URL on that endpoint.
    """
    if endpoint_url and "amazonaws.com" not in endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{quote(bucket)}/{quote(key)}"
    if key.endswith("/"):
        return f"{AWS_CONSOLE}/buckets/{quote(bucket)}?prefix={quote(key, safe='')}"
    return f"{AWS_CONSOLE}/object/{quote(bucket)}?prefix={quote(key, safe='')}"


class BackfillReportLink(BaseOperatorLink):
    """The run's report (Markdown) in S3."""

    name = "Backfill report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "report_url", "") or ""


class DeadLettersLink(BaseOperatorLink):
    """The folder of the run's dead letters in S3."""

    name = "Dead letters"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "dead_letters_url", "") or ""
