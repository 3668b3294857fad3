"""Shared fixtures: the real quarantine record (from mParticle's public repository), as one NDJSON line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

# Hypothesis's default deadline (200 ms per example) measures speed, which no test here is about: on a
# loaded 2-core machine (CI runs Airflow, moto and Chromium beside the property tests) a slow example is
# not a wrong one. Deadlines off for every property test, on purpose; the examples' count stays bounded.
hypothesis_settings.register_profile("project", deadline=None)
hypothesis_settings.load_profile("project")

# Tests that skip outside CI when a part the project installs (make browser, make redis) is missing: a
# skipped browser test is not a passed one, so the end of the run says so (under CI=true they fail instead).
_NEEDS_A_PART = ("browser test needs", "Celery test needs")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    missing = sorted(
        {str(report.longrepr[2]) for report in skipped if any(n in str(report.longrepr) for n in _NEEDS_A_PART)}
    )
    if missing:
        terminalreporter.section("NOT TESTED", sep="!", red=True, bold=True)
        for reason in missing:
            terminalreporter.write_line(f"NOT TESTED: {reason}", red=True, bold=True)
        terminalreporter.write_line(
            "These tests were skipped, not passed: run `make test` (it installs Chromium and Redis) to run them.",
            red=True,
        )


FIXTURES = Path(__file__).parent / "fixtures"
# Events of the real record, all at 2020-09-11T02:16:06.900Z.
REAL_RECORD_TIME_MS = 1599790566900


def real_record_dict() -> dict[str, Any]:
    return json.loads((FIXTURES / "quarantine_record.json").read_text())


@pytest.fixture
def real_record() -> dict[str, Any]:
    return real_record_dict()


def ndjson(*records: Any) -> bytes:
    """NDJSON bytes of records (dicts are encoded, bytes/str lines kept as they are)."""
    lines = []
    for record in records:
        if isinstance(record, bytes):
            lines.append(record)
        elif isinstance(record, str):
            lines.append(record.encode())
        else:
            lines.append(json.dumps(record).encode())
    return b"\n".join(lines) + b"\n"


def stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
