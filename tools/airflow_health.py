"""Wait for a local Airflow api-server to answer: tasks report to it, so nothing may start before."""

from __future__ import annotations

import time

import requests


def wait_for_api_server(port: int, timeout: float) -> None:
    """Return once ``http://127.0.0.1:<port>/api/v2/monitor/health`` answers; TimeoutError if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"the Airflow api-server did not answer on port {port} in {timeout:.0f}s")
