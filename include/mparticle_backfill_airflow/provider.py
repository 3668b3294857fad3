"""This package as an Airflow provider: it registers the ``mparticle`` connection type.

Plugins cannot register connection types; an installed package can, through the
``apache_airflow_provider`` entry point (``pyproject.toml``). With it, the connection form names the
fields (API key, API secret, pod URL) and the UI's **Test** button calls
:meth:`.MParticleEventsHook.test_connection` (an empty bulk request), not HttpHook's generic POST.
Connections of type ``http`` keep working: the hook reads either.
"""

from __future__ import annotations

from typing import Any

from mparticle_backfill import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "mparticle-quarantine-backfill",
        "name": "mParticle quarantine backfill",
        "description": "Backfill quarantined (blocked) mParticle data into the Events API.",
        "connection-types": [
            {
                "connection-type": "mparticle",
                "hook-class-name": "mparticle_backfill_airflow.events_api_hook.MParticleEventsHook",
                "hook-name": "mParticle Events API",
            }
        ],
        "versions": [__version__],
    }
