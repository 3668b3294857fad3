"""Backfill quarantined (blocked) mParticle data into the Events API: the pure replay engine.

Nothing in this package imports Airflow; the Airflow layer lives in :mod:`include.mparticle_backfill.airflow`.
Stages, one module each: :mod:`.extract`, :mod:`.select`, :mod:`.filter_by_age`, :mod:`.transform`
(with :mod:`.fixes`), :mod:`.dedupe_check`, :mod:`.pack`; the outcome of every record is kept in
:mod:`.accounting`.
"""

from __future__ import annotations

__version__ = "0.2.0"  # the same as pyproject.toml's version (tests/airflow/test_deployment.py checks)
