"""Shared fixtures: the real quarantine record (from mParticle's public repository), as one NDJSON line."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

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
