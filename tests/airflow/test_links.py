"""Where the report links point."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.airflow


def test_s3_browser_url():
    from mparticle_backfill_airflow.links import s3_browser_url

    key = "mparticle/quarantine/_backfill/2026-11-20/reports/scheduled__2026-11-21T00_00_00_00_00.md"
    assert s3_browser_url("acme-q", key, "https://s3.us-east-1.amazonaws.com") == (
        "https://s3.console.aws.amazon.com/s3/object/acme-q?prefix="
        "mparticle%2Fquarantine%2F_backfill%2F2026-11-20%2Freports%2Fscheduled__2026-11-21T00_00_00_00_00.md"
    )
    assert (
        s3_browser_url("acme-q", "a/b/", None) == "https://s3.console.aws.amazon.com/s3/buckets/acme-q?prefix=a%2Fb%2F"
    )
    assert s3_browser_url("acme-q", "a b/c.md", "http://127.0.0.1:5055/") == "http://127.0.0.1:5055/acme-q/a%20b/c.md"
