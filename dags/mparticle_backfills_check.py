"""Import check of mparticle_backfills.yaml: fails to import, naming each broken entry, so that it shows as an
import error in the Airflow UI while the valid entries' DAGs (built by mparticle_quarantine_backfill.py) load.

Defines no DAG. Without a configuration file, or with every entry valid, it imports cleanly.
"""

from __future__ import annotations

from pathlib import Path

from mparticle_backfill_airflow import backfills

_configuration = backfills.load(Path(__file__).parent)
if _configuration.broken:
    raise ValueError(backfills.broken_message(_configuration))
