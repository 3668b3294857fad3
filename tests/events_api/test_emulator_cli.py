"""The emulator as users start it: python -m tools.emulator."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def test_emulator_command_line_records_accepted_batches(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = tmp_path / "received.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.emulator", "--port", str(port), "--api-key", "k",
         "--api-secret", "s", "--rate", "500", "--record", str(record)],
        cwd=ROOT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(f"{url}/_emulator/stats", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        batch = {
            "environment": "production",
            "mpid": 1,
            "events": [{"event_type": "screen_view", "data": {"screen_name": "Home"}}],
        }
        response = requests.post(f"{url}/v2/events", json=batch, auth=("k", "s"), timeout=5)
        assert response.status_code == 202
        assert requests.post(f"{url}/v2/events", json=batch, auth=("k", "x"), timeout=5).status_code == 403
        assert requests.get(f"{url}/_emulator/stats", timeout=5).json()["batches_accepted"] == 1
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert [json.loads(line) for line in record.read_text().splitlines()] == [batch]
